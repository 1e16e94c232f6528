//! [`TrainSpec`]: what a person asks for, shared by the CLI and the HTTP API.
//!
//! Every field may be left out and has a default; field names are the CLI flags with `-` written
//! `_` (`--batch-size` is `batch_size`). Unknown fields are refused so a typo never silently falls
//! back to a default. [`TrainSpec::run_config`] turns a spec into the concrete, fully resolved
//! [`RunConfig`] of one variant, which is what a checkpoint stores.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::{DataSource, Dataset, DatasetOptions, ModularTask, TextSource};
use crate::error::{Error, Result};
use crate::grokfast::{GrokFastConfig, GrokFastKind, MaReduction};
use crate::model::{ModelPreset, TransformerConfig};
use crate::phase::Phase;
use crate::train::{OptimizerConfig, OptimizerKind, RunConfig};

/// What setting the `cognate` recipe varies between its variants (besides the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VariedSetting {
    /// Only the seed differs.
    None,
    /// The learning rate is scaled by 1, ½, 2, ¼, 4, … in variant order.
    #[default]
    Lr,
    /// The weight decay is scaled by 1, ½, 2, ¼, 4, … (a zero weight decay stays zero).
    WeightDecay,
}

/// A training request. See the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// The phase to run.
    pub phase: Phase,
    /// The model size; `d_model`, `n_layers`, `n_heads` and `d_ff` override parts of it.
    pub preset: ModelPreset,
    /// Width override.
    pub d_model: Option<usize>,
    /// Depth override.
    pub n_layers: Option<usize>,
    /// Heads override.
    pub n_heads: Option<usize>,
    /// MLP width override.
    pub d_ff: Option<usize>,
    /// An algorithmic task such as `mod-mul:97`, or an uploaded corpus `ds:<id>`
    /// (`POST /datasets`). Used when `text` is not given.
    pub dataset: Option<String>,
    /// A local text corpus (UTF-8 text, or `.jsonl` reading `text_field`).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub text: Option<PathBuf>,
    /// The JSONL field holding the text.
    pub text_field: String,
    /// A Hugging Face `tokenizer.json` for `text`; default the byte-level tokenizer.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub tokenizer: Option<PathBuf>,
    /// An uploaded `tokenizer.json` (`ds:<id>`) for an uploaded corpus; default the byte-level
    /// tokenizer.
    pub tokenizer_dataset: Option<String>,
    /// Sequence length for text.
    pub seq_len: usize,
    /// Share of the examples used for training; default 0.5 for algorithmic tasks (the paper's
    /// split), 0.9 for text.
    pub train_fraction: Option<f64>,
    /// Optimizer steps per variant.
    pub steps: u64,
    /// Number of variants the `cognate` recipe trains.
    pub variants: usize,
    /// What differs between variants besides the seed.
    pub vary: VariedSetting,
    /// Training batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// `adam` (L2 weight decay, as the Grokfast paper) or `adamw` (decoupled).
    pub optimizer: OptimizerKind,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂ (the paper: 0.98).
    pub beta2: f64,
    /// Adam ε (PyTorch's 1e-8, not burn's 1e-5).
    pub epsilon: f64,
    /// Weight decay; default PyTorch's: 0 for Adam, 1e-2 for AdamW.
    pub weight_decay: Option<f64>,
    /// Linear warm-up length in steps (the learning rate of step `s` is `lr · min(s / warmup, 1)`).
    pub warmup_steps: u64,
    /// The GrokFast filter.
    pub grokfast: GrokFastKind,
    /// EMA momentum α.
    pub alpha: f64,
    /// Amplification λ; default 2 for EMA, 5 for MA (the paper's).
    pub lamb: Option<f64>,
    /// MA window.
    pub window: usize,
    /// MA: leave gradients unfiltered until the window is full.
    pub ma_warmup: bool,
    /// MA: mean or sum of the window.
    pub ma_reduction: MaReduction,
    /// Seed of variant 0; variant `i` uses `seed + i`.
    pub seed: u64,
    /// Seed of the train/validation split, shared by all variants; default `seed`.
    pub data_seed: Option<u64>,
    /// Evaluate every N steps; 0 = at the end of every epoch (the paper's schedule).
    pub eval_every: u64,
    /// Batch size for evaluation; default the larger of `batch_size` and 1024.
    pub eval_batch_size: Option<usize>,
    /// Write a checkpoint every N steps; 0 = only on cancel and at the end.
    pub checkpoint_every: u64,
    /// Stop a variant once its validation accuracy reaches this fraction.
    pub stop_at_val_acc: Option<f64>,
    /// Where trained models, metrics and checkpoints go.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub out: Option<PathBuf>,
    /// A checkpoint to resume from.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub resume: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// LibTorch intra-op threads; default LibTorch's own choice.
    pub threads: Option<usize>,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            phase: Phase::Cognate,
            preset: ModelPreset::GrokfastPaper,
            d_model: None,
            n_layers: None,
            n_heads: None,
            d_ff: None,
            dataset: None,
            text: None,
            text_field: "text".to_string(),
            tokenizer: None,
            tokenizer_dataset: None,
            seq_len: 64,
            train_fraction: None,
            steps: 1000,
            variants: 3,
            vary: VariedSetting::Lr,
            batch_size: 512,
            lr: 1e-3,
            optimizer: OptimizerKind::Adam,
            beta1: 0.9,
            beta2: 0.98,
            epsilon: 1e-8,
            weight_decay: None,
            warmup_steps: 10,
            grokfast: GrokFastKind::Ema,
            alpha: 0.98,
            lamb: None,
            window: 100,
            ma_warmup: true,
            ma_reduction: MaReduction::Mean,
            seed: 0,
            data_seed: None,
            eval_every: 0,
            eval_batch_size: None,
            checkpoint_every: 0,
            stop_at_val_acc: None,
            out: None,
            resume: None,
            device: "cpu".to_string(),
            threads: None,
        }
    }
}

