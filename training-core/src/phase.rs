//! Phases of the Agent Forge pipeline and the recipes that implement them.
//!
//! [`Phase`] names the eight phases exactly as the pipeline does (`cognate`, `evomerge`, …) and
//! round-trips through `FromStr`/`Display`/serde with those strings. A [`Recipe`] implements one
//! phase; [`recipe_for`] finds it, and a phase without one is a [`PhaseError::NoRecipe`] listing
//! the phases that have one — nothing is ever simulated. Today only `cognate` has a recipe: it
//! trains `variants` foundation models from scratch that differ in seed and one setting
//! ([`VariedSetting`](crate::spec::VariedSetting)), evaluates each and marks the best the winner.
//!
//! With an output directory a recipe writes, per variant, `variant-N/model.bpk` (burnpack
//! weights), `model.json` (the [`TransformerConfig`]), `run.json` (the [`RunConfig`]),
//! `metrics.json` (the [`VariantResult`]) and `checkpoint.gfck`, and `summary.json` for the whole
//! phase. A finished variant found there is reused, so a recipe resumed after a cancel trains only
//! what is left.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, write_atomic};
use crate::data::Dataset;
use crate::error::{Error, PhaseError, Result};
use crate::model::{Transformer, TransformerConfig};
use crate::spec::TrainSpec;
use crate::train::{
    EvalRecord, MetricHistory, RunConfig, RunControl, StopReason, Trainer, TrainingObserver,
};

/// A phase of the Agent Forge pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(rename_all = "kebab-case")
)]
pub enum Phase {
    /// Foundation models from scratch.
    #[default]
    Cognate,
    /// Evolutionary model merging.
    Evomerge,
    /// Quiet-STaR reasoning training.
    Quietstar,
    /// BitNet 1.58-bit quantisation.
    Bitnet,
    /// The main training loop with GrokFast.
    ForgeTraining,
    /// Tool use and persona baking.
    ToolPersona,
    /// Automated design of agentic systems.
    Adas,
    /// Final compression.
    FinalCompression,
}

impl Phase {
    /// Every phase, in pipeline order.
    pub const ALL: [Phase; 8] = [
        Phase::Cognate,
        Phase::Evomerge,
        Phase::Quietstar,
        Phase::Bitnet,
        Phase::ForgeTraining,
        Phase::ToolPersona,
        Phase::Adas,
        Phase::FinalCompression,
    ];

    /// The canonical name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Cognate => "cognate",
            Phase::Evomerge => "evomerge",
            Phase::Quietstar => "quietstar",
            Phase::Bitnet => "bitnet",
            Phase::ForgeTraining => "forge-training",
            Phase::ToolPersona => "tool-persona",
            Phase::Adas => "adas",
            Phase::FinalCompression => "final-compression",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = PhaseError;

    fn from_str(name: &str) -> Result<Self, PhaseError> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == name)
            .ok_or_else(|| PhaseError::Unknown {
                name: name.to_string(),
            })
    }
}

impl Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// What a variant is about to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantPlan {
    /// Variant index.
    pub index: usize,
    /// Its settings.
    pub config: RunConfig,
    /// The step it starts from (non-zero when resumed).
    pub start_step: u64,
}

/// Receives a recipe's progress: the training loop's events plus variant boundaries.
pub trait RecipeObserver: TrainingObserver {
    /// A variant starts (or resumes).
    fn on_variant_start(&mut self, _plan: &VariantPlan) {}
    /// A variant finished, was cancelled, or was found already finished.
    fn on_variant_end(&mut self, _result: &VariantResult) {}
    /// The run's data is ready (read from the prepared-data cache, or prepared now).
    fn on_dataset_prepared(&mut self, _dataset: &Dataset) {}
}

impl RecipeObserver for crate::train::NoopObserver {}

