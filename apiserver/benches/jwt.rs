//! Service-account token verification in process, on one core: a token checked the
//! first time (its ES256 signature, issuer, expiry, and the account it names read from
//! the store) and a token checked again within the cache's ten seconds (kube-apiserver
//! caches verified tokens the same way), each as tokens per second, with signing
//! beside them. Prints the median of five rounds.
//!
//! Run with `cargo bench -p tinykube-apiserver --bench jwt`.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tinykube_apiserver::registry::allocator::Allocator;
use tinykube_apiserver::registry::decode::FieldValidation;
use tinykube_apiserver::registry::{Registry, WriteOptions};
use tinykube_apiserver::resources;
use tinykube_apiserver::serviceaccount::{Ref, Request, ServiceAccountTokens};
use tinykube_apiserver::store::{SledStore, Store};

const TOKENS: usize = 2_000;
const CACHED: usize = 500_000;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("db"), Default::default()).unwrap());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let reg = Arc::new(Registry {
        store,
        alloc: Allocator::default(),
        namespace_cleanup: tx,
    });
    let opts = WriteOptions {
        dry_run: false,
        validation: FieldValidation::Ignore,
    };
    let uid = rt.block_on(async {
        let ns = resources::namespaces();
        reg.create(ns, None, json!({"metadata": {"name": "default"}}), opts)
            .await
            .unwrap();
        let sa = resources::find("", "serviceaccounts").unwrap();
        let w = reg
            .create(
                sa,
                Some("default"),
                json!({"metadata": {"name": "bot", "namespace": "default"}}),
                opts,
            )
            .await
            .unwrap();
        w.object["metadata"]["uid"].as_str().unwrap().to_string()
    });
    let key = rcgen::KeyPair::generate().unwrap();
    let (mut signed, mut cold, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // A fresh issuer each round: an empty cache.
        let tokens = ServiceAccountTokens::new(&key, reg.clone(), None).unwrap();
        let start = Instant::now();
        let list: Vec<String> = (0..TOKENS)
            .map(|_| {
                tokens
                    .issue(Request {
                        namespace: "default",
                        account: Ref {
                            name: "bot".into(),
                            uid: uid.clone(),
                        },
                        audiences: tokens.audiences.clone(),
                        seconds: 3600,
                        pod: None,
                        secret: None,
                        node: None,
                    })
                    .unwrap()
                    .0
            })
            .collect();
        signed.push(TOKENS as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for t in &list {
            tokens.verify(t, &[]).unwrap();
        }
        cold.push(TOKENS as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for i in 0..CACHED {
            tokens.verify(&list[i % TOKENS], &[]).unwrap();
        }
        cached.push(CACHED as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "signed:                      {:>10.0} tokens/s",
        median(signed)
    );
    println!(
        "verified, first time:        {:>10.0} tokens/s",
        median(cold)
    );
    println!(
        "verified again (cached):     {:>10.0} tokens/s",
        median(cached)
    );
}
