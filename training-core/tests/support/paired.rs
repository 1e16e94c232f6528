//! Paired trajectories: a grokforge run and its replay in PyTorch from the same start.
//!
//! [`run_grokforge`] trains a [`Trainer`] as `grokforge train` would and records what another
//! implementation needs to take the same steps: the initial weights (the safetensors export),
//! the training rows of every step ([`TrainingObserver::on_batch`]), and what came out — the
//! per-step losses and learning rates, the evaluations and the final weights. [`write_cases`]
//! puts runs on one dataset in a folder, [`replay_in_torch`] runs
//! `benches/paired_trajectory.py` over it, and [`compare`] reads the two side by side.
//!
//! Passing the batches explicitly, rather than having Python re-derive grokforge's data order
//! from its generator, keeps the comparison about the numbers: a change to the order cannot make
//! the two sides quietly train on different rows.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use grokforge_training_core::export::to_safetensors;
use grokforge_training_core::{
    Dataset, Device, EvalRecord, Progress, RunConfig, RunControl, Trainer, TrainingObserver,
};
use serde_json::{Value, json};

use super::{TorchPython, bench_script};

/// A deliberate deviation the PyTorch side runs as well (in float32), to show the comparison
/// sees it: `change` is read by `paired_trajectory.py` (`optimizer_kind`, `ma_warmup`,
/// `filter_sees_weight_decay`, `warmup_shift`).
#[derive(Debug, Clone)]
pub struct Control {
    pub name: &'static str,
    pub change: Value,
}

/// What one grokforge run did, step by step.
#[derive(Debug)]
pub struct GrokforgeRun {
    pub name: String,
    pub config: RunConfig,
    pub losses: Vec<f64>,
    pub accuracies: Vec<f64>,
    pub lrs: Vec<f64>,
    pub batches: Vec<Vec<u32>>,
    pub evals: Vec<EvalRecord>,
    /// Wall time of the training loop, evaluations included.
    pub seconds: f64,
    pub controls: Vec<Control>,
}

struct Recorder<'a> {
    run: &'a mut GrokforgeRun,
    log: bool,
}

impl TrainingObserver for Recorder<'_> {
    fn on_batch(&mut self, _variant: usize, step: u64, rows: &[u32]) {
        assert_eq!(step as usize, self.run.batches.len() + 1, "steps in order");
        self.run.batches.push(rows.to_vec());
    }

    fn on_progress(&mut self, progress: &Progress<'_>) {
        self.run.losses.push(progress.loss);
        self.run.accuracies.push(progress.accuracy);
        self.run.lrs.push(progress.lr);
        if self.log
            && progress.evaluated
            && let Some(eval) = progress.last_eval
        {
            eprintln!(
                "  grokforge step {}: loss {:.4} val acc {:.3}",
                progress.step, progress.loss, eval.val_accuracy
            );
        }
    }
}

/// Trains `config` on `dataset` to the end (or its `stop_at_val_acc`), writing
/// `init-<name>.safetensors` and `final-<name>.safetensors` into `folder`.
pub fn run_grokforge(
    name: &str,
    config: RunConfig,
    dataset: &Arc<Dataset>,
    device: &Device,
    folder: &Path,
    controls: Vec<Control>,
    log: bool,
) -> GrokforgeRun {
    let mut trainer = Trainer::new(config.clone(), dataset.clone(), device).unwrap();
    let export = |trainer: &Trainer, file: String| {
        let bytes = to_safetensors(trainer.model(), &config.model).unwrap();
        std::fs::write(folder.join(file), bytes).unwrap();
    };
    export(&trainer, format!("init-{name}.safetensors"));
    let mut run = GrokforgeRun {
        name: name.to_string(),
        config: config.clone(),
        losses: Vec::new(),
        accuracies: Vec::new(),
        lrs: Vec::new(),
        batches: Vec::new(),
        evals: Vec::new(),
        seconds: 0.0,
        controls,
    };
    let started = Instant::now();
    trainer
        .run(&RunControl::default(), &mut Recorder { run: &mut run, log })
        .unwrap();
    run.seconds = started.elapsed().as_secs_f64();
    run.evals = trainer.history().evals.clone();
    export(&trainer, format!("final-{name}.safetensors"));
    run
}

