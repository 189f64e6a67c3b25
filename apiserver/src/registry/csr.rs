//! CertificateSigningRequests (`certificates.k8s.io/v1`) as kube-apiserver's registry
//! keeps them: who asked is filled in from the requester, never from the body; the spec
//! is immutable; `approval` changes only the Approved and Denied conditions, `status`
//! everything else; and the request must be a PEM certificate request whose signature
//! holds (`pkg/apis/certificates/validation`).

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::{Value, json};
use tinykube_api::validation::{FieldError, FieldErrorType};

/// Client certificates for kube-apiserver, approved by hand (users).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Kubelets' client certificates, approved automatically for nodes and bootstrappers.
pub use tinykube_api::pki::KUBELET_CLIENT_SIGNER;
/// The signers this cluster signs for; requests to others wait for their own signer.
pub const SIGNERS: [&str; 2] = [CLIENT_SIGNER, KUBELET_CLIENT_SIGNER];

pub const APPROVED: &str = "Approved";
pub const DENIED: &str = "Denied";
pub const FAILED: &str = "Failed";

/// The key usages a request may name (`certificates.KeyUsage`).
const USAGES: [&str; 21] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
];

/// Sets who asked from the authenticated requester, as kube's CSR strategy does on
/// create: a client cannot ask in someone else's name.
pub fn requested_by(name: &str, uid: &str, groups: &[String], obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert("username".into(), json!(name));
    spec.insert("groups".into(), json!(groups));
    if uid.is_empty() {
        spec.remove("uid");
    } else {
        spec.insert("uid".into(), json!(uid));
    }
    spec.remove("extra");
}

/// Go's `%#v` of a byte slice, the value kube-apiserver shows for a bad request.
fn go_bytes(b: &[u8]) -> String {
    let items: Vec<String> = b.iter().map(|x| format!("0x{x:x}")).collect();
    format!("[]byte{{{}}}", items.join(", "))
}

/// Why `spec.request` is not a usable certificate request (kube-apiserver's words).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("PEM block type must be CERTIFICATE REQUEST")]
    NotPem,
    #[error("asn1: {0}")]
    Der(String),
    #[error("x509: signature verification failure")]
    Signature,
}

/// The DER of a PEM certificate request whose signature holds.
pub fn request_der(pem: &[u8]) -> Result<Vec<u8>, RequestError> {
    let der = match rustls_pemfile::read_one(&mut &pem[..]) {
        Ok(Some(rustls_pemfile::Item::Csr(der))) => der.as_ref().to_vec(),
        _ => return Err(RequestError::NotPem),
    };
    use x509_parser::prelude::FromDer;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| RequestError::Der(e.to_string()))?;
    req.verify_signature()
        .map_err(|_| RequestError::Signature)?;
    Ok(der)
}

fn condition_types(csr: &CertificateSigningRequest) -> Vec<&str> {
    csr.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| c.type_.as_str())
        .collect()
}

