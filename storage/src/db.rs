//! The metadata database handle.
//!
//! SQLite runs in WAL mode so readers never wait for the writer; PostgreSQL is used when the
//! configuration names it. Both sit behind one enum rather than `sqlx::Any`, because queries
//! that differ (claiming jobs with `FOR UPDATE SKIP LOCKED` on PostgreSQL) need to know which
//! one they talk to.
//!
//! Migrations ship inside the binary, one directory per backend (`migrations/sqlite`,
//! `migrations/postgres`), and run on every connect. Two directories rather than one portable
//! set so that PostgreSQL gets its native types (`uuid`, `jsonb`, `timestamptz`, a GIN index on
//! tags) while the Rust code still binds the same values to both: sqlx encodes a `Uuid` as a
//! BLOB, a timestamp as RFC 3339 text and JSON as text on SQLite, and the SQLite schema is
//! written to match.
//!
//! Repository code runs one statement text on both backends wherever it can (SQLite accepts
//! PostgreSQL's `$1` placeholders) through [`with_pool!`], which expands its body once per
//! backend so every value is bound with the concrete type each driver expects.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StorageError;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

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
    /// Opens the pool, checks that the database answers and brings its schema up to date.
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
                    // SQLite writes its journal beside the file: a directory it cannot write
                    // in is named now, not met as "unable to open database file" later.
                    crate::fs::probe_writable(parent)?;
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
        database.migrate().await?;
        Ok(database)
    }

    /// Applies the migrations this binary ships that the database has not seen yet. Safe to
    /// run from several nodes at once: sqlx serialises migrators with a lock (an advisory lock
    /// on PostgreSQL, the write lock on SQLite).
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let result = match self {
            Database::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Database::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        };
        result.map_err(|source| StorageError::Migrate {
            target: self.kind().to_string(),
            source,
        })
    }

    /// Wraps a driver error with which database produced it.
    pub(crate) fn error(&self, source: sqlx::Error) -> StorageError {
        StorageError::Database {
            target: self.kind().to_string(),
            source,
        }
    }

    /// The health check's round trip: a read of the job table, so that a schema dropped or a
    /// database file that can no longer be read fails it, not only a connection that is gone.
    pub async fn check(&self) -> Result<(), StorageError> {
        const QUERY: &str = "SELECT 1 FROM jobs LIMIT 1";
        let result = match self {
            Database::Sqlite(pool) => sqlx::query(QUERY).fetch_optional(pool).await.map(|_| ()),
            Database::Postgres(pool) => sqlx::query(QUERY).fetch_optional(pool).await.map(|_| ()),
        };
        result.map_err(|source| StorageError::Database {
            target: self.kind().to_string(),
            source,
        })
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

/// Runs `$body` with `$pool` bound to the concrete pool of `$db`. The body is expanded once per
/// backend, so generic sqlx calls type-check against each driver; use [`Backend`] inside it for
/// what differs (statement text, how a write transaction begins).
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// What differs between the two backends, looked up from inside [`with_pool!`].
pub(crate) trait Backend: Sync {
    type Db: sqlx::Database;
    const IS_POSTGRES: bool;

    /// Begins a transaction that will write. On SQLite this is `BEGIN IMMEDIATE`: it takes the
    /// write lock up front, waiting out `busy_timeout`, instead of upgrading a read lock later,
    /// which fails at once with `SQLITE_BUSY` when another writer got there first.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    fn is_postgres(&self) -> bool {
        Self::IS_POSTGRES
    }

    /// Picks the statement text for this backend.
    fn sql(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        if Self::IS_POSTGRES { postgres } else { sqlite }
    }
}

impl Backend for SqlitePool {
    type Db = sqlx::Sqlite;
    const IS_POSTGRES: bool = false;

    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>> + Send
    {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl Backend for PgPool {
    type Db = sqlx::Postgres;
    const IS_POSTGRES: bool = true;

    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>> + Send
    {
        self.begin()
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
    async fn postgres_answers_and_migrates_into_its_own_schema() {
        let test = crate::testing::TestDatabase::postgres(crate::testing::DEFAULT_POSTGRES_URL)
            .await
            .unwrap();
        test.database.ping().await.unwrap();
        test.database.check().await.unwrap();
        // Migrating again is a no-op.
        test.database.migrate().await.unwrap();
        // Without its tables the database still answers, but the check fails.
        let Database::Postgres(pool) = &test.database else {
            unreachable!("a PostgreSQL test database")
        };
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(pool)
            .await
            .unwrap();
        test.database.ping().await.unwrap();
        let error = test.database.check().await.unwrap_err().to_string();
        assert!(error.contains("jobs"), "{error}");
        test.cleanup().await;
    }

    #[tokio::test]
    async fn sqlite_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let target = DatabaseTarget::Sqlite(dir.path().join("db.sqlite3"));
        for _ in 0..2 {
            let db = Database::connect(&target, 1, Duration::from_secs(5))
                .await
                .unwrap();
            db.migrate().await.unwrap();
            db.close().await;
        }
    }
}
