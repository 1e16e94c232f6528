//! Gateway benchmark, run by hand on an idle machine (see BENCHMARKS.md):
//!
//! ```text
//! cargo bench -p grokforge-gateway --bench gateway
//! ```
//!
//! One process runs a real node (SQLite in a temp dir, the in-process bus) and its gateway on
//! port 0, plus a bare warp route serving the same `/models` body, and measures:
//!
//! 1. **Event latency**: `TrainingProgress` events published on the node's bus at a fixed rate,
//!    received by N WebSocket clients subscribed to `training_updates`; latency from publish to
//!    receipt (the frame's envelope `timestamp` against the wall clock), p50 / p99 / max, and
//!    how many frames arrived. Beside it, the node's own share from its
//!    `grokforge_websocket_delivery_seconds` histogram: the hub's queue to the write's end.
//! 2. **Saturation**: events published in bursts as fast as all clients take them; delivered
//!    frames per second.
//! 3. **`GET /models`** requests per second through the gateway (auth, breaker, ModelService)
//!    against the bare route in the same process, as a ratio.
//!
//!    Then the same request through the gateway's filters without sockets (warp's test client),
//!    which resolves the gateway's own work per request below the noise of the TCP comparison.
//!
//! 4. With `BENCH_ONLY=cluster`: two nodes on one Redis, cross-node against in-node event latency
//!    and envelopes/s through one bridge (see [`cluster`]); with `BENCH_ONLY=bare`: the node's
//!    in-node latency against a bare tokio-tungstenite broadcast server (see
//!    [`bare_against_node`]).
//!
//! Knobs (environment): `BENCH_SUBSCRIBERS` (1000), `BENCH_RATE` (events/s, 1000),
//! `BENCH_SECONDS` (5; also the length of one `GET /models` round), `BENCH_HTTP_CONCURRENCY`
//! (32), `BENCH_HTTP_ROUNDS` (7), `BENCH_FILTER_REQUESTS` (20000), `BENCH_ONLY` (`events` or
//! `models`: run one part), `BENCH_CLIENTS` (`process`: the latency part's WebSocket clients run
//! in a child process), `BENCH_SERVER_CPUS` and `BENCH_CLIENT_CPUS` (CPU lists as `taskset -c`
//! takes them, to pin the server and the client process apart).
//!
//! By default the clients run in the same process as the server (the HTTP load on a runtime of
//! its own), so on a small machine they compete for the same cores: the numbers are a floor.

