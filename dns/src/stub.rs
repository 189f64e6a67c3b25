//! A stub resolver for programs inside pods (the toolbox's `dig` and its name lookups):
//! /etc/hosts, then /etc/resolv.conf's servers with its search list and `ndots`, as
//! glibc's resolver does. Blocking; the toolbox has no async runtime.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
pub use tinykube_api::resolv::ResolvConf;

/// /etc/resolv.conf of the calling process.
pub fn system() -> ResolvConf {
    ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

/// The names tried for `host`, in order: with fewer than `ndots` dots, the search list
/// first; a name ending in a dot only as it is.
pub fn candidates(conf: &ResolvConf, host: &str) -> Vec<String> {
    if let Some(abs) = host.strip_suffix('.') {
        return vec![format!("{abs}.")];
    }
    let searched = conf.searches.iter().map(|s| format!("{host}.{s}."));
    let absolute = format!("{host}.");
    if host.matches('.').count() >= conf.ndots() {
        std::iter::once(absolute).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(absolute)).collect()
    }
}

/// One question to `server`: over UDP, again over TCP if the answer was truncated
/// (or over TCP only, with `tcp`).
pub fn query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    tcp: bool,
    timeout: Duration,
) -> std::io::Result<Message> {
    let name = Name::from_ascii(name).map_err(std::io::Error::other)?;
    let mut q = Message::new();
    q.set_id(rand::random())
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name, qtype));
    let bytes = q.to_vec().map_err(std::io::Error::other)?;
    if !tcp {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(server)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(&bytes)?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = s.recv(&mut buf)?;
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if m.id() != q.id() {
                continue;
            }
            if !m.truncated() {
                return Ok(m);
            }
            break;
        }
    }
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_be_bytes())?;
    s.write_all(&bytes)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Message::from_vec(&buf).map_err(std::io::Error::other)
}

/// The addresses of `host`: an address as it is, /etc/hosts, then DNS through the
/// search list.
pub fn resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut f = line.split_whitespace();
        let Some(ip) = f.next().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            continue;
        };
        if f.any(|n| n.eq_ignore_ascii_case(host)) {
            return Ok(vec![ip]);
        }
    }
    let conf = system();
    let mut last = format!("no nameserver in /etc/resolv.conf for {host}");
    for name in candidates(&conf, host) {
        for ns in &conf.nameserver_ips() {
            match query(
                SocketAddr::new(*ns, 53),
                &name,
                RecordType::A,
                false,
                Duration::from_secs(2),
            ) {
                Ok(m) if m.response_code() == ResponseCode::NoError => {
                    let ips: Vec<IpAddr> = m
                        .answers()
                        .iter()
                        .filter_map(|r| match r.data() {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            _ => None,
                        })
                        .collect();
                    if !ips.is_empty() {
                        return Ok(ips);
                    }
                    last = format!("{name}: no address");
                    break;
                }
                Ok(m) => {
                    last = format!("{name}: {}", m.response_code());
                    break;
                }
                Err(e) => last = format!("{name}: {e} (nameserver {ns})"),
            }
        }
    }
    Err(std::io::Error::other(format!(
        "cannot resolve {host}: {last}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_list_comes_first_below_ndots() {
        let r = ResolvConf::parse(
            "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
        );
        assert_eq!(r.ndots(), 5);
        assert_eq!(
            r.nameserver_ips(),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        let c = candidates(&r, "web");
        assert_eq!(c[0], "web.default.svc.cluster.local.");
        assert_eq!(c.last().unwrap(), "web.");
        let c = candidates(&r, "a.b.c.d.e.f");
        assert_eq!(c[0], "a.b.c.d.e.f.");
        assert_eq!(candidates(&r, "example.org."), vec!["example.org."]);
    }
}
