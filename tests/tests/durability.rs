//! Crash safety: `kill -9` the master (a real child process) under a concurrent write
//! load, start it again on the same data dir: every acknowledged write is there,
//! revisions continue, and a watcher resumes from its last revision without gaps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tinykube_tests::{MasterProcess, client_for, free_port};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}})).unwrap()
}

fn rv(o: &ConfigMap) -> u64 {
    o.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("master");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut master = MasterProcess::start(&data, addr).expect("master starts");
    let client = client_for(&master.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start_rv: u64 = cms
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();

    // A watcher that remembers the last revision it saw, as a client would.
    let last_seen = Arc::new(Mutex::new(start_rv));
    let out_of_order = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let cms = cms.clone();
        let last_seen = last_seen.clone();
        let out_of_order = out_of_order.clone();
        tokio::spawn(async move {
            let Ok(stream) = cms
                .watch(&WatchParams::default(), &start_rv.to_string())
                .await
            else {
                return;
            };
            let mut stream = stream.boxed();
            while let Some(Ok(ev)) = stream.next().await {
                if let WatchEvent::Added(o) = ev {
                    let r = rv(&o);
                    let mut l = last_seen.lock().unwrap();
                    if r <= *l {
                        out_of_order.lock().unwrap().push((*l, r));
                    }
                    *l = r;
                }
            }
        })
    };

    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let cms = cms.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                match cms.create(&PostParams::default(), &cm(&name)).await {
                    Ok(o) => {
                        acked.lock().unwrap().insert(name, rv(&o));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    master.kill9();
    for w in writers {
        let _ = w.await;
    }
    watcher.abort();
    let acked = acked.lock().unwrap().clone();
    let resume_from = *last_seen.lock().unwrap();
    assert!(
        out_of_order.lock().unwrap().is_empty(),
        "watch events arrive in revision order"
    );
    assert!(
        acked.len() > 50,
        "the load acknowledged only {} writes",
        acked.len()
    );

    let master = MasterProcess::start(&data, addr).expect("master restarts on the same data dir");
    let client = client_for(&master.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let stored: BTreeMap<String, u64> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| (o.metadata.name.clone().unwrap(), rv(o)))
        .collect();
    for (name, r) in &acked {
        assert_eq!(
            stored.get(name),
            Some(r),
            "acknowledged write {name} at revision {r} was lost"
        );
    }
    let max_acked = *acked.values().max().unwrap();
    let after = cms
        .create(&PostParams::default(), &cm("after-restart"))
        .await
        .unwrap();
    assert!(
        rv(&after) > max_acked,
        "revisions continue after the restart"
    );

    // The watcher resumes from its last revision and gets every later write, in order.
    let wanted: Vec<u64> = stored
        .values()
        .copied()
        .filter(|r| *r > resume_from)
        .collect();
    let stream = cms
        .watch(
            &WatchParams::default().timeout(10),
            &resume_from.to_string(),
        )
        .await
        .unwrap();
    let events: Vec<WatchEvent<ConfigMap>> =
        stream.take(wanted.len() + 1).try_collect().await.unwrap();
    let got: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(o) => Some(rv(o)),
            _ => None,
        })
        .collect();
    let mut expected = wanted.clone();
    expected.sort();
    expected.push(rv(&after));
    assert_eq!(got, expected, "resumed watch has no gaps and no reordering");
    drop(master);
}
