//! ModelService against a real database (a SQLite file and a PostgreSQL schema) and a real
//! artifacts directory, with a real EventBus to catch what it publishes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use grokforge_actors::bus::{
    self, EventBus, EventBusMessage, Publisher, SubscribeRequest, Subscription,
};
use grokforge_actors::metrics::NodeMetrics;
use grokforge_actors::services::model::{self, ModelLists, ModelService, ModelServiceMessage};
use grokforge_actors::{Event, EventEnvelope, ServiceDirectory, Topic, names};
use grokforge_storage::testing::{TestBackend, run_on};
use grokforge_storage::{
    Compression, Database, ExportFormat, ModelFilter, NewModel, NewModelFile, StorageError,
};
use ractor::{Actor, ActorRef, RpcReplyPort};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(10);

struct Harness {
    service: ActorRef<ModelServiceMessage>,
    /// The service's shared list cache, as the gateway reads it.
    lists: ModelLists,
    events: Subscription,
    bus: ActorRef<EventBusMessage>,
}

impl Harness {
    async fn start(database: Database, artifacts_dir: PathBuf) -> Harness {
        let metrics = NodeMetrics::new();
        let lists = ModelLists::default();
        let (bus, _) = Actor::spawn(
            None,
            EventBus,
            bus::Arguments {
                metrics: metrics.clone(),
                default_capacity: 64,
            },
        )
        .await
        .unwrap();
        let directory = ServiceDirectory::new();
        directory.insert(names::EVENT_BUS, bus.get_cell());
        let events = bus
            .call(
                |reply| {
                    EventBusMessage::Subscribe(
                        SubscribeRequest {
                            subscriber: "test".into(),
                            topics: vec![Topic::ModelUpdates],
                            capacity: None,
                        },
                        reply,
                    )
                },
                Some(TIMEOUT),
            )
            .await
            .unwrap()
            .unwrap();
        let (service, _) = Actor::spawn(
            None,
            ModelService,
            model::Arguments {
                database,
                artifacts_dir,
                publisher: Publisher::new("node-a", names::MODEL_SERVICE, directory, metrics),
                lists: lists.clone(),
            },
        )
        .await
        .unwrap();
        Harness {
            service,
            lists,
            events,
            bus,
        }
    }

    async fn ask<T: Send + 'static>(
        &self,
        message: impl FnOnce(RpcReplyPort<T>) -> ModelServiceMessage,
    ) -> T {
        self.service
            .call(message, Some(TIMEOUT))
            .await
            .expect("model service is running")
            .expect("model service answers in time")
    }

    async fn next_event(&mut self) -> Arc<EventEnvelope> {
        tokio::time::timeout(TIMEOUT, self.events.receiver.recv())
            .await
            .expect("an event within the timeout")
            .expect("the bus is running")
    }

    fn stop(self) {
        self.service.stop(None);
        self.bus.stop(None);
    }
}

fn new_model(name: &str, phase: &str) -> NewModel {
    NewModel {
        name: name.into(),
        phase: phase.into(),
        parent_ids: Vec::new(),
        job_id: Some(Uuid::now_v7()),
        format: "safetensors".into(),
        config: serde_json::json!({"d_model": 128}),
        metrics: serde_json::json!({"val_accuracy": 1.0}),
        tags: vec!["grokked".into()],
        files: vec![NewModelFile::new("model.safetensors", vec![7u8; 512])],
    }
}

