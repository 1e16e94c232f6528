//! Alerts end to end: a real node, a job that diverges, an admin WebSocket client and a real
//! HTTP webhook receiver in the test; the alert reaches both, signed, and a webhook that fails
//! twice gets it exactly once after the retries.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Server, WsClient, client, get_json, metrics_text, psql, wait_for};
use grokforge_actors::storage::testing::{DEFAULT_POSTGRES_URL, TestDatabase};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "webhook-test-secret";

/// One request the receiver got: its headers (lowercase names) and body.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

/// A plain HTTP/1.1 server that answers each request with the next status of `statuses`
/// (the last one forever) and records what it got.
async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let statuses = statuses.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let (head_end, length) = loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buffer.len() < head_end + length {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|line| line.split_once(':'))
                    .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                    .collect();
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Received {
                        headers,
                        body: buffer[head_end..head_end + length].to_vec(),
                        at: Instant::now(),
                    });
                    seen.len() - 1
                };
                let status = statuses[index.min(statuses.len() - 1)];
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, got)
}

fn start_node(data: &Path, webhooks: &[(&str, &str)], check_every_ms: u64) -> Server {
    start_node_with(data, webhooks, check_every_ms, "")
}

/// Like [`start_node`], with more TOML after the monitoring section.
fn start_node_with(
    data: &Path,
    webhooks: &[(&str, &str)],
    check_every_ms: u64,
    extra: &str,
) -> Server {
    std::fs::create_dir_all(data).unwrap();
    let config = data.join("alerts.toml");
    let mut toml = format!(
        "[[gateway.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n\
         [[gateway.tokens]]\ntoken = \"{}\"\nrole = \"read\"\n\
         [monitoring]\nhealth_check_interval_ms = {check_every_ms}\nhealth_check_timeout_ms = 150\n",
        common::READ_TOKEN
    );
    for (url, min_severity) in webhooks {
        toml.push_str(&format!(
            "[[monitoring.webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nmin_severity = \"{min_severity}\"\n"
        ));
    }
    toml.push_str(extra);
    std::fs::write(&config, toml).unwrap();
    common::start_with(data, &["--config".as_ref(), config.as_os_str()]).0
}

fn signed(received: &Received) -> bool {
    let header = received
        .headers
        .iter()
        .find(|(name, _)| name == "x-grokforge-signature")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&received.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    header == format!("sha256={expected}")
}