/// The fields of a [`TrainSpec`] that name a file or directory on the machine that runs it.
/// Only the machine's owner may set them (`grokforge train`); a spec that arrives over the
/// network must leave them out, since they would let a client make the node read (`text`,
/// `tokenizer`, `resume`) or write (`out`) a path of its choosing.
pub const PATH_FIELDS: [&str; 4] = ["text", "tokenizer", "out", "resume"];

/// How a spec names an uploaded dataset: `ds:<id>`.
pub const UPLOADED_DATASET_PREFIX: &str = "ds:";

/// The id of an uploaded-dataset reference (`ds:<id>` → `<id>`), if `value` is one.
pub fn uploaded_dataset_id(value: &str) -> Option<&str> {
    value.strip_prefix(UPLOADED_DATASET_PREFIX)
}

/// The algorithmic task used when neither `dataset` nor `text` is given: the paper's.
pub const DEFAULT_DATASET: &str = "mod-mul:97";

/// Scale of the varied setting for variant `index`: 1, ½, 2, ¼, 4, …
pub fn variant_scale(index: usize) -> f64 {
    if index == 0 {
        return 1.0;
    }
    let power = index.div_ceil(2) as i32;
    if index % 2 == 1 {
        0.5f64.powi(power)
    } else {
        2f64.powi(power)
    }
}

