//! The service rules in kube-proxy's iptables layout, as iptables-restore input, from
//! the cluster's Services and EndpointSlices. Pure: no I/O.
//!
//! nat: `KUBE-SERVICES` (from PREROUTING and OUTPUT) sends each ClusterIP:port to its
//! `KUBE-SVC-*` chain, which picks one `KUBE-SEP-*` endpoint chain at random (rule i
//! of n matches with probability 1/(n-i)), which DNATs to the pod. Traffic from outside
//! (NodePorts through `KUBE-NODEPORTS`, the last rule of `KUBE-SERVICES`; LoadBalancer
//! ingress addresses and externalIPs straight from `KUBE-SERVICES`) goes through
//! `KUBE-EXT-*`, which marks the connection for masquerade so the answer comes back
//! through this node, or, with `externalTrafficPolicy: Local`, keeps the client's
//! address and picks among this node's endpoints only (`KUBE-SVL-*`, also what
//! `internalTrafficPolicy: Local` uses). `sessionAffinity: ClientIP` sends a client
//! back to the endpoint it had (`-m recent` per endpoint chain). `KUBE-POSTROUTING`
//! masquerades what was marked.
//! filter: a service port with no endpoints rejects new connections at once; one with
//! no local endpoint under a Local policy drops them.
//!
//! The rules come in per-port pieces (`PortRules`), so a change can rewrite only the
//! chains of the ports that changed plus the shared dispatch chains
//! (kube-proxy's `MinimizeIPTablesRestore`).
//!
//! By concept: `ports` turns Services and EndpointSlices into the service ports this node
//! programs; `chains` is kube-proxy's chain layout for one port; `sync` puts the ports'
//! pieces together into iptables-restore input, whole or only what changed.

mod chains;
mod ports;
mod sync;
#[cfg(test)]
mod tests;

pub use chains::{PortRules, chain_name, port_rules};
pub use ports::{Endpoint, ServicePort, service_ports};
pub use sync::{Synced, changed_ports, existing_chains, render, stale_after};

pub const SERVICES: &str = "KUBE-SERVICES";
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// filter: drops what a LoadBalancer's source ranges did not let through.
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The packet mark that asks `KUBE-POSTROUTING` to masquerade (kube-proxy's bit).
const MASQ_MARK: &str = "0x4000";
/// Prefixes of the per-service and per-endpoint chains this proxy owns.
pub const OWNED_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-EXT-",
    "KUBE-SVL-",
    "KUBE-FW-",
];
