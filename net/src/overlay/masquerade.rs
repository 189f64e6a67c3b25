//! Masquerade for pod traffic leaving the pod network, as flannel sets it up: one chain
//! of our own in the nat table, jumped to from POSTROUTING. Pod-to-pod traffic returns
//! untouched (no NAT inside the cluster CIDR); pods talking to anything else appear as
//! the node.

use crate::cidr::Ipv4Cidr;
use crate::iptables::{self, IptablesError};

pub const CHAIN: &str = "TINYKUBE-POSTRTG";

/// The rules, in iptables-restore's format (the chain is flushed and rewritten whole).
pub fn rules(cluster: Ipv4Cidr) -> String {
    format!(
        "*nat\n:{CHAIN} - [0:0]\n\
         -A {CHAIN} -s {cluster} -d {cluster} -m comment --comment \"tinykube: pod to pod, no NAT\" -j RETURN\n\
         -A {CHAIN} -s {cluster} ! -d 224.0.0.0/4 -m comment --comment \"tinykube: pods leaving the pod network\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// Writes the chain and makes sure POSTROUTING jumps to it, in the calling process's
/// network namespace. Safe to repeat.
pub fn apply(cluster: Ipv4Cidr) -> Result<(), IptablesError> {
    iptables::restore(&rules(cluster))?;
    iptables::ensure_rule(
        "nat",
        "POSTROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "tinykube: pod network masquerade",
            "-j",
            CHAIN,
        ],
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_the_masquerade() {
        let r = rules("10.244.0.0/16".parse().unwrap());
        let ret = r.find("-d 10.244.0.0/16").unwrap();
        let masq = r.find("MASQUERADE").unwrap();
        assert!(ret < masq);
        assert!(r.starts_with("*nat\n:TINYKUBE-POSTRTG - [0:0]\n"));
        assert!(r.ends_with("COMMIT\n"));
    }
}