/// kube's `ValidateCertificateSigningRequest{Create,Update}`; on update the spec is
/// kept as it was (it is immutable), as the strategy's `PrepareForUpdate` does.
pub fn validate(
    csr: &mut CertificateSigningRequest,
    old: Option<CertificateSigningRequest>,
) -> Vec<FieldError> {
    if let Some(old) = old {
        csr.spec = old.spec;
    }
    let spec = &csr.spec;
    let mut errs = Vec::new();
    if let Err(why) = request_der(&spec.request.0) {
        errs.push(FieldError {
            kind: FieldErrorType::Invalid,
            field: "spec.request".into(),
            value: Some(go_bytes(&spec.request.0)),
            detail: why.to_string(),
        });
    }
    if spec.signer_name.is_empty() {
        errs.push(FieldError::required("spec.signerName", ""));
    } else if !signer_name_is_valid(&spec.signer_name) {
        errs.push(FieldError::invalid(
            "spec.signerName",
            &spec.signer_name,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    if let Some(s) = spec.expiration_seconds
        && s < 600
    {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            s,
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    match spec.usages.as_deref() {
        None | Some([]) => errs.push(FieldError::required(
            "spec.usages",
            "usages must be provided",
        )),
        Some(usages) => {
            for (i, u) in usages.iter().enumerate() {
                if !USAGES.contains(&u.as_str()) {
                    errs.push(FieldError::not_supported(
                        format!("spec.usages[{i}]"),
                        u,
                        &USAGES,
                    ));
                } else if usages[..i].contains(u) {
                    errs.push(FieldError::duplicate(format!("spec.usages[{i}]"), u));
                }
            }
        }
    }
    let types = condition_types(csr);
    for (i, t) in types.iter().enumerate() {
        if t.is_empty() {
            errs.push(FieldError::required(
                format!("status.conditions[{i}].type"),
                "",
            ));
        } else if types[..i].contains(t) && matches!(*t, APPROVED | DENIED | FAILED) {
            errs.push(FieldError::duplicate(
                format!("status.conditions[{i}].type"),
                t,
            ));
        }
    }
    if types.contains(&APPROVED) && types.contains(&DENIED) {
        errs.push(FieldError::invalid(
            "status.conditions",
            "Approved and Denied",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    if csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
        && !types.contains(&APPROVED)
    {
        errs.push(FieldError::forbidden(
            "status.certificate",
            "certificate can only be set if an Approved condition is present",
        ));
    }
    errs
}

/// `example.com/name`: a DNS subdomain, a slash, then a path.
fn signer_name_is_valid(name: &str) -> bool {
    let Some((domain, path)) = name.split_once('/') else {
        return false;
    };
    tinykube_api::validation::dns1123_subdomain(domain).is_empty()
        && domain.contains('.')
        && !path.is_empty()
        && path.len() <= 253
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn is_approval(c: &Value) -> bool {
    matches!(c["type"].as_str(), Some(APPROVED | DENIED))
}

/// A PUT of `approval`: the stored request with its Approved and Denied conditions
/// taken from `input`, everything else (the other conditions, the certificate) kept.
pub fn approval_update(input: &Value, old: &Value) -> Value {
    let mut out = old.clone();
    let mut next: Vec<Value> = conditions(old)
        .into_iter()
        .filter(|c| !is_approval(c))
        .collect();
    next.extend(conditions(input).into_iter().filter(is_approval));
    stamp(&mut next, &conditions(old));
    out["status"]["conditions"] = json!(next);
    out
}

/// A PUT of `status`: approval stays as it was; the rest comes from `input`.
pub fn status_update(merged: &mut Value, old: &Value) {
    let mut next: Vec<Value> = conditions(merged)
        .into_iter()
        .filter(|c| !is_approval(c))
        .collect();
    next.extend(conditions(old).into_iter().filter(is_approval));
    stamp(&mut next, &conditions(old));
    if next.is_empty() {
        if let Some(s) = merged.get_mut("status").and_then(Value::as_object_mut) {
            s.remove("conditions");
        }
    } else {
        merged["status"]["conditions"] = json!(next);
    }
}

/// Conditions new since `old` get their update and transition times, as kube's
/// strategy stamps them.
fn stamp(next: &mut [Value], old: &[Value]) {
    let now = tinykube_api::format::now_rfc3339();
    for c in next.iter_mut() {
        if old.contains(c) {
            continue;
        }
        if c["lastUpdateTime"].is_null() {
            c["lastUpdateTime"] = json!(now);
        }
        let was = old.iter().find(|o| o["type"] == c["type"]);
        if c["lastTransitionTime"].is_null() {
            c["lastTransitionTime"] = match was {
                Some(o) if o["status"] == c["status"] => o["lastTransitionTime"].clone(),
                _ => json!(now),
            };
        }
    }
}

/// The condition of `kind` with status True, if any.
pub fn has_condition(obj: &Value, kind: &str) -> bool {
    conditions(obj)
        .iter()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// kubectl's CONDITION column: `Pending`, or the conditions joined, with `Issued` once
/// a certificate is there.
pub fn condition_column(obj: &Value) -> String {
    let mut out: Vec<String> = conditions(obj)
        .iter()
        .filter(|c| c["status"] == "True" || c["status"].is_null())
        .filter_map(|c| c["type"].as_str().map(String::from))
        .collect();
    if obj["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        out.push("Issued".into());
    }
    if out.is_empty() {
        "Pending".into()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(request: &[u8]) -> CertificateSigningRequest {
        serde_json::from_value(json!({
            "metadata": {"name": "jane"},
            "spec": {"request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, request),
                     "signerName": CLIENT_SIGNER, "usages": ["client auth"]}
        }))
        .unwrap()
    }

    #[test]
    fn a_request_must_be_a_signed_pem_request() {
        let (pem, _) = tinykube_api::pki::node_csr("w1").unwrap();
        assert!(validate(&mut csr(pem.as_bytes()), None).is_empty());
        let errs = validate(&mut csr(b"not pem"), None);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "spec.request: Invalid value: []byte{0x6e, 0x6f, 0x74, 0x20, 0x70, 0x65, 0x6d}: PEM block type must be CERTIFICATE REQUEST"
        );
        let key = pem.replace("CERTIFICATE REQUEST", "PRIVATE KEY");
        assert_eq!(validate(&mut csr(key.as_bytes()), None).len(), 1);
    }

    #[test]
    fn signer_usages_and_duration_are_checked() {
        let (pem, _) = tinykube_api::pki::node_csr("w1").unwrap();
        let mut c = csr(pem.as_bytes());
        c.spec.signer_name = "nodomain".into();
        c.spec.usages = Some(vec!["client auth".into(), "flying".into()]);
        c.spec.expiration_seconds = Some(60);
        let fields: Vec<String> = validate(&mut c, None)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.signerName",
                "spec.expirationSeconds",
                "spec.usages[1]"
            ]
        );
    }

    #[test]
    fn approval_changes_only_approval() {
        let old = json!({"spec": {"username": "jane"}, "status": {"certificate": "Q0VSVA==",
            "conditions": [{"type": "Failed", "status": "True"}]}});
        let input = json!({"spec": {"username": "root"}, "status": {"certificate": "",
            "conditions": [{"type": "Approved", "status": "True", "reason": "KubectlApprove"}]}});
        let out = approval_update(&input, &old);
        assert_eq!(out["spec"]["username"], "jane");
        assert_eq!(out["status"]["certificate"], "Q0VSVA==");
        assert_eq!(condition_column(&out), "Failed,Approved,Issued");
        assert!(out["status"]["conditions"][1]["lastUpdateTime"].is_string());
        let mut status = json!({"status": {"conditions": [{"type": "Denied", "status": "True"}]}});
        status_update(&mut status, &out);
        assert_eq!(
            status["status"]["conditions"][0]["type"], "Approved",
            "status cannot approve or deny"
        );
        assert_eq!(condition_column(&json!({})), "Pending");
    }
}
