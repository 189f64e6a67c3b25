//! Fills the zone from the node's shared watch caches of Services and EndpointSlices
//! (the ones the service proxy reads too), so DNS keeps no copy of its own objects and
//! keeps answering from the last state it saw while the master is away.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tinykube_client::informer::Informer;
use tokio_util::sync::CancellationToken;

use crate::zone::{Endpoint, Kind, Port, Service as SvcRecord, Zone};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What DNS needs of a Service; None for one it does not answer for.
pub fn service_record(svc: &Service) -> Option<SvcRecord> {
    let spec = svc.spec.as_ref()?;
    let kind = match spec.type_.as_deref() {
        Some("ExternalName") => Kind::ExternalName(spec.external_name.clone()?),
        _ => match spec.cluster_ip.as_deref() {
            Some("None") => Kind::Headless,
            Some(ip) => Kind::ClusterIp(ip.parse().ok()?),
            None => return None,
        },
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref())?,
                port: u16::try_from(p.port).ok()?,
            })
        })
        .collect();
    Some(SvcRecord { kind, ports })
}

fn protocol(p: Option<&str>) -> Option<String> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp".into()),
        "UDP" => Some("udp".into()),
        "SCTP" => Some("sctp".into()),
        _ => None,
    }
}

/// The service an EndpointSlice belongs to and its IPv4 endpoints.
pub fn slice_endpoints(slice: &EndpointSlice) -> Option<(String, Vec<Endpoint>)> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    if slice.address_type != "IPv4" {
        return Some((service, Vec::new()));
    }
    let ports: Vec<Port> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol(p.protocol.as_deref())?,
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let eps = slice
        .endpoints
        .iter()
        .flat_map(|e| {
            // An endpoint with no conditions is ready (the API's documented meaning of
            // an unset `ready`).
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let hostname = e.hostname.clone();
            let ports = ports.clone();
            e.addresses.iter().filter_map(move |a| {
                Some(Endpoint {
                    ip: a.parse::<Ipv4Addr>().ok()?,
                    hostname: hostname.clone(),
                    ready,
                    ports: ports.clone(),
                })
            })
        })
        .collect();
    Some((service, eps))
}

fn key_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// The namespace and name of a changed object, and what the informer holds for it now
/// (None: it was deleted; a change is the object's last state, the store is the truth).
fn now<K>(
    informer: &Informer<K>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<(String, String, Option<Arc<K>>)>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (ns, name) = key_of(meta)?;
    let current = informer
        .store
        .get(&kube::runtime::reflector::ObjectRef::new(&name).within(&ns));
    Some((ns, name, current))
}

/// Follows the two informers until `cancel`, keeping `zone` in step. A change is
/// applied to the one service it concerns; the informers' stores say whether the
/// object still exists (a deletion is the object's last state, no longer in the store).
pub async fn follow(
    zone: Arc<RwLock<Zone>>,
    services: Arc<Informer<Service>>,
    slices: Arc<Informer<EndpointSlice>>,
    cancel: CancellationToken,
) {
    // Which service each slice was last filed under, so a slice that changes its label
    // (or goes) leaves the old one.
    let mut filed: HashMap<(String, String), String> = HashMap::new();
    let svc_changes = services.subscribe().map(Change::Service);
    let slice_changes = slices.subscribe().map(Change::Slice);
    let mut changes = futures::stream::select(svc_changes, slice_changes);
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = resync.tick() => {
                filed = rebuild(&zone, &services, &slices);
                continue;
            }
            c = changes.next() => match c {
                Some(c) => c,
                None => return,
            },
        };
        match change {
            Change::Service(s) => {
                let Some((ns, name, current)) = now(&services, &s.metadata) else {
                    continue;
                };
                let record = current.as_deref().and_then(service_record);
                zone.write()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_service(&ns, &name, record);
            }
            Change::Slice(s) => {
                let Some((ns, name, current)) = now(&slices, &s.metadata) else {
                    continue;
                };
                let now = current.as_deref().and_then(slice_endpoints);
                let mut z = zone.write().unwrap_or_else(|p| p.into_inner());
                let key = (ns.clone(), name.clone());
                if let Some(old) = filed.get(&key)
                    && now.as_ref().is_none_or(|(svc, _)| svc != old)
                {
                    z.set_slice(&ns, old, &name, None);
                    filed.remove(&key);
                }
                if let Some((svc, eps)) = now {
                    z.set_slice(&ns, &svc, &name, Some(eps));
                    filed.insert(key, svc);
                }
            }
        }
    }
}

/// How often the zone is rebuilt whole from the stores: a watch that restarts after an
/// outage lists again, and objects deleted meanwhile leave the store without an event.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// A new zone from everything the stores hold, swapped in at once; returns which
/// service each slice is filed under.
fn rebuild(
    zone: &RwLock<Zone>,
    services: &Informer<Service>,
    slices: &Informer<EndpointSlice>,
) -> HashMap<(String, String), String> {
    let (domain, ttl) = {
        let z = zone.read().unwrap_or_else(|p| p.into_inner());
        (z.domain.clone(), z.ttl)
    };
    let mut fresh = Zone::new(&domain, ttl);
    let mut filed = HashMap::new();
    for s in services.store.state() {
        if let (Some((ns, name)), Some(r)) = (key_of(&s.metadata), service_record(&s)) {
            fresh.set_service(&ns, &name, Some(r));
        }
    }
    for s in slices.store.state() {
        if let (Some((ns, name)), Some((svc, eps))) = (key_of(&s.metadata), slice_endpoints(&s)) {
            fresh.set_slice(&ns, &svc, &name, Some(eps));
            filed.insert((ns, name), svc);
        }
    }
    *zone.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    filed
}

enum Change {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_map_to_their_dns_kind() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": "a", "namespace": "b"}, "spec": spec}),
            )
            .unwrap()
        };
        let r = service_record(&svc(json!({"clusterIP": "10.96.0.5", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}))).unwrap();
        assert_eq!(r.kind, Kind::ClusterIp(Ipv4Addr::new(10, 96, 0, 5)));
        assert_eq!(
            r.ports,
            vec![Port {
                name: "dns".into(),
                protocol: "udp".into(),
                port: 53
            }]
        );
        assert_eq!(
            service_record(&svc(json!({"clusterIP": "None"})))
                .unwrap()
                .kind,
            Kind::Headless
        );
        assert_eq!(
            service_record(&svc(
                json!({"type": "ExternalName", "externalName": "example.org"})
            ))
            .unwrap()
            .kind,
            Kind::ExternalName("example.org".into())
        );
        assert!(service_record(&svc(json!({"type": "ClusterIP"}))).is_none());
    }

    #[test]
    fn slices_give_their_service_and_endpoints() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-x", "namespace": "d", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.3"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.4"]},
            ],
        }))
        .unwrap();
        let (svc, eps) = slice_endpoints(&slice).unwrap();
        assert_eq!(svc, "db");
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(
            (eps[0].ready, eps[1].ready, eps[2].ready),
            (true, false, true)
        );
        assert_eq!(eps[0].ports[0].port, 8080);
    }
}
