//! The udp backend's data path, flannel's original design: a TUN device owns the cluster
//! CIDR's route; one thread reads each IP packet from it, finds the node whose podCIDR
//! holds the destination and sends the packet as one UDP datagram to that node's port
//! 8285; another thread takes datagrams from known nodes, checks them and writes the
//! packet back into the TUN for the kernel to deliver.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use rtnetlink::{Handle, LinkUnspec};

use super::{Local, OverlayError, Peer, PeerStats, Stats, TUN_DEVICE, UDP_PORT, tun};
use crate::cidr::Ipv4Cidr;
use crate::link::{self, LinkError};

/// Why a packet was dropped; each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From the TUN, for an address no node's podCIDR holds.
    NoRoute,
    /// From the TUN, not IPv4.
    NotIpv4,
    /// A datagram from an address that is not a cluster node.
    Stranger,
    /// Shorter than its IPv4 header says, or no IPv4 header at all.
    Truncated,
    /// Not an IPv4 packet, or a header that makes no sense.
    Malformed,
    /// Larger than the TUN's MTU: no pod could have sent it.
    Oversize,
    /// For an address outside this node's podCIDR.
    Misdirected,
    /// The kernel refused it (send or TUN write failed).
    Failed,
}

const DROPS: [DropReason; 8] = [
    DropReason::NoRoute,
    DropReason::NotIpv4,
    DropReason::Stranger,
    DropReason::Truncated,
    DropReason::Malformed,
    DropReason::Oversize,
    DropReason::Misdirected,
    DropReason::Failed,
];

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NotIpv4 => "not_ipv4",
            Self::Stranger => "stranger",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::Oversize => "oversize",
            Self::Misdirected => "misdirected",
            Self::Failed => "failed",
        }
    }
}

#[derive(Default)]
struct Counters {
    encap_packets: AtomicU64,
    encap_bytes: AtomicU64,
    decap_packets: AtomicU64,
    decap_bytes: AtomicU64,
    dropped: AtomicU64,
}

struct Route {
    node: String,
    subnet: Ipv4Cidr,
    to: SocketAddr,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Table {
    routes: Vec<Route>,
    by_ip: HashMap<Ipv4Addr, Arc<Counters>>,
}

impl Table {
    fn route(&self, dst: Ipv4Addr) -> Option<&Route> {
        self.routes.iter().find(|r| r.subnet.contains(dst))
    }
}

struct Shared {
    table: RwLock<Table>,
    /// Counters by node name, kept while the node stays a peer.
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    drops: [AtomicU64; DROPS.len()],
    local: Local,
    mtu: usize,
}

impl Shared {
    fn drop(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Relaxed);
    }

    /// Checks a datagram's payload from a peer: one whole IPv4 packet, no larger than
    /// a pod could send, for a pod (or the gateway) of this node.
    fn check(&self, pkt: &[u8]) -> Result<(), DropReason> {
        if pkt.len() > self.mtu {
            return Err(DropReason::Oversize);
        }
        if pkt.len() < 20 {
            return Err(DropReason::Truncated);
        }
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        if pkt[0] >> 4 != 4 || ihl < 20 {
            return Err(DropReason::Malformed);
        }
        let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        if total > pkt.len() || ihl > total {
            return Err(DropReason::Truncated);
        }
        if total < pkt.len() {
            return Err(DropReason::Malformed);
        }
        let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
        if !self.local.subnet.contains(dst) {
            return Err(DropReason::Misdirected);
        }
        Ok(())
    }
}

/// The running data path; dropping it stops and joins its threads.
pub struct DataPath {
    shared: Arc<Shared>,
    stop: OwnedFd,
    threads: Vec<JoinHandle<()>>,
}

fn tun_error(e: LinkError) -> OverlayError {
    OverlayError::Link(e)
}

