//! Service-account tokens, as kube-apiserver's `pkg/serviceaccount` makes and checks
//! them: JWTs signed (ES256) with the cluster's service-account key, for audiences,
//! until an expiry, naming the account and, when bound, the pod (or secret, or node)
//! they die with. A token is good while its signature, issuer, audience and expiry hold
//! and what it names still exists with the uid it names. Verified tokens are kept a
//! few seconds (kube-apiserver's token cache), so a client's every request does not
//! pay for a signature check.

pub mod discovery;
pub mod legacy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::Registry;
use crate::resources;

/// kube-apiserver's default `--service-account-issuer`, also the default audience.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const USER_PREFIX: &str = "system:serviceaccount:";
pub const ALL_GROUP: &str = "system:serviceaccounts";
/// How long a verified token is trusted without checking it again.
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 10_000;
/// The longest and shortest token a TokenRequest may ask for.
pub const MIN_EXPIRATION: i64 = 600;
pub const MAX_EXPIRATION: i64 = 1 << 32;

/// Why a bearer token names nobody; the text TokenReview reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("invalid bearer token, {0}")]
    Invalid(String),
    #[error("invalid bearer token, token has expired")]
    Expired,
    #[error(
        "invalid bearer token, token audiences {got:?} is invalid for the target audiences {want:?}"
    )]
    Audience { got: Vec<String>, want: Vec<String> },
    #[error("invalid bearer token, token issuer {0:?} is not this cluster's")]
    Issuer(String),
    #[error("invalid bearer token, {kind} {name:?} {why}")]
    Bound {
        kind: &'static str,
        name: String,
        why: &'static str,
    },
}

/// An object a token names: its name and uid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct KubeClaims {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub jti: String,
    pub nbf: i64,
    pub sub: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubeClaims,
}

impl Claims {
    /// The user a good token authenticates as, and its groups.
    pub fn user(&self) -> (String, [String; 2]) {
        let ns = &self.kubernetes.namespace;
        (
            format!("{USER_PREFIX}{ns}:{}", self.kubernetes.serviceaccount.name),
            [ALL_GROUP.to_string(), format!("{ALL_GROUP}:{ns}")],
        )
    }
}

/// What a token is asked to be: for whom, for which audiences, how long, bound to what.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub account: Ref,
    pub audiences: Vec<String>,
    pub seconds: i64,
    pub pod: Option<Ref>,
    pub secret: Option<Ref>,
    pub node: Option<Ref>,
}

/// A verified token: who, until when, and when it was checked.
#[derive(Clone)]
struct Verified {
    claims: Claims,
    at: Instant,
}

