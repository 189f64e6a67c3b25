//! The node join: a holder of the join token sends a certificate request for a node
//! name and gets that node's client certificate, signed by the cluster CA.

use serde_json::{Value, json};

use crate::certificates::pki::Pki;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resources;

/// Signs a joining node's certificate request: `{"nodeName", "csr"}` in,
/// `{"certificate", "ca"}` out.
pub fn join(
    registry: &Registry,
    pki: &Pki,
    req: &Value,
    from: Option<std::net::IpAddr>,
    lifetime: std::time::Duration,
) -> Result<Value, ApiError> {
    let name = req["nodeName"].as_str().unwrap_or_default();
    let mut causes = tinykube_api::validation::dns1123_subdomain(name);
    if name.is_empty() {
        causes = vec!["Required value".into()];
    }
    if let Some(c) = causes.first() {
        return Err(ApiError::BadRequest(format!(
            "nodeName {name:?} is not a valid node name: {c}"
        )));
    }
    name_is_free(registry, name, from)?;
    let csr = req["csr"].as_str().unwrap_or_default();
    let cert = pki.sign_node_request(name, csr, lifetime).map_err(|e| {
        ApiError::BadRequest(format!(
            "csr is not a certificate request: {}",
            crate::error::error_chain(&e)
        ))
    })?;
    tracing::info!(node = name, "node joined: client certificate issued");
    Ok(json!({"certificate": cert, "ca": pki.ca_pem}))
}

/// A node name already registered belongs to the machine at its address: another
/// machine holding the join token cannot take it over (k3s guards the same with node
/// passwords). The master's own processes (loopback) are trusted.
fn name_is_free(
    registry: &Registry,
    name: &str,
    from: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    let Some(from) = from.filter(|a| !a.is_loopback()) else {
        return Ok(());
    };
    let nodes = resources::find("", "nodes").expect("nodes are served");
    let Ok(node) = registry.get(nodes, None, name) else {
        return Ok(());
    };
    let addresses: Vec<String> = node.object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str().map(String::from))
        .collect();
    if addresses.is_empty() || addresses.iter().any(|a| a == &from.to_string()) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "node {name:?} is already registered at {}; a machine at {from} cannot join under its name: give it another --node-name, or remove the old node first (kubectl delete node {name})",
        addresses.join(", ")
    )))
}
