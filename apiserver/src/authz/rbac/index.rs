//! The RBAC objects, indexed by subject: for a user, the bindings that name it or one of
//! its groups are two hash lookups away (cluster-wide, then in the request's
//! namespace), so a decision costs what that user's own bindings cost, not a walk over
//! every binding as kube-apiserver's RBAC authorizer does. Kept up to date from the
//! store's watch, as an informer would.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;

use crate::authn::UserInfo;

pub const GROUP: &str = "rbac.authorization.k8s.io";
/// Every RBAC object's storage key starts with this.
pub const KEY_PREFIX: &str = "rbac.authorization.k8s.io/";

/// A binding as the authorizer reads it.
#[derive(Debug)]
pub struct Binding {
    /// The namespace of a RoleBinding; none for a ClusterRoleBinding.
    pub namespace: Option<String>,
    pub name: String,
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    pub role_name: String,
    /// Users (a service account as its user name) and groups it names.
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// A role's rules.
pub type Rules = Arc<Vec<PolicyRule>>;

/// A binding names a role that does not exist (the reason RBAC gives for it).
#[derive(Debug, thiserror::Error)]
#[error("{kind}.{GROUP} \"{name}\" not found")]
pub struct RoleNotFound {
    /// `role` or `clusterrole`.
    pub kind: String,
    pub name: String,
}

impl Binding {
    /// The binding, its role and the subject that names `user`, as Kubernetes' RBAC
    /// describes the source of a decision: `RoleBinding "read/dev" of Role "reader" to
    /// User "jane"` (a RoleBinding as NAME/NAMESPACE, a service account as NAME/NAMESPACE).
    pub fn describe(&self, user: &UserInfo) -> String {
        let subject = if self.users.contains(&user.name) {
            match user
                .name
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
            {
                Some((ns, name)) => format!("ServiceAccount \"{name}/{ns}\""),
                None => format!("User {:?}", user.name),
            }
        } else {
            let group = user.groups.iter().find(|g| self.groups.contains(g));
            format!("Group {:?}", group.map(String::as_str).unwrap_or_default())
        };
        match &self.namespace {
            Some(ns) => format!(
                "RoleBinding \"{}/{ns}\" of {} {:?} to {subject}",
                self.name, self.role_kind, self.role_name
            ),
            None => format!(
                "ClusterRoleBinding {:?} of {} {:?} to {subject}",
                self.name, self.role_kind, self.role_name
            ),
        }
    }
}

#[derive(Default)]
struct Subjects {
    users: HashMap<String, Vec<Arc<Binding>>>,
    groups: HashMap<String, Vec<Arc<Binding>>>,
}

impl Subjects {
    fn add(&mut self, b: &Arc<Binding>) {
        for u in &b.users {
            self.users.entry(u.clone()).or_default().push(b.clone());
        }
        for g in &b.groups {
            self.groups.entry(g.clone()).or_default().push(b.clone());
        }
    }

    fn remove(&mut self, b: &Binding) {
        let drop_from = |map: &mut HashMap<String, Vec<Arc<Binding>>>, key: &String| {
            if let Some(list) = map.get_mut(key) {
                list.retain(|x| x.name != b.name);
                if list.is_empty() {
                    map.remove(key);
                }
            }
        };
        for u in &b.users {
            drop_from(&mut self.users, u);
        }
        for g in &b.groups {
            drop_from(&mut self.groups, g);
        }
    }

    /// The bindings naming `user` or one of its groups.
    fn of<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a Arc<Binding>> {
        self.users.get(&user.name).into_iter().flatten().chain(
            user.groups
                .iter()
                .filter_map(|g| self.groups.get(g))
                .flatten(),
        )
    }
}

#[derive(Default)]
pub struct Index {
    cluster_roles: HashMap<String, Rules>,
    roles: HashMap<String, HashMap<String, Rules>>,
    cluster_bindings: HashMap<String, Arc<Binding>>,
    bindings: HashMap<String, HashMap<String, Arc<Binding>>>,
    cluster_subjects: Subjects,
    namespace_subjects: HashMap<String, Subjects>,
}

/// What a storage key names: the plural, the namespace (empty when cluster-scoped) and
/// the name.
fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (plural, rest) = rest.split_once('/')?;
    let (ns, name) = rest.split_once('/')?;
    Some((plural, ns, name))
}

