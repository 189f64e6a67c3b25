//! Same-node pod networking through rtnetlink: the `cni0` bridge holding the podCIDR's
//! gateway, and per pod a veth pair with `eth0` inside the pod's namespace (what the
//! bridge CNI plugin does for flannel).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkDummy, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::cidr::Ipv4Cidr;
use crate::netns::{NetNs, NetnsError};

const ENODEV: i32 = -libc::ENODEV;
const EEXIST: i32 = -libc::EEXIST;
const EADDRNOTAVAIL: i32 = -libc::EADDRNOTAVAIL;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("failed to {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("failed to open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("failed to set {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Netlink { what, source }
}

/// The errno a netlink error carries (negative), or 0.
pub(crate) fn code(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code(),
        _ => 0,
    }
}

/// The error for a link that disappeared between two steps of ours.
fn vanished(what: &str) -> LinkError {
    LinkError::Socket(std::io::Error::other(format!("{what} vanished")))
}

/// A netlink handle for the namespace the calling thread is in.
pub fn connect() -> Result<Handle, LinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle bound to `ns` (the socket is opened by a thread inside it; the
/// connection then runs on the caller's runtime).
pub fn connect_in(ns: &NetNs) -> Result<Handle, LinkError> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = ns
        .run(move || {
            let _in_runtime = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(LinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, or None if there is no such link.
pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        Err(e) if code(&e) == ENODEV => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

/// Deletes link `name` if it exists.
pub async fn delete_link(h: &Handle, name: &str) -> Result<(), LinkError> {
    if let Some(i) = link_index(h, name).await? {
        match h.link().del(i).execute().await {
            Ok(()) => {}
            Err(e) if code(&e) == ENODEV => {}
            Err(e) => return Err(nl(format!("delete link {name}"))(e)),
        }
    }
    Ok(())
}

async fn set_up(h: &Handle, index: u32, what: &str) -> Result<(), LinkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring {what} up")))
}

/// Adds `ip/prefix` to link `index`; an address already there is fine.
pub async fn add_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), LinkError> {
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if code(&e) == EEXIST => Ok(()),
        Err(e) => Err(nl(format!("add address {ip}/{prefix}"))(e)),
    }
}

/// The link that holds address `ip`, if any.
pub async fn link_with_address(h: &Handle, ip: Ipv4Addr) -> Result<Option<u32>, LinkError> {
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        let holds = a.attributes.iter().any(|attr| {
            matches!(attr, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip)
        });
        if holds {
            return Ok(Some(a.header.index));
        }
    }
    Ok(None)
}

/// Removes `ip` (any prefix) from link `index`; an address not there is fine.
pub async fn remove_address(h: &Handle, index: u32, ip: Ipv4Addr) -> Result<(), LinkError> {
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    let mut found = Vec::new();
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        let holds = a.attributes.iter().any(|attr| {
            matches!(attr, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip)
        });
        if holds {
            found.push(a);
        }
    }
    for a in found {
        match h.address().del(a).execute().await {
            Ok(()) => {}
            Err(e) if code(&e) == EADDRNOTAVAIL || code(&e) == ENODEV => {}
            Err(e) => return Err(nl(format!("remove address {ip}"))(e)),
        }
    }
    Ok(())
}

/// Makes sure bridge `name` exists, is up and holds `addr/prefix`; returns its index.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<u32, LinkError> {
    let index = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => {}
                Err(e) if code(&e) == EEXIST => {}
                Err(e) => return Err(nl(format!("create bridge {name}"))(e)),
            }
            link_index(h, name)
                .await?
                .ok_or_else(|| vanished(&format!("bridge {name}")))?
        }
    };
    add_address(h, index, addr, prefix).await?;
    set_up(h, index, name).await?;
    Ok(index)
}

/// Makes sure dummy link `name` exists, is up and holds `addr/32` (an address of this
/// node that no wire answers for, as NodeLocal DNSCache's `nodelocaldns`); returns its
/// index.
pub async fn ensure_dummy(h: &Handle, name: &str, addr: Ipv4Addr) -> Result<u32, LinkError> {
    let index = match link_index(h, name).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkDummy::new(name).build()).execute().await {
                Ok(()) => {}
                Err(e) if code(&e) == EEXIST => {}
                Err(e) => return Err(nl(format!("create dummy link {name}"))(e)),
            }
            link_index(h, name)
                .await?
                .ok_or_else(|| vanished(&format!("dummy link {name}")))?
        }
    };
    add_address(h, index, addr, 32).await?;
    set_up(h, index, name).await?;
    Ok(index)
}

