//! `ModelService`: the node's model registry behind a mailbox — save, get, list, mark winner,
//! record handoffs, delete and export — with model metadata cached in memory.
//!
//! Cache invariant: every request that changes the registry (save, mark winner, handoff,
//! delete) runs inside this actor's handler and clears the whole cache when it returns,
//! successful or not; handlers run one at a time, so a read served from the cache never
//! predates a change made through this node. Changes made elsewhere (another node, the CLI on
//! the same data directory) are not seen by the cache, so entries also expire after
//! [`CACHE_TTL`], which bounds how stale such a read can be.
//!
//! The cached `List` answers are also readable without a message, through the [`ModelLists`]
//! handle the node hands to its gateway: `GET /models` is the registry's hottest read, and a
//! mailbox round trip costs more than the lookup. Only this actor writes the handle, under the
//! same invariant (it clears it before answering or announcing a change, and when it starts), so
//! a reader sees either a list this actor would have answered or nothing, and then asks it.
//!
//! File work (hashing, copying) happens on blocking threads inside the registry. An export can
//! take long, so it runs as a task owned by the actor (aborted when the actor stops) that
//! answers the caller itself, keeping the mailbox free for reads meanwhile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use grokforge_storage::{
    ArtifactStore, Compression, Database, ExportFormat, ExportRecord, HandoffRecord, ModelFilter,
    ModelRecord, ModelRegistry, NewModel, StorageError, WinnerChange,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::Pingable;
use crate::bus::Publisher;
use crate::events::Event;

/// How long a cached read may be served without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Bounds on the cache, whatever the filters callers send: past them it is cleared.
const MAX_CACHED_MODELS: usize = 4096;
const MAX_CACHED_LISTS: usize = 128;

pub struct ModelService;

/// Every registry request is answered with the storage's result; the error says which model
/// or request was at fault (`StorageError::is_client_error` tells a 4xx from a 5xx).
pub type Reply<T> = RpcReplyPort<Result<T, StorageError>>;

pub enum ModelServiceMessage {
    Ping(RpcReplyPort<()>),
    /// Stores a trained model; publishes `ModelSaved`.
    Save(Box<NewModel>, Reply<ModelRecord>),
    Get(Uuid, Reply<ModelRecord>),
    /// Shared, not copied: an unchanged list is the same `Arc`, so a caller may cache what it
    /// derives from it (the gateway keeps the JSON body) for as long as the pointer holds.
    List(ModelFilter, Reply<Arc<Vec<ModelRecord>>>),
    /// Makes the model the one winner of its phase.
    MarkWinner(Uuid, Reply<WinnerChange>),
    /// Records models of one phase as the inputs of the next; publishes `ModelHandoff`.
    Handoff {
        from_phase: String,
        to_phase: String,
        model_ids: Vec<Uuid>,
        reply: Reply<HandoffRecord>,
    },
    Delete(Uuid, Reply<ModelRecord>),
    /// Packages models under `<artifacts>/exports/`; unknown ids are refused by id.
    Export {
        model_ids: Vec<Uuid>,
        format: ExportFormat,
        compression: Compression,
        reply: Reply<ExportRecord>,
    },
    GetExport(Uuid, Reply<ExportRecord>),
    /// Models per phase, for the `grokforge_models` gauge.
    CountByPhase(Reply<Vec<(String, u64)>>),
}

impl Pingable for ModelServiceMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        ModelServiceMessage::Ping(reply)
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub database: Database,
    pub artifacts_dir: PathBuf,
    pub publisher: Publisher,
    /// Where the service keeps its cached lists for readers outside it (see the module
    /// documentation); it outlives restarts, and each start clears it.
    pub lists: ModelLists,
}

/// The ModelService's cached `List` answers, shared read-only with the rest of the node.
///
/// A std `RwLock`: held for a map lookup, insert or clear, never across an await.
#[derive(Clone, Default)]
pub struct ModelLists {
    lists: Arc<RwLock<ListsByFilter>>,
}

/// Each filter's list with the time it was read.
type ListsByFilter = HashMap<ModelFilter, Cached<Arc<Vec<ModelRecord>>>>;

impl ModelLists {
    /// The list the service would answer for `filter` now, if it has it cached and fresh
    /// (younger than [`CACHE_TTL`]); `None` means: ask the service.
    pub fn get(&self, filter: &ModelFilter) -> Option<Arc<Vec<ModelRecord>>> {
        self.lists
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(filter)
            .and_then(Cached::fresh)
    }

    fn put(&self, filter: ModelFilter, records: &Arc<Vec<ModelRecord>>) {
        let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
        if lists.len() >= MAX_CACHED_LISTS {
            lists.clear();
        }
        lists.insert(
            filter,
            Cached {
                value: records.clone(),
                at: Instant::now(),
            },
        );
    }

