//! The tinykube API server: the Kubernetes REST API over TLS, backed by sled.
//!
//! A request passes `request::chain`, as kube-apiserver's handler chain: it is parsed
//! once into a `RequestInfo` (`request`), authenticated (`authn`, with impersonation),
//! authorized (`authz`: the node authorizer, then the built-in policy), and served by
//! `handlers` (one file per verb family), which run `admission` on the objects they
//! write and hand them to the `registry` (the verbs over the store, with per-kind
//! strategies, decoding, defaults, validation and allocation). `store` keeps
//! revisions, durability and watches; `discovery` answers what is served; `kubelets`
//! reaches kubelets (logs, exec, the node proxy, resource metrics); `certificates`
//! holds the CA and what it signs (the node join, kubelets' serving certificates).
//! `state` is the shared state they all read.

pub mod admission;
pub mod authn;
pub mod authz;
mod bootstrap;
pub mod certificates;
pub mod discovery;
pub mod error;
pub mod handlers;
pub mod kubelets;
pub mod metrics;
pub mod registry;
pub mod request;
pub mod resources;
pub mod server;
pub mod serviceaccount;
pub mod state;
pub mod store;

pub use server::{Master, MasterConfig, MasterError, run};