// The gateway's route chain is one deeply nested warp filter type; in an optimised build the
// bench's uses of it (the node's routes beside a bare route) go past the default limit of 128
// while proving the futures `Unpin`.
#![recursion_limit = "256"]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use grokforge_actors::bus::Publisher;
use grokforge_actors::resilience::BreakerConfig;
use grokforge_actors::services::training::TrainingServiceMessage;
use grokforge_actors::training_core::{Phase, TrainSpec, parse_device};
use grokforge_actors::{Event, Node, names};
use grokforge_config::{Role, Settings, TokenSettings};
use grokforge_gateway::{Breakers, GatewayState, ListBodies, Tokens, WebSocketLimits};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const TOKEN: &str = "bench-token";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn main() {
    // `cargo nextest run --all-targets` lists every target's tests with `--list`; a benchmark
    // has none to offer, and must not start measuring.
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let client = std::env::var("BENCH_ROLE").as_deref() == Ok("clients");
    // Pinned before the runtime starts, so its workers inherit the mask; tokio sizes its worker
    // pool by the CPUs this process may use.
    let cpus = if client {
        "BENCH_CLIENT_CPUS"
    } else {
        "BENCH_SERVER_CPUS"
    };
    if let Ok(list) = std::env::var(cpus) {
        pin_to(&list).unwrap_or_else(|error| panic!("{cpus}={list}: {error}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if client {
        runtime.block_on(client_process());
    } else {
        runtime.block_on(run());
    }
}

/// Restricts this thread, and the threads it starts from now on, to the CPUs of `list`
/// (`0-3,8`, as `taskset -c` takes them).
fn pin_to(list: &str) -> std::io::Result<()> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a CPU list");
    // SAFETY: `cpu_set_t` is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.trim().parse(), last.trim().parse()),
            None => (part.trim().parse(), part.trim().parse()),
        };
        let (Ok(first), Ok(last)) = (first, last) else {
            return Err(invalid());
        };
        if first > last || last >= libc::CPU_SETSIZE as usize {
            return Err(invalid());
        }
        for cpu in first..=last {
            // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    let status = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn run() {
    let subscribers = env("BENCH_SUBSCRIBERS", 1000) as usize;
    let rate = env("BENCH_RATE", 1000);
    let seconds = env("BENCH_SECONDS", 5);
    let concurrency = env("BENCH_HTTP_CONCURRENCY", 32) as usize;
    println!(
        "machine: {} cores; {subscribers} subscribers, {rate} events/s for {seconds} s",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings::default();
    settings.node.data_dir = data.path().to_path_buf();
    settings.gateway.ws_max_connections = 100_000;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "cluster" {
        return cluster(settings, seconds).await;
    }
    let device = parse_device("cpu").unwrap();
    let node = Node::start(settings, device, Duration::from_secs(30))
        .await
        .unwrap();
    let state = gateway_state(&node, data.path().join("artifacts"));
    let routes_state = state.clone();
    let address = serve_gateway(&node, state);

    train_some_models(&node).await;
    if only == "bare" {
        return bare_against_node(&node, address, subscribers, rate, seconds).await;
    }
    if only.is_empty() || only == "events" {
        latency(&node, address, subscribers, rate, seconds).await;
        saturation(&node, address, subscribers, seconds).await;
    }
    if only.is_empty() || only == "models" {
        models_route(address, concurrency, seconds).await;
        filter_cost(routes_state).await;
    }
}

fn gateway_state(node: &Node, artifacts_dir: std::path::PathBuf) -> GatewayState {
    let metrics = node.metrics.clone();
    GatewayState {
        node_id: node.node_id.clone(),
        directory: node.directory.clone(),
        metrics: metrics.clone(),
        call_timeout: Duration::from_secs(5),
        health_timeout: Duration::from_secs(2),
        shutting_down: Default::default(),
        max_body_bytes: 1 << 20,
        artifacts_dir,
        tokens: Arc::new(Tokens::new(
            &[TokenSettings {
                token: TOKEN.into(),
                role: Role::Admin,
            }],
            false,
        )),
        websocket: WebSocketLimits {
            ping_interval: Duration::from_secs(30),
            max_message_bytes: 65_536,
            max_subscriptions: 32,
        },
        breakers: Breakers::new(BreakerConfig::default(), &metrics),
        shutdown: Default::default(),
        model_lists: ListBodies::new(node.model_lists.clone()),
    }
}

/// Serves `state` on a port of its own with the node's listener settings (TCP_NODELAY), as
/// `grokforge serve` binds it.
fn serve_gateway(node: &Node, state: GatewayState) -> std::net::SocketAddr {
    let listener = grokforge_gateway::listen(loopback(), 0).unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(grokforge_gateway::serve(
        listener,
        state,
        node.api_listening.clone(),
        std::future::pending(),
    ));
    address
}

/// A tiny two-variant cognate job, so `/models` lists real records.
async fn train_some_models(node: &Node) {
    let spec = TrainSpec {
        dataset: Some("mod-add:11".into()),
        d_model: Some(16),
        n_layers: Some(1),
        n_heads: Some(2),
        d_ff: Some(32),
        batch_size: 16,
        steps: 20,
        variants: 2,
        threads: Some(1),
        ..TrainSpec::default()
    };
    let job = node
        .directory
        .call::<TrainingServiceMessage, _, _>(
            names::TRAINING_SERVICE,
            |reply| TrainingServiceMessage::StartJob {
                phase: Phase::Cognate,
                spec: Box::new(spec),
                priority: 0,
                reply,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .unwrap();
    loop {
        let record = node
            .directory
            .call::<TrainingServiceMessage, _, _>(
                names::TRAINING_SERVICE,
                |reply| TrainingServiceMessage::GetJob(job.id, reply),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
            .unwrap();
        if record.status.as_str() == "completed" {
            return;
        }
        assert!(
            !matches!(record.status.as_str(), "failed" | "cancelled"),
            "{record:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe_clients(url: &str, count: usize) -> Vec<Socket> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        // A small read buffer: tungstenite zero-fills the free part of it before every read,
        // and its 128 KiB default made each client pay a 128 KiB memset per frame.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(8 * 1024);
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .unwrap();
        socket.next().await.unwrap().unwrap(); // connection_established
        socket
            .send(Message::text(
                r#"{"type":"subscribe","topic":"training_updates"}"#,
            ))
            .await
            .unwrap();
        let confirmed = socket.next().await.unwrap().unwrap();
        assert!(
            confirmed
                .to_text()
                .unwrap()
                .contains("subscription_confirmed"),
            "{confirmed:?}"
        );
        sockets.push(socket);
    }
    sockets
}

fn websocket_url(address: std::net::SocketAddr) -> String {
    format!("ws://{address}/ws?token={TOKEN}")
}

fn progress(job_id: Uuid, step: u64) -> Event {
    Event::TrainingProgress {
        job_id,
        variant: 0,
        step,
        total_steps: u64::MAX,
        loss: 1.0,
        accuracy: Some(0.5),
        val_loss: None,
        val_accuracy: None,
        learning_rate: 1e-3,
        steps_per_second: 10.0,
    }
}

/// How long ago the event of a frame was published, by its envelope's `timestamp`, which
/// `Publisher::publish` stamps from the wall clock (shared with a client process on the same
/// machine). Read by hand from the end of the frame, where the field is: finding and parsing it
/// with the standard searcher and chrono took a fifth of a client core at 1 M frames/s.
fn age_of(text: &str) -> Option<Duration> {
    static KEY: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"timestamp\":\""));
    let bytes = text.as_bytes();
    let start = KEY.rfind(bytes)? + KEY.needle().len();
    let published = nanos_of_day(&bytes[start..])?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos()
        % u128::from(DAY_NANOS);
    // Modulo a day, so a run across midnight UTC measures right.
    Some(Duration::from_nanos(
        (now as u64 + DAY_NANOS - published) % DAY_NANOS,
    ))
}

const DAY_NANOS: u64 = 86_400 * 1_000_000_000;

/// Nanoseconds since midnight of an RFC 3339 UTC timestamp, `YYYY-MM-DDTHH:MM:SS[.f…]Z…`.
fn nanos_of_day(stamp: &[u8]) -> Option<u64> {
    let time = stamp.get(11..)?;
    let two = |at: usize| -> Option<u64> {
        let (tens, ones) = (*time.get(at)?, *time.get(at + 1)?);
        (tens.is_ascii_digit() && ones.is_ascii_digit())
            .then(|| u64::from(tens - b'0') * 10 + u64::from(ones - b'0'))
    };
    let seconds = two(0)? * 3600 + two(3)? * 60 + two(6)?;
    let mut nanos = 0;
    if time.get(8) == Some(&b'.') {
        let digits = time[9..].iter().take_while(|b| b.is_ascii_digit()).take(9);
        for (place, digit) in digits.enumerate() {
            nanos += u64::from(digit - b'0') * 10u64.pow(8 - place as u32);
        }
    }
    Some(seconds * 1_000_000_000 + nanos)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Reads event frames from every socket until each has `per_client` of them or `give_up` is
/// cancelled; returns every frame's latency, publish to receipt, and how many clients came up
/// short.
async fn receive_events(
    sockets: Vec<Socket>,
    per_client: usize,
    give_up: tokio_util::sync::CancellationToken,
) -> (Vec<Duration>, usize) {
    // Readers give up when `give_up` is cancelled (a deadline after the last publish), not by a
    // timeout per frame: a timer registered and dropped per frame costs the client side as much
    // as parsing the frame.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let give_up = give_up.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                let cancelled = give_up.cancelled_owned();
                tokio::pin!(cancelled);
                while latencies.len() < per_client {
                    let message = tokio::select! {
                        biased;
                        message = socket.next() => message,
                        _ = &mut cancelled => break,
                    };
                    let Some(Ok(message)) = message else {
                        break;
                    };
                    let Some(age) = message.to_text().ok().and_then(age_of) else {
                        continue;
                    };
                    latencies.push(age);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(per_client * readers.len());
    let mut short = 0;
    for reader in readers {
        let latencies = reader.await.unwrap();
        if latencies.len() < per_client {
            short += 1;
        }
        all.extend(latencies);
    }
    all.sort_unstable();
    (all, short)
}

/// Receives on every socket while `publishing` runs and for [`STRAGGLERS`] after it ends;
/// returns what `publishing` gave, every frame's latency and how many clients came up short.
async fn receive_during<T>(
    sockets: Vec<Socket>,
    per_client: usize,
    publishing: impl std::future::Future<Output = T>,
) -> (T, Vec<Duration>, usize) {
    let give_up = tokio_util::sync::CancellationToken::new();
    let received = tokio::spawn(receive_events(sockets, per_client, give_up.clone()));
    let published = publishing.await;
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(STRAGGLERS).await;
        give_up.cancel();
    });
    let (all, short) = received.await.unwrap();
    deadline.abort();
    (published, all, short)
}

/// The latency part's summary line, printed by whichever process ran the clients.
fn latency_line(all: &[Duration], subscribers: usize, per_client: usize, short: usize) -> String {
    format!(
        "delivered {} of {} frames ({short} clients short); p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        subscribers * per_client,
        percentile(all, 0.50).as_secs_f64() * 1e3,
        percentile(all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )
}

/// Publishes `total` progress events on `node`'s bus at `rate` per second; returns the
/// events/s achieved.
async fn publish_at_rate(node: &Node, rate: u64, total: u64) -> f64 {
    let publisher = Publisher::new(
        node.node_id.clone(),
        "bench",
        node.directory.clone(),
        node.metrics.clone(),
    );
    let job_id = Uuid::now_v7();
    tick_at_rate(rate, total, |step| {
        publisher.publish(progress(job_id, step))
    })
    .await
}

/// Calls `publish` `total` times at `rate` per second; returns the calls/s achieved.
async fn tick_at_rate(rate: u64, total: u64, mut publish: impl FnMut(u64)) -> f64 {
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for step in 0..total {
        ticker.tick().await;
        publish(step);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// How long clients wait for stragglers after the last publish.
const STRAGGLERS: Duration = Duration::from_secs(10);

async fn latency(
    node: &Node,
    address: std::net::SocketAddr,
    subscribers: usize,
    rate: u64,
    seconds: u64,
) {
    let run = LatencyRun {
        node,
        url: websocket_url(address),
        subscribers,
        rate,
        total: rate * seconds,
    };
    let before = DeliveryHistogram::of(&node.metrics);
    let ((achieved, line), clients) = if std::env::var("BENCH_CLIENTS").as_deref() == Ok("process")
    {
        (run.with_client_process().await, "in a process of their own")
    } else {
        (run.with_clients_here().await, "in this process")
    };
    println!(
        "latency: {subscribers} subscribers × {} events at {achieved:.0} events/s (clients \
         {clients}): {line}",
        run.total
    );
    let writes = DeliveryHistogram::of(&node.metrics).since(&before);
    println!("  server side: {}", writes.summary());
}

/// One latency measurement: `total` events at `rate` to `subscribers` clients of `url`. Each way
/// of running the clients returns the publish rate achieved and the clients' [`latency_line`].
struct LatencyRun<'a> {
    node: &'a Node,
    url: String,
    subscribers: usize,
    rate: u64,
    total: u64,
}

impl LatencyRun<'_> {
    async fn with_clients_here(&self) -> (f64, String) {
        let sockets = subscribe_clients(&self.url, self.subscribers).await;
        let per_client = self.total as usize;
        let publishing = publish_at_rate(self.node, self.rate, self.total);
        let (achieved, all, short) = receive_during(sockets, per_client, publishing).await;
        (
            achieved,
            latency_line(&all, self.subscribers, per_client, short),
        )
    }

    /// The clients in a child process (this same binary, `BENCH_ROLE=clients`), which
    /// `BENCH_CLIENT_CPUS` can pin apart from the server's `BENCH_SERVER_CPUS`: on a machine with
    /// cores to spare, the server's numbers without the clients' work on its cores.
    async fn with_client_process(&self) -> (f64, String) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let resident_before = resident_kib();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env("BENCH_ROLE", "clients")
            .env("BENCH_URL", &self.url)
            .env("BENCH_SUBSCRIBERS", self.subscribers.to_string())
            .env("BENCH_EVENTS", self.total.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next_line().await.unwrap();
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "the client process did not start"
        );
        // Only the server's side of the connections lives in this process.
        if let (Some(before), Some(after)) = (resident_before, resident_kib()) {
            println!(
                "  server memory: {} → {} MiB resident with {} connections open: {:.1} KiB each",
                before / 1024,
                after / 1024,
                self.subscribers,
                after.saturating_sub(before) as f64 / self.subscribers as f64
            );
        }
        let achieved = publish_at_rate(self.node, self.rate, self.total).await;
        // Tells the clients that publishing is over: they wait for stragglers, then report.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"published\n").await.unwrap();
        drop(stdin);
        let line = lines.next_line().await.unwrap().expect("a result line");
        assert!(child.wait().await.unwrap().success());
        (achieved, line)
    }
}

/// A snapshot of the node's `grokforge_websocket_delivery_seconds`: per write to a client, the
/// time from the hub queuing its oldest frame to the write completing.
struct DeliveryHistogram {
    count: u64,
    sum: f64,
    /// (upper bound in seconds, cumulative count)
    buckets: Vec<(f64, u64)>,
}

impl DeliveryHistogram {
    fn of(metrics: &grokforge_actors::NodeMetrics) -> DeliveryHistogram {
        use prometheus::core::Collector;
        let families = metrics.websocket_delivery_seconds.collect();
        let histogram = families[0].get_metric()[0].get_histogram();
        DeliveryHistogram {
            count: histogram.get_sample_count(),
            sum: histogram.get_sample_sum(),
            buckets: histogram
                .get_bucket()
                .iter()
                .map(|bucket| (bucket.upper_bound(), bucket.cumulative_count()))
                .collect(),
        }
    }

    fn since(&self, earlier: &DeliveryHistogram) -> DeliveryHistogram {
        DeliveryHistogram {
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(&(bound, now), &(_, then))| (bound, now - then))
                .collect(),
        }
    }

    /// The smallest bucket bound that at least `q` of the writes fall under.
    fn bound_of(&self, q: f64) -> String {
        let wanted = (self.count as f64 * q).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= wanted)
            .map_or("> 10 s".to_string(), |(bound, _)| {
                format!("≤ {} ms", bound * 1e3)
            })
    }

    /// The share of writes in buckets bounded at or below `bound`, in percent.
    fn within(&self, bound: f64) -> f64 {
        let under = self
            .buckets
            .iter()
            .take_while(|(upper, _)| *upper <= bound)
            .last()
            .map_or(0, |(_, cumulative)| *cumulative);
        100.0 * under as f64 / self.count.max(1) as f64
    }

    fn summary(&self) -> String {
        format!(
            "{} writes, hub queue → write done: mean {:.2} ms, p50 {}, p99 {}, {:.1} % within 5 ms",
            self.count,
            self.sum * 1e3 / self.count.max(1) as f64,
            self.bound_of(0.50),
            self.bound_of(0.99),
            self.within(0.005),
        )
    }
}

/// This process's resident memory, from `/proc/self/status`.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `BENCH_ROLE=clients`: connect `BENCH_SUBSCRIBERS` clients to `BENCH_URL`, say `ready`, read
/// `BENCH_EVENTS` frames each (or until [`STRAGGLERS`] after standard input says `published`),
/// and print the latency line.
async fn client_process() {
    use tokio::io::AsyncBufReadExt;
    let url = std::env::var("BENCH_URL").expect("BENCH_URL");
    let subscribers = env("BENCH_SUBSCRIBERS", 1000) as usize;
    let per_client = env("BENCH_EVENTS", 0) as usize;
    let sockets = subscribe_clients(&url, subscribers).await;
    // The parent publishes between our `ready` and its `published` (or going away).
    let publishing = async {
        println!("ready");
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let _ = stdin.next_line().await;
    };
    let ((), all, short) = receive_during(sockets, per_client, publishing).await;
    println!("{}", latency_line(&all, subscribers, per_client, short));
}

/// Bursts of events, each published as soon as every client has the previous burst; frames
/// delivered per second over `seconds`.
async fn saturation(node: &Node, address: std::net::SocketAddr, subscribers: usize, seconds: u64) {
    let sockets = subscribe_clients(&websocket_url(address), subscribers).await;
    let received = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let received = received.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        message = socket.next() => match message {
                            Some(Ok(m)) if m.is_text() => { received.fetch_add(1, Ordering::Relaxed); }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                }
            })
        })
        .collect();
    let publisher = Publisher::new(
        node.node_id.clone(),
        "bench",
        node.directory.clone(),
        node.metrics.clone(),
    );
    let job_id = Uuid::now_v7();
    // A burst well under the per-connection queue (1024), so nobody is dropped for lagging.
    let burst = 200u64;
    let started = Instant::now();
    let mut published = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..burst {
            publisher.publish(progress(job_id, published));
            published += 1;
        }
        let target = published * subscribers as u64;
        while received.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    let frames = received.load(Ordering::Relaxed);
    println!(
        "saturation: {frames} frames to {subscribers} subscribers in {elapsed:.2} s = {:.0} frames/s",
        frames as f64 / elapsed
    );
}

