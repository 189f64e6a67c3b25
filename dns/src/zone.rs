//! The cluster zone: what the Kubernetes DNS specification (kubernetes/dns
//! `docs/specification.md`) says a name under `cluster.local` resolves to, from an index
//! of the cluster's Services and the endpoints of their EndpointSlices. Pure: the
//! index is filled by `cache`, the answers are sent by `server`.
//!
//! - `svc.ns.svc.cluster.local` A: the ClusterIP; for a headless service one A per
//!   ready endpoint (NXDOMAIN when it has none); ExternalName: a CNAME.
//! - `host.svc.ns.svc.cluster.local` A: a headless endpoint, by its hostname (a pod
//!   with `hostname` + `subdomain`) or, without one, its address with dashes.
//! - `_port._proto.svc.ns.svc.cluster.local` SRV, for named ports.
//! - `d.c.b.a.in-addr.arpa` PTR: ClusterIPs and headless endpoints.
//! - `a-b-c-d.ns.pod.cluster.local` A (CoreDNS's `pods insecure`, kubeadm's default).
//! - `dns-version.cluster.local` TXT.
//!
//! Names are matched without regard to case; answers carry the name as asked.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The version of the specification these records follow.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// One port of a service, as named in its spec (SRV needs a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// `tcp` or `udp` (lower case, as in the SRV name).
    pub protocol: String,
    pub port: u16,
}

/// One endpoint address of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// From the EndpointSlice (a pod with `hostname` and a matching `subdomain`).
    pub hostname: Option<String>,
    pub ready: bool,
    /// The endpoint's own ports (a slice may differ from the service's for named
    /// target ports): (name, protocol, port).
    pub ports: Vec<Port>,
}

/// What DNS needs of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    ClusterIp(Ipv4Addr),
    Headless,
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub kind: Kind,
    pub ports: Vec<Port>,
}

/// How a query ends.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// NOERROR with these answers and additional records.
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// NOERROR, no records of that type (an SOA goes in the authority section).
    NoData,
    /// NXDOMAIN (with an SOA).
    NxDomain,
    /// An ExternalName's CNAME whose target is outside the zone: the answer so far and
    /// the name to resolve upstream.
    Chase { cname: Box<Record>, target: Name },
    /// Not a name this zone answers: forward it.
    Forward,
}

/// The cluster's services and their endpoints, by namespace and name, and the
/// reverse map. One writer (the cache), many readers (the server).
#[derive(Debug)]
pub struct Zone {
    pub domain: String,
    pub ttl: u32,
    /// Namespace -> service name -> service. Names are lower case already
    /// (Kubernetes names are DNS labels).
    services: HashMap<String, HashMap<String, Arc<Service>>>,
    /// (namespace, service) -> slice name -> endpoints.
    endpoints: HashMap<(String, String), BTreeMap<String, Vec<Endpoint>>>,
    /// Address -> the names that point at it, for PTR.
    reverse: HashMap<Ipv4Addr, Vec<String>>,
    /// (namespace, service) -> the PTR entries it made, to take them back.
    reverse_of: HashMap<(String, String), Vec<(Ipv4Addr, String)>>,
    soa: Record,
    zone_name: Name,
}

impl Zone {
    pub fn new(domain: &str, ttl: u32) -> Self {
        let zone_name = Name::from_ascii(format!("{domain}.")).unwrap_or_else(|_| Name::root());
        let soa = SOA::new(
            Name::from_ascii(format!("ns.dns.{domain}.")).unwrap_or_else(|_| Name::root()),
            Name::from_ascii(format!("hostmaster.{domain}.")).unwrap_or_else(|_| Name::root()),
            1,
            7200,
            1800,
            86400,
            ttl,
        );
        Self {
            domain: domain.to_ascii_lowercase(),
            ttl,
            services: HashMap::new(),
            endpoints: HashMap::new(),
            reverse: HashMap::new(),
            reverse_of: HashMap::new(),
            soa: Record::from_rdata(zone_name.clone(), ttl, RData::SOA(soa)),
            zone_name,
        }
    }