fn subjects(
    list: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>,
    ns: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    let (mut users, mut groups) = (Vec::new(), Vec::new());
    for s in list.into_iter().flatten() {
        match s.kind.as_str() {
            "User" => users.push(s.name.clone()),
            "Group" => groups.push(s.name.clone()),
            // A service account is the user `system:serviceaccount:<ns>:<name>`; in a
            // RoleBinding its namespace defaults to the binding's.
            "ServiceAccount" => {
                let sa_ns = s.namespace.as_deref().filter(|n| !n.is_empty()).or(ns);
                if let Some(sa_ns) = sa_ns {
                    users.push(format!("system:serviceaccount:{sa_ns}:{}", s.name));
                }
            }
            _ => {}
        }
    }
    (users, groups)
}

impl Index {
    /// Applies one stored object (`None`: it was deleted) under `key`.
    pub fn apply(&mut self, key: &str, obj: Option<&Value>) {
        let Some((plural, ns, name)) = split_key(key) else {
            return;
        };
        let (ns, name) = (ns.to_string(), name.to_string());
        match plural {
            "clusterroles" => {
                match obj.and_then(|o| serde_json::from_value::<ClusterRole>(o.clone()).ok()) {
                    Some(r) => {
                        self.cluster_roles
                            .insert(name, Arc::new(r.rules.unwrap_or_default()));
                    }
                    None => {
                        self.cluster_roles.remove(&name);
                    }
                }
            }
            "roles" => match obj.and_then(|o| serde_json::from_value::<Role>(o.clone()).ok()) {
                Some(r) => {
                    self.roles
                        .entry(ns)
                        .or_default()
                        .insert(name, Arc::new(r.rules.unwrap_or_default()));
                }
                None => {
                    if let Some(m) = self.roles.get_mut(&ns) {
                        m.remove(&name);
                    }
                }
            },
            "clusterrolebindings" => {
                if let Some(old) = self.cluster_bindings.remove(&name) {
                    self.cluster_subjects.remove(&old);
                }
                if let Some(b) =
                    obj.and_then(|o| serde_json::from_value::<ClusterRoleBinding>(o.clone()).ok())
                {
                    let (users, groups) = subjects(b.subjects.as_ref(), None);
                    let b = Arc::new(Binding {
                        namespace: None,
                        name: name.clone(),
                        role_kind: b.role_ref.kind,
                        role_name: b.role_ref.name,
                        users,
                        groups,
                    });
                    self.cluster_subjects.add(&b);
                    self.cluster_bindings.insert(name, b);
                }
            }
            "rolebindings" => {
                if let Some(old) = self.bindings.get_mut(&ns).and_then(|m| m.remove(&name))
                    && let Some(s) = self.namespace_subjects.get_mut(&ns)
                {
                    s.remove(&old);
                }
                if let Some(b) =
                    obj.and_then(|o| serde_json::from_value::<RoleBinding>(o.clone()).ok())
                {
                    let (users, groups) = subjects(b.subjects.as_ref(), Some(&ns));
                    let b = Arc::new(Binding {
                        namespace: Some(ns.clone()),
                        name: name.clone(),
                        role_kind: b.role_ref.kind,
                        role_name: b.role_ref.name,
                        users,
                        groups,
                    });
                    self.namespace_subjects
                        .entry(ns.clone())
                        .or_default()
                        .add(&b);
                    self.bindings.entry(ns).or_default().insert(name, b);
                }
            }
            _ => {}
        }
    }

    /// The rules a binding's role holds, or why there are none.
    pub fn rules_of(&self, b: &Binding) -> Result<Rules, RoleNotFound> {
        let found = match (b.role_kind.as_str(), &b.namespace) {
            ("Role", Some(ns)) => self.roles.get(ns).and_then(|m| m.get(&b.role_name)),
            ("ClusterRole", _) => self.cluster_roles.get(&b.role_name),
            _ => None,
        };
        found.cloned().ok_or_else(|| RoleNotFound {
            kind: b.role_kind.to_lowercase(),
            name: b.role_name.clone(),
        })
    }