/// The service-account key pair and the issuer's settings.
pub struct ServiceAccountTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub key_id: String,
    /// The public key's coordinates, base64url (the JWKS entry).
    pub x: String,
    pub y: String,
    pub issuer: String,
    /// The audiences the API server accepts (`--api-audiences`, the issuer by default).
    pub audiences: Vec<String>,
    /// `--service-account-max-token-expiration`: no token lasts longer.
    pub max_expiration: Option<Duration>,
    registry: Arc<Registry>,
    cache: Mutex<HashMap<[u8; 32], Verified>>,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl ServiceAccountTokens {
    /// The issuer signing with `key` (a P-256 key pair).
    pub fn new(
        key: &rcgen::KeyPair,
        registry: Arc<Registry>,
        max_expiration: Option<Duration>,
    ) -> Result<Self, jsonwebtoken::errors::Error> {
        let raw = key.public_key_raw();
        // An uncompressed P-256 point: 0x04, then x and y.
        let (x, y) = (b64url(&raw[1..33]), b64url(&raw[33..65]));
        let decoding = DecodingKey::from_ec_components(&x, &y)?;
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &rcgen::PublicKeyData::subject_public_key_info(key),
        );
        Ok(Self {
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            decoding,
            key_id: b64url(digest.as_ref()),
            x,
            y,
            issuer: ISSUER.to_string(),
            audiences: vec![ISSUER.to_string()],
            max_expiration,
            registry,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Signs a token for `req`; returns it and its expiry (seconds since the epoch).
    pub fn issue(&self, req: Request<'_>) -> Result<(String, i64), jsonwebtoken::errors::Error> {
        let now = jiff::Timestamp::now().as_second();
        let mut seconds = req.seconds;
        if let Some(max) = self.max_expiration {
            seconds = seconds.min(max.as_secs() as i64);
        }
        let claims = Claims {
            aud: req.audiences,
            exp: now + seconds,
            iat: now,
            iss: self.issuer.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            sub: format!("{USER_PREFIX}{}:{}", req.namespace, req.account.name),
            kubernetes: KubeClaims {
                namespace: req.namespace.to_string(),
                serviceaccount: req.account,
                pod: req.pod,
                secret: req.secret,
                node: req.node,
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok((token, claims.exp))
    }

    /// The claims of a good token for one of `audiences` (the API's when empty).
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Claims, TokenError> {
        let want = if audiences.is_empty() {
            &self.audiences
        } else {
            audiences
        };
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("32 bytes");
        let now = jiff::Timestamp::now().as_second();
        let cached = self
            .cache
            .lock()
            .expect("not poisoned")
            .get(&key)
            .filter(|v| v.at.elapsed() < CACHE_TTL)
            .map(|v| v.claims.clone());
        let claims = match cached {
            Some(c) => c,
            None => {
                let c = self.check(token)?;
                let mut cache = self.cache.lock().expect("not poisoned");
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, v| v.at.elapsed() < CACHE_TTL);
                }
                cache.insert(
                    key,
                    Verified {
                        claims: c.clone(),
                        at: Instant::now(),
                    },
                );
                c
            }
        };
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if !claims.aud.iter().any(|a| want.contains(a)) {
            return Err(TokenError::Audience {
                got: claims.aud.clone(),
                want: want.to_vec(),
            });
        }
        Ok(claims)
    }

    /// The signature, the issuer, the times, and the objects the token names.
    fn check(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        // Legacy tokens never expire; a bound token's expiry is checked below.
        v.validate_exp = false;
        v.leeway = 0;
        v.set_required_spec_claims(&["iss", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let iss = data.claims["iss"].as_str().unwrap_or_default();
        if iss == legacy::ISSUER {
            return self.check_legacy(token, &data.claims);
        }
        if iss != self.issuer {
            return Err(TokenError::Issuer(iss.to_string()));
        }
        let claims: Claims = serde_json::from_value(data.claims)
            .map_err(|e| TokenError::Invalid(format!("malformed claims: {e}")))?;
        if claims.exp <= jiff::Timestamp::now().as_second() {
            return Err(TokenError::Expired);
        }
        self.still_bound(&claims)?;
        Ok(claims)
    }

    /// The account, and the pod, secret or node the token is bound to, exist with the
    /// uids it names (kube's `validator.Validate`).
    fn still_bound(&self, c: &Claims) -> Result<(), TokenError> {
        let ns = Some(c.kubernetes.namespace.as_str());
        let check = |kind: &'static str, plural: &str, ns: Option<&str>, r: &Ref| {
            let res = resources::find("", plural).expect("served");
            let gone = |why| TokenError::Bound {
                kind,
                name: r.name.clone(),
                why,
            };
            let obj = self
                .registry
                .get(res, ns, &r.name)
                .map_err(|_| gone("is not found"))?
                .object;
            if obj["metadata"]["uid"].as_str() != Some(r.uid.as_str()) {
                return Err(gone("has been deleted (its uid differs)"));
            }
            if kind == "pod"
                && obj["metadata"]["deletionTimestamp"]
                    .as_str()
                    .is_some_and(|t| {
                        t.parse::<jiff::Timestamp>()
                            .is_ok_and(|t| t < jiff::Timestamp::now())
                    })
            {
                return Err(gone("is being deleted"));
            }
            Ok(())
        };
        check(
            "service account",
            "serviceaccounts",
            ns,
            &c.kubernetes.serviceaccount,
        )?;
        if let Some(p) = &c.kubernetes.pod {
            check("pod", "pods", ns, p)?;
        }
        if let Some(s) = &c.kubernetes.secret {
            check("secret", "secrets", ns, s)?;
        }
        if let Some(n) = &c.kubernetes.node {
            check("node", "nodes", None, n)?;
        }
        Ok(())
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts), not a join token.
pub fn is_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}
