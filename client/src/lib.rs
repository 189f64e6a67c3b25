//! What every API client in the binary shares: a client made from a kubeconfig, the
//! watch caches (`Informer`; in the master one per kind, `Informers`, shared by the
//! controllers and the scheduler) and the event recorder. The controllers, the
//! scheduler and the node agent all speak to the API server through these.

pub mod caches;
pub mod config;
pub mod correlator;
pub mod feed;
pub mod informer;
pub mod join;
pub mod recorder;
pub mod rotation;

pub use caches::Informers;
pub use config::{ClientError, from_kubeconfig};
pub use informer::Informer;
pub use recorder::Recorder;
