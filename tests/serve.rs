//! End to end: the real `grokforge` binary, started from a plain environment (no
//! LD_LIBRARY_PATH: LibTorch is found through the embedded rpath), on port 0 with a temporary
//! data directory.

mod common;

use std::time::{Duration, Instant};

use common::{get, grokforge, start};

#[tokio::test]
async fn serve_answers_health_within_a_second_of_printing_its_address() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let printed = Instant::now();
    let response = get(&format!("{}/health", server.base)).await;
    let elapsed = printed.elapsed();
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().await.unwrap();
    assert!(
        elapsed < Duration::from_secs(1),
        "health answered after {elapsed:?}"
    );
    assert_eq!(report["status"], "healthy", "{report:#}");
    for service in [
        "api",
        "training",
        "model",
        "websocket",
        "monitoring",
        "discovery",
    ] {
        assert_eq!(
            report["services"][service]["status"], "healthy",
            "{service}: {report:#}"
        );
    }
    assert_eq!(
        report["services"]["api"]["depends_on"],
        serde_json::json!(["training", "model", "websocket"])
    );
    assert_eq!(report["dependencies"]["database"]["status"], "healthy");

    let ready = get(&format!("{}/ready", server.base)).await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["ready"],
        true
    );

    let metrics = get(&format!("{}/metrics", server.base))
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("grokforge_build_info"), "{metrics}");
    assert!(metrics.contains("grokforge_service_health"), "{metrics}");

    let nodes: serde_json::Value = get(&format!("{}/cluster/nodes", server.base))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(nodes[0]["address"], server.base.as_str());
}

#[tokio::test]
async fn unknown_routes_answer_problem_details() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let response = get(&format!("{}/no/such/route", server.base)).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["title"], "Not Found");
}

#[test]
fn sigterm_shuts_down_cleanly_and_in_order() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_bad_setting_is_refused_naming_the_key() {
    let data = tempfile::tempdir().unwrap();
    let output = grokforge()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("GROKFORGE__TRAINING__MAX_CONCURRENT_JOBS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_concurrent_jobs"), "{stderr}");
}