/// Writes `cases.json` for `runs`, which all trained on `dataset`.
pub fn write_cases(folder: &Path, dataset: &Dataset, runs: &[GrokforgeRun], log: bool) {
    let cases: Vec<Value> = runs
        .iter()
        .map(|run| {
            json!({
                "name": run.name,
                "model": run.config.model,
                "optimizer": run.config.optimizer,
                "grokfast": run.config.grokfast,
                "batches": run.batches,
                "eval_at": run.evals.iter().map(|e| e.step).collect::<Vec<_>>(),
                "eval_batch_size": run.config.eval_batch_size,
                "init": format!("init-{}.safetensors", run.name),
                "final": format!("final-{}.safetensors", run.name),
                "controls": run.controls.iter()
                    .map(|c| json!({"name": c.name, "change": c.change}))
                    .collect::<Vec<_>>(),
                "log_every_eval": log,
            })
        })
        .collect();
    let file = json!({
        "data": {
            "seq_len": dataset.seq_len,
            "train_inputs": dataset.train.inputs,
            "train_targets": dataset.train.targets,
            "valid_inputs": dataset.valid.inputs,
            "valid_targets": dataset.valid.targets,
        },
        "cases": cases,
    });
    std::fs::write(
        folder.join("cases.json"),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
}

/// Runs `paired_trajectory.py` over `folder` in the given dtypes (`float32,float64`) and returns
/// its report.
pub fn replay_in_torch(python: &TorchPython, folder: &Path, dtypes: &str, threads: usize) -> Value {
    let out = python
        .command()
        .arg(bench_script("paired_trajectory.py"))
        .arg(folder)
        .arg("--dtypes")
        .arg(dtypes)
        .arg("--threads")
        .arg(threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "paired_trajectory.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A run's distances from its PyTorch replay, and from the float64 replay that stands for the
/// exact computation.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub steps: usize,
    /// max over steps of |grokforge loss − PyTorch float32 loss|.
    pub max_loss_diff: f64,
    /// max over steps of |PyTorch float32 loss − PyTorch float64 loss|: float32 rounding alone.
    pub loss_noise: Option<f64>,
    /// The first step whose loss differs from PyTorch's by more than `LOSS_PART` (relative).
    pub first_parting_step: Option<usize>,
    /// max over steps of |grokforge lr − PyTorch lr|.
    pub max_lr_diff: f64,
    /// ‖grokforge − PyTorch float32‖ / ‖PyTorch float32‖ over all final parameters.
    pub params_vs_f32: f64,
    /// Largest final parameter difference to PyTorch float32, absolute.
    pub params_max_abs_vs_f32: f64,
    /// ‖grokforge − float64‖ / ‖float64‖.
    pub params_vs_f64: Option<f64>,
    /// ‖PyTorch float32 − float64‖ / ‖float64‖: float32 rounding alone.
    pub params_noise: Option<f64>,
    /// Largest |Δ val loss| and |Δ val accuracy| over the evaluations.
    pub max_eval_diff: (f64, f64),
    /// Per evaluation: step, grokforge's and PyTorch's validation accuracy.
    pub val_accuracy: Vec<(u64, f64, f64)>,
    /// Mean batch accuracy over the last [`TAIL_STEPS`] steps, grokforge's and PyTorch's.
    pub final_train_accuracy: (f64, f64),
    /// Per control: max |Δ loss| to grokforge and ‖control − float64‖ / ‖float64‖.
    pub controls: Vec<(String, f64, Option<f64>)>,
    pub torch_seconds: f64,
}

/// A relative loss difference above which two trajectories count as parted.
pub const LOSS_PART: f64 = 1e-3;

/// Steps over which the final training accuracy is averaged (an epoch of the paper's task).
pub const TAIL_STEPS: usize = 10;

fn tail_mean(values: &[f64]) -> f64 {
    let tail = &values[values.len().saturating_sub(TAIL_STEPS)..];
    tail.iter().sum::<f64>() / tail.len().max(1) as f64
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "the two sides took as many steps");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Reads `run` against its case in `report`.
pub fn compare(run: &GrokforgeRun, report: &Value) -> Comparison {
    let case = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == run.name.as_str())
        .unwrap_or_else(|| panic!("no replay of {}", run.name));
    let f32_run = &case["runs"]["float32"];
    let f64_run = case["runs"].get("float64");
    let torch_losses = floats(&f32_run["losses"]);
    let first_parting_step = run
        .losses
        .iter()
        .zip(&torch_losses)
        .position(|(a, b)| (a - b).abs() > LOSS_PART * b.abs().max(1e-3))
        .map(|index| index + 1);
    let torch_evals = f32_run["evals"].as_array().unwrap();
    assert_eq!(torch_evals.len(), run.evals.len(), "the same evaluations");
    let mut max_eval_diff = (0.0f64, 0.0f64);
    let mut val_accuracy = Vec::new();
    for (ours, theirs) in run.evals.iter().zip(torch_evals) {
        assert_eq!(theirs["step"].as_u64().unwrap(), ours.step);
        let acc = theirs["val_accuracy"].as_f64().unwrap();
        max_eval_diff.0 = max_eval_diff
            .0
            .max((ours.val_loss - theirs["val_loss"].as_f64().unwrap()).abs());
        max_eval_diff.1 = max_eval_diff.1.max((ours.val_accuracy - acc).abs());
        val_accuracy.push((ours.step, ours.val_accuracy, acc));
    }
    let controls = case["controls"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, control)| {
            (
                name.clone(),
                max_diff(&run.losses, &floats(&control["losses"])),
                control["this_vs_float64"]["rel_l2"].as_f64(),
            )
        })
        .collect();
    Comparison {
        name: run.name.clone(),
        steps: run.losses.len(),
        max_loss_diff: max_diff(&run.losses, &torch_losses),
        loss_noise: f64_run.map(|r| max_diff(&torch_losses, &floats(&r["losses"]))),
        first_parting_step,
        max_lr_diff: max_diff(&run.lrs, &floats(&f32_run["lrs"])),
        params_vs_f32: f32_run["grokforge_vs_this"]["rel_l2"].as_f64().unwrap(),
        params_max_abs_vs_f32: f32_run["grokforge_vs_this"]["max_abs"].as_f64().unwrap(),
        params_vs_f64: f64_run.map(|r| r["grokforge_vs_this"]["rel_l2"].as_f64().unwrap()),
        params_noise: f32_run["this_vs_float64"]["rel_l2"].as_f64(),
        max_eval_diff,
        val_accuracy,
        final_train_accuracy: (
            tail_mean(&run.accuracies),
            tail_mean(&floats(&f32_run["accuracies"])),
        ),
        controls,
        torch_seconds: f32_run["seconds"].as_f64().unwrap(),
    }
}

impl Comparison {
    /// One paragraph for a person.
    pub fn describe(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2e}"));
        let mut text = format!(
            "{}: {} steps; loss |Δ| max {:.2e} (float32 noise {}), parted at {}; lr |Δ| max {:.1e}; \
             final weights rel. L2 to PyTorch f32 {:.2e} (max |Δ| {:.2e}), to f64 {} (PyTorch f32 to f64 {}); \
             eval |Δ loss| {:.2e}, |Δ acc| {:.4}",
            self.name,
            self.steps,
            self.max_loss_diff,
            opt(self.loss_noise),
            self.first_parting_step
                .map_or("no step".to_string(), |s| format!("step {s}")),
            self.max_lr_diff,
            self.params_vs_f32,
            self.params_max_abs_vs_f32,
            opt(self.params_vs_f64),
            opt(self.params_noise),
            self.max_eval_diff.0,
            self.max_eval_diff.1,
        );
        for (name, loss, params) in &self.controls {
            text.push_str(&format!(
                "\n  control {name}: loss |Δ| max {loss:.2e}, weights rel. L2 to f64 {}",
                opt(*params)
            ));
        }
        text
    }
}
