//! The DNS server: questions over UDP and TCP, answered from the zone or forwarded.
//! Whatever arrives, the server answers or drops it; nothing a client sends can stop it.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::forward::{ForwardError, Forwarder};
use crate::metrics::Metrics;
use crate::zone::{Lookup, Zone};

/// UDP answers larger than this, or than the client's EDNS size, are truncated.
const UDP_CLASSIC: usize = 512;
/// The EDNS size this server offers and honours at most (the DNS flag day's figure).
const EDNS_SIZE: u16 = 1232;
/// A TCP connection with no question for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How far an answer got without the network.
pub enum Step {
    /// The answer (None: nothing is sent back).
    Done(Option<Vec<u8>>),
    /// Waiting on an upstream.
    Upstream(Box<Pending>),
}

/// An answer waiting on an upstream for `query`.
pub struct Pending {
    query: hickory_proto::op::Query,
    /// An ExternalName's target: its answers follow the CNAME already in `resp`.
    chase: bool,
    resp: Message,
    tcp: bool,
    limit: usize,
}

pub struct Handler {
    pub zone: Arc<RwLock<Zone>>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Arc<Metrics>,
}

impl Handler {
    /// The answer to one packet, or None to drop it (too short to carry an id).
    pub async fn answer(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        match self.parse(packet, tcp) {
            Ok(request) => self.answer_message(request, tcp).await,
            Err(reply) => reply,
        }
    }

    /// The question in a packet, or what to send back instead (FORMERR, or nothing).
    pub fn parse(&self, packet: &[u8], tcp: bool) -> Result<Message, Option<Vec<u8>>> {
        match Message::from_vec(packet) {
            Ok(m) => Ok(m),
            Err(_) => {
                self.metrics.malformed();
                if packet.len() < 12 || packet[2] & 0x80 != 0 {
                    // No header, or a response sent to us: never answer those.
                    return Err(None);
                }
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                Err(self.reply(error(id, ResponseCode::FormErr), tcp, None))
            }
        }
    }

    pub async fn answer_message(&self, request: Message, tcp: bool) -> Option<Vec<u8>> {
        match self.begin(&request, tcp) {
            Step::Done(out) => out,
            Step::Upstream(p) => self.finish(p).await,
        }
    }

