//! The pod network: network namespaces now; bridge, veth, pod IPAM and the overlay
//! backends come with the node agent.

pub mod netns;
