//! The training core of grokforge: Burn models, datasets, the GrokFast filter, the training loop,
//! checkpoints and phase recipes. No actors, network or database: the training service drives it
//! from a worker thread, and the CLI runs it directly.
//!
//! The parts, in the order data flows through them:
//!
//! - [`device`]: [`parse_device`] turns `cpu` / `cuda:N` into a burn [`Device`] of the backend
//!   this build has (LibTorch with the default `tch` feature, pure-Rust `flex` without it), and
//!   [`backend_description`] says in words what it is. Library code only ever receives a device.
//! - [`data`]: the algorithmic tasks `a ∘ b mod p` ([`ModularTask`], parsed from `mod-mul:97`),
//!   byte-level text corpora with a content-hash cache, the seeded train/validation split and the
//!   resumable, seeded [`DataOrder`].
//! - [`model`]: the decoder-only causal [`Transformer`] with its presets ([`ModelPreset`]:
//!   `grokfast-paper`, `cognate-25m`) and JSON-serialisable [`TransformerConfig`].
//! - [`grokfast`]: the EMA and MA gradient filters, applied to every float parameter of any burn
//!   module between backward and the optimizer step.
//! - [`train`]: the [`Trainer`] loop — Adam/AdamW with PyTorch's defaults and linear warm-up,
//!   evaluation, a progress [`TrainingObserver`], cancellation, NaN detection. It computes with
//!   subnormal floats flushed to zero ([`denormal`]).
//! - [`checkpoint`]: atomic, SHA-256-verified [`Checkpoint`] files from which a run resumes bit for
//!   bit.
//! - [`phase`] and [`spec`]: the eight Agent Forge [`Phase`]s, the [`Recipe`] trait, the `cognate`
//!   recipe, and [`TrainSpec`], the request the CLI and the HTTP API share.
//!
//! A binary that trains calls [`allocator::keep_freed_memory`] first in `main`: a step frees and
//! allocates the same large buffers every time, and glibc's defaults would hand them back to the
//! kernel in between.
//!
//! All randomness comes from the crate's own seeded [`rng::Rng`], never from a backend's global
//! generator, so the same seed gives the same run on every backend and thread.

pub mod allocator;
pub mod checkpoint;
pub mod data;
pub mod denormal;
pub mod device;
mod error;
pub mod export;
pub mod grokfast;
pub mod model;
pub mod phase;
pub mod rng;
pub mod spec;
pub mod train;

/// burn's tensor API, for callers that feed a model (tests, the export check).
pub use burn::tensor as burn_tensor;
pub use burn::tensor::Device;
pub use checkpoint::Checkpoint;
pub use data::{DataOrder, DataSource, Dataset, ModularTask, Operation};
pub use device::{backend_description, parse_device};
pub use error::{Error, PhaseError, Result};
pub use grokfast::{GrokFast, GrokFastConfig, GrokFastKind};
pub use model::{ModelPreset, Transformer, TransformerConfig};
pub use phase::{
    Phase, PhaseContext, PhaseOutcome, PhaseStatus, Recipe, RecipeObserver, VariantPlan,
    VariantResult, load_model, phases_with_recipe, recipe_for,
};
pub use spec::{PATH_FIELDS, TrainSpec, UPLOADED_DATASET_PREFIX, uploaded_dataset_id};
pub use train::{
    EvalRecord, MetricHistory, NoopObserver, OptimizerKind, Progress, RunConfig, RunControl,
    RunOutcome, StopReason, Trainer, TrainingObserver,
};

/// Reads a float tensor back as `f32` values (converting from its storage dtype).
pub(crate) fn to_f32_vec<const D: usize>(tensor: burn::tensor::Tensor<D>) -> Vec<f32> {
    tensor
        .try_into_vec_as::<f32>()
        .expect("a float tensor reads back as f32")
}

#[cfg(test)]
pub(crate) fn test_device() -> Device {
    device::parse_device("cpu").expect("cpu device")
}
