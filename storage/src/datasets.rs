//! Uploaded datasets: corpora (UTF-8 text, JSONL) and `tokenizer.json` files, stored like
//! models and referenced by jobs as `ds:<id>`.
//!
//! Layout, every path generated here from ids (never from a request):
//!
//! ```text
//! <artifacts>/datasets/<dataset-id>/corpus.txt | corpus.jsonl | tokenizer.json
//! <artifacts>/datasets/<dataset-id>/.tmp-*          an upload in progress
//! ```
//!
//! Invariants:
//! * An upload goes to a `.tmp-` file in the new dataset's directory, hashed on the way in; it
//!   becomes visible (renamed, fsynced, row inserted) only after the caller validated it. An
//!   upload that is refused, invalid, a duplicate or cut short leaves nothing: the directory is
//!   removed.
//! * The same bytes of the same kind (and, for JSONL, the same text field) are one dataset: the
//!   unique key `(sha256, kind, text_field)` decides, also between nodes that store the same
//!   upload at once (the loser's files are removed and the winner's record returned).
//! * A dataset a queued, running or interrupted job reads cannot be deleted
//!   ([`DeleteOutcome::InUse`]); deleting removes the row first, then the files.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::artifacts::{ArtifactStore, FileDigest, PendingFile, sync_dir};
use crate::db::{Database, with_pool};
use crate::jobs::JobStatus;
use crate::models::now_micros;
use crate::{StorageError, blocking};

pub const DATASETS_DIR: &str = "datasets";

/// What an uploaded dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// One UTF-8 text.
    Text,
    /// One JSON object per line; the text is in `text_field`.
    Jsonl,
    /// A Hugging Face `tokenizer.json`.
    Tokenizer,
}

impl DatasetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Text => "text",
            DatasetKind::Jsonl => "jsonl",
            DatasetKind::Tokenizer => "tokenizer",
        }
    }

    pub fn parse(s: &str) -> Option<DatasetKind> {
        Some(match s {
            "text" => DatasetKind::Text,
            "jsonl" => DatasetKind::Jsonl,
            "tokenizer" => DatasetKind::Tokenizer,
            _ => return None,
        })
    }

    /// The name of the file in the dataset's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            DatasetKind::Text => "corpus.txt",
            DatasetKind::Jsonl => "corpus.jsonl",
            DatasetKind::Tokenizer => "tokenizer.json",
        }
    }
}

/// A dataset as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetRecord {
    pub id: Uuid,
    pub name: String,
    pub kind: DatasetKind,
    /// The JSONL field holding the text; empty for the other kinds.
    pub text_field: String,
    /// The file, relative to the artifacts directory.
    pub file_path: String,
    pub size_bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Lines of the file.
    pub lines: u64,
    /// JSONL: records (non-empty lines); text: lines; tokenizer: its vocabulary size.
    pub records: u64,
    pub created_at: DateTime<Utc>,
}

impl DatasetRecord {
    /// How jobs name it.
    pub fn reference(&self) -> String {
        format!("ds:{}", self.id)
    }
}

/// What a job reads a dataset as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DatasetRole {
    Corpus,
    Tokenizer,
}

impl DatasetRole {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetRole::Corpus => "corpus",
            DatasetRole::Tokenizer => "tokenizer",
        }
    }

    fn parse(s: &str) -> Option<DatasetRole> {
        match s {
            "corpus" => Some(DatasetRole::Corpus),
            "tokenizer" => Some(DatasetRole::Tokenizer),
            _ => None,
        }
    }
}

/// A dataset a job reads, with the SHA-256 it had when the job was queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDataset {
    pub job_id: Uuid,
    pub dataset_id: Uuid,
    pub role: DatasetRole,
    pub sha256: String,
}

/// A job that reads a dataset, as `GET /datasets/{id}` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetUse {
    pub job_id: Uuid,
    pub role: DatasetRole,
    pub status: JobStatus,
}

/// An upload being written: bytes go in with [`std::io::Write`], then [`DatasetRepository::finish_upload`]
/// or drop (which removes everything).
pub struct PendingUpload {
    pub id: Uuid,
    pub kind: DatasetKind,
    dir: PathBuf,
    file: Option<PendingFile>,
}

