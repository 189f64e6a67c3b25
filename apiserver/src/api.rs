//! The API's verbs over the store: get, list, create, update, patch, delete and the
//! subresources, with the rules Kubernetes' registries apply.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tinykube_api::selector::{FieldSelector, Selector};

use crate::allocator::{Allocator, Held};
use crate::error::ApiError;
use crate::patch::{self, PatchType};
use crate::resources::{self, ResourceInfo};
use crate::store::{EventType, Store, Stored, WriteOp};
use crate::strategy::{self, FieldValidation};

/// Namespaces that may not be deleted.
const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

pub struct Api {
    pub store: Arc<dyn Store>,
    pub alloc: Allocator,
    /// Namespaces being deleted, for the cleanup task (`run_namespace_cleanup`).
    pub namespace_cleanup: tokio::sync::mpsc::UnboundedSender<String>,
    /// `tolerationSeconds` of the not-ready/unreachable tolerations every pod gets.
    pub default_toleration_seconds: i64,
}

/// The namespace controller's work: delete everything in a terminating namespace, then
/// the namespace itself.
pub async fn run_namespace_cleanup(
    api: Arc<Api>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    while let Some(ns) = rx.recv().await {
        let api = api.clone();
        tokio::spawn(async move {
            for _ in 0..3600 {
                let mut remaining = 0;
                for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                    let Ok(list) = api.list(res, Some(&ns), &ListOptions::default()) else {
                        continue;
                    };
                    for item in list["items"].as_array().into_iter().flatten() {
                        remaining += 1;
                        let _ = api
                            .delete(res, Some(&ns), name_of(item), &DeleteOptions::default())
                            .await;
                    }
                }
                if remaining == 0 {
                    let nsres = resources::namespaces();
                    if let Ok(cur) = api.get(nsres, None, &ns) {
                        let op = WriteOp::Delete {
                            key: nsres.key(None, &ns),
                            expect_rev: Some(cur.rev),
                        };
                        let _ = api.store.write(op).await;
                    }
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}

/// Query options of list and watch.
#[derive(Default)]
pub struct ListOptions {
    pub labels: Selector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_key: Option<String>,
}

impl ListOptions {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = match q.get("labelSelector") {
            Some(s) => Selector::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))?,
            None => Selector::everything(),
        };
        let fields = match q.get("fieldSelector") {
            Some(s) => FieldSelector::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))?,
            None => FieldSelector::default(),
        };
        let limit = match q.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let continue_key = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_continue(c)?),
            None => None,
        };
        Ok(Self {
            labels,
            fields,
            limit,
            continue_key,
        })
    }

    pub fn matches(&self, res: &ResourceInfo, obj: &Value) -> bool {
        self.labels.matches_json(obj["metadata"].get("labels"))
            && self.fields.matches(|f| field_value(res, obj, f))
    }

    pub fn check_fields(&self, res: &ResourceInfo) -> Result<(), ApiError> {
        for r in &self.fields.requirements {
            if !supported_field(res, &r.field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {}",
                    r.field
                )));
            }
        }
        Ok(())
    }
}

fn supported_field(res: &ResourceInfo, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || match res.kind {
            "Pod" => matches!(
                field,
                "spec.nodeName"
                    | "status.phase"
                    | "spec.schedulerName"
                    | "spec.restartPolicy"
                    | "status.podIP"
                    | "spec.serviceAccountName"
            ),
            "Node" => field == "spec.unschedulable",
            "Secret" => field == "type",
            "Event" => {
                field.starts_with("involvedObject.")
                    || matches!(field, "reason" | "type" | "source")
            }
            _ => false,
        }
}

/// The value of a selectable field, as Kubernetes' `GetAttrs` functions give them.
pub fn field_value(_res: &ResourceInfo, obj: &Value, field: &str) -> Option<String> {
    let mut cur = obj;
    for part in field.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
    .or_else(|| (field == "spec.unschedulable").then(|| "false".to_string()))
}

pub fn encode_continue(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::BadRequest("continue key is not valid: illegal base64 data".into())
        })
}

/// A list whose items are still the stored JSON bytes.
pub struct RawList {
    pub kind: String,
    pub api_version: String,
    pub meta: Value,
    pub items: Vec<bytes::Bytes>,
}

impl RawList {
    /// The list's JSON, with the stored items spliced in as they are.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let size: usize = self.items.iter().map(|i| i.len() + 1).sum();
        let mut out = Vec::with_capacity(size + 256);
        out.extend_from_slice(b"{\"kind\":");
        serde_json::to_writer(&mut out, &self.kind).expect("string");
        out.extend_from_slice(b",\"apiVersion\":");
        serde_json::to_writer(&mut out, &self.api_version).expect("string");
        out.extend_from_slice(b",\"metadata\":");
        serde_json::to_writer(&mut out, &self.meta).expect("json");
        out.extend_from_slice(b",\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"]}");
        out
    }

    pub fn into_value(self) -> Result<Value, ApiError> {
        let items = self
            .items
            .iter()
            .map(|b| {
                serde_json::from_slice(b)
                    .map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))
            })
            .collect::<Result<Vec<Value>, _>>()?;
        Ok(
            json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": self.meta, "items": items}),
        )
    }
}

