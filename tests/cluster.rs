//! A cluster of real `grokforge serve` processes on one Redis and one PostgreSQL, each on
//! port 0 with a data directory of its own and the artifacts directory shared: membership,
//! live events across nodes, frames that must be dropped, jobs spread over the nodes, a dead
//! owner's job resumed elsewhere with identical weights, and a Redis outage survived.
//!
//! Every test gets a PostgreSQL schema and a Redis channel of its own, so tests run in
//! parallel and never see each other. Heartbeats, TTLs and leases are short.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, WsClient, client_with, get_json, metrics_text, psql, wait_for};
use grokforge_actors::cluster::{FrameCodec, WireBody};
use grokforge_actors::storage::testing::{DEFAULT_POSTGRES_URL, TestDatabase};
use grokforge_actors::{Event, EventEnvelope};
use serde_json::{Value, json};

const SECRET: &str = "cluster-test-secret-0123456789";

const TEST_TOKENS: &str = concat!(
    "[[gateway.tokens]]\ntoken = \"test-admin-token\"\nrole = \"admin\"\n",
    "[[gateway.tokens]]\ntoken = \"test-user-token\"\nrole = \"user\"\n",
    "[[gateway.tokens]]\ntoken = \"test-read-token\"\nrole = \"read\"\n",
);

