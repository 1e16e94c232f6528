//! Paired trajectories at the paper's size: a grokforge run of x·y mod 97 and its replay in
//! PyTorch from the same initial weights over the same batches (`tests/support/paired.rs`,
//! `benches/paired_trajectory.py`), per configuration and seed of the `grokking` bench.
//!
//! ```text
//! cargo bench -p grokforge-training-core --bench trajectory
//! GROKFORGE_BENCH_CONFIGS=ma GROKFORGE_BENCH_SEEDS=2 GROKFORGE_BENCH_STEPS=4000 \
//!   GROKFORGE_BENCH_DTYPES=float32 cargo bench -p grokforge-training-core --bench trajectory
//! ```
//!
//! It prints, per run, where the losses of grokforge and PyTorch float32 first differ by more
//! than 0.1 % and where PyTorch's own float32 and float64 runs do (the float32 rounding alone),
//! how far apart the final weights are, and the validation accuracy of all three side by side.
//! The short test of the same comparison is `tests/pytorch_trajectory.rs`.
//!
//! Knobs (environment): `GROKFORGE_BENCH_CONFIGS` (`baseline,ema,ma`; also `baseline-wd005`, `baseline-wd01`),
//! `GROKFORGE_BENCH_SEEDS` (`2`), `GROKFORGE_BENCH_STEPS` (300), `GROKFORGE_BENCH_DTYPES`
//! (`float32,float64`: PyTorch's runs; float64 roughly doubles PyTorch's time),
//! `GROKFORGE_BENCH_TARGET` (stop at this validation accuracy; default: run every step),
//! `GROKFORGE_BENCH_TRAJECTORY_THREADS` (LibTorch threads on both sides; default the logical CPUs).
//! Needs the python of `scripts/libtorch-env.sh` with torch importable (`scripts/torch-python.sh`).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use grokforge_training_core::device::set_num_threads;
use grokforge_training_core::{Dataset, backend_description, parse_device};
use serde_json::{Value, json};

use common::paper::Config;
use common::{env_list, env_value, logical_cpus};
use support::TorchPython;
use support::paired::{
    Comparison, LOSS_PART, TAIL_STEPS, compare, replay_in_torch, run_grokforge, write_cases,
};

/// Everything the bench reads from the environment, read once.
#[derive(Debug, Clone)]
struct Settings {
    configs: Vec<Config>,
    seeds: Vec<u64>,
    steps: u64,
    dtypes: String,
    target: Option<f64>,
    threads: usize,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let dtypes: Vec<String> = env_list("GROKFORGE_BENCH_DTYPES", "float32,float64")?;
        if !dtypes.iter().any(|d| d == "float32")
            || dtypes.iter().any(|d| d != "float32" && d != "float64")
        {
            return Err("GROKFORGE_BENCH_DTYPES: float32, optionally float64".into());
        }
        let target: f64 = env_value("GROKFORGE_BENCH_TARGET", f64::NAN)?;
        let settings = Settings {
            configs: env_list("GROKFORGE_BENCH_CONFIGS", "baseline,ema,ma")?,
            seeds: env_list("GROKFORGE_BENCH_SEEDS", "2")?,
            steps: env_value("GROKFORGE_BENCH_STEPS", 300)?,
            dtypes: dtypes.join(","),
            target: (!target.is_nan()).then_some(target),
            threads: env_value("GROKFORGE_BENCH_TRAJECTORY_THREADS", logical_cpus())?,
        };
        if settings.steps == 0 || settings.threads == 0 {
            return Err("steps and the thread count must be positive".into());
        }
        Ok(settings)
    }
}

