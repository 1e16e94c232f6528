//! `DatasetService`: uploaded corpora and tokenizers (`ds:<id>`) and the prepared-data cache.
//!
//! * Uploads arrive as a stream of body chunks over a bounded channel (the gateway never holds
//!   a whole body). One blocking thread per upload writes them to a `.tmp-` file in the
//!   artifacts store, hashing on the way, and stops the moment the size passes
//!   `storage.max_dataset_bytes`: the channel is closed (so the gateway stops reading the
//!   client) and the partial file removed. A complete upload is validated on the same thread
//!   (UTF-8, JSONL objects with the text field, a tokenizer that loads), then registered —
//!   deduplicated by content — in a task. The handler only starts that work and answers at once
//!   with where the outcome will arrive, so the mailbox stays free for reads meanwhile.
//! * The prepared-data cache (`<artifacts>/cache`, shared by the nodes of a cluster) is kept
//!   under `storage.max_cache_bytes` by evicting the least recently used entries, never one
//!   that a job running anywhere in the cluster reads: the keys of those come from the job
//!   records in the database. Eviction runs on a timer and whenever a job has just written a
//!   new entry, on a blocking thread.
//!
//! Race, accepted: a job that a node claims between another node's reading of the running
//! jobs and its eviction may find its entry gone; it then tokenises again. Nothing is lost but
//! time, and the bound holds.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use grokforge_storage::{
    ArtifactStore, Database, DatasetKind, DatasetRecord, DatasetRepository, DatasetRole,
    DatasetUse, DeleteOutcome, StorageError, Stored, UploadStats,
};
use grokforge_training_core::data::TextFormat;
use grokforge_training_core::data::text::{self, Eviction};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::Pingable;
use crate::metrics::NodeMetrics;

pub struct DatasetService;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "the upload is larger than the node accepts ({limit} bytes, storage.max_dataset_bytes); nothing was kept"
    )]
    TooLarge { limit: u64 },
    /// The file is not what its kind says; `line` is 1-based where one applies.
    #[error("{reason}")]
    Invalid { line: Option<usize>, reason: String },
    /// A request parameter is wrong; `field` names it.
    #[error("`{field}`: {reason}")]
    BadParameter { field: &'static str, reason: String },
    /// The client stopped sending, or the body could not be read.
    #[error("the upload was cut short: {0}")]
    Aborted(String),
    #[error("dataset {0} not found")]
    NotFound(String),
    #[error("dataset {id} is read by jobs that have not finished; cancel them or wait")]
    InUse { id: Uuid, jobs: Vec<DatasetUse> },
    #[error("{0} is built in and cannot be deleted")]
    BuiltIn(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// What a client says about an upload (query string of `POST /datasets`). Nothing here names a
/// path: the server generates every one.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub name: String,
    pub kind: DatasetKind,
    /// JSONL only: the field holding the text (default `text`).
    pub text_field: Option<String>,
    /// The body's `Content-Length`, when the client sent one: refused at once when too large.
    pub declared_bytes: Option<u64>,
}

/// The outcome of an upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub record: DatasetRecord,
    /// `false` when the same content was there already (this is that dataset).
    pub created: bool,
}

/// One entry of `GET /datasets`: an uploaded dataset or a built-in task.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuiltinDataset {
    /// How a job names it (`mod-mul:97`).
    pub id: String,
    pub builtin: bool,
    pub kind: &'static str,
    pub description: String,
}

/// A page of `GET /datasets`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetPage {
    /// Uploaded datasets, oldest first.
    pub datasets: Vec<DatasetEntry>,
    /// Uploaded datasets in all.
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
    /// The `offset` of the next page, if there is one.
    pub next_offset: Option<u64>,
    /// The built-in algorithmic tasks (any prime modulus works; 97 is the paper's).
    pub builtin: Vec<BuiltinDataset>,
}

/// An uploaded dataset as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetEntry {
    /// How a job names it: `ds:<id>`.
    pub reference: String,
    pub builtin: bool,
    #[serde(flatten)]
    pub record: DatasetRecord,
}

impl From<DatasetRecord> for DatasetEntry {
    fn from(record: DatasetRecord) -> Self {
        DatasetEntry {
            reference: record.reference(),
            builtin: false,
            record,
        }
    }
}

/// `GET /datasets/{id}`: the dataset and the jobs that read it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetDetail {
    #[serde(flatten)]
    pub entry: DatasetEntry,
    /// Jobs that read it, newest first.
    pub used_by: Vec<DatasetUse>,
}

pub type Reply<T> = RpcReplyPort<Result<T, DatasetError>>;

