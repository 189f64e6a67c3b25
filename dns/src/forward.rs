//! Names outside the cluster: forwarded to the node's own resolvers (its resolv.conf, or
//! systemd-resolved's list when that names the 127.0.0.53 stub), with a short cache.
//! An upstream that refuses or times out is left alone for a while, and when every
//! upstream is down the answer is SERVFAIL at once rather than after a timeout.
//! Upstreams that are this server itself are refused, by address and by a probe
//! query sent through each at start (CoreDNS's `loop` plugin does the same).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use tinykube_api::resolv::ResolvConf;

use crate::metrics::Metrics;

/// systemd-resolved's stub, and where it lists the real servers.
const RESOLVED_STUB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
/// How long one upstream gets to answer before the next is tried.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long an upstream that failed is skipped.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The longest an answer is kept.
const MAX_CACHE_TTL: u32 = 30;
/// How often the resolv.conf is checked for changes.
const RECHECK: Duration = Duration::from_secs(2);
/// Entries kept at most; when full, expired ones go, then all.
const CACHE_ENTRIES: usize = 10_000;

/// The upstream servers a resolv.conf names (port 53), following the systemd-resolved
/// stub to its real list, without `refuse` (this server's own addresses).
pub fn upstreams(resolv_conf: &Path, refuse: &[IpAddr]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut notes = Vec::new();
    let read = |p: &Path| {
        ResolvConf::parse(&std::fs::read_to_string(p).unwrap_or_default()).nameserver_ips()
    };
    let mut ips = read(resolv_conf);
    if ips.contains(&IpAddr::V4(RESOLVED_STUB)) {
        notes.push(format!(
            "{} names the systemd-resolved stub; using {RESOLVED_UPSTREAMS}",
            resolv_conf.display()
        ));
        ips = read(Path::new(RESOLVED_UPSTREAMS));
    }
    let mut out = Vec::new();
    for ip in ips {
        if refuse.contains(&ip) {
            notes.push(format!(
                "upstream {ip} is this DNS server itself (a loop); not used"
            ));
            continue;
        }
        let a = SocketAddr::new(ip, 53);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    (out, notes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// Every upstream is down, refused or there is none.
    Unreachable,
}

struct Cached {
    response: Message,
    expires: Instant,
}

/// The upstreams as last read, and when each may be tried again after a failure.
struct Upstreams {
    list: Vec<SocketAddr>,
    down_until: Vec<Option<Instant>>,
    /// The resolv.conf's modification time when read, and when that was last checked.
    modified: Option<std::time::SystemTime>,
    checked: Instant,
}

pub struct Forwarder {
    pub resolv_conf: PathBuf,
    /// This server's own addresses: never an upstream.
    refuse: Vec<IpAddr>,
    ups: Mutex<Upstreams>,
    cache: Mutex<HashMap<(Name, RecordType), Cached>>,
    /// The name of the loop probe in flight, and whether it came back to us; `probing`
    /// spares every other question the lock.
    probe: Mutex<Option<Name>>,
    probing: AtomicBool,
    looped: AtomicBool,
}

impl Forwarder {
    /// A forwarder to the servers `resolv_conf` names (read again when it changes),
    /// never to `refuse`.
    pub fn new(resolv_conf: PathBuf, refuse: Vec<IpAddr>) -> Self {
        let (list, notes) = upstreams(&resolv_conf, &refuse);
        for n in notes {
            tracing::info!("{n}");
        }
        Self::with_upstreams(resolv_conf, refuse, list)
    }

    pub fn with_upstreams(
        resolv_conf: PathBuf,
        refuse: Vec<IpAddr>,
        list: Vec<SocketAddr>,
    ) -> Self {
        let modified = std::fs::metadata(&resolv_conf)
            .and_then(|m| m.modified())
            .ok();
        Self {
            resolv_conf,
            refuse,
            ups: Mutex::new(Upstreams {
                down_until: vec![None; list.len()],
                list,
                modified,
                checked: Instant::now(),
            }),
            cache: Mutex::new(HashMap::new()),
            probe: Mutex::new(None),
            probing: AtomicBool::new(false),
            looped: AtomicBool::new(false),
        }
    }

    /// The upstreams in use (those found to loop back left out).
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        let ups = self.ups.lock().unwrap_or_else(|p| p.into_inner());
        ups.list
            .iter()
            .zip(ups.down_until.iter())
            .filter(|(_, d)| d.is_none_or(|t| t != far_future()))
            .map(|(a, _)| *a)
            .collect()
    }

    /// Reads the resolv.conf again if it changed (checked every few seconds), so a
    /// node whose resolvers change needs no restart.
    fn refresh(&self) {
        let mut ups = self.ups.lock().unwrap_or_else(|p| p.into_inner());
        if ups.checked.elapsed() < RECHECK {
            return;
        }
        ups.checked = Instant::now();
        let modified = std::fs::metadata(&self.resolv_conf)
            .and_then(|m| m.modified())
            .ok();
        if modified == ups.modified {
            return;
        }
        let (list, notes) = upstreams(&self.resolv_conf, &self.refuse);
        for n in notes {
            tracing::info!("{n}");
        }
        tracing::info!(upstreams = ?list, "DNS upstreams changed");
        ups.down_until = vec![None; list.len()];
        ups.list = list;
        ups.modified = modified;
    }

    /// Whether `name` is the loop probe this forwarder sent (the server calls this for
    /// every name it is asked and answers the probe itself).
    pub fn is_probe(&self, name: &Name) -> bool {
        if !self.probing.load(Ordering::Relaxed) {
            return false;
        }
        let p = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        if p.as_ref().is_some_and(|p| p.eq_case(&name.to_lowercase())) {
            self.looped.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Sends a random name through each upstream in turn; one that brings it back to
    /// this server is a loop and is never used again.
    pub async fn detect_loops(&self) {
        let list = self
            .ups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list
            .clone();
        for up in &list {
            let name = Name::from_ascii(format!(
                "{}.{}.tinykube-loop-check.",
                rand::random::<u32>(),
                rand::random::<u32>()
            ))
            .unwrap_or_else(|_| Name::root());
            *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.clone());
            self.probing.store(true, Ordering::SeqCst);
            self.looped.store(false, Ordering::SeqCst);
            let mut q = Message::new();
            q.set_id(rand::random())
                .set_recursion_desired(true)
                .add_query(Query::query(name, RecordType::HINFO));
            let _ = ask_udp(*up, &q, Duration::from_secs(1)).await;
            if self.looped.load(Ordering::SeqCst) {
                tracing::warn!(upstream = %up, "DNS upstream forwards back to this server (a loop); not used");
                self.mark(*up, Some(far_future()));
            }
        }
        self.probing.store(false, Ordering::SeqCst);
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The cached answer to `query`, its id and question set to the asker's.
    pub fn cached(&self, id: u16, query: &Query) -> Option<Message> {
        let key = (query.name().to_lowercase(), query.query_type());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cache.get(&key)?;
        let now = Instant::now();
        if hit.expires <= now {
            cache.remove(&key);
            return None;
        }
        let left = (hit.expires - now).as_secs() as u32;
        let mut m = hit.response.clone();
        drop(cache);
        m.set_id(id);
        *m.queries_mut() = vec![query.clone()];
        for r in m.answers_mut() {
            r.set_ttl(r.ttl().min(left.max(1)));
        }
        Some(m)
    }

    /// Asks the upstreams for `query`, in order, skipping those down; caches the answer.
    pub async fn forward(&self, query: &Query, metrics: &Metrics) -> Result<Message, ForwardError> {
        let mut q = Message::new();
        q.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(query.clone());
        self.refresh();
        let list: Vec<SocketAddr> = {
            let ups = self.ups.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            ups.list
                .iter()
                .zip(ups.down_until.iter())
                .filter(|(_, d)| d.is_none_or(|t| t <= now))
                .map(|(a, _)| *a)
                .collect()
        };
        for up in &list {
            let started = Instant::now();
            let mut answer = ask_udp(*up, &q, TIMEOUT).await;
            if let Ok(a) = &answer
                && a.truncated()
            {
                answer = ask_tcp(*up, &q, TIMEOUT).await;
            }
            metrics.forwarded(started.elapsed(), answer.is_ok());
            match answer {
                Ok(mut a) => {
                    self.mark(*up, None);
                    self.store(query, &a);
                    a.set_id(0);
                    return Ok(a);
                }
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, "DNS upstream failed");
                    self.mark(*up, Some(Instant::now() + DOWN_FOR));
                }
            }
        }
        Err(ForwardError::Unreachable)
    }

    /// Sets when `up` may be tried again (None: now).
    fn mark(&self, up: SocketAddr, until: Option<Instant>) {
        let mut ups = self.ups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = ups.list.iter().position(|a| *a == up)
            && ups.down_until[i] != Some(far_future())
        {
            ups.down_until[i] = until;
        }
    }

    fn store(&self, query: &Query, answer: &Message) {
        let ttl = match answer.response_code() {
            ResponseCode::NoError if !answer.answers().is_empty() => {
                answer.answers().iter().map(|r| r.ttl()).min().unwrap_or(0)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => answer
                .name_servers()
                .iter()
                .find_map(|r| match r.data() {
                    RData::SOA(soa) => Some(soa.minimum().min(r.ttl())),
                    _ => None,
                })
                .unwrap_or(0),
            _ => 0,
        }
        .min(MAX_CACHE_TTL);
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            (query.name().to_lowercase(), query.query_type()),
            Cached {
                response: answer.clone(),
                expires: Instant::now() + Duration::from_secs(u64::from(ttl)),
            },
        );
    }
}

fn far_future() -> Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T.get_or_init(|| Instant::now() + Duration::from_secs(100 * 365 * 86400))
}

