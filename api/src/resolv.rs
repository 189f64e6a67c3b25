//! resolv.conf, read and written: what the kubelet writes for each pod, what the pods'
//! resolver reads, and where cluster DNS finds the node's upstream servers.

use std::net::IpAddr;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResolvConf {
    /// As written (an address, possibly with a `%zone`).
    pub nameservers: Vec<String>,
    /// The search list (`search`, or the older `domain`).
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") => r.nameservers.extend(w.next().map(str::to_string)),
                Some("search") | Some("domain") => r.searches = w.map(str::to_string).collect(),
                Some("options") => r.options.extend(w.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }

    /// The nameservers that are addresses (a `%zone` suffix dropped).
    pub fn nameserver_ips(&self) -> Vec<IpAddr> {
        self.nameservers
            .iter()
            .filter_map(|n| n.split('%').next()?.parse().ok())
            .collect()
    }

    /// `options ndots:N` (the resolver's default is 1; the last one counts).
    pub fn ndots(&self) -> usize {
        self.options
            .iter()
            .filter_map(|o| o.strip_prefix("ndots:")?.parse().ok())
            .next_back()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_three_kinds_of_line() {
        let r = ResolvConf::parse(
            "# comment\nsearch a.example b.example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions ndots:5 edns0\n",
        );
        assert_eq!(r.searches, ["a.example", "b.example"]);
        assert_eq!(
            r.nameserver_ips(),
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(r.ndots(), 5);
        assert_eq!(ResolvConf::default().ndots(), 1);
        assert_eq!(
            r.render(),
            "search a.example b.example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions ndots:5 edns0\n"
        );
    }
}