/// Requests per second of `GET {path}` with `concurrency` keep-alive clients for `seconds`.
///
/// The clients run on a runtime of their own (two worker threads), as they would on another
/// machine. On the server's runtime a client task and the connection task serving it could share
/// a worker and hand each other the CPU without a wake-up across threads, or not, depending on
/// where the accept loop happened to spawn: rounds of the same run then came out bimodal (40 k or
/// 67 k requests/s for the same route), and the two routes of a round did not share the luck.
async fn hammer(url: String, token: Option<&'static str>, concurrency: usize, seconds: u64) -> f64 {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(load(url, token, concurrency, seconds))
    })
    .await
    .unwrap()
}

async fn load(url: String, token: Option<&str>, concurrency: usize, seconds: u64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, done) = (client.clone(), url.clone(), done.clone());
            let token = token.map(str::to_string);
            tokio::spawn(async move {
                while Instant::now() < until {
                    let mut request = client.get(&url);
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let response = request.send().await.unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn models_route(address: std::net::SocketAddr, concurrency: usize, seconds: u64) {
    use warp::Filter;
    let gateway_url = format!("http://{address}/models");
    // The bare route serves the very body the gateway answers, from memory.
    let body = reqwest::Client::new()
        .get(&gateway_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let models: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let count = models.as_array().map_or(0, Vec::len);
    let bare = warp::path!("models")
        .map(move || warp::reply::with_header(body.to_vec(), "content-type", "application/json"));
    // Bound like the gateway's, so the two differ only in what serves the request.
    let listener = grokforge_gateway::listen(loopback(), 0).unwrap();
    let bare_address = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(bare).incoming(listener).run());
    let bare_url = format!("http://{bare_address}/models");

    // Warm both, then alternate in short rounds so drift on a shared machine hits both alike;
    // the ratio is taken within each round and the median round reported.
    hammer(bare_url.clone(), Some(TOKEN), concurrency, 1).await;
    hammer(gateway_url.clone(), Some(TOKEN), concurrency, 1).await;
    let rounds = env("BENCH_HTTP_ROUNDS", 7) as usize;
    let mut bare_rps = Vec::new();
    let mut gateway_rps = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..rounds.max(1) {
        // The same request to both, token included (the bare route ignores it). The order
        // alternates (bare first in even rounds, the gateway in odd ones), so whatever the
        // second run of a round inherits from the first does not always fall on the same side.
        let gateway_first = round % 2 == 1;
        let (first_url, second_url) = if gateway_first {
            (&gateway_url, &bare_url)
        } else {
            (&bare_url, &gateway_url)
        };
        let first = hammer(first_url.clone(), Some(TOKEN), concurrency, seconds).await;
        let second = hammer(second_url.clone(), Some(TOKEN), concurrency, seconds).await;
        let (bare, gateway) = if gateway_first {
            (second, first)
        } else {
            (first, second)
        };
        let first = if gateway_first { "gateway" } else { "bare" };
        println!(
            "GET /models round {round} ({first} first): gateway {gateway:.0} req/s, \
             bare {bare:.0} req/s, ratio {:.3}",
            gateway / bare
        );
        bare_rps.push(bare);
        gateway_rps.push(gateway);
        ratios.push(gateway / bare);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (low, high) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let (bare, gateway, ratio) = (
        median(&mut bare_rps),
        median(&mut gateway_rps),
        median(&mut ratios),
    );
    println!(
        "GET /models ({count} models, {concurrency} connections, {} rounds of {seconds} s): \
         gateway {gateway:.0} req/s, bare warp route {bare:.0} req/s (medians); \
         ratio {ratio:.3} (median of the rounds' ratios; lowest {low:.3}, highest {high:.3})",
        ratios.len()
    );
}

/// The server-side work of one `GET /models` without sockets: warp's test client drives the
/// gateway's whole filter chain (routing, auth, the cached list, the request metrics) and the bare
/// route in turn, one request at a time on this task. What the TCP comparison above cannot
/// resolve through its noise, this measures directly: the time the gateway adds per request.
async fn filter_cost(state: GatewayState) {
    use warp::Filter;
    let requests = env("BENCH_FILTER_REQUESTS", 20_000) as u32;
    let gateway = grokforge_gateway::routes(state);
    let body = models_request().reply(&gateway).await.into_body();
    let bare = warp::path!("models")
        .map(move || warp::reply::with_header(body.to_vec(), "content-type", "application/json"));
    let mut bare_us = Vec::new();
    let mut gateway_us = Vec::new();
    for _ in 0..5 {
        bare_us.push(micros_per_request(requests, || models_request().reply(&bare)).await);
        gateway_us.push(micros_per_request(requests, || models_request().reply(&gateway)).await);
    }
    bare_us.sort_by(f64::total_cmp);
    gateway_us.sort_by(f64::total_cmp);
    let (bare, gateway) = (bare_us[2], gateway_us[2]);
    println!(
        "GET /models through the filters, no sockets (median of 5 × {requests} requests): \
         gateway {gateway:.2} µs, bare route {bare:.2} µs per request; the gateway adds {:.2} µs",
        gateway - bare
    );
}

fn models_request() -> warp::test::RequestBuilder {
    warp::test::request()
        .path("/models")
        .header("authorization", format!("Bearer {TOKEN}"))
}

/// Mean time of `requests` sequential requests made by `reply`, in µs.
async fn micros_per_request<Fut>(requests: u32, reply: impl Fn() -> Fut) -> f64
where
    Fut: std::future::Future<Output = warp::http::Response<bytes::Bytes>>,
{
    let started = Instant::now();
    for _ in 0..requests {
        assert!(reply().await.status().is_success());
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(requests)
}

/// Two nodes on one Redis (`BENCH_REDIS_URL`, default the local one), each with a gateway:
/// latency of progress events published on node A to WebSocket clients on node B against the
/// same clients on A, in alternating rounds of one run (`BENCH_SUBSCRIBERS` 100, `BENCH_RATE`
/// 100, `BENCH_ROUNDS` 3 of each); then envelopes per second through one bridge at saturation,
/// published by A and received by B (`BENCH_ENVELOPES`, 200000).
async fn cluster(base: Settings, seconds: u64) {
    let redis =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let subscribers = env("BENCH_SUBSCRIBERS", 100) as usize;
    let rate = env("BENCH_RATE", 100);
    let rounds = env("BENCH_ROUNDS", 3);
    let channel = format!("grokforge:bench:{}", Uuid::now_v7().simple());
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for name in ["a", "b"] {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = base.clone();
        settings.node.id = Some(format!("bench-{name}"));
        settings.node.data_dir = dir.path().to_path_buf();
        settings.broker.url = Some(redis.clone());
        settings.broker.channel = channel.clone();
        settings.broker.cluster_secret = Some("bench-cluster-secret-0123456789".into());
        let node = Node::start(
            settings,
            parse_device("cpu").unwrap(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let address = serve_gateway(&node, gateway_state(&node, dir.path().join("artifacts")));
        wait_for_broker(&node).await;
        nodes.push((node, address));
        dirs.push(dir);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    println!(
        "cluster: 2 nodes on {redis}; {subscribers} subscribers, {rate} events/s for {seconds} s, \
         {rounds} rounds each, alternating"
    );
    let mut in_node = Vec::new();
    let mut cross_node = Vec::new();
    for _ in 0..rounds {
        for (label, address, out) in [
            ("in-node   ", a.1, &mut in_node),
            ("cross-node", b.1, &mut cross_node),
        ] {
            let sockets = subscribe_clients(&websocket_url(address), subscribers).await;
            let total = rate * seconds;
            let publishing = publish_at_rate(&a.0, rate, total);
            let (_, all, short) = receive_during(sockets, total as usize, publishing).await;
            println!(
                "  {label}: {}",
                latency_line(&all, subscribers, total as usize, short)
            );
            out.push((percentile(&all, 0.50), percentile(&all, 0.99)));
        }
    }
    let median = |runs: &mut Vec<(Duration, Duration)>,
                  pick: fn(&(Duration, Duration)) -> Duration| {
        let mut values: Vec<Duration> = runs.iter().map(pick).collect();
        values.sort();
        values[values.len() / 2].as_secs_f64() * 1e3
    };
    let (in50, in99) = (median(&mut in_node, |r| r.0), median(&mut in_node, |r| r.1));
    let (x50, x99) = (
        median(&mut cross_node, |r| r.0),
        median(&mut cross_node, |r| r.1),
    );
    println!(
        "cluster latency (median of rounds): in-node p50 {in50:.2} ms, p99 {in99:.2} ms; \
         cross-node p50 {x50:.2} ms, p99 {x99:.2} ms; cross − in at p99: {:+.2} ms",
        x99 - in99
    );

    // Saturation: publish on A's bus in bursts the bridge's bus queue takes (65,536), and count
    // what A's bridge publishes and B's receives.
    let envelopes = env("BENCH_ENVELOPES", 200_000);
    let counter = |node: &Node, direction: &str| {
        node.metrics
            .cluster_messages_total
            .with_label_values(&[direction])
            .get()
    };
    let (sent_before, received_before) = (counter(&a.0, "published"), counter(&b.0, "received"));
    let publisher = Publisher::new(
        a.0.node_id.clone(),
        "bench",
        a.0.directory.clone(),
        a.0.metrics.clone(),
    );
    let job_id = Uuid::now_v7();
    let burst = 20_000u64;
    let started = Instant::now();
    let mut published = 0;
    while published < envelopes {
        for _ in 0..burst.min(envelopes - published) {
            publisher.publish(progress(job_id, published));
            published += 1;
        }
        while counter(&a.0, "published") - sent_before + burst / 2 < published {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    let mut last = (0, Instant::now());
    loop {
        let received = counter(&b.0, "received") - received_before;
        if received >= envelopes {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break; // nothing more is coming
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = counter(&a.0, "published") - sent_before;
    let received = counter(&b.0, "received") - received_before;
    let dropped: u64 = ["outbox_full", "duplicate", "malformed"]
        .iter()
        .map(|reason| {
            b.0.metrics
                .cluster_messages_dropped_total
                .with_label_values(&[reason])
                .get()
        })
        .sum();
    println!(
        "bridge saturation: {envelopes} envelopes on A's bus; A published {sent}, B received \
         {received} ({dropped} dropped at B) in {elapsed:.2} s = {:.0} envelopes/s each way",
        received as f64 / elapsed
    );
}

async fn wait_for_broker(node: &Node) {
    use grokforge_actors::services::monitoring::MonitoringServiceMessage;
    let started = Instant::now();
    loop {
        let report = node
            .directory
            .call::<MonitoringServiceMessage, _, _>(
                names::MONITORING_SERVICE,
                MonitoringServiceMessage::CheckNow,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        if report.dependencies["broker"].status == grokforge_actors::HealthState::Healthy {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the broker never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's in-node latency beside a bare tokio-tungstenite broadcast server's, measured in
/// alternating rounds of one run at the same load (`BENCH_ROUNDS`, 3 each): the node's own
/// overhead as a ratio of p99s.
async fn bare_against_node(
    node: &Node,
    address: std::net::SocketAddr,
    subscribers: usize,
    rate: u64,
    seconds: u64,
) {
    let rounds = env("BENCH_ROUNDS", 3);
    let (bare, frames) = bare_server().await;
    let total = rate * seconds;
    let mut node_p99 = Vec::new();
    let mut bare_p99 = Vec::new();
    for _ in 0..rounds {
        let sockets = subscribe_clients(&websocket_url(address), subscribers).await;
        let (_, all, short) =
            receive_during(sockets, total as usize, publish_at_rate(node, rate, total)).await;
        println!(
            "  node: {}",
            latency_line(&all, subscribers, total as usize, short)
        );
        node_p99.push(percentile(&all, 0.99));

        let sockets = subscribe_clients(&format!("ws://{bare}/"), subscribers).await;
        let frames = frames.clone();
        let publishing = tick_at_rate(rate, total, move |step| {
            let _ = frames.send(bare_frame(step).into());
        });
        let (_, all, short) = receive_during(sockets, total as usize, publishing).await;
        println!(
            "  bare: {}",
            latency_line(&all, subscribers, total as usize, short)
        );
        bare_p99.push(percentile(&all, 0.99));
    }
    node_p99.sort();
    bare_p99.sort();
    let (n, b) = (node_p99[node_p99.len() / 2], bare_p99[bare_p99.len() / 2]);
    println!(
        "node vs bare tokio-tungstenite broadcast, {subscribers} subscribers × {rate} events/s \
         (median p99 of {rounds} rounds): node {:.2} ms, bare {:.2} ms, ratio {:.2}×",
        n.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        n.as_secs_f64() / b.as_secs_f64().max(1e-9)
    );
}

/// A progress frame like the node's, its publish time at the end where [`age_of`] reads it.
fn bare_frame(step: u64) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    format!(
        r#"{{"type":"training_progress","topic":"training_updates","seq":null,"source_service":"bench","data":{{"job_id":"00000000-0000-0000-0000-000000000000","variant":0,"step":{step},"total_steps":18446744073709551615,"loss":1.0,"accuracy":0.5,"val_loss":null,"val_accuracy":null,"learning_rate":0.001,"steps_per_second":10.0}},"timestamp":"{now}"}}"#
    )
}

/// The simplest server that does the node's job well: accepts WebSockets, says hello, confirms
/// a subscription, and writes every broadcast frame to every client, a burst per flush (a
/// lagging client skips what it missed). No auth, no topics, no queue limits, no event log.
async fn bare_server() -> (
    std::net::SocketAddr,
    tokio::sync::broadcast::Sender<Arc<str>>,
) {
    let listener = grokforge_gateway::listen(loopback(), 0).unwrap();
    let address = listener.local_addr().unwrap();
    let (frames, _) = tokio::sync::broadcast::channel::<Arc<str>>(4096);
    let sender = frames.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut receiver = sender.subscribe();
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let hello = r#"{"type":"connection_established"}"#;
                if socket.send(Message::text(hello)).await.is_err() {
                    return;
                }
                let _ = socket.next().await; // the subscribe frame
                let confirmed = r#"{"type":"subscription_confirmed","topic":"training_updates"}"#;
                if socket.send(Message::text(confirmed)).await.is_err() {
                    return;
                }
                use tokio::sync::broadcast::error::{RecvError, TryRecvError};
                loop {
                    tokio::select! {
                        frame = receiver.recv() => match frame {
                            // What a careful server does: write every frame that is ready,
                            // then flush once (one syscall per burst, not per frame).
                            Ok(frame) => {
                                if socket.feed(Message::text(&*frame)).await.is_err() {
                                    return;
                                }
                                loop {
                                    match receiver.try_recv() {
                                        Ok(frame) => {
                                            if socket.feed(Message::text(&*frame)).await.is_err() {
                                                return;
                                            }
                                        }
                                        Err(TryRecvError::Lagged(_)) => continue,
                                        Err(_) => break,
                                    }
                                }
                                if socket.flush().await.is_err() {
                                    return;
                                }
                            }
                            Err(RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        },
                        message = socket.next() => if !matches!(message, Some(Ok(_))) { return },
                    }
                }
            });
        }
    });
    (address, frames)
}
