//! What a fresh cluster has, created (or brought up to date) at every start: the system
//! namespaces and their default service accounts, the `kubernetes` Service with its
//! endpoints, the `kube-dns` Service, the network settings, and the default RBAC roles
//! and bindings.

use std::net::IpAddr;

use serde_json::json;
use tinykube_api::constants::{
    CLUSTER_DNS_IP, KUBERNETES_SERVICE_IP, NETWORK_CONFIG_KEY, NETWORK_CONFIGMAP, SYSTEM_NAMESPACES,
};

use crate::authz::rbac;
use crate::registry::decode::{self, FieldValidation};
use crate::registry::namespace::ROOT_CA_CONFIGMAP;
use crate::registry::{Registry, WriteOptions, prepare};
use crate::resources;
use crate::store::WriteOp;

/// A bootstrap object that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("failed to create the bootstrap object {what}: {detail}")]
pub struct BootstrapError {
    pub what: String,
    pub detail: String,
}

/// The pod network the nodes are told about (`kube-system/tinykube-network`).
pub struct Network<'a> {
    pub cluster_cidr: &'a str,
    pub backend: &'a str,
}

/// Creates what a fresh cluster has: the system namespaces, their default service
/// accounts, the `kubernetes` Service with its endpoints, the `kube-dns` Service, and
/// the network settings.
pub async fn bootstrap(
    reg: &Registry,
    advertise: IpAddr,
    port: u16,
    network: &Network<'_>,
    ca_pem: &str,
) -> Result<(), BootstrapError> {
    let opts = WriteOptions::SERVER;
    let fail = |what: &str, e: crate::error::ApiError| BootstrapError {
        what: what.into(),
        detail: e.to_string(),
    };
    let nsres = resources::namespaces();
    let configmaps = resources::find("", "configmaps").expect("registered");
    // The cluster CA, which every namespace gets a copy of (the first copy, in
    // kube-system, is made here, so kube-system is made before it).
    if reg.get(nsres, None, "kube-system").is_err() {
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}});
        match reg.create(nsres, None, body, opts).await {
            Ok(_) | Err(crate::error::ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(fail("kube-system", e)),
        }
    }
    let root_ca = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": "kube-system",
                     "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
        "data": {"ca.crt": ca_pem},
    });
    upsert(reg, configmaps, root_ca)
        .await
        .map_err(|e| fail("configmap kube-system/kube-root-ca.crt", e))?;
    for ns in SYSTEM_NAMESPACES {
        if reg.get(nsres, None, ns).is_err() {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match reg.create(nsres, None, body, opts).await {
                Ok(_) | Err(crate::error::ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(fail(ns, e)),
            }
        }
    }
    if let Ok(list) = reg.list(nsres, None, &Default::default()) {
        for ns in list["items"].as_array().into_iter().flatten() {
            if let Some(name) = ns["metadata"]["name"].as_str() {
                reg.populate_namespace(name).await;
            }
        }
    }
    let services = resources::find("", "services").expect("registered");
    if reg.get(services, Some("default"), "kubernetes").is_err() {
        let body = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_SERVICE_IP,
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        });
        reg.create(services, Some("default"), body, opts)
            .await
            .map_err(|e| fail("service kubernetes", e))?;
    }
    // The cluster DNS Service as kubeadm makes it; every node agent answers on its
    // address itself (no DNS pods), so it selects nothing that runs.
    if reg.get(services, Some("kube-system"), "kube-dns").is_err() {
        let body = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                    "kubernetes.io/name": "CoreDNS"},
                         "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
            "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_DNS_IP,
                     "selector": {"k8s-app": "kube-dns"},
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                               {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]},
        });
        reg.create(services, Some("kube-system"), body, opts)
            .await
            .map_err(|e| fail("service kube-system/kube-dns", e))?;
    }
    // The endpoints follow the advertised address, which may change between starts.
    let endpoints = resources::find("", "endpoints").expect("registered");
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": advertise.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    upsert(reg, endpoints, ep)
        .await
        .map_err(|e| fail("endpoints kubernetes", e))?;
    let slices = resources::find("discovery.k8s.io", "endpointslices").expect("registered");
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "tinykube-apiserver"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [advertise.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    upsert(reg, slices, slice)
        .await
        .map_err(|e| fail("endpointslice kubernetes", e))?;
    // Follows the master's flags, which may change between starts.
    let conf = json!({"Network": network.cluster_cidr, "Backend": {"Type": network.backend}});
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": NETWORK_CONFIGMAP, "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": "tinykube"}},
        "data": {NETWORK_CONFIG_KEY: conf.to_string()},
    });
    upsert(reg, configmaps, cm)
        .await
        .map_err(|e| fail("configmap kube-system/tinykube-network", e))?;
    rbac_defaults(reg).await?;
    Ok(())
}

/// The default roles and bindings: made when missing, brought back to their rules and
/// subjects when changed (unless their autoupdate annotation says "false").
async fn rbac_defaults(reg: &Registry) -> Result<(), BootstrapError> {
    let roles = resources::find(rbac::index::GROUP, "clusterroles").expect("served");
    let bindings = resources::find(rbac::index::GROUP, "clusterrolebindings").expect("served");
    let all = rbac::bootstrap::cluster_roles()
        .into_iter()
        .map(|o| (roles, o))
        .chain(
            rbac::bootstrap::cluster_role_bindings()
                .into_iter()
                .map(|o| (bindings, o)),
        );
    for (res, default) in all {
        let name = default["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let fail = |e: crate::error::ApiError| BootstrapError {
            what: format!("{} {name}", res.qualified()),
            detail: e.to_string(),
        };
        let body = match reg.get(res, None, &name) {
            Err(_) => default,
            Ok(stored) => match rbac::bootstrap::reconcile(&default, &stored.object) {
                Some(body) => body,
                None => continue,
            },
        };
        upsert(reg, res, body).await.map_err(fail)?;
    }
    Ok(())
}

async fn upsert(
    reg: &Registry,
    res: &'static resources::ResourceInfo,
    mut body: serde_json::Value,
) -> Result<(), crate::error::ApiError> {
    let opts = WriteOptions::SERVER;
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ns = body["metadata"]["namespace"].as_str().map(str::to_string);
    match reg.get(res, ns.as_deref(), &name) {
        Ok(current) => {
            prepare::prepare_update(res, &mut body, &current.object, &name)?;
            let admitted =
                decode::decode(res, body, Some(&current.object), FieldValidation::Ignore)?;
            if strip_volatile(&admitted.object) != strip_volatile(&current.object) {
                let op = WriteOp::Update {
                    key: res.key(ns.as_deref(), &name),
                    object: admitted.object,
                    expect_rev: Some(current.rev),
                };
                reg.store
                    .write(op)
                    .await
                    .map_err(|e| crate::error::ApiError::from_store(res, &name, e))?;
            }
            Ok(())
        }
        Err(_) => reg.create(res, ns.as_deref(), body, opts).await.map(|_| ()),
    }
}

fn strip_volatile(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("generation");
    }
    v
}