impl DataPath {
    /// Creates the TUN device with `mtu`, gives it this node's subnet address with the
    /// cluster prefix (so the kernel routes the whole cluster CIDR to it, and the
    /// node's own podCIDR, more specific, stays on the bridge), binds UDP 8285 on the
    /// public address and starts the two threads. Returns the device's index.
    pub async fn start(
        handle: &Handle,
        local: Local,
        mtu: u32,
    ) -> Result<(u32, DataPath), OverlayError> {
        let dev = tun::open(TUN_DEVICE).map_err(OverlayError::Tun)?;
        let index = link::link_index(handle, TUN_DEVICE)
            .await?
            .ok_or_else(|| OverlayError::Tun(io::Error::other("the device vanished")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|source| {
                tun_error(LinkError::Netlink {
                    what: format!("bring {TUN_DEVICE} up"),
                    source,
                })
            })?;
        link::add_address(
            handle,
            index,
            local.subnet.network(),
            local.cluster.prefix(),
        )
        .await?;
        let addr = SocketAddrV4::new(local.public_ip, UDP_PORT);
        let sock = UdpSocket::bind(addr).map_err(|source| OverlayError::Listen {
            addr: addr.to_string(),
            source,
        })?;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            set_int(sock.as_raw_fd(), opt, 4 << 20);
        }
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(OverlayError::Tun(io::Error::last_os_error()));
        }
        // SAFETY: just created, owned here.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let shared = Arc::new(Shared {
            table: RwLock::new(Table::default()),
            counters: Mutex::new(HashMap::new()),
            drops: Default::default(),
            local,
            mtu: mtu as usize,
        });
        let clone = |what: &str| -> Result<(File, UdpSocket), OverlayError> {
            let d = dev.try_clone().map_err(OverlayError::Tun)?;
            let s = sock.try_clone().map_err(|source| OverlayError::Listen {
                addr: format!("{what} {addr}"),
                source,
            })?;
            Ok((d, s))
        };
        let mut threads = Vec::new();
        let (d, s) = clone("encap")?;
        let (sh, st) = (shared.clone(), stop.as_raw_fd());
        threads.push(
            std::thread::Builder::new()
                .name("overlay-encap".into())
                .spawn(move || encap(&sh, d, &s, st))
                .map_err(OverlayError::Tun)?,
        );
        let (sh, st) = (shared.clone(), stop.as_raw_fd());
        threads.push(
            std::thread::Builder::new()
                .name("overlay-decap".into())
                .spawn(move || decap(&sh, dev, &sock, st))
                .map_err(OverlayError::Tun)?,
        );
        Ok((
            index,
            DataPath {
                shared,
                stop,
                threads,
            },
        ))
    }

    /// Replaces the peer table; counters of peers that stay are kept.
    pub fn set_peers(&self, peers: &[Peer]) {
        let mut counters = self.shared.counters.lock().expect("not poisoned");
        counters.retain(|node, _| peers.iter().any(|p| &p.node == node));
        let mut table = Table::default();
        for p in peers {
            let c = counters.entry(p.node.clone()).or_default().clone();
            table.by_ip.insert(p.public_ip, c.clone());
            table.routes.push(Route {
                node: p.node.clone(),
                subnet: p.subnet,
                to: SocketAddr::V4(SocketAddrV4::new(p.public_ip, UDP_PORT)),
                counters: c,
            });
        }
        // Longest prefix first, as the kernel would choose.
        table
            .routes
            .sort_by_key(|r| std::cmp::Reverse(r.subnet.prefix()));
        *self.shared.table.write().expect("not poisoned") = table;
    }

    pub fn stats(&self) -> Stats {
        let table = self.shared.table.read().expect("not poisoned");
        let peers = table
            .routes
            .iter()
            .map(|r| {
                let c = &r.counters;
                PeerStats {
                    node: r.node.clone(),
                    public_ip: match r.to {
                        SocketAddr::V4(a) => *a.ip(),
                        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                    },
                    encap_packets: c.encap_packets.load(Relaxed),
                    encap_bytes: c.encap_bytes.load(Relaxed),
                    decap_packets: c.decap_packets.load(Relaxed),
                    decap_bytes: c.decap_bytes.load(Relaxed),
                    dropped: c.dropped.load(Relaxed),
                }
            })
            .collect();
        let dropped: BTreeMap<&'static str, u64> = DROPS
            .iter()
            .map(|d| (d.name(), self.shared.drops[*d as usize].load(Relaxed)))
            .collect();
        Stats {
            backend: "udp".into(),
            peers,
            dropped,
            device: None,
        }
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn set_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt with a pointer to a live int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Waits until `fd` is readable; false once `stop` is (or polling fails for good).
fn wait(fd: RawFd, stop: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll(2) on an array of two live pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        return fds[1].revents == 0;
    }
}

/// TUN -> UDP: every packet the kernel routes to the device goes to the node owning
/// its destination, or is dropped and counted.
fn encap(sh: &Shared, mut dev: File, sock: &UdpSocket, stop: RawFd) {
    let mut buf = vec![0u8; 65536];
    while wait(dev.as_raw_fd(), stop) {
        loop {
            let n = match dev.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read from {TUN_DEVICE}");
                    break;
                }
            };
            let pkt = &buf[..n];
            if n < 20 || pkt[0] >> 4 != 4 {
                sh.drop(DropReason::NotIpv4);
                continue;
            }
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let table = sh.table.read().expect("not poisoned");
            let Some(r) = table.route(dst) else {
                sh.drop(DropReason::NoRoute);
                continue;
            };
            match sock.send_to(pkt, r.to) {
                Ok(_) => {
                    r.counters.encap_packets.fetch_add(1, Relaxed);
                    r.counters.encap_bytes.fetch_add(n as u64, Relaxed);
                }
                Err(_) => sh.drop(DropReason::Failed),
            }
        }
    }
}

