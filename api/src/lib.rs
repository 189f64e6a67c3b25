//! The object model shared by every tinykube component: k8s-openapi types, selectors,
//! name validation, well-known constants and kubeconfig, all without I/O.

pub mod constants;
pub mod format;
pub mod kubeconfig;
pub mod quantity;
pub mod query;
pub mod selector;
pub mod taint;
pub mod validation;

pub use k8s_openapi;
pub use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
