//! Pod-to-pod across nodes: the overlay backends flannel offers (`udp`, `vxlan`,
//! `host-gw`), the peers they reach, and what a node publishes about itself.
//!
//! A node's agent sets up one backend, publishes its annotations on its Node, watches
//! the other Nodes and hands the resulting peer list to [`Overlay::sync`].

pub mod masquerade;
pub mod offload;
pub mod routes;
pub mod tun;
pub mod udp;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Mutex;

use rtnetlink::Handle;

use crate::cidr::Ipv4Cidr;
use crate::link::{self, LinkError};

/// Where the udp backend listens and sends (flannel's port).
pub const UDP_PORT: u16 = 8285;
/// The vxlan backend's UDP port and VNI (flannel's defaults on Linux).
pub const VXLAN_PORT: u16 = 8472;
pub const VXLAN_VNI: u32 = 1;
/// Device names as flannel spells them, so course material applies unchanged.
pub const TUN_DEVICE: &str = "flannel0";
pub const VXLAN_DEVICE: &str = "flannel.1";

/// Annotations a node publishes for its peers (flannel uses `flannel.alpha.coreos.com/`).
pub const ANNOTATION_BACKEND: &str = "tinykube.io/backend-type";
pub const ANNOTATION_PUBLIC_IP: &str = "tinykube.io/public-ip";
pub const ANNOTATION_BACKEND_DATA: &str = "tinykube.io/backend-data";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Udp,
    Vxlan,
    HostGw,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown overlay backend {0:?}: want udp, vxlan or host-gw")]
pub struct BackendError(pub String);

impl FromStr for Backend {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        match s {
            "udp" => Ok(Self::Udp),
            "vxlan" => Ok(Self::Vxlan),
            "host-gw" => Ok(Self::HostGw),
            _ => Err(BackendError(s.to_string())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
        })
    }
}

impl Backend {
    /// Bytes each packet gains on the wire: outer IPv4 + UDP for udp (28), plus the
    /// VXLAN header and inner Ethernet for vxlan (50), nothing for plain routes.
    pub fn overhead(self) -> u32 {
        match self {
            Self::Udp => 28,
            Self::Vxlan => 50,
            Self::HostGw => 0,
        }
    }
}

/// Another node as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub subnet: Ipv4Cidr,
    pub public_ip: Ipv4Addr,
    /// The MAC of the peer's VXLAN device (vxlan only).
    pub vtep_mac: Option<[u8; 6]>,
}

/// This node as the overlay needs it.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// The whole pod network (10.244.0.0/16).
    pub cluster: Ipv4Cidr,
    /// This node's podCIDR.
    pub subnet: Ipv4Cidr,
    /// The address peers send to; its interface carries the overlay.
    pub public_ip: Ipv4Addr,
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The vxlan backend's data in `tinykube.io/backend-data`, as flannel writes it.
pub fn backend_data(vtep_mac: Option<&[u8; 6]>) -> String {
    match vtep_mac {
        Some(m) => format!("{{\"VNI\":{VXLAN_VNI},\"VtepMAC\":\"{}\"}}", format_mac(m)),
        None => "null".to_string(),
    }
}

/// Reads the VTEP MAC out of `tinykube.io/backend-data`.
pub fn vtep_mac_of(data: &str) -> Option<[u8; 6]> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    parse_mac(v.get("VtepMAC")?.as_str()?)
}

/// Packet and byte counters of one peer (udp: counted by the data path; other
/// backends run in the kernel and have only device totals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub node: String,
    pub public_ip: Ipv4Addr,
    pub encap_packets: u64,
    pub encap_bytes: u64,
    pub decap_packets: u64,
    pub decap_bytes: u64,
    /// Datagrams from this peer that were dropped (truncated, oversize, not for us).
    pub dropped: u64,
}

impl PeerStats {
    pub fn new(node: &str, public_ip: Ipv4Addr) -> Self {
        Self {
            node: node.to_string(),
            public_ip,
            encap_packets: 0,
            encap_bytes: 0,
            decap_packets: 0,
            decap_bytes: 0,
            dropped: 0,
        }
    }
}

