//! `grokforge jobs …` and `grokforge models --server …`: the CLI client against a real node.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, READ_TOKEN, WsClient, grokforge, start};
use grokforge::client::{ApiError, Client};
use grokforge_actors::services::websocket::protocol::ServerFrame;
use grokforge_actors::storage::{JobRecord, JobStatus};
use serde_json::{Value, json};

/// Runs the client with `args` and returns (success, stdout, stderr). Blocking: call it from
/// `spawn_blocking` inside async tests.
fn run(base: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let output = grokforge()
        .args(args)
        .args(["--server", base, "--token", token])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn run_async(base: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let (base, token) = (base.to_string(), token.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&base, &token, &args)
    })
    .await
    .unwrap()
}

/// Starts a small job through the CLI's own client library.
async fn start_job(base: &str, steps: u64) -> String {
    let body = json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "d_ff": 32, "batch_size": 16, "steps": steps, "eval_every": 50,
                      "variants": 2, "threads": 1});
    let client = Client::new(base, Some(ADMIN_TOKEN.into())).unwrap();
    let job: JobRecord = client
        .post_json(&["phases", "cognate", "start"], Some(body))
        .await
        .unwrap();
    job.id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_and_the_nodes_frames_are_one_vocabulary() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let client = Client::new(&base, Some(ADMIN_TOKEN.into())).unwrap();

    // A refused field comes back as the node's problem, read by the library.
    let error = client
        .post_json::<JobRecord>(&["phases", "cognate", "start"], Some(json!({"steps": 0})))
        .await
        .unwrap_err();
    let problem = error
        .downcast_ref::<ApiError>()
        .unwrap_or_else(|| panic!("not an API error: {error:#}"));
    assert_eq!(problem.status, 422, "{problem:?}");
    assert!(
        problem
            .extras
            .iter()
            .any(|(k, v)| k == "field" && v == "steps"),
        "{problem:?}"
    );

    // Every frame the node sends while a job runs is one the shared wire types read.
    let mut socket = WsClient::connect(&base).await;
    let id = start_job(&base, 60).await;
    socket.subscribe(&format!("job:{id}"), Some(0)).await;
    let mut kinds = Vec::new();
    while !kinds.contains(&"training_completed".to_string()) {
        let frame = socket.next_json(Duration::from_secs(60)).await;
        match ServerFrame::parse(&frame.to_string()) {
            Ok(ServerFrame::Event(event)) => {
                assert_eq!(event.topic, format!("job:{id}"));
                assert_eq!(
                    event.event.job_id().map(|j| j.to_string()),
                    Some(id.clone())
                );
                kinds.push(event.event.kind().to_string());
            }
            Ok(ServerFrame::Control(control)) => panic!("a control frame mid-stream: {control:?}"),
            Err(error) => panic!("a frame the client cannot read: {error}: {frame}"),
        }
    }
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("training_started"),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "training_progress"), "{kinds:?}");
    let job: JobRecord = client.get_json(&["jobs", &id], &[]).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_watch_follows_a_job_to_completion_and_the_client_commands_work() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let id = start_job(&base, 150).await;

    // `watch` follows the job live and exits 0 when it completes, naming the models.
    let (ok, stdout, stderr) = run_async(&base, ADMIN_TOKEN, &["jobs", "watch", &id]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("job {id} completed: 2 model(s)")),
        "{stdout}"
    );
    assert!(stdout.contains("winner:"), "{stdout}");

    let (ok, listing, stderr) = run_async(&base, READ_TOKEN, &["jobs", "list"]).await;
    assert!(ok, "{stderr}");
    assert!(
        listing.contains(&id) && listing.contains("completed"),
        "{listing}"
    );

    let (ok, shown, stderr) = run_async(&base, READ_TOKEN, &["jobs", "show", &id]).await;
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"], "completed");

    let (ok, models, stderr) =
        run_async(&base, READ_TOKEN, &["models", "list", "--phase", "cognate"]).await;
    assert!(ok, "{stderr}");
    assert!(
        models.contains("cognate-v0") && models.contains("cognate-v1"),
        "{models}"
    );

    // Errors: an unknown job, a wrong token, a read token that may not cancel.
    let unknown = "01933b3e-0000-7000-8000-000000000000";
    let (ok, _, stderr) = run_async(&base, READ_TOKEN, &["jobs", "show", unknown]).await;
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = run_async(&base, "wrong-token", &["jobs", "list"]).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    let (ok, _, stderr) = run_async(&base, READ_TOKEN, &["jobs", "cancel", &id]).await;
    assert!(!ok);
    assert!(stderr.contains("403"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_watch_exits_non_zero_when_the_job_is_cancelled() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let id = start_job(&base, 1_000_000).await;

    let watch = {
        let (base, id) = (base.clone(), id.clone());
        tokio::spawn(async move { run_async(&base, ADMIN_TOKEN, &["jobs", "watch", &id]).await })
    };
    common::wait_for("the job to run", Duration::from_secs(60), || async {
        let job = common::get_json(&format!("{base}/jobs/{id}")).await;
        (job["status"] == "running" && job["progress"]["step"].as_u64() > Some(0)).then_some(())
    })
    .await;
    let (ok, stdout, stderr) = run_async(&base, ADMIN_TOKEN, &["jobs", "cancel", &id]).await;
    assert!(ok, "{stdout}\n{stderr}");

    let (ok, stdout, stderr) = tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("watch ends once the job is cancelled")
        .unwrap();
    assert!(!ok, "a cancelled job is not a success: {stdout}");
    assert!(stderr.contains("cancelled"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_uploaded_listed_shown_and_deleted_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let server = start(&data.path().join("node"));
    let base = server.base.clone();
    let corpus = data.path().join("corpus.jsonl");
    let lines: String = (0..200)
        .map(|i| format!("{{\"text\": \"line {i} of a small corpus\"}}\n"))
        .collect();
    std::fs::write(&corpus, lines).unwrap();
    let path = corpus.to_str().unwrap();

    let (ok, out, err) = run_async(&base, ADMIN_TOKEN, &["datasets", "upload", path]).await;
    assert!(ok, "{err}");
    let uploaded: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        uploaded["kind"], "jsonl",
        "the kind follows the file name: {uploaded}"
    );
    assert_eq!(uploaded["records"], 200);
    let reference = uploaded["reference"].as_str().unwrap().to_string();
    assert!(reference.starts_with("ds:"), "{reference}");
    // The same bytes again: the same dataset.
    let (ok, out, _) = run_async(&base, ADMIN_TOKEN, &["datasets", "upload", path]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["reference"],
        reference
    );

    let (ok, out, _) = run_async(&base, READ_TOKEN, &["datasets", "list"]).await;
    assert!(ok);
    assert!(out.contains(&reference), "{out}");
    assert!(out.contains("built-in: mod-"), "{out}");
    let (ok, out, _) = run_async(&base, READ_TOKEN, &["datasets", "show", &reference]).await;
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["sha256"], uploaded["sha256"]);

    // A read token may not upload or delete; the problem's words reach the user.
    let (ok, _, err) = run_async(&base, READ_TOKEN, &["datasets", "delete", &reference]).await;
    assert!(!ok);
    assert!(
        err.contains("403") || err.to_lowercase().contains("role"),
        "{err}"
    );
    let (ok, out, err) = run_async(&base, ADMIN_TOKEN, &["datasets", "delete", &reference]).await;
    assert!(ok, "{err}");
    assert!(out.contains("deleted"), "{out}");
    let (_, out, _) = run_async(&base, READ_TOKEN, &["datasets", "list"]).await;
    assert!(!out.contains(&reference), "{out}");
    let (ok, _, err) = run_async(&base, READ_TOKEN, &["datasets", "show", &reference]).await;
    assert!(!ok);
    assert!(err.contains("404") || err.contains("not found"), "{err}");
}