impl PendingUpload {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.file.as_ref().map_or(0, PendingFile::size_bytes)
    }

    /// fsyncs the temp file and returns its digest and path; the file is still under its temp
    /// name and is removed on drop unless [`DatasetRepository::finish_upload`] takes it.
    pub fn seal(&mut self) -> Result<(FileDigest, PathBuf), StorageError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StorageError::invalid("upload", "already finished"))?;
        let digest = file.sync()?;
        Ok((digest, file.temp_path().to_path_buf()))
    }
}

impl std::io::Write for PendingUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Err(std::io::Error::other("upload already finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        // Dropping the temp file first, then the (then empty) directory.
        self.file.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What an upload became.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A new dataset.
    Created(DatasetRecord),
    /// The same content was there already: that dataset, and the upload was discarded.
    Existing(DatasetRecord),
}

/// What [`DatasetRepository::delete`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    Deleted(DatasetRecord),
    /// Jobs that have not finished read it; nothing was deleted.
    InUse(Vec<DatasetUse>),
    NotFound,
}

/// Facts about an upload its validator found, recorded with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    pub lines: u64,
    pub records: u64,
}

#[derive(Debug, Clone)]
pub struct DatasetRepository {
    db: Database,
    store: ArtifactStore,
}

#[derive(sqlx::FromRow)]
struct DatasetRow {
    id: Uuid,
    name: String,
    kind: String,
    text_field: String,
    file_path: String,
    size_bytes: i64,
    sha256: String,
    lines: i64,
    records: i64,
    created_at: DateTime<Utc>,
}

impl TryFrom<DatasetRow> for DatasetRecord {
    type Error = sqlx::Error;

    fn try_from(row: DatasetRow) -> Result<Self, sqlx::Error> {
        let count = |what: &str, value: i64| {
            u64::try_from(value).map_err(|_| sqlx::Error::Decode(format!("{what} {value}").into()))
        };
        Ok(DatasetRecord {
            id: row.id,
            name: row.name,
            kind: DatasetKind::parse(&row.kind).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown dataset kind `{}`", row.kind).into())
            })?,
            text_field: row.text_field,
            file_path: row.file_path,
            size_bytes: count("size_bytes", row.size_bytes)?,
            sha256: row.sha256,
            lines: count("lines", row.lines)?,
            records: count("records", row.records)?,
            created_at: row.created_at,
        })
    }
}

const COLUMNS: &str =
    "id, name, kind, text_field, file_path, size_bytes, sha256, lines, records, created_at";

/// Statuses of a job that will still read its datasets.
const UNFINISHED: &str = "('queued', 'running', 'interrupted')";

/// A dataset name: what a person calls it; shown, never used as a path.
pub fn validate_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && name.trim() == name
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            "name",
            format!(
                "`{}`: 1 to 128 characters, no control characters or outer spaces",
                name.escape_debug()
            ),
        ))
    }
}

impl DatasetRepository {
    pub fn new(db: Database, store: ArtifactStore) -> DatasetRepository {
        DatasetRepository { db, store }
    }

    pub fn datasets_dir(&self) -> PathBuf {
        self.store.root().join(DATASETS_DIR)
    }

    /// Where a dataset's file is on this node.
    pub fn path_of(&self, record: &DatasetRecord) -> PathBuf {
        self.store.resolve(Path::new(&record.file_path))
    }

    /// Starts an upload of `kind` (blocking file work: call it off the async workers).
    pub fn begin_upload(&self, kind: DatasetKind) -> Result<PendingUpload, StorageError> {
        let id = Uuid::now_v7();
        let parent = self.datasets_dir();
        std::fs::create_dir_all(&parent).map_err(StorageError::io(&parent))?;
        let dir = parent.join(id.to_string());
        std::fs::create_dir(&dir).map_err(StorageError::io(&dir))?;
        let mut upload = PendingUpload {
            id,
            kind,
            dir: dir.clone(),
            file: None,
        };
        // Owned by `upload` from here: an error removes the directory.
        upload.file = Some(PendingFile::create(&dir, kind.file_name())?);
        Ok(upload)
    }

