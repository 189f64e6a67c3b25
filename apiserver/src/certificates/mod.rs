//! Certificates: the cluster CA and what it signs (`pki`), a node's join (`join`), and
//! the kubelets' serving certificates (`kubelet`).

pub mod join;
pub mod kubelet;
pub mod pki;
