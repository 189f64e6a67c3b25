//! What every API client in the binary shares: a client made from a kubeconfig, the
//! shared watch cache (`Informer`) and the event recorder. The controllers, the
//! scheduler and the node agent all speak to the API server through these.

pub mod config;
pub mod informer;
pub mod join;
pub mod recorder;
pub mod rotation;

pub use config::{ClientError, from_kubeconfig};
pub use informer::Informer;
pub use recorder::Recorder;
