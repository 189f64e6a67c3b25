//! The API server's own metrics under kube-apiserver's names: requests by verb,
//! resource and code, their latency, long-running requests (watches), objects
//! stored per resource, and the store's latency per operation
//! (`etcd_request_duration_seconds`, as kube-apiserver names its storage's).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tinykube_api::metrics::{Metrics, REQUEST_BUCKETS, STORAGE_BUCKETS};

use crate::request::RequestInfo;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    pub operation: String,
    #[prometheus(flatten)]
    pub kind: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LongRunningLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub scope: String,
    pub component: String,
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn storage_histogram() -> Histogram {
    Histogram::new(STORAGE_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct ApiMetrics {
    pub registry: Metrics,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<LatencyLabels>,
    longrunning: Family<LongRunningLabels, Gauge>,
    pub objects: Family<ResourceLabels, Gauge>,
    storage: HistogramFamily<StorageLabels>,
}

impl ApiMetrics {
    /// Registers the API server's metrics in the process's registry.
    pub fn new(registry: Metrics) -> Self {
        let m = Self {
            registry,
            requests: Family::default(),
            latency: Family::new_with_constructor(request_histogram),
            longrunning: Family::default(),
            objects: Family::default(),
            storage: Family::new_with_constructor(storage_histogram),
        };
        m.registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code",
            m.requests.clone(),
        );
        m.registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component",
            m.latency.clone(),
        );
        m.registry.register(
            "apiserver_longrunning_requests",
            "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component",
            m.longrunning.clone(),
        );
        m.registry.register(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind",
            m.objects.clone(),
        );
        m.registry.register(
            "etcd_request_duration_seconds",
            "Store request latency in seconds for each operation and object type",
            m.storage.clone(),
        );
        m
    }

    /// Records one store operation's latency.
    pub fn storage(&self, operation: &str, resource: &str, started: Instant) {
        self.storage
            .get_or_create(&StorageLabels {
                operation: operation.to_string(),
                kind: ResourceLabels {
                    resource: resource.to_string(),
                },
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `/metrics`: the objects stored per resource counted now, then everything the
/// process registered (the controllers' and the scheduler's metrics too).
pub fn scrape(shared: &crate::state::Shared) -> String {
    for res in crate::resources::RESOURCES
        .iter()
        .filter(|r| !r.is_review())
    {
        if let Ok(n) = shared.registry.store.count(&res.key_prefix()) {
            shared
                .metrics
                .objects
                .get_or_create(&ResourceLabels {
                    resource: if res.group.is_empty() {
                        res.plural.to_string()
                    } else {
                        format!("{}.{}", res.plural, res.group)
                    },
                })
                .set(n as i64);
        }
    }
    shared.metrics.registry.encode()
}

/// kube-apiserver's verb label: the request's verb in capitals, with LIST and WATCH
/// told apart from GET, and a non-resource request's method.
fn verb_label(info: &RequestInfo, method: &http::Method) -> String {
    match info.verb.as_str() {
        "list" | "watch" | "get" | "deletecollection" if info.is_resource_request => {
            info.verb.to_uppercase()
        }
        _ if info.is_resource_request => match *method {
            http::Method::POST => "POST".into(),
            http::Method::PUT => "PUT".into(),
            http::Method::PATCH => "PATCH".into(),
            http::Method::DELETE => "DELETE".into(),
            ref m => m.as_str().to_string(),
        },
        _ => method.as_str().to_string(),
    }
}

fn scope(info: &RequestInfo) -> &'static str {
    match (&info.namespace, &info.name) {
        _ if !info.is_resource_request => "",
        (_, Some(_)) => "resource",
        (Some(_), None) => "namespace",
        (None, None) => "cluster",
    }
}

/// The layer that counts and times every request; a watch is a long-running request
/// for as long as its response body lives.
pub async fn layer(State(m): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let Some(info) = req
        .extensions()
        .get::<std::sync::Arc<RequestInfo>>()
        .cloned()
    else {
        return next.run(req).await;
    };
    let verb = verb_label(&info, req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let labels = LatencyLabels {
        verb: verb.clone(),
        group: info.api_group.clone(),
        version: info.api_version.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone().unwrap_or_default(),
        scope: scope(&info).into(),
        component: "apiserver".into(),
    };
    m.requests
        .get_or_create(&RequestLabels {
            verb: labels.verb.clone(),
            group: labels.group.clone(),
            version: labels.version.clone(),
            resource: labels.resource.clone(),
            subresource: labels.subresource.clone(),
            scope: labels.scope.clone(),
            component: labels.component.clone(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    m.latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    if verb == "WATCH" && response.status().is_success() {
        let gauge = m
            .longrunning
            .get_or_create(&LongRunningLabels {
                verb,
                group: labels.group,
                version: labels.version,
                resource: labels.resource,
                scope: labels.scope,
                component: labels.component,
            })
            .clone();
        gauge.inc();
        let (parts, body) = response.into_parts();
        let guard = Running(gauge);
        let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
            let _ = &guard;
            chunk
        });
        return Response::from_parts(parts, axum::body::Body::from_stream(stream));
    }
    response
}

/// Holds a long-running request's gauge up until its body is dropped.
struct Running(Gauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, uri: &str) -> (RequestInfo, http::Method) {
        let m: http::Method = method.parse().unwrap();
        (RequestInfo::parse(&m, &uri.parse().unwrap()), m)
    }

    #[test]
    fn verbs_and_scopes_are_kube_apiservers() {
        let cases = [
            ("GET", "/api/v1/pods", "LIST", "cluster"),
            (
                "GET",
                "/api/v1/namespaces/a/pods?watch=true",
                "WATCH",
                "namespace",
            ),
            ("GET", "/api/v1/namespaces/a/pods/p", "GET", "resource"),
            ("POST", "/api/v1/namespaces/a/pods", "POST", "namespace"),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/d",
                "PATCH",
                "resource",
            ),
            ("GET", "/healthz", "GET", ""),
        ];
        for (method, uri, verb, sc) in cases {
            let (i, m) = info(method, uri);
            assert_eq!(verb_label(&i, &m), verb, "{uri}");
            assert_eq!(scope(&i), sc, "{uri}");
        }
    }
}
