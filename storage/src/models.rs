//! The model registry: model records in the database, their files in the artifact store.
//!
//! Invariants:
//! * A model is visible (its row exists) only once all its files are durable under their
//!   final names: `save` writes the files first and inserts the row last. A crash in between
//!   leaves an orphan directory that [`ModelRegistry::gc`] removes.
//! * Versions are 1, 2, 3, … per name with no duplicates, also under concurrent saves: the
//!   next version comes from a per-name counter row (`model_names`) bumped with an upsert
//!   inside the saving transaction, which holds that row's lock until commit.
//! * At most one winner per phase: `mark_winner` clears the old winner and sets the new one
//!   in one transaction, serialised per phase (an advisory lock on PostgreSQL, the single
//!   writer on SQLite), and a partial unique index backs it up.
//! * Deleting removes the row first, then the files: a failure in between leaves an orphan
//!   for gc, never a row pointing at missing files.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use crate::artifacts::{ArtifactStore, FileDigest, GcOptions, GcReason, GcReport};
use crate::db::{Backend, Database, with_pool};
use crate::{StorageError, blocking};

/// One file of a model, as listed in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelFile {
    pub name: String,
    pub size_bytes: u64,
    pub sha256: String,
}

impl ModelFile {
    pub(crate) fn digest(&self) -> FileDigest {
        FileDigest {
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
        }
    }
}

/// A model as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRecord {
    pub id: Uuid,
    pub name: String,
    pub phase: String,
    /// 1, 2, 3, … per name.
    pub version: u32,
    /// The models this one was made from, in the order given.
    pub parent_ids: Vec<Uuid>,
    /// The training job that produced it.
    pub job_id: Option<Uuid>,
    /// Format of the primary file (e.g. `burn-mpk`, `safetensors`).
    pub format: String,
    /// The primary file, relative to the artifacts directory.
    pub file_path: String,
    /// Size and SHA-256 of the primary file.
    pub size_bytes: u64,
    pub sha256: String,
    pub config: serde_json::Value,
    pub metrics: serde_json::Value,
    pub tags: Vec<String>,
    pub winner: bool,
    pub created_at: DateTime<Utc>,
    /// Every file with its checksum; the first is the primary file.
    pub files: Vec<ModelFile>,
}

impl ModelRecord {
    pub fn file(&self, name: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn primary_file(&self) -> &ModelFile {
        // A record always has at least one file: save refuses an empty list and the join
        // that loads records is an inner join.
        &self.files[0]
    }
}

/// A file handed to [`ModelRegistry::save`].
#[derive(Clone)]
pub struct NewModelFile {
    /// One path component of `[A-Za-z0-9._-]`, not starting with a dot.
    pub name: String,
    pub bytes: Vec<u8>,
}

impl NewModelFile {
    pub fn new(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        NewModelFile {
            name: name.into(),
            bytes: bytes.into(),
        }
    }
}

impl std::fmt::Debug for NewModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewModelFile")
            .field("name", &self.name)
            .field("size_bytes", &self.bytes.len())
            .finish()
    }
}

/// What [`ModelRegistry::save`] needs; the registry assigns id, version and timestamps.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub name: String,
    pub phase: String,
    pub parent_ids: Vec<Uuid>,
    pub job_id: Option<Uuid>,
    /// Format of the primary (first) file.
    pub format: String,
    pub config: serde_json::Value,
    pub metrics: serde_json::Value,
    pub tags: Vec<String>,
    /// At least one; the first is the primary file.
    pub files: Vec<NewModelFile>,
}

/// Which models [`ModelRegistry::list`] returns; every `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelFilter {
    pub phase: Option<String>,
    pub name: Option<String>,
    /// Models carrying this tag.
    pub tag: Option<String>,
    pub winner: Option<bool>,
}

/// The outcome of [`ModelRegistry::mark_winner`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinnerChange {
    pub model: ModelRecord,
    /// The phase's winner before, if it was another model.
    pub previous: Option<Uuid>,
}

