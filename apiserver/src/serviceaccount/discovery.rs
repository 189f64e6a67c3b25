//! Service-account issuer discovery: the OpenID Connect configuration and the key set
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`), so anything outside the
//! cluster can check a token's signature without asking the API server.

use serde_json::{Value, json};

use super::ServiceAccountTokens;

/// The paths, which `system:service-account-issuer-discovery` grants.
pub const CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// The discovery document, with the key set at the API server's address.
pub fn configuration(tokens: &ServiceAccountTokens, advertise: &str) -> Value {
    json!({
        "issuer": tokens.issuer,
        "jwks_uri": format!("https://{advertise}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}

/// The public keys tokens are signed with.
pub fn jwks(tokens: &ServiceAccountTokens) -> Value {
    json!({"keys": [{
        "use": "sig",
        "kty": "EC",
        "kid": tokens.key_id,
        "crv": "P-256",
        "alg": "ES256",
        "x": tokens.x,
        "y": tokens.y,
    }]})
}