/// What the overlay has counted so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub backend: String,
    pub peers: Vec<PeerStats>,
    /// Drops no peer is to blame for, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// The overlay device's own counters (rx/tx packets and bytes), when it has one.
    pub device: Option<[u64; 4]>,
}

impl Stats {
    /// The counters in Prometheus' text format, for the kubelet's `/metrics`.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let b = &self.backend;
        let mut s = String::new();
        type Pick = fn(&PeerStats) -> [u64; 2];
        let families: [(&str, &str, Pick); 2] = [
            ("packets", "Packets", |p| [p.encap_packets, p.decap_packets]),
            ("bytes", "Bytes (inner packets)", |p| {
                [p.encap_bytes, p.decap_bytes]
            }),
        ];
        for (unit, what, values) in families {
            let _ = writeln!(
                s,
                "# HELP tinykube_overlay_{unit}_total {what} the overlay carried, by peer and direction.\n# TYPE tinykube_overlay_{unit}_total counter"
            );
            for p in &self.peers {
                for (dir, n) in ["encap", "decap"].into_iter().zip(values(p)) {
                    let _ = writeln!(
                        s,
                        "tinykube_overlay_{unit}_total{{backend=\"{b}\",peer=\"{}\",peer_ip=\"{}\",direction=\"{dir}\"}} {n}",
                        p.node, p.public_ip
                    );
                }
            }
        }
        s.push_str("# HELP tinykube_overlay_dropped_total Packets the overlay dropped, by peer (empty: none) and reason.\n# TYPE tinykube_overlay_dropped_total counter\n");
        for p in &self.peers {
            let _ = writeln!(
                s,
                "tinykube_overlay_dropped_total{{backend=\"{b}\",peer=\"{}\",peer_ip=\"{}\",reason=\"invalid\"}} {}",
                p.node, p.public_ip, p.dropped
            );
        }
        for (reason, n) in &self.dropped {
            let _ = writeln!(
                s,
                "tinykube_overlay_dropped_total{{backend=\"{b}\",peer=\"\",peer_ip=\"\",reason=\"{reason}\"}} {n}"
            );
        }
        if let Some([rxp, rxb, txp, txb]) = self.device {
            s.push_str("# HELP tinykube_overlay_device_packets_total The overlay device's own counters.\n# TYPE tinykube_overlay_device_packets_total counter\n");
            let _ = writeln!(
                s,
                "tinykube_overlay_device_packets_total{{backend=\"{b}\",direction=\"rx\"}} {rxp}\ntinykube_overlay_device_packets_total{{backend=\"{b}\",direction=\"tx\"}} {txp}"
            );
            s.push_str("# HELP tinykube_overlay_device_bytes_total The overlay device's own counters.\n# TYPE tinykube_overlay_device_bytes_total counter\n");
            let _ = writeln!(
                s,
                "tinykube_overlay_device_bytes_total{{backend=\"{b}\",direction=\"rx\"}} {rxb}\ntinykube_overlay_device_bytes_total{{backend=\"{b}\",direction=\"tx\"}} {txb}"
            );
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("no interface holds the node's address {0}")]
    NoInterface(Ipv4Addr),
    #[error("failed to set up the {TUN_DEVICE} device")]
    Tun(#[source] std::io::Error),
    #[error("failed to listen on UDP {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Masquerade(#[from] crate::iptables::IptablesError),
}

/// A node's overlay: its device (if any) and the per-peer state of its backend.
pub struct Overlay {
    backend: Backend,
    local: Local,
    handle: Handle,
    /// The interface holding the public address and its MTU.
    uplink: (u32, u32),
    vtep_mac: Option<[u8; 6]>,
    udp: Option<udp::DataPath>,
    /// The peers last applied (kernel backends reconcile against it).
    applied: Mutex<Vec<Peer>>,
}

impl Overlay {
    /// Sets up `backend` in the calling process's network namespace: the device and its
    /// address, the data path (udp), and the masquerade rules.
    pub async fn setup(backend: Backend, local: Local) -> Result<Self, OverlayError> {
        let handle = link::connect()?;
        let uplink = routes::interface_of(&handle, local.public_ip)
            .await?
            .ok_or(OverlayError::NoInterface(local.public_ip))?;
        let mtu = uplink.1.saturating_sub(backend.overhead());
        let (vtep_mac, udp) = match backend {
            Backend::Udp => (None, Some(udp::DataPath::start(&handle, local, mtu).await?)),
            Backend::Vxlan => {
                let (_, mac) = routes::vxlan_device(&handle, local, uplink.0, mtu).await?;
                (Some(mac), None)
            }
            Backend::HostGw => (None, None),
        };
        masquerade::apply(local.cluster)?;
        Ok(Self {
            backend,
            local,
            handle,
            uplink,
            vtep_mac,
            udp,
            applied: Mutex::new(Vec::new()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The MTU pods get, so that nothing they send needs fragmenting on the way.
    pub fn pod_mtu(&self) -> u32 {
        self.uplink.1.saturating_sub(self.backend.overhead())
    }

    /// What this node publishes on its Node for the others.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ANNOTATION_BACKEND.to_string(), self.backend.to_string()),
            (
                ANNOTATION_PUBLIC_IP.to_string(),
                self.local.public_ip.to_string(),
            ),
            (
                ANNOTATION_BACKEND_DATA.to_string(),
                backend_data(self.vtep_mac.as_ref()),
            ),
        ])
    }

    /// Makes the overlay reach exactly `peers` (this node left out by the caller):
    /// routes, neighbours and FDB entries for the kernel backends, the lookup table for
    /// udp. Entries of peers no longer listed are removed.
    pub async fn sync(&self, peers: &[Peer]) -> Result<(), OverlayError> {
        if let Some(udp) = &self.udp {
            udp.set_peers(peers);
        }
        let mut old = self.applied.lock().expect("not poisoned").clone();
        match self.backend {
            Backend::Udp => {}
            Backend::Vxlan => {
                // A device removed by hand is made again (its MAC follows the podCIDR,
                // so what peers know of it stays true), then filled afresh.
                let dev = match link::link_index(&self.handle, VXLAN_DEVICE).await? {
                    Some(i) => i,
                    None => {
                        tracing::warn!("{VXLAN_DEVICE} is gone; making it again");
                        old.clear();
                        routes::vxlan_device(
                            &self.handle,
                            self.local,
                            self.uplink.0,
                            self.pod_mtu(),
                        )
                        .await?
                        .0
                    }
                };
                routes::sync_vxlan(&self.handle, dev, &old, peers).await?
            }
            Backend::HostGw => {
                routes::sync_host_gw(&self.handle, self.local, self.uplink.0, peers).await?
            }
        }
        *self.applied.lock().expect("not poisoned") = peers.to_vec();
        Ok(())
    }

    /// The overlay as `tinykube ctl inspect node` shows it: backend, device, MTU, the
    /// encapsulation, and every peer with its subnet, address, VTEP MAC (vxlan) and
    /// counters.
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        let stats = self.stats();
        let applied = self.applied.lock().expect("not poisoned").clone();
        let (device, encapsulation) = match self.backend {
            Backend::Udp => (
                Some(TUN_DEVICE),
                json!({"protocol": "udp", "port": UDP_PORT, "outerHeaderBytes": 28}),
            ),
            Backend::Vxlan => (
                Some(VXLAN_DEVICE),
                json!({"protocol": "vxlan", "port": VXLAN_PORT, "vni": VXLAN_VNI, "outerHeaderBytes": 50}),
            ),
            Backend::HostGw => (
                None,
                json!({"protocol": "none (routes via the peers' addresses)"}),
            ),
        };
        let peers: Vec<_> = applied
            .iter()
            .map(|p| {
                let c = stats.peers.iter().find(|s| s.public_ip == p.public_ip);
                json!({
                    "node": p.node,
                    "subnet": p.subnet.to_string(),
                    "publicIP": p.public_ip.to_string(),
                    "vtepMAC": p.vtep_mac.as_ref().map(format_mac),
                    "encapPackets": c.map(|c| c.encap_packets),
                    "encapBytes": c.map(|c| c.encap_bytes),
                    "decapPackets": c.map(|c| c.decap_packets),
                    "decapBytes": c.map(|c| c.decap_bytes),
                    "dropped": c.map(|c| c.dropped),
                })
            })
            .collect();
        json!({
            "backend": self.backend.to_string(),
            "device": device,
            "mtu": self.pod_mtu(),
            "uplinkMTU": self.uplink.1,
            "publicIP": self.local.public_ip.to_string(),
            "subnet": self.local.subnet.to_string(),
            "network": self.local.cluster.to_string(),
            "vtepMAC": self.vtep_mac.as_ref().map(format_mac),
            "encapsulation": encapsulation,
            "peers": peers,
            "dropped": stats.dropped,
            "deviceCounters": stats.device.map(|[rxp, rxb, txp, txb]| json!({
                "rxPackets": rxp, "rxBytes": rxb, "txPackets": txp, "txBytes": txb})),
        })
    }

