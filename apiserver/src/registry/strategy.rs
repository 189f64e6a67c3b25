//! What the verbs do differently per kind, in one table (`for_kind`): pods get
//! graceful deletion and their own field selectors; services get
//! their ClusterIP and NodePorts allocated and released; namespaces are protected,
//! deleted in the background and get a default ServiceAccount. Every other kind uses
//! the generic strategy, as Kubernetes' registry does with its per-kind
//! `RESTCreateStrategy`/`RESTDeleteStrategy`.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tinykube_api::validation::FieldError;

use super::allocator::{Allocator, Held};
use super::{DeleteOptions, Registry};
use crate::error::ApiError;

/// Namespaces that may not be deleted.
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// What a delete does to the stored object.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Remove it from storage now.
    Remove,
    /// Store it marked for deletion (deletionTimestamp): finalizers or a kubelet remain.
    Mark,
    /// It is already marked, no sooner than asked: nothing to write.
    AlreadyPending,
}

/// Per-kind hooks around the verbs; every hook has the generic behaviour as default.
pub trait Strategy: Sync {
    /// Field selectors this kind supports besides metadata.name and metadata.namespace.
    fn selectable_field(&self, _field: &str) -> bool {
        false
    }

    /// Allocations a write of `obj` needs (over `old` on updates).
    fn allocate(
        &self,
        _alloc: &Allocator,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> Result<Held, Vec<FieldError>> {
        Ok(Held::default())
    }

    /// After a write over `old` was stored as `new` (or `removed`): release what it
    /// dropped.
    fn stored(&self, _alloc: &Allocator, _old: &Value, _new: &Value, _removed: bool) {}

    /// After a create was stored.
    fn created<'a>(&'a self, _reg: &'a Registry, _name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Whether an object of this name may be deleted at all.
    fn may_delete(&self, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// What a delete does; `already` = the object is marked, `finalizers` = it has some.
    fn deletion_step(
        &self,
        obj: &mut Value,
        _opts: &DeleteOptions,
        already: bool,
        finalizers: bool,
        now: jiff::Timestamp,
    ) -> Step {
        generic_deletion(obj, already, finalizers, now)
    }

    /// After the object was stored marked for deletion.
    fn deletion_marked(&self, _reg: &Registry, _name: &str) {}

    /// Whether an object whose last finalizer is gone may leave storage now.
    fn may_vanish(&self, _obj: &Value) -> bool {
        true
    }
}

/// The strategy of `kind`: the one table of per-kind behaviour.
pub fn for_kind(kind: &str) -> &'static dyn Strategy {
    match kind {
        "Pod" => &PodStrategy,
        "Service" => &ServiceStrategy,
        "Namespace" => &NamespaceStrategy,
        "Node" => &NodeStrategy,
        "Secret" => &SecretStrategy,
        "Event" => &EventStrategy,
        _ => &Generic,
    }
}

fn mark(obj: &mut Value, at: jiff::Timestamp, grace: i64) {
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    meta.insert(
        "deletionTimestamp".into(),
        json!(tinykube_api::format::rfc3339(at)),
    );
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
}

/// Kept while finalizers remain, removed otherwise.
fn generic_deletion(
    obj: &mut Value,
    already: bool,
    finalizers: bool,
    now: jiff::Timestamp,
) -> Step {
    if !finalizers {
        return Step::Remove;
    }
    if already {
        return Step::AlreadyPending;
    }
    mark(obj, now, 0);
    Step::Mark
}

struct Generic;
impl Strategy for Generic {}

struct PodStrategy;

impl Strategy for PodStrategy {
    fn selectable_field(&self, field: &str) -> bool {
        matches!(
            field,
            "spec.nodeName"
                | "status.phase"
                | "spec.schedulerName"
                | "spec.restartPolicy"
                | "status.podIP"
                | "spec.serviceAccountName"
        )
    }

    /// A pod bound to a node is deleted gracefully: marked, and removed when its
    /// kubelet confirms (a delete with grace 0), as Kubernetes' pod strategy does.
    fn deletion_step(
        &self,
        obj: &mut Value,
        opts: &DeleteOptions,
        already: bool,
        finalizers: bool,
        now: jiff::Timestamp,
    ) -> Step {
        let bound = obj["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded") | Some("Failed")
        );
        let grace = opts.grace_period.unwrap_or_else(|| {
            obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
        });
        if bound && !terminal && grace > 0 {
            let current_grace = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if already && current_grace.is_some_and(|g| g <= grace) {
                return Step::AlreadyPending;
            }
            let at = now
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or(now);
            mark(obj, at, grace);
            return Step::Mark;
        }
        if finalizers {
            let meta = obj["metadata"].as_object_mut().expect("metadata");
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            if !already {
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(tinykube_api::format::rfc3339(now)),
                );
            }
            return Step::Mark;
        }
        Step::Remove
    }

    /// A pod leaves storage once the kubelet is done with it (or none holds it).
    fn may_vanish(&self, pod: &Value) -> bool {
        pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            == 0
            || pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
    }
}

struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn allocate(
        &self,
        alloc: &Allocator,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Held, Vec<FieldError>> {
        alloc.assign(obj, old)
    }

    fn stored(&self, alloc: &Allocator, old: &Value, new: &Value, removed: bool) {
        if removed {
            alloc.release(&Held::of(new));
        } else {
            alloc.release_dropped(old, new);
        }
    }
}

struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn created<'a>(&'a self, reg: &'a Registry, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(reg.populate_namespace(name))
    }

    fn may_delete(&self, name: &str) -> Result<(), ApiError> {
        if PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        Ok(())
    }

    /// A namespace is always marked Terminating first; the namespace cleanup deletes
    /// what it holds and then the namespace.
    fn deletion_step(
        &self,
        obj: &mut Value,
        _opts: &DeleteOptions,
        already: bool,
        _finalizers: bool,
        now: jiff::Timestamp,
    ) -> Step {
        if already {
            return Step::AlreadyPending;
        }
        mark(obj, now, 0);
        obj["status"]["phase"] = json!("Terminating");
        Step::Mark
    }

    fn deletion_marked(&self, reg: &Registry, name: &str) {
        let _ = reg.namespace_cleanup.send(name.to_string());
    }
}

struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn selectable_field(&self, field: &str) -> bool {
        field == "spec.unschedulable"
    }
}

struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn selectable_field(&self, field: &str) -> bool {
        field == "type"
    }
}

struct EventStrategy;

impl Strategy for EventStrategy {
    fn selectable_field(&self, field: &str) -> bool {
        field.starts_with("involvedObject.") || matches!(field, "reason" | "type" | "source")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000).unwrap()
    }

    #[test]
    fn the_table_gives_each_kind_its_own_rules() {
        assert!(for_kind("Pod").selectable_field("spec.nodeName"));
        assert!(!for_kind("Service").selectable_field("spec.nodeName"));
        assert!(for_kind("Node").selectable_field("spec.unschedulable"));
        assert!(for_kind("Event").selectable_field("involvedObject.name"));
        assert!(for_kind("Namespace").may_delete("kube-system").is_err());
        assert!(for_kind("Namespace").may_delete("lab").is_ok());
        assert!(for_kind("ConfigMap").may_delete("kube-system").is_ok());
    }

    #[test]
    fn bound_pods_are_marked_with_their_grace_period() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "worker-1"}, "status": {"phase": "Running"}});
        let opts = DeleteOptions::default();
        assert_eq!(
            for_kind("Pod").deletion_step(&mut pod, &opts, false, false, now()),
            Step::Mark
        );
        assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
        // The same delete again changes nothing; a shorter grace period does.
        assert_eq!(
            for_kind("Pod").deletion_step(&mut pod, &opts, true, false, now()),
            Step::AlreadyPending
        );
        let sooner = DeleteOptions {
            grace_period: Some(5),
            ..Default::default()
        };
        assert_eq!(
            for_kind("Pod").deletion_step(&mut pod, &sooner, true, false, now()),
            Step::Mark
        );
        assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 5);
        assert!(!for_kind("Pod").may_vanish(&pod));
        // Unbound, or grace 0: removed at once.
        let mut pending = json!({"metadata": {"name": "q"}, "spec": {}});
        assert_eq!(
            for_kind("Pod").deletion_step(&mut pending, &opts, false, false, now()),
            Step::Remove
        );
        let now_opts = DeleteOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        assert_eq!(
            for_kind("Pod").deletion_step(&mut pod, &now_opts, true, false, now()),
            Step::Remove
        );
    }

    #[test]
    fn finalizers_keep_objects_and_namespaces_terminate() {
        let mut cm = json!({"metadata": {"name": "c"}});
        assert_eq!(
            for_kind("ConfigMap").deletion_step(
                &mut cm,
                &DeleteOptions::default(),
                false,
                true,
                now()
            ),
            Step::Mark
        );
        assert!(cm["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(
            for_kind("ConfigMap").deletion_step(
                &mut cm,
                &DeleteOptions::default(),
                true,
                true,
                now()
            ),
            Step::AlreadyPending
        );
        let mut ns = json!({"metadata": {"name": "lab"}});
        assert_eq!(
            for_kind("Namespace").deletion_step(
                &mut ns,
                &DeleteOptions::default(),
                false,
                false,
                now()
            ),
            Step::Mark
        );
        assert_eq!(ns["status"]["phase"], "Terminating");
    }
}