impl TrainSpec {
    /// The [`PATH_FIELDS`] this spec sets, in that order.
    pub fn path_fields_set(&self) -> Vec<&'static str> {
        let set = [
            self.text.is_some(),
            self.tokenizer.is_some(),
            self.out.is_some(),
            self.resume.is_some(),
        ];
        PATH_FIELDS
            .into_iter()
            .zip(set)
            .filter_map(|(field, set)| set.then_some(field))
            .collect()
    }

    /// Checks every setting, reporting the first problem with the field's name.
    pub fn validate(&self) -> Result<()> {
        if self.dataset.is_some() && self.text.is_some() {
            return Err(Error::invalid(
                "text",
                "give either `dataset` or `text`, not both",
            ));
        }
        let uploaded = self.uploaded_dataset();
        match uploaded {
            Some(id) => check_reference("dataset", id)?,
            None => {
                self.data_source()?;
            }
        }
        if let Some(tokenizer) = &self.tokenizer_dataset {
            let Some(id) = uploaded_dataset_id(tokenizer) else {
                return Err(Error::invalid(
                    "tokenizer_dataset",
                    format!("expected an uploaded tokenizer `ds:<id>`, got {tokenizer:?}"),
                ));
            };
            check_reference("tokenizer_dataset", id)?;
            if uploaded.is_none() {
                return Err(Error::invalid(
                    "tokenizer_dataset",
                    "only applies to an uploaded corpus (`dataset`: `ds:<id>`)",
                ));
            }
            if self.tokenizer.is_some() {
                return Err(Error::invalid(
                    "tokenizer_dataset",
                    "give either `tokenizer` or `tokenizer_dataset`, not both",
                ));
            }
        }
        if self.tokenizer.is_some() && self.text.is_none() {
            return Err(Error::invalid(
                "tokenizer",
                "only applies to `text` datasets",
            ));
        }
        let positive = [
            ("steps", self.steps as usize),
            ("variants", self.variants),
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("window", self.window),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::invalid(field, "must be positive"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "lr",
                format!("must be positive, got {}", self.lr),
            ));
        }
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(
                    field,
                    format!("must be in [0, 1), got {beta}"),
                ));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(Error::invalid("epsilon", "must be positive"));
        }
        if let Some(wd) = self.weight_decay
            && !(wd.is_finite() && wd >= 0.0)
        {
            return Err(Error::invalid(
                "weight_decay",
                format!("must be ≥ 0, got {wd}"),
            ));
        }
        if let Some(target) = self.stop_at_val_acc
            && !(0.0..=1.0).contains(&target)
        {
            return Err(Error::invalid(
                "stop_at_val_acc",
                format!("is a fraction in [0, 1], got {target}"),
            ));
        }
        self.grokfast_config().validate()?;
        // The model's shape (heads dividing the width), so a job that could never build its
        // model is refused rather than queued; the dataset's vocabulary and length, which it
        // takes later, are positive by construction.
        let mut shape = self.preset.config();
        shape.vocab_size = 1;
        shape.max_seq_len = 1;
        self.apply_size_overrides(&mut shape);
        shape.validate()?;
        crate::device::parse_device(&self.device).map(|_| ())
    }

    /// The id of the uploaded corpus the spec names (`dataset`: `ds:<id>`), if any. The node
    /// that runs the job resolves it to the dataset's file (setting `text`) before training.
    pub fn uploaded_dataset(&self) -> Option<&str> {
        self.dataset.as_deref().and_then(uploaded_dataset_id)
    }

    /// Where the data comes from.
    pub fn data_source(&self) -> Result<DataSource> {
        match (&self.text, &self.dataset) {
            (Some(path), _) => {
                let source = TextSource::from_path(path, &self.text_field);
                Ok(DataSource::Text(match &self.tokenizer {
                    Some(tokenizer) => source.with_tokenizer_json(tokenizer),
                    None => source,
                }))
            }
            (None, Some(spec)) if uploaded_dataset_id(spec).is_some() => Err(Error::invalid(
                "dataset",
                format!("{spec} is an uploaded dataset, which only a node can read"),
            )),
            (None, Some(spec)) => Ok(DataSource::Algorithmic(spec.parse::<ModularTask>()?)),
            (None, None) => Ok(DataSource::Algorithmic(DEFAULT_DATASET.parse()?)),
        }
    }

    /// How to cut the data; `cache_dir` is where prepared text is cached.
    pub fn dataset_options(&self, cache_dir: Option<PathBuf>) -> Result<DatasetOptions> {
        let source = self.data_source()?;
        let default_fraction = match source {
            DataSource::Algorithmic(_) => 0.5,
            DataSource::Text(_) => 0.9,
        };
        Ok(DatasetOptions {
            train_fraction: self.train_fraction.unwrap_or(default_fraction),
            split_seed: self.data_seed.unwrap_or(self.seed),
            seq_len: self.seq_len,
            cache_dir,
        })
    }

    /// The GrokFast filter the spec asks for.
    pub fn grokfast_config(&self) -> GrokFastConfig {
        match self.grokfast {
            GrokFastKind::None => GrokFastConfig::None,
            GrokFastKind::Ema => GrokFastConfig::Ema {
                alpha: self.alpha,
                lamb: self.lamb.unwrap_or(2.0),
            },
            GrokFastKind::Ma => GrokFastConfig::Ma {
                window: self.window,
                lamb: self.lamb.unwrap_or(5.0),
                warmup: self.ma_warmup,
                reduction: self.ma_reduction,
            },
        }
    }

    /// The model shape for `dataset`: the preset, the size overrides, and the dataset's
    /// vocabulary and sequence length.
    pub fn model_config(&self, dataset: &Dataset) -> TransformerConfig {
        let mut config = self.preset.config();
        config.vocab_size = dataset.vocab_size;
        config.max_seq_len = dataset.seq_len;
        self.apply_size_overrides(&mut config);
        config
    }

    /// `d_model`, `n_layers`, `n_heads` and `d_ff`, where the spec sets them.
    fn apply_size_overrides(&self, config: &mut TransformerConfig) {
        if let Some(d) = self.d_model {
            config.d_model = d;
        }
        if let Some(n) = self.n_layers {
            config.n_layers = n;
        }
        if let Some(h) = self.n_heads {
            config.n_heads = h;
        }
        if let Some(ff) = self.d_ff {
            config.d_ff = Some(ff);
        }
    }

    /// The fully resolved settings of variant `variant` on `dataset`.
    pub fn run_config(&self, variant: usize, dataset: &Dataset) -> Result<RunConfig> {
        self.validate()?;
        let scale = variant_scale(variant);
        let weight_decay = self.weight_decay.unwrap_or(match self.optimizer {
            OptimizerKind::Adam => 0.0,
            OptimizerKind::AdamW => 1e-2,
        });
        let (lr, weight_decay) = match self.vary {
            VariedSetting::None => (self.lr, weight_decay),
            VariedSetting::Lr => (self.lr * scale, weight_decay),
            VariedSetting::WeightDecay => (self.lr, weight_decay * scale),
        };
        let config = RunConfig {
            variant,
            model: self.model_config(dataset),
            data: dataset.source.clone(),
            train_fraction: self.dataset_options(None)?.train_fraction,
            data_seed: self.data_seed.unwrap_or(self.seed),
            seed: self.seed.wrapping_add(variant as u64),
            steps: self.steps,
            batch_size: self.batch_size,
            optimizer: OptimizerConfig {
                kind: self.optimizer,
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                epsilon: self.epsilon,
                weight_decay,
                warmup_steps: self.warmup_steps,
            },
            grokfast: self.grokfast_config(),
            eval_every: self.eval_every,
            eval_batch_size: self.eval_batch_size.unwrap_or(self.batch_size.max(1024)),
            checkpoint_every: self.checkpoint_every,
            stop_at_val_acc: self.stop_at_val_acc,
        };
        config.model.validate()?;
        Ok(config)
    }
}

