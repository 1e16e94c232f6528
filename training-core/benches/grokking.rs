//! Time to grok: optimizer steps and wall time until 95 % validation accuracy on x·y mod 97 with
//! the Grokfast paper's settings, for Grokfast-EMA, Grokfast-MA, the paper's baseline and the
//! fair baselines (no filter, the filter's own weight decay), over several seeds: the paper's
//! table, with medians and ranges. Run on an idle machine (see `benches/README.md`):
//!
//! ```text
//! scripts/bench-training.sh --paper-table            # five seeds, every config
//! cargo bench -p grokforge-training-core --bench grokking
//! ```
//!
//! The paper's settings (Lee et al. 2024, `main.py` of the reference code): the `grokfast-paper`
//! model (2 layers, d = 128, 4 heads), a 50/50 train/validation split, Adam (lr 1e-3, betas
//! (0.9, 0.98), L2 weight decay), batch 512 with the short last batch of each epoch kept, a 10-step
//! linear learning-rate warm-up, validation after every epoch. The configurations:
//!
//! | config           | filter                      | weight decay | compared with            |
//! |------------------|-----------------------------|--------------|--------------------------|
//! | `ema`            | EMA, α 0.98, λ 2            | 0.005        | `baseline`, `baseline-wd005` |
//! | `ma`             | MA, window 100, λ 5 (mean)  | 0.01         | `baseline`, `baseline-wd01`  |
//! | `baseline`       | none (the paper's baseline) | 0            |                          |
//! | `baseline-wd005` | none (EMA's fair baseline)  | 0.005        |                          |
//! | `baseline-wd01`  | none (MA's fair baseline)   | 0.01         |                          |
//!
//! A run stops at the first validation with accuracy ≥ the target, or at its step cap; a capped
//! run is reported as such, its steps count as a lower bound in the medians, and a speed-up over
//! a capped baseline is a lower bound too. The wall time covers everything the run does (model
//! initialisation, training, the per-epoch validations).
//!
//! Knobs (environment): `GROKFORGE_BENCH_CONFIGS` (`ema,ma,baseline,baseline-wd005,baseline-wd01`),
//! `GROKFORGE_BENCH_SEEDS` (`0,1,2,3,4`; the seed also draws the split),
//! `GROKFORGE_BENCH_BASELINE_CAP` (20000 steps), `GROKFORGE_BENCH_GROKFAST_CAP` (5000),
//! `GROKFORGE_BENCH_TARGET` (0.95), `GROKFORGE_BENCH_GROKKING_THREADS` (LibTorch threads; default
//! the logical CPUs).
//!
//! Output: one JSON line per run (`{"bench": "grokking", ...}`), progress on stderr, and a
//! Markdown summary: per config the median and range over seeds beside the paper's figure, the
//! filters' speed-ups against both baselines in steps and in wall time, and every run by seed.

mod common;

use std::sync::Arc;
use std::time::Instant;

use grokforge_training_core::device::set_num_threads;
use grokforge_training_core::{
    Dataset, Progress, RunControl, StopReason, Trainer, TrainingObserver, backend_description,
    parse_device,
};
use serde_json::json;

use common::paper::Config;
use common::{backend_impl, env_list, env_value, logical_cpus, median};

/// The paper's claim for this bench: Grokfast-EMA groks within this wall time on two cores.
const EMA_TARGET_SECONDS: f64 = 90.0;
/// How often a long run reports where it is.
const PROGRESS_EVERY_SECONDS: f64 = 15.0;

/// Everything the bench reads from the environment, read once.
#[derive(Debug, Clone)]
struct Settings {
    configs: Vec<Config>,
    seeds: Vec<u64>,
    baseline_cap: u64,
    grokfast_cap: u64,
    target: f64,
    threads: usize,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let settings = Settings {
            configs: env_list(
                "GROKFORGE_BENCH_CONFIGS",
                "ema,ma,baseline,baseline-wd005,baseline-wd01",
            )?,
            seeds: env_list("GROKFORGE_BENCH_SEEDS", "0,1,2,3,4")?,
            baseline_cap: env_value("GROKFORGE_BENCH_BASELINE_CAP", 20_000)?,
            grokfast_cap: env_value("GROKFORGE_BENCH_GROKFAST_CAP", 5_000)?,
            target: env_value("GROKFORGE_BENCH_TARGET", 0.95)?,
            threads: env_value("GROKFORGE_BENCH_GROKKING_THREADS", logical_cpus())?,
        };
        if settings.baseline_cap == 0 || settings.grokfast_cap == 0 || settings.threads == 0 {
            return Err("step caps and the thread count must be positive".into());
        }
        if !(0.0..=1.0).contains(&settings.target) {
            return Err(format!(
                "GROKFORGE_BENCH_TARGET must be in [0, 1], got {}",
                settings.target
            ));
        }
        Ok(settings)
    }

    fn cap(&self, config: Config) -> u64 {
        if config.is_grokfast() {
            self.grokfast_cap
        } else {
            self.baseline_cap
        }
    }
}

