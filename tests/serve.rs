//! End to end: the real `grokforge` binary, started from a plain environment (no
//! LD_LIBRARY_PATH: LibTorch is found through the embedded rpath), on port 0 with a temporary
//! data directory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn grokforge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_grokforge"));
    command
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("GROKFORGE_CONFIG");
    for (key, _) in std::env::vars() {
        if key.starts_with("GROKFORGE__") {
            command.env_remove(key);
        }
    }
    command
}

/// Starts `grokforge serve` and returns once it printed its address, with the time it took.
fn start() -> Server {
    let data = tempfile::tempdir().unwrap();
    let child = grokforge()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("grokforge starts");
    // Owned by `Server` at once, so its Drop kills and reaps the process on every path.
    let mut server = Server {
        child,
        base: String::new(),
        _data: data,
    };
    let stdout = server.child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(remaining)
            .expect("`listening on` within 60 s");
        if let Some(base) = line.strip_prefix("listening on ") {
            server.base = base.trim().to_string();
            return server;
        }
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("request succeeds")
}

#[tokio::test]
async fn serve_answers_health_within_a_second_of_printing_its_address() {
    let server = start();
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
    let server = start();
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
    let mut server = start();
    let pid = server.child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "grokforge did not exit within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
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
