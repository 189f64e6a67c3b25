//! What kube-controller-manager's certificate controllers do, done as soon as a
//! CertificateSigningRequest is written: `csrapproving` approves a kubelet's client
//! request when its requester may ask for one (a bootstrapper may ask for any node, a
//! node for itself, each checked as a SubjectAccessReview); `csrsigning` signs approved
//! requests for the two kube-apiserver signers with the cluster CA, for the requested
//! `expirationSeconds` capped at `--cluster-signing-duration`, or marks them Failed
//! with the reason a request breaks its signer's rules.

use std::time::Duration;

use base64::Engine;
use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use serde_json::{Value, json};

use super::pki::Pki;
use crate::authn::UserInfo;
use crate::authz::{Attributes, Authorizer};
use crate::registry::csr::{self, APPROVED, DENIED, FAILED, KUBELET_CLIENT_SIGNER};
use crate::registry::{Registry, WriteOptions};
use crate::resources::{self, ResourceInfo};

/// The usages a client certificate may carry (kube's `validAPIServerClientUsages`).
const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// kubeadm's and kube-controller-manager's default signing duration: one year.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn csrs() -> &'static ResourceInfo {
    resources::find("certificates.k8s.io", "certificatesigningrequests").expect("served")
}

/// Why a request breaks its signer's rules, written into the Failed condition.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Rule(String),
    #[error("the request cannot be signed: {0}")]
    Sign(#[from] rcgen::Error),
}

fn rule(msg: impl Into<String>) -> Refusal {
    Refusal::Rule(msg.into())
}

/// The subject and names of a request, as the signers' rules read them.
struct Subject {
    common_name: String,
    organizations: Vec<String>,
    has_sans: bool,
}

fn subject(der: &[u8]) -> Result<Subject, Refusal> {
    use x509_parser::prelude::FromDer;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| rule(format!("the request does not parse: {e}")))?;
    let name = &req.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(String::from).unwrap_or_default()
    };
    let has_sans = req.requested_extensions().into_iter().flatten().any(|e| {
        matches!(
            e,
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) if !s.general_names.is_empty()
        )
    });
    Ok(Subject {
        common_name: name.iter_common_name().next().map(text).unwrap_or_default(),
        organizations: name.iter_organization().map(text).collect(),
        has_sans,
    })
}

fn usages(obj: &Value) -> Vec<&str> {
    obj["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The signer's rules for `obj` (kube's `validAPIServerClientUsages` and
/// `ValidateKubeletClientCSR`).
fn check(obj: &Value, s: &Subject) -> Result<(), Refusal> {
    let usages = usages(obj);
    if let Some(bad) = usages.iter().find(|u| !CLIENT_USAGES.contains(u)) {
        return Err(rule(format!("invalid usage for client certificate: {bad}")));
    }
    if !usages.contains(&"client auth") {
        return Err(rule(
            "missing required usage for client certificate: client auth",
        ));
    }
    if obj["spec"]["signerName"] == KUBELET_CLIENT_SIGNER {
        if s.organizations != [tinykube_api::pki::NODES_GROUP] {
            return Err(rule("subject organization is not system:nodes"));
        }
        if !s
            .common_name
            .starts_with(tinykube_api::pki::NODE_USER_PREFIX)
        {
            return Err(rule("subject common name does not begin with system:node:"));
        }
        if s.has_sans {
            return Err(rule("subjectAltNames are not allowed"));
        }
    }
    if s.common_name.is_empty() {
        return Err(rule("subject common name (the user name) is empty"));
    }
    // The certificate library keeps one value per subject attribute.
    if s.organizations.len() > 1 {
        return Err(rule(
            "this signer signs subjects with at most one organization (group)",
        ));
    }
    Ok(())
}

/// Signs `obj`'s request: its subject and names, client authentication only, from
/// now (backdated a little for clocks that differ) for `expirationSeconds`, at most
/// `max`.
pub fn sign(pki: &Pki, obj: &Value, max: Duration) -> Result<String, Refusal> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(obj["spec"]["request"].as_str().unwrap_or_default())
        .map_err(|e| rule(format!("spec.request is not base64: {e}")))?;
    let der = csr::request_der(&pem).map_err(|e| rule(e.to_string()))?;
    check(obj, &subject(&der)?)?;
    let mut req = CertificateSigningRequestParams::from_der(&der.into())?;
    let lifetime = obj["spec"]["expirationSeconds"]
        .as_u64()
        .map_or(max, |s| Duration::from_secs(s).min(max));
    let usages = usages(obj);
    let params = &mut req.params;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = [
        ("digital signature", KeyUsagePurpose::DigitalSignature),
        ("key encipherment", KeyUsagePurpose::KeyEncipherment),
    ]
    .into_iter()
    .filter(|(u, _)| usages.contains(u))
    .map(|(_, k)| k)
    .collect();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - super::pki::backdate(lifetime);
    params.not_after = now + lifetime;
    Ok(pki.sign_request(req)?)
}

/// Whether `obj`, pending, is a kubelet's client request its requester may have
/// approved without a person: kube's `csrapproving` recognizers, each a
/// SubjectAccessReview on a virtual subresource.
fn auto_approval(authz: &Authorizer, obj: &Value) -> Option<&'static str> {
    if obj["spec"]["signerName"] != KUBELET_CLIENT_SIGNER {
        return None;
    }
    let pem = base64::engine::general_purpose::STANDARD
        .decode(obj["spec"]["request"].as_str()?)
        .ok()?;
    let s = subject(&csr::request_der(&pem).ok()?).ok()?;
    check(obj, &s).ok()?;
    let spec = &obj["spec"];
    let requester = UserInfo {
        name: spec["username"].as_str()?.to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups: spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect(),
    };
    let may = |sub: &str| {
        authz
            .decide(&Attributes {
                subresource: Some(sub),
                ..Attributes::resource(
                    &requester,
                    "create",
                    "certificates.k8s.io",
                    "certificatesigningrequests",
                    None,
                    None,
                )
            })
            .0
    };
    if requester.name == s.common_name && may("selfnodeclient") {
        return Some("Auto approving self kubelet client certificate after SubjectAccessReview.");
    }
    if may("nodeclient") {
        return Some("Auto approving kubelet client certificate after SubjectAccessReview.");
    }
    None
}

