//! The crate's one error type.

use std::path::PathBuf;

use crate::phase::Phase;

/// Everything that can go wrong while preparing data, training, or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range or contradicts another one.
    #[error("invalid setting `{field}`: {reason}")]
    InvalidSetting {
        /// The setting's name as the CLI and HTTP API spell it (`batch_size`).
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },

    /// A device string other than `cpu` or `cuda:N`, or a device this build cannot drive.
    #[error("unsupported device {device:?}: {reason}")]
    Device {
        /// The string as given.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A dataset spec like `mod-mul:97` that does not parse.
    #[error("invalid dataset {spec:?}: {reason}")]
    DatasetSpec {
        /// The spec as given.
        spec: String,
        /// Why it was refused.
        reason: String,
    },

    /// A data file with a bad line (invalid UTF-8, malformed JSON, a missing field).
    #[error("{path}:{line}: {reason}")]
    DataFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },

    /// The loss became NaN or infinite.
    #[error("loss is not finite at step {step} (loss = {loss})")]
    NonFiniteLoss {
        /// The 1-based step whose loss was not finite.
        step: u64,
        /// The offending value.
        loss: f64,
    },

    /// A checkpoint that is truncated, corrupted, or from an incompatible version.
    #[error("checkpoint {path} refused: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },

    /// A checkpoint whose content does not fit the run asked to resume from it.
    #[error("checkpoint does not match this run: {reason}")]
    CheckpointMismatch {
        /// What differs.
        reason: String,
    },

    /// Weights or optimizer state that burn could not encode or decode.
    #[error("record error: {0}")]
    Record(String),

    /// A phase that has no recipe yet.
    #[error(transparent)]
    Phase(#[from] PhaseError),

    /// A file system operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done (`writing checkpoint`).
        context: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidSetting {
            field,
            reason: reason.into(),
        }
    }
}

/// Errors of the phase layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhaseError {
    /// The phase exists in the pipeline but nothing here implements it; nothing is simulated.
    #[error(
        "phase `{phase}` has no recipe yet; phases with a recipe: {}",
        list(available)
    )]
    NoRecipe {
        /// The phase asked for.
        phase: Phase,
        /// The phases that can run.
        available: Vec<Phase>,
    },
    /// A string that names no phase.
    #[error("unknown phase {name:?}; the phases are: {}", list(&Phase::ALL))]
    Unknown {
        /// The string as given.
        name: String,
    },
}

fn list(phases: &[Phase]) -> String {
    phases
        .iter()
        .map(Phase::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
