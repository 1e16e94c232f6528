//! Running the real `grokforge` binary from tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Sends `signal` and waits up to `deadline` for the process to exit.
    pub fn signal_and_wait(
        &mut self,
        signal: libc::c_int,
        deadline: Duration,
    ) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "grokforge did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The binary, from a plain environment: no LD_LIBRARY_PATH (LibTorch comes from the rpath),
/// no configuration from the caller's environment.
pub fn grokforge() -> Command {
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

/// Starts `grokforge serve` on port 0 with `data_dir` and returns once it printed its address.
pub fn start(data_dir: &Path) -> Server {
    let child = grokforge()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("grokforge starts");
    // Owned by `Server` at once, so its Drop kills and reaps the process on every path.
    let mut server = Server {
        child,
        base: String::new(),
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

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.expect("request succeeds")
}

pub async fn get_json(url: &str) -> serde_json::Value {
    get(url).await.json().await.expect("a JSON body")
}

/// Polls `probe` every 50 ms until it returns `Some`, failing after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
