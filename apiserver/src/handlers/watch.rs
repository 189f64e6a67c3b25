//! Watch over HTTP: the event log replayed from a resourceVersion (or the initial
//! state), then live events, one JSON object per line, with bookmarks and the timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::{Value, json};

use super::Call;
use crate::error::ApiError;
use crate::registry::{self, ListOptions};
use crate::request::negotiate::{Output, partial};
use crate::request::table;
use crate::store::{Event, WatchFilter};

fn watch_line(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json");
    line.push(b'\n');
    Bytes::from(line)
}

pub(super) fn serve_watch(c: &Call<'_>) -> Result<Response, ApiError> {
    let (shared, res, ns, output, include) = (c.shared, c.res, c.ns, c.output, c.include);
    // A watch of one object by its URL is a watch of that name.
    let mut query = c.info.query.clone();
    if let Some(n) = c.name {
        query.insert("fieldSelector".into(), format!("metadata.name={n}"));
    }
    let q = &query;
    let opts = ListOptions::from_query(q)?;
    opts.check_fields(res)?;
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let reg = shared.registry.clone();
    let (initial, from) = initial_state(&reg, res, ns, &opts, rv, send_initial)?;
    // A watch with selectors has the store skip what it does not select, before the
    // event reaches this watch's queue.
    let opts = Arc::new(opts);
    let filter: Option<WatchFilter> =
        (!opts.labels.is_empty() || !opts.fields.is_empty()).then(|| {
            let opts = opts.clone();
            Arc::new(move |ev: &Event| {
                registry::filter_event(res, &opts, ev.kind, &ev.object, ev.prev.as_ref()).is_some()
            }) as WatchFilter
        });
    let mut rx = reg
        .store
        .watch_filtered(&res.list_prefix(ns), from, filter)
        .map_err(|e| ApiError::from_store(res, "", e))?;
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let mut first = true;
        let mut shape = |obj: Value| -> Value {
            let out = match output {
                Output::Table(v) => {
                    let mut t = table::table(
                        res,
                        std::slice::from_ref(&obj),
                        include,
                        first,
                        json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                    );
                    t["apiVersion"] = json!(v);
                    t
                }
                Output::Metadata => partial(&obj),
                _ => obj,
            };
            first = false;
            out
        };
        let bookmark = |rev: u64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": rev.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            watch_line(
                "BOOKMARK",
                json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}),
            )
        };
        for obj in initial {
            if tx.send(Ok(watch_line("ADDED", shape(obj)))).await.is_err() {
                return;
            }
        }
        if send_initial && tx.send(Ok(bookmark(from, true))).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut last = from;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                ev = rx.recv() => {
                    let line = match ev {
                        None => return,
                        Some(Err(e)) => {
                            let err = ApiError::from_store(res, "", e);
                            let _ = tx.send(Ok(watch_line("ERROR", err.status()))).await;
                            return;
                        }
                        Some(Ok(ev)) => {
                            last = ev.rev;
                            match registry::filter_event(res, &opts, ev.kind, &ev.object, ev.prev.as_ref()) {
                                Some(kind) => watch_line(kind.as_str(), shape(ev.object.clone())),
                                None => continue,
                            }
                        }
                    };
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(Ok(bookmark(last, false))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body_rx);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Where a watch starts: with no resourceVersion (or "0", or `sendInitialEvents`) the
/// current state, sent as ADDED, and its revision; otherwise nothing and the revision
/// asked for.
fn initial_state(
    reg: &registry::Registry,
    res: &crate::resources::ResourceInfo,
    ns: Option<&str>,
    opts: &ListOptions,
    rv: &str,
    send_initial: bool,
) -> Result<(Vec<Value>, u64), ApiError> {
    if rv.is_empty() || rv == "0" || send_initial {
        let list = reg.list(
            res,
            ns,
            &ListOptions {
                labels: opts.labels.clone(),
                fields: opts.fields.clone(),
                ..Default::default()
            },
        )?;
        let from: u64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        Ok((list["items"].as_array().cloned().unwrap_or_default(), from))
    } else {
        let from = rv
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version {rv:?}")))?;
        Ok((Vec::new(), from))
    }
}