/// One question over UDP on a connected socket, so an ICMP "port unreachable" ends it
/// at once instead of after the timeout.
async fn ask_udp(up: SocketAddr, q: &Message, timeout: Duration) -> std::io::Result<Message> {
    let bind: SocketAddr = match up {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    let bytes = q.to_vec().map_err(std::io::Error::other)?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(timeout, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.id() == q.id() && m.message_type() == MessageType::Response => {
                    return Ok(m);
                }
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

async fn ask_tcp(up: SocketAddr, q: &Message, timeout: Duration) -> std::io::Result<Message> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(up).await?;
        let bytes = q.to_vec().map_err(std::io::Error::other)?;
        let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(&bytes).await?;
        let n = s.read_u16().await? as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        Message::from_vec(&buf).map_err(std::io::Error::other)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_skip_this_server_and_follow_the_resolved_stub() {
        let dir = std::env::temp_dir().join(format!("tk-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("resolv.conf");
        std::fs::write(
            &f,
            "# comment\nsearch example.org\nnameserver 10.96.0.10\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions ndots:1\n",
        )
        .unwrap();
        let (ups, notes) = upstreams(&f, &["10.96.0.10".parse().unwrap()]);
        assert_eq!(
            ups,
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert!(notes[0].contains("loop"), "{notes:?}");
        std::fs::write(&f, "nameserver 127.0.0.53\n").unwrap();
        let (_, notes) = upstreams(&f, &[]);
        assert!(notes[0].contains(RESOLVED_UPSTREAMS), "{notes:?}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn every_upstream_down_is_servfail_at_once() {
        // A port on loopback nobody listens on: the ICMP refusal ends the try at once,
        // and the next question skips the upstream without waiting.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        drop(sock);
        let f = Forwarder::with_upstreams(PathBuf::new(), vec![], vec![addr]);
        let m = Metrics::default();
        let q = Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A);
        let t = Instant::now();
        assert_eq!(
            f.forward(&q, &m).await.err(),
            Some(ForwardError::Unreachable)
        );
        assert_eq!(
            f.forward(&q, &m).await.err(),
            Some(ForwardError::Unreachable)
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
