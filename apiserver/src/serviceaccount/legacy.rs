//! The legacy token Secrets older tutorials still make: a Secret of type
//! `kubernetes.io/service-account-token` naming an account in its
//! `kubernetes.io/service-account.name` annotation is filled with a token that never
//! expires (`data.token`), the cluster CA (`data.ca.crt`) and the namespace, as
//! kube-controller-manager's tokens controller does. The token is good while the Secret
//! holds it and the account exists; a Secret naming an account that does not exist is
//! deleted, and so are an account's Secrets when the account is deleted.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Claims, KubeClaims, Ref, ServiceAccountTokens, TokenError, USER_PREFIX};
use crate::registry::{Registry, WriteOptions};
use crate::resources::{self, ResourceInfo};
use crate::store::EventType;

pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// The issuer of legacy tokens (kube's `LegacyIssuer`).
pub const ISSUER: &str = "kubernetes/serviceaccount";

const NS_CLAIM: &str = "kubernetes.io/serviceaccount/namespace";
const SECRET_CLAIM: &str = "kubernetes.io/serviceaccount/secret.name";
const NAME_CLAIM: &str = "kubernetes.io/serviceaccount/service-account.name";
const UID_CLAIM: &str = "kubernetes.io/serviceaccount/service-account.uid";

fn secrets() -> &'static ResourceInfo {
    resources::find("", "secrets").expect("served")
}

