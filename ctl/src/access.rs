//! Who may do what, from the CLI: `create role|clusterrole|rolebinding|
//! clusterrolebinding|serviceaccount` (the objects kubectl's generators make), and
//! `auth can-i` / `auth whoami` through the review APIs, and `certificate approve|deny`
//! through a request's `approval` subresource.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Ctx;

const RBAC: &str = "rbac.authorization.k8s.io";

#[derive(Args, Debug)]
pub struct RoleArgs {
    pub name: String,
    /// Verbs the rule allows (repeat or comma-separate).
    #[arg(long = "verb", value_delimiter = ',', required = true)]
    pub verbs: Vec<String>,
    /// Resources (`pods`, `deployments.apps`, `pods/log`).
    #[arg(long = "resource", value_delimiter = ',')]
    pub resources: Vec<String>,
    #[arg(long = "resource-name", value_delimiter = ',')]
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/logs/*`), for cluster roles only.
    #[arg(long = "non-resource-url", value_delimiter = ',')]
    pub non_resource_urls: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BindingArgs {
    pub name: String,
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub clusterrole: Option<String>,
    #[arg(long = "user")]
    pub users: Vec<String>,
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// NAMESPACE:NAME
    #[arg(long = "serviceaccount")]
    pub service_accounts: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Whether you may VERB a RESOURCE (TYPE, TYPE/NAME or a /path): prints yes or no.
    CanI {
        verb: Option<String>,
        resource: Option<String>,
        /// Everything you may do in the namespace.
        #[arg(long)]
        list: bool,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(long)]
        subresource: Option<String>,
    },
    /// Who the server takes you for.
    Whoami {
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
}

/// A resource argument as a rule names it: its group and plural (`pods/log` keeps the
/// subresource), through discovery.
async fn rule_resource(ctx: &mut Ctx, name: &str) -> Result<(String, String)> {
    if name == "*" {
        return Ok(("*".into(), "*".into()));
    }
    let (base, sub) = match name.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (name, None),
    };
    let r = ctx.resource(base).await?;
    let plural = match sub {
        Some(s) => format!("{}/{s}", r.plural),
        None => r.plural,
    };
    Ok((r.group, plural))
}

pub async fn role(ctx: &mut Ctx, args: &RoleArgs, cluster: bool) -> Result<Value> {
    let mut rules = Vec::new();
    // One rule per group, as kubectl's generator makes them.
    let mut by_group: Vec<(String, Vec<String>)> = Vec::new();
    for r in &args.resources {
        let (group, plural) = rule_resource(ctx, r).await?;
        match by_group.iter_mut().find(|(g, _)| *g == group) {
            Some((_, list)) => list.push(plural),
            None => by_group.push((group, vec![plural])),
        }
    }
    for (group, resources) in by_group {
        let mut rule = json!({"verbs": args.verbs, "apiGroups": [group], "resources": resources});
        if !args.resource_names.is_empty() {
            rule["resourceNames"] = json!(args.resource_names);
        }
        rules.push(rule);
    }
    if !args.non_resource_urls.is_empty() {
        if !cluster {
            bail!("--non-resource-url is only for cluster roles");
        }
        rules.push(json!({"verbs": args.verbs, "nonResourceURLs": args.non_resource_urls}));
    }
    if rules.is_empty() {
        bail!("at least one resource or non-resource URL must be specified");
    }
    let kind = if cluster { "ClusterRole" } else { "Role" };
    Ok(json!({"apiVersion": format!("{RBAC}/v1"), "kind": kind,
              "metadata": {"name": args.name}, "rules": rules}))
}

pub fn binding(args: &BindingArgs, cluster: bool) -> Result<Value> {
    let role_ref = match (&args.role, &args.clusterrole) {
        (Some(r), None) if !cluster => json!({"apiGroup": RBAC, "kind": "Role", "name": r}),
        (None, Some(r)) => json!({"apiGroup": RBAC, "kind": "ClusterRole", "name": r}),
        _ if cluster => bail!("exactly one of --clusterrole must be specified"),
        _ => bail!("exactly one of clusterrole or role must be specified"),
    };
    let mut subjects: Vec<Value> = Vec::new();
    for u in &args.users {
        subjects.push(json!({"apiGroup": RBAC, "kind": "User", "name": u}));
    }
    for g in &args.groups {
        subjects.push(json!({"apiGroup": RBAC, "kind": "Group", "name": g}));
    }
    for sa in &args.service_accounts {
        let Some((ns, name)) = sa.split_once(':') else {
            bail!("serviceaccount must be <namespace>:<name>");
        };
        subjects.push(json!({"kind": "ServiceAccount", "namespace": ns, "name": name}));
    }
    let kind = if cluster {
        "ClusterRoleBinding"
    } else {
        "RoleBinding"
    };
    Ok(json!({"apiVersion": format!("{RBAC}/v1"), "kind": kind,
              "metadata": {"name": args.name}, "roleRef": role_ref, "subjects": subjects}))
}

async fn review(ctx: &Ctx, group: &str, plural: &str, body: Value) -> Result<Value> {
    let url = format!("/apis/{group}/v1/{plural}");
    ctx.send(
        "POST",
        &url,
        Some("application/json"),
        None,
        serde_json::to_vec(&body)?,
    )
    .await
}

/// The attributes of "may someone VERB RESOURCE?" (TYPE, TYPE/NAME or a /path) in the
/// context's namespace (or every one), as a SubjectAccessReview's spec.
async fn access_spec(
    ctx: &mut Ctx,
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
    all_namespaces: bool,
) -> Result<Value> {
    if resource.starts_with('/') {
        return Ok(json!({"nonResourceAttributes": {"verb": verb, "path": resource}}));
    }
    let (kind, name) = match resource.split_once('/') {
        Some((k, n)) => (k, Some(n)),
        None => (resource, None),
    };
    let (group, plural) = rule_resource(ctx, kind).await?;
    let mut attrs = json!({"verb": verb, "group": group, "resource": plural});
    if !all_namespaces {
        attrs["namespace"] = json!(ctx.namespace);
    }
    if let Some(n) = name {
        attrs["name"] = json!(n);
    }
    if let Some(s) = subresource {
        attrs["subresource"] = json!(s);
    }
    Ok(json!({"resourceAttributes": attrs}))
}

/// Who `inspect access` asks about: `sa:NS:NAME` is that service account (with the
/// groups its token gives), `system:node:NAME` a kubelet, anything else a user; each
/// authenticated, with `extra` groups besides.
pub fn subject(who: &str, extra: &[String]) -> Result<(String, Vec<String>)> {
    let mut groups = Vec::new();
    let user = if let Some(rest) = who.strip_prefix("sa:") {
        let Some((ns, name)) = rest
            .split_once(':')
            .filter(|(n, s)| !n.is_empty() && !s.is_empty())
        else {
            bail!("a service account is sa:NAMESPACE:NAME, not {who:?}");
        };
        groups.push("system:serviceaccounts".to_string());
        groups.push(format!("system:serviceaccounts:{ns}"));
        format!("system:serviceaccount:{ns}:{name}")
    } else {
        if who.is_empty() {
            bail!("the user to inspect must not be empty");
        }
        if who.starts_with("system:node:") {
            groups.push("system:nodes".to_string());
        }
        who.to_string()
    };
    groups.extend(extra.iter().cloned());
    groups.push("system:authenticated".to_string());
    Ok((user, groups))
}

/// `inspect access`: the server's explanation of its decision on the request.
pub async fn inspect(
    ctx: &mut Ctx,
    who: &str,
    extra_groups: &[String],
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
) -> Result<Value> {
    let (user, groups) = subject(who, extra_groups)?;
    let mut spec = access_spec(ctx, verb, resource, subresource, false).await?;
    spec["user"] = json!(user);
    spec["groups"] = json!(groups);
    let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": spec.clone()});
    let mut out = ctx
        .send(
            "POST",
            "/tinykube/v1/access",
            Some("application/json"),
            None,
            serde_json::to_vec(&body)?,
        )
        .await?;
    out["spec"] = spec;
    Ok(out)
}

/// The request an explanation is about, in words: `list pods in namespace "dev"`.
fn request_words(spec: &Value) -> String {
    let ra = &spec["resourceAttributes"];
    if !ra.is_object() {
        let nra = &spec["nonResourceAttributes"];
        return format!(
            "{} the path {}",
            nra["verb"].as_str().unwrap_or_default(),
            nra["path"]
        );
    }
    let mut what = ra["resource"].as_str().unwrap_or_default().to_string();
    if let Some(g) = ra["group"].as_str().filter(|g| !g.is_empty()) {
        what = format!("{what}.{g}");
    }
    if let Some(s) = ra["subresource"].as_str() {
        what = format!("{what}/{s}");
    }
    if let Some(n) = ra["name"].as_str() {
        what = format!("{what} {n:?}");
    }
    let scope = match ra["namespace"].as_str() {
        Some(ns) => format!("in namespace {ns:?}"),
        None => "at the cluster scope".to_string(),
    };
    format!("{} {what} {scope}", ra["verb"].as_str().unwrap_or_default())
}

/// An explanation as text: the answer, who decided, and the rule that granted it or
/// the closest ones with what did not match.
pub fn explanation_text(v: &Value) -> String {
    use std::fmt::Write;
    let spec = &v["spec"];
    let allowed = v["allowed"].as_bool().unwrap_or(false);
    let mut out = format!(
        "{} {} {}: {}\n",
        spec["user"].as_str().unwrap_or_default(),
        if allowed { "may" } else { "may not" },
        request_words(spec),
        if allowed { "yes" } else { "no" }
    );
    let groups = strings(&spec["groups"]);
    let _ = writeln!(out, "  as groups: {}", groups.join(", "));
    match (allowed, v["decidedBy"].as_str()) {
        (true, Some("RBAC")) => {
            let g = &v["grantedBy"];
            let _ = writeln!(
                out,
                "  allowed by {}",
                g["source"].as_str().unwrap_or_default()
            );
            let _ = writeln!(
                out,
                "  the rule: {}",
                g["rule"].as_str().unwrap_or_default()
            );
        }
        (true, by) => {
            let _ = writeln!(
                out,
                "  decided by {}: {}",
                by.unwrap_or("?"),
                v["reason"].as_str().unwrap_or_default()
            );
        }
        (false, _) => {
            let _ = writeln!(out, "  no authorizer allowed it (Node, then RBAC)");
            if let Some(r) = v["reason"].as_str().filter(|r| !r.is_empty()) {
                let _ = writeln!(out, "  reason: {r}");
            }
            let misses = v["nearMisses"].as_array().cloned().unwrap_or_default();
            if misses.is_empty() {
                let _ = writeln!(
                    out,
                    "  none of the subject's rules comes close (the same verb, or what it is about)"
                );
            } else {
                let _ = writeln!(out, "  the closest rules, and what did not match:");
            }
            for m in &misses {
                let _ = writeln!(out, "  - {}", m["source"].as_str().unwrap_or_default());
                let _ = writeln!(out, "      rule {}", m["rule"].as_str().unwrap_or_default());
                for why in m["mismatches"].as_array().into_iter().flatten() {
                    let _ = writeln!(out, "      {}", why.as_str().unwrap_or_default());
                }
            }
        }
    }
    for b in v["brokenBindings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  broken binding: {}", b.as_str().unwrap_or_default());
    }
    out
}

/// `auth can-i`: the answer, printed as kubectl prints it; false means "no".
pub async fn can_i(ctx: &mut Ctx, cmd: &AuthCmd) -> Result<bool> {
    let AuthCmd::CanI {
        verb,
        resource,
        list,
        all_namespaces,
        subresource,
    } = cmd
    else {
        unreachable!("called for can-i only");
    };
    if *list {
        let ns = ctx.namespace.clone();
        let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                          "spec": {"namespace": ns}});
        let out = review(ctx, "authorization.k8s.io", "selfsubjectrulesreviews", body).await?;
        print_rules(&out["status"]);
        return Ok(true);
    }
    let (Some(verb), Some(resource)) = (verb, resource) else {
        bail!("you must specify two arguments: verb resource or verb resource/resourceName");
    };
    let spec = access_spec(ctx, verb, resource, subresource.as_deref(), *all_namespaces).await?;
    let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": spec});
    let out = review(
        ctx,
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        body,
    )
    .await?;
    let allowed = out["status"]["allowed"].as_bool().unwrap_or(false);
    println!("{}", if allowed { "yes" } else { "no" });
    Ok(allowed)
}

/// The strings of a JSON array (none for anything else).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn bracketed(v: &Value) -> String {
    format!("[{}]", strings(v).join(" "))
}

/// kubectl's `can-i --list` table.
fn print_rules(status: &Value) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    for r in status["resourceRules"].as_array().into_iter().flatten() {
        let groups = strings(&r["apiGroups"]);
        for res in r["resources"].as_array().into_iter().flatten() {
            for g in &groups {
                let name = match (res.as_str().unwrap_or_default(), *g) {
                    (res, "") => res.to_string(),
                    (res, g) => format!("{res}.{g}"),
                };
                rows.push([
                    name,
                    "[]".into(),
                    bracketed(&r["resourceNames"]),
                    bracketed(&r["verbs"]),
                ]);
            }
        }
    }
    for r in status["nonResourceRules"].as_array().into_iter().flatten() {
        rows.push([
            String::new(),
            bracketed(&r["nonResourceURLs"]),
            "[]".into(),
            bracketed(&r["verbs"]),
        ]);
    }
    rows.sort();
    let header = [
        "Resources".to_string(),
        "Non-Resource URLs".into(),
        "Resource Names".into(),
        "Verbs".into(),
    ];
    let mut all = vec![header];
    all.extend(rows);
    let width: Vec<usize> = (0..4)
        .map(|i| all.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in all {
        let line: Vec<String> = (0..4)
            .map(|i| format!("{:w$}", r[i], w = width[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `create token SA`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    pub name: String,
    /// How long the token lasts (e.g. 10m, 1h); the server's default when absent.
    #[arg(long)]
    pub duration: Option<String>,
    /// An audience of the token (repeatable); the API server's when absent.
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    #[arg(long)]
    pub bound_object_kind: Option<String>,
    #[arg(long)]
    pub bound_object_name: Option<String>,
    #[arg(long)]
    pub bound_object_uid: Option<String>,
}

/// Prints a token for the service account, as `kubectl create token` does.
pub async fn token(ctx: &mut Ctx, args: &TokenArgs) -> Result<()> {
    let mut spec = json!({});
    if !args.audiences.is_empty() {
        spec["audiences"] = json!(args.audiences);
    }
    if let Some(d) = &args.duration {
        let seconds = crate::parse_duration(d)?.as_secs();
        if seconds == 0 {
            bail!("--duration must be greater than 0");
        }
        spec["expirationSeconds"] = json!(seconds);
    }
    match (&args.bound_object_kind, &args.bound_object_name) {
        (Some(kind), Some(name)) => {
            let mut r = json!({"kind": kind, "apiVersion": "v1", "name": name});
            if let Some(uid) = &args.bound_object_uid {
                r["uid"] = json!(uid);
            }
            spec["boundObjectRef"] = r;
        }
        (None, None) => {}
        _ => bail!("--bound-object-kind and --bound-object-name go together"),
    }
    let res = ctx.resource("serviceaccounts").await?;
    let url = format!("{}/token", res.url(Some(&ctx.namespace), Some(&args.name)));
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let out = ctx
        .send(
            "POST",
            &url,
            Some("application/json"),
            None,
            serde_json::to_vec(&body)?,
        )
        .await?;
    println!("{}", out["status"]["token"].as_str().unwrap_or_default());
    Ok(())
}

/// `certificate approve|deny`.
#[derive(Subcommand, Debug)]
pub enum CertificateCmd {
    /// Approve certificate signing requests.
    Approve {
        #[arg(required = true)]
        names: Vec<String>,
        /// Update the request even if it is already approved or denied.
        #[arg(long)]
        force: bool,
    },
    /// Deny certificate signing requests.
    Deny {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        force: bool,
    },
}

/// Approves or denies each request as kubectl does: its Approved (or Denied)
/// condition through the `approval` subresource.
pub async fn certificate(ctx: &mut Ctx, cmd: &CertificateCmd) -> Result<()> {
    let (names, force, kind, reason, verb) = match cmd {
        CertificateCmd::Approve { names, force } => {
            (names, *force, "Approved", "KubectlApprove", "approve")
        }
        CertificateCmd::Deny { names, force } => (names, *force, "Denied", "KubectlDeny", "deny"),
    };
    let res = ctx.resource("certificatesigningrequests").await?;
    for name in names {
        let url = res.url(None, Some(name));
        let mut csr = ctx.get_json(&url).await?;
        let mut conditions = csr["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let decided = |t: &str| conditions.iter().any(|c| c["type"] == t);
        let done = if kind == "Approved" {
            "approved"
        } else {
            "denied"
        };
        if decided(kind) && !force {
            println!("certificatesigningrequest.certificates.k8s.io/{name} {done}");
            continue;
        }
        let other = if kind == "Approved" {
            "Denied"
        } else {
            "Approved"
        };
        if decided(other) && !force {
            bail!(
                "certificatesigningrequest.certificates.k8s.io/{name} is already {}; use --force to {verb} it anyway",
                other.to_lowercase()
            );
        }
        conditions.retain(|c| c["type"] != kind);
        conditions.push(json!({"type": kind, "status": "True", "reason": reason,
            "message": format!("This CSR was {done} by tinykube ctl certificate {verb}.")}));
        csr["status"]["conditions"] = json!(conditions);
        ctx.send(
            "PUT",
            &format!("{url}/approval"),
            Some("application/json"),
            None,
            serde_json::to_vec(&csr)?,
        )
        .await?;
        println!("certificatesigningrequest.certificates.k8s.io/{name} {done}");
    }
    Ok(())
}

pub async fn whoami(ctx: &Ctx, output: Option<&str>) -> Result<()> {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let out = review(ctx, "authentication.k8s.io", "selfsubjectreviews", body).await?;
    match output {
        Some("json") => println!("{}", serde_json::to_string_pretty(&out)?),
        Some("yaml") => print!("{}", crate::print::yaml(&out)),
        Some(other) => {
            bail!("unable to match a printer suitable for the output format \"{other}\"")
        }
        None => {
            let info = &out["status"]["userInfo"];
            println!("ATTRIBUTE   VALUE");
            println!(
                "Username    {}",
                info["username"].as_str().unwrap_or_default()
            );
            if let Some(uid) = info["uid"].as_str() {
                println!("UID         {uid}");
            }
            println!("Groups      {}", bracketed(&info["groups"]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_get_the_groups_their_credentials_would() {
        let (user, groups) = subject("sa:dev:bot", &[]).unwrap();
        assert_eq!(user, "system:serviceaccount:dev:bot");
        assert_eq!(
            groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:dev",
                "system:authenticated"
            ]
        );
        let (_, groups) = subject("system:node:w1", &[]).unwrap();
        assert_eq!(groups, ["system:nodes", "system:authenticated"]);
        let (user, groups) = subject("jane", &["devs".to_string()]).unwrap();
        assert_eq!((user.as_str(), groups.len()), ("jane", 2));
        for bad in ["sa:dev", "sa::bot", "sa:dev:", ""] {
            assert!(subject(bad, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bindings_are_made_as_kubectl_makes_them() {
        let args = BindingArgs {
            name: "b".into(),
            role: Some("reader".into()),
            clusterrole: None,
            users: vec!["jane".into()],
            groups: vec![],
            service_accounts: vec!["dev:bot".into()],
        };
        let b = binding(&args, false).unwrap();
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["subjects"][1]["namespace"], "dev");
        assert!(
            binding(&args, true).is_err(),
            "a cluster binding binds a cluster role"
        );
    }
}