/// Queues a cognate job; its id.
/// A job that goes NaN within a few steps: a learning rate no optimizer survives.
fn diverging() -> Value {
    json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
           "batch_size": 16, "steps": 500, "variants": 1, "threads": 1, "lr": 1e30,
           "warmup_steps": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_job_fails_for_good_and_its_alert_reaches_admins_and_webhooks_signed() {
    let (ok_url, ok) = receiver(vec![200]).await;
    let (flaky_url, flaky) = receiver(vec![500, 500, 200]).await;
    let data = tempfile::tempdir().unwrap();
    let server = start_node(
        data.path(),
        &[(&ok_url, "warning"), (&flaky_url, "critical")],
        200,
    );
    let base = server.base.clone();

    let mut admin = WsClient::connect(&base).await;
    admin.subscribe("admin_alerts", None).await;
    let mut reader = WsClient::connect_with(&base, common::READ_TOKEN).await;
    reader
        .send_json(json!({"type": "subscribe", "topic": "admin_alerts"}))
        .await;
    let refused = reader.next_json(Duration::from_secs(5)).await;
    assert_eq!(refused["type"], "error", "{refused}");

    let id = common::start_cognate(&base, &diverging()).await;

    // The job stops at the step whose loss is not finite and fails at once, naming the step
    // and the value; it is not retried (the same seed would diverge the same way).
    let job = wait_for("the job to fail", Duration::from_secs(60), || async {
        let job = get_json(&format!("{base}/jobs/{id}")).await;
        (job["status"] == "failed").then_some(job)
    })
    .await;
    let failed_at = Instant::now();
    assert_eq!(job["attempts"], 1, "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("loss is not finite at step"), "{error}");
    // The failure says where, in fields a program reads.
    let events = get_json(&format!("{base}/jobs/{id}/events?since=0&limit=10000")).await;
    let failure = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["type"] == "training_failed")
        .unwrap_or_else(|| panic!("no training_failed in {events}"));
    let divergence = &failure["event"]["data"]["divergence"];
    let step = divergence["step"].as_u64().unwrap();
    assert!(
        error.contains(&format!("at step {step} ")),
        "{error} vs {divergence}"
    );
    assert!(
        ["NaN", "Infinity", "-Infinity"].contains(&divergence["loss"].as_str().unwrap()),
        "{divergence}"
    );
    assert_eq!(failure["event"]["data"]["will_retry"], false);

    // Both alerts on the admin socket, within 2 s of the failure.
    let mut rules = Vec::new();
    while rules.len() < 2 {
        let frame = admin.next_json(Duration::from_secs(2)).await;
        assert_eq!(frame["type"], "alert_raised", "{frame}");
        assert_eq!(frame["data"]["labels"]["job"], id.as_str());
        rules.push(frame["data"]["rule"].as_str().unwrap().to_string());
    }
    rules.sort();
    assert_eq!(rules, ["job_failed", "training_diverged"]);
    assert!(
        failed_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        failed_at.elapsed()
    );

    // The webhook got both, each signed, within 2 s.
    wait_for("two webhook deliveries", Duration::from_secs(2), || async {
        (ok.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    for received in ok.lock().unwrap().iter() {
        assert!(signed(received), "bad signature: {received:?}");
        let body: Value = serde_json::from_slice(&received.body).unwrap();
        assert_eq!(body["event"]["type"], "alert_raised");
        assert!(received.at.duration_since(failed_at) < Duration::from_secs(2));
    }

    // The flaky webhook (500, 500, then 200) got each critical alert delivered once: the
    // first took three tries, the second one.
    wait_for(
        "the flaky webhook's deliveries",
        Duration::from_secs(20),
        || async {
            let metrics = metrics_text(&base).await;
            metrics
                .contains(r#"grokforge_webhook_deliveries_total{outcome="delivered"} 4"#)
                .then_some(())
        },
    )
    .await;
    let flaky = flaky.lock().unwrap().clone();
    assert_eq!(
        flaky.len(),
        4,
        "three tries for the first, one for the second"
    );
    assert!(flaky.iter().all(signed));
    let ids: Vec<String> = flaky
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["event"]["data"]["id"].to_string()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3]);

    // `GET /alerts` lists them firing, and the gauge counts them.
    let firing = get_json(&format!("{base}/alerts?state=firing")).await;
    assert_eq!(firing.as_array().unwrap().len(), 2, "{firing}");
    let metrics = metrics_text(&base).await;
    assert!(
        metrics.contains(r#"grokforge_alerts_firing{rule="job_failed",severity="critical"} 1"#),
        "{metrics}"
    );
    let bad = client()
        .get(format!("{base}/alerts?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_from_the_latest_round_unless_asked_for_a_fresh_one() {
    let data = tempfile::tempdir().unwrap();
    // A round every minute: between rounds, `/health` answers from the last one.
    let server = start_node(data.path(), &[], 60_000);
    let base = server.base.clone();
    let stamp = |health: &Value| health["checked_at"].as_str().unwrap().to_string();
    // The round the node runs as it starts may finish after a first request that found none:
    // compare from the moment two answers in a row come from one round.
    let first = wait_for("a settled round", Duration::from_secs(10), || async {
        let one = get_json(&format!("{base}/health")).await;
        let two = get_json(&format!("{base}/health")).await;
        (!one["checked_at"].is_null() && stamp(&one) == stamp(&two)).then_some(two)
    })
    .await;
    let again = get_json(&format!("{base}/health")).await;
    assert_eq!(stamp(&again), stamp(&first), "no new round per request");
    let fresh = get_json(&format!("{base}/health?fresh=true")).await;
    assert!(stamp(&fresh) > stamp(&first), "{fresh}");
    // The fresh round is the latest now.
    assert_eq!(
        stamp(&get_json(&format!("{base}/health")).await),
        stamp(&fresh)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_progress_for_the_rules_threshold_fires_stalled_and_resolves_on_progress() {
    // Progress at most once a second, and "stalled" after 0.4 s of silence: between two
    // progress reports the job is stalled by this rule's standard, and then it is not.
    let data = tempfile::tempdir().unwrap();
    let server = start_node_with(
        data.path(),
        &[],
        200,
        "[[monitoring.alerts]]\nrule = \"job_stalled\"\nthreshold = 0.4\n\
         [training]\nprogress_events_per_second = 1\n",
    );
    let base = server.base.clone();
    let mut admin = WsClient::connect(&base).await;
    admin.subscribe("admin_alerts", None).await;
    let body = json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "d_ff": 32, "batch_size": 16, "steps": 100_000, "variants": 1,
                      "threads": 1});
    let id = common::start_cognate(&base, &body).await;
    let id = id.as_str();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = admin.next_json(Duration::from_secs(15)).await;
        if frame["data"]["rule"] == "job_stalled" && frame["data"]["labels"]["job"] == id {
            seen.push(frame["type"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["alert_raised", "alert_resolved"]);
    let resolved = get_json(&format!("{base}/alerts?state=resolved")).await;
    assert!(
        resolved
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "job_stalled" && a["resolved_at"].is_string()),
        "{resolved}"
    );
    client()
        .post(format!("{base}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stop_on_divergence_off_a_diverging_job_trains_to_the_end_and_still_alerts() {
    let data = tempfile::tempdir().unwrap();
    let server = start_node_with(
        data.path(),
        &[],
        200,
        "[training]\nstop_on_divergence = false\n",
    );
    let base = server.base.clone();
    let mut admin = WsClient::connect(&base).await;
    admin.subscribe("admin_alerts", None).await;
    let mut body = diverging();
    body["steps"] = json!(120);
    let id = common::start_cognate(&base, &body).await;
    let job = wait_for("the job to end", Duration::from_secs(60), || async {
        let job = get_json(&format!("{base}/jobs/{id}")).await;
        matches!(job["status"].as_str(), Some("completed" | "failed")).then_some(job)
    })
    .await;
    assert_eq!(job["status"], "completed", "trained on: {job}");

    // Its divergence is still an alert, once.
    let frame = admin.next_json(Duration::from_secs(5)).await;
    assert_eq!(frame["type"], "alert_raised", "{frame}");
    assert_eq!(frame["data"]["rule"], "training_diverged");
    assert_eq!(frame["data"]["labels"]["job"], id.as_str());

    // Its log kept every step it reported, the losses that are not numbers included, and
    // reads back whole (JSON has no NaN: they are strings).
    let events = get_json(&format!("{base}/jobs/{id}/events?since=0&limit=10000")).await;
    let losses: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "training_progress")
        .map(|e| &e["event"]["data"]["loss"])
        .collect();
    assert!(losses.iter().any(|l| *l == "NaN"), "{losses:?}");
    let steps: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "training_progress")
        .map(|e| e["event"]["data"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps.last(), Some(&120), "{steps:?}");

    // Monitoring's aggregate of the job: its end, its last step and loss, its events by type.
    let summary = get_json(&format!("{base}/monitoring")).await;
    let aggregate = summary["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{summary}"))
        .clone();
    assert_eq!(aggregate["state"], "completed", "{aggregate}");
    assert_eq!(aggregate["step"], 120);
    assert_eq!(aggregate["loss"], "NaN");
    assert_eq!(
        aggregate["events"]["training_progress"].as_u64(),
        Some(steps.len() as u64),
        "{aggregate}"
    );
    assert_eq!(aggregate["events"]["training_completed"], 1);
    assert!(summary["events"]["training_progress"].as_u64().unwrap() >= steps.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_whose_schema_is_dropped_fires_the_unhealthy_service_alert_after_its_for() {
    let postgres = std::env::var("GROKFORGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let database = TestDatabase::postgres(&postgres)
        .await
        .expect("a PostgreSQL schema for the test");
    let url = database.postgres_url().unwrap().to_string();
    let schema = url
        .split("search_path]=")
        .nth(1)
        .expect("a URL pinned to the test's schema")
        .to_string();
    let data = tempfile::tempdir().unwrap();
    let server = start_node_with(
        data.path(),
        &[],
        200,
        &format!(
            "[[monitoring.alerts]]\nrule = \"service_unhealthy\"\nfor_ms = 1500\n\
             [database]\nurl = \"{url}\"\n"
        ),
    );
    let base = server.base.clone();
    let mut admin = WsClient::connect(&base).await;
    admin.subscribe("admin_alerts", None).await;
    wait_for(
        "the database to be healthy",
        Duration::from_secs(10),
        || async {
            let health = get_json(&format!("{base}/health?fresh=true")).await;
            (health["dependencies"]["database"]["status"] == "healthy").then_some(())
        },
    )
    .await;

    let status = psql(&url, &format!("DROP SCHEMA {schema} CASCADE"))
        .status()
        .unwrap();
    assert!(status.success(), "psql: {status}");
    let dropped = Instant::now();

    let frame = admin.next_json(Duration::from_secs(10)).await;
    let waited = dropped.elapsed();
    assert_eq!(frame["type"], "alert_raised", "{frame}");
    assert_eq!(frame["data"]["rule"], "service_unhealthy");
    assert_eq!(frame["data"]["labels"]["service"], "database", "{frame}");
    assert_eq!(frame["data"]["severity"], "critical");
    assert!(
        frame["data"]["summary"].as_str().unwrap().contains("jobs"),
        "the reason names what is missing: {frame}"
    );
    // Not before the rule's `for`, and soon after it (a round is 200 ms).
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    let health = get_json(&format!("{base}/health")).await;
    assert_eq!(health["dependencies"]["database"]["status"], "unhealthy");
    drop(server);
    database.cleanup().await;
}
