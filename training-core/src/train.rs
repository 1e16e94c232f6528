//! The training loop: one model, one dataset, from step 0 (or a checkpoint) to the end.
//!
//! Each step: take the next batch in the seeded data order, forward, cross-entropy on the
//! predicted tokens, backward, GrokFast filter, optimizer step with the warmed-up learning rate.
//! The loss is read before the update, so a NaN or infinite loss stops the run with
//! [`Error::NonFiniteLoss`] and leaves the model and any checkpoint as they were. The
//! cancellation flag is checked before every step; when it is set the run writes a checkpoint (if
//! it has a checkpoint path) and returns [`StopReason::Cancelled`].
//!
//! Subnormal floats are flushed to zero while the loop runs and evaluates
//! ([`crate::denormal`]): GrokFast's trajectories produce them, and x86 CPUs compute on them many
//! times slower than on normal numbers.
//!
//! Everything that decides the numbers — the model, optimizer and GrokFast state, the data order
//! and the step — is in the [`Checkpoint`], so resuming continues bit for bit (same backend, seed
//! and thread count).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bytes, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{CHECKPOINT_FORMAT_VERSION, Checkpoint, CheckpointMeta};
use crate::data::{Batch, DataOrder, DataSource, Dataset, DatasetOptions, Target};
use crate::denormal::FlushDenormals;
use crate::error::{Error, Result};
use crate::grokfast::{GrokFast, GrokFastConfig};
use crate::model::{Transformer, TransformerConfig};
use crate::spec::TrainSpec;

/// Adam with L2 weight decay (as `torch.optim.Adam` and the Grokfast paper) or AdamW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// `torch.optim.Adam`: weight decay added to the gradient.
    #[default]
    Adam,
    /// `torch.optim.AdamW`: decoupled weight decay.
    #[serde(rename = "adamw")]
    AdamW,
}

/// Optimizer settings with PyTorch's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// Adam or AdamW.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub epsilon: f64,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Linear warm-up length.
    pub warmup_steps: u64,
}

impl OptimizerConfig {
    /// The learning rate of the update after `completed` updates: `lr · min(completed / warmup, 1)`,
    /// the Grokfast reference's `LambdaLR(lambda update: min(update / 10, 1))`.
    pub fn lr_at(&self, completed: u64) -> f64 {
        if self.warmup_steps == 0 {
            return self.lr;
        }
        self.lr * (completed as f64 / self.warmup_steps as f64).min(1.0)
    }

    fn build(&self) -> ModuleOptimizer {
        match self.kind {
            OptimizerKind::Adam => {
                let weight_decay = (self.weight_decay > 0.0)
                    .then(|| WeightDecayConfig::new(self.weight_decay as f32));
                AdamConfig::new()
                    .with_beta_1(self.beta1 as f32)
                    .with_beta_2(self.beta2 as f32)
                    .with_epsilon(self.epsilon as f32)
                    .with_weight_decay(weight_decay)
                    .init()
            }
            OptimizerKind::AdamW => AdamWConfig::new()
                .with_beta_1(self.beta1 as f32)
                .with_beta_2(self.beta2 as f32)
                .with_epsilon(self.epsilon as f32)
                .with_weight_decay(self.weight_decay as f32)
                .init(),
        }
    }
}

/// The fully resolved settings of one training run (one variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Index of the variant within its recipe (0 for a lone run).
    pub variant: usize,
    /// Model shape.
    pub model: TransformerConfig,
    /// Data source.
    pub data: DataSource,
    /// Share of examples in the training split.
    pub train_fraction: f64,
    /// Seed of the train/validation split.
    pub data_seed: u64,
    /// Seed of the weights and the data order.
    pub seed: u64,
    /// Total optimizer steps.
    pub steps: u64,
    /// Training batch size.
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// GrokFast filter.
    pub grokfast: GrokFastConfig,
    /// Evaluate every N steps; 0 = at the end of every epoch.
    pub eval_every: u64,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Checkpoint every N steps; 0 = only on cancel.
    pub checkpoint_every: u64,
    /// Stop once validation accuracy reaches this.
    pub stop_at_val_acc: Option<f64>,
}

impl RunConfig {
    /// How the dataset of this run is cut.
    pub fn dataset_options(&self, cache_dir: Option<PathBuf>) -> DatasetOptions {
        DatasetOptions {
            train_fraction: self.train_fraction,
            split_seed: self.data_seed,
            seq_len: self.model.max_seq_len,
            cache_dir,
        }
    }
}

