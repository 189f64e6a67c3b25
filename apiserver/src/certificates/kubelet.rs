//! Serving certificates for the kubelet API, signed by the cluster CA, for a node's
//! name and addresses.

use serde_json::{Value, json};

use crate::certificates::pki::Pki;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resources;

/// Issues a serving certificate for node `node`, for its name and addresses.
pub fn issue_certificate(registry: &Registry, pki: &Pki, node: &str) -> Result<Value, ApiError> {
    let nodes = resources::find("", "nodes").expect("nodes are served");
    let stored = registry.get(nodes, None, node)?;
    let mut sans = vec![node.to_string()];
    for a in stored.object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(ip) = a["address"].as_str()
            && !sans.iter().any(|s| s == ip)
        {
            sans.push(ip.to_string());
        }
    }
    let (cert, key) = pki
        .issue(&format!("system:node:{node}"), &sans)
        .map_err(|e| ApiError::Internal(crate::error::error_chain(&e)))?;
    Ok(json!({"certificate": cert, "key": key, "ca": pki.ca_pem}))
}