/// UDP -> TUN: datagrams from cluster nodes holding one sound IPv4 packet for this
/// node's pods are written to the device; everything else is dropped and counted.
fn decap(sh: &Shared, mut dev: File, sock: &UdpSocket, stop: RawFd) {
    let mut buf = vec![0u8; 65536];
    while wait(sock.as_raw_fd(), stop) {
        loop {
            let mut from: libc::sockaddr_in = unsafe_zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: recvfrom(2) into our buffer and a sockaddr_in of the given size.
            let n = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_in).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
            let n = n as usize;
            let src = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
            let table = sh.table.read().expect("not poisoned");
            let Some(c) = table.by_ip.get(&src) else {
                sh.drop(DropReason::Stranger);
                continue;
            };
            let pkt = &buf[..n.min(buf.len())];
            if let Err(why) = sh.check(pkt) {
                c.dropped.fetch_add(1, Relaxed);
                sh.drop(why);
                continue;
            }
            // A TUN write takes the whole packet or none of it.
            match dev.write(pkt) {
                Ok(w) if w == n => {
                    c.decap_packets.fetch_add(1, Relaxed);
                    c.decap_bytes.fetch_add(n as u64, Relaxed);
                }
                Ok(_) | Err(_) => {
                    c.dropped.fetch_add(1, Relaxed);
                    sh.drop(DropReason::Failed);
                }
            }
        }
    }
}

fn unsafe_zeroed() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            table: RwLock::new(Table::default()),
            counters: Mutex::new(HashMap::new()),
            drops: Default::default(),
            local: Local {
                cluster: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.2.0/24".parse().unwrap(),
                public_ip: Ipv4Addr::new(192, 168, 56, 12),
            },
            mtu: 1472,
        }
    }

    fn packet(len: usize, dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn sound_packets_for_local_pods_pass() {
        let sh = shared();
        assert_eq!(sh.check(&packet(84, [10, 244, 2, 7])), Ok(()));
        assert_eq!(sh.check(&packet(1472, [10, 244, 2, 0])), Ok(()));
    }

    #[test]
    fn bad_datagrams_are_told_apart() {
        let sh = shared();
        assert_eq!(sh.check(&[0x45, 0, 0]), Err(DropReason::Truncated));
        assert_eq!(
            sh.check(&packet(1473, [10, 244, 2, 7])),
            Err(DropReason::Oversize)
        );
        let mut v6 = packet(60, [10, 244, 2, 7]);
        v6[0] = 0x60;
        assert_eq!(sh.check(&v6), Err(DropReason::Malformed));
        let mut short = packet(60, [10, 244, 2, 7]);
        short[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(sh.check(&short), Err(DropReason::Truncated));
        let mut padded = packet(60, [10, 244, 2, 7]);
        padded[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(sh.check(&padded), Err(DropReason::Malformed));
        assert_eq!(
            sh.check(&packet(60, [10, 244, 3, 7])),
            Err(DropReason::Misdirected)
        );
        assert_eq!(
            sh.check(&packet(60, [8, 8, 8, 8])),
            Err(DropReason::Misdirected)
        );
    }

    #[test]
    fn the_most_specific_subnet_wins() {
        let c = Arc::new(Counters::default());
        let route = |node: &str, s: &str| Route {
            node: node.into(),
            subnet: s.parse().unwrap(),
            to: "192.168.56.11:8285".parse().unwrap(),
            counters: c.clone(),
        };
        let mut t = Table {
            routes: vec![
                route("wide", "10.244.0.0/20"),
                route("narrow", "10.244.3.0/24"),
            ],
            by_ip: HashMap::new(),
        };
        t.routes
            .sort_by_key(|r| std::cmp::Reverse(r.subnet.prefix()));
        assert_eq!(
            t.route(Ipv4Addr::new(10, 244, 3, 9)).unwrap().node,
            "narrow"
        );
        assert_eq!(t.route(Ipv4Addr::new(10, 244, 4, 9)).unwrap().node, "wide");
        assert!(t.route(Ipv4Addr::new(10, 245, 0, 1)).is_none());
    }
}
