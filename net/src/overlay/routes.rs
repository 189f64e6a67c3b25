//! The kernel backends through rtnetlink: `vxlan` (a VXLAN device, and per peer a
//! route, a permanent neighbour and an FDB entry, like flannel's `flannel.1`) and
//! `host-gw` (a route per peer podCIDR via the peer's address); plus finding the
//! interface that holds the node's address.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, route::RouteType};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};

use super::{Local, Peer, VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI};
use crate::cidr::Ipv4Cidr;
use crate::link::{self, LinkError, code, nl};

const ENOENT: i32 = -libc::ENOENT;
const ESRCH: i32 = -libc::ESRCH;

/// Index and MTU of the interface holding `ip`.
pub async fn interface_of(h: &Handle, ip: Ipv4Addr) -> Result<Option<(u32, u32)>, LinkError> {
    let mut addrs = h.address().get().execute();
    let mut index = None;
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        let holds = a.attributes.iter().any(|attr| {
            matches!(attr, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip)
        });
        if holds {
            index = Some(a.header.index);
        }
    }
    let Some(index) = index else {
        return Ok(None);
    };
    let mut links = h.link().get().match_index(index).execute();
    let mtu = match links.try_next().await {
        Ok(Some(l)) => l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        }),
        Ok(None) => None,
        Err(e) => return Err(nl(format!("look up link {index}"))(e)),
    };
    Ok(Some((index, mtu.unwrap_or(1500))))
}

/// The first IPv4 address of interface `name` (`--iface`).
pub async fn address_of(h: &Handle, name: &str) -> Result<Option<Ipv4Addr>, LinkError> {
    let Some(index) = link::link_index(h, name).await? else {
        return Ok(None);
    };
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        for attr in &a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(x))
            | AddressAttribute::Address(IpAddr::V4(x)) = attr
            {
                return Ok(Some(*x));
            }
        }
    }
    Ok(None)
}

/// The VTEP MAC of a node: locally administered, derived from its podCIDR so that it
/// stays the same across restarts and peers need not relearn it (`0a:58` + address,
/// the scheme OVN-Kubernetes uses for pod MACs).
pub fn vtep_mac(subnet: Ipv4Cidr) -> [u8; 6] {
    let o = subnet.network().octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// (Re)creates `flannel.1`: VNI 1, UDP 8472 from the node's address on `uplink`, no
/// learning (entries come from the peer list), `mtu`, the subnet's network address
/// /32. Returns its index and MAC.
pub async fn vxlan_device(
    h: &Handle,
    local: Local,
    uplink: u32,
    mtu: u32,
) -> Result<(u32, [u8; 6]), LinkError> {
    // A device left by an earlier run may carry other settings: start afresh (the
    // routes and entries through it go with it and are put back by the next sync).
    link::delete_link(h, VXLAN_DEVICE).await?;
    let mac = vtep_mac(local.subnet);
    h.link()
        .add(
            LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                .dev(uplink)
                .port(VXLAN_PORT)
                .local(local.public_ip)
                .learning(false)
                .mtu(mtu)
                .address(mac.to_vec())
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("create {VXLAN_DEVICE}")))?;
    let index = link::link_index(h, VXLAN_DEVICE).await?.ok_or_else(|| {
        LinkError::Socket(std::io::Error::other(format!("{VXLAN_DEVICE} vanished")))
    })?;
    link::add_address(h, index, local.subnet.network(), 32).await?;
    Ok((index, mac))
}

fn route_to(subnet: Ipv4Cidr, via: Ipv4Addr, dev: u32, onlink: bool) -> RouteMessage {
    let b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix())
        .gateway(via)
        .output_interface(dev);
    if onlink {
        b.onlink().build()
    } else {
        b.build()
    }
}

async fn add_route(h: &Handle, r: RouteMessage, what: String) -> Result<(), LinkError> {
    h.route().add(r).replace().execute().await.map_err(nl(what))
}

async fn del_route(h: &Handle, r: RouteMessage, what: String) -> Result<(), LinkError> {
    match h.route().del(r).execute().await {
        Ok(()) => Ok(()),
        Err(e) if code(&e) == ESRCH || code(&e) == ENOENT => Ok(()),
        Err(e) => Err(nl(what)(e)),
    }
}