/// One evaluation on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps completed.
    pub step: u64,
    /// Epoch of the training data order.
    pub epoch: u64,
    /// Mean training loss over the steps since the previous evaluation.
    pub train_loss: f64,
    /// Mean training accuracy over the same steps.
    pub train_accuracy: f64,
    /// Validation cross-entropy.
    pub val_loss: f64,
    /// Validation accuracy on the predicted tokens (the answer token for algorithmic tasks).
    pub val_accuracy: f64,
    /// `exp(val_loss)`, for text.
    pub val_perplexity: Option<f64>,
}

/// Every evaluation of a run, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricHistory {
    /// The evaluations.
    pub evals: Vec<EvalRecord>,
    /// The first step at which validation accuracy reached the stop threshold, if it did.
    pub reached_target_at_step: Option<u64>,
}

impl MetricHistory {
    /// The latest evaluation.
    pub fn last(&self) -> Option<&EvalRecord> {
        self.evals.last()
    }
}

/// What the observer sees after every step.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// Variant index.
    pub variant: usize,
    /// Steps completed.
    pub step: u64,
    /// Steps the run will take at most.
    pub total_steps: u64,
    /// Epoch of the data order.
    pub epoch: u64,
    /// Training loss of this step.
    pub loss: f64,
    /// Training accuracy of this step.
    pub accuracy: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Steps per second over the recent steps (evaluation time included).
    pub steps_per_sec: f64,
    /// The latest evaluation, if any.
    pub last_eval: Option<&'a EvalRecord>,
    /// Whether this step ended with an evaluation.
    pub evaluated: bool,
}

/// Receives progress from the loop; every method has an empty default.
pub trait TrainingObserver {
    /// After every step.
    fn on_progress(&mut self, _progress: &Progress<'_>) {}
    /// Before step `step` (1-based) computes anything: the training rows its batch holds, as
    /// indices into [`Dataset::train`], in batch order. With the initial weights and the dataset
    /// this is everything another implementation needs to take the same steps
    /// (`tests/pytorch_trajectory.rs` replays them in PyTorch).
    fn on_batch(&mut self, _variant: usize, _step: u64, _rows: &[u32]) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _variant: usize, _step: u64, _path: &Path) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl TrainingObserver for NoopObserver {}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum StopReason {
    /// All steps were taken.
    Completed,
    /// Validation accuracy reached `stop_at_val_acc`.
    ReachedTarget,
    /// The cancellation flag was set; `checkpoint` is where the state was saved.
    Cancelled {
        /// The checkpoint written on cancel, if the run had a path for it.
        checkpoint: Option<PathBuf>,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::Completed => "completed",
            StopReason::ReachedTarget => "reached the target accuracy",
            StopReason::Cancelled { .. } => "cancelled",
        })
    }
}

/// The result of [`Trainer::run`].
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// Steps completed.
    pub step: u64,
    /// Final evaluation (run at the end unless the last step already evaluated).
    pub final_eval: Option<EvalRecord>,
}

/// External control of a run.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Set to stop at the next step.
    pub cancel: Arc<AtomicBool>,
    /// Where checkpoints go (every `checkpoint_every` steps and on cancel); `None`: nowhere.
    pub checkpoint_path: Option<PathBuf>,
    /// The request the run belongs to, stored in its checkpoints so `--resume` needs nothing else.
    pub spec: Option<TrainSpec>,
    /// Train on through a NaN or infinite loss instead of stopping with
    /// [`Error::NonFiniteLoss`] at that step (the default stops: the weights are lost by then).
    pub continue_on_divergence: bool,
}

/// One training run in progress.
pub struct Trainer {
    config: RunConfig,
    device: Device,
    dataset: Arc<Dataset>,
    model: Option<Transformer>,
    optimizer: ModuleOptimizer,
    grokfast: GrokFast,
    order: DataOrder,
    step: u64,
    history: MetricHistory,
    window_loss: f64,
    window_correct: f64,
    window_count: f64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A fresh run of `config` on `dataset`. `device` may be plain or autodiff.
    pub fn new(config: RunConfig, dataset: Arc<Dataset>, device: &Device) -> Result<Self> {
        // Initialising the weights is this thread's first parallel work: LibTorch starts its
        // worker threads now, and they keep the mode they start with (see `denormal`).
        let _flush = FlushDenormals::new();
        check_fits(&config, &dataset)?;
        let device = device.clone().autodiff();
        let model = config.model.init(config.seed, &device)?;
        Ok(Self {
            optimizer: config.optimizer.build(),
            grokfast: GrokFast::new(config.grokfast)?,
            order: DataOrder::new(dataset.train_len(), config.batch_size, config.seed),
            model: Some(model),
            device,
            dataset,
            step: 0,
            history: MetricHistory::default(),
            window_loss: 0.0,
            window_correct: 0.0,
            window_count: 0.0,
            config,
        })
    }