/// One trained (or interrupted) variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// Variant index.
    pub index: usize,
    /// A name for the registry: `cognate-v0`, …
    pub name: String,
    /// Its settings.
    pub config: RunConfig,
    /// Trainable parameters.
    pub num_params: usize,
    /// Steps completed.
    pub steps: u64,
    /// Why it stopped.
    pub stop: StopReason,
    /// The final evaluation.
    pub final_eval: Option<EvalRecord>,
    /// All evaluations.
    pub history: MetricHistory,
    /// Where its files are, when the recipe had an output directory.
    pub dir: Option<PathBuf>,
    /// Whether it is the phase's best.
    pub winner: bool,
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum PhaseStatus {
    /// Every variant finished.
    Completed,
    /// Cancelled while training `variant`; its state is in `checkpoint`.
    Cancelled {
        /// The interrupted variant.
        variant: usize,
        /// Its checkpoint, when there was an output directory.
        checkpoint: Option<PathBuf>,
    },
}

/// The result of a phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseOutcome {
    /// The phase.
    pub phase: Phase,
    /// Completed or cancelled.
    pub status: PhaseStatus,
    /// The variants trained so far.
    pub variants: Vec<VariantResult>,
    /// Index of the best variant (completed phases only).
    pub winner: Option<usize>,
    /// Backend and device, in words.
    pub backend: String,
}

/// Everything a recipe runs with.
pub struct PhaseContext<'a> {
    /// The request.
    pub spec: TrainSpec,
    /// Where to train (plain or autodiff).
    pub device: Device,
    /// Set to stop at the next step; the running variant then writes a checkpoint.
    pub cancel: Arc<AtomicBool>,
    /// Progress receiver.
    pub observer: &'a mut dyn RecipeObserver,
    /// Directory for prepared-dataset caches; `None` disables caching.
    pub cache_dir: Option<PathBuf>,
    /// Model directories handed over by the previous phase (empty for `cognate`).
    pub inputs: Vec<PathBuf>,
    /// Train on through a NaN or infinite loss (see [`RunControl::continue_on_divergence`]).
    pub continue_on_divergence: bool,
}

/// A phase implementation.
pub trait Recipe: Send + Sync {
    /// The phase it implements.
    fn phase(&self) -> Phase;
    /// Runs the phase.
    fn run(&self, ctx: &mut PhaseContext<'_>) -> Result<PhaseOutcome>;
}

/// The phases that have a recipe.
pub fn phases_with_recipe() -> Vec<Phase> {
    vec![Phase::Cognate]
}

/// The recipe of `phase`, or [`PhaseError::NoRecipe`].
pub fn recipe_for(phase: Phase) -> Result<Box<dyn Recipe>, PhaseError> {
    match phase {
        Phase::Cognate => Ok(Box::new(CognateRecipe)),
        other => Err(PhaseError::NoRecipe {
            phase: other,
            available: phases_with_recipe(),
        }),
    }
}

/// Trains `spec.variants` transformers from scratch and marks the best.
#[derive(Debug, Default, Clone, Copy)]
pub struct CognateRecipe;

const CHECKPOINT_FILE: &str = "checkpoint.gfck";
const METRICS_FILE: &str = "metrics.json";

/// Directory of variant `index` under `out`.
pub fn variant_dir(out: &Path, index: usize) -> PathBuf {
    out.join(format!("variant-{index}"))
}

impl Recipe for CognateRecipe {
    fn phase(&self) -> Phase {
        Phase::Cognate
    }