    fn clear(&self) {
        self.lists
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

struct Cached<T> {
    value: T,
    at: Instant,
}

impl<T: Clone> Cached<T> {
    fn fresh(&self) -> Option<T> {
        (self.at.elapsed() < CACHE_TTL).then(|| self.value.clone())
    }
}

struct MetadataCache {
    models: HashMap<Uuid, Cached<ModelRecord>>,
    lists: ModelLists,
}

impl MetadataCache {
    /// A cold cache; `lists` is emptied, since a service that died mid-change may have left it
    /// stale.
    fn new(lists: ModelLists) -> Self {
        lists.clear();
        MetadataCache {
            models: HashMap::new(),
            lists,
        }
    }

    fn model(&self, id: Uuid) -> Option<ModelRecord> {
        self.models.get(&id).and_then(Cached::fresh)
    }

    fn list(&self, filter: &ModelFilter) -> Option<Arc<Vec<ModelRecord>>> {
        self.lists.get(filter)
    }

    fn put_model(&mut self, record: &ModelRecord) {
        if self.models.len() >= MAX_CACHED_MODELS {
            self.models.clear();
        }
        self.models.insert(
            record.id,
            Cached {
                value: record.clone(),
                at: Instant::now(),
            },
        );
    }

    fn put_list(&mut self, filter: ModelFilter, records: &Arc<Vec<ModelRecord>>) {
        self.lists.put(filter, records);
    }

    fn invalidate(&mut self) {
        self.models.clear();
        self.lists.clear();
    }
}

pub struct ModelServiceState {
    registry: ModelRegistry,
    publisher: Publisher,
    cache: MetadataCache,
    /// Exports in flight; aborted when the actor stops.
    exports: JoinSet<()>,
}

impl Actor for ModelService {
    type Msg = ModelServiceMessage;
    type State = ModelServiceState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        arguments: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = ArtifactStore::new(&arguments.artifacts_dir);
        let layout = store.clone();
        tokio::task::spawn_blocking(move || layout.ensure_layout())
            .await?
            .map_err(|e| {
                format!(
                    "cannot create artifacts dir {}: {e}",
                    arguments.artifacts_dir.display()
                )
            })?;
        Ok(ModelServiceState {
            registry: ModelRegistry::new(arguments.database, store),
            publisher: arguments.publisher,
            cache: MetadataCache::new(arguments.lists),
            exports: JoinSet::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A cut-short export leaves only a `.tmp-` package, which gc removes.
        state.exports.abort_all();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Reap finished exports so the set does not grow.
        while state.exports.try_join_next().is_some() {}
        let registry = &state.registry;
        match message {
            ModelServiceMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            ModelServiceMessage::Get(id, reply) => {
                let result = match state.cache.model(id) {
                    Some(record) => Ok(record),
                    None => registry.get(id).await.inspect(|r| state.cache.put_model(r)),
                };
                let _ = reply.send(result);
            }
            ModelServiceMessage::CountByPhase(reply) => {
                let _ = reply.send(registry.count_by_phase().await);
            }
            ModelServiceMessage::List(filter, reply) => {
                let result = match state.cache.list(&filter) {
                    Some(records) => Ok(records),
                    None => registry
                        .list(&filter)
                        .await
                        .map(Arc::new)
                        .inspect(|records| state.cache.put_list(filter, records)),
                };
                let _ = reply.send(result);
            }
            ModelServiceMessage::Save(model, reply) => {
                let result = registry.save(*model).await;
                state.cache.invalidate();
                if let Ok(record) = &result {
                    state.publisher.publish(Event::ModelSaved {
                        model_id: record.id,
                        name: record.name.clone(),
                        phase: record.phase.clone(),
                        version: record.version,
                        sha256: record.sha256.clone(),
                        job_id: record.job_id,
                    });
                }
                let _ = reply.send(result);
            }
            ModelServiceMessage::MarkWinner(id, reply) => {
                let result = registry.mark_winner(id).await;
                state.cache.invalidate();
                let _ = reply.send(result);
            }
            ModelServiceMessage::Handoff {
                from_phase,
                to_phase,
                model_ids,
                reply,
            } => {
                let result = registry
                    .record_handoff(&from_phase, &to_phase, &model_ids)
                    .await;
                state.cache.invalidate();
                if let Ok(handoff) = &result {
                    state.publisher.publish(Event::ModelHandoff {
                        from_phase: handoff.from_phase.clone(),
                        to_phase: handoff.to_phase.clone(),
                        model_ids: handoff.model_ids.clone(),
                    });
                }
                let _ = reply.send(result);
            }
            ModelServiceMessage::Delete(id, reply) => {
                let result = registry.delete(id).await;
                state.cache.invalidate();
                let _ = reply.send(result);
            }
            ModelServiceMessage::Export {
                model_ids,
                format,
                compression,
                reply,
            } => {
                let registry = registry.clone();
                state.exports.spawn(async move {
                    let result = registry
                        .export_models(&model_ids, format, compression)
                        .await;
                    if let Err(error) = &result {
                        tracing::warn!(error = %error, "export failed");
                    }
                    let _ = reply.send(result);
                });
            }
            ModelServiceMessage::GetExport(id, reply) => {
                let _ = reply.send(registry.get_export(id).await);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_service_empties_the_shared_lists() {
        // A service that died between a change and its invalidation left them stale.
        let lists = ModelLists::default();
        let all = ModelFilter::default();
        lists.put(all.clone(), &Arc::new(Vec::new()));
        assert!(lists.get(&all).is_some());
        let _cache = MetadataCache::new(lists.clone());
        assert!(lists.get(&all).is_none());
    }
}