    /// The rules of Role `ns/name`.
    pub fn role(&self, ns: &str, name: &str) -> Option<Rules> {
        self.roles.get(ns).and_then(|m| m.get(name)).cloned()
    }

    /// The rules of a ClusterRole, by name (for aggregation and explanations).
    pub fn cluster_role(&self, name: &str) -> Option<Rules> {
        self.cluster_roles.get(name).cloned()
    }

    /// Calls `f` with each binding that applies to `user` in `namespace` (the
    /// ClusterRoleBindings first, then the namespace's RoleBindings), until `f` says
    /// to stop.
    pub fn walk(
        &self,
        user: &UserInfo,
        namespace: Option<&str>,
        mut f: impl FnMut(&Binding, Result<Rules, RoleNotFound>) -> bool,
    ) {
        for b in self.cluster_subjects.of(user) {
            if f(b, self.rules_of(b)) {
                return;
            }
        }
        let Some(subjects) = namespace.and_then(|ns| self.namespace_subjects.get(ns)) else {
            return;
        };
        for b in subjects.of(user) {
            if f(b, self.rules_of(b)) {
                return;
            }
        }
    }
}

impl Index {
    /// Calls `f` with every binding that names `user` or one of its groups, cluster-wide
    /// and in every namespace (what an explanation looks through for near misses).
    pub fn walk_everywhere(
        &self,
        user: &UserInfo,
        mut f: impl FnMut(&Binding, Result<Rules, RoleNotFound>),
    ) {
        for b in self.cluster_subjects.of(user) {
            f(b, self.rules_of(b));
        }
        let mut namespaces: Vec<&String> = self.namespace_subjects.keys().collect();
        namespaces.sort();
        for ns in namespaces {
            for b in self.namespace_subjects[ns].of(user) {
                f(b, self.rules_of(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}, "rules": rules})
    }

    #[test]
    fn bindings_are_found_by_user_group_and_service_account() {
        let mut ix = Index::default();
        ix.apply(
            "rbac.authorization.k8s.io/roles/dev/reader",
            Some(&role(
                json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
            )),
        );
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "dev"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "User", "name": "jane"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "bot"}]});
        ix.apply(
            "rbac.authorization.k8s.io/rolebindings/dev/b",
            Some(&binding),
        );
        let count = |ix: &Index, u: &UserInfo, ns: &str| {
            let mut n = 0;
            ix.walk(u, Some(ns), |_, rules| {
                assert!(rules.is_ok());
                n += 1;
                false
            });
            n
        };
        let jane = UserInfo::new("jane", []);
        let dev = UserInfo::new("bob", ["devs".to_string()]);
        let bot = UserInfo::new("system:serviceaccount:dev:bot", []);
        assert_eq!(count(&ix, &jane, "dev"), 1);
        assert_eq!(count(&ix, &dev, "dev"), 1);
        assert_eq!(count(&ix, &bot, "dev"), 1);
        assert_eq!(count(&ix, &jane, "prod"), 0);
        let mut sources = Vec::new();
        for u in [&jane, &dev, &bot] {
            ix.walk_everywhere(u, |b, _| sources.push(b.describe(u)));
        }
        assert_eq!(
            sources,
            [
                r#"RoleBinding "b/dev" of Role "reader" to User "jane""#,
                r#"RoleBinding "b/dev" of Role "reader" to Group "devs""#,
                r#"RoleBinding "b/dev" of Role "reader" to ServiceAccount "bot/dev""#,
            ]
        );
        ix.apply("rbac.authorization.k8s.io/rolebindings/dev/b", None);
        assert_eq!(count(&ix, &jane, "dev"), 0);
        // A binding to a role that does not exist says so.
        ix.apply(
            "rbac.authorization.k8s.io/rolebindings/dev/b",
            Some(&binding),
        );
        ix.apply("rbac.authorization.k8s.io/roles/dev/reader", None);
        let mut why = String::new();
        ix.walk(&jane, Some("dev"), |_, rules| {
            why = rules.unwrap_err().to_string();
            true
        });
        assert_eq!(why, "role.rbac.authorization.k8s.io \"reader\" not found");
    }
}