    /// The SOA of the zone, for the authority section of NXDOMAIN and NODATA.
    pub fn soa(&self) -> Record {
        self.soa.clone()
    }

    pub fn service_count(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }

    /// Sets (or, with None, removes) a service.
    pub fn set_service(&mut self, ns: &str, name: &str, svc: Option<Service>) {
        match svc {
            Some(s) => {
                self.services
                    .entry(ns.to_string())
                    .or_default()
                    .insert(name.to_string(), Arc::new(s));
            }
            None => {
                if let Some(m) = self.services.get_mut(ns) {
                    m.remove(name);
                    if m.is_empty() {
                        self.services.remove(ns);
                    }
                }
            }
        }
        self.reindex(ns, name);
    }

    /// Sets (or, with None, removes) the endpoints one EndpointSlice gives `service`.
    pub fn set_slice(&mut self, ns: &str, service: &str, slice: &str, eps: Option<Vec<Endpoint>>) {
        let key = (ns.to_string(), service.to_string());
        match eps {
            Some(e) => {
                self.endpoints
                    .entry(key)
                    .or_default()
                    .insert(slice.to_string(), e);
            }
            None => {
                if let Some(m) = self.endpoints.get_mut(&key) {
                    m.remove(slice);
                    if m.is_empty() {
                        self.endpoints.remove(&key);
                    }
                }
            }
        }
        self.reindex(ns, service);
    }

    fn service(&self, ns: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(ns)?.get(name)
    }

