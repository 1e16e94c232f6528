//! Throwaway databases for tests, here so every crate's tests get the same isolation.
//!
//! * [`TestDatabase::sqlite`]: a SQLite file in a fresh temp directory.
//! * [`TestDatabase::postgres`]: a fresh schema `t_<uuid>` in an existing PostgreSQL
//!   database, every pooled connection pinned to it with `search_path`, dropped again by
//!   [`TestDatabase::cleanup`]. Parallel tests and reruns never see each other's tables.
//!
//! [`run_on`] runs a test body against one of them and cleans up even when the body panics.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;

use crate::{Database, DatabaseTarget, StorageError};

/// Where the tests find PostgreSQL unless told otherwise.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

/// A migrated database of its own, plus a temp directory for files.
pub struct TestDatabase {
    pub database: Database,
    dir: tempfile::TempDir,
    /// (admin URL, schema, URL pinned to the schema)
    postgres: Option<(String, String, String)>,
}

impl TestDatabase {
    pub async fn sqlite() -> Result<TestDatabase, StorageError> {
        let dir = tempdir()?;
        let database = Database::connect(
            &DatabaseTarget::Sqlite(dir.path().join("grokforge.sqlite3")),
            8,
            Duration::from_secs(10),
        )
        .await?;
        Ok(TestDatabase {
            database,
            dir,
            postgres: None,
        })
    }

    /// A new schema in the database at `url` (a `postgres://` URL without query string).
    pub async fn postgres(url: &str) -> Result<TestDatabase, StorageError> {
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let admin_error = |source| StorageError::Database {
            target: DatabaseTarget::Postgres(url.to_owned()).to_string(),
            source,
        };
        let mut admin = sqlx::PgConnection::connect(url)
            .await
            .map_err(admin_error)?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .map_err(admin_error)?;
        admin.close().await.ok();

        let separator = if url.contains('?') { '&' } else { '?' };
        let pinned = format!("{url}{separator}options[search_path]={schema}");
        let database = Database::connect(
            &DatabaseTarget::Postgres(pinned.clone()),
            8,
            Duration::from_secs(10),
        )
        .await?;
        Ok(TestDatabase {
            database,
            dir: tempdir()?,
            postgres: Some((url.to_owned(), schema, pinned)),
        })
    }

    pub async fn new(backend: TestBackend) -> Result<TestDatabase, StorageError> {
        match backend {
            TestBackend::Sqlite => TestDatabase::sqlite().await,
            TestBackend::Postgres => TestDatabase::postgres(DEFAULT_POSTGRES_URL).await,
        }
    }

    /// For PostgreSQL, a URL whose connections all use this test's schema: hand it to code
    /// that connects by itself (e.g. a node's `database.url`).
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, _, pinned)| pinned.as_str())
    }

    /// A temp directory that lives as long as this database (for artifacts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Closes the pool and drops the schema (PostgreSQL) or the file (SQLite).
    pub async fn cleanup(self) {
        self.database.close().await;
        if let Some((url, schema, _)) = self.postgres {
            match sqlx::PgConnection::connect(&url).await {
                Ok(mut admin) => {
                    let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut admin)
                        .await
                    {
                        tracing::warn!(schema, error = %e, "cannot drop test schema");
                    }
                    admin.close().await.ok();
                }
                Err(e) => tracing::warn!(schema, error = %e, "cannot drop test schema"),
            }
        }
    }
}

fn tempdir() -> Result<tempfile::TempDir, StorageError> {
    tempfile::tempdir().map_err(StorageError::io(std::env::temp_dir()))
}

/// Runs `body` against a fresh database of `backend`, then cleans up, also when `body` panics
/// (the panic is passed on afterwards).
pub async fn run_on<F, Fut>(backend: TestBackend, body: F)
where
    F: FnOnce(Database, PathBuf) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let test = TestDatabase::new(backend)
        .await
        .unwrap_or_else(|e| panic!("cannot create a {backend:?} test database: {e}"));
    let outcome = tokio::spawn(body(test.database.clone(), test.artifacts_dir())).await;
    test.cleanup().await;
    if let Err(error) = outcome
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}
