//! The object model shared by every tinykube component: k8s-openapi types, selectors,
//! name validation, well-known constants and kubeconfig, all without I/O.

pub mod constants;
pub mod format;
pub mod kubeconfig;
pub mod lbpool;
pub mod memory;
pub mod metrics;
pub mod pki;
pub mod qos;
pub mod quantity;
pub mod query;
pub mod resolv;
pub mod selector;
pub mod taint;
pub mod validation;

pub use k8s_openapi;
pub use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

/// An error and its sources on one line, as the CLI and status messages show them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
