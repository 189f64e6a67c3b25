//! The pod network: network namespaces, pod IPAM, the bridge and veth wiring of pods;
//! the overlay that carries pod traffic across nodes.

pub mod arp;
pub mod cidr;
pub mod inspect;
pub mod ipam;
pub mod iptables;
pub mod link;
pub mod netns;

pub use cidr::Ipv4Cidr;
pub mod overlay;
