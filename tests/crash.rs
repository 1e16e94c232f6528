//! Crash at any point: a node killed at a moment of a job — during the steps, in the middle of a
//! checkpoint write, between a checkpoint's rename and its directory sync, between a model's
//! files and its registry row, between the end of the run and the registry — comes back on the
//! same data directory, resumes the job and ends with weights identical to a run that was never
//! interrupted: every variant, each registered once, no unfinished file left behind.
//!
//! The moments come from the crash points of `grokforge_config::crashpoint`
//! (`GROKFORGE_CRASH_AT`), where the node sends itself SIGKILL, plus kills from outside after a
//! random delay. `make test` runs three fixed points and the SIGTERM check;
//! `scripts/crash-anywhere.sh` runs `GROKFORGE_CRASH_RUNS` points drawn at random
//! (`GROKFORGE_CRASH_SEED`), for RELIABILITY.md.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{get_json, grokforge, start_command, wait_for};
use grokforge_config::crashpoint;
use serde_json::{Value, json};

const STEPS: u64 = 240;
const VARIANTS: u64 = 2;
const CHECKPOINT_EVERY: u64 = 40;

fn spec() -> Value {
    json!({
        "dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
        "batch_size": 16, "steps": STEPS, "eval_every": 40, "checkpoint_every": CHECKPOINT_EVERY,
        "variants": VARIANTS, "threads": 1, "seed": 11, "grokfast": "ema"
    })
}

/// How a run is interrupted.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// At a crash point, the n-th time it is reached; SIGTERM instead of SIGKILL with `term`.
    At {
        point: &'static str,
        n: u64,
        term: bool,
    },
    /// SIGKILL from outside, this long after the job was accepted.
    After(Duration),
}

fn node(data: &Path, crash_at: Option<String>) -> common::Server {
    let config = common::token_config(data);
    let mut command = grokforge();
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::inherit());
    if let Some(spec) = crash_at {
        command.env("GROKFORGE_CRASH_AT", spec);
    }
    start_command(&mut command).0
}

async fn completed(base: &str, id: &str) -> Value {
    wait_for(
        &format!("job {id} completed"),
        Duration::from_secs(180),
        || async {
            let job = get_json(&format!("{base}/jobs/{id}")).await;
            assert_ne!(job["status"], "failed", "{job:#}");
            (job["status"] == "completed").then_some(job)
        },
    )
    .await
}

/// The logits of every variant of a job, from its files.
fn weights(data: &Path, id: &str) -> Vec<Vec<f32>> {
    let jobs = data.join("artifacts").join("jobs");
    (0..VARIANTS)
        .map(|variant| common::logits_in(&jobs.join(id).join(format!("variant-{variant}"))))
        .collect()
}

/// Files an interrupted write left anywhere under `dir`.
fn unfinished_writes(dir: &Path) -> Vec<String> {
    common::files_under(dir)
        .into_iter()
        .map(|path| path.display().to_string())
        .filter(|path| path.contains(".tmp-"))
        .collect()
}

/// The uninterrupted run every crashed one is compared with.
async fn reference() -> Vec<Vec<f32>> {
    let data = tempfile::tempdir().unwrap();
    let server = node(data.path(), None);
    let id = common::start_cognate(&server.base, &spec()).await;
    completed(&server.base, &id).await;
    weights(data.path(), &id)
}

