//! The tinykube API server: the Kubernetes REST API over TLS, backed by sled.
//!
//! A request flows through `http` (routing, authentication, negotiation) into `registry`
//! (the verbs, with per-kind `registry::strategies`), which uses `strategy` (defaults and validation per kind), `allocator`
//! (ClusterIP, NodePort) and `store` (revisions, durability, watch).

pub mod allocator;
pub mod auth;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod http;
pub mod node_proxy;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod resource_metrics;
pub mod resources;
pub mod server;
pub mod store;
pub mod strategy;
pub mod table;
pub mod tls;
pub mod validation;
pub mod watch;

pub use server::{Master, MasterConfig, MasterError, run};
