//! Training-step throughput on the Grokfast paper's task (x·y mod 97, the `grokfast-paper` model:
//! 2 layers, d = 128, 4 heads), against PyTorch eager on the same torch install, and the cost of
//! the GrokFast filters. Run on an idle machine (see `benches/README.md`):
//!
//! ```text
//! cargo bench -p grokforge-training-core --bench throughput                       # tch + PyTorch
//! cargo bench -p grokforge-training-core --bench throughput \
//!     --no-default-features --features flex                                      # pure Rust
//! cargo bench -p grokforge-training-core --bench throughput \
//!     --no-default-features --features ndarray                     # the other pure-Rust one
//! ```
//!
//! For every thread count and batch size the bench starts itself again as a worker process, which
//! builds one trainer per GrokFast filter (none, EMA, MA), each from a fresh model, runs their
//! untimed warm-up steps, then their timed steps *interleaved*: a chunk of steps of each filter
//! in turn (`GROKFORGE_BENCH_CHUNK`, 10), so the filters share whatever the machine does during
//! the measurement and their overhead ratios are not moved by it. Each chunk is the [`Trainer`]'s
//! real loop (batch, forward, loss read, backward, filter, Adam), stopped by its cancellation
//! flag. Then `pytorch_throughput.py` times the same step in PyTorch eager at the same thread
//! count and batch. Worker and PyTorch run one after the other, never together, each in a fresh
//! process: LibTorch and rayon (flex, ndarray) fix their thread pools per process, and neither
//! side inherits the other's warm caches or allocator.
//!
//! The whole sweep is repeated in rounds, and the tables report the median over the rounds with
//! the lowest and highest value beside it. A ratio is taken within a round (grokforge against the
//! PyTorch run right after it; a filter against the unfiltered run in the same worker) and the
//! median of those ratios reported, so a machine that slows down between rounds moves both sides
//! of a ratio together. On a shared 2-core VM single runs of the same step spread by up to 7 %.
//!
//! Knobs (environment; lists are comma-separated):
//!
//! - `GROKFORGE_BENCH_STEPS` (60): timed steps per measurement. MA measurements time a multiple
//!   of the MA window (rounded up), so its exact re-summing of the window, done once every
//!   `window` steps, is counted at its true share.
//! - `GROKFORGE_BENCH_CHUNK` (10): timed steps a filter runs before the next filter's turn.
//! - `GROKFORGE_BENCH_WARMUP` (10): untimed steps first; MA warms up for at least its window, so
//!   the filter is fully active when the clock starts.
//! - `GROKFORGE_BENCH_BATCHES` (`256,512,1024,2048,full`): `full` is the whole training split
//!   (4705 rows).
//! - `GROKFORGE_BENCH_THREADS` (`1,<logical CPUs>`).
//! - `GROKFORGE_BENCH_ROUNDS` (3): how many times the sweep runs.
//! - `GROKFORGE_BENCH_FILTERS` (`none,ema,ma`); `GROKFORGE_BENCH_MA_WINDOW` (100, the paper's).
//!   MA, which has no target and takes the longest (its warm-up is a whole window), is measured
//!   in the first round only.
//! - `GROKFORGE_BENCH_PYTORCH`: `auto` (default: run when the LibTorch virtualenv's python imports
//!   torch), `off`, or `required` (fail without it). `GROKFORGE_TORCH_PYTHON` names another python.
//! - `GROKFORGE_BENCH_PYTORCH_FILTERS` (`none`): the filters PyTorch runs too, as the paper's
//!   published `gradfilter_ema` / `gradfilter_ma` (whose MA sums all 100 gradients every step:
//!   slow, so not by default).
//! - `GROKFORGE_BENCH_PYTORCH_ATTENTION` (`sdpa`): PyTorch's fused attention kernel, the stronger
//!   baseline, or `explicit`, grokforge's own formulation.
//!
//! Output: one JSON line per measurement (`{"bench": "throughput", ...}`), progress on stderr, and
//! at the end Markdown tables with the ratios against PyTorch and the filters' overhead.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use grokforge_training_core::device::set_num_threads;
use grokforge_training_core::spec::VariedSetting;
use grokforge_training_core::{
    Dataset, GrokFastKind, Progress, RunControl, TrainSpec, Trainer, TrainingObserver,
    backend_description, parse_device,
};
use serde_json::{Value, json};