pub enum DatasetServiceMessage {
    Ping(RpcReplyPort<()>),
    /// Starts an upload reading `body`; answers at once with where its outcome will arrive.
    Upload {
        request: UploadRequest,
        body: mpsc::Receiver<Result<Bytes, String>>,
        reply: Reply<oneshot::Receiver<Result<Uploaded, DatasetError>>>,
    },
    List {
        limit: u64,
        offset: u64,
        reply: Reply<DatasetPage>,
    },
    /// By `ds:<id>`, a bare id, or a built-in task's name.
    Get(String, Reply<DatasetDetail>),
    Delete(String, Reply<DatasetRecord>),
    /// Bound the prepared-data cache now (a job just wrote an entry; also on a timer).
    EvictCache,
    /// Internal: an eviction finished.
    Evicted(Result<Eviction, String>),
}

impl Pingable for DatasetServiceMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        DatasetServiceMessage::Ping(reply)
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub database: Database,
    pub artifacts_dir: PathBuf,
    /// `<artifacts>/cache`.
    pub cache_dir: PathBuf,
    pub max_dataset_bytes: u64,
    pub max_cache_bytes: u64,
    pub metrics: NodeMetrics,
    /// How often the cache is bounded even when no job wrote to it.
    pub evict_every: Duration,
}

pub struct DatasetServiceState {
    args: Arguments,
    repository: DatasetRepository,
    /// Uploads being registered and evictions; aborted when the actor stops.
    tasks: JoinSet<()>,
    evicting: bool,
    /// Another eviction was asked for while one ran.
    evict_again: bool,
    ticker: Option<JoinHandle<()>>,
}

/// Body chunks the gateway may queue ahead of the writer: with hyper's chunks of up to some
/// hundred KiB, a few MiB in flight per upload at most.
pub const UPLOAD_CHANNEL_CAPACITY: usize = 16;

