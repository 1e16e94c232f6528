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
        .env_remove("GROKFORGE_CONFIG")
        .env_remove("GROKFORGE_SERVER")
        .env_remove("GROKFORGE_TOKEN");
    for (key, _) in std::env::vars() {
        if key.starts_with("GROKFORGE__") {
            command.env_remove(key);
        }
    }
    command
}

/// Tokens of the test servers started by [`start`], one per role.
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const USER_TOKEN: &str = "test-user-token";
pub const READ_TOKEN: &str = "test-read-token";

/// Starts `grokforge serve` on port 0 with `data_dir` and the test tokens of each role, and
/// returns once it printed its address.
pub fn start(data_dir: &Path) -> Server {
    let config = token_config(data_dir);
    start_with(data_dir, &["--config".as_ref(), config.as_os_str()]).0
}

/// The test tokens of each role as configuration lines.
pub fn tokens_toml() -> String {
    format!(
        "[[gateway.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n\
         [[gateway.tokens]]\ntoken = \"{USER_TOKEN}\"\nrole = \"user\"\n\
         [[gateway.tokens]]\ntoken = \"{READ_TOKEN}\"\nrole = \"read\"\n"
    )
}

/// Writes a configuration file with the test tokens into `dir`; returns its path.
pub fn token_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("test-tokens.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&config, tokens_toml()).unwrap();
    config
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Starts `grokforge serve` on port 0 with `data_dir` and `extra` arguments; returns the server
/// once it printed its address, with the lines it printed up to then.
pub fn start_with(data_dir: &Path, extra: &[&std::ffi::OsStr]) -> (Server, Vec<String>) {
    start_command(
        grokforge()
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stderr(Stdio::inherit()),
    )
}

/// Starts a `grokforge serve` command (its stdout is taken over here); returns the server once
/// it printed its address, with the lines it printed up to then.
pub fn start_command(command: &mut Command) -> (Server, Vec<String>) {
    let child = command
        .stdout(Stdio::piped())
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
    let mut lines = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(remaining)
            .expect("`listening on` within 60 s");
        lines.push(line.clone());
        if let Some(base) = line.strip_prefix("listening on ") {
            server.base = base.trim().to_string();
            // What the node prints right after its address (the admin token line).
            if let Ok(next) = receiver.recv_timeout(Duration::from_millis(500)) {
                lines.push(next);
            }
            return (server, lines);
        }
    }
}

/// Queues a cognate job with `body` as the admin test token; returns its id.
pub async fn start_cognate(base: &str, body: &serde_json::Value) -> String {
    let response = client()
        .post(format!("{base}/phases/cognate/start"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let job: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// A client that sends the admin test token.
pub fn client() -> reqwest::Client {
    client_with(Some(ADMIN_TOKEN))
}

/// The node's `/metrics` page, fetched with the admin test token.
pub async fn metrics_text(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A client that sends `token`, or no token at all.
pub fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
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

/// Waits (up to a minute) for the job's log on `base` to record a checkpoint at `step` or later;
/// returns its step.
pub async fn wait_for_checkpoint(base: &str, job_id: &str, step: u64) -> u64 {
    wait_for(
        &format!("a checkpoint of {job_id} at step {step} or later"),
        Duration::from_secs(60),
        || async {
            let events = get_json(&format!("{base}/jobs/{job_id}/events?since=0")).await;
            events.as_array()?.iter().find_map(|e| {
                let at = e["event"]["data"]["step"].as_u64()?;
                (e["event"]["type"] == "checkpoint_saved" && at >= step).then_some(at)
            })
        },
    )
    .await
}

/// A WebSocket client of `/ws`, reading JSON frames with deadlines.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

pub fn ws_url(base: &str, token: &str) -> String {
    format!("{}/ws?token={token}", base.replacen("http://", "ws://", 1))
}

impl WsClient {
    /// Connects with the admin test token and reads `connection_established`.
    pub async fn connect(base: &str) -> WsClient {
        Self::connect_with(base, ADMIN_TOKEN).await
    }

    pub async fn connect_with(base: &str, token: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(ws_url(base, token))
            .await
            .expect("the websocket handshake succeeds");
        let mut client = WsClient { stream };
        let hello = client.next_json(Duration::from_secs(5)).await;
        assert_eq!(hello["type"], "connection_established", "{hello}");
        client
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        use futures::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(
                value.to_string(),
            ))
            .await
            .expect("the frame is sent");
    }

    /// The next text frame as JSON, skipping pings; panics on close or after `deadline`.
    pub async fn next_json(&mut self, deadline: Duration) -> serde_json::Value {
        match self.next_frame(deadline).await {
            Ok(value) => value,
            Err(close) => panic!("the server closed the socket: {close:?}"),
        }
    }

    /// The next text frame as JSON, or the close frame's (code, reason) when the server closes.
    pub async fn next_frame(
        &mut self,
        deadline: Duration,
    ) -> Result<serde_json::Value, (u16, String)> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let message = tokio::time::timeout_at(until, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {deadline:?}"));
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(text.as_str()).expect("frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new())));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err((1006, error.to_string())),
                None => return Err((1006, "stream ended".into())),
            }
        }
    }

    /// Subscribes and waits for the confirmation.
    pub async fn subscribe(&mut self, topic: &str, since: Option<u64>) -> serde_json::Value {
        let mut frame = serde_json::json!({"type": "subscribe", "topic": topic});
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        self.send_json(frame).await;
        let confirmed = self.next_json(Duration::from_secs(10)).await;
        assert_eq!(confirmed["type"], "subscription_confirmed", "{confirmed}");
        assert_eq!(confirmed["topic"], topic);
        confirmed
    }
}

/// Opens a downloaded export archive and checks every file against the size and SHA-256 its
/// manifest records, as the CLI does; returns the manifest (as JSON) and how many files were
/// checked.
pub fn verify_export_zip(bytes: &[u8]) -> (serde_json::Value, usize) {
    let (manifest, checked) =
        grokforge_actors::storage::export::verify_archive(std::io::Cursor::new(bytes))
            .unwrap_or_else(|error| panic!("the export does not match its manifest: {error}"));
    (serde_json::to_value(manifest).unwrap(), checked)
}

/// The logits of a job's variant 0, read from `<jobs_dir>/<job id>/variant-0`, on a fixed batch:
/// equal logits, bit for bit, mean equal weights. (The Burn record files themselves also carry
/// parameter ids, which are not part of the weights and differ between a freshly built and a
/// reloaded model.)
pub fn variant_logits(jobs_dir: &Path, job_id: &str) -> Vec<f32> {
    logits_in(&jobs_dir.join(job_id).join("variant-0"))
}

/// The logits of the variant saved in `dir`, on [`variant_logits`]'s fixed batch.
pub fn logits_in(dir: &Path) -> Vec<f32> {
    use grokforge_training_core::burn_tensor::{Int, Tensor, TensorData};
    let device = grokforge_training_core::parse_device("cpu").unwrap();
    let (_, model) = grokforge_training_core::load_model(dir, &device).unwrap();
    let tokens: Vec<i64> = vec![0, 11, 3, 12, 5, 11, 9, 12];
    let input = Tensor::<2, Int>::from_data(TensorData::new(tokens, [2, 4]), &device);
    model
        .forward(input)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Runs `sql` with psql against the test's database (outside the test's schema pinning, so
/// `sql` names the schema itself).
#[allow(dead_code)]
pub fn psql(database_url: &str, sql: &str) -> Command {
    let base = database_url.split('?').next().unwrap();
    let mut command = Command::new("psql");
    command
        .arg(base)
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}