    fn run(&self, ctx: &mut PhaseContext<'_>) -> Result<PhaseOutcome> {
        let spec = ctx.spec.clone();
        spec.validate()?;
        if let Some(threads) = spec.threads {
            crate::device::set_num_threads(threads);
        }
        let resume = match &spec.resume {
            Some(path) => Some((Checkpoint::load(path)?, path.clone())),
            None => None,
        };
        let dataset = Arc::new(Dataset::prepare(
            &spec.data_source()?,
            &spec.dataset_options(ctx.cache_dir.clone())?,
        )?);
        ctx.observer.on_dataset_prepared(&dataset);
        let backend = crate::device::backend_description(&ctx.device);
        let mut resume = resume;
        let mut variants = Vec::with_capacity(spec.variants);

        for index in 0..spec.variants {
            let config = spec.run_config(index, &dataset)?;
            let dir = spec.out.as_ref().map(|out| variant_dir(out, index));
            if let Some(done) = dir.as_deref().and_then(finished_variant)
                && done.config == config
            {
                tracing::info!(variant = index, "variant already trained; reusing it");
                ctx.observer.on_variant_end(&done);
                variants.push(done);
                continue;
            }

            if let Some(dir) = &dir {
                crate::checkpoint::remove_unfinished_writes(dir);
            }
            let checkpoint = match resume.take() {
                Some((checkpoint, path)) if checkpoint.meta.run.variant == index => {
                    Some((checkpoint, path))
                }
                other => {
                    resume = other;
                    // A variant interrupted earlier continues from its own checkpoint when the
                    // recipe is being resumed.
                    match (&spec.resume, &dir) {
                        (Some(_), Some(dir)) if dir.join(CHECKPOINT_FILE).exists() => {
                            let path = dir.join(CHECKPOINT_FILE);
                            Some((Checkpoint::load(&path)?, path))
                        }
                        _ => None,
                    }
                }
            };
            let mut trainer = match checkpoint {
                Some((checkpoint, path)) => {
                    if checkpoint.meta.run != config {
                        return Err(Error::CheckpointMismatch {
                            reason: format!(
                                "{} was written for different settings of variant {index}",
                                path.display()
                            ),
                        });
                    }
                    if checkpoint.meta.threads != crate::device::num_threads() {
                        tracing::warn!(
                            saved = checkpoint.meta.threads,
                            now = crate::device::num_threads(),
                            "resuming with a different thread count: results will not be bit-identical"
                        );
                    }
                    Trainer::resume(checkpoint, dataset.clone(), &ctx.device)?
                }
                None => Trainer::new(config.clone(), dataset.clone(), &ctx.device)?,
            };
            ctx.observer.on_variant_start(&VariantPlan {
                index,
                config: config.clone(),
                start_step: trainer.step(),
            });

            let control = RunControl {
                cancel: ctx.cancel.clone(),
                checkpoint_path: dir.as_ref().map(|d| d.join(CHECKPOINT_FILE)),
                spec: Some(TrainSpec {
                    resume: None,
                    ..spec.clone()
                }),
                continue_on_divergence: ctx.continue_on_divergence,
            };
            let outcome = trainer.run(&control, &mut *ctx.observer)?;
            let result = VariantResult {
                index,
                name: format!("{}-v{index}", Phase::Cognate),
                num_params: config.model.num_params(),
                config,
                steps: outcome.step,
                stop: outcome.reason.clone(),
                final_eval: outcome.final_eval,
                history: trainer.history().clone(),
                dir: dir.clone(),
                winner: false,
            };
            if let Some(dir) = &dir {
                save_variant(dir, trainer.model(), &result, &spec)?;
            }
            ctx.observer.on_variant_end(&result);
            let cancelled = match &outcome.reason {
                StopReason::Cancelled { checkpoint } => Some(checkpoint.clone()),
                _ => None,
            };
            variants.push(result);
            if let Some(checkpoint) = cancelled {
                let outcome = PhaseOutcome {
                    phase: Phase::Cognate,
                    status: PhaseStatus::Cancelled {
                        variant: index,
                        checkpoint,
                    },
                    variants,
                    winner: None,
                    backend,
                };
                write_summary(&spec, &outcome)?;
                return Ok(outcome);
            }
        }

        let winner = pick_winner(&variants);
        if let Some(w) = winner {
            variants[w].winner = true;
            if let Some(dir) = &variants[w].dir {
                write_json(&dir.join(METRICS_FILE), &variants[w])?;
            }
        }
        let outcome = PhaseOutcome {
            phase: Phase::Cognate,
            status: PhaseStatus::Completed,
            variants,
            winner,
            backend,
        };
        write_summary(&spec, &outcome)?;
        Ok(outcome)
    }
}

/// Highest validation accuracy wins; ties go to the lower validation loss, then the lower index.
fn pick_winner(variants: &[VariantResult]) -> Option<usize> {
    variants
        .iter()
        .filter_map(|v| v.final_eval.as_ref().map(|e| (v.index, e)))
        .filter(|(_, e)| e.val_loss.is_finite())
        .max_by(|(ia, a), (ib, b)| {
            a.val_accuracy
                .total_cmp(&b.val_accuracy)
                .then(b.val_loss.total_cmp(&a.val_loss))
                .then(ib.cmp(ia))
        })
        .map(|(index, _)| index)
}

fn finished_variant(dir: &Path) -> Option<VariantResult> {
    let bytes = fs::read(dir.join(METRICS_FILE)).ok()?;
    let result: VariantResult = serde_json::from_slice(&bytes).ok()?;
    let finished = !matches!(result.stop, StopReason::Cancelled { .. });
    (finished && dir.join("model.bpk").exists()).then_some(result)
}

fn save_variant(
    dir: &Path,
    model: &Transformer,
    result: &VariantResult,
    spec: &TrainSpec,
) -> Result<()> {
    let weights = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| Error::Record(format!("model: {e}")))?;
    write_atomic(&dir.join("model.bpk"), &weights)?;
    // The same weights under PyTorch names, which the registry stores and exports.
    let safetensors = crate::export::to_safetensors(model, &result.config.model)?;
    write_atomic(&dir.join(crate::export::SAFETENSORS_FILE), &safetensors)?;
    write_json(&dir.join("model.json"), &result.config.model)?;
    write_json(&dir.join("run.json"), &result.config)?;
    write_json(&dir.join("spec.json"), spec)?;
    write_json(&dir.join(METRICS_FILE), result)
}