    /// Everything that needs no network: the answer, or what is left to ask upstream
    /// (the zone is looked up once either way).
    pub fn begin(&self, request: &Message, tcp: bool) -> Step {
        if request.message_type() != MessageType::Query {
            self.metrics.malformed();
            return Step::Done(None);
        }
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            request
                .extensions()
                .as_ref()
                .map(|e| usize::from(e.max_payload().clamp(512, EDNS_SIZE)))
                .unwrap_or(UDP_CLASSIC)
        };
        let mut resp = Message::new();
        resp.set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .add_queries(request.queries().iter().cloned());
        if request.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_SIZE);
            resp.set_edns(edns);
        }
        let done = |resp| Step::Done(self.reply(resp, tcp, Some(limit)));
        if request.op_code() != OpCode::Query {
            resp.set_response_code(ResponseCode::NotImp);
            return done(resp);
        }
        let [query] = request.queries() else {
            resp.set_response_code(ResponseCode::FormErr);
            return done(resp);
        };
        self.metrics.request(tcp, query.query_type());
        if self.forwarder.is_probe(query.name()) {
            resp.set_response_code(ResponseCode::NXDomain);
            return done(resp);
        }
        let lookup = {
            let zone = self.zone.read().unwrap_or_else(|p| p.into_inner());
            let l = zone.lookup(query.name(), query.query_type());
            if matches!(l, Lookup::NoData | Lookup::NxDomain) {
                resp.add_name_server(zone.soa());
            }
            l
        };
        let upstream = |query, chase, resp| {
            Step::Upstream(Box::new(Pending {
                query,
                chase,
                resp,
                tcp,
                limit,
            }))
        };
        match lookup {
            Lookup::Found {
                answers,
                additionals,
            } => {
                resp.set_authoritative(true);
                resp.add_answers(answers).add_additionals(additionals);
                done(resp)
            }
            Lookup::NoData => {
                resp.set_authoritative(true);
                done(resp)
            }
            Lookup::NxDomain => {
                resp.set_authoritative(true)
                    .set_response_code(ResponseCode::NXDomain);
                done(resp)
            }
            Lookup::Chase { cname, target } => {
                resp.set_authoritative(true).add_answer(*cname);
                let q = hickory_proto::op::Query::query(target, query.query_type());
                upstream(q, true, resp)
            }
            Lookup::Forward => upstream(query.clone(), false, resp),
        }
    }

    /// The part that waits on an upstream: an ExternalName's target, or a name outside
    /// the cluster.
    pub async fn finish(&self, p: Box<Pending>) -> Option<Vec<u8>> {
        let Pending {
            query,
            chase,
            mut resp,
            tcp,
            limit,
        } = *p;
        match (self.upstream(&query).await, chase) {
            (Ok(up), true) => {
                resp.add_answers(up.answers().iter().cloned());
                resp.set_response_code(up.response_code());
            }
            // The CNAME alone, when its target cannot be resolved.
            (Err(_), true) => {}
            (Ok(up), false) => {
                resp.set_response_code(up.response_code())
                    .set_authoritative(false)
                    .add_answers(up.answers().iter().cloned())
                    .add_name_servers(up.name_servers().iter().cloned())
                    .add_additionals(
                        up.additionals()
                            .iter()
                            .filter(|r| r.record_type() != RecordType::OPT)
                            .cloned(),
                    );
            }
            (Err(ForwardError::Unreachable), false) => {
                resp.set_response_code(ResponseCode::ServFail);
            }
        }
        self.reply(resp, tcp, Some(limit))
    }

    async fn upstream(&self, q: &hickory_proto::op::Query) -> Result<Message, ForwardError> {
        if let Some(m) = self.forwarder.cached(0, q) {
            self.metrics.cache(true);
            return Ok(m);
        }
        self.metrics.cache(false);
        self.forwarder.forward(q, &self.metrics).await
    }

    fn reply(&self, mut resp: Message, tcp: bool, limit: Option<usize>) -> Option<Vec<u8>> {
        self.metrics.response(resp.response_code());
        let bytes = resp.to_vec().ok()?;
        match limit {
            Some(l) if !tcp && bytes.len() > l => {
                self.metrics.truncated();
                let mut t = resp.truncate();
                t.set_truncated(true);
                if let Some(e) = resp.extensions_mut().take() {
                    t.set_edns(e);
                }
                t.to_vec().ok()
            }
            _ => Some(bytes),
        }
    }
}

fn error(id: u16, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_response_code(code);
    m
}