fn accounts() -> &'static ResourceInfo {
    resources::find("", "serviceaccounts").expect("served")
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl ServiceAccountTokens {
    /// A legacy token for `account` in `namespace`, held by the Secret `secret`.
    pub fn issue_legacy(
        &self,
        namespace: &str,
        account: &Ref,
        secret: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = json!({
            "iss": ISSUER,
            NS_CLAIM: namespace,
            SECRET_CLAIM: secret,
            NAME_CLAIM: account.name,
            UID_CLAIM: account.uid,
            "sub": format!("{USER_PREFIX}{namespace}:{}", account.name),
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }

    /// The claims of a legacy token whose signature holds: good for the API's audiences
    /// and for ever, while its Secret holds exactly this token and its account exists
    /// with the uid it names (kube's legacy validator).
    pub(super) fn check_legacy(&self, token: &str, raw: &Value) -> Result<Claims, TokenError> {
        let claim = |c: &str| raw[c].as_str().unwrap_or_default().to_string();
        let (namespace, secret) = (claim(NS_CLAIM), claim(SECRET_CLAIM));
        let account = Ref {
            name: claim(NAME_CLAIM),
            uid: claim(UID_CLAIM),
        };
        if namespace.is_empty() || secret.is_empty() || account.name.is_empty() {
            return Err(TokenError::Invalid("malformed legacy claims".into()));
        }
        let gone = |why| TokenError::Bound {
            kind: "secret",
            name: secret.clone(),
            why,
        };
        let held = self
            .registry
            .get(secrets(), Some(&namespace), &secret)
            .map_err(|_| gone("is not found"))?
            .object;
        if held["data"]["token"].as_str() != Some(b64(token).as_str()) {
            return Err(gone("no longer holds this token"));
        }
        let claims = Claims {
            aud: self.audiences.clone(),
            exp: i64::MAX,
            iat: 0,
            iss: ISSUER.to_string(),
            jti: String::new(),
            nbf: 0,
            sub: claim("sub"),
            kubernetes: KubeClaims {
                namespace,
                serviceaccount: account,
                ..Default::default()
            },
        };
        self.still_bound(&claims)?;
        Ok(claims)
    }
}

/// An object's namespace and name.
fn ns_name(obj: &Value) -> Option<(&str, &str)> {
    let m = &obj["metadata"];
    Some((m["namespace"].as_str()?, m["name"].as_str()?))
}

/// What to do with one token Secret.
#[derive(Debug, PartialEq)]
enum Action {
    Nothing,
    /// Fill it with a token for the account of this uid.
    Fill(String),
    /// Its account does not exist (or is another one by now).
    Delete,
}

fn action(secret: &Value, account: Option<&Value>) -> Action {
    if secret["type"].as_str() != Some(SECRET_TYPE) {
        return Action::Nothing;
    }
    let Some(account) = account else {
        return Action::Delete;
    };
    let uid = account["metadata"]["uid"].as_str().unwrap_or_default();
    match secret["metadata"]["annotations"][UID_ANNOTATION].as_str() {
        Some(u) if !u.is_empty() && u != uid => Action::Delete,
        Some(_)
            if secret["data"]["token"]
                .as_str()
                .is_some_and(|t| !t.is_empty()) =>
        {
            Action::Nothing
        }
        _ => Action::Fill(uid.to_string()),
    }
}

/// Keeps the token Secrets filled until cancelled.
pub struct LegacyTokens {
    pub registry: Arc<Registry>,
    pub tokens: Arc<ServiceAccountTokens>,
    pub ca_pem: String,
}

impl LegacyTokens {
    /// Fills or deletes the token Secret `secret` (as stored or as a watch delivered
    /// it) as its account says. A write over a newer version conflicts, and the newer
    /// one comes through the watch to be looked at in turn.
    async fn sync_secret(&self, secret: &Value) {
        let Some((ns, name)) = ns_name(secret) else {
            return;
        };
        // Other Secrets cost no account lookup.
        if secret["type"].as_str() != Some(SECRET_TYPE) {
            return;
        }
        let sa_name = secret["metadata"]["annotations"][NAME_ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let account = self
            .registry
            .get(accounts(), Some(ns), &sa_name)
            .ok()
            .map(|s| s.object);
        let opts = WriteOptions::SERVER;
        match action(secret, account.as_ref()) {
            Action::Nothing => {}
            Action::Delete => {
                tracing::info!(secret = name, namespace = ns, account = %sa_name,
                    "deleting a token secret whose service account does not exist");
                let _ = self
                    .registry
                    .delete(secrets(), Some(ns), name, &Default::default())
                    .await;
            }
            Action::Fill(uid) => {
                let account = Ref {
                    name: sa_name,
                    uid: uid.clone(),
                };
                let token = match self.tokens.issue_legacy(ns, &account, name) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot sign a legacy token");
                        return;
                    }
                };
                let mut secret = secret.clone();
                secret["metadata"]["annotations"][UID_ANNOTATION] = json!(uid);
                if !secret["data"].is_object() {
                    secret["data"] = json!({});
                }
                secret["data"]["token"] = json!(b64(&token));
                secret["data"]["ca.crt"] = json!(b64(&self.ca_pem));
                secret["data"]["namespace"] = json!(b64(ns));
                if let Err(e) = self
                    .registry
                    .update(secrets(), Some(ns), name, None, secret, opts)
                    .await
                {
                    tracing::debug!(secret = name, error = %e, "token secret not filled yet");
                }
            }
        }
    }

    /// Deletes the token Secrets of the account `ns/name`, which is gone.
    async fn account_deleted(&self, ns: &str, name: &str, uid: &str) {
        let Ok(list) = self.registry.list(secrets(), Some(ns), &Default::default()) else {
            return;
        };
        for s in list["items"].as_array().into_iter().flatten() {
            let ann = &s["metadata"]["annotations"];
            if s["type"].as_str() == Some(SECRET_TYPE)
                && ann[NAME_ANNOTATION].as_str() == Some(name)
                && ann[UID_ANNOTATION].as_str().is_none_or(|u| u == uid)
                && let Some(secret) = s["metadata"]["name"].as_str()
            {
                let _ = self
                    .registry
                    .delete(secrets(), Some(ns), secret, &Default::default())
                    .await;
            }
        }
    }

    /// Every token Secret now, then each change to Secrets and accounts.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let store = self.registry.store.clone();
            let rev = store.current_revision();
            let (Ok(mut secret_events), Ok(mut account_events)) = (
                store.watch(&secrets().key_prefix(), rev),
                store.watch(&accounts().key_prefix(), rev),
            ) else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            };
            if let Ok(list) = self.registry.list(secrets(), None, &Default::default()) {
                for s in list["items"].as_array().into_iter().flatten() {
                    self.sync_secret(s).await;
                }
            }
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = secret_events.recv() => match ev {
                        Some(Ok(ev)) if ev.kind != EventType::Deleted => self.sync_secret(&ev.object).await,
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                    ev = account_events.recv() => match ev {
                        Some(Ok(ev)) if ev.kind == EventType::Deleted => {
                            if let Some((ns, name)) = ns_name(&ev.object) {
                                let uid = ev.object["metadata"]["uid"].as_str().unwrap_or_default();
                                self.account_deleted(ns, name, uid).await;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_secret_is_filled_once_and_dies_with_its_account() {
        let sa = json!({"metadata": {"name": "bot", "uid": "u1"}});
        let empty =
            json!({"type": SECRET_TYPE, "metadata": {"annotations": {NAME_ANNOTATION: "bot"}}});
        assert_eq!(action(&empty, Some(&sa)), Action::Fill("u1".into()));
        assert_eq!(action(&empty, None), Action::Delete);
        let filled = json!({"type": SECRET_TYPE, "metadata": {"annotations": {NAME_ANNOTATION: "bot", UID_ANNOTATION: "u1"}},
                            "data": {"token": "eyJ"}});
        assert_eq!(action(&filled, Some(&sa)), Action::Nothing);
        let recreated = json!({"metadata": {"name": "bot", "uid": "u2"}});
        assert_eq!(action(&filled, Some(&recreated)), Action::Delete);
        let opaque = json!({"type": "Opaque", "metadata": {}});
        assert_eq!(action(&opaque, None), Action::Nothing);
    }
}
