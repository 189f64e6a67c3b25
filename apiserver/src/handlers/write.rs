//! create (and the binding and eviction subresources), update and patch, with
//! admission before the registry writes.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};

use super::Call;
use super::delete::delete_options;
use crate::authz::Attributes;
use crate::authz::rbac::escalation;
use crate::error::ApiError;
use crate::registry::decode::FieldValidation;
use crate::registry::patch::{self, PatchType};
use crate::registry::{self, WriteOptions, csr};
use crate::request::negotiate::{Output, decode_object, present, read_body, respond};

fn write_options(c: &Call<'_>) -> Result<WriteOptions, ApiError> {
    let q = &c.info.query;
    Ok(WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
    })
}

fn is_csr(c: &Call<'_>) -> bool {
    c.res.kind == "CertificateSigningRequest"
}

/// A certificate request just written is approved and signed if it can be, as
/// kube-controller-manager's certificate controllers do on seeing it.
async fn settle(c: &Call<'_>, name: &str) {
    if is_csr(c) && !write_options(c).is_ok_and(|o| o.dry_run) {
        let s = c.shared;
        s.signer
            .settle(&s.registry, &s.authorizer, &s.pki, name)
            .await;
    }
}

/// Approving (the `approval` subresource) and signing (`status`) take `approve` or
/// `sign` on the request's signer, by its name or its domain's `*`, as kube-apiserver's
/// CertificateApproval and CertificateSigning admission plugins check.
fn may_approve_or_sign(c: &Call<'_>, name: &str) -> Result<(), ApiError> {
    let verb = match c.sub {
        Some("approval") if is_csr(c) => "approve",
        Some("status") if is_csr(c) => "sign",
        _ => return Ok(()),
    };
    let stored = c.shared.registry.get(c.res, None, name)?;
    let signer = stored.object["spec"]["signerName"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let wildcard = format!("{}/*", signer.split('/').next().unwrap_or_default());
    let allowed = [signer.as_str(), wildcard.as_str()].iter().any(|n| {
        c.shared
            .authorizer
            .decide(&Attributes::resource(
                c.user,
                verb,
                "certificates.k8s.io",
                "signers",
                None,
                Some(n),
            ))
            .0
    });
    if allowed {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to {verb} requests with signerName \"{signer}\""
    )))
}

fn written(c: &Call<'_>, code: StatusCode, w: registry::Written) -> Response {
    respond(
        code,
        &present(c.res, w.object, c.output, c.include),
        c.output,
        &w.warnings,
    )
}

pub async fn create(c: &Call<'_>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut obj = decode_object(headers, &read_body(body).await?)?;
    let reg = &c.shared.registry;
    match (c.sub, c.ns, c.name) {
        (Some("binding"), Some(ns), Some(name)) => {
            let status = reg.bind(ns, name, &obj).await?;
            Ok(respond(StatusCode::CREATED, &status, Output::Json, &[]))
        }
        (Some("token"), Some(ns), Some(name)) => {
            let answer = super::tokens::request(c, ns, name, obj)?;
            Ok(respond(StatusCode::CREATED, &answer, Output::Json, &[]))
        }
        (Some("eviction"), _, Some(name)) => {
            let opts = delete_options(&obj["deleteOptions"], &c.info.query)?;
            reg.delete(c.res, c.ns, name, &opts).await?;
            Ok(respond(
                StatusCode::CREATED,
                &registry::success_status(),
                Output::Json,
                &[],
            ))
        }
        (None, _, None) => {
            c.shared
                .admission
                .create(reg, c.user, c.res, c.ns, &mut obj)?;
            escalation::check(&c.shared.authorizer, c.user, c.res, c.ns, &obj)?;
            if is_csr(c) {
                csr::requested_by(&c.user.name, &c.user.uid, &c.user.groups, &mut obj);
            }
            let opts = write_options(c)?;
            let w = reg.create(c.res, c.ns, obj, opts).await?;
            if is_csr(c) && !opts.dry_run {
                settle(c, registry::name_of(&w.object)).await;
            }
            Ok(written(c, StatusCode::CREATED, w))
        }
        _ => Err(ApiError::NoRoute),
    }
}

pub async fn update(c: &Call<'_>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let obj = decode_object(headers, &read_body(body).await?)?;
    let name = c.name.ok_or(ApiError::NoRoute)?;
    let reg = &c.shared.registry;
    c.shared.admission.change(reg, c.user, c.info, c.res)?;
    escalation::check(&c.shared.authorizer, c.user, c.res, c.ns, &obj)?;
    if c.sub == Some("scale") {
        let ns = c.ns.ok_or(ApiError::NoRoute)?;
        let scale = reg
            .update_scale(c.res, ns, name, |_| Ok(obj.clone()))
            .await?;
        return Ok(respond(StatusCode::OK, &scale, c.output, &[]));
    }
    may_approve_or_sign(c, name)?;
    let w = reg
        .update(c.res, c.ns, name, c.sub, obj, write_options(c)?)
        .await?;
    settle(c, name).await;
    Ok(written(c, StatusCode::OK, w))
}

pub async fn patch(c: &Call<'_>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let kind = PatchType::from_content_type(ct)?;
    let bytes = read_body(body).await?;
    let name = c.name.ok_or(ApiError::NoRoute)?;
    let reg = &c.shared.registry;
    c.shared.admission.change(reg, c.user, c.info, c.res)?;
    if c.res.group == escalation::GROUP {
        // What the patch would make, checked before it is written.
        let current = reg.get(c.res, c.ns, name)?.object;
        let patched = patch::apply(kind, &current, &bytes, c.res.kind)?;
        escalation::check(&c.shared.authorizer, c.user, c.res, c.ns, &patched)?;
    }
    if c.sub == Some("scale") {
        let ns = c.ns.ok_or(ApiError::NoRoute)?;
        let out = reg
            .update_scale(c.res, ns, name, |scale| {
                patch::apply(kind, scale, &bytes, "Scale")
            })
            .await?;
        return Ok(respond(StatusCode::OK, &out, c.output, &[]));
    }
    may_approve_or_sign(c, name)?;
    let w = reg
        .patch(c.res, c.ns, name, c.sub, kind, &bytes, write_options(c)?)
        .await?;
    settle(c, name).await;
    Ok(written(c, StatusCode::OK, w))
}
