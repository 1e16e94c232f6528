//! Security checks against a real node: the role every route requires, stated here as a table
//! independent of the gateway's route table and tried with every kind of credential; tokens
//! never in the log of a full workflow, never echoed; request ids in every problem body, in the
//! response header and in the log lines of the request.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::{
    ADMIN_TOKEN, READ_TOKEN, USER_TOKEN, WsClient, client_with, grokforge, start_command, wait_for,
};
use reqwest::Method;
use serde_json::{Value, json};

/// The least credential a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Nothing,
    Read,
    User,
    Admin,
}

/// A credential a request can present.
#[derive(Debug, Clone, Copy)]
enum Credential {
    Absent,
    Forged,
    Token(Need, &'static str),
}

const FORGED_TOKEN: &str = "forged-token-0f1e2d3c";
const CREDENTIALS: [Credential; 5] = [
    Credential::Absent,
    Credential::Forged,
    Credential::Token(Need::Read, READ_TOKEN),
    Credential::Token(Need::User, USER_TOKEN),
    Credential::Token(Need::Admin, ADMIN_TOKEN),
];

/// One row: a route (method and template, as the OpenAPI document writes it), a request to it
/// that is harmless whoever sends it (unknown ids, bodies that fail validation), and the least
/// role it needs.
struct Row {
    method: Method,
    template: &'static str,
    path: &'static str,
    body: Option<Value>,
    need: Need,
}

const NO_SUCH: &str = "0190f0f0-0000-7000-8000-000000000000";

fn table() -> Vec<Row> {
    use Need::*;
    let row = |method: Method, template, path, body, need| Row {
        method,
        template,
        path,
        body,
        need,
    };
    let get = Method::GET;
    let post = Method::POST;
    let delete = Method::DELETE;
    vec![
        row(get.clone(), "/health", "/health", None, Nothing),
        row(get.clone(), "/ready", "/ready", None, Nothing),
        row(get.clone(), "/", "/", None, Nothing),
        row(
            get.clone(),
            "/dashboard/{*file}",
            "/dashboard/app.js",
            None,
            Nothing,
        ),
        row(get.clone(), "/metrics", "/metrics", None, Read),
        row(get.clone(), "/openapi.json", "/openapi.json", None, Read),
        row(get.clone(), "/ws", "/ws", None, Read),
        row(get.clone(), "/cluster/nodes", "/cluster/nodes", None, Read),
        row(get.clone(), "/alerts", "/alerts", None, Read),
        row(get.clone(), "/monitoring", "/monitoring", None, Read),
        row(get.clone(), "/phases", "/phases", None, Read),
        row(
            get.clone(),
            "/phases/{phase}/status",
            "/phases/cognate/status",
            None,
            Read,
        ),
        row(get.clone(), "/jobs", "/jobs", None, Read),
        row(get.clone(), "/jobs/{id}", "/jobs/{no_such}", None, Read),
        row(
            get.clone(),
            "/jobs/{id}/events",
            "/jobs/{no_such}/events",
            None,
            Read,
        ),
        row(get.clone(), "/models", "/models", None, Read),
        row(get.clone(), "/models/{id}", "/models/{no_such}", None, Read),
        row(
            get.clone(),
            "/exports/{id}",
            "/exports/{no_such}",
            None,
            Read,
        ),
        row(get.clone(), "/datasets", "/datasets", None, Read),
        row(
            get.clone(),
            "/datasets/{id}",
            "/datasets/{no_such}",
            None,
            Read,
        ),
        row(
            post.clone(),
            "/phases/{phase}/start",
            "/phases/cognate/start",
            Some(json!({"steps": 0})),
            User,
        ),
        row(
            post.clone(),
            "/jobs/{id}/cancel",
            "/jobs/{no_such}/cancel",
            None,
            User,
        ),
        row(
            post.clone(),
            "/models/export",
            "/models/export",
            Some(json!({"model_ids": []})),
            User,
        ),
        row(
            delete.clone(),
            "/models/{id}",
            "/models/{no_such}",
            None,
            User,
        ),
        row(post, "/datasets", "/datasets", None, User),
        row(delete, "/datasets/{id}", "/datasets/{no_such}", None, User),
    ]
}

/// A node whose log (stderr) goes to `log`, at `filter`.
fn start_logged(data: &std::path::Path, log: &std::path::Path, filter: &str) -> common::Server {
    let config = common::token_config(data);
    let log = std::fs::File::create(log).unwrap();
    start_command(
        grokforge()
            .env("RUST_LOG", filter)
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::from(log)),
    )
    .0
}

