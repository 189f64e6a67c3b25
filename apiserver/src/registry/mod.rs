//! The registry: the API's verbs over the store (get, list, create, update, patch,
//! delete and the subresources) with the rules Kubernetes' generic registry applies;
//! what differs per kind is in `strategy`; a body becomes a typed, defaulted, validated
//! object in `decode` (with `defaults` and `validation`), server-owned metadata is
//! `prepare`d, ClusterIPs and NodePorts come from `allocator`, patches are applied by
//! `patch`, list options are in `list`, the namespace cleanup in `namespace`.

pub mod allocator;
pub mod csr;
pub mod decode;
pub mod defaults;
pub mod expiry;
mod list;
pub mod namespace;
pub mod patch;
pub mod prepare;
pub mod strategy;
pub mod validation;

pub use list::{ListOptions, RawList, encode_continue, field_value, filter_event};

use std::sync::Arc;

use serde_json::{Value, json};
use tinykube_api::selector::Selector;

use crate::error::ApiError;
use crate::resources::{self, ResourceInfo};
use crate::store::{Store, Stored, WriteOp};
use allocator::Allocator;
use decode::FieldValidation;
use patch::PatchType;
use strategy::Step;

pub struct Registry {
    pub store: Arc<dyn Store>,
    pub alloc: Allocator,
    /// Namespaces being deleted, for the cleanup task (`run_namespace_cleanup`).
    pub namespace_cleanup: tokio::sync::mpsc::UnboundedSender<String>,
}

/// Options of a write: dry run and field validation.
#[derive(Clone, Copy)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
}

impl WriteOptions {
    /// The server's own writes (its bootstrap and the controllers inside it): applied,
    /// with unknown fields dropped as a client's would be under `Ignore`.
    pub const SERVER: Self = Self {
        dry_run: false,
        validation: FieldValidation::Ignore,
    };
}

/// DeleteOptions, merged from the body and the query.
#[derive(Default, Clone)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

