//! The Grokfast paper's configurations of x·y mod 97, shared by the `grokking` and `trajectory`
//! benches so the two measure the same runs (the same seed is the same split, weights and batches).

use std::str::FromStr;

use grokforge_training_core::grokfast::MaReduction;
use grokforge_training_core::spec::VariedSetting;
use grokforge_training_core::{GrokFastKind, OptimizerKind, TrainSpec};

/// The paper's task.
pub const DATASET: &str = "mod-mul:97";

/// One of the paper's configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    Baseline,
    Ema,
    Ma,
    BaselineWd,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Ema => "ema",
            Config::Ma => "ma",
            Config::BaselineWd => "baseline-wd",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Config::Baseline => "no filter, wd 0",
            Config::Ema => "EMA α 0.98 λ 2, wd 0.005",
            Config::Ma => "MA w 100 λ 5, wd 0.01",
            Config::BaselineWd => "no filter, wd 0.005",
        }
    }

    pub fn is_grokfast(self) -> bool {
        matches!(self, Config::Ema | Config::Ma)
    }

    /// The paper's settings for this configuration; every one is written out, so a change of
    /// `TrainSpec`'s defaults cannot change what this bench measures.
    pub fn spec(self, seed: u64, cap: u64, target: f64) -> TrainSpec {
        let (grokfast, weight_decay, lamb) = match self {
            Config::Baseline => (GrokFastKind::None, 0.0, None),
            Config::Ema => (GrokFastKind::Ema, 0.005, Some(2.0)),
            Config::Ma => (GrokFastKind::Ma, 0.01, Some(5.0)),
            Config::BaselineWd => (GrokFastKind::None, 0.005, None),
        };
        TrainSpec {
            dataset: Some(DATASET.into()),
            train_fraction: Some(0.5),
            batch_size: 512,
            lr: 1e-3,
            optimizer: OptimizerKind::Adam,
            beta1: 0.9,
            beta2: 0.98,
            epsilon: 1e-8,
            weight_decay: Some(weight_decay),
            warmup_steps: 10,
            grokfast,
            alpha: 0.98,
            lamb,
            window: 100,
            ma_warmup: true,
            ma_reduction: MaReduction::Mean,
            seed,
            data_seed: None,
            eval_every: 0,
            stop_at_val_acc: Some(target),
            steps: cap,
            variants: 1,
            vary: VariedSetting::None,
            ..TrainSpec::default()
        }
    }
}

impl FromStr for Config {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        [
            Config::Baseline,
            Config::Ema,
            Config::Ma,
            Config::BaselineWd,
        ]
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| {
            format!("unknown config {name:?}; expected baseline, ema, ma or baseline-wd")
        })
    }
}
