//! The files the kubelet writes for every pod and bind-mounts into its containers:
//! `/etc/resolv.conf` by the pod's `dnsPolicy` and `dnsConfig`, `/etc/hosts` with the
//! pod's own name (its FQDN when it has a subdomain) and `hostAliases`, and
//! `/etc/hostname`. Pure: the sandbox writes them.

use k8s_openapi::api::core::v1::{Pod, PodDNSConfig};
use tinykube_api::constants::{CLUSTER_DNS_IP, CLUSTER_DOMAIN};
use tinykube_api::resolv::ResolvConf;

/// The resolver allows at most three nameservers and 32 search domains (glibc's and
/// the kubelet's limits).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// A pod's `dnsConfig` added to a resolv.conf: nameservers and searches after its own,
/// options replacing its own of the same name.
trait Merge {
    fn merge(&mut self, c: &PodDNSConfig);
}

impl Merge for ResolvConf {
    fn merge(&mut self, c: &PodDNSConfig) {
        for n in c.nameservers.iter().flatten() {
            if !self.nameservers.contains(n) {
                self.nameservers.push(n.clone());
            }
        }
        for s in c.searches.iter().flatten() {
            if !self.searches.contains(s) {
                self.searches.push(s.clone());
            }
        }
        for o in c.options.iter().flatten() {
            let Some(name) = o.name.clone() else {
                continue;
            };
            let opt = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            };
            self.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            self.options.push(opt);
        }
        self.nameservers.truncate(MAX_NAMESERVERS);
        self.searches.truncate(MAX_SEARCHES);
    }
}

/// The pod's resolv.conf, from its dnsPolicy (ClusterFirst when unset) and the node's
/// own resolv.conf (`host`).
pub fn resolv_conf(pod: &Pod, host: &str) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host = ResolvConf::parse(host);
    let mut r = match policy {
        "None" => ResolvConf::default(),
        "Default" => host,
        // ClusterFirst and ClusterFirstWithHostNet (pods here never share the node's
        // network, so the two are the same).
        _ => {
            let mut searches = vec![
                format!("{ns}.svc.{CLUSTER_DOMAIN}"),
                format!("svc.{CLUSTER_DOMAIN}"),
                CLUSTER_DOMAIN.to_string(),
            ];
            // The node's own search domains follow, as the kubelet appends them.
            for s in host.searches {
                if !searches.contains(&s) {
                    searches.push(s);
                }
            }
            ResolvConf {
                nameservers: vec![CLUSTER_DNS_IP.to_string()],
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
    };
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        r.merge(c);
    }
    r.render()
}

/// The pod's host name: `spec.hostname`, else its name, cut to a DNS label.
pub fn hostname(pod: &Pod) -> String {
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    h.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// The pod's /etc/hosts.
pub fn hosts(pod: &Pod, ip: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let name = hostname(pod);
    let spec = pod.spec.as_ref();
    match spec.and_then(|s| s.subdomain.as_deref()) {
        Some(sub) if !sub.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            out.push_str(&format!(
                "{ip}\t{name}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}\t{name}\n"
            ));
        }
        _ => out.push_str(&format!("{ip}\t{name}\n")),
    }
    let aliases = spec.and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.clone().unwrap_or_default();
            if !names.is_empty() {
                out.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    const HOST: &str = "# from DHCP\nsearch lab.example\nnameserver 192.0.2.53\noptions edns0\n";

    #[test]
    fn cluster_first_is_the_default() {
        let r = resolv_conf(&pod(json!({"containers": []})), HOST);
        assert_eq!(
            r,
            "search shop.svc.cluster.local svc.cluster.local cluster.local lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let with_net = resolv_conf(
            &pod(json!({"containers": [], "dnsPolicy": "ClusterFirstWithHostNet"})),
            HOST,
        );
        assert_eq!(r, with_net);
    }

    #[test]
    fn default_takes_the_node_s_and_none_only_dns_config() {
        let r = resolv_conf(
            &pod(json!({"containers": [], "dnsPolicy": "Default"})),
            HOST,
        );
        assert_eq!(
            r,
            "search lab.example\nnameserver 192.0.2.53\noptions edns0\n"
        );
        let r = resolv_conf(
            &pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            HOST,
        );
        assert_eq!(
            r,
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        // dnsConfig adds to ClusterFirst, and its options replace ours.
        let r = resolv_conf(
            &pod(
                json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
            ),
            HOST,
        );
        assert!(r.ends_with("options ndots:1\n"), "{r}");
    }

    #[test]
    fn hosts_name_the_pod_by_its_fqdn_and_aliases() {
        let h = hosts(
            &pod(
                json!({"containers": [], "hostname": "db-0", "subdomain": "db",
                        "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
            ),
            "10.244.1.5",
        );
        assert!(
            h.contains("10.244.1.5\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
            "{h}"
        );
        assert!(
            h.contains("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{h}"
        );
        let h = hosts(&pod(json!({"containers": []})), "10.244.1.6");
        assert!(h.contains("10.244.1.6\tweb-0\n"), "{h}");
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
    }
}