pub(crate) fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn rev_of(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

impl Registry {
    pub fn get(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Stored, ApiError> {
        self.store
            .get(&res.key(ns, name))
            .map_err(|e| ApiError::from_store(res, name, e))?
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// A list as stored bytes, for serving without re-encoding.
    pub fn list_raw(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<RawList, ApiError> {
        opts.check_fields(res)?;
        let filter = |o: &Value| opts.matches(res, o);
        let selective = !opts.labels.is_empty() || !opts.fields.is_empty();
        let filter: Option<&dyn Fn(&Value) -> bool> = if selective { Some(&filter) } else { None };
        let page = self
            .store
            .list(
                &res.list_prefix(ns),
                opts.continue_key.as_deref(),
                opts.limit,
                filter,
            )
            .map_err(|e| ApiError::from_store(res, "", e))?;
        let mut meta = json!({"resourceVersion": page.rev.to_string()});
        if let Some(next) = &page.next_key {
            meta["continue"] = json!(encode_continue(next));
            if !selective {
                meta["remainingItemCount"] = json!(page.remaining);
            }
        }
        Ok(RawList {
            kind: format!("{}List", res.kind),
            api_version: res.api_version(),
            meta,
            items: page.items,
        })
    }

    pub fn list(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Value, ApiError> {
        self.list_raw(res, ns, opts)?.into_value()
    }

    async fn namespace_must_accept(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(ns) = ns.filter(|_| res.namespaced) else {
            return Ok(());
        };
        let nsres = resources::namespaces();
        match self
            .store
            .get(&nsres.key(None, ns))
            .map_err(|e| ApiError::from_store(nsres, ns, e))?
        {
            None => Err(ApiError::not_found(nsres, ns)),
            Some(s) if s.object["metadata"].get("deletionTimestamp").is_some() => {
                Err(ApiError::Forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    res.qualified(),
                    "",
                )))
            }
            Some(_) => Ok(()),
        }
    }

    async fn write(&self, res: &ResourceInfo, name: &str, op: WriteOp) -> Result<Value, ApiError> {
        let ev = self
            .store
            .write(op)
            .await
            .map_err(|e| ApiError::from_store(res, name, e))?;
        Ok(ev.object.clone())
    }

    pub async fn create(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        mut body: Value,
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        let kind = strategy::for_kind(res.kind);
        prepare::prepare_create(res, &mut body, ns)?;
        let admitted = decode::decode(res, body, None, opts.validation)?;
        let mut obj = admitted.object;
        let name = name_of(&obj).to_string();
        self.namespace_must_accept(res, ns).await?;
        let held = kind
            .allocate(&self.alloc, &mut obj, None)
            .map_err(|errs| ApiError::invalid(res, &name, errs))?;
        if opts.dry_run {
            self.alloc.release(&held);
            return Ok(Written {
                object: obj,
                warnings: admitted.warnings,
            });
        }
        // A generated name that is taken is generated again (Kubernetes retries too):
        // five random characters collide now and then across thousands of pods.
        let prefix = obj["metadata"]["generateName"]
            .as_str()
            .filter(|p| !p.is_empty() && name.starts_with(p))
            .map(str::to_string);
        let mut name = name;
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let op = WriteOp::Create {
                key: res.key(ns, &name),
                object: obj.clone(),
            };
            match self.write(res, &name, op).await {
                Err(ApiError::AlreadyExists { .. }) if prefix.is_some() && attempts < 8 => {
                    name = prepare::generate_name(prefix.as_deref().unwrap_or_default());
                    obj["metadata"]["name"] = json!(name);
                }
                other => break other,
            }
        };
        if result.is_err() {
            self.alloc.release(&held);
        }
        let object = result?;
        kind.created(self, &name).await;
        Ok(Written {
            object,
            warnings: admitted.warnings,
        })
    }

    /// Every namespace gets a `default` ServiceAccount, as the serviceaccount controller
    /// does in Kubernetes (pods name it by default), and the cluster CA in the
    /// `kube-root-ca.crt` ConfigMap, copied from kube-system, as the root-ca-cert-publisher
    /// does (pods' token volumes hold it).
    pub async fn populate_namespace(&self, ns: &str) {
        let sa = resources::find("", "serviceaccounts").expect("registered");
        let obj = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        self.create_if_missing(sa, ns, "default", obj).await;
        let cms = resources::find("", "configmaps").expect("registered");
        let name = namespace::ROOT_CA_CONFIGMAP;
        if let Ok(Some(ca)) = self.store.get(&cms.key(Some("kube-system"), name)) {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns,
                             "annotations": {"kubernetes.io/description": ca.object["metadata"]["annotations"]["kubernetes.io/description"]}},
                "data": ca.object["data"]});
            self.create_if_missing(cms, ns, name, obj).await;
        }
    }

    async fn create_if_missing(&self, res: &ResourceInfo, ns: &str, name: &str, mut obj: Value) {
        let key = res.key(Some(ns), name);
        if matches!(self.store.get(&key), Ok(Some(_))) {
            return;
        }
        if prepare::prepare_create(res, &mut obj, Some(ns)).is_ok() {
            let _ = self.store.write(WriteOp::Create { key, object: obj }).await;
        }
    }

    /// PUT of the object (`sub` = None) or of its status.
    pub async fn update(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        mut body: Value,
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        if !body.is_object() {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        let current = self.get(res, ns, name)?;
        let expect = rev_of(&body);
        if let Some(e) = expect
            && e != current.rev
        {
            return Err(ApiError::modified(res, name));
        }
        if let Some(ns) = ns.filter(|_| res.namespaced) {
            let body_ns = body["metadata"]["namespace"].as_str().unwrap_or(ns);
            if body_ns != ns {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
        }
        self.replace(res, ns, name, sub, &mut body, &current, opts)
            .await
    }

    /// Writes `body` over `current` (whose revision is the precondition).
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        body: &mut Value,
        current: &Stored,
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        let merged = match sub {
            Some("status") => {
                let mut merged = prepare::status_update(res, body, &current.object, name)?;
                if res.kind == "CertificateSigningRequest" {
                    csr::status_update(&mut merged, &current.object);
                }
                merged
            }
            Some("approval") if res.kind == "CertificateSigningRequest" => {
                prepare::check_type(res, body)?;
                csr::approval_update(body, &current.object)
            }
            None => {
                prepare::prepare_update(res, body, &current.object, name)?;
                body.clone()
            }
            Some(other) => {
                return Err(ApiError::MethodNotAllowed(format!(
                    "the server does not allow this method on the requested resource ({other})"
                )));
            }
        };
        let admitted = decode::decode(res, merged, Some(&current.object), opts.validation)?;
        let mut obj = admitted.object;
        if sub.is_none() {
            prepare::bump_generation(&mut obj, &current.object);
        }
        let kind = strategy::for_kind(res.kind);
        let held = kind
            .allocate(&self.alloc, &mut obj, Some(&current.object))
            .map_err(|errs| ApiError::invalid(res, name, errs))?;
        if opts.dry_run {
            self.alloc.release(&held);
            return Ok(Written {
                object: obj,
                warnings: admitted.warnings,
            });
        }
        // A write that changes nothing is not a write: no new revision, no event, as
        // Kubernetes' GuaranteedUpdate short-circuits it.
        if same_except_revision(&obj, &current.object) {
            return Ok(Written {
                object: current.object.clone(),
                warnings: admitted.warnings,
            });
        }
        let key = res.key(ns, name);
        // An object being deleted is removed once its last finalizer is gone.
        let terminating = obj["metadata"]
            .get("deletionTimestamp")
            .is_some_and(|d| !d.is_null());
        let no_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        let op = if terminating && no_finalizers && kind.may_vanish(&obj) {
            WriteOp::Delete {
                key,
                expect_rev: Some(current.rev),
            }
        } else {
            WriteOp::Update {
                key,
                object: obj,
                expect_rev: Some(current.rev),
            }
        };
        let deleting = matches!(op, WriteOp::Delete { .. });
        let result = self.write(res, name, op).await;
        match &result {
            Err(_) => self.alloc.release(&held),
            Ok(new) => kind.stored(&self.alloc, &current.object, new, deleting),
        }
        Ok(Written {
            object: result?,
            warnings: admitted.warnings,
        })
    }

    /// PATCH, retried on conflicts like Kubernetes' `GuaranteedUpdate`.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        kind: PatchType,
        body: &[u8],
        opts: WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = self.get(res, ns, name)?;
            let mut patched = patch::apply(kind, &current.object, body, res.kind)?;
            // A patch that names a resourceVersion is a precondition on it.
            if let Some(rv) = patched["metadata"]["resourceVersion"].as_str()
                && !rv.is_empty()
                && rv != current.rev.to_string()
            {
                return Err(ApiError::modified(res, name));
            }
            match self
                .replace(res, ns, name, sub, &mut patched, &current, opts)
                .await
            {
                Err(ApiError::Conflict { .. }) if attempts < 5 => continue,
                other => return other,
            }
        }
    }

    /// DELETE of one object: graceful for pods on a node, deferred while finalizers remain.
    pub async fn delete(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let kind = strategy::for_kind(res.kind);
        kind.may_delete(name)?;
        loop {
            let current = self.get(res, ns, name)?;
            let meta = &current.object["metadata"];
            if let Some(uid) = &opts.precondition_uid
                && meta["uid"].as_str() != Some(uid)
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta["uid"].as_str().unwrap_or_default()
                    ),
                ));
            }
            if let Some(rv) = &opts.precondition_rv
                && *rv != current.rev.to_string()
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        current.rev
                    ),
                ));
            }
            let mut obj = current.object.clone();
            let key = res.key(ns, name);
            let op = match deletion_step(kind, &mut obj, opts) {
                Step::Remove => WriteOp::Delete {
                    key,
                    expect_rev: Some(current.rev),
                },
                Step::Mark => WriteOp::Update {
                    key,
                    object: obj.clone(),
                    expect_rev: Some(current.rev),
                },
                Step::AlreadyPending => return Ok(obj),
            };
            if opts.dry_run {
                return Ok(obj);
            }
            let removed = matches!(op, WriteOp::Delete { .. });
            match self.write(res, name, op).await {
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
                Ok(written) => {
                    kind.stored(&self.alloc, &current.object, &written, removed);
                    if !removed {
                        kind.deletion_marked(self, name);
                    }
                    return Ok(written);
                }
            }
        }
    }

    pub async fn delete_collection(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        list_opts: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut list = self.list(res, ns, list_opts)?;
        let mut deleted = Vec::new();
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let item_ns = item["metadata"]["namespace"].as_str().map(str::to_string);
            match self
                .delete(res, item_ns.as_deref(), name_of(&item), opts)
                .await
            {
                Ok(o) => deleted.push(o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        list["items"] = Value::Array(deleted);
        Ok(list)
    }

    /// `pods/binding`: sets spec.nodeName once and marks the pod scheduled.
    pub async fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<Value, ApiError> {
        let pods = resources::find("", "pods").expect("registered");
        let node = binding["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                pods,
                name,
                vec![tinykube_api::validation::FieldError::required(
                    "target.name",
                    "",
                )],
            ));
        }
        loop {
            let current = self.get(pods, Some(ns), name)?;
            let mut obj = current.object.clone();
            if obj["metadata"]
                .get("deletionTimestamp")
                .is_some_and(|d| !d.is_null())
            {
                return Err(ApiError::conflict(
                    pods,
                    name,
                    format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            if let Some(existing) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(
                    pods,
                    name,
                    format!("pod {name} is already assigned to node \"{existing}\""),
                ));
            }
            obj["spec"]["nodeName"] = json!(node);
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                              "lastTransitionTime": tinykube_api::format::now_rfc3339()});
            let conds = obj["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| c["type"] != "PodScheduled")
                .collect();
            conds.push(cond);
            obj["status"]["conditions"] = Value::Array(conds);
            let op = WriteOp::Update {
                key: pods.key(Some(ns), name),
                object: obj,
                expect_rev: Some(current.rev),
            };
            match self.write(pods, name, op).await {
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(success_status()),
            }
        }
    }

    /// The `scale` subresource view of a deployment or replica set.
    pub fn scale_of(obj: &Value) -> Value {
        let selector = Selector::from_label_selector(
            serde_json::from_value(obj["spec"]["selector"].clone())
                .ok()
                .as_ref(),
        )
        .map(|s| s.to_string())
        .unwrap_or_default();
        let meta = &obj["metadata"];
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                         "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
            "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
            "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
        })
    }

    /// PUT or PATCH of `scale`: `make` turns the current Scale into the wanted one.
    /// Retried when the object moved underneath, unless the new Scale names a
    /// resourceVersion (then that is a precondition).
    pub async fn update_scale(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        make: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = self.get(res, Some(ns), name)?;
            let mut wanted = make(&Self::scale_of(&current.object))?;
            let pinned = wanted["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|r| r != current.rev.to_string());
            if !pinned && let Some(m) = wanted["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            match self.write_scale(res, ns, name, &wanted, &current).await {
                Err(ApiError::Conflict { .. }) if !pinned && attempts < 5 => continue,
                other => return other,
            }
        }
    }

    /// Writes `new_scale`'s replicas into the object (precondition: `current`).
    pub async fn write_scale(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        new_scale: &Value,
        current: &Stored,
    ) -> Result<Value, ApiError> {
        let replicas = new_scale["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale".into(),
                group: "autoscaling".into(),
                name: name.into(),
                errors: vec![tinykube_api::validation::FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            });
        }
        if let Some(rv) = rev_of(new_scale)
            && rv != current.rev
        {
            return Err(ApiError::modified(res, name));
        }
        let mut obj = current.object.clone();
        let changed = obj["spec"]["replicas"].as_i64() != Some(replicas);
        obj["spec"]["replicas"] = json!(replicas);
        if changed {
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        let op = WriteOp::Update {
            key: res.key(Some(ns), name),
            object: obj,
            expect_rev: Some(current.rev),
        };
        let written = self.write(res, name, op).await?;
        Ok(Self::scale_of(&written))
    }
}

fn same_except_revision(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// Propagation policies become the finalizers the garbage collector honours; then the
/// kind's strategy decides what the delete does.
fn deletion_step(kind: &dyn strategy::Strategy, obj: &mut Value, opts: &DeleteOptions) -> Step {
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    let already = meta.get("deletionTimestamp").is_some_and(|d| !d.is_null());
    let policy_finalizer = match opts.propagation.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    if let Some(f) = policy_finalizer.filter(|_| !already) {
        let list = meta.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut()
            && !a.iter().any(|x| x == f)
        {
            a.push(json!(f));
        }
    }
    let finalizers = meta
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    kind.deletion_step(obj, opts, already, finalizers, jiff::Timestamp::now())
}

pub fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}