impl Actor for DatasetService {
    type Msg = DatasetServiceMessage;
    type State = DatasetServiceState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let repository = DatasetRepository::new(
            args.database.clone(),
            ArtifactStore::new(&args.artifacts_dir),
        );
        let dirs = [repository.datasets_dir(), args.cache_dir.clone()];
        tokio::task::spawn_blocking(move || {
            dirs.iter()
                .try_for_each(std::fs::create_dir_all)
                .map_err(|e| format!("cannot create the datasets directories: {e}"))
        })
        .await??;
        let ticker = myself.send_interval(args.evict_every, || DatasetServiceMessage::EvictCache);
        let _ = myself.cast(DatasetServiceMessage::EvictCache);
        Ok(DatasetServiceState {
            args,
            repository,
            tasks: JoinSet::new(),
            evicting: false,
            evict_again: false,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        // An upload cut short leaves nothing: its blocking writer removes the temp directory
        // when its channel closes.
        state.tasks.abort_all();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        match message {
            DatasetServiceMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            DatasetServiceMessage::Upload {
                request,
                body,
                reply,
            } => {
                let _ = reply.send(state.start_upload(request, body));
            }
            // Reads are answered from tasks of their own, as the training service answers its
            // job reads: through this mailbox one slow query would hold up every other read, and
            // under 500 concurrent REST clients the gateway's calls timed out.
            DatasetServiceMessage::List {
                limit,
                offset,
                reply,
            } => {
                let repository = state.repository.clone();
                tokio::spawn(async move {
                    let _ = reply.send(list(&repository, limit, offset).await);
                });
            }
            DatasetServiceMessage::Get(id, reply) => {
                let repository = state.repository.clone();
                tokio::spawn(async move {
                    let _ = reply.send(get(&repository, &id).await);
                });
            }
            DatasetServiceMessage::Delete(id, reply) => {
                let _ = reply.send(state.delete(&id).await);
            }
            DatasetServiceMessage::EvictCache => {
                if state.evicting {
                    state.evict_again = true;
                } else {
                    state.evict(&myself).await;
                }
            }
            DatasetServiceMessage::Evicted(result) => {
                state.evicting = false;
                match result {
                    Ok(eviction) => {
                        if !eviction.removed.is_empty() {
                            state
                                .args
                                .metrics
                                .dataset_cache_evictions_total
                                .inc_by(eviction.removed.len() as u64);
                            tracing::info!(
                                removed = eviction.removed.len(),
                                remaining_bytes = eviction.remaining_bytes,
                                "prepared-data cache evicted"
                            );
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot bound the prepared-data cache"),
                }
                if std::mem::take(&mut state.evict_again) {
                    state.evict(&myself).await;
                }
            }
        }
        Ok(())
    }
}

/// Parses a dataset reference: `ds:<uuid>` or a bare UUID.
pub fn parse_reference(reference: &str) -> Option<Uuid> {
    let id = grokforge_training_core::uploaded_dataset_id(reference).unwrap_or(reference);
    Uuid::parse_str(id).ok()
}

/// The built-in tasks, as listed.
pub fn builtin_datasets() -> Vec<BuiltinDataset> {
    use grokforge_training_core::Operation;
    Operation::ALL
        .into_iter()
        .map(|operation| {
            let task = grokforge_training_core::ModularTask {
                operation,
                modulus: 97,
            };
            BuiltinDataset {
                id: task.to_string(),
                builtin: true,
                kind: "algorithmic",
                description: format!(
                    "every equation a ∘ b = c mod p of `{task}` (any prime p: mod-OP:P)"
                ),
            }
        })
        .collect()
}

impl DatasetServiceState {
    fn start_upload(
        &mut self,
        request: UploadRequest,
        body: mpsc::Receiver<Result<Bytes, String>>,
    ) -> Result<oneshot::Receiver<Result<Uploaded, DatasetError>>, DatasetError> {
        let limit = self.args.max_dataset_bytes;
        if request.declared_bytes.is_some_and(|n| n > limit) {
            return Err(DatasetError::TooLarge { limit });
        }
        grokforge_storage::datasets::validate_name(&request.name).map_err(|e| {
            DatasetError::BadParameter {
                field: "name",
                reason: e.to_string(),
            }
        })?;
        let text_field = match (request.kind, request.text_field) {
            (DatasetKind::Jsonl, field) => {
                let field = field.unwrap_or_else(|| "text".to_string());
                if field.is_empty()
                    || field.chars().count() > 128
                    || field.chars().any(char::is_control)
                {
                    return Err(DatasetError::BadParameter {
                        field: "text_field",
                        reason: "1 to 128 characters, no control characters".into(),
                    });
                }
                field
            }
            (_, Some(_)) => {
                return Err(DatasetError::BadParameter {
                    field: "text_field",
                    reason: "only applies to `kind=jsonl`".into(),
                });
            }
            (_, None) => String::new(),
        };
        let (done, outcome) = oneshot::channel();
        let repository = self.repository.clone();
        let kind = request.kind;
        let name = request.name;
        self.tasks.spawn(async move {
            let field = text_field.clone();
            let written = {
                let repository = repository.clone();
                tokio::task::spawn_blocking(move || {
                    receive_and_check(&repository, kind, &field, limit, body)
                })
                .await
                .map_err(|e| DatasetError::Aborted(format!("the writer stopped: {e}")))
                .and_then(|r| r)
            };
            let result = match written {
                Ok((upload, stats)) => repository
                    .finish_upload(upload, name, text_field, stats)
                    .await
                    .map(|stored| match stored {
                        Stored::Created(record) => Uploaded {
                            record,
                            created: true,
                        },
                        Stored::Existing(record) => Uploaded {
                            record,
                            created: false,
                        },
                    })
                    .map_err(DatasetError::from),
                Err(error) => Err(error),
            };
            if let Err(error) = &result {
                tracing::info!(%error, "upload refused");
            }
            let _ = done.send(result);
        });
        Ok(outcome)
    }

    async fn delete(&self, reference: &str) -> Result<DatasetRecord, DatasetError> {
        if reference
            .parse::<grokforge_training_core::ModularTask>()
            .is_ok()
        {
            return Err(DatasetError::BuiltIn(reference.to_string()));
        }
        let record = find(&self.repository, reference).await?;
        match self.repository.delete(record.id).await? {
            DeleteOutcome::Deleted(record) => Ok(record),
            DeleteOutcome::InUse(jobs) => Err(DatasetError::InUse {
                id: record.id,
                jobs,
            }),
            DeleteOutcome::NotFound => Err(DatasetError::NotFound(reference.to_string())),
        }
    }

    /// Bounds the cache on a blocking thread, keeping the entries of running jobs.
    async fn evict(&mut self, myself: &ActorRef<DatasetServiceMessage>) {
        let keep = match self.cache_keys_in_use().await {
            Ok(keep) => keep,
            Err(error) => {
                // Without knowing what running jobs use, evict nothing.
                tracing::warn!(%error, "cannot read the running jobs' datasets; not evicting");
                return;
            }
        };
        self.evicting = true;
        let dir = self.args.cache_dir.clone();
        let max = self.args.max_cache_bytes;
        let myself = myself.clone();
        self.tasks.spawn(async move {
            let result = tokio::task::spawn_blocking(move || text::evict(&dir, max, &keep))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let _ = myself.cast(DatasetServiceMessage::Evicted(result));
        });
    }

    /// The cache keys of the uploaded corpora that running jobs, on any node, read.
    async fn cache_keys_in_use(&self) -> Result<HashSet<String>, StorageError> {
        let links = self.repository.in_use_by_running_jobs().await?;
        let mut keep = HashSet::new();
        for corpus in links.iter().filter(|l| l.role == DatasetRole::Corpus) {
            let Some(record) = self.repository.find(corpus.dataset_id).await? else {
                continue;
            };
            let tokenizer = links
                .iter()
                .find(|l| l.job_id == corpus.job_id && l.role == DatasetRole::Tokenizer)
                .map(|l| l.sha256.as_str());
            keep.insert(cache_key(&record, &corpus.sha256, tokenizer));
        }
        Ok(keep)
    }
}

/// The prepared-data cache key of `corpus` (bytes hashing to `sha256`) read with the tokenizer
/// whose `tokenizer.json` hashes to `tokenizer_sha256` (byte-level when `None`).
pub fn cache_key(corpus: &DatasetRecord, sha256: &str, tokenizer_sha256: Option<&str>) -> String {
    text::cache_key(
        sha256,
        &text_format(corpus),
        &text::tokenizer_fingerprint(tokenizer_sha256),
    )
}

/// How training reads an uploaded corpus.
pub fn text_format(corpus: &DatasetRecord) -> TextFormat {
    match corpus.kind {
        DatasetKind::Jsonl => TextFormat::Jsonl {
            field: corpus.text_field.clone(),
        },
        _ => TextFormat::Plain,
    }
}

/// Blocking: writes the body to a new upload until it ends, refusing it past `limit`, then
/// checks the file is what `kind` says. Every error leaves nothing behind (the upload's drop
/// removes its directory).
fn receive_and_check(
    repository: &DatasetRepository,
    kind: DatasetKind,
    text_field: &str,
    limit: u64,
    mut body: mpsc::Receiver<Result<Bytes, String>>,
) -> Result<(grokforge_storage::PendingUpload, UploadStats), DatasetError> {
    use std::io::Write;
    let mut upload = repository.begin_upload(kind)?;
    while let Some(chunk) = body.blocking_recv() {
        let chunk = chunk.map_err(DatasetError::Aborted)?;
        if upload.written() + chunk.len() as u64 > limit {
            // Closing the channel tells the gateway to stop reading the client.
            body.close();
            return Err(DatasetError::TooLarge { limit });
        }
        upload.write_all(&chunk).map_err(|e| {
            DatasetError::Storage(StorageError::Io {
                path: repository.datasets_dir(),
                source: e,
            })
        })?;
    }
    let (digest, path) = upload.seal()?;
    if digest.size_bytes == 0 {
        return Err(DatasetError::Invalid {
            line: None,
            reason: "the upload is empty".into(),
        });
    }
    let invalid = |error: grokforge_training_core::Error| match error {
        grokforge_training_core::Error::DataFile { line, reason, .. } => DatasetError::Invalid {
            line: Some(line),
            reason: format!("line {line}: {reason}"),
        },
        other => DatasetError::Invalid {
            line: None,
            reason: other.to_string(),
        },
    };
    let stats = match kind {
        DatasetKind::Text | DatasetKind::Jsonl => {
            let format = match kind {
                DatasetKind::Jsonl => TextFormat::Jsonl {
                    field: text_field.to_string(),
                },
                _ => TextFormat::Plain,
            };
            let found = text::inspect(&path, &format).map_err(invalid)?;
            UploadStats {
                lines: found.lines,
                records: found.records,
            }
        }
        DatasetKind::Tokenizer => {
            let vocab = text::inspect_tokenizer(&path).map_err(|e| match invalid(e) {
                DatasetError::Invalid { reason, .. } => DatasetError::Invalid {
                    line: None,
                    reason: reason
                        .strip_prefix("line 1: ")
                        .map(str::to_string)
                        .unwrap_or(reason),
                },
                other => other,
            })?;
            UploadStats {
                lines: 0,
                records: vocab as u64,
            }
        }
    };
    Ok((upload, stats))
}

async fn list(
    repository: &DatasetRepository,
    limit: u64,
    offset: u64,
) -> Result<DatasetPage, DatasetError> {
    let (records, total) = repository.list(limit, offset).await?;
    let shown = records.len() as u64;
    let next_offset = (offset + shown < total && shown > 0).then_some(offset + shown);
    Ok(DatasetPage {
        datasets: records.into_iter().map(DatasetEntry::from).collect(),
        total,
        limit,
        offset,
        next_offset,
        builtin: builtin_datasets(),
    })
}

async fn find(
    repository: &DatasetRepository,
    reference: &str,
) -> Result<DatasetRecord, DatasetError> {
    let id =
        parse_reference(reference).ok_or_else(|| DatasetError::NotFound(reference.to_string()))?;
    repository
        .find(id)
        .await?
        .ok_or_else(|| DatasetError::NotFound(reference.to_string()))
}

async fn get(
    repository: &DatasetRepository,
    reference: &str,
) -> Result<DatasetDetail, DatasetError> {
    let record = find(repository, reference).await?;
    let used_by = repository.uses(record.id).await?;
    Ok(DatasetDetail {
        entry: record.into(),
        used_by,
    })
}
