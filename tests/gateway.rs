//! End to end over HTTP and the WebSocket, with the real binary on port 0: the seed's training
//! workflow watched live, replay after a reconnect, cancel, auth, a slow client, metrics.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    ADMIN_TOKEN, READ_TOKEN, USER_TOKEN, WsClient, client, client_with, get_json, start,
    start_with, wait_for,
};
use serde_json::{Value, json};

fn tiny(steps: u64, variants: u64) -> Value {
    json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
           "batch_size": 16, "steps": steps, "eval_every": 50, "checkpoint_every": 50,
           "variants": variants, "threads": 1, "seed": 3})
}

async fn start_job(base: &str, body: &Value) -> String {
    let response = client()
        .post(format!("{base}/phases/cognate/start"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    job["id"].as_str().unwrap().to_string()
}

/// Reads frames until `stop` says so, failing after `deadline`.
async fn collect_until(
    ws: &mut WsClient,
    deadline: Duration,
    stop: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let until = tokio::time::Instant::now() + deadline;
    let mut frames = Vec::new();
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let frame = ws.next_json(left).await;
        let done = stop(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn is_terminal(frame: &Value) -> bool {
    matches!(
        frame["type"].as_str(),
        Some("training_completed" | "training_failed" | "training_cancelled")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_workflow_streams_live_and_ends_in_a_verified_export() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let mut ws = WsClient::connect(&base).await;
    ws.subscribe("training_updates", None).await;
    ws.subscribe("model_updates", None).await;

    let id = start_job(&base, &tiny(120, 2)).await;
    let frames = collect_until(&mut ws, Duration::from_secs(120), |f| {
        is_terminal(f) && f["data"]["job_id"] == id.as_str()
    })
    .await;

    let training: Vec<&Value> = frames
        .iter()
        .filter(|f| f["topic"] == "training_updates" && f["data"]["job_id"] == id.as_str())
        .collect();
    assert_eq!(training[0]["type"], "training_started", "{training:#?}");
    let last = training.last().unwrap();
    assert_eq!(last["type"], "training_completed", "{last:#}");
    let seqs: Vec<u64> = training
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq increases: {seqs:?}"
    );
    let progress = training
        .iter()
        .filter(|f| f["type"] == "training_progress")
        .count();
    assert!(progress >= 2, "progress arrives live: {progress}");
    for frame in &training {
        assert_eq!(frame["source_service"], "training_service");
        assert!(frame["timestamp"].is_string());
    }
    let saved: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "model_saved" && f["data"]["job_id"] == id.as_str())
        .collect();
    assert_eq!(saved.len(), 2, "one model_saved per variant");
    assert!(saved.iter().all(|f| f["topic"] == "model_updates"));

    let completed_ids: BTreeSet<String> = last["data"]["model_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let listed = get_json(&format!("{base}/models?phase=cognate")).await;
    let listed_ids: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed_ids, completed_ids);

    let response = client()
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": completed_ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let export: Value = response.json().await.unwrap();
    let archive = client()
        .get(format!("{base}/exports/{}", export["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(archive.status(), 200);
    let bytes = archive.bytes().await.unwrap();
    let (manifest, verified) = common::verify_export_zip(&bytes);
    assert!(verified >= 8, "{manifest:#}");

    // The gateway's metrics saw all of it.
    let metrics = common::metrics_text(&base).await;
    for needle in [
        r#"grokforge_http_requests_total{method="POST",route="/phases/{phase}/start",status="202"} 1"#,
        r#"grokforge_http_requests_total{method="GET",route="/exports/{id}",status="200"} 1"#,
        r#"grokforge_models{phase="cognate"} 2"#,
        r#"grokforge_models{phase="evomerge"} 0"#,
        "grokforge_websocket_connections 1",
        "grokforge_websocket_messages_sent_total",
        r#"grokforge_breaker_state{breaker="training_service"} 0"#,
        r#"grokforge_jobs_total{status="completed"} 1"#,
        "grokforge_training_steps_total 240",
        "grokforge_http_request_duration_seconds_bucket",
        "grokforge_build_info",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    // The events that reached the client were timed from the hub's queue to the socket.
    let delivery_writes: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("grokforge_websocket_delivery_seconds_count "))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("a delivery histogram in\n{metrics}"));
    assert!(delivery_writes > 0, "{metrics}");

    // Delete: a read token may not; a user token gets the deleted record, and every read after
    // the answer sees the model gone, the list just served from the model service's cache
    // included.
    let victim = completed_ids.first().unwrap().clone();
    let ids_of = |listed: &Value| -> BTreeSet<String> {
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids_of(&get_json(&format!("{base}/models?phase=cognate")).await),
        completed_ids
    );
    let refused = client_with(Some(READ_TOKEN))
        .delete(format!("{base}/models/{victim}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let response = client_with(Some(USER_TOKEN))
        .delete(format!("{base}/models/{victim}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["id"], victim.as_str());
    let mut left = completed_ids.clone();
    left.remove(&victim);
    assert_eq!(
        ids_of(&get_json(&format!("{base}/models?phase=cognate")).await),
        left
    );
    let gone = client()
        .get(format!("{base}/models/{victim}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_with_since_gets_exactly_what_it_missed() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let id = start_job(&base, &tiny(300, 1)).await;
    let topic = format!("job:{id}");

    // First connection: replay from the start, read a few events, then go away mid-run.
    let mut first = WsClient::connect(&base).await;
    first.subscribe(&topic, Some(0)).await;
    let mut seen: Vec<u64> = Vec::new();
    while seen.len() < 3 {
        let frame = first.next_json(Duration::from_secs(60)).await;
        assert_eq!(frame["topic"], topic.as_str());
        seen.push(frame["seq"].as_u64().unwrap());
    }
    drop(first);

    // Events keep coming while nobody listens.
    let missed_from = *seen.last().unwrap();
    wait_for(
        "more events while disconnected",
        Duration::from_secs(60),
        || async {
            let events = get_json(&format!(
                "{base}/jobs/{id}/events?since={missed_from}&limit=10000"
            ))
            .await;
            (events.as_array().unwrap().len() >= 3).then_some(())
        },
    )
    .await;

    let mut second = WsClient::connect(&base).await;
    let confirmed = second.subscribe(&topic, Some(missed_from)).await;
    assert!(confirmed["replayed"].as_u64().unwrap() >= 3, "{confirmed}");
    let frames = collect_until(&mut second, Duration::from_secs(120), is_terminal).await;
    seen.extend(frames.iter().map(|f| f["seq"].as_u64().unwrap()));

    let log = get_json(&format!("{base}/jobs/{id}/events?since=0&limit=10000")).await;
    let logged: Vec<u64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seen, logged,
        "every event exactly once, in order, across the reconnect"
    );

    // Errors are frames, and the connection stays usable.
    second
        .send_json(json!({"type": "subscribe", "topic": "health", "since": 3}))
        .await;
    let error = second.next_json(Duration::from_secs(5)).await;
    assert_eq!(error["type"], "error");
    assert!(
        error["message"].as_str().unwrap().contains("since"),
        "{error}"
    );
    second
        .send_json(json!({"type": "subscribe", "topic": "job:not-a-uuid"}))
        .await;
    assert_eq!(
        second.next_json(Duration::from_secs(5)).await["type"],
        "error"
    );
    second
        .send_json(json!({"type": "subscribe", "topic": "job:01933b3e-0000-7000-8000-000000000000", "since": 0}))
        .await;
    let unknown = second.next_json(Duration::from_secs(5)).await;
    assert_eq!(unknown["type"], "error");
    assert!(
        unknown["message"].as_str().unwrap().contains("not found"),
        "{unknown}"
    );
    second.send_json(json!({"type": "dance"})).await;
    assert_eq!(
        second.next_json(Duration::from_secs(5)).await["type"],
        "error"
    );
    second.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        second.next_json(Duration::from_secs(5)).await["type"],
        "pong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_over_http_ends_cancelled_on_the_websocket() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let id = start_job(&base, &tiny(100_000, 1)).await;
    let mut ws = WsClient::connect(&base).await;
    ws.subscribe(&format!("job:{id}"), Some(0)).await;
    collect_until(&mut ws, Duration::from_secs(60), |f| {
        f["type"] == "training_progress"
    })
    .await;

    // A read token may not cancel; a user token may.
    let refused = client_with(Some(READ_TOKEN))
        .post(format!("{base}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let response = client_with(Some(USER_TOKEN))
        .post(format!("{base}/jobs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    let frames = collect_until(&mut ws, Duration::from_secs(60), is_terminal).await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "training_cancelled", "{last:#}");
    let step = last["data"]["step"].as_u64().unwrap();
    assert!(step < 100_000, "stopped early, at step {step}");
    let job = get_json(&format!("{base}/jobs/{id}")).await;
    assert_eq!(job["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_need_a_valid_token_of_a_strong_enough_role() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let anonymous = client_with(None);

    for open in ["/health", "/ready"] {
        let status = anonymous
            .get(format!("{base}{open}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{open} is open");
    }
    for guarded in [
        "/metrics",
        "/jobs",
        "/models",
        "/phases",
        "/cluster/nodes",
        "/openapi.json",
        "/ws",
    ] {
        let response = anonymous
            .get(format!("{base}{guarded}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{guarded} without a token");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"grokforge\""
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let wrong = client_with(Some("not-a-token"))
            .get(format!("{base}{guarded}"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{guarded} with a wrong token");
    }
    let read = client_with(Some(READ_TOKEN));
    assert_eq!(
        read.get(format!("{base}/jobs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = read
        .post(format!("{base}/phases/cognate/start"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["required_role"], "user");
    assert_eq!(
        get_json(&format!("{base}/jobs")).await,
        json!([]),
        "nothing queued"
    );

    // The WebSocket handshake takes the token from the query or the header.
    let refused = tokio_tungstenite::connect_async(common::ws_url(&base, "wrong")).await;
    assert!(
        refused.is_err(),
        "a wrong token is refused before the upgrade"
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}/ws",
            base.replacen("http://", "ws://", 1)
        ))
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {READ_TOKEN}").parse().unwrap(),
    );
    let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut reader = WsClient { stream };
    let hello = reader.next_json(Duration::from_secs(5)).await;
    assert_eq!(hello["role"], "read");
    // admin_alerts is for admins only.
    reader
        .send_json(json!({"type": "subscribe", "topic": "admin_alerts"}))
        .await;
    let error = reader.next_json(Duration::from_secs(5)).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["topic"], "admin_alerts");
    let mut admin = WsClient::connect_with(&base, ADMIN_TOKEN).await;
    admin.subscribe("admin_alerts", None).await;

    // A plain GET of /ws with a good token is told to upgrade, and how; one without a key is
    // a bad request.
    let plain = read.get(format!("{base}/ws")).send().await.unwrap();
    assert_eq!(plain.status(), 426);
    assert_eq!(plain.headers()["upgrade"], "websocket");
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
    let problem: Value = plain.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("WebSocket upgrade"),
        "{problem}"
    );
    let upgrade = |version: &'static str, key: Option<&'static str>| {
        let request = read
            .get(format!("{base}/ws"))
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-version", version);
        let request = match key {
            Some(key) => request.header("sec-websocket-key", key),
            None => request,
        };
        request.send()
    };
    let old_version = upgrade("8", Some("dGhlIHNhbXBsZSBub25jZQ=="))
        .await
        .unwrap();
    assert_eq!(old_version.status(), 426);
    assert_eq!(old_version.headers()["sec-websocket-version"], "13");
    let keyless = upgrade("13", None).await.unwrap();
    assert_eq!(keyless.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_tokens_the_node_generates_an_admin_token_once_and_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let (server, lines) = start_with(data.path(), &[]);
    let path = data.path().join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("admin token") && l.contains(&token)),
        "the generated token is printed with the address: {lines:?}"
    );
    let ok = client_with(Some(&token))
        .get(format!("{}/jobs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(server);

    let (server, lines) = start_with(data.path(), &[]);
    assert!(
        !lines.iter().any(|l| l.contains(&token)),
        "a reused token is not printed again: {lines:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        token,
        "the token is reused"
    );
    let ok = client_with(Some(&token))
        .get(format!("{}/jobs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_without_hurting_the_others() {
    let data = tempfile::tempdir().unwrap();
    // A short queue, small socket buffers and a high progress rate, so a client that does not
    // read overflows soon.
    let config = data.path().join("fast-events.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nws_queue_capacity = 64\nsocket_send_buffer_bytes = 16384\n[[gateway.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\n\
             role = \"admin\"\n[training]\nprogress_events_per_second = 2000\n"
        ),
    )
    .unwrap();
    let (server, _) = start_with(data.path(), &["--config".as_ref(), config.as_os_str()]);
    let base = server.base.clone();

    // The slow client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let stream = socket.connect(address).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (slow, _) = tokio_tungstenite::client_async(common::ws_url(&base, ADMIN_TOKEN), stream)
        .await
        .unwrap();
    let mut slow = WsClient { stream: slow };
    assert_eq!(
        slow.next_json(Duration::from_secs(5)).await["type"],
        "connection_established"
    );
    slow.subscribe("training_updates", None).await;

    // The fast client reads on its own task, all the time.
    let mut fast = WsClient::connect(&base).await;
    fast.subscribe("training_updates", None).await;
    let fast = tokio::spawn(async move {
        collect_until(&mut fast, Duration::from_secs(180), is_terminal).await
    });
    let mut body = tiny(3_000, 1);
    body["eval_every"] = 1_000.into();
    body["checkpoint_every"] = 1_000.into();
    let id = start_job(&base, &body).await;

    wait_for(
        "the slow client to be dropped",
        Duration::from_secs(120),
        || async {
            let metrics = common::metrics_text(&base).await;
            metrics
                .contains(r#"grokforge_websocket_disconnects_total{reason="slow_consumer"} 1"#)
                .then_some(())
        },
    )
    .await;
    // The slow client, reading at last, finds the frames the kernel held, then the reason.
    let close = loop {
        match slow.next_frame(Duration::from_secs(10)).await {
            Ok(_) => continue,
            Err(close) => break close,
        }
    };
    assert_eq!(close.0, 1008, "{close:?}");
    assert!(close.1.contains("slow consumer"), "{close:?}");

    let frames = fast.await.unwrap();
    assert_eq!(frames.last().unwrap()["type"], "training_completed");
    let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    let logged = get_json(&format!("{base}/jobs/{id}/events?since=0&limit=10000")).await;
    let logged: Vec<u64> = logged
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, logged, "the fast client got every event, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_openapi_document_is_served() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let document = get_json(&format!("{base}/openapi.json")).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 17, "{paths:?}");
    let unknown = "01933b3e-0000-7000-8000-000000000000";
    let mut checked = 0;
    for (template, operations) in paths {
        // A phase without a recipe: the start route answers without queueing anything.
        let path = template
            .replace("{id}", unknown)
            .replace("{phase}", "evomerge");
        for method in operations.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let response = client()
                .request(method.clone(), format!("{base}{path}"))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {template}: {body}");
            assert!(
                !(status == 404 && body.contains("no such route")),
                "{method} {template} is documented but not served"
            );
            let documented = operations[method.as_str().to_lowercase()]["responses"]
                .as_object()
                .unwrap();
            if template != "/ws" {
                assert!(
                    documented.contains_key(&status.to_string()),
                    "{method} {template} answered {status}, documented {:?}",
                    documented.keys().collect::<Vec<_>>()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked}");
    assert_eq!(get_json(&format!("{base}/jobs")).await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_reaped_and_oversized_frames_refused() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("ws-limits.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nws_ping_interval_ms = 300\nws_max_message_bytes = 1024\n\
             [[gateway.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n"
        ),
    )
    .unwrap();
    let (server, _) = start_with(data.path(), &["--config".as_ref(), config.as_os_str()]);
    let base = server.base.clone();

    // A client that reads (and so answers pings) stays; one that never reads is reaped.
    let mut alive = WsClient::connect(&base).await;
    let silent = WsClient::connect(&base).await;
    let stop = Arc::new(AtomicBool::new(false));
    let keep_talking = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                alive.send_json(json!({"type": "ping"})).await;
                assert_eq!(
                    alive.next_json(Duration::from_secs(5)).await["type"],
                    "pong"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            alive
        })
    };
    wait_for(
        "the silent client to be reaped",
        Duration::from_secs(10),
        || async {
            common::metrics_text(&base)
                .await
                .contains(r#"grokforge_websocket_disconnects_total{reason="ping_timeout"} 1"#)
                .then_some(())
        },
    )
    .await;
    drop(silent);
    // Well past two ping intervals: the reading client is still there.
    tokio::time::sleep(Duration::from_millis(900)).await;
    stop.store(true, Ordering::Relaxed);
    let mut alive = keep_talking.await.unwrap();
    alive.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        alive.next_json(Duration::from_secs(5)).await["type"],
        "pong"
    );

    // A frame over the limit ends the connection with 1009.
    let big = "x".repeat(4096);
    alive
        .send_json(json!({"type": "subscribe", "topic": big}))
        .await;
    let close = loop {
        match alive.next_frame(Duration::from_secs(5)).await {
            Ok(_) => continue,
            Err(close) => break close,
        }
    };
    assert_eq!(close.0, 1009, "{close:?}");
    let text = common::metrics_text(&base).await;
    assert!(
        text.contains(r#"grokforge_websocket_disconnects_total{reason="protocol_error"} 1"#),
        "{text}"
    );
}
