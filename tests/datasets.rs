//! Datasets against the real node: uploads are stored once per content, bounded, validated,
//! trained on by id, named in the models they produce, protected while jobs use them, and
//! their prepared data is reused by later jobs.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    ADMIN_TOKEN, READ_TOKEN, Server, USER_TOKEN, client_with, get_json, metrics_text, start_with,
    wait_for,
};
use serde_json::{Value, json};

/// Starts a node with the test tokens and `storage` settings (TOML lines).
fn start_node(data_dir: &Path, storage: &str) -> Server {
    std::fs::create_dir_all(data_dir).unwrap();
    let config = data_dir.join("test.toml");
    std::fs::write(
        &config,
        format!(
            "[[gateway.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n\
             [[gateway.tokens]]\ntoken = \"{USER_TOKEN}\"\nrole = \"user\"\n\
             [[gateway.tokens]]\ntoken = \"{READ_TOKEN}\"\nrole = \"read\"\n\
             [storage]\n{storage}\n"
        ),
    )
    .unwrap();
    start_with(data_dir, &["--config".as_ref(), config.as_os_str()]).0
}

fn user() -> reqwest::Client {
    client_with(Some(USER_TOKEN))
}

async fn upload(base: &str, query: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = user()
        .post(format!("{base}/datasets?{query}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn start_job(base: &str, body: Value) -> Value {
    let response = user()
        .post(format!("{base}/phases/cognate/start"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

async fn wait_status(base: &str, id: &str, status: &str) -> Value {
    wait_for(
        &format!("job {id} {status}"),
        Duration::from_secs(120),
        || async {
            let job = get_json(&format!("{base}/jobs/{id}")).await;
            (job["status"] == status).then_some(job)
        },
    )
    .await
}

/// A tiny text job on `dataset`.
fn tiny_job(dataset: &str, seed: u64, steps: u64) -> Value {
    json!({"dataset": dataset, "d_model": 16, "n_layers": 1, "n_heads": 1, "d_ff": 32,
           "steps": steps, "variants": 1, "seq_len": 16, "batch_size": 8, "threads": 1,
           "seed": seed})
}

/// The value of an unlabelled counter on `/metrics`.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not on /metrics"))
}

/// Entries of the datasets directory (what an upload may leave behind).
fn dataset_dirs(data_dir: &Path) -> Vec<String> {
    match std::fs::read_dir(data_dir.join("artifacts").join("datasets")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_corpus_is_stored_once_trained_on_by_id_and_its_prepared_data_reused() {
    let data = tempfile::tempdir().unwrap();
    let node = data.path().join("node");
    let server = start_node(&node, "");
    let base = server.base.clone();
    let corpus = "the quick brown fox jumps over the lazy dog. ".repeat(100);
    let sha256 = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(corpus.as_bytes()))
    };

    // The same bytes twice are one dataset.
    let (status, first) = upload(&base, "name=fox&kind=text", corpus.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["sha256"], sha256);
    assert_eq!(first["size_bytes"], corpus.len());
    let reference = first["reference"].as_str().unwrap().to_string();
    assert!(reference.starts_with("ds:"), "{reference}");
    let (status, second) = upload(&base, "name=fox-again&kind=text", corpus.clone()).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["reference"], reference);
    let page = get_json(&format!("{base}/datasets")).await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["datasets"][0]["reference"], reference);
    let builtin: Vec<&str> = page["builtin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert!(builtin.contains(&"mod-mul:97"), "{builtin:?}");
    assert_eq!(dataset_dirs(&node).len(), 1);

    // A job on it: the model names the dataset and its hash; the data was prepared once.
    let job = start_job(&base, tiny_job(&reference, 0, 30)).await;
    let job_id = job["id"].as_str().unwrap().to_string();
    wait_status(&base, &job_id, "completed").await;
    let models = get_json(&format!("{base}/models")).await;
    let model = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["job_id"] == job_id.as_str())
        .unwrap_or_else(|| panic!("no model of job {job_id}: {models}"));
    assert_eq!(model["config"]["dataset"]["corpus"]["id"], reference);
    assert_eq!(model["config"]["dataset"]["corpus"]["sha256"], sha256);
    let metrics = metrics_text(&base).await;
    assert_eq!(counter(&metrics, "grokforge_dataset_cache_misses_total"), 1);
    assert_eq!(counter(&metrics, "grokforge_dataset_cache_hits_total"), 0);

    // A second job on the same corpus reads the prepared data: no second tokenisation.
    let job = start_job(&base, tiny_job(&reference, 1, 30)).await;
    wait_status(&base, job["id"].as_str().unwrap(), "completed").await;
    let metrics = metrics_text(&base).await;
    assert_eq!(counter(&metrics, "grokforge_dataset_cache_misses_total"), 1);
    assert_eq!(counter(&metrics, "grokforge_dataset_cache_hits_total"), 1);

    let detail = get_json(&format!("{base}/datasets/{reference}")).await;
    assert_eq!(detail["used_by"].as_array().unwrap().len(), 2, "{detail}");

    // While a job that has not finished reads it, it cannot be deleted.
    let long = start_job(&base, tiny_job(&reference, 2, 10_000_000)).await;
    let long_id = long["id"].as_str().unwrap().to_string();
    let response = user()
        .delete(format!("{base}/datasets/{reference}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["jobs"], json!([long_id]), "{problem}");
    let response = user()
        .post(format!("{base}/jobs/{long_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    wait_status(&base, &long_id, "cancelled").await;
    let response = user()
        .delete(format!("{base}/datasets/{reference}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = user()
        .get(format!("{base}/datasets/{reference}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(dataset_dirs(&node).is_empty(), "{:?}", dataset_dirs(&node));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_refused_with_413_and_leaves_nothing() {
    let data = tempfile::tempdir().unwrap();
    let node = data.path().join("node");
    let server = start_node(&node, "max_dataset_bytes = 1048576");
    let base = server.base.clone();

    // Streamed without a length: 256 MiB offered against a 1 MiB limit. The node stops
    // reading once it passes the limit, so the test never sends (or stores) most of it.
    let chunks =
        futures::stream::iter((0..256).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 1 << 20])));
    // The node answers 413 and closes the connection with most of the body unread; the kernel
    // then resets it, and a client still writing may see the reset before it reads the answer
    // (HTTP/1.1's early-response race). Either way the upload ends long before 256 MiB.
    let sent = user()
        .post(format!("{base}/datasets?name=big&kind=text"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match sent {
        Ok(response) => {
            assert_eq!(response.status(), 413);
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["limit_bytes"], 1_048_576, "{problem}");
        }
        Err(error) => {
            let text = format!("{error:?}");
            assert!(
                text.contains("BrokenPipe") || text.contains("ConnectionReset"),
                "the upload failed otherwise than by the node closing it: {text}"
            );
        }
    }

    // Declared too large: refused before a byte is read.
    let (status, problem) = upload(&base, "name=big&kind=text", vec![b'a'; (1 << 20) + 1]).await;
    assert_eq!(status, 413, "{problem}");

    // Nothing kept, nothing registered.
    wait_for(
        "the partial upload removed",
        Duration::from_secs(10),
        || async { dataset_dirs(&node).is_empty().then_some(()) },
    )
    .await;
    assert_eq!(get_json(&format!("{base}/datasets")).await["total"], 0);
    // Just under the limit is fine.
    let (status, _) = upload(&base, "name=ok&kind=text", vec![b'a'; 1 << 20]).await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_uploads_are_refused_naming_the_line_and_nothing_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let node = data.path().join("node");
    let server = start_node(&node, "");
    let base = server.base.clone();

    let jsonl = "{\"text\": \"one\"}\n{\"body\": \"no text field\"}\n";
    let (status, problem) = upload(&base, "name=j&kind=jsonl", jsonl).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["line"], 2, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("text"),
        "{problem}"
    );
    let (status, problem) = upload(&base, "name=j&kind=jsonl", "{\"text\": 1}\n[1, 2]\n").await;
    assert_eq!((status, &problem["line"]), (422, &json!(1)), "{problem}");
    let (status, problem) = upload(&base, "kind=text", b"fine\nbad \xff byte\n".to_vec()).await;
    assert_eq!((status, &problem["line"]), (422, &json!(2)), "{problem}");
    let (status, problem) = upload(&base, "kind=text", "").await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = upload(&base, "kind=tokenizer", "{not a tokenizer").await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("tokenizer"),
        "{problem}"
    );
    let (status, problem) = upload(&base, "kind=model", "x").await;
    assert_eq!(
        (status, &problem["field"]),
        (422, &json!("kind")),
        "{problem}"
    );
    // A query parameter cannot name a file: unknown ones are refused.
    let response = user()
        .post(format!("{base}/datasets?path=/etc/passwd"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Reading needs `read`, uploading `user`.
    let response = client_with(Some(READ_TOKEN))
        .post(format!("{base}/datasets"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    assert!(dataset_dirs(&node).is_empty(), "{:?}", dataset_dirs(&node));
    assert_eq!(get_json(&format!("{base}/datasets")).await["total"], 0);

    // A tokenizer and a corpus: a job may use them together, but only by kind.
    let tokenizer = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "unk_token": "[UNK]",
        "vocab": {"[UNK]": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4}}}"#;
    let (status, tokenizer) = upload(&base, "name=words&kind=tokenizer", tokenizer).await;
    assert_eq!(status, 201, "{tokenizer}");
    assert_eq!(tokenizer["records"], 5, "the vocabulary size");
    let (status, corpus) = upload(
        &base,
        "name=cats&kind=jsonl&text_field=t",
        "{\"t\": \"the cat sat\"}\n".repeat(64),
    )
    .await;
    assert_eq!(status, 201, "{corpus}");
    assert_eq!(corpus["records"], 64);
    let swapped =
        json!({"dataset": tokenizer["reference"], "tokenizer_dataset": corpus["reference"]});
    let response = user()
        .post(format!("{base}/phases/cognate/start"))
        .json(&swapped)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "dataset", "{problem}");
    let unknown = json!({"dataset": "ds:0190a4b2-0000-7000-8000-000000000000"});
    let response = user()
        .post(format!("{base}/phases/cognate/start"))
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let mut job = tiny_job(corpus["reference"].as_str().unwrap(), 0, 10);
    job["tokenizer_dataset"] = tokenizer["reference"].clone();
    let job = start_job(&base, job).await;
    wait_status(&base, job["id"].as_str().unwrap(), "completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refuses_to_resume_on_bytes_that_differ_from_the_ones_it_was_queued_on() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start_node(data.path(), "");
    let base = server.base.clone();
    let corpus: String = (0..400)
        .map(|i| format!("sentence number {i} of the corpus\n"))
        .collect();
    let (status, dataset) = upload(&base, "name=corpus&kind=text", corpus).await;
    assert_eq!(status, 201, "{dataset}");
    let file = data
        .path()
        .join("artifacts")
        .join(dataset["file_path"].as_str().unwrap());
    assert!(file.is_file(), "{}", file.display());

    let mut spec = tiny_job(dataset["reference"].as_str().unwrap(), 4, 100_000);
    spec["checkpoint_every"] = json!(20);
    let job = start_job(&base, spec).await;
    let id = job["id"].as_str().unwrap().to_string();
    common::wait_for_checkpoint(&base, &id, 1).await;
    assert!(
        !server
            .signal_and_wait(libc::SIGKILL, Duration::from_secs(10))
            .success()
    );
    drop(server);

    // The stored bytes change while the node is down (a disk fault, a hand edit).
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(b"one more line\n");
    std::fs::write(&file, bytes).unwrap();

    let server = start_node(data.path(), "");
    let failed = wait_status(&server.base, &id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("changed"), "{error}");
    assert!(
        error.contains(dataset["sha256"].as_str().unwrap()),
        "{error}"
    );
    // Not retried: the bytes would differ on every attempt.
    assert_eq!(failed["attempts"], 2, "{failed}");
}
