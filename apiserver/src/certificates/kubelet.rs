//! Serving certificates for the kubelet API, signed by the cluster CA, for a node's
//! name and addresses.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources;
use crate::state::Shared;

/// Issues a serving certificate for node `node`, for its name and addresses.
pub fn issue_certificate(shared: &Shared, node: &str) -> Result<Value, ApiError> {
    let nodes = resources::find("", "nodes").expect("nodes are served");
    let stored = shared.registry.get(nodes, None, node)?;
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
    let (cert, key) = shared
        .pki
        .issue(&format!("system:node:{node}"), &sans)
        .map_err(|e| ApiError::Internal(crate::error::error_chain(&e)))?;
    Ok(json!({"certificate": cert, "key": key, "ca": shared.pki.ca_pem}))
}