fn write_summary(spec: &TrainSpec, outcome: &PhaseOutcome) -> Result<()> {
    match &spec.out {
        Some(out) => write_json(&out.join("summary.json"), outcome),
        None => Ok(()),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Record(format!("{}: {e}", path.display())))?;
    write_atomic(path, &json)
}

/// Loads a model written by a recipe (`model.json` + `model.bpk` in `dir`) onto `device`.
pub fn load_model(dir: &Path, device: &Device) -> Result<(TransformerConfig, Transformer)> {
    let config_path = dir.join("model.json");
    let config_bytes = fs::read(&config_path).map_err(|e| Error::io("reading", &config_path, e))?;
    let config: TransformerConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::Record(format!("{}: {e}", config_path.display())))?;
    let weights_path = dir.join("model.bpk");
    let weights = fs::read(&weights_path).map_err(|e| Error::io("reading", &weights_path, e))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(weights))
        .map_err(|e| Error::Record(format!("{}: {e}", weights_path.display())))?;
    let model = config
        .init(0, device)?
        .try_load_record(record)
        .map_err(|e| Error::Record(format!("{}: {e}", weights_path.display())))?;
    Ok((config, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_round_trips_through_its_name_and_serde() {
        let names = [
            "cognate",
            "evomerge",
            "quietstar",
            "bitnet",
            "forge-training",
            "tool-persona",
            "adas",
            "final-compression",
        ];
        assert_eq!(Phase::ALL.len(), names.len());
        for (phase, name) in Phase::ALL.into_iter().zip(names) {
            assert_eq!(phase.to_string(), name);
            assert_eq!(name.parse::<Phase>().unwrap(), phase);
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), phase);
        }
        assert!(matches!(
            "forge_training".parse::<Phase>(),
            Err(PhaseError::Unknown { .. })
        ));
        assert!(serde_json::from_str::<Phase>("\"Cognate\"").is_err());
    }

    #[test]
    fn phases_without_a_recipe_say_so_with_the_available_list() {
        assert_eq!(recipe_for(Phase::Cognate).unwrap().phase(), Phase::Cognate);
        for phase in Phase::ALL.into_iter().filter(|p| *p != Phase::Cognate) {
            match recipe_for(phase) {
                Err(PhaseError::NoRecipe {
                    phase: p,
                    available,
                }) => {
                    assert_eq!(p, phase);
                    assert_eq!(available, vec![Phase::Cognate]);
                    let message = PhaseError::NoRecipe {
                        phase: p,
                        available,
                    }
                    .to_string();
                    assert!(message.contains(phase.as_str()) && message.contains("cognate"));
                }
                Err(other) => panic!("{phase}: unexpected {other:?}"),
                Ok(_) => panic!("{phase}: unexpected recipe"),
            }
        }
    }
}
