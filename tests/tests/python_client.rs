//! The official Python client (`pip install kubernetes`) against an in-process master.
//! `TINYKUBE_PYTHON` names the interpreter that has it (scripts/test sets up a venv).

use tinykube_tests::TestMaster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_python_client_works() {
    let m = TestMaster::start().await;
    let python = std::env::var("TINYKUBE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("{}/python/client_test.py", env!("CARGO_MANIFEST_DIR"));
    let kubeconfig = m.kubeconfig().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .env("KUBECONFIG", &kubeconfig)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'kubernetes'"),
        "the Python client is not installed for {}: run scripts/test, which installs it",
        std::env::var("TINYKUBE_PYTHON").unwrap_or_else(|_| "python3".into())
    );
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"));
    m.shutdown().await;
}