    /// Makes a sealed, validated upload a dataset: a duplicate of an existing one is discarded
    /// and that one returned; otherwise the file is renamed into place and the row inserted.
    pub async fn finish_upload(
        &self,
        mut upload: PendingUpload,
        name: String,
        text_field: String,
        stats: UploadStats,
    ) -> Result<Stored, StorageError> {
        validate_name(&name)?;
        let (digest, _) = upload.seal()?;
        let kind = upload.kind;
        if let Some(existing) = self
            .find_by_content(&digest.sha256, kind, &text_field)
            .await?
        {
            return Ok(Stored::Existing(existing));
        }
        let record = DatasetRecord {
            id: upload.id,
            name,
            kind,
            text_field,
            file_path: Path::new(DATASETS_DIR)
                .join(upload.id.to_string())
                .join(kind.file_name())
                .to_string_lossy()
                .into_owned(),
            size_bytes: digest.size_bytes,
            sha256: digest.sha256,
            lines: stats.lines,
            records: stats.records,
            created_at: now_micros(),
        };
        // Durable under its final name before the row makes it visible.
        let upload = blocking(move || {
            let mut upload = upload;
            let file = upload
                .file
                .take()
                .ok_or_else(|| StorageError::invalid("upload", "already finished"))?;
            file.commit()?;
            if let Some(parent) = upload.dir.parent() {
                sync_dir(parent)?;
            }
            Ok(upload)
        })
        .await?;
        let inserted: Result<u64, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO datasets (id, name, kind, text_field, file_path, size_bytes, sha256, \
                 lines, records, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (sha256, kind, text_field) DO NOTHING",
            )
            .bind(record.id)
            .bind(&record.name)
            .bind(record.kind.as_str())
            .bind(&record.text_field)
            .bind(&record.file_path)
            .bind(record.size_bytes as i64)
            .bind(&record.sha256)
            .bind(record.lines as i64)
            .bind(record.records as i64)
            .bind(record.created_at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        match inserted {
            Ok(1) => {
                // Keep the files: forget the directory so the drop does not remove it.
                let mut upload = upload;
                upload.dir = PathBuf::new();
                tracing::info!(dataset_id = %record.id, kind = kind.as_str(), size_bytes = record.size_bytes, "dataset stored");
                Ok(Stored::Created(record))
            }
            Ok(_) => {
                // Another upload of the same content won the race; ours goes with `upload`.
                drop(upload);
                let existing = self
                    .find_by_content(&record.sha256, kind, &record.text_field)
                    .await?
                    .ok_or_else(|| {
                        StorageError::invalid("upload", "a concurrent upload vanished")
                    })?;
                Ok(Stored::Existing(existing))
            }
            Err(error) => Err(self.db.error(error)),
        }
    }

    async fn find_by_content(
        &self,
        sha256: &str,
        kind: DatasetKind,
        text_field: &str,
    ) -> Result<Option<DatasetRecord>, StorageError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM datasets WHERE sha256 = $1 AND kind = $2 AND text_field = $3"
        ));
        let row: Result<Option<DatasetRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sql)
                .bind(sha256)
                .bind(kind.as_str())
                .bind(text_field)
                .fetch_optional(pool)
                .await
        });
        row.and_then(|r| r.map(DatasetRecord::try_from).transpose())
            .map_err(|e| self.db.error(e))
    }

    pub async fn find(&self, id: Uuid) -> Result<Option<DatasetRecord>, StorageError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM datasets WHERE id = $1"));
        let row: Result<Option<DatasetRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(sql).bind(id).fetch_optional(pool).await
        });
        row.and_then(|r| r.map(DatasetRecord::try_from).transpose())
            .map_err(|e| self.db.error(e))
    }

    /// A page of datasets, oldest first, and how many there are in all.
    pub async fn list(
        &self,
        limit: u64,
        offset: u64,
    ) -> Result<(Vec<DatasetRecord>, u64), StorageError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM datasets ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let result: Result<(Vec<DatasetRow>, i64), sqlx::Error> = with_pool!(&self.db, |pool| {
            async {
                let rows = sqlx::query_as(sql)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(pool)
                    .await?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM datasets")
                    .fetch_one(pool)
                    .await?;
                Ok::<_, sqlx::Error>((rows, total))
            }
            .await
        });
        let (rows, total) = result.map_err(|e| self.db.error(e))?;
        let records = rows
            .into_iter()
            .map(DatasetRecord::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db.error(e))?;
        Ok((records, u64::try_from(total).unwrap_or(0)))
    }

    /// The jobs that read the dataset, newest first.
    pub async fn uses(&self, id: Uuid) -> Result<Vec<DatasetUse>, StorageError> {
        let rows: Result<Vec<(Uuid, String, String)>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT l.job_id, l.role, j.status FROM job_datasets l \
                     JOIN jobs j ON j.id = l.job_id WHERE l.dataset_id = $1 \
                     ORDER BY j.created_at DESC, j.id",
            )
            .bind(id)
            .fetch_all(pool)
            .await
        });
        let rows = rows.map_err(|e| self.db.error(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(job_id, role, status)| {
                Some(DatasetUse {
                    job_id,
                    role: DatasetRole::parse(&role)?,
                    status: JobStatus::parse(&status)?,
                })
            })
            .collect())
    }

    /// The datasets a job reads.
    pub async fn of_job(&self, job_id: Uuid) -> Result<Vec<JobDataset>, StorageError> {
        let rows: Result<Vec<(Uuid, String, String)>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT dataset_id, role, sha256 FROM job_datasets WHERE job_id = $1 \
                     ORDER BY role",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await
        });
        let rows = rows.map_err(|e| self.db.error(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(dataset_id, role, sha256)| {
                Some(JobDataset {
                    job_id,
                    dataset_id,
                    role: DatasetRole::parse(&role)?,
                    sha256,
                })
            })
            .collect())
    }

    /// SHA-256s of the datasets that running jobs (on any node) read, with their roles: what
    /// the prepared-data cache must keep.
    pub async fn in_use_by_running_jobs(&self) -> Result<Vec<JobDataset>, StorageError> {
        let rows: Result<Vec<(Uuid, Uuid, String, String)>, sqlx::Error> =
            with_pool!(&self.db, |pool| {
                sqlx::query_as(
                    "SELECT l.job_id, l.dataset_id, l.role, l.sha256 FROM job_datasets l \
                     JOIN jobs j ON j.id = l.job_id WHERE j.status = 'running'",
                )
                .fetch_all(pool)
                .await
            });
        let rows = rows.map_err(|e| self.db.error(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(job_id, dataset_id, role, sha256)| {
                Some(JobDataset {
                    job_id,
                    dataset_id,
                    role: DatasetRole::parse(&role)?,
                    sha256,
                })
            })
            .collect())
    }

    /// Deletes the dataset unless an unfinished job reads it: the check and the delete are one
    /// statement, so a job queued in between either sees the dataset or fails to link to it.
    pub async fn delete(&self, id: Uuid) -> Result<DeleteOutcome, StorageError> {
        let Some(record) = self.find(id).await? else {
            return Ok(DeleteOutcome::NotFound);
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "DELETE FROM datasets WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM job_datasets l \
             JOIN jobs j ON j.id = l.job_id WHERE l.dataset_id = $1 AND j.status IN {UNFINISHED})"
        ));
        let deleted: Result<u64, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query(sql)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        });
        if deleted.map_err(|e| self.db.error(e))? == 0 {
            let uses: Vec<DatasetUse> = self
                .uses(id)
                .await?
                .into_iter()
                .filter(|u| !u.status.is_terminal())
                .collect();
            if uses.is_empty() {
                return Ok(DeleteOutcome::NotFound);
            }
            return Ok(DeleteOutcome::InUse(uses));
        }
        let dir = self.datasets_dir().join(id.to_string());
        let parent = self.datasets_dir();
        blocking(move || {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(&dir)(e)),
            }
            sync_dir(&parent)
        })
        .await?;
        tracing::info!(dataset_id = %id, "dataset deleted");
        Ok(DeleteOutcome::Deleted(record))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::jobs::{JobRepository, NewJob};
    use crate::testing::{TestBackend, run_on};

    async fn store(repo: &DatasetRepository, name: &str, bytes: &[u8]) -> Stored {
        let mut upload = repo.begin_upload(DatasetKind::Text).unwrap();
        upload.write_all(bytes).unwrap();
        let stats = UploadStats {
            lines: 1,
            records: 1,
        };
        repo.finish_upload(upload, name.into(), String::new(), stats)
            .await
            .unwrap()
    }

    async fn lifecycle(backend: TestBackend) {
        run_on(backend, |database, artifacts| async move {
            let repo = DatasetRepository::new(database.clone(), ArtifactStore::new(&artifacts));
            let Stored::Created(first) = store(&repo, "a", b"hello corpus").await else {
                panic!("the first upload creates");
            };
            assert_eq!(first.sha256, crate::artifacts::sha256_hex(b"hello corpus"));
            assert_eq!(
                std::fs::read(repo.path_of(&first)).unwrap(),
                b"hello corpus"
            );
            // The same bytes again: the same dataset, and the second copy is gone.
            assert_eq!(
                store(&repo, "b", b"hello corpus").await,
                Stored::Existing(first.clone())
            );
            assert_eq!(std::fs::read_dir(repo.datasets_dir()).unwrap().count(), 1);
            // A dropped upload leaves nothing.
            let mut upload = repo.begin_upload(DatasetKind::Jsonl).unwrap();
            upload.write_all(b"partial").unwrap();
            drop(upload);
            assert_eq!(std::fs::read_dir(repo.datasets_dir()).unwrap().count(), 1);

            let Stored::Created(second) = store(&repo, "c", b"other corpus").await else {
                panic!("other bytes are another dataset");
            };
            let (page, total) = repo.list(1, 0).await.unwrap();
            assert_eq!((page, total), (vec![first.clone()], 2));
            let (page, _) = repo.list(10, 1).await.unwrap();
            assert_eq!(page, vec![second.clone()]);
            assert_eq!(repo.find(first.id).await.unwrap(), Some(first.clone()));

            // Read by a queued job: not deletable, and listed as used.
            let jobs = JobRepository::new(database.clone());
            let job = jobs
                .insert_reading(
                    NewJob {
                        phase: "cognate".into(),
                        spec: serde_json::json!({}),
                        priority: 0,
                        max_attempts: 1,
                    },
                    &[(first.id, DatasetRole::Corpus, first.sha256.clone())],
                )
                .await
                .unwrap();
            assert_eq!(
                repo.of_job(job.id).await.unwrap(),
                vec![JobDataset {
                    job_id: job.id,
                    dataset_id: first.id,
                    role: DatasetRole::Corpus,
                    sha256: first.sha256.clone(),
                }]
            );
            match repo.delete(first.id).await.unwrap() {
                DeleteOutcome::InUse(uses) => assert_eq!(uses[0].job_id, job.id),
                other => panic!("expected InUse, got {other:?}"),
            }
            // Once the job is over, it can go, with its file.
            jobs.request_cancel(job.id).await.unwrap();
            let path = repo.path_of(&first);
            assert!(matches!(
                repo.delete(first.id).await.unwrap(),
                DeleteOutcome::Deleted(_)
            ));
            assert!(!path.exists());
            assert_eq!(repo.find(first.id).await.unwrap(), None);
            assert_eq!(
                repo.delete(first.id).await.unwrap(),
                DeleteOutcome::NotFound
            );
        })
        .await;
    }

    #[tokio::test]
    async fn datasets_are_stored_once_per_content_and_kept_while_jobs_read_them_on_sqlite() {
        lifecycle(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn datasets_are_stored_once_per_content_and_kept_while_jobs_read_them_on_postgres() {
        lifecycle(TestBackend::Postgres).await;
    }
}
