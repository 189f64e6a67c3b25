//! What the API server asks of kubelets: the requests it passes on to them (`proxy`)
//! and the resource metrics API made from their summaries (`metrics`).

pub mod metrics;
pub mod proxy;