/// Writes a sysctl of the calling process's network namespace.
pub fn sysctl(key: &str, value: &str) -> Result<(), LinkError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| LinkError::Sysctl {
        key: key.to_string(),
        source,
    })
}

/// Loads the kernel module `name` with modprobe; what fails is logged, since the caller
/// checks for what the module brings (a module built into the kernel needs no loading,
/// and a kernel without modules may have it anyway).
pub fn load_module(name: &str) {
    match std::process::Command::new("modprobe").arg(name).output() {
        Ok(out) if out.status.success() => tracing::info!(module = name, "kernel module loaded"),
        Ok(out) => tracing::warn!(
            module = name,
            "modprobe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::warn!(module = name, "cannot run modprobe: {e}"),
    }
}

/// The node side of the pod network: the bridge and the wiring of each pod.
#[derive(Clone)]
pub struct Bridge {
    handle: Handle,
    name: String,
    index: u32,
    cidr: Ipv4Cidr,
    mtu: Option<u32>,
}

impl Bridge {
    /// Sets up `name` with the gateway of `cidr` in the calling process's namespace, and
    /// turns on forwarding and bridge netfilter (so Services see same-node traffic).
    /// Pods get `mtu` when given (the overlay's, so they never need fragmenting).
    pub async fn setup(name: &str, cidr: Ipv4Cidr, mtu: Option<u32>) -> Result<Self, LinkError> {
        let handle = connect()?;
        let index = ensure_bridge(&handle, name, cidr.gateway(), cidr.prefix()).await?;
        sysctl("net.ipv4.ip_forward", "1")?;
        // Present once br_netfilter is loaded, which nothing does on a stock Debian (the
        // kernel loads it on no request of its own): loaded here as k3s does. Without
        // it same-node Service traffic would skip iptables, so say so rather than fail.
        if !std::path::Path::new("/proc/sys/net/bridge").exists() {
            load_module("br_netfilter");
        }
        if let Err(e) = sysctl("net.bridge.bridge-nf-call-iptables", "1") {
            tracing::warn!(
                "{e}: same-node traffic to Services may bypass iptables (is br_netfilter loaded?)"
            );
        }
        Ok(Self {
            handle,
            name: name.to_string(),
            index,
            cidr,
            mtu,
        })
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wires pod namespace `ns`: a veth pair `host_if` (on the bridge) and `eth0`
    /// (inside, with `ip` and a default route via the gateway). Idempotent: an old
    /// `host_if` is replaced.
    pub async fn attach(&self, ns: &NetNs, host_if: &str, ip: Ipv4Addr) -> Result<(), LinkError> {
        plug(
            &self.handle,
            self.index,
            ns,
            host_if,
            ip,
            self.cidr.prefix(),
            self.cidr.gateway(),
            self.mtu,
        )
        .await
    }

    /// Turns on hairpin mode on port `host_if`: a pod that reaches its own service is
    /// sent back to itself, out of the port its packet came in by (the bridge
    /// plugin's hairpinMode). Port options travel in a NEWLINK message: SETLINK
    /// ignores them.
    pub async fn hairpin(&self, host_if: &str) -> Result<(), LinkError> {
        let index = link_index(&self.handle, host_if)
            .await?
            .ok_or_else(|| vanished(host_if))?;
        self.handle
            .link()
            .change(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("turn on hairpin on {host_if}")))
    }

    /// Removes the node side of a pod's wiring (deleting one end removes both).
    pub async fn detach(&self, host_if: &str) -> Result<(), LinkError> {
        delete_link(&self.handle, host_if).await
    }
}

/// Plugs namespace `ns` into the bridge with index `bridge`: a veth pair whose outer
/// end `host_if` joins the bridge and whose inner end becomes `eth0` with `ip/prefix`
/// and a default route via `gateway`; both ends get `mtu` when given. An old `host_if`
/// is replaced.
#[allow(clippy::too_many_arguments)]
pub async fn plug(
    h: &Handle,
    bridge: u32,
    ns: &NetNs,
    host_if: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    mtu: Option<u32>,
) -> Result<(), LinkError> {
    delete_link(h, host_if).await?;
    let peer = format!("{host_if}p");
    delete_link(h, &peer).await?;
    h.link()
        .add(LinkVeth::new(host_if, &peer).build())
        .execute()
        .await
        .map_err(nl(format!("create veth {host_if}")))?;
    let peer_index = link_index(h, &peer)
        .await?
        .ok_or_else(|| vanished("veth peer"))?;
    let nsfile = std::fs::File::open(ns.path()).map_err(|source| NetnsError::Sys {
        what: "open",
        name: ns.name().to_string(),
        source,
    })?;
    h.link()
        .set(
            LinkUnspec::new_with_index(peer_index)
                .setns_by_fd(nsfile.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move {peer} into {}", ns.name())))?;
    let host_index = link_index(h, host_if)
        .await?
        .ok_or_else(|| vanished("veth"))?;
    let mut host = LinkUnspec::new_with_index(host_index).controller(bridge);
    if let Some(m) = mtu {
        host = host.mtu(m);
    }
    h.link()
        .set(host.up().build())
        .execute()
        .await
        .map_err(nl(format!("put {host_if} on its bridge")))?;

    let inner = connect_in(ns)?;
    let lo = link_index(&inner, "lo").await?.unwrap_or(1);
    set_up(&inner, lo, "lo").await?;
    let idx = link_index(&inner, &peer)
        .await?
        .ok_or_else(|| vanished("veth peer"))?;
    let mut eth0 = LinkUnspec::new_with_index(idx).name("eth0".to_string());
    if let Some(m) = mtu {
        eth0 = eth0.mtu(m);
    }
    inner
        .link()
        .set(eth0.build())
        .execute()
        .await
        .map_err(nl("rename the inner interface to eth0"))?;
    add_address(&inner, idx, ip, prefix).await?;
    set_up(&inner, idx, "eth0").await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(idx)
        .build();
    match inner.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if code(&e) == EEXIST => Ok(()),
        Err(e) => Err(nl("add the default route")(e)),
    }
}

/// Gives namespace `ns` what every Vagrant VM has besides its host-only interface: a
/// NAT interface `nat0` with 10.0.2.15/24 (the same address on every VM) and the
/// default route through it (via 10.0.2.2, which answers nothing here). Routes to the
/// lab subnet stay on eth0, as the host-only network's do on a VM.
pub async fn nat_like_vagrant(ns: &NetNs) -> Result<(), LinkError> {
    let inner = connect_in(ns)?;
    delete_link(&inner, "nat0").await?;
    inner
        .link()
        .add(LinkVeth::new("nat0", "nat0p").build())
        .execute()
        .await
        .map_err(nl("create nat0"))?;
    let nat = link_index(&inner, "nat0")
        .await?
        .ok_or_else(|| vanished("nat0"))?;
    let peer = link_index(&inner, "nat0p")
        .await?
        .ok_or_else(|| vanished("nat0p"))?;
    add_address(&inner, nat, Ipv4Addr::new(10, 0, 2, 15), 24).await?;
    set_up(&inner, nat, "nat0").await?;
    set_up(&inner, peer, "nat0p").await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(Ipv4Addr::new(10, 0, 2, 2))
        .output_interface(nat)
        .build();
    inner
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl("route the default through nat0"))
}

/// The host-side interface name of a pod: `veth` + 8 hex digits of its UID's hash, to
/// fit the kernel's 15-character limit with room for the peer's suffix.
pub fn host_if_name(pod_uid: &str) -> String {
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in pod_uid.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_the_kernel_limit() {
        let n = host_if_name("0b4f6c2e-1111-2222-3333-444455556666");
        assert_eq!(n.len(), 12);
        assert!(format!("{n}p").len() <= 15);
        assert_eq!(n, host_if_name("0b4f6c2e-1111-2222-3333-444455556666"));
        assert_ne!(n, host_if_name("other"));
    }
}
