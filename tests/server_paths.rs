//! No request may make the node read or write a path of its choosing: a start body that names
//! a file is refused with 422 naming the field, nothing is queued, and no field of the
//! documented start body smuggles a path into a job.

mod common;

use common::{USER_TOKEN, client_with, get_json, start};
use serde_json::{Value, json};

/// The fields of the start body that name a file on the server (`TrainSpec`'s path fields).
const PATH_FIELDS: [&str; 4] = ["text", "tokenizer", "out", "resume"];

async fn post_start(base: &str, body: &Value) -> reqwest::Response {
    client_with(Some(USER_TOKEN))
        .post(format!("{base}/phases/cognate/start"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_that_names_a_server_file_is_refused_and_nothing_is_queued() {
    let data = tempfile::tempdir().unwrap();
    let secret = data.path().join("secret.txt");
    std::fs::write(&secret, "the node's own file\n").unwrap();
    let server = start(&data.path().join("node"));
    let base = server.base.clone();

    for field in PATH_FIELDS {
        let body = json!({field: secret, "steps": 5, "variants": 1});
        let response = post_start(&base, &body).await;
        assert_eq!(response.status(), 422, "{field}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("names a file on the server"), "{detail}");
    }
    // Several at once: the first is named, and it is still refused as a whole.
    let body = json!({"tokenizer": "/etc/hostname", "text": "/etc/shadow"});
    let problem: Value = post_start(&base, &body).await.json().await.unwrap();
    assert_eq!(problem["field"], "text");

    assert_eq!(get_json(&format!("{base}/jobs")).await, json!([]));
}

/// A schemathesis-style sweep: every documented field of the start body, and the path
/// fields the document leaves out, each given a path. Whatever the node answers, no queued
/// job has a path field set, and the document does not offer the path fields at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_field_of_the_start_body_smuggles_a_path_into_a_job() {
    let data = tempfile::tempdir().unwrap();
    let server = start(&data.path().join("node"));
    let base = server.base.clone();

    let document = get_json(&format!("{base}/openapi.json")).await;
    let schema = &document["components"]["schemas"]["StartJobRequest"];
    assert_eq!(schema["additionalProperties"], false);
    let properties = schema["properties"].as_object().unwrap();
    for field in PATH_FIELDS {
        assert!(!properties.contains_key(field), "{field} is documented");
    }
    let mut fields: Vec<&str> = properties.keys().map(String::as_str).collect();
    fields.extend(PATH_FIELDS);

    let path = "/etc/passwd";
    let mut queued = Vec::new();
    for field in fields {
        // Small settings, so that a job this queues costs nothing; the swept field wins.
        let mut body = json!({"steps": 1, "variants": 1, "d_model": 8, "n_layers": 1,
                              "n_heads": 1, "d_ff": 8, "batch_size": 8});
        body[field] = json!(path);
        let response = post_start(&base, &body).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        match status {
            202 => queued.push((field, answer)),
            400 | 422 => {}
            other => panic!("{field}: unexpected {other}: {answer}"),
        }
    }
    for (field, job) in &queued {
        let id = job["id"].as_str().unwrap();
        let stored = get_json(&format!("{base}/jobs/{id}")).await;
        for path_field in PATH_FIELDS {
            assert!(
                stored["spec"][path_field].is_null(),
                "{field} set {path_field}: {stored}"
            );
        }
        assert!(!stored["spec"].to_string().contains(path) || *field == "text_field");
    }
}