fn neighbour(dev: u32, ip: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = dev;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m
}

fn fdb_entry(dev: u32, mac: &[u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = dev;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m
}

async fn del_neighbour(h: &Handle, m: NeighbourMessage, what: String) -> Result<(), LinkError> {
    match h.neighbours().del(m).execute().await {
        Ok(()) => Ok(()),
        Err(e) if code(&e) == ENOENT || code(&e) == ESRCH => Ok(()),
        Err(e) => Err(nl(what)(e)),
    }
}

/// Brings `flannel.1`'s entries from `old` to `new`: for each peer, its VTEP's IP
/// (the peer subnet's network address) resolves to its VTEP MAC, that MAC is reached
/// at the peer's public address, and the peer's podCIDR is routed via the VTEP IP.
pub async fn sync_vxlan(h: &Handle, dev: u32, old: &[Peer], new: &[Peer]) -> Result<(), LinkError> {
    for p in old.iter().filter(|p| !new.contains(p)) {
        let gw = p.subnet.network();
        del_route(
            h,
            route_to(p.subnet, gw, dev, true),
            format!("remove the route to {}", p.subnet),
        )
        .await?;
        del_neighbour(h, neighbour(dev, gw), format!("remove the neighbour {gw}")).await?;
        if let Some(mac) = &p.vtep_mac {
            del_neighbour(
                h,
                fdb_entry(dev, mac, p.public_ip),
                format!("remove the FDB entry of {}", p.node),
            )
            .await?;
        }
    }
    for p in new {
        let Some(mac) = &p.vtep_mac else {
            tracing::warn!(node = %p.node, "peer has not published its VTEP MAC yet");
            continue;
        };
        let gw = p.subnet.network();
        h.neighbours()
            .add(dev, IpAddr::V4(gw))
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add the neighbour {gw} of {}", p.node)))?;
        let mut fdb = h
            .neighbours()
            .add_bridge(dev, mac)
            .destination(IpAddr::V4(p.public_ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        fdb.message_mut().header.kind = RouteType::Unspec;
        fdb.execute()
            .await
            .map_err(nl(format!("add the FDB entry of {}", p.node)))?;
        add_route(
            h,
            route_to(p.subnet, gw, dev, true),
            format!("add the route to {} via {VXLAN_DEVICE}", p.subnet),
        )
        .await?;
    }
    Ok(())
}

/// The pod-network routes through a gateway on `dev` (the ones host-gw makes).
async fn gateway_routes(
    h: &Handle,
    cluster: Ipv4Cidr,
    dev: u32,
) -> Result<Vec<(Ipv4Cidr, Ipv4Addr)>, LinkError> {
    let mut out = Vec::new();
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await.map_err(nl("list routes"))? {
        let (mut dst, mut gw, mut oif) = (None, None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let (Some(d), Some(g), Some(i)) = (dst, gw, oif)
            && i == dev
            && let Ok(c) = Ipv4Cidr::new(d, r.header.destination_prefix_length)
            && cluster.contains(c.network())
            && c.prefix() > cluster.prefix()
        {
            out.push((c, g));
        }
    }
    Ok(out)
}

/// host-gw: a route to each peer's podCIDR via its address on `uplink`; pod-network
/// routes on `uplink` that no peer accounts for (a node gone, perhaps while this one
/// was down) are removed.
pub async fn sync_host_gw(
    h: &Handle,
    local: Local,
    uplink: u32,
    peers: &[Peer],
) -> Result<(), LinkError> {
    for (subnet, gw) in gateway_routes(h, local.cluster, uplink).await? {
        if subnet != local.subnet
            && !peers
                .iter()
                .any(|p| p.subnet == subnet && p.public_ip == gw)
        {
            del_route(
                h,
                route_to(subnet, gw, uplink, false),
                format!("remove the route to {subnet}"),
            )
            .await?;
        }
    }
    for p in peers {
        add_route(
            h,
            route_to(p.subnet, p.public_ip, uplink, false),
            format!("add the route to {} via {}", p.subnet, p.public_ip),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_stable_and_locally_administered() {
        let m = vtep_mac("10.244.3.0/24".parse().unwrap());
        assert_eq!(m, [0x0a, 0x58, 10, 244, 3, 0]);
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_eq!(m[0] & 0x01, 0, "unicast");
    }
}
