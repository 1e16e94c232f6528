//! The metadata database handle.
//!
//! SQLite runs in WAL mode so readers never wait for the writer; PostgreSQL is used when the
//! configuration names it. Both sit behind one enum rather than `sqlx::Any`, because queries
//! that differ (claiming jobs with `FOR UPDATE SKIP LOCKED` on PostgreSQL) need to know which
//! one they talk to.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StorageError;

/// Which database to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A SQLite file, created when missing.
    Sqlite(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl std::fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            // Never print credentials that may sit in the URL.
            DatabaseTarget::Postgres(url) => match url.rsplit_once('@') {
                Some((_, host)) => write!(f, "postgres://…@{host}"),
                None => f.write_str(url),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// Opens the pool and checks that the database answers.
    pub async fn connect(
        target: &DatabaseTarget,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Database, StorageError> {
        let error = |source| StorageError::Database {
            target: target.to_string(),
            source,
        };
        let database = match target {
            DatabaseTarget::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(connect_timeout)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(connect_timeout)
                    .connect_with(options)
                    .await
                    .map_err(error)?;
                Database::Sqlite(pool)
            }
            DatabaseTarget::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(connect_timeout)
                    .connect(url)
                    .await
                    .map_err(error)?;
                Database::Postgres(pool)
            }
        };
        database.ping().await?;
        Ok(database)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let result = match self {
            Database::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        };
        result.map_err(|source| StorageError::Database {
            target: self.kind().to_string(),
            source,
        })
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_credentials_are_not_displayed() {
        let target = DatabaseTarget::Postgres("postgres://user:secret@db:5432/test".into());
        assert_eq!(target.to_string(), "postgres://…@db:5432/test");
    }

    #[tokio::test]
    async fn sqlite_file_is_created_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/grokforge.sqlite3");
        let db = Database::connect(
            &DatabaseTarget::Sqlite(path.clone()),
            2,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        db.ping().await.unwrap();
        assert!(path.exists());
        db.close().await;
    }

    #[tokio::test]
    async fn postgres_answers() {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        let db = Database::connect(
            &DatabaseTarget::Postgres(url.into()),
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        db.ping().await.unwrap();
        db.close().await;
    }
}
