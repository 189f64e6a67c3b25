//! Pod IP allocation from the node's podCIDR, kept on disk so a restarted agent never
//! hands out an address twice (the host-local CNI plugin's model: one owner per
//! address, allocation continues after the last address handed out).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Cidr),
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("allocation file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    cidr: String,
    last: Option<Ipv4Addr>,
    owners: BTreeMap<Ipv4Addr, String>,
}

/// Allocations of one pod CIDR. Every change is written (fsync + rename) before the
/// address is returned.
pub struct Ipam {
    cidr: Ipv4Cidr,
    path: PathBuf,
    state: Mutex<State>,
}

impl Ipam {
    /// Opens (or starts) the allocations of `cidr` kept under `dir`. Allocations from
    /// another CIDR (the node got a new podCIDR) are dropped.
    pub fn open(dir: &Path, cidr: Ipv4Cidr) -> Result<Self, IpamError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let path = dir.join("allocations.json");
        let mut state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<State>(&b).map_err(|source| IpamError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io("read", &path)(e)),
        };
        if state.cidr != cidr.to_string() {
            state = State {
                cidr: cidr.to_string(),
                ..State::default()
            };
        }
        Ok(Self {
            cidr,
            path,
            state: Mutex::new(state),
        })
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    fn save(&self, state: &State) -> Result<(), IpamError> {
        let tmp = self.path.with_extension("tmp");
        let io = |what| {
            let path = tmp.clone();
            move |source| IpamError::Io { what, path, source }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(&serde_json::to_vec(state).expect("plain data serializes"))
            .map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename"))
    }

    /// The address of `owner`, allocating one if it has none.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let mut st = self.state.lock().expect("ipam lock");
        if let Some((ip, _)) = st.owners.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(*ip);
        }
        let (lo, hi) = self.cidr.pod_range();
        let start = st
            .last
            .map(u32::from)
            .filter(|l| (lo..=hi).contains(l))
            .map_or(lo, |l| if l >= hi { lo } else { l + 1 });
        let size = hi - lo + 1;
        let ip = (0..size)
            .map(|i| Ipv4Addr::from(lo + (start - lo + i) % size))
            .find(|ip| !st.owners.contains_key(ip))
            .ok_or(IpamError::Exhausted(self.cidr))?;
        st.owners.insert(ip, owner.to_string());
        st.last = Some(ip);
        if let Err(e) = self.save(&st) {
            st.owners.remove(&ip);
            return Err(e);
        }
        Ok(ip)
    }

    pub fn lookup(&self, owner: &str) -> Option<Ipv4Addr> {
        let st = self.state.lock().expect("ipam lock");
        st.owners
            .iter()
            .find(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
    }

    /// Frees the address of `owner`, if any.
    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        let mut st = self.state.lock().expect("ipam lock");
        let before = st.owners.len();
        st.owners.retain(|_, o| o != owner);
        if st.owners.len() != before {
            self.save(&st)?;
        }
        Ok(())
    }

    /// Frees every address whose owner is not in `keep` (pods gone while the agent was
    /// down).
    pub fn retain(&self, keep: &HashSet<String>) -> Result<Vec<String>, IpamError> {
        let mut st = self.state.lock().expect("ipam lock");
        let gone: Vec<String> = st
            .owners
            .values()
            .filter(|o| !keep.contains(*o))
            .cloned()
            .collect();
        if !gone.is_empty() {
            st.owners.retain(|_, o| keep.contains(o));
            self.save(&st)?;
        }
        Ok(gone)
    }

    pub fn owners(&self) -> Vec<(Ipv4Addr, String)> {
        let st = self.state.lock().expect("ipam lock");
        st.owners.iter().map(|(i, o)| (*i, o.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_a_reopen_and_are_not_reused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Ipv4Cidr = "10.244.3.0/24".parse().unwrap();
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 3, 2));
        assert_eq!(b, Ipv4Addr::new(10, 244, 3, 3));
        assert_eq!(ipam.allocate("pod-a").unwrap(), a, "one address per owner");
        ipam.release("pod-a").unwrap();
        drop(ipam);
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        assert_eq!(ipam.lookup("pod-b"), Some(b));
        let c = ipam.allocate("pod-c").unwrap();
        assert_eq!(
            c,
            Ipv4Addr::new(10, 244, 3, 4),
            "continues after the last one"
        );
        let keep: HashSet<String> = ["pod-c".to_string()].into();
        assert_eq!(ipam.retain(&keep).unwrap(), vec!["pod-b".to_string()]);
        assert_eq!(ipam.owners(), vec![(c, "pod-c".to_string())]);
    }

    #[test]
    fn a_full_block_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Ipv4Cidr = "10.244.3.0/30".parse().unwrap();
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        ipam.allocate("a").unwrap();
        assert!(matches!(ipam.allocate("b"), Err(IpamError::Exhausted(_))));
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("b").unwrap(), Ipv4Addr::new(10, 244, 3, 2));
    }
}
