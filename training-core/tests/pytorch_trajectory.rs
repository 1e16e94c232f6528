//! grokforge trains as PyTorch does: the same start, the same batches, the same settings give
//! the same trajectory, with no filter, EMA and MA.
//!
//! Each case trains a small model on x·y mod 23 for 40 steps through the same path as
//! `grokforge train` (a [`TrainSpec`] turned into a run), recording the initial weights, the
//! rows of every batch and the per-step losses; `benches/paired_trajectory.py` replays them in
//! PyTorch with `torch.optim.Adam` / `AdamW`, `LambdaLR` and the Grokfast paper's own filter code
//! (see `tests/support/paired.rs`). The settings make the parts that could differ visible: a
//! 10-step warm-up, weight decay 0.1 (ten times the paper's, so L2 and decoupled decay are far
//! apart), an MA window of 8 that fills and slides within the run, EMA α 0.9.
//!
//! **Tolerance.** Both sides compute in float32 with different kernels (matrix products, GELU,
//! softmax, reductions summed in other orders), so they cannot agree bit for bit, and Adam
//! divides each gradient by its own running size, which lets a rounding-level difference in a
//! near-zero gradient move that weight by up to a learning rate. A fixed number would be either
//! loose or brittle. Instead PyTorch also replays each run in float64, which stands for the exact
//! computation, and grokforge must stay as close to it as PyTorch's own float32 run does, within
//! a factor [`NOISE_FACTOR`] (plus [`FLOOR`] for the first steps, where both are at one rounding
//! step): per-step losses, final weights (relative L2 over all parameters) and validation loss.
//! Learning rates must agree exactly (to 1e-12) and validation accuracy to one example.
//!
//! The deliberate deviations ("controls": AdamW for Adam, MA filtering before its window is
//! full, the filter applied to the gradient with Adam's L2 term already in it, the warm-up one
//! step late) must each land at least [`CONTROL_FACTOR`] times further from the float64 run
//! than the tolerance allows, which shows the tolerance can see them.
//!
//! Without an importable torch the test says so and passes, unless `GROKFORGE_REQUIRE_TORCH=1`,
//! when it fails.

mod support;

use std::sync::Arc;

use grokforge_training_core::device::set_num_threads;
use grokforge_training_core::{Dataset, GrokFastKind, OptimizerKind, TrainSpec, parse_device};
use serde_json::json;

use support::paired::{Control, compare, replay_in_torch, run_grokforge, write_cases};
use support::torch_or_skip;

/// How much further from float64 than PyTorch float32 grokforge may land.
const NOISE_FACTOR: f64 = 10.0;
/// Below this (absolute loss difference, or relative weight distance) two runs count as equal.
const FLOOR: f64 = 1e-6;
/// How much further than the tolerance a deliberate deviation must land.
const CONTROL_FACTOR: f64 = 10.0;

fn spec(grokfast: GrokFastKind, optimizer: OptimizerKind) -> TrainSpec {
    TrainSpec {
        dataset: Some("mod-mul:23".into()),
        d_model: Some(32),
        n_layers: Some(2),
        n_heads: Some(4),
        d_ff: Some(64),
        batch_size: 64,
        steps: 40,
        eval_every: 20,
        lr: 1e-3,
        optimizer,
        weight_decay: Some(0.1),
        warmup_steps: 10,
        grokfast,
        alpha: 0.9,
        window: 8,
        seed: 3,
        variants: 1,
        ..TrainSpec::default()
    }
}

#[test]
fn grokforge_and_pytorch_take_the_same_steps() {
    let Some(python) = torch_or_skip("the paired PyTorch trajectory check") else {
        return;
    };
    set_num_threads(1);
    let device = parse_device("cpu").unwrap();
    let folder = tempfile::tempdir().unwrap();

    let control = |name, change| Control { name, change };
    let cases = [
        (
            "none",
            spec(GrokFastKind::None, OptimizerKind::Adam),
            vec![control(
                "adamw-for-adam",
                json!({"optimizer_kind": "adamw"}),
            )],
        ),
        (
            "ema",
            spec(GrokFastKind::Ema, OptimizerKind::Adam),
            vec![control("warm-up-one-late", json!({"warmup_shift": 1}))],
        ),
        (
            "ma",
            spec(GrokFastKind::Ma, OptimizerKind::Adam),
            vec![
                control("ma-before-window-full", json!({"ma_warmup": false})),
                control(
                    "filter-sees-weight-decay",
                    json!({"filter_sees_weight_decay": true}),
                ),
            ],
        ),
        (
            "none-adamw",
            spec(GrokFastKind::None, OptimizerKind::AdamW),
            vec![],
        ),
    ];
    let first = &cases[0].1;
    let dataset = Arc::new(
        Dataset::prepare(
            &first.data_source().unwrap(),
            &first.dataset_options(None).unwrap(),
        )
        .unwrap(),
    );
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(name, spec, controls)| {
            let config = spec.run_config(0, &dataset).unwrap();
            run_grokforge(
                name,
                config,
                &dataset,
                &device,
                folder.path(),
                controls,
                false,
            )
        })
        .collect();
    write_cases(folder.path(), &dataset, &runs, false);
    let report = replay_in_torch(&python, folder.path(), "float32,float64", 1);

    let mut failures = Vec::new();
    for run in &runs {
        let c = compare(run, &report);
        eprintln!("{}", c.describe());
        let loss_noise = c.loss_noise.unwrap();
        let params_noise = c.params_noise.unwrap();
        let params_vs_f64 = c.params_vs_f64.unwrap();
        let loss_bound = NOISE_FACTOR * loss_noise.max(FLOOR);
        let params_bound = NOISE_FACTOR * params_noise.max(FLOOR);
        if c.max_lr_diff > 1e-12 {
            failures.push(format!(
                "{}: learning rates differ by {:e}",
                c.name, c.max_lr_diff
            ));
        }
        if c.max_loss_diff > loss_bound {
            failures.push(format!(
                "{}: losses differ by {:e} > {loss_bound:e} (first parting at {:?})",
                c.name, c.max_loss_diff, c.first_parting_step
            ));
        }
        if params_vs_f64 > params_bound {
            failures.push(format!(
                "{}: final weights {params_vs_f64:e} from float64 > {params_bound:e}",
                c.name
            ));
        }
        let valid_rows = dataset.valid_len() as f64;
        if c.max_eval_diff.0 > loss_bound || c.max_eval_diff.1 > 1.0 / valid_rows + 1e-12 {
            failures.push(format!(
                "{}: evaluations differ by {:?}",
                c.name, c.max_eval_diff
            ));
        }
        for (name, loss, params) in &c.controls {
            let params = params.unwrap();
            if *loss < CONTROL_FACTOR * loss_bound && params < CONTROL_FACTOR * params_bound {
                failures.push(format!(
                    "{}: control {name} is not told apart (loss {loss:e}, weights {params:e})",
                    c.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
