//! Admission: the plugins a write passes after authorization and before it is stored,
//! mutating ones first, then validating ones, as kube-apiserver runs them. Like
//! kube-apiserver, the verbs call admission once they have the object (the body of a
//! create, the stored object of an update or delete), not a layer of the HTTP chain,
//! which never decodes bodies.

pub mod default_tolerations;
pub mod node_restriction;
pub mod service_account;

use serde_json::Value;

use crate::authn::UserInfo;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::request::RequestInfo;
use crate::resources::ResourceInfo;

/// The admission chain and its settings.
pub struct Admission {
    /// DefaultTolerationSeconds: how long pods tolerate a not-ready or unreachable node.
    pub default_toleration_seconds: i64,
}

impl Admission {
    /// A create of `obj`: ServiceAccount and DefaultTolerationSeconds (mutating), then
    /// NodeRestriction.
    pub fn create(
        &self,
        registry: &Registry,
        user: &UserInfo,
        res: &ResourceInfo,
        namespace: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if res.group.is_empty() && res.plural == "pods" {
            // A kubelet's own (mirror) pods run as no account.
            if let (None, Some(ns)) = (user.node(), namespace) {
                service_account::admit_pod(registry, ns, obj)?;
            }
            default_tolerations::add_default_tolerations(obj, self.default_toleration_seconds);
        }
        if let Some(node) = user.node() {
            node_restriction::create(node, res, namespace, obj)?;
        }
        Ok(())
    }

    /// An update, patch or delete of a stored object: NodeRestriction, which looks at
    /// the pod as stored.
    pub fn change(
        &self,
        registry: &Registry,
        user: &UserInfo,
        info: &RequestInfo,
        res: &ResourceInfo,
    ) -> Result<(), ApiError> {
        let (Some(node), Some(name)) = (user.node(), info.url_name()) else {
            return Ok(());
        };
        if !(res.group.is_empty() && res.plural == "pods") {
            return Ok(());
        }
        let stored = registry.get(res, info.namespace(), name)?.object;
        node_restriction::change(node, &info.verb, &stored)
    }
}