    fn ready_endpoints<'a>(&'a self, ns: &str, name: &str) -> impl Iterator<Item = &'a Endpoint> {
        self.endpoints
            .get(&(ns.to_string(), name.to_string()))
            .into_iter()
            .flat_map(|m| m.values().flatten())
            .filter(|e| e.ready)
    }

    /// Rebuilds the PTR entries of one service.
    fn reindex(&mut self, ns: &str, name: &str) {
        let fqdn = format!("{name}.{ns}.svc.{}.", self.domain);
        let key = (ns.to_string(), name.to_string());
        for (ip, n) in self.reverse_of.remove(&key).unwrap_or_default() {
            if let Some(names) = self.reverse.get_mut(&ip) {
                names.retain(|x| x != &n);
                if names.is_empty() {
                    self.reverse.remove(&ip);
                }
            }
        }
        let Some(svc) = self.service(ns, name).cloned() else {
            return;
        };
        let mut add = Vec::new();
        match &svc.kind {
            Kind::ClusterIp(ip) => add.push((*ip, fqdn)),
            Kind::Headless => {
                for e in self.ready_endpoints(ns, name) {
                    add.push((e.ip, format!("{}.{fqdn}", endpoint_label(e))));
                }
            }
            Kind::ExternalName(_) => {}
        }
        for (ip, n) in &add {
            let names = self.reverse.entry(*ip).or_default();
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        if !add.is_empty() {
            self.reverse_of.insert(key, add);
        }
    }

    /// Answers `qname` (as asked) for `qtype`.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let lower = qname.to_lowercase().to_ascii();
        let lower = lower.trim_end_matches('.');
        if let Some(rev) = lower.strip_suffix(".in-addr.arpa") {
            return self.reverse_lookup(qname, rev, qtype);
        }
        let Some(rest) = lower.strip_suffix(self.domain.as_str()).and_then(|r| {
            if r.is_empty() {
                Some("")
            } else {
                r.strip_suffix('.')
            }
        }) else {
            return Lookup::Forward;
        };
        let labels: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').collect()
        };
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => self.found(vec![self.soa_as(qname)]),
                _ => Lookup::NoData,
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => self.found(vec![Record::from_rdata(
                    qname.clone(),
                    self.ttl,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                )]),
                _ => Lookup::NoData,
            },
            ["ns", "dns"] => match qtype {
                RecordType::A => self.found(vec![self.a(qname, dns_ip())]),
                _ => Lookup::NoData,
            },
            ["dns"] | ["svc"] | ["pod"] => Lookup::NoData,
            [ns, "svc"] => {
                if self.services.contains_key(*ns) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            [svc, ns, "svc"] => self.service_lookup(qname, ns, svc, qtype),
            [first, svc, ns, "svc"] if first.starts_with('_') => {
                // `_proto.svc.ns.svc`: an empty non-terminal when the service has ports.
                match self.service(ns, svc) {
                    Some(s) if s.ports.iter().any(|p| format!("_{}", p.protocol) == *first) => {
                        Lookup::NoData
                    }
                    _ => Lookup::NxDomain,
                }
            }
            [host, svc, ns, "svc"] => self.endpoint_lookup(qname, ns, svc, host, qtype),
            [port, proto, svc, ns, "svc"] => self.srv_lookup(qname, ns, svc, port, proto, qtype),
            [ip, _ns, "pod"] => match pod_ip(ip) {
                Some(a) if qtype == RecordType::A => self.found(vec![self.a(qname, a)]),
                Some(_) => Lookup::NoData,
                None => Lookup::NxDomain,
            },
            [_ns, "pod"] => Lookup::NoData,
            _ => Lookup::NxDomain,
        }
    }

    fn found(&self, answers: Vec<Record>) -> Lookup {
        Lookup::Found {
            answers,
            additionals: Vec::new(),
        }
    }

    fn a(&self, name: &Name, ip: Ipv4Addr) -> Record {
        Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip)))
    }

    fn soa_as(&self, name: &Name) -> Record {
        let mut r = self.soa.clone();
        r.set_name(name.clone());
        r
    }

    fn service_lookup(&self, qname: &Name, ns: &str, name: &str, qtype: RecordType) -> Lookup {
        let Some(svc) = self.service(ns, name) else {
            return Lookup::NxDomain;
        };
        if let Kind::ExternalName(target) = &svc.kind {
            return self.cname(qname, target, qtype);
        }
        match (qtype, &svc.kind) {
            (RecordType::A, Kind::ClusterIp(ip)) => self.found(vec![self.a(qname, *ip)]),
            (RecordType::A, Kind::Headless) => {
                let mut ips: Vec<Ipv4Addr> = self.ready_endpoints(ns, name).map(|e| e.ip).collect();
                ips.sort();
                ips.dedup();
                if ips.is_empty() {
                    return Lookup::NxDomain;
                }
                self.found(ips.into_iter().map(|ip| self.a(qname, ip)).collect())
            }
            (RecordType::SRV, _) => {
                // Every named port of the service, as CoreDNS answers an SRV query for
                // the service's own name.
                let mut answers = Vec::new();
                let mut additionals = Vec::new();
                for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                    let (a, x) = self.srv_records(qname, ns, name, svc, p);
                    answers.extend(a);
                    additionals.extend(x);
                }
                if answers.is_empty() {
                    return Lookup::NoData;
                }
                Lookup::Found {
                    answers,
                    additionals,
                }
            }
            _ => Lookup::NoData,
        }
    }

    fn cname(&self, qname: &Name, target: &str, qtype: RecordType) -> Lookup {
        let Ok(mut target) = Name::from_ascii(target) else {
            return Lookup::NxDomain;
        };
        target.set_fqdn(true);
        let cname =
            Record::from_rdata(qname.clone(), self.ttl, RData::CNAME(CNAME(target.clone())));
        if qtype == RecordType::CNAME {
            return self.found(vec![cname]);
        }
        // A target inside the zone is answered here (one step: the spec allows an
        // ExternalName to point at another service); outside, upstream.
        if self.zone_name.zone_of(&target.to_lowercase()) {
            let mut answers = vec![cname];
            if let Lookup::Found { answers: more, .. } = self.lookup(&target, qtype) {
                answers.extend(
                    more.into_iter()
                        .filter(|r| r.record_type() != RecordType::CNAME),
                );
            }
            return self.found(answers);
        }
        Lookup::Chase {
            cname: Box::new(cname),
            target,
        }
    }

    fn endpoint_lookup(
        &self,
        qname: &Name,
        ns: &str,
        name: &str,
        host: &str,
        qtype: RecordType,
    ) -> Lookup {
        let Some(svc) = self.service(ns, name) else {
            return Lookup::NxDomain;
        };
        if svc.kind != Kind::Headless {
            return Lookup::NxDomain;
        }
        let mut ips: Vec<Ipv4Addr> = self
            .ready_endpoints(ns, name)
            .filter(|e| endpoint_label(e) == host)
            .map(|e| e.ip)
            .collect();
        if ips.is_empty() {
            return Lookup::NxDomain;
        }
        if qtype != RecordType::A {
            return Lookup::NoData;
        }
        ips.sort();
        ips.dedup();
        self.found(ips.into_iter().map(|ip| self.a(qname, ip)).collect())
    }

    fn srv_lookup(
        &self,
        qname: &Name,
        ns: &str,
        name: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
    ) -> Lookup {
        let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
            return Lookup::NxDomain;
        };
        let Some(svc) = self.service(ns, name) else {
            return Lookup::NxDomain;
        };
        let Some(p) = svc
            .ports
            .iter()
            .find(|p| p.name == port && p.protocol == proto)
        else {
            return Lookup::NxDomain;
        };
        if qtype != RecordType::SRV {
            return Lookup::NoData;
        }
        let (answers, additionals) = self.srv_records(qname, ns, name, svc, p);
        if answers.is_empty() {
            return Lookup::NxDomain;
        }
        Lookup::Found {
            answers,
            additionals,
        }
    }

    /// The SRV records of one named port: the service's own name for a ClusterIP
    /// service, one per ready endpoint (its port as the endpoint serves it) for a
    /// headless one; the A records of the targets as additionals.
    fn srv_records(
        &self,
        qname: &Name,
        ns: &str,
        name: &str,
        svc: &Service,
        p: &Port,
    ) -> (Vec<Record>, Vec<Record>) {
        let fqdn = format!("{name}.{ns}.svc.{}.", self.domain);
        let mut targets: Vec<(String, u16, Ipv4Addr)> = Vec::new();
        match &svc.kind {
            Kind::ClusterIp(ip) => targets.push((fqdn, p.port, *ip)),
            Kind::Headless => {
                for e in self.ready_endpoints(ns, name) {
                    let port = e
                        .ports
                        .iter()
                        .find(|ep| ep.name == p.name && ep.protocol == p.protocol)
                        .map_or(p.port, |ep| ep.port);
                    targets.push((format!("{}.{fqdn}", endpoint_label(e)), port, e.ip));
                }
            }
            Kind::ExternalName(_) => {}
        }
        targets.sort();
        targets.dedup();
        let weight = if targets.is_empty() {
            0
        } else {
            (100 / targets.len()).max(1) as u16
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        for (target, port, ip) in targets {
            let Ok(t) = Name::from_ascii(&target) else {
                continue;
            };
            answers.push(Record::from_rdata(
                qname.clone(),
                self.ttl,
                RData::SRV(SRV::new(0, weight, port, t.clone())),
            ));
            additionals.push(self.a(&t, ip));
        }
        (answers, additionals)
    }

    fn reverse_lookup(&self, qname: &Name, rev: &str, qtype: RecordType) -> Lookup {
        let octets: Vec<u8> = rev.split('.').filter_map(|o| o.parse().ok()).collect();
        let [d, c, b, a] = octets.as_slice() else {
            return Lookup::Forward;
        };
        let ip = Ipv4Addr::new(*a, *b, *c, *d);
        let Some(names) = self.reverse.get(&ip) else {
            return Lookup::Forward;
        };
        if qtype != RecordType::PTR {
            return Lookup::NoData;
        }
        let answers = names
            .iter()
            .filter_map(|n| Name::from_ascii(n).ok())
            .map(|n| Record::from_rdata(qname.clone(), self.ttl, RData::PTR(PTR(n))))
            .collect();
        self.found(answers)
    }
}