/// Runs the job, interrupts it with `crash`, restarts the node and checks the outcome.
async fn crash_and_resume(crash: Crash, reference: &[Vec<f32>]) {
    let data = tempfile::tempdir().unwrap();
    let crash_at = match crash {
        Crash::At { point, n, term } => {
            Some(format!("{point}:{n}{}", if term { ":term" } else { "" }))
        }
        Crash::After(_) => None,
    };
    let mut server = node(data.path(), crash_at);
    let id = common::start_cognate(&server.base, &spec()).await;
    let accepted = Instant::now();
    match crash {
        Crash::At { term, .. } => {
            // The node signals itself; with SIGTERM it shuts down on its own.
            let deadline = Instant::now() + Duration::from_secs(120);
            let status = loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "{crash:?}: the node did not go down"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            use std::os::unix::process::ExitStatusExt;
            if term {
                assert!(
                    status.success(),
                    "{crash:?}: a SIGTERM shutdown is clean: {status}"
                );
            } else {
                assert_eq!(status.signal(), Some(libc::SIGKILL), "{crash:?}: {status}");
            }
        }
        Crash::After(delay) => {
            tokio::time::sleep(delay.saturating_sub(accepted.elapsed())).await;
            server.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
        }
    }
    drop(server);

    let server = node(data.path(), None);
    let job = completed(&server.base, &id).await;
    if let Crash::At { .. } = crash {
        assert!(job["attempts"].as_u64().unwrap() >= 2, "{crash:?}: {job:#}");
    }
    let resumed = weights(data.path(), &id);
    assert_eq!(
        resumed, reference,
        "{crash:?}: the weights differ from the uninterrupted run's"
    );

    // Each variant registered once, whatever the attempt that registered it.
    let models = get_json(&format!("{}/models", server.base)).await;
    let mine: Vec<&Value> = models
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["job_id"] == id.as_str())
        .collect();
    assert_eq!(mine.len() as u64, VARIANTS, "{crash:?}: {models:#}");
    let left = unfinished_writes(&data.path().join("artifacts").join("jobs"));
    assert!(
        left.is_empty(),
        "{crash:?}: unfinished writes left: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_any_point_resumes_to_the_uninterrupted_weights() {
    let reference = reference().await;
    let crashes = match std::env::var("GROKFORGE_CRASH_RUNS") {
        Ok(runs) => drawn(runs.parse().expect("GROKFORGE_CRASH_RUNS is a count")),
        // make test: one moment of each kind that loses the most — mid-steps of the second
        // variant, half a checkpoint on disk, a model's files without their registry row.
        Err(_) => vec![
            Crash::At {
                point: crashpoint::STEP,
                n: STEPS + 77,
                term: false,
            },
            Crash::At {
                point: crashpoint::CHECKPOINT_WRITE,
                n: 3,
                term: false,
            },
            Crash::At {
                point: crashpoint::MODEL_FILES,
                n: 2,
                term: false,
            },
        ],
    };
    for (index, crash) in crashes.iter().enumerate() {
        eprintln!("crash {}/{}: {crash:?}", index + 1, crashes.len());
        crash_and_resume(*crash, &reference).await;
        eprintln!(
            "crash {}/{}: {crash:?}: resumed, identical",
            index + 1,
            crashes.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_a_checkpoint_write_leaves_no_partial_file_and_the_job_resumes() {
    let reference = reference().await;
    crash_and_resume(
        Crash::At {
            point: crashpoint::CHECKPOINT_WRITE,
            n: 2,
            term: true,
        },
        &reference,
    )
    .await;
}

/// `runs` moments drawn from `GROKFORGE_CRASH_SEED` (printed, so a failure can be rerun).
fn drawn(runs: usize) -> Vec<Crash> {
    let seed: u64 = std::env::var("GROKFORGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("GROKFORGE_CRASH_SEED={seed}");
    // splitmix64: enough for drawing moments, and the same sequence everywhere.
    let mut state = seed;
    let mut next = move |bound: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    };
    let checkpoints = VARIANTS * (STEPS / CHECKPOINT_EVERY);
    (0..runs)
        .map(|_| match next(6) {
            0 => Crash::At {
                point: crashpoint::STEP,
                n: 1 + next(VARIANTS * STEPS),
                term: false,
            },
            1 => Crash::At {
                point: crashpoint::CHECKPOINT_WRITE,
                n: 1 + next(checkpoints),
                term: false,
            },
            2 => Crash::At {
                point: crashpoint::CHECKPOINT_RENAME,
                n: 1 + next(checkpoints),
                term: false,
            },
            3 => Crash::At {
                point: crashpoint::MODEL_FILES,
                n: 1 + next(VARIANTS),
                term: false,
            },
            4 => Crash::At {
                point: crashpoint::HANDOFF,
                n: 1,
                term: false,
            },
            _ => Crash::After(Duration::from_millis(200 + next(4_000))),
        })
        .collect()
}