    /// Continues the run saved in `checkpoint`. `dataset` must be the one the run used (its
    /// fingerprint is checked).
    pub fn resume(checkpoint: Checkpoint, dataset: Arc<Dataset>, device: &Device) -> Result<Self> {
        let _flush = FlushDenormals::new();
        let Checkpoint {
            meta,
            model,
            optimizer,
            grokfast,
        } = checkpoint;
        let config = meta.run;
        check_fits(&config, &dataset)?;
        let fingerprint = dataset_fingerprint(&dataset);
        if fingerprint != meta.dataset_fingerprint {
            return Err(Error::CheckpointMismatch {
                reason: "the dataset differs from the one the checkpoint was trained on".into(),
            });
        }
        let device = device.clone().autodiff();
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(model))
            .map_err(|e| Error::Record(format!("model: {e}")))?;
        let model = config
            .model
            .init(config.seed, &device)?
            .try_load_record(record)
            .map_err(|e| Error::Record(format!("model: {e}")))?;
        let optimizer = config
            .optimizer
            .build()
            .from_bytes(Bytes::from_bytes_vec(optimizer))
            .map_err(|e| Error::Record(format!("optimizer: {e}")))?;
        let grokfast = GrokFast::from_state_bytes(
            config.grokfast,
            &grokfast,
            &device.clone().without_autodiff(),
        )?;
        let order = DataOrder::restore(dataset.train_len(), config.batch_size, meta.data_order);
        Ok(Self {
            model: Some(model),
            optimizer,
            grokfast,
            order,
            device,
            dataset,
            step: meta.step,
            history: meta.history,
            window_loss: meta.window.0,
            window_correct: meta.window.1,
            window_count: meta.window.2,
            config,
        })
    }

    /// The run's settings.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model as it is now.
    pub fn model(&self) -> &Transformer {
        self.model
            .as_ref()
            .expect("the model is only absent during a step")
    }

    /// Every evaluation so far.
    pub fn history(&self) -> &MetricHistory {
        &self.history
    }

    /// Trains until the step budget, the target accuracy or cancellation.
    pub fn run(
        &mut self,
        control: &RunControl,
        observer: &mut dyn TrainingObserver,
    ) -> Result<RunOutcome> {
        let _flush = FlushDenormals::new();
        let mut recent: VecDeque<Instant> = VecDeque::with_capacity(RATE_WINDOW + 1);
        recent.push_back(Instant::now());
        let mut evaluated_last = false;
        while self.step < self.config.steps {
            if control.cancel.load(Ordering::Relaxed) {
                let checkpoint = self.checkpoint_to(control, observer)?;
                return Ok(RunOutcome {
                    reason: StopReason::Cancelled { checkpoint },
                    step: self.step,
                    final_eval: self.history.last().cloned(),
                });
            }
            grokforge_config::crashpoint::reached(grokforge_config::crashpoint::STEP);
            let (loss, accuracy, lr) = self.train_step(control.continue_on_divergence, observer)?;

            let due = if self.config.eval_every == 0 {
                self.order.epoch_finished()
            } else {
                self.step.is_multiple_of(self.config.eval_every)
            };
            evaluated_last = due;
            let mut reached = false;
            if due {
                let record = self.evaluate_and_record();
                reached = self.reached_target(&record);
            }
            if self.config.checkpoint_every > 0
                && self.step.is_multiple_of(self.config.checkpoint_every)
            {
                self.checkpoint_to(control, observer)?;
            }

            recent.push_back(Instant::now());
            if recent.len() > RATE_WINDOW {
                recent.pop_front();
            }
            let span = recent
                .back()
                .zip(recent.front())
                .map(|(b, a)| b.duration_since(*a).as_secs_f64())
                .unwrap_or(0.0);
            let steps_per_sec = if span > 0.0 {
                (recent.len() - 1) as f64 / span
            } else {
                0.0
            };
            observer.on_progress(&Progress {
                variant: self.config.variant,
                step: self.step,
                total_steps: self.config.steps,
                epoch: self.order.epoch(),
                loss,
                accuracy,
                lr,
                steps_per_sec,
                last_eval: self.history.last(),
                evaluated: due,
            });
            if reached {
                return Ok(RunOutcome {
                    reason: StopReason::ReachedTarget,
                    step: self.step,
                    final_eval: self.history.last().cloned(),
                });
            }
        }
        if !evaluated_last && self.window_count > 0.0 {
            self.evaluate_and_record();
        }
        Ok(RunOutcome {
            reason: StopReason::Completed,
            step: self.step,
            final_eval: self.history.last().cloned(),
        })
    }

    fn reached_target(&mut self, record: &EvalRecord) -> bool {
        let Some(target) = self.config.stop_at_val_acc else {
            return false;
        };
        if record.val_accuracy >= target {
            self.history
                .reached_target_at_step
                .get_or_insert(record.step);
            return true;
        }
        false
    }

    /// One optimizer step; returns the step's loss, accuracy and learning rate. A loss that is
    /// not finite stops the run before it reaches the weights, unless `continue_on_divergence`.
    fn train_step(
        &mut self,
        continue_on_divergence: bool,
        observer: &mut dyn TrainingObserver,
    ) -> Result<(f64, f64, f64)> {
        let rows = self.order.next_batch();
        observer.on_batch(self.config.variant, self.step + 1, &rows);
        let batch = self.dataset.train_batch(&rows, &self.device);
        let lr = self.config.optimizer.lr_at(self.step);
        let model = self
            .model
            .take()
            .expect("the model is present between steps");

        let (loss, correct, count) = loss_and_correct(&model, &batch, self.dataset.target);
        // One read for both numbers: the loss must be checked before it touches the weights.
        let stats = crate::to_f32_vec(Tensor::cat(vec![loss.clone().detach(), correct], 0));
        let (loss_value, correct_value) = (f64::from(stats[0]), f64::from(stats[1]));
        if !loss_value.is_finite() && !continue_on_divergence {
            self.model = Some(model);
            return Err(Error::NonFiniteLoss {
                step: self.step + 1,
                loss: loss_value,
            });
        }

        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = self.grokfast.filter(&model, grads);
        self.model = Some(self.optimizer.step(lr, model, grads));
        self.step += 1;

        let accuracy = correct_value / count as f64;
        self.window_loss += loss_value;
        self.window_correct += accuracy;
        self.window_count += 1.0;
        Ok((loss_value, accuracy, lr))
    }

    /// Loss and accuracy on the whole validation split.
    pub fn evaluate(&self) -> (f64, f64) {
        let _flush = FlushDenormals::new();
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        let total = self.dataset.valid_len();
        let per_row = self.dataset.target_len() as f64;
        let chunk = self.config.eval_batch_size.max(1);
        let mut loss_sum = 0.0;
        let mut correct_sum = 0.0;
        let mut start = 0;
        while start < total {
            let len = chunk.min(total - start);
            let batch = self.dataset.valid_batch(start, len, &device);
            let (loss, correct, count) = loss_and_correct(&model, &batch, self.dataset.target);
            let stats = crate::to_f32_vec(Tensor::cat(vec![loss, correct], 0));
            loss_sum += f64::from(stats[0]) * count as f64;
            correct_sum += f64::from(stats[1]);
            start += len;
        }
        let predictions = total as f64 * per_row;
        if predictions == 0.0 {
            return (f64::NAN, 0.0);
        }
        (loss_sum / predictions, correct_sum / predictions)
    }

    fn evaluate_and_record(&mut self) -> EvalRecord {
        let (val_loss, val_accuracy) = self.evaluate();
        let count = self.window_count.max(1.0);
        let record = EvalRecord {
            step: self.step,
            epoch: self.order.epoch(),
            train_loss: self.window_loss / count,
            train_accuracy: self.window_correct / count,
            val_loss,
            val_accuracy,
            val_perplexity: (self.dataset.target == Target::NextToken).then(|| val_loss.exp()),
        };
        tracing::debug!(
            variant = self.config.variant,
            step = record.step,
            val_loss = record.val_loss,
            val_accuracy = record.val_accuracy,
            "evaluated"
        );
        self.window_loss = 0.0;
        self.window_correct = 0.0;
        self.window_count = 0.0;
        self.history.evals.push(record.clone());
        record
    }

    fn checkpoint_to(
        &self,
        control: &RunControl,
        observer: &mut dyn TrainingObserver,
    ) -> Result<Option<PathBuf>> {
        let Some(path) = &control.checkpoint_path else {
            return Ok(None);
        };
        let mut checkpoint = self.checkpoint()?;
        checkpoint.meta.spec = control.spec.clone();
        checkpoint.save(path)?;
        observer.on_checkpoint(self.config.variant, self.step, path);
        Ok(Some(path.clone()))
    }

    /// The complete state of the run.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let model = self
            .model()
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| Error::Record(format!("model: {e}")))?;
        let optimizer = self
            .optimizer
            .into_bytes()
            .map_err(|e| Error::Record(format!("optimizer: {e}")))?;
        Ok(Checkpoint {
            meta: CheckpointMeta {
                format_version: CHECKPOINT_FORMAT_VERSION,
                run: self.config.clone(),
                spec: None,
                step: self.step,
                data_order: self.order.state().clone(),
                history: self.history.clone(),
                window: (self.window_loss, self.window_correct, self.window_count),
                dataset_fingerprint: dataset_fingerprint(&self.dataset),
                threads: crate::device::num_threads(),
                backend: crate::device::backend_description(&self.device),
            },
            model: model.to_vec(),
            optimizer: optimizer.to_vec(),
            grokfast: self.grokfast.state_bytes(),
        })
    }
}