async fn saves_publish_and_reads_never_go_stale(database: Database, artifacts_dir: PathBuf) {
    let mut harness = Harness::start(database, artifacts_dir.clone()).await;
    harness.ask(ModelServiceMessage::Ping).await;

    let saved = harness
        .ask(|r| ModelServiceMessage::Save(Box::new(new_model("cognate-a", "cognate")), r))
        .await
        .unwrap();
    assert_eq!(saved.version, 1);
    let envelope = harness.next_event().await;
    assert_eq!(envelope.source_service, names::MODEL_SERVICE);
    assert_eq!(
        envelope.event,
        Event::ModelSaved {
            model_id: saved.id,
            name: "cognate-a".into(),
            phase: "cognate".into(),
            version: 1,
            sha256: saved.sha256.clone(),
            job_id: saved.job_id,
        }
    );

    // Fill the cache, then change the model: the next reads see the change.
    let got = harness
        .ask(|r| ModelServiceMessage::Get(saved.id, r))
        .await
        .unwrap();
    assert_eq!(got, saved);
    let winners = ModelFilter {
        winner: Some(true),
        ..ModelFilter::default()
    };
    let before = harness
        .ask(|r| ModelServiceMessage::List(winners.clone(), r))
        .await
        .unwrap();
    assert!(before.is_empty());
    let change = harness
        .ask(|r| ModelServiceMessage::MarkWinner(saved.id, r))
        .await
        .unwrap();
    assert!(change.model.winner);
    assert!(
        harness
            .ask(|r| ModelServiceMessage::Get(saved.id, r))
            .await
            .unwrap()
            .winner
    );
    let after = harness
        .ask(|r| ModelServiceMessage::List(winners.clone(), r))
        .await
        .unwrap();
    assert_eq!(after.iter().map(|m| m.id).collect::<Vec<_>>(), [saved.id]);

    // A second save of the name is version 2 and shows up in a cached list at once.
    let all = ModelFilter::default();
    let listed = harness
        .ask(|r| ModelServiceMessage::List(all.clone(), r))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    // The answer is shared with readers outside the actor, the very same list…
    let shared = harness
        .lists
        .get(&all)
        .expect("the answered list is shared");
    assert!(Arc::ptr_eq(&shared, &listed));
    let v2 = harness
        .ask(|r| ModelServiceMessage::Save(Box::new(new_model("cognate-a", "cognate")), r))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    // …and gone by the time a change is answered, so no reader can see the old list after.
    assert!(harness.lists.get(&all).is_none());
    assert!(harness.lists.get(&winners).is_none());
    harness.next_event().await;
    assert_eq!(
        harness
            .ask(|r| ModelServiceMessage::List(all.clone(), r))
            .await
            .unwrap()
            .len(),
        2
    );

    // Handoff: recorded and announced.
    let handoff = harness
        .ask(|reply| ModelServiceMessage::Handoff {
            from_phase: "cognate".into(),
            to_phase: "evomerge".into(),
            model_ids: vec![saved.id],
            reply,
        })
        .await
        .unwrap();
    assert_eq!(handoff.model_ids, [saved.id]);
    assert_eq!(
        harness.next_event().await.event,
        Event::ModelHandoff {
            from_phase: "cognate".into(),
            to_phase: "evomerge".into(),
            model_ids: vec![saved.id],
        }
    );

    // Export runs beside the mailbox and answers with the package.
    let export = harness
        .ask(|reply| ModelServiceMessage::Export {
            model_ids: vec![saved.id, v2.id],
            format: ExportFormat::All,
            compression: Compression::Deflate,
            reply,
        })
        .await
        .unwrap();
    assert!(artifacts_dir.join(&export.path).is_file());
    assert_eq!(
        harness
            .ask(|r| ModelServiceMessage::GetExport(export.id, r))
            .await
            .unwrap(),
        export
    );
    let unknown = Uuid::now_v7();
    let refused = harness
        .ask(|reply| ModelServiceMessage::Export {
            model_ids: vec![unknown],
            format: ExportFormat::All,
            compression: Compression::None,
            reply,
        })
        .await
        .unwrap_err();
    assert!(refused.is_client_error());
    assert!(
        refused.to_string().contains(&unknown.to_string()),
        "{refused}"
    );

    // Delete: the cached record goes with it.
    harness
        .ask(|r| ModelServiceMessage::List(all.clone(), r))
        .await
        .unwrap();
    assert!(harness.lists.get(&all).is_some());
    harness
        .ask(|r| ModelServiceMessage::Delete(saved.id, r))
        .await
        .unwrap();
    assert!(harness.lists.get(&all).is_none());
    assert!(matches!(
        harness.ask(|r| ModelServiceMessage::Get(saved.id, r)).await,
        Err(StorageError::ModelNotFound { ids }) if ids == vec![saved.id]
    ));
    assert!(
        harness
            .ask(|r| ModelServiceMessage::List(winners.clone(), r))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !artifacts_dir
            .join("models")
            .join(saved.id.to_string())
            .exists()
    );

    // A refused save publishes nothing and leaves the service running.
    let mut bad = new_model("cognate-b", "cognate");
    bad.files.clear();
    assert!(
        harness
            .ask(|r| ModelServiceMessage::Save(Box::new(bad), r))
            .await
            .unwrap_err()
            .is_client_error()
    );
    harness.ask(ModelServiceMessage::Ping).await;
    assert!(harness.events.receiver.try_recv().is_err());
    harness.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_saves_publish_and_reads_never_go_stale() {
    run_on(TestBackend::Sqlite, saves_publish_and_reads_never_go_stale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_saves_publish_and_reads_never_go_stale() {
    run_on(
        TestBackend::Postgres,
        saves_publish_and_reads_never_go_stale,
    )
    .await;
}