use common::{backend_impl, env_list, env_value, logical_cpus};
use support::TorchPython;

/// Set by the parent on the worker processes it starts.
const WORKER_THREADS: &str = "GROKFORGE_BENCH_WORKER_THREADS";
const WORKER_BATCH: &str = "GROKFORGE_BENCH_WORKER_BATCH";

const DATASET: &str = "mod-mul:97";
const PYTORCH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pytorch_throughput.py");

/// A batch size, or the whole training split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchSize {
    Rows(usize),
    Full,
}

impl BatchSize {
    fn rows(self, train_rows: usize) -> usize {
        match self {
            BatchSize::Rows(rows) => rows.min(train_rows),
            BatchSize::Full => train_rows,
        }
    }
}

impl FromStr for BatchSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "full" {
            return Ok(BatchSize::Full);
        }
        match text.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "expected a positive batch size or `full`, got {text:?}"
            )),
            Ok(rows) => Ok(BatchSize::Rows(rows)),
        }
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSize::Rows(rows) => write!(f, "{rows}"),
            BatchSize::Full => f.write_str("full"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PytorchMode {
    Auto,
    Off,
    Required,
}

impl FromStr for PytorchMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(PytorchMode::Auto),
            "off" | "0" | "no" => Ok(PytorchMode::Off),
            "required" | "1" | "yes" => Ok(PytorchMode::Required),
            other => Err(format!("expected auto, off or required, got {other:?}")),
        }
    }
}

