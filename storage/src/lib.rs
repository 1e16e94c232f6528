//! Storage of a grokforge node: the metadata database and the files under the data directory.
//!
//! * [`db`] — the metadata database: a SQLite file in the data directory by default, or
//!   PostgreSQL for a cluster, behind one [`Database`] handle that migrates on connect.
//! * [`artifacts`] — the artifact store: model files under `<artifacts>/models/<id>/`, written
//!   atomically with their SHA-256 computed on the way in and checked on every read, and the
//!   garbage collector for what a crash leaves behind.
//! * [`models`] — the model registry: versions per name, lineage, tags, one winner per phase,
//!   handoffs between phases; [`ModelRegistry`] ties the database and the artifact store.
//! * [`export`] — export packages (zip, or a directory) with a checksummed manifest.
//! * [`jobs`] — training job records and their durable event log.
//! * [`datasets`] — uploaded corpora and tokenizers (`ds:<id>`), deduplicated by content, and
//!   which jobs read them.
//! * [`fs`] — the data directory itself: checks that it is writable.
//! * [`tokens`] — tokens every node of a cluster accepts, as SHA-256 digests.
//! * [`testing`] — throwaway databases for tests (a SQLite file, a PostgreSQL schema).

pub mod artifacts;
pub mod datasets;
pub mod db;
pub mod export;
pub mod fs;
pub mod jobs;
pub mod models;
pub mod queue;
pub mod testing;
pub mod tokens;

pub use artifacts::{ArtifactStore, GcOptions, GcReason, GcRemoval, GcReport};
pub use datasets::{
    DatasetKind, DatasetRecord, DatasetRepository, DatasetRole, DatasetUse, DeleteOutcome,
    JobDataset, PendingUpload, Stored, UploadStats,
};
pub use db::{Database, DatabaseTarget};
pub use export::{Compression, ExportFormat, ExportRecord};
pub use jobs::{AttemptError, JobEvent, JobFilter, JobRecord, JobRepository, JobStatus, NewJob};
pub use models::{
    HandoffRecord, ModelFile, ModelFilter, ModelRecord, ModelRegistry, NewModel, NewModelFile,
    WinnerChange,
};

use std::path::PathBuf;

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database {target}: {source}")]
    Database {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating database {target}: {source}")]
    Migrate {
        target: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Some of the requested models do not exist; every missing id is listed.
    #[error("unknown model id(s): {}", join_ids(ids))]
    ModelNotFound { ids: Vec<Uuid> },
    /// A model's file is missing, truncated or altered: its bytes are never handed out.
    #[error("model {model_id}: file {file} failed verification: {reason}")]
    ArtifactCorrupt {
        model_id: Uuid,
        file: String,
        reason: String,
    },
    #[error("unknown job id {id}")]
    JobNotFound { id: Uuid },
    #[error("unknown export id {id}")]
    ExportNotFound { id: Uuid },
    /// A request that cannot be carried out as given (a 4xx for the gateway).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("writing export {path}: {source}")]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("encoding {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A blocking file task panicked or was cancelled (the node is shutting down).
    #[error("storage task did not finish: {0}")]
    Task(String),
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { path, source }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> StorageError {
        StorageError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Whether the error is the caller's (unknown id, invalid request) rather than the
    /// storage's: the gateway answers 4xx for these and 5xx for the rest.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StorageError::ModelNotFound { .. }
                | StorageError::JobNotFound { .. }
                | StorageError::ExportNotFound { .. }
                | StorageError::Invalid { .. }
        )
    }
}

fn join_ids(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs blocking file work off the async worker threads.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}