/// An endpoint's label under its service: its hostname, else its address with dashes.
fn endpoint_label(e: &Endpoint) -> String {
    match &e.hostname {
        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
        _ => e.ip.to_string().replace('.', "-"),
    }
}

/// `a-b-c-d` -> a.b.c.d.
fn pod_ip(label: &str) -> Option<Ipv4Addr> {
    label
        .replace('-', ".")
        .parse()
        .ok()
        .filter(|_| label.matches('-').count() == 3)
}

fn dns_ip() -> Ipv4Addr {
    tinykube_api::constants::CLUSTER_DNS_IP
        .parse()
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, protocol: &str, port: u16) -> Port {
        Port {
            name: name.into(),
            protocol: protocol.into(),
            port,
        }
    }

    fn ep(ip: [u8; 4], hostname: Option<&str>, ready: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            hostname: hostname.map(str::to_string),
            ready,
            ports: vec![port("http", "tcp", 8080)],
        }
    }

    fn zone() -> Zone {
        let mut z = Zone::new("cluster.local", 5);
        z.set_service(
            "default",
            "web",
            Some(Service {
                kind: Kind::ClusterIp(Ipv4Addr::new(10, 96, 0, 20)),
                ports: vec![port("http", "tcp", 80)],
            }),
        );
        z.set_service(
            "default",
            "db",
            Some(Service {
                kind: Kind::Headless,
                ports: vec![port("http", "tcp", 8080)],
            }),
        );
        z.set_slice(
            "default",
            "db",
            "db-abc",
            Some(vec![
                ep([10, 244, 1, 5], Some("db-0"), true),
                ep([10, 244, 2, 6], None, true),
                ep([10, 244, 2, 7], Some("db-2"), false),
            ]),
        );
        z.set_service(
            "default",
            "empty",
            Some(Service {
                kind: Kind::Headless,
                ports: vec![],
            }),
        );
        z.set_service(
            "default",
            "ext",
            Some(Service {
                kind: Kind::ExternalName("example.org".into()),
                ports: vec![],
            }),
        );
        z.set_service(
            "default",
            "alias",
            Some(Service {
                kind: Kind::ExternalName("web.default.svc.cluster.local".into()),
                ports: vec![],
            }),
        );
        z
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn rdatas(l: &Lookup) -> Vec<String> {
        match l {
            Lookup::Found { answers, .. } => {
                let mut v: Vec<String> = answers.iter().map(|r| r.data().to_string()).collect();
                v.sort();
                v
            }
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn cluster_ip_services_answer_their_address_in_any_case() {
        let z = zone();
        for q in [
            "web.default.svc.cluster.local.",
            "WEB.Default.SVC.cluster.LOCAL.",
        ] {
            let l = z.lookup(&name(q), RecordType::A);
            assert_eq!(rdatas(&l), vec!["10.96.0.20"]);
            if let Lookup::Found { answers, .. } = &l {
                assert_eq!(answers[0].name().to_ascii(), q, "the name as asked");
                assert_eq!(answers[0].ttl(), 5);
            }
        }
        assert_eq!(
            z.lookup(&name("web.default.svc.cluster.local."), RecordType::AAAA),
            Lookup::NoData
        );
        assert_eq!(
            z.lookup(&name("nope.default.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup(&name("web.other.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup(&name("default.svc.cluster.local."), RecordType::A),
            Lookup::NoData
        );
        assert_eq!(
            z.lookup(&name("nons.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn headless_services_answer_their_ready_endpoints() {
        let z = zone();
        let l = z.lookup(&name("db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(rdatas(&l), vec!["10.244.1.5", "10.244.2.6"]);
        let l = z.lookup(&name("db-0.db.default.svc.cluster.local."), RecordType::A);
        assert_eq!(rdatas(&l), vec!["10.244.1.5"]);
        let l = z.lookup(
            &name("10-244-2-6.db.default.svc.cluster.local."),
            RecordType::A,
        );
        assert_eq!(rdatas(&l), vec!["10.244.2.6"]);
        // Not ready: no record.
        assert_eq!(
            z.lookup(&name("db-2.db.default.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup(&name("empty.default.svc.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn srv_records_name_the_service_or_each_endpoint() {
        let z = zone();
        let l = z.lookup(
            &name("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(rdatas(&l), vec!["0 100 80 web.default.svc.cluster.local."]);
        let Lookup::Found { additionals, .. } = &l else {
            panic!()
        };
        assert_eq!(additionals[0].data().to_string(), "10.96.0.20");
        let l = z.lookup(
            &name("_http._tcp.db.default.svc.cluster.local."),
            RecordType::SRV,
        );
        assert_eq!(
            rdatas(&l),
            vec![
                "0 50 8080 10-244-2-6.db.default.svc.cluster.local.",
                "0 50 8080 db-0.db.default.svc.cluster.local."
            ]
        );
        assert_eq!(
            z.lookup(
                &name("_http._udp.web.default.svc.cluster.local."),
                RecordType::SRV
            ),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup(
                &name("_tcp.web.default.svc.cluster.local."),
                RecordType::SRV
            ),
            Lookup::NoData
        );
    }

    #[test]
    fn ptr_records_follow_services_and_headless_endpoints() {
        let mut z = zone();
        let l = z.lookup(&name("20.0.96.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(rdatas(&l), vec!["web.default.svc.cluster.local."]);
        let l = z.lookup(&name("5.1.244.10.in-addr.arpa."), RecordType::PTR);
        assert_eq!(rdatas(&l), vec!["db-0.db.default.svc.cluster.local."]);
        assert_eq!(
            z.lookup(&name("9.9.9.9.in-addr.arpa."), RecordType::PTR),
            Lookup::Forward
        );
        z.set_service("default", "web", None);
        assert_eq!(
            z.lookup(&name("20.0.96.10.in-addr.arpa."), RecordType::PTR),
            Lookup::Forward
        );
        z.set_slice("default", "db", "db-abc", None);
        assert_eq!(
            z.lookup(&name("5.1.244.10.in-addr.arpa."), RecordType::PTR),
            Lookup::Forward
        );
    }

    #[test]
    fn external_names_are_cnames_chased_inside_the_zone() {
        let z = zone();
        match z.lookup(&name("ext.default.svc.cluster.local."), RecordType::A) {
            Lookup::Chase { cname, target } => {
                assert_eq!(cname.data().to_string(), "example.org.");
                assert_eq!(target.to_ascii(), "example.org.");
            }
            other => panic!("{other:?}"),
        }
        let l = z.lookup(&name("alias.default.svc.cluster.local."), RecordType::A);
        assert_eq!(
            rdatas(&l),
            vec!["10.96.0.20", "web.default.svc.cluster.local."]
        );
        let l = z.lookup(&name("ext.default.svc.cluster.local."), RecordType::CNAME);
        assert_eq!(rdatas(&l), vec!["example.org."]);
    }

    #[test]
    fn pods_version_and_other_names() {
        let z = zone();
        let l = z.lookup(
            &name("10-244-1-9.default.pod.cluster.local."),
            RecordType::A,
        );
        assert_eq!(rdatas(&l), vec!["10.244.1.9"]);
        assert_eq!(
            z.lookup(&name("10-244-1.default.pod.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
        let l = z.lookup(&name("dns-version.cluster.local."), RecordType::TXT);
        assert_eq!(rdatas(&l), vec!["1.1.0"]);
        assert_eq!(
            z.lookup(&name("example.org."), RecordType::A),
            Lookup::Forward
        );
        assert_eq!(
            z.lookup(&name("a.b.c.d.e.f.cluster.local."), RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup(&name("notcluster.local."), RecordType::A),
            Lookup::Forward
        );
    }
}
