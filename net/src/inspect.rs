//! What a network namespace holds, read over netlink the way `ip -d link` and `ip route`
//! show it: links (kind, MAC, MTU, the bridge they are a port of, a veth's peer index,
//! hairpin, counters) and the main routing table. `tinykube ctl inspect` and `trace`
//! are built on these.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope, RouteType};
use serde::Serialize;

use crate::cidr::Ipv4Cidr;
use crate::link::{LinkError, nl};

/// One network interface.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `veth`, `bridge`, `tun`, `vxlan`, `dummy`, or empty for a plain device.
    pub kind: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    /// The bridge this link is a port of (its index).
    pub master: Option<u32>,
    /// For a veth: the index of its peer in the other namespace (IFLA_LINK).
    pub peer_index: Option<u32>,
    /// For a bridge port: whether hairpin mode is on.
    pub hairpin: Option<bool>,
    /// Addresses with their prefix, `10.244.1.5/24`.
    pub addresses: Vec<String>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `default` or a CIDR.
    pub destination: String,
    pub gateway: Option<Ipv4Addr>,
    /// The outgoing link's name (its index when the link is not in the list given).
    pub device: String,
    pub source: Option<Ipv4Addr>,
    /// `link` for on-link routes, `global` otherwise.
    pub scope: String,
    /// Set when the gateway is reached through the device without ARP (`onlink`).
    pub onlink: bool,
}

impl Route {
    /// Whether `ip` falls in this route's destination.
    pub fn matches(&self, ip: Ipv4Addr) -> Option<u8> {
        if self.destination == "default" {
            return Some(0);
        }
        let (a, p) = self.destination.split_once('/')?;
        let c = Ipv4Cidr::new(a.parse().ok()?, p.parse().ok()?).ok()?;
        c.contains(ip).then_some(c.prefix())
    }
}

/// The route the kernel would pick for `ip` among `routes`: the longest prefix.
pub fn lookup(routes: &[Route], ip: Ipv4Addr) -> Option<&Route> {
    routes
        .iter()
        .filter_map(|r| r.matches(ip).map(|p| (p, r)))
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r)
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: String::new(),
        mac: String::new(),
        mtu: 0,
        up: m
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        master: None,
        peer_index: None,
        hairpin: None,
        addresses: Vec::new(),
        rx_packets: 0,
        rx_bytes: 0,
        tx_packets: 0,
        tx_bytes: 0,
        rx_dropped: 0,
        tx_dropped: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = mac(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Link(i) => l.peer_index = Some(*i),
            LinkAttribute::Stats64(s) => {
                (l.rx_packets, l.rx_bytes, l.tx_packets, l.tx_bytes) =
                    (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes);
                (l.rx_dropped, l.tx_dropped) = (s.rx_dropped, s.tx_dropped);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => {
                            l.kind = match k {
                                InfoKind::Veth => "veth".into(),
                                InfoKind::Bridge => "bridge".into(),
                                InfoKind::Tun => "tun".into(),
                                InfoKind::Vxlan => "vxlan".into(),
                                InfoKind::Dummy => "dummy".into(),
                                other => format!("{other:?}").to_lowercase(),
                            }
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                            l.hairpin = p.iter().find_map(|x| match x {
                                InfoBridgePort::HairpinMode(h) => Some(*h),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // A veth's IFLA_LINK names its peer; on other links it is the link itself or absent.
    if l.kind != "veth" {
        l.peer_index = None;
    }
    l
}

/// Every link of the namespace `h` is bound to, with its IPv4 addresses.
pub async fn links(h: &Handle) -> Result<Vec<Link>, LinkError> {
    let mut out: Vec<Link> = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl("list links"))? {
        out.push(link_of(&m));
    }
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        let ip = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        });
        if let (Some(ip), Some(l)) = (ip, out.iter_mut().find(|l| l.index == a.header.index)) {
            l.addresses.push(format!("{ip}/{}", a.header.prefix_len));
        }
    }
    Ok(out)
}

/// The IPv4 routes of the main table, as `ip route` lists them.
pub async fn routes(h: &Handle, links: &[Link]) -> Result<Vec<Route>, LinkError> {
    let mut out = Vec::new();
    let mut s = h
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = s.try_next().await.map_err(nl("list routes"))? {
        let mut table = u32::from(r.header.table);
        let (mut dst, mut gw, mut oif, mut src) = (None, None, None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(*s),
                _ => {}
            }
        }
        if table != 254 || r.header.kind != RouteType::Unicast {
            continue;
        }
        let destination = match dst {
            Some(d) => format!("{d}/{}", r.header.destination_prefix_length),
            None => "default".to_string(),
        };
        let device = oif
            .map(|i| {
                links
                    .iter()
                    .find(|l| l.index == i)
                    .map_or_else(|| i.to_string(), |l| l.name.clone())
            })
            .unwrap_or_default();
        out.push(Route {
            destination,
            gateway: gw,
            device,
            source: src,
            scope: match r.header.scope {
                RouteScope::Link => "link".into(),
                RouteScope::Host => "host".into(),
                _ => "global".into(),
            },
            onlink: r
                .header
                .flags
                .contains(rtnetlink::packet_route::route::RouteFlags::Onlink),
        });
    }
    Ok(out)
}

/// The counters of `name` in a `/proc/net/dev` table (that file follows the reader's
/// network namespace; `/proc/<pid>/net/dev` follows that process's): rx packets, rx
/// bytes, tx packets, tx bytes. After "name:", rx bytes and packets are fields 0 and 1,
/// tx bytes and packets fields 8 and 9.
pub fn net_dev(table: &str, name: &str) -> Option<[u64; 4]> {
    let fields = table.lines().find_map(|l| {
        let (dev, rest) = l.split_once(':')?;
        (dev.trim() == name).then_some(rest)
    })?;
    let v: Vec<u64> = fields
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some([*v.get(1)?, *v.first()?, *v.get(9)?, *v.get(8)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, dev: &str) -> Route {
        Route {
            destination: dst.into(),
            gateway: None,
            device: dev.into(),
            source: None,
            scope: "link".into(),
            onlink: false,
        }
    }

    #[test]
    fn the_longest_prefix_wins_as_in_the_kernel() {
        let routes = [
            route("default", "eth0"),
            route("10.244.0.0/16", "flannel0"),
            route("10.244.1.0/24", "cni0"),
        ];
        let at = |ip: [u8; 4]| lookup(&routes, Ipv4Addr::from(ip)).unwrap().device.clone();
        assert_eq!(at([10, 244, 1, 7]), "cni0");
        assert_eq!(at([10, 244, 2, 7]), "flannel0");
        assert_eq!(at([8, 8, 8, 8]), "eth0");
        assert!(lookup(&routes[1..], Ipv4Addr::new(192, 168, 1, 1)).is_none());
    }

    #[test]
    fn device_counters_come_from_the_namespace_s_net_dev_table() {
        let table = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
flannel0: 4200 35 0 1 0 0 0 0 9100 70 0 0 0 0 0 0
";
        assert_eq!(net_dev(table, "flannel0"), Some([35, 4200, 70, 9100]));
        assert_eq!(net_dev(table, "lo"), Some([2, 120, 2, 120]));
        assert_eq!(net_dev(table, "flannel.1"), None);
        assert_eq!(net_dev("eth0: 1 2 x\n", "eth0"), None);
    }
}
