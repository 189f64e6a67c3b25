//! Certificates: the cluster CA and what it signs (`pki`), a node's join (`join`), the
//! kubelets' serving certificates (`kubelet`), and the certificates API:
//! requests (`registry::csr`) approved and signed by `signer`.

pub mod join;
pub mod kubelet;
pub mod pki;
pub mod signer;
