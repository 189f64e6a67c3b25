//! URL query strings: `application/x-www-form-urlencoded` pairs, as Kubernetes clients
//! send them (`command=ls&command=-l` for exec).

/// Decodes `%XX` escapes and `+` (a space); a malformed escape stays as written.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The decoded key/value pairs of a query string, in order (keys may repeat).
pub fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_round_trip() {
        let p = pairs("command=ls&command=-l%20x&container=c&stdout=true&x=a+b&bad=%zz&tail=%4");
        assert_eq!(p[1], ("command".to_string(), "-l x".to_string()));
        assert_eq!(p[4].1, "a b");
        assert_eq!(p[5].1, "%zz");
        assert_eq!(p[6].1, "%4");
        assert_eq!(decode(&encode("a b/&=ü")), "a b/&=ü");
    }
}
