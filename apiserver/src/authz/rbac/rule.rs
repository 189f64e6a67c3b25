//! One RBAC rule against one request, and whether a set of rules covers another: the
//! pure part of the RBAC authorizer, as Kubernetes' `RuleAllows` and `Covers` read rules
//! (`*` for every verb, group, resource or path; `*/status` for that subresource of
//! every resource; `/path/*` for every path under it; `resourceNames` only for requests
//! that name an object).

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::authz::Attributes;

const ALL: &str = "*";

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == ALL || x == item)
}

fn opt(list: &Option<Vec<String>>) -> &[String] {
    list.as_deref().unwrap_or_default()
}

fn resource_matches(rule: &PolicyRule, resource: &str, subresource: Option<&str>) -> bool {
    opt(&rule.resources).iter().any(|r| {
        if r == ALL {
            return true;
        }
        match subresource {
            None => r == resource,
            Some(sub) => {
                r.strip_prefix(resource)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|s| s == sub)
                    || r.strip_prefix("*/").is_some_and(|s| s == sub)
            }
        }
    })
}

fn url_matches(rule: &PolicyRule, path: &str) -> bool {
    opt(&rule.non_resource_urls).iter().any(|u| {
        u == ALL
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether `rule` allows the request `a` (`RuleAllows`).
pub fn allows(rule: &PolicyRule, a: &Attributes<'_>) -> bool {
    if !has(&rule.verbs, a.verb) {
        return false;
    }
    if !a.resource_request {
        return url_matches(rule, a.path);
    }
    let names = opt(&rule.resource_names);
    has(opt(&rule.api_groups), a.api_group)
        && resource_matches(rule, a.resource, a.subresource)
        && (names.is_empty() || a.name.is_some_and(|n| names.iter().any(|x| x == n)))
}

/// A list as Go's `%q` prints a string slice: `["get" "list"]`.
fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// A rule as Kubernetes prints one (`CompactString`): `{APIGroups:[""],
/// Resources:["pods"], Verbs:["get" "list"]}`.
pub fn compact(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (name, list) in [
        ("APIGroups", &rule.api_groups),
        ("Resources", &rule.resources),
        ("ResourceNames", &rule.resource_names),
        ("NonResourceURLs", &rule.non_resource_urls),
    ] {
        if !opt(list).is_empty() {
            parts.push(format!("{name}:{}", quoted(opt(list))));
        }
    }
    parts.push(format!("Verbs:{}", quoted(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

/// Whether `rule` is about what `a` asks for at all: resources for a resource request,
/// paths for a path. A rule of the other sort is never a near miss.
pub fn same_sort(rule: &PolicyRule, a: &Attributes<'_>) -> bool {
    if a.resource_request {
        !opt(&rule.resources).is_empty()
    } else {
        !opt(&rule.non_resource_urls).is_empty()
    }
}

/// Why `rule` does not allow `a`, one reason per part that does not match (none:
/// it allows it, as `allows` says).
pub fn mismatches(rule: &PolicyRule, a: &Attributes<'_>) -> Vec<String> {
    let mut why = Vec::new();
    if !has(&rule.verbs, a.verb) {
        why.push(format!(
            "verb {:?} is not in the rule's verbs {}",
            a.verb,
            quoted(&rule.verbs)
        ));
    }
    if !a.resource_request {
        if !url_matches(rule, a.path) {
            why.push(format!(
                "path {:?} is not in the rule's nonResourceURLs {}",
                a.path,
                quoted(opt(&rule.non_resource_urls))
            ));
        }
        return why;
    }
    if !has(opt(&rule.api_groups), a.api_group) {
        why.push(format!(
            "API group {:?} is not in the rule's apiGroups {}",
            a.api_group,
            quoted(opt(&rule.api_groups))
        ));
    }
    if !resource_matches(rule, a.resource, a.subresource) {
        let wanted = match a.subresource {
            Some(s) => format!("{}/{s}", a.resource),
            None => a.resource.to_string(),
        };
        why.push(format!(
            "resource {wanted:?} is not in the rule's resources {}",
            quoted(opt(&rule.resources))
        ));
    }
    let names = opt(&rule.resource_names);
    if !names.is_empty() {
        match a.name {
            None => why.push(format!(
                "the rule names objects ({}) and the request names none: a list, watch or create is never allowed by resourceNames",
                quoted(names)
            )),
            Some(n) if !names.iter().any(|x| x == n) => why.push(format!(
                "name {n:?} is not in the rule's resourceNames {}",
                quoted(names)
            )),
            Some(_) => {}
        }
    }
    why
}

/// One rule broken into its smallest parts: a verb on one group's resource (and one
/// name), or a verb on one path.
#[derive(Debug, Clone, PartialEq)]
pub struct Atom {
    pub verb: String,
    pub group: Option<String>,
    pub resource: Option<String>,
    pub name: Option<String>,
    pub url: Option<String>,
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.url, &self.resource) {
            (Some(u), _) => write!(
                f,
                "{{NonResourceURLs:[\"{u}\"], Verbs:[\"{}\"]}}",
                self.verb
            ),
            (None, Some(r)) => {
                write!(
                    f,
                    "{{APIGroups:[\"{}\"], Resources:[\"{r}\"]",
                    self.group.as_deref().unwrap_or_default()
                )?;
                if let Some(n) = &self.name {
                    write!(f, ", ResourceNames:[\"{n}\"]")?;
                }
                write!(f, ", Verbs:[\"{}\"]}}", self.verb)
            }
            (None, None) => write!(f, "{{Verbs:[\"{}\"]}}", self.verb),
        }
    }
}

/// The atoms of a rule.
pub fn atoms(rule: &PolicyRule) -> Vec<Atom> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in opt(&rule.non_resource_urls) {
            out.push(Atom {
                verb: verb.clone(),
                group: None,
                resource: None,
                name: None,
                url: Some(url.clone()),
            });
        }
        for group in opt(&rule.api_groups) {
            for resource in opt(&rule.resources) {
                let names = opt(&rule.resource_names);
                let names: Vec<Option<String>> = if names.is_empty() {
                    vec![None]
                } else {
                    names.iter().cloned().map(Some).collect()
                };
                for name in names {
                    out.push(Atom {
                        verb: verb.clone(),
                        group: Some(group.clone()),
                        resource: Some(resource.clone()),
                        name,
                        url: None,
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the atom `a` (Kubernetes' `ruleCovers`): a wildcard in the
/// atom is covered only by a wildcard.
fn covers_atom(owner: &PolicyRule, a: &Atom) -> bool {
    if !has(&owner.verbs, &a.verb) {
        return false;
    }
    if let Some(url) = &a.url {
        return url_matches(owner, url);
    }
    let (Some(group), Some(resource)) = (&a.group, &a.resource) else {
        return false;
    };
    let names = opt(&owner.resource_names);
    let resource_ok = opt(&owner.resources).iter().any(|r| {
        r == ALL
            || r == resource
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| r.strip_prefix("*/") == Some(sub))
    });
    has(opt(&owner.api_groups), group)
        && resource_ok
        && (names.is_empty() || a.name.as_ref().is_some_and(|n| names.contains(n)))
}

/// The atoms of `wanted` that no rule of `owner` covers (empty: `owner` covers it all).
pub fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<Atom> {
    wanted
        .iter()
        .flat_map(atoms)
        .filter(|a| !owner.iter().any(|o| covers_atom(o, a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: if names.is_empty() { None } else { v(names) },
            non_resource_urls: None,
        }
    }

    fn req<'a>(
        user: &'a UserInfo,
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            subresource: sub,
            ..Attributes::resource(user, verb, group, resource, Some("default"), name)
        }
    }

    #[test]
    fn rules_allow_as_kubernetes_reads_them() {
        let u = UserInfo::new("jane", []);
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(allows(&pods, &req(&u, "list", "", "pods", None, None)));
        assert!(!allows(&pods, &req(&u, "delete", "", "pods", None, None)));
        assert!(!allows(&pods, &req(&u, "get", "apps", "pods", None, None)));
        assert!(
            !allows(&pods, &req(&u, "get", "", "pods", Some("log"), None)),
            "a subresource needs its own rule"
        );
        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(allows(
            &logs,
            &req(&u, "get", "", "pods", Some("log"), Some("p"))
        ));
        let status = rule(&["get"], &[""], &["*/status"], &[]);
        assert!(allows(
            &status,
            &req(&u, "get", "", "nodes", Some("status"), None)
        ));
        assert!(!allows(&status, &req(&u, "get", "", "nodes", None, None)));
        let named = rule(&["get"], &[""], &["configmaps"], &["app"]);
        assert!(allows(
            &named,
            &req(&u, "get", "", "configmaps", None, Some("app"))
        ));
        assert!(!allows(
            &named,
            &req(&u, "get", "", "configmaps", None, Some("x"))
        ));
        assert!(
            !allows(&named, &req(&u, "list", "", "configmaps", None, None)),
            "resourceNames never allow an unnamed list"
        );
        let all = rule(&["*"], &["*"], &["*"], &[]);
        assert!(allows(
            &all,
            &req(&u, "escalate", "x", "y", Some("z"), None)
        ));
        let mut urls = rule(&["get"], &[], &[], &[]);
        urls.non_resource_urls = Some(vec!["/healthz".into(), "/apis/*".into()]);
        let path = |p: &'static str| Attributes::path(&u, "get", p);
        assert!(allows(&urls, &path("/healthz")));
        assert!(allows(&urls, &path("/apis/apps/v1")));
        assert!(!allows(&urls, &path("/api")));
    }

    #[test]
    fn mismatches_say_which_part_did_not_match() {
        let u = UserInfo::new("jane", []);
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert_eq!(
            compact(&pods),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}"#
        );
        let cases = [
            req(&u, "list", "", "pods", None, None),
            req(&u, "delete", "", "pods", None, None),
            req(&u, "get", "apps", "deployments", None, None),
            req(&u, "get", "", "pods", Some("log"), Some("p")),
        ];
        for a in &cases {
            assert_eq!(allows(&pods, a), mismatches(&pods, a).is_empty(), "{a:?}");
        }
        assert_eq!(
            mismatches(&pods, &cases[1]),
            vec![r#"verb "delete" is not in the rule's verbs ["get" "list"]"#.to_string()]
        );
        let why = mismatches(&pods, &cases[2]);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].starts_with(r#"API group "apps""#), "{why:?}");
        assert!(why[1].contains(r#"resource "deployments""#), "{why:?}");
        assert!(mismatches(&pods, &cases[3])[0].contains(r#""pods/log""#));
        let named = rule(&["get", "list"], &[""], &["configmaps"], &["app"]);
        let list = req(&u, "list", "", "configmaps", None, None);
        assert!(mismatches(&named, &list)[0].contains("names none"));
        let mut urls = rule(&["get"], &[], &[], &[]);
        urls.non_resource_urls = Some(vec!["/healthz".into()]);
        let metrics = Attributes::path(&u, "get", "/metrics");
        assert!(same_sort(&urls, &metrics) && !same_sort(&pods, &metrics));
        assert_eq!(mismatches(&urls, &metrics).len(), 1);
    }

    #[test]
    fn covering_follows_wildcards_one_way() {
        let admin = [rule(&["*"], &["*"], &["*"], &[])];
        let edit = [rule(
            &["get", "create"],
            &["", "apps"],
            &["pods", "deployments"],
            &[],
        )];
        assert!(uncovered(&admin, &edit).is_empty());
        assert_eq!(uncovered(&edit, &admin).len(), 1);
        let only_pods = [rule(&["get", "create"], &[""], &["pods"], &[])];
        let missing = uncovered(&only_pods, &edit);
        assert_eq!(missing.len(), 6, "{missing:?}");
        assert_eq!(
            missing[0].to_string(),
            "{APIGroups:[\"\"], Resources:[\"deployments\"], Verbs:[\"get\"]}"
        );
        let named = [rule(&["get"], &[""], &["pods"], &["a"])];
        assert!(uncovered(&only_pods, &named).is_empty());
        assert_eq!(uncovered(&named, &only_pods).len(), 2);
    }
}
