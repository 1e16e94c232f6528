//! Training job records and their durable event log.
//!
//! The database is the source of truth for a job's state; this module gives typed access to
//! the rows. Claiming, leases and state transitions belong to the training service, which
//! builds on the same tables (see the comments in the migrations for the claim query).
//!
//! Invariant: a job's event sequence numbers are 1, 2, 3, … with no gaps or duplicates. The
//! next number comes from the job row's `last_event_seq`, bumped in the same transaction that
//! inserts the event, so concurrent appenders queue on the row lock (the single writer on
//! SQLite) instead of racing for `MAX(seq) + 1`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::StorageError;
use crate::datasets::DatasetRole;
use crate::db::{Backend, Database, with_pool};
use crate::models::now_micros;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// The node running it died; claimable again once its lease expires.
    Interrupted,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "interrupted" => JobStatus::Interrupted,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One failed attempt, kept when the job is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptError {
    pub attempt: u32,
    pub node: Option<String>,
    pub error: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRecord {
    pub id: Uuid,
    pub phase: String,
    /// The training settings the job was started with (a `TrainSpec` as JSON).
    pub spec: serde_json::Value,
    pub status: JobStatus,
    /// Higher runs first.
    pub priority: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub owner_node: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub last_checkpoint_path: Option<String>,
    /// The `data` of the job's latest `training_progress` event.
    pub progress: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempt_errors: Vec<AttemptError>,
    pub last_event_seq: u64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What [`JobRepository::insert`] needs; the job starts `queued`.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub phase: String,
    pub spec: serde_json::Value,
    pub priority: i64,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub phase: Option<String>,
    /// At most this many, newest first; `None` for all.
    pub limit: Option<u32>,
}

/// One entry of a job's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    pub job_id: Uuid,
    pub seq: u64,
    /// The event envelope as the bus carries it, with `seq` filled in.
    pub envelope: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct JobRepository {
    db: Database,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    phase: String,
    spec: Json<serde_json::Value>,
    status: String,
    priority: i64,
    attempts: i64,
    max_attempts: i64,
    owner_node: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    last_checkpoint_path: Option<String>,
    progress: Option<Json<serde_json::Value>>,
    error: Option<String>,
    attempt_errors: Json<Vec<AttemptError>>,
    last_event_seq: i64,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = sqlx::Error;

    fn try_from(row: JobRow) -> Result<Self, sqlx::Error> {
        let decode = |what: &str, value: i64| {
            u32::try_from(value).map_err(|_| sqlx::Error::Decode(format!("{what} {value}").into()))
        };
        Ok(JobRecord {
            id: row.id,
            phase: row.phase,
            spec: row.spec.0,
            status: JobStatus::parse(&row.status).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown job status `{}`", row.status).into())
            })?,
            priority: row.priority,
            attempts: decode("attempts", row.attempts)?,
            max_attempts: decode("max_attempts", row.max_attempts)?,
            owner_node: row.owner_node,
            lease_expires_at: row.lease_expires_at,
            cancel_requested: row.cancel_requested,
            last_checkpoint_path: row.last_checkpoint_path,
            progress: row.progress.map(|p| p.0),
            error: row.error,
            attempt_errors: row.attempt_errors.0,
            last_event_seq: u64::try_from(row.last_event_seq).unwrap_or(0),
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct JobEventRow {
    job_id: Uuid,
    seq: i64,
    envelope: Json<serde_json::Value>,
    created_at: DateTime<Utc>,
}

impl From<JobEventRow> for JobEvent {
    fn from(row: JobEventRow) -> Self {
        JobEvent {
            job_id: row.job_id,
            seq: u64::try_from(row.seq).unwrap_or(0),
            envelope: row.envelope.0,
            created_at: row.created_at,
        }
    }
}

const JOB_COLUMNS: &str = "id, phase, spec, status, priority, attempts, max_attempts, owner_node, \
     lease_expires_at, cancel_requested, last_checkpoint_path, progress, error, attempt_errors, \
     last_event_seq, created_at, started_at, finished_at, updated_at";

impl JobRepository {
    pub fn new(db: Database) -> JobRepository {
        JobRepository { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Queues a new job.
    pub async fn insert(&self, job: NewJob) -> Result<JobRecord, StorageError> {
        self.insert_reading(job, &[]).await
    }

    /// Queues a new job that reads uploaded datasets: `datasets` gives each one's id, role and
    /// the SHA-256 it has now (every attempt checks the file against it). The job and its links
    /// are written in one transaction; a dataset deleted meanwhile fails the insert.
    pub async fn insert_reading(
        &self,
        job: NewJob,
        datasets: &[(Uuid, DatasetRole, String)],
    ) -> Result<JobRecord, StorageError> {
        if job.phase.is_empty() {
            return Err(StorageError::invalid("phase", "must not be empty"));
        }
        if job.max_attempts == 0 {
            return Err(StorageError::invalid("max_attempts", "must be at least 1"));
        }
        let now = now_micros();
        let record = JobRecord {
            id: Uuid::now_v7(),
            phase: job.phase,
            spec: job.spec,
            status: JobStatus::Queued,
            priority: job.priority,
            attempts: 0,
            max_attempts: job.max_attempts,
            owner_node: None,
            lease_expires_at: None,
            cancel_requested: false,
            last_checkpoint_path: None,
            progress: None,
            error: None,
            attempt_errors: Vec::new(),
            last_event_seq: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
        };
        let result: Result<(), sqlx::Error> = with_pool!(&self.db, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                sqlx::query(
                    "INSERT INTO jobs (id, phase, spec, status, priority, attempts, max_attempts, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $7)",
                )
                .bind(record.id)
                .bind(&record.phase)
                .bind(Json(&record.spec))
                .bind(record.status.as_str())
                .bind(record.priority)
                .bind(i64::from(record.max_attempts))
                .bind(record.created_at)
                .execute(&mut *tx)
                .await?;
                for (dataset_id, role, sha256) in datasets {
                    sqlx::query(
                        "INSERT INTO job_datasets (job_id, dataset_id, role, sha256) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(record.id)
                    .bind(*dataset_id)
                    .bind(role.as_str())
                    .bind(sha256)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            .await
        });
        result.map_err(|e| self.db.error(e))?;
        Ok(record)
    }

    pub async fn find(&self, id: Uuid) -> Result<Option<JobRecord>, StorageError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"));
        let row: Result<Option<JobRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sql).bind(id).fetch_optional(pool).await
        });
        row.and_then(|row| row.map(JobRecord::try_from).transpose())
            .map_err(|e| self.db.error(e))
    }

    pub async fn get(&self, id: Uuid) -> Result<JobRecord, StorageError> {
        self.find(id).await?.ok_or(StorageError::JobNotFound { id })
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StorageError> {
        let limit = filter.limit.map_or(i64::MAX, i64::from);
        let status = filter.status.map(JobStatus::as_str);
        let rows: Result<Vec<JobRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            let sql = if pool.is_postgres() {
                format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR status = $1) \
                     AND ($2::text IS NULL OR phase = $2) \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                )
            } else {
                format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR status = $1) \
                     AND ($2 IS NULL OR phase = $2) \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                )
            };
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(status)
                .bind(filter.phase.as_deref())
                .bind(limit)
                .fetch_all(pool)
                .await
        });
        rows.and_then(|rows| rows.into_iter().map(JobRecord::try_from).collect())
            .map_err(|e| self.db.error(e))
    }

    /// Appends an event to a job's log under the next sequence number. `envelope` builds the
    /// stored JSON from that number, so the envelope can carry its own `seq`.
    pub async fn append_event(
        &self,
        job_id: Uuid,
        envelope: impl FnOnce(u64) -> serde_json::Value + Send,
    ) -> Result<JobEvent, StorageError> {
        let created_at = now_micros();
        let result: Result<Option<JobEvent>, sqlx::Error> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin_write().await?;
            let seq: Option<i64> = sqlx::query_scalar(
                "UPDATE jobs SET last_event_seq = last_event_seq + 1 WHERE id = $1 \
                 RETURNING last_event_seq",
            )
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(seq) = seq else {
                return Ok(None);
            };
            let seq_u64 = u64::try_from(seq).unwrap_or(0);
            let envelope = envelope(seq_u64);
            sqlx::query(
                "INSERT INTO job_events (job_id, seq, envelope, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(job_id)
            .bind(seq)
            .bind(Json(&envelope))
            .bind(created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Some(JobEvent {
                job_id,
                seq: seq_u64,
                envelope,
                created_at,
            }))
        }
        .await);
        result
            .map_err(|e| self.db.error(e))?
            .ok_or(StorageError::JobNotFound { id: job_id })
    }

    /// A job's events with `seq > since`, in order, at most `limit`.
    pub async fn events_since(
        &self,
        job_id: Uuid,
        since: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, StorageError> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows: Result<Vec<JobEventRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT job_id, seq, envelope, created_at FROM job_events \
                 WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(job_id)
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        });
        Ok(rows
            .map_err(|e| self.db.error(e))?
            .into_iter()
            .map(JobEvent::from)
            .collect())
    }
}