/// Models handed from one phase to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRecord {
    pub id: Uuid,
    pub from_phase: String,
    pub to_phase: String,
    pub model_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The model registry: metadata in the [`Database`], files in the [`ArtifactStore`].
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    pub(crate) db: Database,
    pub(crate) store: ArtifactStore,
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    id: Uuid,
    name: String,
    phase: String,
    version: i64,
    parent_ids: Json<Vec<Uuid>>,
    job_id: Option<Uuid>,
    format: String,
    file_path: String,
    size_bytes: i64,
    sha256: String,
    config: Json<serde_json::Value>,
    metrics: Json<serde_json::Value>,
    tags: Json<Vec<String>>,
    winner: bool,
    created_at: DateTime<Utc>,
}

/// One row of the model ⋈ model_files join: a model repeated once per file.
#[derive(sqlx::FromRow)]
struct ModelFileRow {
    #[sqlx(flatten)]
    model: ModelRow,
    f_name: String,
    f_size_bytes: i64,
    f_sha256: String,
}

#[derive(sqlx::FromRow)]
struct HandoffRow {
    id: Uuid,
    from_phase: String,
    to_phase: String,
    model_ids: Json<Vec<Uuid>>,
    created_at: DateTime<Utc>,
}

impl From<HandoffRow> for HandoffRecord {
    fn from(row: HandoffRow) -> Self {
        HandoffRecord {
            id: row.id,
            from_phase: row.from_phase,
            to_phase: row.to_phase,
            model_ids: row.model_ids.0,
            created_at: row.created_at,
        }
    }
}

/// Models with their files, one row per file, grouped by model in `ORDER BY`.
macro_rules! select_models {
    ($($tail:literal)*) => {
        concat!(
            "SELECT m.id, m.name, m.phase, m.version, m.parent_ids, m.job_id, m.format, \
             m.file_path, m.size_bytes, m.sha256, m.config, m.metrics, m.tags, m.winner, \
             m.created_at, f.file_name AS f_name, f.size_bytes AS f_size_bytes, \
             f.sha256 AS f_sha256 \
             FROM models m JOIN model_files f ON f.model_id = m.id ",
            $($tail,)*
        )
    };
}

const BY_ID_SQL: &str = select_models!("WHERE m.id = $1 ORDER BY f.position");
const LIST_SQLITE: &str = select_models!(
    "WHERE ($1 IS NULL OR m.phase = $1) AND ($2 IS NULL OR m.name = $2) \
     AND ($3 IS NULL OR EXISTS (SELECT 1 FROM json_each(m.tags) t WHERE t.value = $3)) \
     AND ($4 IS NULL OR m.winner = $4) \
     ORDER BY m.created_at, m.id, f.position"
);
const LIST_POSTGRES: &str = select_models!(
    "WHERE ($1::text IS NULL OR m.phase = $1) AND ($2::text IS NULL OR m.name = $2) \
     AND ($3::text IS NULL OR m.tags @> jsonb_build_array($3::text)) \
     AND ($4::boolean IS NULL OR m.winner = $4) \
     ORDER BY m.created_at, m.id, f.position"
);

/// Names an export writes beside a model's files.
pub const RESERVED_FILE_NAMES: [&str; 2] = ["config.json", "metadata.json"];

fn non_negative(value: i64, what: &str) -> Result<u64, sqlx::Error> {
    u64::try_from(value)
        .map_err(|_| sqlx::Error::Decode(format!("negative {what}: {value}").into()))
}

/// Folds join rows (ordered by model) into records.
fn group_models(rows: Vec<ModelFileRow>) -> Result<Vec<ModelRecord>, sqlx::Error> {
    let mut records: Vec<ModelRecord> = Vec::new();
    for row in rows {
        let file = ModelFile {
            name: row.f_name,
            size_bytes: non_negative(row.f_size_bytes, "file size")?,
            sha256: row.f_sha256,
        };
        if let Some(last) = records.last_mut().filter(|r| r.id == row.model.id) {
            last.files.push(file);
            continue;
        }
        let m = row.model;
        records.push(ModelRecord {
            id: m.id,
            name: m.name,
            phase: m.phase,
            version: u32::try_from(m.version)
                .map_err(|_| sqlx::Error::Decode(format!("version {}", m.version).into()))?,
            parent_ids: m.parent_ids.0,
            job_id: m.job_id,
            format: m.format,
            file_path: m.file_path,
            size_bytes: non_negative(m.size_bytes, "model size")?,
            sha256: m.sha256,
            config: m.config.0,
            metrics: m.metrics.0,
            tags: m.tags.0,
            winner: m.winner,
            created_at: m.created_at,
            files: vec![file],
        });
    }
    Ok(records)
}