/// Serves UDP on `sock` until `cancel`, with `workers` tasks reading the one socket.
pub async fn serve_udp(
    handler: Arc<Handler>,
    sock: Arc<UdpSocket>,
    workers: usize,
    cancel: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (h, s, c) = (handler.clone(), sock.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = tokio::select! {
                    _ = c.cancelled() => return,
                    r = s.recv_from(&mut buf) => match r {
                        Ok(r) => r,
                        Err(e) => {
                            // ICMP errors from earlier sends surface here; keep serving.
                            tracing::trace!(error = %e, "DNS receive");
                            continue;
                        }
                    },
                };
                let request = match h.parse(&buf[..n], false) {
                    Ok(r) => r,
                    Err(reply) => {
                        if let Some(out) = reply {
                            let _ = s.send_to(&out, from).await;
                        }
                        continue;
                    }
                };
                match h.begin(&request, false) {
                    Step::Done(Some(out)) => {
                        let _ = s.send_to(&out, from).await;
                    }
                    Step::Done(None) => {}
                    Step::Upstream(p) => {
                        // What waits on the network leaves the receive loop.
                        let (h, s) = (h.clone(), s.clone());
                        tokio::spawn(async move {
                            if let Some(out) = h.finish(p).await {
                                let _ = s.send_to(&out, from).await;
                            }
                        });
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Serves TCP on `listener` until `cancel`.
pub async fn serve_tcp(handler: Arc<Handler>, listener: TcpListener, cancel: CancellationToken) {
    loop {
        let (stream, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (h, c) = (handler.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = c.cancelled() => {}
                r = tcp_connection(h, stream) => {
                    if let Err(e) = r {
                        tracing::trace!(%from, error = %e, "DNS connection ended");
                    }
                }
            }
        });
    }
}

async fn tcp_connection(h: Arc<Handler>, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
        let Some(out) = h.answer(&buf, true).await else {
            return Ok(());
        };
        let n = u16::try_from(out.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
    }
}

/// Both sockets of a server bound to `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::{Kind, Port, Service};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::path::PathBuf;

    fn handler() -> Handler {
        let mut zone = Zone::new("cluster.local", 5);
        zone.set_service(
            "default",
            "web",
            Some(Service {
                kind: Kind::ClusterIp("10.96.0.20".parse().unwrap()),
                ports: vec![Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80,
                }],
            }),
        );
        // Many endpoints: an answer too large for 512 bytes.
        zone.set_service(
            "default",
            "big",
            Some(Service {
                kind: Kind::Headless,
                ports: vec![],
            }),
        );
        let eps = (1..=60)
            .map(|i| crate::zone::Endpoint {
                ip: std::net::Ipv4Addr::new(10, 244, 1, i),
                hostname: None,
                ready: true,
                ports: vec![],
            })
            .collect();
        zone.set_slice("default", "big", "big-1", Some(eps));
        Handler {
            zone: Arc::new(RwLock::new(zone)),
            forwarder: Arc::new(Forwarder::with_upstreams(PathBuf::new(), vec![], vec![])),
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn question(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(77)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn garbage_is_formerr_or_dropped_and_counted() {
        let h = handler();
        // Too short for a header: dropped.
        assert_eq!(h.answer(b"hello", false).await, None);
        // A header and then nonsense: FORMERR with the same id.
        let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0];
        bad.extend_from_slice(&[0xff; 40]);
        let out = h.answer(&bad, false).await.expect("an answer");
        let m = Message::from_vec(&out).unwrap();
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
        // A response sent to us: dropped, never answered (no reflection loops).
        let mut resp =
            Message::from_vec(&question("web.default.svc.cluster.local.", RecordType::A)).unwrap();
        resp.set_message_type(MessageType::Response);
        assert_eq!(h.answer(&resp.to_vec().unwrap(), false).await, None);
        // A truncated question: FORMERR.
        let q = question("web.default.svc.cluster.local.", RecordType::A);
        let out = h.answer(&q[..q.len() - 3], false).await.expect("an answer");
        assert_eq!(
            Message::from_vec(&out).unwrap().response_code(),
            ResponseCode::FormErr
        );
        assert_eq!(h.metrics.malformed_count(), 4);
        // Oversized: a header and 70,000 bytes of nonsense, over UDP and TCP.
        let mut big = bad.clone();
        big.resize(70_000, 0x41);
        for tcp in [false, true] {
            let out = h.answer(&big, tcp).await.expect("an answer");
            assert_eq!(
                Message::from_vec(&out).unwrap().response_code(),
                ResponseCode::FormErr
            );
        }
        assert_eq!(h.metrics.malformed_count(), 6);
        // Random bytes of every length: never a panic.
        for n in 0..300 {
            let junk: Vec<u8> = (0..n).map(|_| rand::random()).collect();
            let _ = h.answer(&junk, false).await;
            let _ = h.answer(&junk, true).await;
        }
        // And it still answers.
        let out = h.answer(&q, false).await.unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers()[0].data().to_string(), "10.96.0.20");
        assert!(m.authoritative());
    }

    #[tokio::test]
    async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let h = handler();
        let q = question("big.default.svc.cluster.local.", RecordType::A);
        let udp = Message::from_vec(&h.answer(&q, false).await.unwrap()).unwrap();
        assert!(udp.truncated());
        assert!(udp.answers().is_empty());
        let tcp = Message::from_vec(&h.answer(&q, true).await.unwrap()).unwrap();
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 60);
    }

    #[tokio::test]
    async fn nxdomain_carries_the_soa_and_outside_names_fail_fast_without_upstreams() {
        let h = handler();
        let q = question("nope.default.svc.cluster.local.", RecordType::A);
        let m = Message::from_vec(&h.answer(&q, false).await.unwrap()).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
        let q = question("example.org.", RecordType::A);
        let t = std::time::Instant::now();
        let m = Message::from_vec(&h.answer(&q, false).await.unwrap()).unwrap();
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
