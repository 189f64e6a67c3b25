//! Stale UDP flows, deleted over netlink (ctnetlink), as kube-proxy deletes them: UDP
//! has no connection to end, so a client that keeps sending from one port (a DNS
//! resolver, a game) would follow its conntrack entry to a pod that is gone until the
//! entry times out. When an endpoint leaves a UDP service, the entries DNAT-ed to it are
//! deleted; when a UDP service gets its first endpoint, entries made while it had none
//! (sent to the service address itself) are too.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::rules::ServicePort;

/// A kind of UDP entry to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flow {
    /// Entries whose answer comes from this endpoint (DNAT-ed to it).
    ToEndpoint(SocketAddrV4),
    /// Entries to this service address and port that were not DNAT-ed.
    Unanswered(SocketAddrV4),
}

/// What a change from `old` to `new` leaves stale (pure).
pub fn stale_udp(old: &[&ServicePort], new: &[&ServicePort]) -> Vec<Flow> {
    let mut out = Vec::new();
    for o in old.iter().filter(|p| p.protocol == "udp") {
        let n = new
            .iter()
            .find(|p| p.name == o.name && p.protocol == o.protocol);
        let still: Vec<SocketAddrV4> = n
            .map(|n| n.endpoints.iter().map(|e| e.addr).collect())
            .unwrap_or_default();
        for e in &o.endpoints {
            if !still.contains(&e.addr) {
                out.push(Flow::ToEndpoint(e.addr));
            }
        }
        if let Some(n) = n
            && o.endpoints.is_empty()
            && !n.endpoints.is_empty()
        {
            out.push(Flow::Unanswered(SocketAddrV4::new(n.cluster_ip, n.port)));
        }
    }
    out.sort();
    out.dedup();
    out
}

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h
const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;

/// One direction of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
}

/// The attributes of a netlink message body: (type without flags, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        let padded = (len + 3) & !3;
        b = &b[padded.min(b.len())..];
    }
    out
}