/// An uploaded-dataset id as a spec may carry it: a UUID's characters (the node checks it
/// names a dataset).
fn check_reference(field: &'static str, id: &str) -> Result<()> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("`ds:{id}` is not an uploaded dataset's id (`ds:<uuid>`)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_object_is_the_default_and_unknown_fields_are_refused() {
        let spec: TrainSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, TrainSpec::default());
        let err = serde_json::from_str::<TrainSpec>(r#"{"batchsize": 3}"#).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn every_field_that_names_a_file_is_listed() {
        assert!(TrainSpec::default().path_fields_set().is_empty());
        let spec: TrainSpec = serde_json::from_str(
            r#"{"text": "/etc/shadow", "tokenizer": "/t.json", "out": "/o", "resume": "/r"}"#,
        )
        .unwrap();
        assert_eq!(spec.path_fields_set(), PATH_FIELDS);
        // Every `PathBuf` field of the spec is one of them: a new one added without listing it
        // here fails this test, because its JSON value would be a string path.
        let json = serde_json::to_value(&spec).unwrap();
        let strings: Vec<&str> = json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, value)| value.as_str().is_some_and(|s| s.starts_with('/')))
            .map(|(field, _)| field.as_str())
            .collect();
        assert_eq!(strings.len(), PATH_FIELDS.len(), "{strings:?}");
    }

    #[test]
    fn field_names_are_the_cli_flags() {
        let spec: TrainSpec = serde_json::from_str(
            r#"{"phase": "cognate", "preset": "cognate-25m", "dataset": "mod-add:13",
                "batch_size": 64, "stop_at_val_acc": 0.9, "checkpoint_every": 5,
                "grokfast": "ma", "weight_decay": 0.01, "device": "cpu"}"#,
        )
        .unwrap();
        assert_eq!(spec.preset, ModelPreset::Cognate25m);
        assert_eq!(spec.batch_size, 64);
        assert_eq!(spec.grokfast, GrokFastKind::Ma);
        spec.validate().unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["stop_at_val_acc"], 0.9);
        let back: TrainSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |spec: TrainSpec, field: &str| match spec.validate() {
            Err(Error::InvalidSetting { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected {field} to be refused, got {other:?}"),
        };
        bad(
            TrainSpec {
                batch_size: 0,
                ..Default::default()
            },
            "batch_size",
        );
        bad(
            TrainSpec {
                lr: -1.0,
                ..Default::default()
            },
            "lr",
        );
        bad(
            TrainSpec {
                beta2: 1.0,
                ..Default::default()
            },
            "beta2",
        );
        bad(
            TrainSpec {
                stop_at_val_acc: Some(95.0),
                ..Default::default()
            },
            "stop_at_val_acc",
        );
        bad(
            TrainSpec {
                alpha: 1.5,
                ..Default::default()
            },
            "alpha",
        );
        assert!(
            TrainSpec {
                dataset: Some("mod-mul".into()),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        bad(
            TrainSpec {
                d_model: Some(100),
                n_heads: Some(3),
                ..Default::default()
            },
            "n_heads",
        );
        assert!(
            TrainSpec {
                device: "tpu".into(),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn uploaded_datasets_are_named_by_id_and_tokenizers_need_one() {
        let id = "0190a4b2-0000-7000-8000-000000000000";
        let spec = TrainSpec {
            dataset: Some(format!("ds:{id}")),
            tokenizer_dataset: Some(format!("ds:{id}")),
            ..Default::default()
        };
        spec.validate().unwrap();
        assert_eq!(spec.uploaded_dataset(), Some(id));
        assert!(spec.data_source().is_err(), "only a node resolves it");
        let bad = |spec: TrainSpec, field: &str| match spec.validate() {
            Err(Error::InvalidSetting { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected {field} to be refused, got {other:?}"),
        };
        bad(
            TrainSpec {
                dataset: Some("ds:/etc/passwd".into()),
                ..Default::default()
            },
            "dataset",
        );
        bad(
            TrainSpec {
                tokenizer_dataset: Some("/etc/passwd".into()),
                dataset: Some(format!("ds:{id}")),
                ..Default::default()
            },
            "tokenizer_dataset",
        );
        bad(
            TrainSpec {
                tokenizer_dataset: Some(format!("ds:{id}")),
                ..Default::default()
            },
            "tokenizer_dataset",
        );
    }

    #[test]
    fn variant_scales_alternate() {
        let scales: Vec<f64> = (0..5).map(variant_scale).collect();
        assert_eq!(scales, vec![1.0, 0.5, 2.0, 0.25, 4.0]);
    }
}
