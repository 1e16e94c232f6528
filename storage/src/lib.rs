//! Storage of a grokforge node: the metadata database and the files under the data directory.
//!
//! * [`db`] — the metadata database: a SQLite file in the data directory by default, or
//!   PostgreSQL for a cluster, behind one [`Database`] handle.
//! * [`fs`] — the data directory itself: checks that it is writable.
//!
//! The model registry, artifact store, job records and export packages build on these.

pub mod db;
pub mod fs;

pub use db::{Database, DatabaseTarget};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database {target}: {source}")]
    Database {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