fn redis_url() -> String {
    std::env::var("GROKFORGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("GROKFORGE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

/// The nodes of one test's cluster, and what they share.
struct Cluster {
    nodes: Vec<Option<Server>>,
    database: Option<TestDatabase>,
    root: tempfile::TempDir,
    channel: String,
    redis_url: String,
    database_url: String,
    /// The test tokens in every node's configuration; without them the nodes generate the
    /// cluster's admin token.
    tokens: bool,
    lease_ms: u64,
}

impl Cluster {
    async fn start(count: usize, redis_url: &str) -> Cluster {
        Cluster::start_with(count, redis_url, true, 2_000).await
    }

    async fn start_with(count: usize, redis_url: &str, tokens: bool, lease_ms: u64) -> Cluster {
        let database = TestDatabase::postgres(&postgres_url())
            .await
            .expect("a PostgreSQL schema for the test");
        let database_url = database.postgres_url().unwrap().to_string();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            database: Some(database),
            root: tempfile::tempdir().unwrap(),
            channel: format!("grokforge:test:{}", uuid::Uuid::now_v7().simple()),
            redis_url: redis_url.to_string(),
            database_url,
            tokens,
            lease_ms,
        };
        for index in 0..count {
            let server = cluster.spawn(index);
            cluster.nodes.push(Some(server));
        }
        cluster
    }

    fn config(&self, index: usize) -> PathBuf {
        let path = self.root.path().join(format!("node-{index}.toml"));
        let artifacts = self.root.path().join("artifacts");
        std::fs::write(
            &path,
            format!(
                "[node]\nid = \"node-{index}\"\nname = \"test-node-{index}\"\nshutdown_timeout_ms = 8000\n\
                 [broker]\nurl = \"{redis}\"\nchannel = \"{channel}\"\ncluster_secret = \"{SECRET}\"\n\
                 heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1500\nconnect_timeout_ms = 1000\n\
                 [database]\nurl = \"{database}\"\n\
                 [storage]\nartifacts_dir = \"{artifacts}\"\n\
                 [discovery]\nheartbeat_interval_ms = 200\nttl_ms = 1500\n\
                 [training]\nmax_concurrent_jobs = 1\nlease_duration_ms = {lease_ms}\n\
                 [monitoring]\nhealth_check_interval_ms = 300\nhealth_check_timeout_ms = 250\n{tokens}",
                tokens = if self.tokens { TEST_TOKENS } else { "" },
                lease_ms = self.lease_ms,
                redis = self.redis_url,
                channel = self.channel,
                database = self.database_url,
                artifacts = artifacts.display(),
            ),
        )
        .unwrap();
        path
    }

    fn spawn(&self, index: usize) -> Server {
        self.spawn_with_output(index).0
    }

    /// The node, and what it printed up to its address and the line after (the token line).
    fn spawn_with_output(&self, index: usize) -> (Server, Vec<String>) {
        let config = self.config(index);
        let data = self.root.path().join(format!("data-{index}"));
        common::start_with(&data, &["--config".as_ref(), config.as_os_str()])
    }

    fn base(&self, index: usize) -> String {
        self.nodes[index]
            .as_ref()
            .expect("node is running")
            .base
            .clone()
    }

    fn artifacts(&self) -> PathBuf {
        self.root.path().join("artifacts")
    }

    /// Waits until every running node lists exactly the running nodes.
    async fn converge(&self) {
        let expected: Vec<String> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .map(|i| format!("node-{i}"))
            .collect();
        for index in (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()) {
            let base = self.base(index);
            wait_for(
                &format!("node-{index} to list {expected:?}"),
                Duration::from_secs(20),
                || async {
                    let nodes = get_json(&format!("{base}/cluster/nodes")).await;
                    let ids: Vec<String> = nodes
                        .as_array()?
                        .iter()
                        .map(|n| n["node_id"].as_str().unwrap_or_default().to_string())
                        .collect();
                    (ids == expected).then_some(())
                },
            )
            .await;
        }
    }

    async fn cleanup(mut self) {
        self.nodes.clear();
        if let Some(database) = self.database.take() {
            database.cleanup().await;
        }
    }
}

async fn start_job(base: &str, body: &Value) -> String {
    let response = common::client()
        .post(format!("{base}/phases/cognate/start"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_string()
}

async fn wait_status(base: &str, id: &str, status: &str, deadline: Duration) -> Value {
    wait_for(&format!("job {id} {status}"), deadline, || async {
        let job = get_json(&format!("{base}/jobs/{id}")).await;
        (job["status"] == status).then_some(job)
    })
    .await
}

/// A small deterministic job (one thread), `steps` long.
fn spec(steps: u64, seed: u64) -> Value {
    json!({
        "dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
        "batch_size": 16, "steps": steps, "eval_every": 100, "checkpoint_every": 50,
        "variants": 1, "threads": 1, "seed": seed
    })
}

fn counter(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_converge_and_a_client_on_any_node_sees_every_nodes_jobs_live() {
    let cluster = Cluster::start(3, &redis_url()).await;
    cluster.converge().await;
    let nodes = get_json(&format!("{}/cluster/nodes", cluster.base(0))).await;
    for (index, node) in nodes.as_array().unwrap().iter().enumerate() {
        assert_eq!(node["address"], cluster.base(index), "{node}");
        assert_eq!(node["name"], format!("test-node-{index}"));
        assert!(node["started_at"].is_string() && node["heartbeat_at"].is_string());
    }

    // One client per node, subscribed before the job exists: what they get is live.
    let mut clients = Vec::new();
    for index in 0..3 {
        let mut client = WsClient::connect(&cluster.base(index)).await;
        client.subscribe("training_updates", None).await;
        clients.push(client);
    }
    let id = start_job(&cluster.base(0), &spec(300, 1)).await;
    let running = wait_status(&cluster.base(1), &id, "running", Duration::from_secs(30)).await;
    let owner = running["owner_node"].as_str().unwrap().to_string();

    // Every client, on the owner and on the others, sees the job's progress and its end.
    for (index, client) in clients.iter_mut().enumerate() {
        let mut progress = 0;
        loop {
            let frame = client.next_json(Duration::from_secs(60)).await;
            if frame["data"]["job_id"] != id.as_str() {
                continue;
            }
            match frame["type"].as_str().unwrap() {
                "training_progress" => progress += 1,
                "training_completed" => break,
                _ => {}
            }
        }
        assert!(progress > 0, "node-{index} (owner {owner}) saw no progress");
    }

    // `since` catch-up works on a node that never ran the job.
    let other = (0..3).find(|i| format!("node-{i}") != owner).unwrap();
    let mut late = WsClient::connect(&cluster.base(other)).await;
    late.subscribe(&format!("job:{id}"), Some(0)).await;
    let mut seqs = Vec::new();
    loop {
        let frame = late.next_json(Duration::from_secs(10)).await;
        seqs.push(frame["seq"].as_u64().unwrap());
        if frame["type"] == "training_completed" {
            break;
        }
    }
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let metrics = metrics_text(&cluster.base(other)).await;
    assert!(
        counter(&metrics, "grokforge_cluster_messages_total", "received") > 0,
        "{metrics}"
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_foreign_replayed_and_random_frames_are_dropped_and_counted() {
    let cluster = Cluster::start(2, &redis_url()).await;
    cluster.converge().await;
    let base = cluster.base(1);
    let mut watcher = WsClient::connect(&base).await;
    watcher.subscribe("training_updates", None).await;

    let client = redis::Client::open(cluster.redis_url.as_str()).unwrap();
    let redis = client.get_multiplexed_async_connection().await.unwrap();
    let publish = |bytes: Vec<u8>| {
        let mut redis = redis.clone();
        let channel = cluster.channel.clone();
        async move {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(bytes)
                .query_async::<i64>(&mut redis)
                .await
                .unwrap()
        }
    };
    let bogus_job = uuid::Uuid::now_v7();
    let envelope = EventEnvelope::new(
        "node-intruder",
        "training",
        Event::TrainingCancelled {
            job_id: bogus_job,
            step: 1,
        },
    );
    let ours = FrameCodec::new(SECRET);
    let genuine = ours.encode(&WireBody::Event(envelope.clone())).unwrap();

    // One byte flipped in the body.
    let mut tampered = genuine.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x20;
    publish(tampered).await;
    publish(b"\x93random bytes that are not a frame".to_vec()).await;
    let foreign = FrameCodec::new("another-cluster-secret-0123456789");
    publish(foreign.encode(&WireBody::Event(envelope.clone())).unwrap()).await;

    let before = metrics_text(&base).await;
    let dropped = |m: &str, reason: &str| {
        counter(
            m,
            "grokforge_cluster_messages_dropped_total",
            &format!("reason=\"{reason}\""),
        )
    };
    // The genuine frame twice: delivered once, then a duplicate.
    publish(genuine.clone()).await;
    publish(genuine).await;
    let frame = watcher.next_json(Duration::from_secs(10)).await;
    assert_eq!(frame["data"]["job_id"], bogus_job.to_string(), "{frame}");

    let metrics = wait_for(
        "the drops to be counted",
        Duration::from_secs(10),
        || async {
            let m = metrics_text(&base).await;
            (dropped(&m, "duplicate") >= 1).then_some(m)
        },
    )
    .await;
    assert!(
        dropped(&metrics, "bad_signature") + dropped(&metrics, "malformed") >= 2,
        "{metrics}"
    );
    assert!(dropped(&metrics, "malformed") >= 1, "{metrics}");
    assert_eq!(dropped(&metrics, "other_cluster"), 1, "{metrics}");
    assert_eq!(dropped(&before, "duplicate"), 0);

    // Nothing else reached the client: the next frame, if any, is not another copy.
    watcher.send_json(json!({"type": "ping"})).await;
    let next = watcher.next_json(Duration::from_secs(5)).await;
    assert_eq!(next["type"], "pong", "{next}");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_spread_over_idle_nodes_and_none_runs_twice() {
    let cluster = Cluster::start(3, &redis_url()).await;
    cluster.converge().await;
    let mut ids = Vec::new();
    for seed in 0..6 {
        ids.push(start_job(&cluster.base(seed as usize % 3), &spec(60, seed)).await);
    }
    let mut ran_on = std::collections::BTreeSet::new();
    for id in &ids {
        let done = wait_status(&cluster.base(0), id, "completed", Duration::from_secs(180)).await;
        assert_eq!(done["attempts"], 1, "{done}");
        let events = get_json(&format!(
            "{}/jobs/{id}/events?since=0&limit=10000",
            cluster.base(0)
        ))
        .await;
        let starts: Vec<&Value> = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["type"] == "training_started")
            .collect();
        assert_eq!(starts.len(), 1, "{id} started more than once");
        ran_on.insert(starts[0]["source_node"].as_str().unwrap().to_string());
    }
    assert_eq!(ran_on.len(), 3, "every node ran a job: {ran_on:?}");
    cluster.cleanup().await;
}

/// The logits of a job's variant 0 from the shared artifacts directory.
fn logits(artifacts: &Path, job_id: &str) -> Vec<f32> {
    common::variant_logits(&artifacts.join("jobs"), job_id)
}

/// The index of the node that owns a running job.
fn owner_index(job: &Value) -> usize {
    job["owner_node"].as_str().unwrap()["node-".len()..]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_node_is_killed_resumes_on_a_survivor_with_identical_weights() {
    let mut cluster = Cluster::start(2, &redis_url()).await;
    cluster.converge().await;
    let id = start_job(&cluster.base(0), &spec(1200, 7)).await;
    let running = wait_status(&cluster.base(0), &id, "running", Duration::from_secs(30)).await;
    let owner: usize = owner_index(&running);
    let survivor = 1 - owner;
    let base = cluster.base(survivor);
    common::wait_for_checkpoint(&base, &id, 100).await;
    let mut dead = cluster.nodes[owner].take().unwrap();
    assert!(
        !dead
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .success()
    );
    drop(dead);

    // Its discovery key expires; the survivor sees it leave, claims the job once its lease
    // expires, and finishes it from the checkpoint.
    cluster.converge().await;
    let done = wait_status(&base, &id, "completed", Duration::from_secs(180)).await;
    assert_eq!(done["attempts"], 2, "{done:#}");
    let events = get_json(&format!("{base}/jobs/{id}/events?since=0&limit=10000")).await;
    let starts: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "training_started")
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1]["source_node"], format!("node-{survivor}"));
    let resumed = logits(&cluster.artifacts(), &id);

    // The same spec, never interrupted, on the survivor.
    let straight = start_job(&base, &spec(1200, 7)).await;
    wait_status(&base, &straight, "completed", Duration::from_secs(180)).await;
    assert_eq!(
        resumed,
        logits(&cluster.artifacts(), &straight),
        "the resumed run ends with the uninterrupted run's weights"
    );
    cluster.cleanup().await;
}

/// A Redis server of the test's own, on a free port, so it can be stopped and started again.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = OwnRedis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn broker_status(base: &str) -> (String, Value) {
    let health = get_json(&format!("{base}/health")).await;
    let broker = health["dependencies"]["broker"].clone();
    (
        broker["status"].as_str().unwrap_or_default().to_string(),
        broker,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_the_broker_loses_no_job_and_delivery_resumes() {
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start(2, &redis.url()).await;
    cluster.converge().await;
    let (a, b) = (cluster.base(0), cluster.base(1));
    wait_for("broker healthy", Duration::from_secs(20), || async {
        (broker_status(&a).await.0 == "healthy").then_some(())
    })
    .await;

    let id = start_job(&a, &spec(1500, 3)).await;
    let running = wait_status(&a, &id, "running", Duration::from_secs(30)).await;
    let owner = running["owner_node"].as_str().unwrap().to_string();
    let (owner_base, other_base) = if owner == "node-0" {
        (&a, &b)
    } else {
        (&b, &a)
    };

    let mut watcher = WsClient::connect(other_base).await;
    watcher.subscribe(&format!("job:{id}"), Some(0)).await;
    let mut last_seq = 0;
    while last_seq < 3 {
        let frame = watcher.next_json(Duration::from_secs(30)).await;
        last_seq = frame["seq"].as_u64().unwrap_or(last_seq);
    }
    drop(watcher);

    redis.stop();
    for base in [owner_base, other_base] {
        let broker = wait_for("broker degraded", Duration::from_secs(20), || async {
            let (status, broker) = broker_status(base).await;
            (status == "degraded").then_some(broker)
        })
        .await;
        assert!(
            broker["reason"].as_str().unwrap().contains("redis"),
            "{broker}"
        );
    }
    // Training goes on alone: progress keeps landing in the job's log.
    let before = get_json(&format!("{owner_base}/jobs/{id}")).await["last_event_seq"]
        .as_u64()
        .unwrap();
    wait_for(
        "progress while redis is down",
        Duration::from_secs(30),
        || async {
            let job = get_json(&format!("{owner_base}/jobs/{id}")).await;
            (job["last_event_seq"].as_u64().unwrap() > before + 2).then_some(())
        },
    )
    .await;

    redis.restart();
    for base in [owner_base, other_base] {
        wait_for("broker healthy again", Duration::from_secs(30), || async {
            (broker_status(base).await.0 == "healthy").then_some(())
        })
        .await;
    }
    // Live delivery across nodes resumes, and a reconnecting client fills the gap.
    let mut live = WsClient::connect(other_base).await;
    live.subscribe("training_updates", None).await;
    loop {
        let frame = live.next_json(Duration::from_secs(30)).await;
        if frame["data"]["job_id"] == id.as_str() {
            break;
        }
    }
    let mut catching_up = WsClient::connect(other_base).await;
    catching_up
        .subscribe(&format!("job:{id}"), Some(last_seq))
        .await;
    let mut seqs = Vec::new();
    loop {
        let frame = catching_up.next_json(Duration::from_secs(120)).await;
        seqs.push(frame["seq"].as_u64().unwrap());
        if frame["type"] == "training_completed" {
            break;
        }
    }
    assert_eq!(seqs[0], last_seq + 1);
    assert_eq!(
        seqs,
        (last_seq + 1..=last_seq + seqs.len() as u64).collect::<Vec<_>>(),
        "no gap and no duplicate"
    );
    let done = wait_status(other_base, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(done["attempts"], 1, "no job lost or run twice: {done}");
    drop(redis);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_one_node_generated_is_valid_on_every_node() {
    let mut cluster = Cluster::start_with(0, &redis_url(), false, 2_000).await;
    let (first, lines) = cluster.spawn_with_output(0);
    let token = lines
        .iter()
        .find_map(|line| {
            line.split("): ")
                .nth(1)
                .filter(|_| line.starts_with("admin token (generated"))
        })
        .unwrap_or_else(|| panic!("the first node prints its generated token: {lines:?}"))
        .trim()
        .to_string();
    let (second, lines) = cluster.spawn_with_output(1);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("the cluster's, generated by node node-0")),
        "{lines:?}"
    );
    assert!(!cluster.root.path().join("data-1/admin-token").exists());
    for base in [&first.base, &second.base] {
        let jobs = client_with(Some(&token))
            .get(format!("{base}/jobs"))
            .send()
            .await
            .unwrap();
        assert_eq!(jobs.status(), 200, "{base}");
        let wrong = client_with(Some("gf_wrong"))
            .get(format!("{base}/jobs"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
    }
    cluster.nodes.push(Some(first));
    cluster.nodes.push(Some(second));
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_node_stops_the_job_on_its_owner_within_a_second() {
    let mut cluster = Cluster::start(2, &redis_url()).await;
    cluster.converge().await;
    let id = start_job(&cluster.base(0), &spec(100_000, 5)).await;
    let running = wait_status(&cluster.base(0), &id, "running", Duration::from_secs(30)).await;
    let owner: usize = owner_index(&running);
    let other = cluster.base(1 - owner);
    // Progress first, so the worker is in its loop.
    wait_for("progress", Duration::from_secs(30), || async {
        let job = get_json(&format!("{other}/jobs/{id}")).await;
        job["progress"]["step"].as_u64().filter(|step| *step > 0)
    })
    .await;
    let asked = std::time::Instant::now();
    let response = common::client()
        .post(format!("{other}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    wait_status(&other, &id, "cancelled", Duration::from_secs(10)).await;
    // The lease is 2 s and renewed every ~670 ms: stopping within a second of the request needs
    // the bus, not the renewal (which alone would take up to ~700 ms plus a step, so the bound
    // is what the issue asks for, not a proof by itself; the log line below is).
    assert!(
        asked.elapsed() < Duration::from_secs(1) + Duration::from_millis(500),
        "cancelled after {:?}",
        asked.elapsed()
    );
    let metrics = metrics_text(&cluster.base(owner)).await;
    assert!(
        counter(
            &metrics,
            "grokforge_events_published_total",
            "cancel_requested"
        ) >= 1,
        "{metrics}"
    );
    drop(cluster.nodes.drain(..));
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_hands_its_job_over_at_once() {
    // A lease far longer than the test: only the handover can move the job.
    let mut cluster = Cluster::start_with(2, &redis_url(), true, 120_000).await;
    cluster.converge().await;
    let id = start_job(&cluster.base(0), &spec(1200, 9)).await;
    let running = wait_status(&cluster.base(0), &id, "running", Duration::from_secs(30)).await;
    let owner: usize = owner_index(&running);
    let survivor = cluster.base(1 - owner);
    wait_for("progress", Duration::from_secs(30), || async {
        let job = get_json(&format!("{survivor}/jobs/{id}")).await;
        job["progress"]["step"].as_u64().filter(|step| *step >= 60)
    })
    .await;

    let mut leaving = cluster.nodes[owner].take().unwrap();
    let stopped = std::time::Instant::now();
    let status = leaving.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    // Within the node's shutdown budget (8 s in this test's configuration).
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
    drop(leaving);

    // Gone from discovery at once (the TTL is 1.5 s; the survivor re-reads every 200 ms), and
    // the job is back in the queue with its checkpoint: the survivor runs it long before the
    // 120 s lease could have expired.
    wait_for(
        "the survivor to list one node",
        Duration::from_secs(1),
        || async {
            let nodes = get_json(&format!("{survivor}/cluster/nodes")).await;
            (nodes.as_array()?.len() == 1).then_some(())
        },
    )
    .await;
    let job = wait_for(
        "the survivor to take the job",
        Duration::from_secs(10),
        || async {
            let job = get_json(&format!("{survivor}/jobs/{id}")).await;
            (job["owner_node"] == format!("node-{}", 1 - owner)).then_some(job)
        },
    )
    .await;
    assert!(job["last_checkpoint_path"].is_string(), "{job}");
    let done = wait_status(&survivor, &id, "completed", Duration::from_secs(180)).await;
    let events = get_json(&format!("{survivor}/jobs/{id}/events?since=0&limit=10000")).await;
    let checkpoint = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["event"]["type"] == "checkpoint_saved" && e["source_node"] == format!("node-{owner}")
        })
        .filter_map(|e| e["event"]["data"]["step"].as_u64())
        .max()
        .unwrap();
    let resumed_at = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["event"]["type"] == "training_progress"
                && e["source_node"] == format!("node-{}", 1 - owner)
        })
        .filter_map(|e| e["event"]["data"]["step"].as_u64())
        .min()
        .unwrap();
    assert!(
        resumed_at > checkpoint,
        "resumed at {resumed_at}, checkpoint {checkpoint}: {done}"
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_save_that_hangs_never_starves_the_other_jobs_lease() {
    let mut cluster = Cluster::start_with(0, &redis_url(), true, 1_500).await;
    let config = cluster.config(0);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("max_concurrent_jobs = 1", "max_concurrent_jobs = 2"),
    )
    .unwrap();
    let data = cluster.root.path().join("data-0");
    let node = common::start_with(&data, &["--config".as_ref(), config.as_os_str()]).0;
    let base = node.base.clone();
    cluster.nodes.push(Some(node));
    let schema = cluster
        .database_url
        .split("search_path]=")
        .nth(1)
        .unwrap()
        .to_string();

    // The long job first, then a short one whose registry save will wait on a lock of the
    // registry's tables for three lease periods.
    let long = start_job(&base, &spec(100_000, 11)).await;
    wait_status(&base, &long, "running", Duration::from_secs(30)).await;
    let mut lock = psql(
        &cluster.database_url,
        &format!(
            "BEGIN; LOCK TABLE {schema}.models, {schema}.model_names IN EXCLUSIVE MODE; \
             SELECT pg_sleep(4.5); COMMIT;"
        ),
    )
    .spawn()
    .expect("psql runs");
    let locks = |granted: bool| {
        format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON l.relation = c.oid \
             JOIN pg_namespace n ON c.relnamespace = n.oid \
             WHERE n.nspname = '{schema}' AND c.relname IN ('models', 'model_names') \
             AND l.granted = {granted}"
        )
    };
    let database_url = cluster.database_url.clone();
    let count = |sql: String| {
        let output = psql(&database_url, &sql).output().unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    wait_for("the registry lock", Duration::from_secs(10), || async {
        (count(locks(true)) >= 2).then_some(())
    })
    .await;
    let short = start_job(&base, &spec(40, 12)).await;
    // The short job's training ends and its registry save waits on the lock...
    wait_for(
        "the short job's save to wait on the lock",
        Duration::from_secs(30),
        || async { (count(locks(false)) >= 1).then_some(()) },
    )
    .await;
    // ...while the long job's lease keeps moving forward, renewal after renewal.
    let lease = |job: &Value| {
        job["lease_expires_at"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut seen = vec![lease(&get_json(&format!("{base}/jobs/{long}")).await)];
    while seen.len() < 4 {
        let now = lease(&get_json(&format!("{base}/jobs/{long}")).await);
        if now != *seen.last().unwrap() {
            seen.push(now);
        }
        assert!(
            lock.try_wait().unwrap().is_none() || seen.len() >= 4,
            "the lock ended before three renewals: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get_json(&format!("{base}/jobs/{short}")).await["status"],
        "running",
        "the short job waits for the registry"
    );
    assert!(lock.wait().unwrap().success());
    wait_status(&base, &short, "completed", Duration::from_secs(30)).await;
    let long_job = get_json(&format!("{base}/jobs/{long}")).await;
    assert_eq!(long_job["status"], "running");
    assert_eq!(long_job["attempts"], 1, "never lost its lease: {long_job}");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_is_one_alert_for_the_whole_cluster() {
    let mut cluster = Cluster::start(3, &redis_url()).await;
    cluster.converge().await;
    let mut watchers = Vec::new();
    for index in [0, 1] {
        let mut watcher = WsClient::connect(&cluster.base(index)).await;
        watcher.subscribe("admin_alerts", None).await;
        watchers.push(watcher);
    }
    let mut dead = cluster.nodes[2].take().unwrap();
    assert!(
        !dead
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .success()
    );
    drop(dead);

    // Each survivor's clients hear of it once: one node speaks for the cluster (if the dead
    // node held the monitoring lease, a survivor takes it over and announces it then).
    for watcher in &mut watchers {
        let frame = watcher.next_json(Duration::from_secs(15)).await;
        assert_eq!(frame["type"], "alert_raised", "{frame}");
        assert_eq!(frame["data"]["rule"], "node_left");
        assert_eq!(frame["data"]["labels"]["node"], "node-2");
    }
    // And not again from the other survivor: nothing more within a lease's lifetime and then
    // some (the only bounded wait in this file: it proves an absence).
    for watcher in &mut watchers {
        let more = tokio::time::timeout(
            Duration::from_secs(4),
            watcher.next_json(Duration::from_secs(60)),
        )
        .await;
        assert!(more.is_err(), "a second alert: {more:?}");
    }
    let alerts = get_json(&format!("{}/alerts", cluster.base(0))).await;
    assert!(
        alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "node_left" && a["labels"]["node"] == "node-2"),
        "{alerts}"
    );
    cluster.cleanup().await;
}

/// A TCP proxy in front of Redis that can stop passing Redis's bytes to the connections that
/// subscribed, while they stay open: a subscription that is up but delivers nothing.
struct FreezingProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start(upstream: u16) -> FreezingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let freeze = frozen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let subscriber = Arc::new(AtomicBool::new(false));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let marks = subscriber.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buffer).await {
                        if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                        if buffer[..n]
                            .windows(9)
                            .any(|w| w.eq_ignore_ascii_case(b"subscribe"))
                        {
                            marks.store(true, Ordering::Release);
                        }
                    }
                });
                let freeze = freeze.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    while let Ok(n) = server_read.read(&mut buffer).await {
                        if n == 0 {
                            return;
                        }
                        // Held, not dropped: the bytes are late, the connection is fine.
                        while subscriber.load(Ordering::Acquire) && freeze.load(Ordering::Acquire) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FreezingProxy { port, frozen }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_goes_silent_is_caught_by_the_missing_heartbeat() {
    let redis = OwnRedis::start();
    let proxy = FreezingProxy::start(redis.port).await;
    let cluster = Cluster::start(1, &format!("redis://127.0.0.1:{}", proxy.port)).await;
    let base = cluster.base(0);
    wait_for("broker healthy", Duration::from_secs(20), || async {
        (broker_status(&base).await.0 == "healthy").then_some(())
    })
    .await;
    // The subscription stays connected and delivers nothing; publishing still works.
    proxy.frozen.store(true, Ordering::Release);
    wait_for(
        "broker degraded for want of its heartbeat",
        Duration::from_secs(5),
        || async {
            let (status, broker) = broker_status(&base).await;
            let reason = broker["reason"].as_str().unwrap_or_default().to_string();
            (status == "degraded" && reason.contains("heartbeat")).then_some(())
        },
    )
    .await;
    // Thawed, the bridge's next connection works again.
    proxy.frozen.store(false, Ordering::Release);
    wait_for("broker healthy again", Duration::from_secs(20), || async {
        (broker_status(&base).await.0 == "healthy").then_some(())
    })
    .await;
    drop(redis);
    cluster.cleanup().await;
}

/// The node holding the monitoring lease, as Redis says.
async fn monitoring_lease_holder(cluster: &Cluster) -> Option<String> {
    let client = redis::Client::open(cluster.redis_url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET")
        .arg(format!("{}:monitoring-lease", cluster.channel))
        .query_async::<Option<String>>(&mut connection)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_the_monitoring_lease_changing_hands() {
    // The failure's alerts hold for 10 s: long enough to kill the lease holder and let the
    // survivor take over, short enough to see the survivor resolve them.
    let mut cluster = Cluster::start_with(0, &redis_url(), true, 2_000).await;
    for index in 0..2 {
        let config = cluster.config(index);
        let mut text = std::fs::read_to_string(&config).unwrap();
        for rule in ["job_failed", "training_diverged"] {
            text.push_str(&format!(
                "[[monitoring.alerts]]\nrule = \"{rule}\"\nkeep_firing_for_ms = 10000\n"
            ));
        }
        std::fs::write(&config, text).unwrap();
        let data = cluster.root.path().join(format!("data-{index}"));
        let node = common::start_with(&data, &["--config".as_ref(), config.as_os_str()]).0;
        cluster.nodes.push(Some(node));
    }
    cluster.converge().await;
    let holder = wait_for("a monitoring lease holder", Duration::from_secs(10), || {
        monitoring_lease_holder(&cluster)
    })
    .await;
    let holder_index: usize = holder.strip_prefix("node-").unwrap().parse().unwrap();
    let survivor = 1 - holder_index;
    let base = cluster.base(survivor);
    let mut watcher = WsClient::connect(&base).await;
    watcher.subscribe("admin_alerts", None).await;

    // A job that goes NaN at once: it fails for good, wherever it runs, and the lease holder
    // announces its two alerts to the whole cluster.
    let mut body = spec(500, 3);
    body["lr"] = json!(1e30);
    body["warmup_steps"] = json!(0);
    let id = start_job(&base, &body).await;
    let mut raised = BTreeMap::new();
    while raised.len() < 2 {
        let frame = watcher.next_json(Duration::from_secs(30)).await;
        assert_eq!(frame["type"], "alert_raised", "{frame}");
        assert_eq!(frame["data"]["labels"]["job"], id.as_str(), "{frame}");
        assert_eq!(frame["source_node"], holder.as_str(), "{frame}");
        raised.insert(
            frame["data"]["rule"].as_str().unwrap().to_string(),
            frame["data"].clone(),
        );
    }
    // The survivor knows them as the holder announced them. Its WebSocket hub and its
    // monitoring service read the same announcement side by side, so the frame can come first.
    let firing = wait_for(
        "the survivor to list both alerts",
        Duration::from_secs(10),
        || async {
            let firing = get_json(&format!("{base}/alerts")).await;
            raised
                .keys()
                .all(|rule| {
                    firing
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["rule"] == rule.as_str())
                })
                .then_some(firing)
        },
    )
    .await;
    for (rule, alert) in &raised {
        let here = firing
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == rule.as_str())
            .unwrap();
        assert_eq!(here["id"], alert["id"], "{here} vs {alert}");
        assert_eq!(here["started_at"], alert["started_at"]);
    }

    let mut dead = cluster.nodes[holder_index].take().unwrap();
    assert!(
        !dead
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .success()
    );
    drop(dead);
    let survivor_id = format!("node-{survivor}");
    wait_for(
        "the survivor to take the lease",
        Duration::from_secs(10),
        || async {
            (monitoring_lease_holder(&cluster).await.as_deref() == Some(survivor_id.as_str()))
                .then_some(())
        },
    )
    .await;

    // From now on the survivor speaks: the holder's death, then — when the failure's alerts
    // stop holding — their resolution, with the ids the dead node gave them. Nothing of the
    // job is raised a second time.
    let mut resolved = BTreeMap::new();
    let mut node_left = false;
    while resolved.len() < 2 || !node_left {
        let frame = watcher.next_json(Duration::from_secs(20)).await;
        assert_eq!(frame["source_node"], survivor_id.as_str(), "{frame}");
        let rule = frame["data"]["rule"].as_str().unwrap().to_string();
        match (frame["type"].as_str().unwrap(), rule.as_str()) {
            ("alert_raised", "node_left") => {
                assert_eq!(frame["data"]["labels"]["node"], holder.as_str());
                node_left = true;
            }
            ("alert_resolved", "job_failed" | "training_diverged") => {
                assert_eq!(frame["data"]["id"], raised[&rule]["id"], "{frame}");
                assert_eq!(frame["data"]["started_at"], raised[&rule]["started_at"]);
                assert!(resolved.insert(rule, frame).is_none(), "resolved twice");
            }
            _ => panic!("unexpected after the hand-over: {frame}"),
        }
    }
    cluster.cleanup().await;
}
