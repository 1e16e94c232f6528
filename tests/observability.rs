//! The observability kit in examples/observability/: every `grokforge_*` metric its alerting
//! rules and its Grafana dashboard name is one a real node exports, and `promtool` accepts the
//! rules.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{client, get_json, metrics_text, start, wait_for};
use serde_json::{Value, json};

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/observability")
        .join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every token of `text` that starts with `grokforge_` (a maximal run of metric-name
/// characters not preceded by one).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("grokforge_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name_char);
        let tail = &rest[at..];
        let end = tail.find(|c| !is_name_char(c)).unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names the exposition declares (`# HELP name …` and `# TYPE name …`).
fn exposed(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| {
            line.strip_prefix("# TYPE ")
                .or_else(|| line.strip_prefix("# HELP "))
        })
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The metric names the node registers, as string literals in its metrics modules.
fn registered() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["actors/src/metrics.rs", "gateway/src/metrics.rs"]
        .iter()
        .flat_map(|file| {
            let source = read(&root.join(file));
            metric_tokens(&source)
                .into_iter()
                .filter(move |name| source.contains(&format!("\"{name}\"")))
        })
        .collect()
}

/// `name` itself, and for a histogram's series the histogram's name.
fn candidates(name: &str) -> Vec<&str> {
    let mut forms = vec![name];
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            forms.push(base);
        }
    }
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_name_is_one_the_node_exports() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let base = server.base.clone();

    // One tiny job, so the job and training metrics have values.
    let body = json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2,
                      "d_ff": 32, "batch_size": 16, "steps": 40, "eval_every": 20,
                      "checkpoint_every": 20, "variants": 1, "threads": 1, "seed": 3});
    let response = client()
        .post(format!("{base}/phases/cognate/start"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let done = wait_for(
        &format!("job {id} to finish"),
        Duration::from_secs(120),
        || async {
            let job = get_json(&format!("{base}/jobs/{id}")).await;
            matches!(
                job["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
            .then_some(job)
        },
    )
    .await;
    assert_eq!(done["status"], "completed", "{done:#}");

    let exposition = metrics_text(&base).await;
    let exposed = exposed(&exposition);
    // What must be on the page itself after a job: plain metrics, and vecs that now have a
    // label value.
    for name in [
        "grokforge_jobs_total",
        "grokforge_training_steps_total",
        "grokforge_training_loss",
        "grokforge_training_accuracy",
        "grokforge_training_step_duration_seconds",
        "grokforge_websocket_connections",
        "grokforge_websocket_delivery_seconds",
        "grokforge_cluster_nodes",
        "grokforge_http_requests_total",
        "grokforge_build_info",
    ] {
        assert!(
            exposed.contains(name),
            "{name} not on /metrics:\n{exposition}"
        );
    }
    assert!(
        exposition.contains("grokforge_jobs_total{status=\"completed\"} 1"),
        "{exposition}"
    );

    // A metric vec with no label value yet (no breaker has been created, no actor restarted,
    // no alert fired, no Redis bridge) has no HELP/TYPE lines at all: the prometheus crate
    // renders nothing for an empty family. Such a name is accepted when the node registers
    // it, i.e. it is a string literal in actors/src/metrics.rs or gateway/src/metrics.rs, so a
    // misspelt or invented name still fails.
    let registered = registered();
    let mut checked = BTreeSet::new();
    let mut unknown = Vec::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let names = metric_tokens(&read(&kit(file)));
        assert!(!names.is_empty(), "{file} names no grokforge_ metric");
        for name in names {
            let known = candidates(&name)
                .into_iter()
                .any(|form| exposed.contains(form) || registered.contains(form));
            if !known {
                unknown.push(format!("{file}: {name}"));
            }
            checked.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the kit names that the node does not export: {unknown:#?}\n\
         exposed: {exposed:#?}\nregistered: {registered:#?}"
    );
    // The scan saw what the kit is about.
    for name in [
        "grokforge_alerts_firing",
        "grokforge_breaker_state",
        "grokforge_actor_restarts_total",
        "grokforge_websocket_delivery_seconds_bucket",
    ] {
        assert!(checked.contains(name), "{name} not found in the kit");
    }
    drop(server);
}

#[test]
fn the_dashboard_is_grafana_json_with_a_prometheus_input() {
    let dashboard: Value = serde_json::from_str(&read(&kit("grafana-dashboard.json")))
        .expect("grafana-dashboard.json is JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel:#}");
        for target in panel["targets"].as_array().unwrap() {
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let rules = kit("alerts.yml");
    let output = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // CI installs it (.ci/run: Debian's `prometheus` package ships promtool); there a
            // missing promtool is a failure, not a skip.
            let required = ["CI", "GROKFORGE_REQUIRE_PROMTOOL"]
                .iter()
                .any(|key| std::env::var_os(key).is_some_and(|v| !v.is_empty()));
            assert!(
                !required,
                "promtool is not on PATH, and CI requires it (apt-get install prometheus)"
            );
            eprintln!(
                "SKIPPED: promtool is not on PATH, so {} is not checked \
                 (apt-get install prometheus installs it; with CI set this test fails)",
                rules.display()
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("SUCCESS"), "{stdout}\n{stderr}");
}

#[test]
fn the_scan_finds_names_and_strips_histogram_suffixes() {
    let names = metric_tokens(
        "rate(grokforge_a_total[1m]) x_grokforge_not \"grokforge_b_bucket\"{le} grokforge_",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["grokforge_", "grokforge_a_total", "grokforge_b_bucket"]
    );
    assert_eq!(
        candidates("grokforge_b_bucket"),
        ["grokforge_b_bucket", "grokforge_b"]
    );
}
