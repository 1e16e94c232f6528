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
    /// No filter with Grokfast-EMA's weight decay: EMA's fair baseline.
    BaselineWd005,
    /// No filter with Grokfast-MA's weight decay: MA's fair baseline.
    BaselineWd01,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Ema => "ema",
            Config::Ma => "ma",
            Config::BaselineWd005 => "baseline-wd005",
            Config::BaselineWd01 => "baseline-wd01",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Config::Baseline => "no filter, wd 0",
            Config::Ema => "EMA α 0.98 λ 2, wd 0.005",
            Config::Ma => "MA w 100 λ 5, wd 0.01",
            Config::BaselineWd005 => "no filter, wd 0.005",
            Config::BaselineWd01 => "no filter, wd 0.01",
        }
    }

    /// The baseline a filter is fairly compared with: no filter, the filter's own weight decay
    /// (the paper compares with no filter and no weight decay, which credits the filter with
    /// what weight decay alone does).
    pub fn fair_baseline(self) -> Option<Config> {
        match self {
            Config::Ema => Some(Config::BaselineWd005),
            Config::Ma => Some(Config::BaselineWd01),
            _ => None,
        }
    }

    /// The paper's iterations to 95 % validation accuracy (Lee et al. 2024, the algorithmic-data
    /// row of its results table); it gives no figure for weight decay without a filter.
    pub fn paper_steps(self) -> Option<u64> {
        match self {
            Config::Baseline => Some(39_890),
            Config::Ema => Some(910),
            Config::Ma => Some(790),
            Config::BaselineWd005 | Config::BaselineWd01 => None,
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
            Config::BaselineWd005 => (GrokFastKind::None, 0.005, None),
            Config::BaselineWd01 => (GrokFastKind::None, 0.01, None),
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
            Config::BaselineWd005,
            Config::BaselineWd01,
        ]
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| {
            format!("unknown config {name:?}; expected baseline, ema, ma, baseline-wd005 or baseline-wd01")
        })
    }
}