/// Steps over which the steps/s figure is measured.
const RATE_WINDOW: usize = 50;

fn check_fits(config: &RunConfig, dataset: &Dataset) -> Result<()> {
    config.model.validate()?;
    if config.model.vocab_size < dataset.vocab_size {
        return Err(Error::invalid(
            "vocab_size",
            format!(
                "the model reads {} tokens but the dataset has {}",
                config.model.vocab_size, dataset.vocab_size
            ),
        ));
    }
    if config.model.max_seq_len < dataset.seq_len {
        return Err(Error::invalid(
            "seq_len",
            format!(
                "the model covers {} positions but the dataset's sequences have {}",
                config.model.max_seq_len, dataset.seq_len
            ),
        ));
    }
    if dataset.train_len() == 0 || dataset.valid_len() == 0 {
        return Err(Error::invalid("train_fraction", "leaves one split empty"));
    }
    if config.batch_size == 0 {
        return Err(Error::invalid("batch_size", "must be positive"));
    }
    Ok(())
}

/// Mean cross-entropy over the predicted tokens, the number predicted correctly (as a float
/// tensor of one element) and the number of predictions.
fn loss_and_correct(
    model: &Transformer,
    batch: &Batch,
    target: Target,
) -> (Tensor<1>, Tensor<1>, usize) {
    let logits = match target {
        Target::LastToken => model.forward_last(batch.inputs.clone()),
        Target::NextToken => {
            let logits = model.forward(batch.inputs.clone());
            let [b, s, v] = logits.dims();
            logits.reshape([b * s, v])
        }
    };
    let [n, _] = logits.dims();
    let targets = batch.targets.clone();
    let picked = log_softmax(logits.clone(), 1).gather(1, targets.clone().reshape([n, 1]));
    let loss = picked.mean().neg();
    let correct = logits
        .detach()
        .argmax(1)
        .reshape([n])
        .equal(targets)
        .float()
        .sum();
    (loss, correct, n)
}

/// SHA-256 over the split the run trains and validates on.
pub(crate) fn dataset_fingerprint(dataset: &Dataset) -> String {
    let mut hasher = Sha256::new();
    for part in [
        &dataset.train.inputs,
        &dataset.train.targets,
        &dataset.valid.inputs,
        &dataset.valid.targets,
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        for token in part.iter() {
            hasher.update(token.to_le_bytes());
        }
    }
    crate::data::text::hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_from_zero() {
        let config = OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.98,
            epsilon: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 10,
        };
        assert_eq!(config.lr_at(0), 0.0);
        assert!((config.lr_at(5) - 5e-4).abs() < 1e-12);
        assert_eq!(config.lr_at(10), 1e-3);
        assert_eq!(config.lr_at(1000), 1e-3);
        let no_warmup = OptimizerConfig {
            warmup_steps: 0,
            ..config
        };
        assert_eq!(no_warmup.lr_at(0), 1e-3);
    }
}