/// Everything the bench reads from the environment, read once.
#[derive(Debug, Clone)]
struct Settings {
    timed_steps: u64,
    warmup_steps: u64,
    chunk_steps: u64,
    batches: Vec<BatchSize>,
    threads: Vec<usize>,
    rounds: usize,
    filters: Vec<GrokFastKind>,
    ma_window: usize,
    pytorch: PytorchMode,
    pytorch_filters: Vec<GrokFastKind>,
    pytorch_attention: String,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let mut threads: Vec<usize> =
            env_list("GROKFORGE_BENCH_THREADS", &format!("1,{}", logical_cpus()))?;
        threads.dedup();
        if threads.contains(&0) {
            return Err("GROKFORGE_BENCH_THREADS: thread counts must be positive".into());
        }
        let parse_filters = |name: &str, default: &str| -> Result<Vec<GrokFastKind>, String> {
            env_list::<String>(name, default)?
                .iter()
                .map(|f| f.parse().map_err(|e| format!("{name}: {e}")))
                .collect()
        };
        let settings = Settings {
            timed_steps: env_value("GROKFORGE_BENCH_STEPS", 60)?,
            warmup_steps: env_value("GROKFORGE_BENCH_WARMUP", 10)?,
            chunk_steps: env_value("GROKFORGE_BENCH_CHUNK", 10)?,
            batches: env_list("GROKFORGE_BENCH_BATCHES", "256,512,1024,2048,full")?,
            threads,
            rounds: env_value("GROKFORGE_BENCH_ROUNDS", 3)?,
            filters: parse_filters("GROKFORGE_BENCH_FILTERS", "none,ema,ma")?,
            ma_window: env_value("GROKFORGE_BENCH_MA_WINDOW", 100)?,
            pytorch: env_value("GROKFORGE_BENCH_PYTORCH", PytorchMode::Auto)?,
            pytorch_filters: parse_filters("GROKFORGE_BENCH_PYTORCH_FILTERS", "none")?,
            pytorch_attention: env_value("GROKFORGE_BENCH_PYTORCH_ATTENTION", "sdpa".to_string())?,
        };
        if settings.timed_steps == 0
            || settings.ma_window == 0
            || settings.rounds == 0
            || settings.chunk_steps == 0
        {
            return Err(
                "GROKFORGE_BENCH_STEPS, GROKFORGE_BENCH_MA_WINDOW, GROKFORGE_BENCH_ROUNDS and \
                 GROKFORGE_BENCH_CHUNK must be positive"
                    .into(),
            );
        }
        Ok(settings)
    }

    /// Untimed and timed steps for `filter` (see the module documentation for MA).
    fn steps_for(&self, filter: GrokFastKind) -> (u64, u64) {
        // At least one untimed step: the first carries one-time costs (allocation, dispatch).
        let warmup = self.warmup_steps.max(1);
        match filter {
            GrokFastKind::Ma => {
                let window = self.ma_window as u64;
                (
                    warmup.max(window),
                    self.timed_steps.div_ceil(window) * window,
                )
            }
            GrokFastKind::None | GrokFastKind::Ema => (warmup, self.timed_steps),
        }
    }
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
            eprintln!("throughput: {message}");
            std::process::exit(2);
        }
    };
    let worker = (
        std::env::var(WORKER_THREADS).ok(),
        std::env::var(WORKER_BATCH).ok(),
    );
    let result = match worker {
        (Some(threads), Some(batch)) => worker_main(&settings, &threads, &batch),
        _ => parent_main(&settings),
    };
    if let Err(message) = result {
        eprintln!("throughput: {message}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Worker: measures grokforge in this process, prints one JSON line per filter.

fn worker_main(settings: &Settings, threads: &str, batch: &str) -> Result<(), String> {
    let threads: usize = threads
        .parse()
        .map_err(|e| format!("{WORKER_THREADS}: {e}"))?;
    let batch: BatchSize = batch.parse()?;
    set_num_threads(threads);
    let device = parse_device("cpu").map_err(|e| e.to_string())?;
    let base = TrainSpec {
        dataset: Some(DATASET.into()),
        window: settings.ma_window,
        vary: VariedSetting::None,
        variants: 1,
        // No evaluation inside the measured steps (0 would mean every epoch).
        eval_every: u64::MAX,
        ..TrainSpec::default()
    };
    let data = Arc::new(
        Dataset::prepare(
            &base.data_source().map_err(|e| e.to_string())?,
            &base.dataset_options(None).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?,
    );
    let rows = batch.rows(data.train_len());
    let mut backend = backend_description(&device);
    if backend_impl() != "tch" {
        backend = format!("{backend}, {threads} rayon threads");
    }
    // One trainer per filter, all alive at once. After their warm-ups the timed steps run
    // interleaved, a chunk of each in turn, so a machine that speeds up or slows down during the
    // measurement moves every filter alike and the overhead ratios see none of it.
    let mut runs = Vec::new();
    for &filter in &settings.filters {
        let (warmup, timed) = settings.steps_for(filter);
        let spec = TrainSpec {
            batch_size: rows,
            grokfast: filter,
            // One step more than is ever run: the loop stops at a chunk's end by cancellation,
            // never by completing, which would add a final evaluation to the timed part.
            steps: warmup + timed + 1,
            ..base.clone()
        };
        let config = spec.run_config(0, &data).map_err(|e| e.to_string())?;
        let mut run = TimedRun {
            filter,
            warmup,
            timed,
            trainer: Trainer::new(config, data.clone(), &device).map_err(|e| e.to_string())?,
            seconds: 0.0,
        };
        run.advance(warmup)?;
        runs.push(run);
    }
    let chunk = settings.chunk_steps;
    while runs.iter().any(|run| run.remaining() > 0) {
        for run in &mut runs {
            let steps = run.remaining().min(chunk);
            if steps > 0 {
                let started = Instant::now();
                run.advance(steps)?;
                run.seconds += started.elapsed().as_secs_f64();
            }
        }
    }
    for run in &runs {
        let line = json!({
            "bench": "throughput",
            "impl": backend_impl(),
            "backend": backend,
            "threads": threads,
            "batch": rows,
            "full_batch": batch == BatchSize::Full,
            "grokfast": run.filter.to_string(),
            "ma_window": (run.filter == GrokFastKind::Ma).then_some(settings.ma_window),
            "warmup_steps": run.warmup,
            "steps": run.timed,
            "chunk_steps": chunk,
            "seconds": run.seconds,
            "steps_per_sec": run.timed as f64 / run.seconds,
        });
        println!("{line}");
    }
    Ok(())
}

/// One filter's trainer, advanced a chunk at a time.
struct TimedRun {
    filter: GrokFastKind,
    warmup: u64,
    timed: u64,
    trainer: Trainer,
    /// Wall time of the timed chunks so far.
    seconds: f64,
}

impl TimedRun {
    fn remaining(&self) -> u64 {
        (self.warmup + self.timed).saturating_sub(self.trainer.step())
    }

    /// Runs `steps` more steps: the trainer's own loop, stopped by its cancellation flag.
    fn advance(&mut self, steps: u64) -> Result<(), String> {
        let control = RunControl::default();
        let mut stop = StopAt {
            step: self.trainer.step() + steps,
            cancel: control.cancel.clone(),
        };
        self.trainer
            .run(&control, &mut stop)
            .map_err(|e| e.to_string())?;
        if self.trainer.step() != stop.step {
            return Err(format!(
                "the run stopped at step {} instead of {}",
                self.trainer.step(),
                stop.step
            ));
        }
        Ok(())
    }
}

/// Sets the cancellation flag once the run has completed step `step`.
struct StopAt {
    step: u64,
    cancel: Arc<AtomicBool>,
}

impl TrainingObserver for StopAt {
    fn on_progress(&mut self, progress: &Progress<'_>) {
        if progress.step >= self.step {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: starts the workers and PyTorch, one process at a time, and prints the tables.

/// One measurement, as a worker or the PyTorch script reported it.
#[derive(Debug, Clone)]
struct Measurement {
    /// Which sweep it came from, counted from 1 (set by the parent).
    round: usize,
    implementation: String,
    threads: usize,
    batch: usize,
    filter: String,
    steps_per_sec: f64,
}

impl Measurement {
    fn from_json(line: &Value) -> Option<Self> {
        Some(Self {
            round: 0,
            implementation: line["impl"].as_str()?.to_string(),
            threads: usize::try_from(line["threads"].as_u64()?).ok()?,
            batch: usize::try_from(line["batch"].as_u64()?).ok()?,
            filter: line["grokfast"].as_str()?.to_string(),
            steps_per_sec: line["steps_per_sec"].as_f64()?,
        })
    }
}

fn parent_main(settings: &Settings) -> Result<(), String> {
    common::announce_machine("throughput");
    println!("# settings: {settings:?}");
    let python = match settings.pytorch {
        PytorchMode::Off => None,
        mode => match TorchPython::find() {
            Ok(python) => Some(python),
            Err(reason) if mode == PytorchMode::Required => return Err(reason),
            Err(reason) => {
                eprintln!("throughput: skipping PyTorch: {reason}");
                None
            }
        },
    };
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut results = Vec::new();
    for round in 1..=settings.rounds {
        eprintln!("throughput: round {round} of {}", settings.rounds);
        // MA only in the first round (see the module documentation).
        let filters: Vec<GrokFastKind> = settings
            .filters
            .iter()
            .copied()
            .filter(|&f| round == 1 || f != GrokFastKind::Ma)
            .collect();
        let pytorch_filters: Vec<GrokFastKind> = settings
            .pytorch_filters
            .iter()
            .copied()
            .filter(|&f| round == 1 || f != GrokFastKind::Ma)
            .collect();
        let filter_list = filters
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        for &threads in &settings.threads {
            for &batch in &settings.batches {
                let mut worker = Command::new(&exe);
                worker
                    .env(WORKER_THREADS, threads.to_string())
                    .env(WORKER_BATCH, batch.to_string())
                    .env("GROKFORGE_BENCH_FILTERS", &filter_list)
                    // flex and ndarray parallelise through rayon's global pool, sized once per process.
                    .env("RAYON_NUM_THREADS", threads.to_string())
                    .env("OMP_NUM_THREADS", threads.to_string());
                let mut measured =
                    run_and_collect(worker, &format!("{} worker", backend_impl()), round)?;
                if let Some(python) = &python {
                    for &filter in &pytorch_filters {
                        let (warmup, timed) = settings.steps_for(filter);
                        let batch_arg = match batch {
                            BatchSize::Rows(rows) => rows,
                            BatchSize::Full => 0,
                        };
                        let mut command = python.command();
                        command
                            .arg(PYTORCH_SCRIPT)
                            .args(["--batch", &batch_arg.to_string()])
                            .args(["--threads", &threads.to_string()])
                            .args(["--steps", &timed.to_string()])
                            .args(["--warmup", &warmup.to_string()])
                            .args(["--grokfast", &filter.to_string()])
                            .args(["--window", &settings.ma_window.to_string()])
                            .args(["--attention", &settings.pytorch_attention])
                            .env("OMP_NUM_THREADS", threads.to_string());
                        measured.extend(run_and_collect(command, "pytorch", round)?);
                    }
                }
                results.extend(measured);
            }
        }
    }
    print_tables(&results, settings);
    Ok(())
}

/// Runs `command` to completion, echoing its JSON lines tagged with `round` (and a progress line
/// on stderr) and returning them parsed. Its stderr passes through.
fn run_and_collect(
    mut command: Command,
    what: &str,
    round: usize,
) -> Result<Vec<Measurement>, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the {what}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut measurements = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading the {what}'s output: {e}"))?;
        // Echoed whatever it is, so the captured output holds everything the children said.
        let mut parsed = serde_json::from_str::<Value>(&line).ok();
        match parsed.as_mut().and_then(Value::as_object_mut) {
            Some(object) => {
                object.insert("round".into(), round.into());
                println!("{}", Value::Object(object.clone()));
            }
            None => println!("{line}"),
        }
        if let Some(mut m) = parsed.as_ref().and_then(Measurement::from_json) {
            m.round = round;
            eprintln!(
                "{:>7} {} thread(s) batch {:>4} {:>4}: {:8.2} steps/s",
                m.implementation, m.threads, m.batch, m.filter, m.steps_per_sec
            );
            measurements.push(m);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the {what}: {e}"))?;
    if !status.success() {
        return Err(format!("the {what} failed: {status}"));
    }
    Ok(measurements)
}

// ---------------------------------------------------------------------------------------------
// Tables.

/// The steps/s of one measured point, by round.
fn by_round(
    results: &[Measurement],
    implementation: &str,
    threads: usize,
    batch: usize,
    filter: &str,
) -> Vec<(usize, f64)> {
    results
        .iter()
        .filter(|m| {
            m.implementation == implementation
                && m.threads == threads
                && m.batch == batch
                && m.filter == filter
        })
        .map(|m| (m.round, m.steps_per_sec))
        .collect()
}

/// `f(a, b)` for every round in which both `a` and `b` were measured.
fn paired(a: &[(usize, f64)], b: &[(usize, f64)], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter()
        .filter_map(|&(round, x)| {
            let &(_, y) = b.iter().find(|&&(r, _)| r == round)?;
            Some(f(x, y))
        })
        .collect()
}

/// Median, lowest and highest of a set of measurements.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    count: usize,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
            count: n,
        })
    }

    /// `median [min, max]`, or just the value when there is one.
    fn show(spread: Option<Self>, decimals: usize, suffix: &str) -> String {
        Self::render(spread, suffix, |v| format!("{v:.decimals$}"))
    }

    /// Like [`Spread::show`], with a sign on every number (for overheads).
    fn show_signed(spread: Option<Self>, decimals: usize, suffix: &str) -> String {
        Self::render(spread, suffix, |v| format!("{v:+.decimals$}"))
    }

    fn render(spread: Option<Self>, suffix: &str, number: impl Fn(f64) -> String) -> String {
        match spread {
            None => "–".to_string(),
            Some(s) if s.count == 1 => format!("{}{suffix}", number(s.median)),
            Some(s) => format!(
                "{}{suffix} [{}, {}]",
                number(s.median),
                number(s.min),
                number(s.max)
            ),
        }
    }
}

/// Extra time per step of `filtered` over `plain`, in percent.
fn overhead_percent(plain: f64, filtered: f64) -> f64 {
    (plain / filtered - 1.0) * 100.0
}

fn print_tables(results: &[Measurement], settings: &Settings) {
    let ours = backend_impl();
    let mut sizes: Vec<(usize, usize)> = results
        .iter()
        .filter(|m| m.implementation == ours)
        .map(|m| (m.threads, m.batch))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let rounds = results.iter().map(|m| m.round).max().unwrap_or(0);
    println!(
        "\nMedians over {rounds} round(s), [lowest, highest] beside them; ratios are taken within a \
         round, then their median reported."
    );

    let mut worst_ratio: Option<(f64, usize, usize)> = None;
    let has_pytorch = results.iter().any(|m| m.implementation == "pytorch");
    if has_pytorch {
        println!(
            "\n## Step throughput: {ours} vs PyTorch eager ({})",
            settings.pytorch_attention
        );
        println!();
        println!(
            "| threads | batch | filter | {ours} steps/s | PyTorch steps/s | {ours} ÷ PyTorch |"
        );
        println!("|--:|--:|:--|--:|--:|--:|");
        for &(threads, batch) in &sizes {
            for filter in &settings.pytorch_filters {
                let filter = filter.to_string();
                let a = by_round(results, ours, threads, batch, &filter);
                let b = by_round(results, "pytorch", threads, batch, &filter);
                let Some(ratio) = Spread::of(paired(&a, &b, |x, y| x / y)) else {
                    continue;
                };
                if filter == "none" && worst_ratio.is_none_or(|(r, _, _)| ratio.median < r) {
                    worst_ratio = Some((ratio.median, threads, batch));
                }
                println!(
                    "| {threads} | {batch} | {filter} | {} | {} | {} |",
                    Spread::show(Spread::of(a.iter().map(|p| p.1)), 2, ""),
                    Spread::show(Spread::of(b.iter().map(|p| p.1)), 2, ""),
                    Spread::show(Some(ratio), 2, "×"),
                );
            }
        }
    }

    println!("\n## GrokFast overhead per step ({ours})");
    println!();
    println!(
        "| threads | batch | none steps/s | EMA steps/s | MA steps/s | EMA overhead | MA overhead |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|");
    let mut worst_ema: Option<(f64, usize, usize)> = None;
    for &(threads, batch) in &sizes {
        let none = by_round(results, ours, threads, batch, "none");
        let ema = by_round(results, ours, threads, batch, "ema");
        let ma = by_round(results, ours, threads, batch, "ma");
        let steps =
            |points: &[(usize, f64)]| Spread::show(Spread::of(points.iter().map(|p| p.1)), 2, "");
        let ema_overhead = Spread::of(paired(&none, &ema, overhead_percent));
        let ma_overhead = Spread::of(paired(&none, &ma, overhead_percent));
        if let Some(pct) = ema_overhead
            && worst_ema.is_none_or(|(w, _, _)| pct.median > w)
        {
            worst_ema = Some((pct.median, threads, batch));
        }
        println!(
            "| {threads} | {batch} | {} | {} | {} | {} | {} |",
            steps(&none),
            steps(&ema),
            steps(&ma),
            Spread::show_signed(ema_overhead, 1, " %"),
            Spread::show_signed(ma_overhead, 1, " %"),
        );
    }

    println!();
    if let Some((ratio, threads, batch)) = worst_ratio {
        let verdict = if ratio >= 1.0 { "met" } else { "NOT met" };
        println!(
            "target {ours} ≥ 1.0× PyTorch at every size (medians): {verdict} (lowest {ratio:.2}× at batch {batch}, {threads} thread(s))"
        );
    }
    if let Some((pct, threads, batch)) = worst_ema {
        let verdict = if pct <= 3.0 { "met" } else { "NOT met" };
        println!(
            "target EMA overhead ≤ 3 % (medians): {verdict} (highest {pct:+.1} % at batch {batch}, {threads} thread(s))"
        );
    }
}