/// Names, phases and formats end up in export paths and metric-free labels: keep them plain.
fn validate_identifier(field: &'static str, value: &str) -> Result<(), StorageError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            field,
            format!(
                "`{value}`: use 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            ),
        ))
    }
}

fn validate_tag(tag: &str) -> Result<(), StorageError> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag.trim() == tag
        && !tag.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            "tag",
            format!(
                "`{}`: 1 to 64 characters, no control characters or outer spaces",
                tag.escape_debug()
            ),
        ))
    }
}

/// Timestamps are kept to the microsecond, what PostgreSQL stores, so a record returned by
/// `save` equals the one read back on either backend.
pub(crate) fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

impl ModelRegistry {
    pub fn new(db: Database, store: ArtifactStore) -> ModelRegistry {
        ModelRegistry { db, store }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn store(&self) -> &ArtifactStore {
        &self.store
    }

    /// Stores a model's files, then its record, and returns the record with its version.
    pub async fn save(&self, model: NewModel) -> Result<ModelRecord, StorageError> {
        validate_identifier("name", &model.name)?;
        validate_identifier("phase", &model.phase)?;
        validate_identifier("format", &model.format)?;
        let mut tags = model.tags;
        for tag in &tags {
            validate_tag(tag)?;
        }
        tags.sort();
        tags.dedup();
        if model.files.is_empty() {
            return Err(StorageError::invalid(
                "files",
                "a model needs at least one file",
            ));
        }
        let mut seen = HashSet::new();
        for file in &model.files {
            crate::artifacts::validate_file_name(&file.name)?;
            if RESERVED_FILE_NAMES.contains(&file.name.as_str()) {
                return Err(StorageError::invalid(
                    "files",
                    format!(
                        "`{}` is reserved: exports write it from the model's config and record",
                        file.name
                    ),
                ));
            }
            if !seen.insert(file.name.as_str()) {
                return Err(StorageError::invalid(
                    "files",
                    format!("`{}` is given twice", file.name),
                ));
            }
        }
        let mut parent_ids = Vec::with_capacity(model.parent_ids.len());
        for id in model.parent_ids {
            if !parent_ids.contains(&id) {
                parent_ids.push(id);
            }
        }
        let missing = self.missing_models(&parent_ids).await?;
        if !missing.is_empty() {
            return Err(StorageError::ModelNotFound { ids: missing });
        }

        let id = Uuid::now_v7();
        let created_at = now_micros();
        let store = self.store.clone();
        let files = model.files;
        let (files, digests) = blocking(move || {
            let named: Vec<(String, &[u8])> = files
                .iter()
                .map(|f| (f.name.clone(), f.bytes.as_slice()))
                .collect();
            let result = store.write_model_files(id, &named);
            if result.is_ok() {
                grokforge_config::crashpoint::reached(grokforge_config::crashpoint::MODEL_FILES);
            }
            if result.is_err() {
                let _ = store.remove_model(id);
            }
            let names: Vec<String> = files.into_iter().map(|f| f.name).collect();
            result.map(|digests| (names, digests))
        })
        .await?;

        let manifest: Vec<ModelFile> = files
            .into_iter()
            .zip(digests)
            .map(|(name, d)| ModelFile {
                name,
                size_bytes: d.size_bytes,
                sha256: d.sha256,
            })
            .collect();
        let primary = manifest[0].clone();
        let mut record = ModelRecord {
            id,
            name: model.name,
            phase: model.phase,
            version: 0,
            parent_ids,
            job_id: model.job_id,
            format: model.format,
            file_path: ArtifactStore::model_file_relative(id, &primary.name)
                .to_string_lossy()
                .into_owned(),
            size_bytes: primary.size_bytes,
            sha256: primary.sha256,
            config: model.config,
            metrics: model.metrics,
            tags,
            winner: false,
            created_at,
            files: manifest,
        };

        match self.insert_record(&record).await {
            Ok(version) => {
                record.version = version;
                tracing::info!(model_id = %id, name = %record.name, version, phase = %record.phase, "model saved");
                Ok(record)
            }
            Err(error) => {
                let store = self.store.clone();
                let _ = blocking(move || store.remove_model(id)).await;
                Err(error)
            }
        }
    }

    async fn insert_record(&self, record: &ModelRecord) -> Result<u32, StorageError> {
        let result: Result<i64, sqlx::Error> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin_write().await?;
            let version: i64 = sqlx::query_scalar(
                "INSERT INTO model_names (name, last_version) VALUES ($1, 1) \
                 ON CONFLICT (name) DO UPDATE SET last_version = model_names.last_version + 1 \
                 RETURNING last_version",
            )
            .bind(&record.name)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO models (id, name, phase, version, parent_ids, job_id, format, \
                 file_path, size_bytes, sha256, config, metrics, tags, winner, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, FALSE, $14)",
            )
            .bind(record.id)
            .bind(&record.name)
            .bind(&record.phase)
            .bind(version)
            .bind(Json(&record.parent_ids))
            .bind(record.job_id)
            .bind(&record.format)
            .bind(&record.file_path)
            .bind(record.size_bytes as i64)
            .bind(&record.sha256)
            .bind(Json(&record.config))
            .bind(Json(&record.metrics))
            .bind(Json(&record.tags))
            .bind(record.created_at)
            .execute(&mut *tx)
            .await?;
            for (position, file) in record.files.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO model_files (model_id, position, file_name, size_bytes, sha256) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(record.id)
                .bind(position as i64)
                .bind(&file.name)
                .bind(file.size_bytes as i64)
                .bind(&file.sha256)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(version)
        }
        .await);
        let version = result.map_err(|e| self.db.error(e))?;
        u32::try_from(version)
            .map_err(|_| StorageError::invalid("version", format!("{version} is out of range")))
    }

    /// The model with this id, if it exists.
    pub async fn find(&self, id: Uuid) -> Result<Option<ModelRecord>, StorageError> {
        let rows: Result<Vec<ModelFileRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(BY_ID_SQL).bind(id).fetch_all(pool).await
        });
        let records = rows.and_then(group_models).map_err(|e| self.db.error(e))?;
        Ok(records.into_iter().next())
    }

    pub async fn get(&self, id: Uuid) -> Result<ModelRecord, StorageError> {
        self.find(id)
            .await?
            .ok_or(StorageError::ModelNotFound { ids: vec![id] })
    }

    /// Every model in `ids`, in that order; fails listing every unknown id.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<ModelRecord>, StorageError> {
        let mut records = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for &id in ids {
            match self.find(id).await? {
                Some(record) => records.push(record),
                None => missing.push(id),
            }
        }
        if missing.is_empty() {
            Ok(records)
        } else {
            Err(StorageError::ModelNotFound { ids: missing })
        }
    }

    async fn missing_models(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StorageError> {
        let mut missing = Vec::new();
        for &id in ids {
            let found: Result<Option<Uuid>, sqlx::Error> = with_pool!(&self.db, |pool| {
                sqlx::query_scalar("SELECT id FROM models WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            });
            if found.map_err(|e| self.db.error(e))?.is_none() {
                missing.push(id);
            }
        }
        Ok(missing)
    }

    /// Models matching `filter`, oldest first.
    pub async fn list(&self, filter: &ModelFilter) -> Result<Vec<ModelRecord>, StorageError> {
        let rows: Result<Vec<ModelFileRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(pool.sql(LIST_SQLITE, LIST_POSTGRES))
                .bind(filter.phase.as_deref())
                .bind(filter.name.as_deref())
                .bind(filter.tag.as_deref())
                .bind(filter.winner)
                .fetch_all(pool)
                .await
        });
        rows.and_then(group_models).map_err(|e| self.db.error(e))
    }

    /// How many models each phase has (phases with none are absent).
    pub async fn count_by_phase(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let rows: Result<Vec<(String, i64)>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT phase, COUNT(*) FROM models GROUP BY phase ORDER BY phase")
                .fetch_all(pool)
                .await
        });
        Ok(rows
            .map_err(|e| self.db.error(e))?
            .into_iter()
            .map(|(phase, count)| (phase, u64::try_from(count).unwrap_or(0)))
            .collect())
    }

    /// The winner of `phase`, if one is marked.
    pub async fn winner(&self, phase: &str) -> Result<Option<ModelRecord>, StorageError> {
        let filter = ModelFilter {
            phase: Some(phase.to_owned()),
            winner: Some(true),
            ..ModelFilter::default()
        };
        Ok(self.list(&filter).await?.into_iter().next())
    }

    /// Makes `id` the one winner of its phase.
    pub async fn mark_winner(&self, id: Uuid) -> Result<WinnerChange, StorageError> {
        let result: Result<Option<Option<Uuid>>, sqlx::Error> =
            with_pool!(&self.db, |pool| async {
                let mut tx = pool.begin_write().await?;
                let phase: Option<String> =
                    sqlx::query_scalar("SELECT phase FROM models WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(phase) = phase else {
                    return Ok(None);
                };
                if pool.is_postgres() {
                    // Two concurrent calls for one phase would each clear the old winner and
                    // then collide on the unique index; take turns instead.
                    sqlx::query(
                        "SELECT pg_advisory_xact_lock(hashtext('grokforge.winner:' || $1))",
                    )
                    .bind(&phase)
                    .execute(&mut *tx)
                    .await?;
                }
                let previous: Vec<Uuid> = sqlx::query_scalar(
                    "UPDATE models SET winner = FALSE WHERE phase = $1 AND winner AND id <> $2 \
                     RETURNING id",
                )
                .bind(&phase)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query("UPDATE models SET winner = TRUE WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Some(previous.into_iter().next()))
            }
            .await);
        let Some(previous) = result.map_err(|e| self.db.error(e))? else {
            return Err(StorageError::ModelNotFound { ids: vec![id] });
        };
        let model = self.get(id).await?;
        tracing::info!(model_id = %id, phase = %model.phase, previous = ?previous, "winner marked");
        Ok(WinnerChange { model, previous })
    }

    /// Records that `model_ids` (all of phase `from_phase`) are the inputs of `to_phase`.
    pub async fn record_handoff(
        &self,
        from_phase: &str,
        to_phase: &str,
        model_ids: &[Uuid],
    ) -> Result<HandoffRecord, StorageError> {
        validate_identifier("from_phase", from_phase)?;
        validate_identifier("to_phase", to_phase)?;
        if model_ids.is_empty() {
            return Err(StorageError::invalid(
                "model_ids",
                "a handoff needs at least one model",
            ));
        }
        let models = self.get_many(model_ids).await?;
        if let Some(other) = models.iter().find(|m| m.phase != from_phase) {
            return Err(StorageError::invalid(
                "model_ids",
                format!(
                    "model {} belongs to phase {}, not {from_phase}",
                    other.id, other.phase
                ),
            ));
        }
        let record = HandoffRecord {
            id: Uuid::now_v7(),
            from_phase: from_phase.to_owned(),
            to_phase: to_phase.to_owned(),
            model_ids: model_ids.to_vec(),
            created_at: now_micros(),
        };
        let result: Result<(), sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO handoffs (id, from_phase, to_phase, model_ids, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(record.id)
            .bind(&record.from_phase)
            .bind(&record.to_phase)
            .bind(Json(&record.model_ids))
            .bind(record.created_at)
            .execute(pool)
            .await
            .map(|_| ())
        });
        result.map_err(|e| self.db.error(e))?;
        tracing::info!(handoff_id = %record.id, from_phase, to_phase, models = model_ids.len(), "handoff recorded");
        Ok(record)
    }

    /// Handoffs, newest first; only those into `to_phase` when given.
    pub async fn handoffs(
        &self,
        to_phase: Option<&str>,
    ) -> Result<Vec<HandoffRecord>, StorageError> {
        let rows: Result<Vec<HandoffRow>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as(pool.sql(
                "SELECT id, from_phase, to_phase, model_ids, created_at FROM handoffs \
                 WHERE ($1 IS NULL OR to_phase = $1) ORDER BY created_at DESC, id DESC",
                "SELECT id, from_phase, to_phase, model_ids, created_at FROM handoffs \
                 WHERE ($1::text IS NULL OR to_phase = $1) ORDER BY created_at DESC, id DESC",
            ))
            .bind(to_phase)
            .fetch_all(pool)
            .await
        });
        Ok(rows
            .map_err(|e| self.db.error(e))?
            .into_iter()
            .map(HandoffRecord::from)
            .collect())
    }

    /// The most recent handoff into `to_phase`: the inputs of its next run.
    pub async fn latest_handoff(
        &self,
        to_phase: &str,
    ) -> Result<Option<HandoffRecord>, StorageError> {
        Ok(self.handoffs(Some(to_phase)).await?.into_iter().next())
    }

    /// Deletes a model's record, then its files; returns what was deleted.
    pub async fn delete(&self, id: Uuid) -> Result<ModelRecord, StorageError> {
        let record = self.get(id).await?;
        let deleted: Result<u64, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM models WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        });
        if deleted.map_err(|e| self.db.error(e))? == 0 {
            return Err(StorageError::ModelNotFound { ids: vec![id] });
        }
        let store = self.store.clone();
        blocking(move || store.remove_model(id)).await?;
        tracing::info!(model_id = %id, name = %record.name, version = record.version, "model deleted");
        Ok(record)
    }

    /// The bytes of one file of a model, verified against its manifest.
    pub async fn read_file(&self, id: Uuid, file_name: &str) -> Result<Vec<u8>, StorageError> {
        let record = self.get(id).await?;
        let Some(file) = record.file(file_name) else {
            return Err(StorageError::invalid(
                "file name",
                format!("model {id} has no file `{file_name}`"),
            ));
        };
        let (name, digest) = (file.name.clone(), file.digest());
        let store = self.store.clone();
        blocking(move || store.read_verified(id, &name, &digest)).await
    }

    /// The bytes of a model's primary file, verified.
    pub async fn read_primary(&self, id: Uuid) -> Result<Vec<u8>, StorageError> {
        let record = self.get(id).await?;
        let file = record.primary_file().clone();
        let store = self.store.clone();
        blocking(move || store.read_verified(id, &file.name, &file.digest())).await
    }

    /// Checks every file of a model against its manifest.
    pub async fn verify(&self, id: Uuid) -> Result<ModelRecord, StorageError> {
        let record = self.get(id).await?;
        let store = self.store.clone();
        let files = record.files.clone();
        blocking(move || {
            for file in &files {
                store.copy_verified(id, &file.name, &file.digest(), &mut std::io::sink())?;
            }
            Ok(())
        })
        .await?;
        Ok(record)
    }

    /// Removes files no record accounts for and stale exports; see [`ArtifactStore::gc`].
    pub async fn gc(&self, options: GcOptions) -> Result<GcReport, StorageError> {
        let files: Result<Vec<(Uuid, String)>, sqlx::Error> = with_pool!(&self.db, |pool| {
            sqlx::query_as("SELECT model_id, file_name FROM model_files")
                .fetch_all(pool)
                .await
        });
        let mut live_models: HashMap<Uuid, HashSet<String>> = HashMap::new();
        for (model_id, file_name) in files.map_err(|e| self.db.error(e))? {
            live_models.entry(model_id).or_default().insert(file_name);
        }

        let exports = self.list_exports().await?;
        let expiry = options.export_max_age.and_then(|max_age| {
            let now: DateTime<Utc> = options.now.into();
            chrono::Duration::from_std(max_age)
                .ok()
                .map(|age| now - age)
        });
        let mut report = GcReport {
            dry_run: options.dry_run,
            ..GcReport::default()
        };
        let mut live_exports = HashSet::new();
        let mut expired_exports = HashSet::new();
        for export in exports {
            let expired = expiry.is_some_and(|cutoff| export.created_at < cutoff);
            let package_missing = !self.store.resolve(export.path.as_ref()).exists();
            if !expired && !package_missing {
                live_exports.insert(export.id);
                continue;
            }
            if !options.dry_run {
                self.delete_export_record(export.id).await?;
            }
            if expired {
                expired_exports.insert(export.id);
            } else {
                report.removed.push(crate::artifacts::GcRemoval {
                    path: self.store.resolve(export.path.as_ref()),
                    reason: GcReason::ExportRecordWithoutPackage,
                    size_bytes: 0,
                });
            }
        }

        let store = self.store.clone();
        let files_report =
            blocking(move || store.gc(&live_models, &live_exports, &expired_exports, &options))
                .await?;
        report.removed.extend(files_report.removed);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain() {
        for good in ["cognate", "forge-training", "model_1.2"] {
            validate_identifier("name", good).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_identifier("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_without_control_characters_or_outer_spaces() {
        validate_tag("best loss").unwrap();
        for bad in ["", " x", "x ", "a\nb"] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }
}