/// A tuple from a `CTA_TUPLE_*` attribute.
pub fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let mut t = Tuple {
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        dst: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        proto: 0,
    };
    for (kind, v) in attrs(b) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, ip) in attrs(v) {
                    let ip: [u8; 4] = ip.try_into().ok()?;
                    match k {
                        CTA_IP_V4_SRC => t.src.set_ip(Ipv4Addr::from(ip)),
                        CTA_IP_V4_DST => t.dst.set_ip(Ipv4Addr::from(ip)),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attrs(v) {
                    match k {
                        CTA_PROTO_NUM => t.proto = *p.first()?,
                        CTA_PROTO_SRC_PORT => {
                            t.src.set_port(u16::from_be_bytes(p.try_into().ok()?))
                        }
                        CTA_PROTO_DST_PORT => {
                            t.dst.set_port(u16::from_be_bytes(p.try_into().ok()?))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(t)
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn tuple_attr(t: &Tuple) -> Vec<u8> {
    let mut ip = Vec::new();
    push_attr(&mut ip, CTA_IP_V4_SRC, &t.src.ip().octets());
    push_attr(&mut ip, CTA_IP_V4_DST, &t.dst.ip().octets());
    let mut proto = Vec::new();
    push_attr(&mut proto, CTA_PROTO_NUM, &[t.proto]);
    push_attr(&mut proto, CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
    push_attr(&mut proto, CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
    let mut out = Vec::new();
    push_attr(&mut out, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    push_attr(&mut out, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    out
}

/// A netlink message: header, nfgenmsg (AF_INET, version 0), body.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    m.extend_from_slice(body);
    m
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> std::io::Result<Self> {
        // SAFETY: a plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = Socket(fd);
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(s)
    }

    fn send(&self, m: &[u8]) -> std::io::Result<()> {
        // SAFETY: sending from a live buffer of its own length.
        let n = unsafe { libc::send(self.0, m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: receiving into a live buffer of its own length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// The netlink messages in a datagram: (type, flags, payload after the header).
fn messages(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            break;
        }
        out.push((kind, &b[16..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// Every conntrack entry of the calling thread's network namespace: (original, reply).
pub fn entries() -> std::io::Result<Vec<(Tuple, Tuple)>> {
    let s = Socket::open()?;
    s.send(&message(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &[],
    ))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.recv(&mut buf)?;
        for (kind, payload) in messages(&buf[..n]) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    let Some(body) = payload.get(4..) else {
                        continue;
                    };
                    let mut orig = None;
                    let mut reply = None;
                    for (k, v) in attrs(body) {
                        match k {
                            CTA_TUPLE_ORIG => orig = parse_tuple(v),
                            CTA_TUPLE_REPLY => reply = parse_tuple(v),
                            _ => {}
                        }
                    }
                    if let (Some(o), Some(r)) = (orig, reply) {
                        out.push((o, r));
                    }
                }
            }
        }
    }
}

/// Whether an entry is one `flow` describes.
pub fn matches(flow: &Flow, orig: &Tuple, reply: &Tuple) -> bool {
    if orig.proto != IPPROTO_UDP {
        return false;
    }
    match flow {
        // DNAT-ed: the answer comes from the endpoint, the client asked someone else.
        Flow::ToEndpoint(ep) => reply.src == *ep && orig.dst != *ep,
        Flow::Unanswered(svc) => orig.dst == *svc && reply.src == *svc,
    }
}

/// Deletes the UDP entries `flows` describe; returns how many went.
pub fn forget(flows: &[Flow]) -> std::io::Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
    let doomed: Vec<Tuple> = entries()?
        .into_iter()
        .filter(|(o, r)| flows.iter().any(|f| matches(f, o, r)))
        .map(|(o, _)| o)
        .collect();
    let s = Socket::open()?;
    let mut gone = 0;
    let mut buf = vec![0u8; 8192];
    for (i, t) in doomed.iter().enumerate() {
        let mut body = Vec::new();
        push_attr(&mut body, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple_attr(t));
        s.send(&message(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            i as u32 + 2,
            &body,
        ))?;
        let n = s.recv(&mut buf)?;
        if let Some((NLMSG_ERROR, payload)) = messages(&buf[..n]).first()
            && payload.get(..4) == Some(&[0, 0, 0, 0])
        {
            gone += 1;
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(eps: &[&str]) -> ServicePort {
        ServicePort {
            endpoints: eps
                .iter()
                .map(|e| crate::rules::Endpoint {
                    addr: e.parse().unwrap(),
                    local: false,
                })
                .collect(),
            ..ServicePort::new("default/dns:", "udp", "10.96.0.50".parse().unwrap(), 53)
        }
    }

    #[test]
    fn gone_endpoints_and_first_endpoints_leave_stale_flows() {
        let (two, one, none) = (
            port(&["10.244.1.2:5353", "10.244.2.2:5353"]),
            port(&["10.244.2.2:5353"]),
            port(&[]),
        );
        assert_eq!(
            stale_udp(&[&two], &[&one]),
            vec![Flow::ToEndpoint("10.244.1.2:5353".parse().unwrap())]
        );
        assert_eq!(
            stale_udp(&[&none], &[&one]),
            vec![Flow::Unanswered("10.96.0.50:53".parse().unwrap())]
        );
        assert!(
            stale_udp(&[&one], &[&two]).is_empty(),
            "an endpoint added leaves nothing stale"
        );
    }

    #[test]
    fn tuples_round_trip_through_netlink_attributes() {
        let t = Tuple {
            src: "10.244.1.9:40000".parse().unwrap(),
            dst: "10.96.0.50:53".parse().unwrap(),
            proto: IPPROTO_UDP,
        };
        assert_eq!(parse_tuple(&tuple_attr(&t)), Some(t));
        let reply = Tuple {
            src: "10.244.1.2:5353".parse().unwrap(),
            dst: "10.244.1.9:40000".parse().unwrap(),
            proto: IPPROTO_UDP,
        };
        assert!(matches(
            &Flow::ToEndpoint("10.244.1.2:5353".parse().unwrap()),
            &t,
            &reply
        ));
        assert!(!matches(
            &Flow::ToEndpoint("10.244.2.2:5353".parse().unwrap()),
            &t,
            &reply
        ));
        // Garbage never panics.
        assert_eq!(attrs(&[0xff, 0xff, 1]).len(), 0);
        let _ = parse_tuple(&[8, 0, 1, 0x80, 4, 0, 1, 0]);
    }
}