fn main() {
    // `cargo nextest run --all-targets` lists every target's tests with `--list`; a benchmark
    // has none to offer, and must not start measuring.
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    grokforge_training_core::allocator::keep_freed_memory();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("trajectory: {message}");
            std::process::exit(2);
        }
    };
    let python = match TorchPython::find() {
        Ok(python) => python,
        Err(message) => {
            eprintln!("trajectory: {message}");
            std::process::exit(2);
        }
    };
    common::announce_machine("trajectory");
    set_num_threads(settings.threads);
    let device = parse_device("cpu").unwrap();
    println!(
        "# backend: {}; settings: {settings:?}",
        backend_description(&device)
    );
    let started = Instant::now();
    for &seed in &settings.seeds {
        for &config in &settings.configs {
            let comparison = run_pair(&settings, &python, config, seed, &device);
            print_pair(config, seed, &comparison);
        }
    }
    println!(
        "# total bench time {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

fn run_pair(
    settings: &Settings,
    python: &TorchPython,
    config: Config,
    seed: u64,
    device: &grokforge_training_core::Device,
) -> (Comparison, Value) {
    let mut spec = config.spec(seed, settings.steps, 1.0);
    spec.stop_at_val_acc = settings.target;
    let dataset = Arc::new(
        Dataset::prepare(
            &spec.data_source().unwrap(),
            &spec.dataset_options(None).unwrap(),
        )
        .unwrap(),
    );
    let run_config = spec.run_config(0, &dataset).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let name = format!("{}-seed{seed}", config.name());
    eprintln!("{name}: grokforge, {} steps", settings.steps);
    let run = run_grokforge(
        &name,
        run_config,
        &dataset,
        device,
        folder.path(),
        Vec::new(),
        true,
    );
    write_cases(folder.path(), &dataset, std::slice::from_ref(&run), true);
    eprintln!("{name}: PyTorch ({})", settings.dtypes);
    let report = replay_in_torch(python, folder.path(), &settings.dtypes, settings.threads);
    let comparison = compare(&run, &report);
    let case = report["cases"][0].clone();
    let line = json!({
        "bench": "trajectory",
        "config": config.name(),
        "settings": config.describe(),
        "seed": seed,
        "steps": comparison.steps,
        "grokforge_seconds": run.seconds,
        "torch_seconds": comparison.torch_seconds,
        "max_loss_diff": comparison.max_loss_diff,
        "loss_noise": comparison.loss_noise,
        "first_parting_step": comparison.first_parting_step,
        "noise_parting_step": noise_parting_step(&case).map(|s| s.map_or(json!("never"), |s| json!(s))),
        "params_vs_f32": comparison.params_vs_f32,
        "params_vs_f64": comparison.params_vs_f64,
        "params_noise": comparison.params_noise,
        "val_accuracy": comparison.val_accuracy.last().map(|v| json!({"step": v.0, "grokforge": v.1, "torch_f32": v.2})),
        "train_accuracy_last_steps": [comparison.final_train_accuracy.0, comparison.final_train_accuracy.1],
    });
    println!("{line}");
    (comparison, case)
}

/// The first step at which PyTorch's float32 and float64 losses differ by more than
/// [`LOSS_PART`] (where float32 rounding alone parts two runs): `None` without a float64 run,
/// `Some(None)` if they never part.
fn noise_parting_step(case: &Value) -> Option<Option<usize>> {
    let losses = |dtype: &str| -> Option<Vec<f64>> {
        Some(
            case["runs"]
                .get(dtype)?
                .get("losses")?
                .as_array()?
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect(),
        )
    };
    let (a, b) = (losses("float32")?, losses("float64")?);
    Some(
        a.iter()
            .zip(&b)
            .position(|(x, y)| (x - y).abs() > LOSS_PART * y.abs().max(1e-3))
            .map(|index| index + 1),
    )
}

fn print_pair(config: Config, seed: u64, (comparison, case): &(Comparison, Value)) {
    println!(
        "\n## {} ({}), seed {seed}\n",
        config.name(),
        config.describe()
    );
    println!("{}\n", comparison.describe());
    let part = |s: Option<usize>| s.map_or("never".to_string(), |s| format!("step {s}"));
    println!(
        "losses part (> {:.1} %): grokforge vs PyTorch f32 at {}; PyTorch f32 vs f64 at {}",
        LOSS_PART * 100.0,
        part(comparison.first_parting_step),
        noise_parting_step(case).map_or("(no float64 run)".to_string(), part),
    );
    println!(
        "training accuracy over the last {TAIL_STEPS} steps: grokforge {:.3}, PyTorch f32 {:.3}\n",
        comparison.final_train_accuracy.0, comparison.final_train_accuracy.1
    );
    let f64_evals: Vec<f64> = case["runs"]
        .get("float64")
        .and_then(|r| r["evals"].as_array())
        .map(|evals| {
            evals
                .iter()
                .map(|e| e["val_accuracy"].as_f64().unwrap())
                .collect()
        })
        .unwrap_or_default();
    println!("| step | grokforge val acc | PyTorch f32 | PyTorch f64 |");
    println!("|--:|--:|--:|--:|");
    let rows = &comparison.val_accuracy;
    // About twenty rows, always the last.
    let every = rows.len().div_ceil(20).max(1);
    for (index, (step, ours, theirs)) in rows.iter().enumerate() {
        if index % every != every - 1 && index + 1 != rows.len() {
            continue;
        }
        let exact = f64_evals
            .get(index)
            .map_or("–".to_string(), |a| format!("{a:.3}"));
        println!("| {step} | {ours:.3} | {theirs:.3} | {exact} |");
    }
}