/// The approver and the signer, with the CA they sign with.
pub struct Signer {
    /// `--cluster-signing-duration`: the longest certificate it signs.
    pub duration: Duration,
}

/// `obj` with one more condition, True.
fn with_condition(obj: &Value, kind: &str, reason: &str, message: &str) -> Value {
    let mut next = obj.clone();
    let mut conditions = next["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.push(json!({"type": kind, "status": "True", "reason": reason, "message": message}));
    next["status"]["conditions"] = json!(conditions);
    next
}

impl Signer {
    /// The next write that brings `obj` forward, if any: its approval (a recognizer
    /// allows it), then its certificate (or the Failed condition saying why not).
    fn next_step(
        &self,
        authz: &Authorizer,
        pki: &Pki,
        obj: &Value,
    ) -> Option<(&'static str, Value)> {
        if !csr::has_condition(obj, APPROVED) {
            if csr::has_condition(obj, DENIED) {
                return None;
            }
            let message = auto_approval(authz, obj)?;
            return Some((
                "approval",
                with_condition(obj, APPROVED, "AutoApproved", message),
            ));
        }
        let issued = obj["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty());
        let ours = csr::SIGNERS.contains(&obj["spec"]["signerName"].as_str().unwrap_or_default());
        if csr::has_condition(obj, FAILED) || issued || !ours {
            return None;
        }
        let next = match sign(pki, obj, self.duration) {
            Ok(pem) => {
                let mut next = obj.clone();
                next["status"]["certificate"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(pem));
                next
            }
            Err(why) => with_condition(obj, FAILED, "SignerValidationFailure", &why.to_string()),
        };
        Some(("status", next))
    }

    /// Brings the request `name` forward: approves it if a recognizer allows, then
    /// signs it once approved. Failures to write are logged; the next write of the
    /// request (or the next start) tries again.
    pub async fn settle(&self, reg: &Registry, authz: &Authorizer, pki: &Pki, name: &str) {
        // At most two steps: the approval, then the certificate.
        for _ in 0..2 {
            let Ok(stored) = reg.get(csrs(), None, name) else {
                return;
            };
            let Some((sub, body)) = self.next_step(authz, pki, &stored.object) else {
                return;
            };
            let opts = WriteOptions::SERVER;
            match reg.update(csrs(), None, name, Some(sub), body, opts).await {
                Ok(_) => tracing::info!(csr = name, step = sub, "certificate request settled"),
                Err(e) => {
                    tracing::warn!(csr = name, error = %e, "cannot settle the certificate request");
                    return;
                }
            }
        }
    }

    /// At start: every request approved (or approvable) while the master was down.
    pub async fn settle_all(&self, reg: &Registry, authz: &Authorizer, pki: &Pki) {
        let Ok(list) = reg.list(csrs(), None, &Default::default()) else {
            return;
        };
        for item in list["items"].as_array().into_iter().flatten() {
            if let Some(name) = item["metadata"]["name"].as_str() {
                self.settle(reg, authz, pki, name).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::csr::CLIENT_SIGNER;

    fn request(signer: &str, pem: &str, usages: &[&str]) -> Value {
        json!({"spec": {"signerName": signer, "usages": usages, "expirationSeconds": 3600,
            "request": base64::engine::general_purpose::STANDARD.encode(pem)}})
    }

    #[test]
    fn client_requests_are_signed_within_their_rules() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::ensure(dir.path(), &["127.0.0.1".into()]).unwrap();
        let (pem, _) = tinykube_api::pki::node_csr("w1").unwrap();
        let cert = sign(
            &pki,
            &request(
                KUBELET_CLIENT_SIGNER,
                &pem,
                &["digital signature", "client auth"],
            ),
            DEFAULT_DURATION,
        )
        .unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let id = tinykube_api::pki::identity(&der).unwrap();
        assert_eq!(id.node(), Some("w1"));
        let left = tinykube_api::pki::not_after(&der).unwrap() - jiff::Timestamp::now().as_second();
        assert!((3590..=3600).contains(&left), "{left}");
        let server = request(CLIENT_SIGNER, &pem, &["client auth", "server auth"]);
        assert_eq!(
            sign(&pki, &server, DEFAULT_DURATION)
                .unwrap_err()
                .to_string(),
            "invalid usage for client certificate: server auth"
        );
        let (jane, _) = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "system:node:w2");
            (p.serialize_request(&key).unwrap().pem().unwrap(), key)
        };
        let kubelet = request(KUBELET_CLIENT_SIGNER, &jane, &["client auth"]);
        assert_eq!(
            sign(&pki, &kubelet, DEFAULT_DURATION)
                .unwrap_err()
                .to_string(),
            "subject organization is not system:nodes"
        );
    }
}
