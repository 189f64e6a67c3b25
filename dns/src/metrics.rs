//! The DNS server's counters, in Prometheus' text format under CoreDNS's metric names
//! (so its dashboards read them): requests by transport and type, responses by rcode,
//! cache hits and misses, forward latency; plus the packets dropped as garbage.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const TYPES: [&str; 10] = [
    "A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "SOA", "NS", "MX", "other",
];
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];
/// Upper bounds of the forward latency buckets, in seconds (CoreDNS's).
const BUCKETS: [f64; 12] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
];

#[derive(Default)]
pub struct Metrics {
    /// [udp, tcp] x type.
    requests: [[AtomicU64; TYPES.len()]; 2],
    responses: [AtomicU64; RCODES.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    forward_ok: AtomicU64,
    forward_failed: AtomicU64,
    forward_buckets: [AtomicU64; BUCKETS.len()],
    forward_sum_us: AtomicU64,
    malformed: AtomicU64,
    truncated: AtomicU64,
}

/// The slot of `t` in TYPES (no string made: this runs for every question).
fn type_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::SRV => 2,
        RecordType::PTR => 3,
        RecordType::TXT => 4,
        RecordType::CNAME => 5,
        RecordType::SOA => 6,
        RecordType::NS => 7,
        RecordType::MX => 8,
        _ => TYPES.len() - 1,
    }
}

fn rcode_index(r: ResponseCode) -> usize {
    let i = match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        _ => 6,
    };
    i.min(RCODES.len() - 1)
}

impl Metrics {
    pub fn request(&self, tcp: bool, t: RecordType) {
        self.requests[usize::from(tcp)][type_index(t)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn response(&self, r: ResponseCode) {
        self.responses[rcode_index(r)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache(&self, hit: bool) {
        if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn forwarded(&self, took: Duration, ok: bool) {
        if ok {
            &self.forward_ok
        } else {
            &self.forward_failed
        }
        .fetch_add(1, Ordering::Relaxed);
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.forward_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.forward_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn truncated(&self) {
        self.truncated.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as one JSON object, for `tinykube ctl inspect node`.
    pub fn describe(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let by_type: serde_json::Map<String, serde_json::Value> = TYPES
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    t.to_string(),
                    (get(&self.requests[0][i]) + get(&self.requests[1][i])).into(),
                )
            })
            .filter(|(_, n)| n != &serde_json::Value::from(0u64))
            .collect();
        let by_rcode: serde_json::Map<String, serde_json::Value> = RCODES
            .iter()
            .enumerate()
            .map(|(i, r)| (r.to_string(), get(&self.responses[i]).into()))
            .filter(|(_, n)| n != &serde_json::Value::from(0u64))
            .collect();
        serde_json::json!({
            "requests": self.total_requests(),
            "requestsByType": by_type,
            "responsesByRcode": by_rcode,
            "cacheHits": get(&self.cache_hits),
            "cacheMisses": get(&self.cache_misses),
            "forwarded": get(&self.forward_ok),
            "forwardFailed": get(&self.forward_failed),
            "malformed": get(&self.malformed),
            "truncated": get(&self.truncated),
        })
    }

    pub fn malformed_count(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// All requests answered so far.
    pub fn total_requests(&self) -> u64 {
        self.requests
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn prometheus(&self, services: usize) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.push_str("# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.\n# TYPE coredns_dns_requests_total counter\n");
        for (p, proto) in ["udp", "tcp"].iter().enumerate() {
            for (i, t) in TYPES.iter().enumerate() {
                let n = get(&self.requests[p][i]);
                if n > 0 {
                    let _ = writeln!(
                        s,
                        "coredns_dns_requests_total{{server=\"dns://:53\",zone=\".\",proto=\"{proto}\",family=\"1\",type=\"{t}\"}} {n}"
                    );
                }
            }
        }
        s.push_str("# HELP coredns_dns_responses_total Counter of response status codes.\n# TYPE coredns_dns_responses_total counter\n");
        for (i, r) in RCODES.iter().enumerate() {
            let _ = writeln!(
                s,
                "coredns_dns_responses_total{{server=\"dns://:53\",zone=\".\",rcode=\"{r}\"}} {}",
                get(&self.responses[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP coredns_cache_hits_total The count of cache hits.\n# TYPE coredns_cache_hits_total counter\ncoredns_cache_hits_total{{server=\"dns://:53\",type=\"success\"}} {}",
            get(&self.cache_hits)
        );
        let _ = writeln!(
            s,
            "# HELP coredns_cache_misses_total The count of cache misses.\n# TYPE coredns_cache_misses_total counter\ncoredns_cache_misses_total{{server=\"dns://:53\"}} {}",
            get(&self.cache_misses)
        );
        let ok = get(&self.forward_ok);
        let failed = get(&self.forward_failed);
        s.push_str("# HELP coredns_forward_request_duration_seconds Histogram of the time each request took.\n# TYPE coredns_forward_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "coredns_forward_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                get(&self.forward_buckets[i])
            );
        }
        let _ = writeln!(
            s,
            "coredns_forward_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\ncoredns_forward_request_duration_seconds_sum {}\ncoredns_forward_request_duration_seconds_count {}",
            ok + failed,
            get(&self.forward_sum_us) as f64 / 1e6,
            ok + failed
        );
        let _ = writeln!(
            s,
            "# HELP tinykube_dns_forward_failures_total Forwarded questions no upstream answered.\n# TYPE tinykube_dns_forward_failures_total counter\ntinykube_dns_forward_failures_total {failed}"
        );
        let _ = writeln!(
            s,
            "# HELP tinykube_dns_malformed_requests_total Packets that were not a DNS question (answered FORMERR when they had a header, else dropped).\n# TYPE tinykube_dns_malformed_requests_total counter\ntinykube_dns_malformed_requests_total {}",
            get(&self.malformed)
        );
        let _ = writeln!(
            s,
            "# HELP tinykube_dns_truncated_responses_total Answers too large for UDP, sent truncated.\n# TYPE tinykube_dns_truncated_responses_total counter\ntinykube_dns_truncated_responses_total {}",
            get(&self.truncated)
        );
        let _ = writeln!(
            s,
            "# HELP tinykube_dns_services Services in this node's DNS zone.\n# TYPE tinykube_dns_services gauge\ntinykube_dns_services {services}"
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_type_has_its_own_slot() {
        for (i, name) in TYPES.iter().enumerate().take(TYPES.len() - 1) {
            let t: RecordType = name.parse().unwrap();
            assert_eq!(type_index(t), i, "{name}");
        }
        assert_eq!(type_index(RecordType::HINFO), TYPES.len() - 1);
    }
}
