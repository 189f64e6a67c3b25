//! The Endpoints and EndpointSlice controllers: for each Service with a selector, the
//! addresses of its pods, ready and not-ready apart, with named target ports resolved
//! per pod; terminating pods leave.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use tinykube_api::selector::Selector;
use tokio_util::sync::CancellationToken;

use crate::owner::{controller_ref, name, namespace, pod_is_ready};
use crate::{Error, Informers};

struct Ctx {
    client: kube::Client,
    inf: Arc<Informers>,
}

pub async fn run(client: kube::Client, inf: Arc<Informers>, cancel: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client,
        inf: inf.clone(),
    });
    let services = inf.services.clone();
    // A pod change concerns every Service in its namespace that selects it.
    let pods = inf
        .pods
        .subscribe_as("endpoints")
        .flat_map(move |p: Arc<Pod>| {
            let ns = namespace(&p.metadata).to_string();
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let refs: Vec<ObjectRef<Service>> = services
                .by_namespace(&ns)
                .iter()
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|sp| sp.selector.as_ref())
                        .is_some_and(|sel| {
                            !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                        })
                })
                .map(|s| ObjectRef::new(name(&s.metadata)).within(&ns))
                .collect();
            futures::stream::iter(refs)
        });
    Controller::for_shared_stream(
        inf.services.subscribe_as("endpoints"),
        inf.services.store.clone(),
    )
    .reconcile_on(pods)
    .graceful_shutdown_on(async move { cancel.cancelled().await })
    .run(
        reconcile,
        |_, e: &Error, _| {
            tracing::debug!(error = %e, "endpoints reconcile failed; retrying");
            Action::requeue(Duration::from_millis(500))
        },
        ctx,
    )
    .for_each(|_| futures::future::ready(()))
    .await;
}

/// A Service port resolved against one pod: (name, port, protocol).
type ResolvedPort = (String, i32, String);
/// Ready and not-ready addresses of the pods that share one set of resolved ports.
type Subset = (Vec<Value>, Vec<Value>);

/// A Service port resolved against one pod.
fn resolve_port(p: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<ResolvedPort> {
    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let port = match p.target_port.as_ref() {
        None => p.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(named)) => {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(named.as_str())
                        && cp.protocol.clone().unwrap_or_else(|| "TCP".into()) == proto
                })?
                .container_port
        }
    };
    Some((p.name.clone().unwrap_or_default(), port, proto))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(sel) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Ok(Action::await_change()); // no selector: endpoints are the user's
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace(&svc.metadata).to_string();
    let svc_name = name(&svc.metadata).to_string();
    let selector = Selector {
        requirements: Selector::parse(
            &sel.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .map_err(|e| Error::Invalid(e.to_string()))?
        .requirements,
    };
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let empty = Default::default();
    let mut pods: Vec<Arc<Pod>> = ctx
        .inf
        .pods
        .by_namespace(&ns)
        .into_iter()
        .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty)))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some_and(|ip| !ip.is_empty())
        })
        .collect();
    pods.sort_by(|a, b| {
        a.status
            .as_ref()
            .unwrap()
            .pod_ip
            .cmp(&b.status.as_ref().unwrap().pod_ip)
    });

    // Endpoints: pods grouped by their resolved port sets.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, Subset> = BTreeMap::new();
    let mut slice_endpoints = Vec::new();
    let mut slice_ports: Option<Vec<ResolvedPort>> = None;
    for pod in &pods {
        let ports: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| resolve_port(p, pod))
            .collect();
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let target = json!({"kind": "Pod", "name": name(&pod.metadata), "namespace": ns, "uid": pod.metadata.uid});
        // A pod whose hostname and subdomain name this service gets a DNS name of its
        // own under it (`hostname.service.ns.svc`).
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == Some(svc_name.as_str()))
            .and_then(|s| s.hostname.clone());
        let serving = pod_is_ready(pod) || publish_not_ready;
        // A terminating pod leaves the Endpoints at once; the slice keeps it, not ready,
        // with whether it still serves (kube-proxy falls back to those when no endpoint
        // is ready).
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = serving && !terminating;
        let mut slice_ep = json!({
            "addresses": [ip], "nodeName": node, "targetRef": target,
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        });
        if let Some(h) = &hostname {
            slice_ep["hostname"] = json!(h);
        }
        slice_ports.get_or_insert(ports.clone());
        slice_endpoints.push(slice_ep);
        if terminating {
            continue;
        }
        let mut addr = json!({"ip": ip, "nodeName": node, "targetRef": target});
        if let Some(h) = &hostname {
            addr["hostname"] = json!(h);
        }
        let entry = subsets.entry(ports).or_default();
        if ready {
            entry.0.push(addr)
        } else {
            entry.1.push(addr)
        }
    }
    let port_json = |ports: &[ResolvedPort]| -> Vec<Value> {
        ports
            .iter()
            .map(|(n, p, proto)| {
                let mut v = json!({"port": p, "protocol": proto});
                if !n.is_empty() {
                    v["name"] = json!(n);
                }
                v
            })
            .collect()
    };
    let subsets: Vec<Value> = subsets
        .iter()
        .map(|(ports, (ready, not_ready))| {
            let mut s = json!({"ports": port_json(ports)});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let owner = controller_ref(svc.as_ref());
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": svc_name, "namespace": ns, "labels": svc.metadata.labels, "ownerReferences": [owner]},
        "subsets": subsets,
    });
    let current = ctx
        .inf
        .endpoints
        .store
        .get(&ObjectRef::new(&svc_name).within(&ns));
    let ep_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let desired: Endpoints =
        serde_json::from_value(ep).map_err(|e| Error::Invalid(e.to_string()))?;
    match current {
        None => create_or_ignore(ep_api.create(&PostParams::default(), &desired).await)?,
        Some(cur) if cur.subsets != desired.subsets => {
            let mut next = desired.clone();
            next.metadata.resource_version = cur.metadata.resource_version.clone();
            ep_api
                .replace(&svc_name, &PostParams::default(), &next)
                .await?;
        }
        Some(_) => {}
    }

    let slice_name = format!(
        "{svc_name}-{}",
        &svc.metadata
            .uid
            .clone()
            .unwrap_or_default()
            .chars()
            .take(5)
            .collect::<String>()
    );
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert("kubernetes.io/service-name".into(), svc_name.clone());
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "endpointslice-controller.k8s.io".into(),
    );
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name, "namespace": ns, "labels": labels, "ownerReferences": [controller_ref(svc.as_ref())]},
        "addressType": "IPv4",
        "endpoints": slice_endpoints,
        "ports": port_json(&slice_ports.unwrap_or_default()),
    });
    let desired: EndpointSlice =
        serde_json::from_value(slice).map_err(|e| Error::Invalid(e.to_string()))?;
    let slice_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    match ctx
        .inf
        .slices
        .store
        .get(&ObjectRef::new(&slice_name).within(&ns))
    {
        None => create_or_ignore(slice_api.create(&PostParams::default(), &desired).await)?,
        Some(cur) if cur.endpoints != desired.endpoints || cur.ports != desired.ports => {
            let mut next = desired.clone();
            next.metadata.resource_version = cur.metadata.resource_version.clone();
            slice_api
                .replace(&slice_name, &PostParams::default(), &next)
                .await?;
        }
        Some(_) => {}
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// A create that lost a race with an earlier one (stale cache) is fine: the next
/// reconcile sees the object and compares.
fn create_or_ignore<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    Ok(crate::owner::tolerate(r, &[409])?)
}
