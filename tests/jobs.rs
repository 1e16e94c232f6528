//! End to end over HTTP with the real binary: phases and jobs, and a node killed with SIGKILL
//! in the middle of a job that resumes from its checkpoint and ends with the same weights as a
//! run that was never interrupted.

mod common;

use std::time::Duration;

use common::{client, get, get_json, start, wait_for};
use serde_json::{Value, json};

/// Small and deterministic (one thread), long enough to be killed in the middle.
fn spec() -> Value {
    json!({
        "dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
        "batch_size": 16, "steps": 1200, "eval_every": 100, "checkpoint_every": 50,
        "variants": 1, "threads": 1, "seed": 7, "priority": 0
    })
}

async fn start_job(base: &str, body: &Value) -> Value {
    let response = client()
        .post(format!("{base}/phases/cognate/start"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

async fn wait_status(base: &str, id: &str, status: &str, deadline: Duration) -> Value {
    wait_for(&format!("job {id} {status}"), deadline, || async {
        let job = get_json(&format!("{base}/jobs/{id}")).await;
        (job["status"] == status).then_some(job)
    })
    .await
}

/// The logits of a node's job (see [`common::variant_logits`]).
fn logits(data_dir: &std::path::Path, job_id: &str) -> Vec<f32> {
    common::variant_logits(&data_dir.join("artifacts").join("jobs"), job_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_sigkill_resumes_from_its_checkpoint_and_ends_with_identical_weights() {
    // The interrupted run.
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    let job = start_job(&server.base, &spec()).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "queued");
    let base = server.base.clone();
    let checkpoint_step = common::wait_for_checkpoint(&base, &id, 100).await;
    let status = server.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    assert!(!status.success());
    drop(server);

    // The same node comes back: it reclaims the job and resumes it from the checkpoint.
    let server = start(data.path());
    let done = wait_status(&server.base, &id, "completed", Duration::from_secs(120)).await;
    assert_eq!(done["attempts"], 2, "{done:#}");
    assert!(
        done["attempt_errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    let events = get_json(&format!(
        "{}/jobs/{id}/events?since=0&limit=10000",
        server.base
    ))
    .await;
    let events = events.as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free across the crash"
    );
    let restarts: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["type"] == "training_started")
        .collect();
    assert_eq!(restarts.len(), 2);
    assert_eq!(restarts[1]["event"]["data"]["attempt"], 2);
    // After the restart, progress picks up past the checkpoint instead of starting over.
    let resumed_at = events
        .iter()
        .skip_while(|e| e["seq"] != restarts[1]["seq"])
        .find_map(|e| {
            (e["event"]["type"] == "training_progress")
                .then(|| e["event"]["data"]["step"].as_u64().unwrap())
        })
        .unwrap();
    assert!(
        resumed_at > checkpoint_step,
        "resumed at step {resumed_at}, checkpoint at {checkpoint_step}"
    );
    let resumed = logits(data.path(), &id);
    drop(server);

    // The same spec, never interrupted.
    let fresh = tempfile::tempdir().unwrap();
    let server = start(fresh.path());
    let straight = start_job(&server.base, &spec()).await;
    let straight_id = straight["id"].as_str().unwrap().to_string();
    wait_status(
        &server.base,
        &straight_id,
        "completed",
        Duration::from_secs(120),
    )
    .await;
    let straight_logits = logits(fresh.path(), &straight_id);
    assert!(!straight_logits.is_empty());
    assert_eq!(
        resumed, straight_logits,
        "the resumed run ends with the uninterrupted run's weights"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_answer_404_for_unknown_and_501_without_a_recipe() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let unknown = client()
        .post(format!("{}/phases/alchemy/start", server.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = unknown.json().await.unwrap();
    assert_eq!(problem["valid_phases"].as_array().unwrap().len(), 8);

    let no_recipe = client()
        .post(format!("{}/phases/evomerge/start", server.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_recipe.status(), 501);
    let problem: Value = no_recipe.json().await.unwrap();
    assert_eq!(problem["phases_with_recipe"], json!(["cognate"]));

    let bad_field = client()
        .post(format!("{}/phases/cognate/start", server.base))
        .json(&json!({"steps": "many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_field.status(), 422);
    let problem: Value = bad_field.json().await.unwrap();
    assert_eq!(problem["field"], "steps", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("`steps`"),
        "{problem}"
    );

    let missing = get(&format!("{}/jobs/{}", server.base, uuid_like())).await;
    assert_eq!(missing.status(), 404);
    let jobs = get_json(&format!("{}/jobs", server.base)).await;
    assert_eq!(
        jobs,
        json!([]),
        "nothing was queued by the refused requests"
    );
}

fn uuid_like() -> &'static str {
    "01933b3e-0000-7000-8000-000000000000"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trained_models_are_listed_exported_and_downloaded_with_verified_checksums() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();
    let body = json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                      "batch_size": 16, "steps": 10, "eval_every": 5, "variants": 2, "threads": 1});
    let job = start_job(&base, &body).await;
    let id = job["id"].as_str().unwrap().to_string();
    wait_status(&base, &id, "completed", Duration::from_secs(60)).await;

    let listed = get_json(&format!("{base}/models?phase=cognate")).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|m| m["job_id"] == id.as_str()));
    let winners = get_json(&format!("{base}/models?phase=cognate&winner=true")).await;
    assert_eq!(winners.as_array().unwrap().len(), 1);
    let model_ids: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();

    let response = client()
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": model_ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let export: Value = response.json().await.unwrap();
    let archive = get(&format!(
        "{base}/exports/{}",
        export["id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(archive.status(), 200);
    assert_eq!(archive.headers()["content-type"], "application/zip");
    let bytes = archive.bytes().await.unwrap();
    let (manifest, checked) = common::verify_export_zip(&bytes);
    assert_eq!(manifest["export_id"], export["id"]);
    assert!(
        checked >= 2 * 4,
        "every model's files are in the archive: {manifest:#}"
    );
    assert!(
        manifest.to_string().contains("model.safetensors"),
        "exports carry the PyTorch-named safetensors: {manifest:#}"
    );

    // The export flow's errors.
    let unknown = "01933b3e-0000-7000-8000-000000000000";
    let response = client()
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": [unknown]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains(unknown));
    let response = client()
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let response = client()
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.json::<Value>().await.unwrap()["field"],
        "model_ids"
    );
    assert_eq!(
        get(&format!("{base}/exports/{unknown}")).await.status(),
        404
    );
    assert_eq!(get(&format!("{base}/models/{unknown}")).await.status(), 404);

    // A model whose stored file was altered on disk cannot be exported until someone acts on
    // it: a 409 naming the model and the file, never a 503 that invites retries.
    let corrupted = model_ids[0];
    let file = model_file(data.path(), corrupted);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let response = client()
        .post(format!("{base}/models/export"))
        .json(&json!({"model_ids": [corrupted]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["model_id"], corrupted, "{problem}");
    assert!(problem["file"].is_string(), "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("failed verification"),
        "{problem}"
    );
}

/// A file of model `id` in the node's artifact store under `data_dir`.
fn model_file(data_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    let mut pending = vec![data_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name() == id {
                let mut files: Vec<_> = std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                return files.into_iter().next().expect("the model has files");
            }
            pending.push(path);
        }
    }
    panic!("no directory for model {id} under {}", data_dir.display());
}