/// Options of a write: dry run and field validation.
#[derive(Clone, Copy)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
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

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn rev_of(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

impl Api {
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
        strategy::prepare_create(res, &mut body, ns)?;
        if res.kind == "Pod" {
            strategy::add_default_tolerations(&mut body, self.default_toleration_seconds);
        }
        let admitted = strategy::admit(res, body, None, opts.validation)?;
        let mut obj = admitted.object;
        let name = name_of(&obj).to_string();
        self.namespace_must_accept(res, ns).await?;
        let held = if res.kind == "Service" {
            self.alloc
                .assign(&mut obj, None)
                .map_err(|errs| ApiError::invalid(res, &name, errs))?
        } else {
            Held::default()
        };
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
                    name = strategy::generate_name(prefix.as_deref().unwrap_or_default());
                    obj["metadata"]["name"] = json!(name);
                }
                other => break other,
            }
        };
        if result.is_err() {
            self.alloc.release(&held);
        }
        let object = result?;
        if res.kind == "Namespace" {
            self.ensure_default_service_account(&name).await;
        }
        Ok(Written {
            object,
            warnings: admitted.warnings,
        })
    }

    /// Every namespace gets a `default` ServiceAccount, as the serviceaccount controller
    /// does in Kubernetes; pods name it by default.
    pub async fn ensure_default_service_account(&self, ns: &str) {
        let sa = resources::find("", "serviceaccounts").expect("registered");
        let key = sa.key(Some(ns), "default");
        if matches!(self.store.get(&key), Ok(Some(_))) {
            return;
        }
        let mut obj = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        if strategy::prepare_create(sa, &mut obj, Some(ns)).is_ok() {
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
            Some("status") => strategy::status_update(res, body, &current.object, name)?,
            None => {
                strategy::prepare_update(res, body, &current.object, name)?;
                body.clone()
            }
            Some(other) => {
                return Err(ApiError::MethodNotAllowed(format!(
                    "the server does not allow this method on the requested resource ({other})"
                )));
            }
        };
        let admitted = strategy::admit(res, merged, Some(&current.object), opts.validation)?;
        let mut obj = admitted.object;
        if sub.is_none() {
            strategy::bump_generation(&mut obj, &current.object);
        }
        let held = if res.kind == "Service" {
            self.alloc
                .assign(&mut obj, Some(&current.object))
                .map_err(|errs| ApiError::invalid(res, name, errs))?
        } else {
            Held::default()
        };
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
        let op = if terminating && no_finalizers && (res.kind != "Pod" || pod_may_vanish(&obj)) {
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
            Ok(new) if res.kind == "Service" => {
                if deleting {
                    self.alloc.release(&Held::of(new));
                } else {
                    self.alloc.release_dropped(&current.object, new);
                }
            }
            Ok(_) => {}
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
        if res.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
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
            let op = match self.deletion_step(res, &mut obj, opts) {
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
                    if removed && res.kind == "Service" {
                        self.alloc.release(&Held::of(&written));
                    }
                    if res.kind == "Namespace" && !removed {
                        self.spawn_namespace_cleanup(name.to_string());
                    }
                    return Ok(written);
                }
            }
        }
    }

    fn deletion_step(&self, res: &ResourceInfo, obj: &mut Value, opts: &DeleteOptions) -> Step {
        let now = jiff::Timestamp::now();
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        let already = meta.get("deletionTimestamp").is_some_and(|d| !d.is_null());
        // Propagation policies become finalizers that the garbage collector honours.
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
        let has_finalizers = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if res.kind == "Namespace" {
            if already {
                return Step::AlreadyPending;
            }
            meta.insert(
                "deletionTimestamp".into(),
                json!(tinykube_api::format::rfc3339(now)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            obj["status"]["phase"] = json!("Terminating");
            return Step::Mark;
        }
        if res.kind == "Pod" {
            let bound = obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
            let terminal = matches!(
                obj["status"]["phase"].as_str(),
                Some("Succeeded") | Some("Failed")
            );
            let grace = opts.grace_period.unwrap_or_else(|| {
                obj["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            });
            let graceful = bound && !terminal && grace > 0;
            if graceful {
                let meta = obj["metadata"].as_object_mut().expect("metadata");
                let current_grace = meta
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                if already && current_grace.is_some_and(|g| g <= grace) {
                    return Step::AlreadyPending;
                }
                let at = now
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or(now);
                meta.insert(
                    "deletionTimestamp".into(),
                    json!(tinykube_api::format::rfc3339(at)),
                );
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                return Step::Mark;
            }
            if has_finalizers {
                let meta = obj["metadata"].as_object_mut().expect("metadata");
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                if !already {
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(tinykube_api::format::rfc3339(now)),
                    );
                }
                return Step::Mark;
            }
            return Step::Remove;
        }
        if has_finalizers {
            if already {
                return Step::AlreadyPending;
            }
            meta.insert(
                "deletionTimestamp".into(),
                json!(tinykube_api::format::rfc3339(now)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Step::Mark;
        }
        Step::Remove
    }

    fn spawn_namespace_cleanup(&self, ns: String) {
        let _ = self.namespace_cleanup.send(ns);
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

/// A pod object may leave storage once the kubelet is done with it (or none holds it).
fn pod_may_vanish(pod: &Value) -> bool {
    pod["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(0)
        == 0
        || pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
}

enum Step {
    Remove,
    Mark,
    AlreadyPending,
}

pub fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// Whether a watch event passes the selectors, and as what: an object that starts or
/// stops matching shows up as ADDED or DELETED, as Kubernetes' watch cache does it.
pub fn filter_event(
    res: &ResourceInfo,
    opts: &ListOptions,
    kind: EventType,
    obj: &Value,
    prev: Option<&Value>,
) -> Option<EventType> {
    let now = opts.matches(res, obj);
    match (kind, prev) {
        (EventType::Modified, Some(p)) => match (opts.matches(res, p), now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
        _ => now.then_some(kind),
    }
}