    pub fn stats(&self) -> Stats {
        let mut s = match &self.udp {
            Some(u) => u.stats(),
            None => Stats::default(),
        };
        s.backend = self.backend.to_string();
        if s.peers.is_empty() {
            s.peers = self
                .applied
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|p| PeerStats::new(&p.node, p.public_ip))
                .collect();
        }
        let name = match self.backend {
            Backend::Udp => Some(TUN_DEVICE),
            Backend::Vxlan => Some(VXLAN_DEVICE),
            Backend::HostGw => None,
        };
        s.device = name.and_then(device_counters);
        s
    }
}

/// rx packets, rx bytes, tx packets, tx bytes of a device in this process's network
/// namespace. `/proc/net/dev` follows the namespace; `/sys/class/net` follows the
/// namespace sysfs was mounted in, which a node in a lab netns does not share.
fn device_counters(name: &str) -> Option<[u64; 4]> {
    crate::inspect::net_dev(&std::fs::read_to_string("/proc/net/dev").ok()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_print_as_flannel_names_them() {
        for b in ["udp", "vxlan", "host-gw"] {
            assert_eq!(b.parse::<Backend>().unwrap().to_string(), b);
        }
        let e = "wireguard".parse::<Backend>().unwrap_err();
        assert!(e.to_string().contains("udp, vxlan or host-gw"));
        assert_eq!(Backend::Udp.overhead(), 28);
        assert_eq!(Backend::Vxlan.overhead(), 50);
    }

    #[test]
    fn metrics_name_every_peer_direction_and_drop_reason() {
        let mut p = PeerStats::new("worker-2", Ipv4Addr::new(192, 168, 56, 12));
        (p.encap_packets, p.decap_bytes, p.dropped) = (3, 700, 1);
        let s = Stats {
            backend: "udp".into(),
            peers: vec![p],
            dropped: BTreeMap::from([("stranger", 2)]),
            device: None,
        };
        let text = s.prometheus();
        let peer = "backend=\"udp\",peer=\"worker-2\",peer_ip=\"192.168.56.12\"";
        for line in [
            format!("tinykube_overlay_packets_total{{{peer},direction=\"encap\"}} 3"),
            format!("tinykube_overlay_packets_total{{{peer},direction=\"decap\"}} 0"),
            format!("tinykube_overlay_bytes_total{{{peer},direction=\"decap\"}} 700"),
            format!("tinykube_overlay_dropped_total{{{peer},reason=\"invalid\"}} 1"),
            "tinykube_overlay_dropped_total{backend=\"udp\",peer=\"\",peer_ip=\"\",reason=\"stranger\"} 2".to_string(),
            "# TYPE tinykube_overlay_bytes_total counter".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn vtep_macs_round_trip_through_backend_data() {
        let m = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0xff];
        let data = backend_data(Some(&m));
        assert_eq!(data, "{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:01:ff\"}");
        assert_eq!(vtep_mac_of(&data), Some(m));
        assert_eq!(vtep_mac_of("null"), None);
        assert_eq!(vtep_mac_of("{\"VtepMAC\":\"zz:00\"}"), None);
        assert_eq!(parse_mac("01:02:03:04:05:06:07"), None);
    }
}
