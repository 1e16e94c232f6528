//! `grokforge models …` on a data directory that a real node trained into.

mod common;

use std::time::Duration;

use common::{client, get_json, grokforge, start, wait_for};
use serde_json::{Value, json};

fn models(data_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = grokforge()
        .arg("models")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.success(), format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_export_gc_and_delete_the_models_a_job_trained() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    let body = json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                      "batch_size": 16, "steps": 10, "eval_every": 5, "variants": 2, "threads": 1});
    let job: Value = client()
        .post(format!("{}/phases/cognate/start", server.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let base = server.base.clone();
    wait_for("the job to complete", Duration::from_secs(60), || async {
        (get_json(&format!("{base}/jobs/{id}")).await["status"] == "completed").then_some(())
    })
    .await;
    assert!(
        server
            .signal_and_wait(libc::SIGTERM, Duration::from_secs(15))
            .success()
    );

    let (ok, listing) = models(data.path(), &["list", "--phase", "cognate"]);
    assert!(ok, "{listing}");
    assert!(
        listing.contains("cognate-v0") && listing.contains("cognate-v1"),
        "{listing}"
    );

    let (ok, winners) = models(data.path(), &["list", "--winner"]);
    assert!(ok, "{winners}");
    let winner_id = winners
        .lines()
        .find_map(|line| {
            line.split_whitespace()
                .find(|w| uuid::Uuid::parse_str(w).is_ok())
        })
        .expect("a winner row")
        .to_string();

    let (ok, shown) = models(data.path(), &["show", &winner_id]);
    assert!(ok, "{shown}");
    let json_end = shown.rfind('}').expect("a JSON record");
    let record: Value = serde_json::from_str(&shown[..=json_end]).unwrap();
    assert_eq!(record["job_id"], id.as_str());
    assert_eq!(record["winner"], true);
    assert_eq!(record["sha256"].as_str().unwrap().len(), 64);

    let (ok, exported) = models(data.path(), &["export", &winner_id]);
    assert!(ok, "{exported}");
    let line = exported
        .lines()
        .find(|l| l.starts_with("export "))
        .expect("the export line");
    let path = line.rsplit(": ").next().unwrap();
    assert!(path.ends_with(".zip"), "{line}");
    assert!(std::path::Path::new(path).exists(), "{exported}");

    let (ok, unknown) = models(
        data.path(),
        &["show", "01933b3e-0000-7000-8000-000000000000"],
    );
    assert!(!ok, "an unknown id fails");
    assert!(
        unknown.contains("01933b3e-0000-7000-8000-000000000000"),
        "{unknown}"
    );

    let (ok, gc) = models(data.path(), &["gc", "--dry-run"]);
    assert!(ok, "{gc}");
    assert!(
        gc.contains("would remove 0 entries"),
        "nothing is orphaned: {gc}"
    );

    let (ok, deleted) = models(data.path(), &["delete", &winner_id]);
    assert!(ok, "{deleted}");
    let (_, listing) = models(data.path(), &["list"]);
    assert!(!listing.contains(&winner_id), "{listing}");
}
