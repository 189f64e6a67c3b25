//! The udp backend's data path, flannel's original design: a TUN device owns the cluster
//! CIDR's route; a thread reads each IP packet from it, finds the node whose podCIDR
//! holds the destination and sends the packet as one UDP datagram to that node's port
//! 8285; another thread takes datagrams from known nodes, checks them and writes the
//! packet back into the TUN for the kernel to deliver. Segmentation offload on both
//! sides (see `offload`) lets it move 64 KiB per system call instead of one MTU.
//!
//! Longer than most files here (about 650 lines of code, then its unit tests): the two
//! loops share the peer table, the socket set-up and the counters, and read best side
//! by side.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use rtnetlink::{Handle, LinkUnspec};

use super::offload::{self, Coalescer, Outcome, VNET_HDR_LEN, VnetHdr};
use super::{Local, OverlayError, Peer, PeerStats, Stats, TUN_DEVICE, UDP_PORT, tun};
use crate::cidr::Ipv4Cidr;
use crate::link;

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

impl DataPath {
    /// Creates the TUN device with `mtu`, gives it this node's subnet address with the
    /// cluster prefix (so the kernel routes the whole cluster CIDR to it, and the
    /// node's own podCIDR, more specific, stays on the bridge), binds UDP 8285 on the
    /// public address and starts the data path's two threads.
    pub async fn start(handle: &Handle, local: Local, mtu: u32) -> Result<DataPath, OverlayError> {
        let dev = tun::open(TUN_DEVICE).map_err(OverlayError::Tun)?;
        let index = link::link_index(handle, TUN_DEVICE)
            .await?
            .ok_or_else(|| OverlayError::Tun(io::Error::other("the device vanished")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(link::nl(format!("bring {TUN_DEVICE} up")))?;
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
            set_opt(sock.as_raw_fd(), libc::SOL_SOCKET, opt, 4 << 20);
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
        let (dev2, sock2) = (
            dev.try_clone().map_err(OverlayError::Tun)?,
            sock.try_clone().map_err(OverlayError::Tun)?,
        );
        let encap = Arc::new(Mutex::new(Encap::new()));
        let (sh, st, en) = (shared.clone(), stop.as_raw_fd(), encap.clone());
        let mut threads = vec![
            std::thread::Builder::new()
                .name("overlay-encap".into())
                .spawn(move || encap_loop(&sh, &en, &dev2, &sock2, st))
                .map_err(OverlayError::Tun)?,
        ];
        let (sh, st) = (shared.clone(), stop.as_raw_fd());
        threads.push(
            std::thread::Builder::new()
                .name("overlay-decap".into())
                .spawn(move || decap_loop(&sh, &encap, &dev, &sock, st))
                .map_err(OverlayError::Tun)?,
        );
        Ok(DataPath {
            shared,
            stop,
            threads,
        })
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

fn set_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt with a pointer to a live int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sleeps until `fd` has something; false once `stop` is readable (or polling fails
/// for good).
fn wait(fd: RawFd, stop: RawFd) -> bool {
    let mut fds = [fd, stop].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
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

/// One direction per thread, so that on two cores sending and receiving run side by
/// side (one thread for both, busy-polling for replies, measured slower here). The
/// encap side sits behind a lock so that one thread at a time reads the TUN and packets
/// of a flow leave in order.
fn encap_loop(sh: &Shared, encap: &Mutex<Encap>, dev: &File, sock: &UdpSocket, stop: RawFd) {
    while wait(dev.as_raw_fd(), stop) {
        encap.lock().expect("not poisoned").drain(sh, dev, sock);
    }
}

/// How long the decap thread watches the TUN for the answer to a lone small packet it
/// has just delivered (a request): an answer caught here leaves without a thread
/// wake-up, which on these machines costs more than the wait.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

fn decap_loop(sh: &Shared, encap: &Mutex<Encap>, dev: &File, sock: &UdpSocket, stop: RawFd) {
    let mut decap = Decap::new(sock);
    while wait(sock.as_raw_fd(), stop) {
        let (datagrams, bytes) = decap.drain(sh, dev, sock);
        if datagrams == 0 {
            continue;
        }
        // The kernel delivers what we wrote before the write returns, so whatever it
        // answers at once (an ICMP echo reply, a TCP ACK or SYN-ACK) is already in the
        // TUN, and a pod answering a small request does so within microseconds: send
        // that from here instead of waking the encap thread for it. Bulk traffic (many
        // or large datagrams) never waits, nor does anything while the encap thread
        // is busy.
        let started = std::time::Instant::now();
        let wait_for_answer = datagrams == 1 && bytes <= 512;
        loop {
            let Ok(mut e) = encap.try_lock() else { break };
            if e.drain(sh, dev, sock) > 0 || !wait_for_answer || started.elapsed() > ANSWER_WAIT {
                break;
            }
            drop(e);
            std::hint::spin_loop();
        }
    }
}

/// TUN -> UDP: every packet the kernel routes to the device goes to the node owning
/// its destination (a TCP super-packet as the MTU-sized packets it stands for), or is
/// dropped and counted.
struct Encap {
    buf: Vec<u8>,
    segments: Vec<u8>,
    gso: bool,
}

impl Encap {
    fn new() -> Self {
        Self {
            buf: vec![0u8; 65536 + VNET_HDR_LEN],
            segments: Vec::with_capacity(128 * 1024),
            gso: true,
        }
    }

    /// Handles what the TUN holds; returns how many packets it read.
    fn drain(&mut self, sh: &Shared, mut dev: &File, sock: &UdpSocket) -> usize {
        let (buf, segments, gso) = (&mut self.buf, &mut self.segments, &mut self.gso);
        let mut read = 0;
        loop {
            let n = match dev.read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read from {TUN_DEVICE}");
                    break;
                }
            };
            read += 1;
            let Some(h) = VnetHdr::parse(&buf[..n]) else {
                sh.drop(DropReason::NotIpv4);
                continue;
            };
            let pkt = &mut buf[VNET_HDR_LEN..n];
            if pkt.len() < 20 || pkt[0] >> 4 != 4 {
                sh.drop(DropReason::NotIpv4);
                continue;
            }
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            let table = sh.table.read().expect("not poisoned");
            let Some(r) = table.route(dst) else {
                sh.drop(DropReason::NoRoute);
                continue;
            };
            let (packets, bytes, sent) = match offload::prepare(&h, pkt, segments) {
                Outcome::One => (1, pkt.len(), sock.send_to(pkt, r.to).map(|_| ())),
                Outcome::Segments { size, count } => (
                    count,
                    segments.len(),
                    send_segments(sock, segments, size, r.to, gso),
                ),
                Outcome::Unsupported => {
                    sh.drop(DropReason::Malformed);
                    continue;
                }
            };
            match sent {
                Ok(()) => {
                    r.counters.encap_packets.fetch_add(packets as u64, Relaxed);
                    r.counters.encap_bytes.fetch_add(bytes as u64, Relaxed);
                }
                Err(_) => sh.drop(DropReason::Failed),
            }
        }
        read
    }
}

/// Sends `data`, packets of `size` bytes back to back (the last may be shorter), one
/// UDP datagram each: through UDP segmentation offload (one call for up to 64 KiB) when
/// the kernel takes it, else one send per packet.
fn send_segments(
    sock: &UdpSocket,
    data: &[u8],
    size: usize,
    to: SocketAddr,
    gso: &mut bool,
) -> io::Result<()> {
    let per_call = (65_000 / size).clamp(1, 64);
    for batch in data.chunks(per_call * size) {
        if *gso && batch.len() > size {
            match send_gso(sock, batch, size, to) {
                Ok(()) => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::info!(error = %e, "no UDP segmentation offload here; sending packet by packet");
                    *gso = false;
                }
                Err(e) => return Err(e),
            }
        }
        for p in batch.chunks(size) {
            sock.send_to(p, to)?;
        }
    }
    Ok(())
}

/// One sendmsg(2) with a UDP_SEGMENT control message: the kernel cuts `batch` into
/// datagrams of `size` bytes.
fn send_gso(sock: &UdpSocket, batch: &[u8], size: usize, to: SocketAddr) -> io::Result<()> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut addr: libc::sockaddr_in = unsafe_zeroed();
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = to.port().to_be();
    addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
    let mut iov = libc::iovec {
        iov_base: batch.as_ptr() as *mut libc::c_void,
        iov_len: batch.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is valid and filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
    // SAFETY: the control buffer (32 bytes) holds one cmsghdr with 2 bytes of data,
    // CMSG_SPACE(2) = 24 on 64-bit Linux; the pointers stay inside it.
    let sent = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
        std::ptr::copy_nonoverlapping((size as u16).to_ne_bytes().as_ptr(), libc::CMSG_DATA(c), 2);
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// UDP -> TUN: datagrams from cluster nodes holding one sound IPv4 packet for this
/// node's pods are written to the device; everything else is dropped and counted.
/// The kernel may hand over several datagrams of one peer at once (UDP GRO).
struct Decap {
    buf: Vec<u8>,
    merge: Coalescer,
}

impl Decap {
    fn new(sock: &UdpSocket) -> Self {
        set_opt(sock.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 1);
        Self {
            buf: vec![0u8; 65536],
            merge: Coalescer::default(),
        }
    }

    /// Handles what the socket holds; returns how many datagrams (and bytes) it read.
    fn drain(&mut self, sh: &Shared, dev: &File, sock: &UdpSocket) -> (usize, usize) {
        let (buf, merge) = (&mut self.buf, &mut self.merge);
        let (mut read, mut bytes) = (0, 0);
        loop {
            let mut from: libc::sockaddr_in = unsafe_zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut control = [0u64; 8];
            // SAFETY: msghdr is plain data; zeroed is valid and filled in below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: recvmsg(2) into our buffer, address and control buffer, all live
            // and of the sizes given.
            let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
            let n = n as usize;
            read += 1;
            bytes += n;
            // SAFETY: walks the control messages recvmsg filled in, within msg_controllen.
            let gro = unsafe {
                let mut size = None;
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let mut v = [0u8; 4];
                        std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c), v.as_mut_ptr(), 4);
                        size = Some(i32::from_ne_bytes(v).max(1) as usize);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                size
            };
            let src = Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
            let table = sh.table.read().expect("not poisoned");
            let Some(c) = table.by_ip.get(&src) else {
                sh.drop(DropReason::Stranger);
                continue;
            };
            if msg.msg_flags & libc::MSG_TRUNC != 0 {
                c.dropped.fetch_add(1, Relaxed);
                sh.drop(DropReason::Oversize);
                continue;
            }
            let flush = |merge: &mut Coalescer| {
                let (hdr, pkt) = merge.take();
                if write_packet(dev, &hdr, pkt).is_err() {
                    c.dropped.fetch_add(1, Relaxed);
                    sh.drop(DropReason::Failed);
                }
            };
            for pkt in buf[..n].chunks(gro.unwrap_or(n).max(1)) {
                if let Err(why) = sh.check(pkt) {
                    c.dropped.fetch_add(1, Relaxed);
                    sh.drop(why);
                    continue;
                }
                c.decap_packets.fetch_add(1, Relaxed);
                c.decap_bytes.fetch_add(pkt.len() as u64, Relaxed);
                if !merge.push(pkt) {
                    flush(merge);
                    merge.push(pkt);
                }
            }
            if !merge.is_empty() {
                flush(merge);
            }
        }
        (read, bytes)
    }
}

/// Writes one packet behind its `virtio_net_hdr` (empty for a lone packet, whose
/// checksums the kernel then checks as for any received packet). A TUN write takes all
/// or nothing.
fn write_packet(dev: &File, hdr: &[u8; VNET_HDR_LEN], pkt: &[u8]) -> io::Result<()> {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: pkt.as_ptr() as *mut libc::c_void,
            iov_len: pkt.len(),
        },
    ];
    // SAFETY: writev(2) of two live buffers.
    let w = unsafe { libc::writev(dev.as_raw_fd(), iov.as_ptr(), 2) };
    if w < 0 {
        return Err(io::Error::last_os_error());
    }
    if w as usize != hdr.len() + pkt.len() {
        return Err(io::Error::other("short write"));
    }
    Ok(())
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