/// One finished run.
#[derive(Debug, Clone)]
struct RunResult {
    config: Config,
    seed: u64,
    /// The step of the validation that reached the target, or the cap.
    steps: u64,
    reached: bool,
    seconds: f64,
    final_val_acc: Option<f64>,
}

fn main() {
    // `cargo nextest run --all-targets` lists every target's tests with `--list`; a benchmark
    // has none to offer, and must not start measuring.
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    // As the grokforge binary does (before any thread exists).
    grokforge_training_core::allocator::keep_freed_memory();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("grokking: {message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&settings) {
        eprintln!("grokking: {message}");
        std::process::exit(1);
    }
}

fn run(settings: &Settings) -> Result<(), String> {
    common::announce_machine("grokking");
    set_num_threads(settings.threads);
    let device = parse_device("cpu").map_err(|e| e.to_string())?;
    let backend = backend_description(&device);
    println!("# backend: {backend}; settings: {settings:?}");
    let started = Instant::now();
    let mut results = Vec::new();
    // Seed by seed, so an interrupted run still has every config for its first seeds.
    for &seed in &settings.seeds {
        for &config in &settings.configs {
            let result = run_one(settings, config, seed, &device, &backend)?;
            results.push(result);
        }
    }
    print_summary(settings, &results, &backend);
    println!(
        "# total bench time {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_one(
    settings: &Settings,
    config: Config,
    seed: u64,
    device: &grokforge_training_core::Device,
    backend: &str,
) -> Result<RunResult, String> {
    let cap = settings.cap(config);
    let spec = config.spec(seed, cap, settings.target);
    let start = Instant::now();
    let data = Arc::new(
        Dataset::prepare(
            &spec.data_source().map_err(|e| e.to_string())?,
            &spec.dataset_options(None).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?,
    );
    let run_config = spec.run_config(0, &data).map_err(|e| e.to_string())?;
    let mut trainer = Trainer::new(run_config, data, device).map_err(|e| e.to_string())?;
    let mut progress = ProgressLog::new(format!("{} seed {seed}", config.name()), start);
    let outcome = trainer
        .run(&RunControl::default(), &mut progress)
        .map_err(|e| format!("{} seed {seed}: {e}", config.name()))?;
    let seconds = start.elapsed().as_secs_f64();
    let reached = outcome.reason == StopReason::ReachedTarget;
    let steps = trainer
        .history()
        .reached_target_at_step
        .unwrap_or(outcome.step);
    let final_val_acc = outcome.final_eval.as_ref().map(|e| e.val_accuracy);
    let line = json!({
        "bench": "grokking",
        "impl": backend_impl(),
        "backend": backend,
        "config": config.name(),
        "settings": config.describe(),
        "seed": seed,
        "target_val_acc": settings.target,
        "reached": reached,
        "steps": steps,
        "cap": cap,
        "seconds": seconds,
        "steps_per_sec": steps as f64 / seconds,
        "final_val_acc": final_val_acc,
        "epochs": outcome.final_eval.as_ref().map(|e| e.epoch),
    });
    println!("{line}");
    let acc = final_val_acc.map_or("–".to_string(), |a| format!("{a:.3}"));
    if reached {
        eprintln!(
            "{} seed {seed}: {:.0} % validation accuracy at step {steps} in {seconds:.1} s ({:.1} steps/s)",
            config.name(),
            settings.target * 100.0,
            steps as f64 / seconds
        );
    } else {
        eprintln!(
            "{} seed {seed}: capped at {cap} steps (validation accuracy {acc}) after {seconds:.1} s",
            config.name()
        );
    }
    Ok(RunResult {
        config,
        seed,
        steps,
        reached,
        seconds,
        final_val_acc,
    })
}

/// Says on stderr, now and then, how far a run is, so a long bench shows it is alive.
struct ProgressLog {
    label: String,
    start: Instant,
    last_report: Instant,
}

impl ProgressLog {
    fn new(label: String, start: Instant) -> Self {
        Self {
            label,
            start,
            last_report: start,
        }
    }
}

impl TrainingObserver for ProgressLog {
    fn on_progress(&mut self, progress: &Progress<'_>) {
        if !progress.evaluated || self.last_report.elapsed().as_secs_f64() < PROGRESS_EVERY_SECONDS
        {
            return;
        }
        self.last_report = Instant::now();
        if let Some(eval) = progress.last_eval {
            eprintln!(
                "  {}: step {} (epoch {}), validation accuracy {:.3}, {:.0} s",
                self.label,
                progress.step,
                eval.epoch,
                eval.val_accuracy,
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

/// A median over runs where some values are only lower bounds (capped runs).
#[derive(Debug, Clone, Copy)]
struct Bounded {
    value: f64,
    /// The median falls on a capped run: the true median is at least `value`.
    lower_bound: bool,
}

impl Bounded {
    fn median(values: &[(f64, bool)]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(bounded_order);
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let middle = if n % 2 == 1 {
            &sorted[n / 2..=n / 2]
        } else {
            &sorted[n / 2 - 1..=n / 2]
        };
        let plain: Vec<f64> = middle.iter().map(|v| v.0).collect();
        Some(Self {
            value: median(&plain)?,
            lower_bound: middle.iter().any(|v| v.1),
        })
    }

    fn show(self, decimals: usize) -> String {
        let sign = if self.lower_bound { "≥ " } else { "" };
        format!("{sign}{:.*}", decimals, self.value)
    }
}

/// The order of values of which some are lower bounds (`true`: a capped run): by value, and a
/// capped run after a finished one of the same value, since it would have gone on.
fn bounded_order(a: &(f64, bool), b: &(f64, bool)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// `min–max` of values of which some are lower bounds (capped runs); a bound is marked `≥`.
fn range(values: &[(f64, bool)], decimals: usize) -> String {
    let show = |v: &(f64, bool)| {
        let sign = if v.1 { "≥ " } else { "" };
        format!("{sign}{:.*}", decimals, v.0)
    };
    let lowest = values.iter().min_by(|a, b| bounded_order(a, b));
    let highest = values.iter().max_by(|a, b| bounded_order(a, b));
    match (lowest, highest) {
        (Some(lo), Some(hi)) if show(lo) == show(hi) => show(lo),
        (Some(lo), Some(hi)) => format!("{}–{}", show(lo), show(hi)),
        _ => "–".to_string(),
    }
}

/// `reference ÷ faster` with what the bounds allow to say.
fn speedup(reference: Option<Bounded>, faster: Option<Bounded>) -> String {
    let (Some(reference), Some(faster)) = (reference, faster) else {
        return "–".to_string();
    };
    let ratio = reference.value / faster.value;
    match (reference.lower_bound, faster.lower_bound) {
        (false, false) => format!("{ratio:.1}×"),
        (true, false) => format!("≥ {ratio:.1}×"),
        (false, true) => format!("≤ {ratio:.1}×"),
        (true, true) => "? (both capped)".to_string(),
    }
}

fn print_summary(settings: &Settings, results: &[RunResult], backend: &str) {
    let of = |config: Config| -> Vec<&RunResult> {
        results.iter().filter(|r| r.config == config).collect()
    };
    let steps_of = |config: Config| -> Vec<(f64, bool)> {
        of(config)
            .iter()
            .map(|r| (r.steps as f64, !r.reached))
            .collect()
    };
    let seconds_of = |config: Config| -> Vec<(f64, bool)> {
        of(config).iter().map(|r| (r.seconds, !r.reached)).collect()
    };
    let steps_median = |config: Config| Bounded::median(&steps_of(config));
    let wall_median = |config: Config| Bounded::median(&seconds_of(config));
    let ran: Vec<Config> = settings
        .configs
        .iter()
        .copied()
        .filter(|&config| !of(config).is_empty())
        .collect();

    println!(
        "\n## Steps to {:.0} % validation accuracy, x·y mod 97 ({backend}, batch 512, {} thread(s), seeds {:?})",
        settings.target * 100.0,
        settings.threads,
        settings.seeds
    );
    println!();
    println!(
        "| config | settings | reached | steps: median (range) | wall s: median (range) | steps/s | the paper: steps |"
    );
    println!("|:--|:--|--:|--:|--:|--:|--:|");
    for &config in &ran {
        let runs = of(config);
        let reached = runs.iter().filter(|r| r.reached).count();
        let rate = median(
            &runs
                .iter()
                .map(|r| r.steps as f64 / r.seconds)
                .collect::<Vec<_>>(),
        );
        println!(
            "| {} | {} | {reached}/{} (cap {}) | {} ({}) | {} ({}) | {} | {} |",
            config.name(),
            config.describe(),
            runs.len(),
            settings.cap(config),
            steps_median(config).map_or("–".into(), |s| s.show(0)),
            range(&steps_of(config), 0),
            wall_median(config).map_or("–".into(), |w| w.show(1)),
            range(&seconds_of(config), 1),
            rate.map_or("–".into(), |r| format!("{r:.1}")),
            config
                .paper_steps()
                .map_or("–".into(), |steps| steps.to_string()),
        );
    }

    let filters: Vec<Config> = ran.iter().copied().filter(|c| c.is_grokfast()).collect();
    if !filters.is_empty() {
        println!(
            "\n### Speed-ups of the filters: the baseline's median over the filter's (≥: the baseline was capped)"
        );
        println!();
        println!(
            "| filter | steps vs the paper's baseline (wd 0) | steps vs the fair baseline (same wd) | wall time vs the paper's baseline | wall time vs the fair baseline | the paper, steps vs its baseline |"
        );
        println!("|:--|--:|--:|--:|--:|--:|");
        for config in filters {
            let fair = config.fair_baseline();
            let paper = match (Config::Baseline.paper_steps(), config.paper_steps()) {
                (Some(baseline), Some(filter)) => {
                    format!("{:.1}×", baseline as f64 / filter as f64)
                }
                _ => "–".into(),
            };
            println!(
                "| {} ({}) | {} | {} | {} | {} | {paper} |",
                config.name(),
                config.describe(),
                speedup(steps_median(Config::Baseline), steps_median(config)),
                fair.map_or("–".into(), |fair| speedup(
                    steps_median(fair),
                    steps_median(config)
                )),
                speedup(wall_median(Config::Baseline), wall_median(config)),
                fair.map_or("–".into(), |fair| speedup(
                    wall_median(fair),
                    wall_median(config)
                )),
            );
        }
    }

    println!(
        "\n### Every run: steps to {:.0} % (or the cap, with the validation accuracy there), wall s",
        settings.target * 100.0
    );
    println!();
    let header: Vec<&str> = ran.iter().map(|c| c.name()).collect();
    println!("| seed | {} |", header.join(" | "));
    println!("|--:|{}", "--:|".repeat(ran.len()));
    for &seed in &settings.seeds {
        let cells: Vec<String> = ran
            .iter()
            .map(|&config| {
                let Some(run) = results
                    .iter()
                    .find(|r| r.config == config && r.seed == seed)
                else {
                    return "–".to_string();
                };
                if run.reached {
                    format!("{}, {:.1} s", run.steps, run.seconds)
                } else {
                    let acc = run
                        .final_val_acc
                        .map_or("–".to_string(), |a| format!("{a:.3}"));
                    format!("≥ {} (val acc {acc}), {:.1} s", run.steps, run.seconds)
                }
            })
            .collect();
        println!("| {seed} | {} |", cells.join(" | "));
    }
    let ema = of(Config::Ema);
    if !ema.is_empty() {
        let all_reached = ema.iter().all(|r| r.reached);
        let slowest = ema.iter().map(|r| r.seconds).fold(0.0, f64::max);
        let verdict = if all_reached && slowest <= EMA_TARGET_SECONDS {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "\ntarget Grokfast-EMA reaches {:.0} % within {EMA_TARGET_SECONDS:.0} s wall (on 2 cores; here {} thread(s)): {verdict} (slowest seed {slowest:.1} s, {}/{} seeds reached)",
            settings.target * 100.0,
            settings.threads,
            ema.iter().filter(|r| r.reached).count(),
            ema.len()
        );
    }
}
