//! LoadBalancer addresses: which nodes may carry them (k3s ServiceLB's rule), and the
//! address pool (`--lb-pool 192.168.56.240-192.168.56.250`, or a CIDR) they come from
//! when the master has one, each announced by one node at a time (MetalLB's layer-2
//! mode).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;

/// Once any node carries this label set to `true`, only such nodes carry LoadBalancer
/// addresses.
pub const ENABLE_LB_LABEL: &str = "svccontroller.tinykube.io/enablelb";

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The nodes that carry LoadBalancer addresses: the Ready, schedulable ones, or the
/// labelled ones among them once any node is labelled.
pub fn eligible_nodes<'a, N: AsRef<Node> + 'a>(
    nodes: impl IntoIterator<Item = &'a N> + Clone,
) -> Vec<&'a Node> {
    let label = |n: &Node| {
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ENABLE_LB_LABEL))
            .is_some_and(|v| v == "true")
    };
    let any_labelled = nodes.clone().into_iter().any(|n| label(n.as_ref()));
    nodes
        .into_iter()
        .map(AsRef::as_ref)
        .filter(|n| ready(n))
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter(|n| !any_labelled || label(n))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbPool {
    first: u32,
    last: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid address pool {0:?}: expected FIRST-LAST (192.168.56.240-192.168.56.250) or a CIDR"
)]
pub struct LbPoolError(String);

impl FromStr for LbPool {
    type Err = LbPoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LbPoolError(s.to_string());
        let (first, last) = if let Some((a, b)) = s.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            (u32::from(a), u32::from(b))
        } else if let Some((ip, bits)) = s.split_once('/') {
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
            let bits: u32 = bits.parse().map_err(|_| bad())?;
            if bits > 32 {
                return Err(bad());
            }
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            let base = u32::from(ip) & mask;
            (base, base | !mask)
        } else {
            let ip: Ipv4Addr = s.parse().map_err(|_| bad())?;
            (u32::from(ip), u32::from(ip))
        };
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for LbPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            Ipv4Addr::from(self.first),
            Ipv4Addr::from(self.last)
        )
    }
}

impl LbPool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        (self.first..=self.last).map(Ipv4Addr::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_cidrs() {
        let p: LbPool = "192.168.56.240-192.168.56.250".parse().unwrap();
        assert!(p.contains("192.168.56.245".parse().unwrap()));
        assert!(!p.contains("192.168.56.251".parse().unwrap()));
        assert_eq!(p.addresses().count(), 11);
        assert_eq!(p.to_string(), "192.168.56.240-192.168.56.250");
        let c: LbPool = "10.0.0.0/30".parse().unwrap();
        assert_eq!(c.addresses().count(), 4);
        assert!("192.168.56.250-192.168.56.240".parse::<LbPool>().is_err());
        assert!("nonsense".parse::<LbPool>().is_err());
    }
}