fn client_for(credential: Credential) -> reqwest::Client {
    match credential {
        Credential::Absent => client_with(None),
        Credential::Forged => client_with(Some(FORGED_TOKEN)),
        Credential::Token(_, token) => client_with(Some(token)),
    }
}

/// Checks a problem answer: problem+json, its `request_id` the response's `X-Request-Id`.
async fn problem_of(response: reqwest::Response) -> Value {
    let header = response
        .headers()
        .get("x-request-id")
        .expect("every answer has an X-Request-Id")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], header.as_str(), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_requires_the_role_of_the_table_and_no_less() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    let server = start_logged(data.path(), &log, "info");
    let base = &server.base;
    let table = table();

    // The table covers the gateway's routes exactly: a new route needs a row here.
    let served: BTreeSet<(String, String)> = grokforge_gateway::routes::ALL
        .iter()
        .map(|route| (route.method.to_string(), route.path.to_string()))
        .collect();
    let tabled: BTreeSet<(String, String)> = table
        .iter()
        .map(|row| (row.method.to_string(), row.template.to_string()))
        .collect();
    assert_eq!(tabled, served, "the table and the route table differ");

    for row in &table {
        let path = row.path.replace("{no_such}", NO_SUCH);
        for credential in CREDENTIALS {
            let mut request =
                client_for(credential).request(row.method.clone(), format!("{base}{path}"));
            if let Some(body) = &row.body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let what = format!("{} {path} with {credential:?}: {status}", row.method);
            let expected = match credential {
                _ if row.need == Need::Nothing => None,
                Credential::Absent | Credential::Forged => Some(401),
                Credential::Token(role, _) if role < row.need => Some(403),
                Credential::Token(..) => None,
            };
            match expected {
                Some(refusal) => {
                    assert_eq!(status, refusal, "{what}");
                    let problem = problem_of(response).await;
                    if refusal == 403 {
                        assert!(problem["required_role"].is_string(), "{what}: {problem}");
                    }
                }
                None => assert!(
                    status != 401 && status != 403,
                    "{what} should have been let through"
                ),
            }
        }
    }

    // `?token=` is for the WebSocket handshake only: browsers cannot set headers there.
    let by_query = client_with(None)
        .get(format!("{base}/jobs?token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 401);
    let body = by_query.text().await.unwrap();
    assert!(!body.contains(ADMIN_TOKEN), "the token is echoed: {body}");

    // The one admin-only thing: the admin_alerts topic of the WebSocket.
    for (role, token) in [
        (Need::Read, READ_TOKEN),
        (Need::User, USER_TOKEN),
        (Need::Admin, ADMIN_TOKEN),
    ] {
        let mut ws = WsClient::connect_with(base, token).await;
        ws.send_json(json!({"type": "subscribe", "topic": "admin_alerts"}))
            .await;
        let answer = ws.next_json(Duration::from_secs(10)).await;
        if role == Need::Admin {
            assert_eq!(answer["type"], "subscription_confirmed", "{answer}");
        } else {
            assert_eq!(answer["type"], "error", "{role:?}: {answer}");
        }
    }
}

/// Whether the log file holds `needle`.
fn logged(log: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(log).unwrap().contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log_and_request_ids_tie_answers_to_log_lines() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    // Everything the node's crates log, and its dependencies' debug lines (hyper, warp, sqlx).
    let mut server = start_logged(data.path(), &log, "debug,grokforge=trace");
    let base = server.base.clone();
    let user = client_with(Some(USER_TOKEN));
    let read = client_with(Some(READ_TOKEN));

    // A client's own request id is kept, answered and logged.
    let started = user
        .post(format!("{base}/phases/cognate/start"))
        .header("x-request-id", "ops-7f3a-start")
        .json(
            &json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "d_ff": 32, "batch_size": 16, "steps": 60, "eval_every": 20,
                      "checkpoint_every": 20, "variants": 2, "threads": 1, "seed": 5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    assert_eq!(started.headers()["x-request-id"], "ops-7f3a-start");
    let job: Value = started.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();

    // Watched live over the WebSocket with the token in the query, as the dashboard does; a bad
    // frame and a forbidden topic get error frames that do not echo the token.
    let mut ws = WsClient::connect_with(&base, READ_TOKEN).await;
    ws.subscribe(&format!("job:{job_id}"), Some(0)).await;
    ws.send_json(json!({"type": "subscribe", "topic": "nonsense"}))
        .await;
    ws.send_json(json!({"type": "subscribe", "topic": "admin_alerts"}))
        .await;
    let mut errors = 0;
    let mut completed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while errors < 2 || !completed {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = ws.next_json(remaining).await;
        let text = frame.to_string();
        if frame["type"] == "error" {
            errors += 1;
            assert!(!text.contains(READ_TOKEN), "{text}");
        }
        completed |= frame["type"] == "training_completed";
    }

    // The models, an export and its download, a delete.
    let models: Value = wait_for("the job's models", Duration::from_secs(30), || {
        let read = read.clone();
        let url = format!("{base}/models?phase=cognate");
        async move {
            let models: Value = read.get(url).send().await.ok()?.json().await.ok()?;
            (models.as_array()?.len() == 2).then_some(models)
        }
    })
    .await;
    let ids: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let export: Value = user
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": ids}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let download = read
        .get(format!("{base}/exports/{}", export["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200, "{export}");
    assert!(!download.bytes().await.unwrap().is_empty());
    let deleted = user
        .delete(format!("{base}/models/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    for page in ["/metrics", "/health?detail=true", "/jobs", "/alerts"] {
        read.get(format!("{base}{page}")).send().await.unwrap();
    }

    // Refused credentials: a forged header token, a forged query token.
    let forged = client_with(Some(FORGED_TOKEN))
        .get(format!("{base}/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let refused_ws = client_with(None)
        .get(format!("{base}/ws?token={FORGED_TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused_ws.status(), 401);
    let body = refused_ws.text().await.unwrap();
    assert!(!body.contains(FORGED_TOKEN), "{body}");

    // A problem's request id is the one in the log line that says what went wrong.
    let missing = read
        .get(format!("{base}/jobs/{NO_SUCH}"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let problem = problem_of(missing).await;
    let problem_id = problem["request_id"].as_str().unwrap().to_string();
    wait_for("the problem's log line", Duration::from_secs(5), || {
        let found = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .any(|line| line.contains(&problem_id) && line.contains("404"));
        async move { found.then_some(()) }
    })
    .await;

    drop(ws);
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "{status}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 100,
        "the workflow logged too little to prove anything:\n{text}"
    );
    assert!(
        logged(&log, "ops-7f3a-start"),
        "the client's request id is not logged"
    );
    for token in [ADMIN_TOKEN, USER_TOKEN, READ_TOKEN, FORGED_TOKEN] {
        let leaks: Vec<&str> = text.lines().filter(|line| line.contains(token)).collect();
        assert!(
            leaks.is_empty(),
            "the log holds a token:\n{}",
            leaks.join("\n")
        );
    }
    // A request's own log lines carry its id: every line inside a request span has `id=`.
    assert!(
        text.lines()
            .filter(|line| line.contains("request{"))
            .all(|line| line.contains("request{id=")),
        "a request's log line without its id"
    );
}
