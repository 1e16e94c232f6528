//! The TrainingService inside a real node (real SQLite file, or real PostgreSQL in its own
//! schema), running real tiny training jobs.

use std::time::Duration;

use grokforge_actors::services::model::ModelServiceMessage;
use grokforge_actors::services::training::TrainingServiceMessage;
use grokforge_actors::{EventEnvelope, Node, names};
use grokforge_config::Settings;
use grokforge_storage::jobs::{JobFilter, JobRecord, JobStatus};
use grokforge_storage::{ModelFilter, ModelRecord};
use grokforge_training_core::{Phase, TrainSpec};
use uuid::Uuid;

const CALL: Duration = Duration::from_secs(10);

fn tiny_spec(steps: u64, variants: usize) -> TrainSpec {
    TrainSpec {
        dataset: Some("mod-add:11".into()),
        d_model: Some(16),
        n_layers: Some(1),
        n_heads: Some(2),
        d_ff: Some(32),
        batch_size: 16,
        steps,
        eval_every: 4,
        checkpoint_every: 4,
        lr: 3e-3,
        weight_decay: Some(0.01),
        warmup_steps: 2,
        variants,
        threads: Some(1),
        ..TrainSpec::default()
    }
}

async fn node(
    dir: &std::path::Path,
    database_url: Option<String>,
    max_concurrent_jobs: usize,
) -> Node {
    let mut settings = Settings::default();
    settings.node.data_dir = dir.to_path_buf();
    settings.database.url = database_url;
    settings.training.max_concurrent_jobs = max_concurrent_jobs;
    settings.training.lease_duration_ms = 3_000;
    let device = grokforge_training_core::parse_device("cpu").unwrap();
    Node::start(settings, device, Duration::from_secs(10))
        .await
        .unwrap()
}

async fn start(node: &Node, spec: TrainSpec, priority: i64) -> JobRecord {
    node.directory
        .call::<TrainingServiceMessage, _, _>(
            names::TRAINING_SERVICE,
            |reply| TrainingServiceMessage::StartJob {
                phase: Phase::Cognate,
                spec: Box::new(spec),
                priority,
                reply,
            },
            CALL,
        )
        .await
        .unwrap()
        .unwrap()
}

async fn job(node: &Node, id: Uuid) -> JobRecord {
    node.directory
        .call::<TrainingServiceMessage, _, _>(
            names::TRAINING_SERVICE,
            |r| TrainingServiceMessage::GetJob(id, r),
            CALL,
        )
        .await
        .unwrap()
        .unwrap()
}

async fn wait_for_status(
    node: &Node,
    id: Uuid,
    wanted: JobStatus,
    deadline: Duration,
) -> JobRecord {
    let started = tokio::time::Instant::now();
    loop {
        let record = job(node, id).await;
        if record.status == wanted {
            return record;
        }
        assert!(
            started.elapsed() < deadline,
            "job {id} is {:?} after {deadline:?}, wanted {wanted:?}: {record:?}",
            record.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events(node: &Node, id: Uuid, since: u64) -> Vec<EventEnvelope> {
    let events = node
        .directory
        .call::<TrainingServiceMessage, _, _>(
            names::TRAINING_SERVICE,
            |reply| TrainingServiceMessage::JobEvents {
                job_id: id,
                since,
                limit: grokforge_actors::services::training::MAX_EVENTS_PAGE,
                reply,
            },
            CALL,
        )
        .await
        .unwrap()
        .unwrap();
    events
        .into_iter()
        .map(|e| serde_json::from_value(e.envelope).unwrap())
        .collect()
}

async fn cancel(node: &Node, id: Uuid) -> JobRecord {
    node.directory
        .call::<TrainingServiceMessage, _, _>(
            names::TRAINING_SERVICE,
            |r| TrainingServiceMessage::CancelJob(id, r),
            CALL,
        )
        .await
        .unwrap()
        .unwrap()
}

async fn models(node: &Node) -> Vec<ModelRecord> {
    node.directory
        .call::<ModelServiceMessage, _, _>(
            names::MODEL_SERVICE,
            |r| {
                ModelServiceMessage::List(
                    ModelFilter {
                        phase: Some("cognate".into()),
                        ..ModelFilter::default()
                    },
                    r,
                )
            },
            CALL,
        )
        .await
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn a_tiny_cognate_job_runs_to_completion_with_its_models_registered(
    database_url: Option<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), database_url, 1).await;
    let queued = start(&node, tiny_spec(12, 2), 0).await;
    assert_eq!(queued.status, JobStatus::Queued);
    let done = wait_for_status(
        &node,
        queued.id,
        JobStatus::Completed,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.attempts, 1);

    let log = events(&node, queued.id, 0).await;
    let seqs: Vec<u64> = log.iter().map(|e| e.seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "gap-free sequence numbers"
    );
    let kinds: Vec<&str> = log.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds.first(), Some(&"training_started"));
    assert_eq!(kinds.last(), Some(&"training_completed"));
    assert!(kinds.contains(&"training_progress"));
    assert!(kinds.contains(&"checkpoint_saved"));
    // The final step of every variant is reported, however fast the run was.
    for variant in 0..2u32 {
        assert!(log.iter().any(|e| matches!(e.event,
            grokforge_actors::Event::TrainingProgress { variant: v, step: 12, total_steps: 12, .. } if v == variant)));
    }
    let tail = events(&node, queued.id, 2).await;
    assert_eq!(
        tail.first().and_then(|e| e.seq),
        Some(3),
        "since=2 starts after seq 2"
    );

    let registered = models(&node).await;
    assert_eq!(registered.len(), 2);
    assert!(
        registered.iter().all(|m| m.job_id == Some(queued.id)),
        "lineage to the job"
    );
    assert_eq!(registered.iter().filter(|m| m.winner).count(), 1);
    let grokforge_actors::Event::TrainingCompleted {
        model_ids, winner, ..
    } = &log.last().unwrap().event
    else {
        unreachable!()
    };
    assert_eq!(model_ids.len(), 2);
    assert_eq!(*winner, registered.iter().find(|m| m.winner).map(|m| m.id));
    node.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cognate_job_completes_on_sqlite() {
    a_tiny_cognate_job_runs_to_completion_with_its_models_registered(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cognate_job_completes_on_postgres() {
    let schema = grokforge_storage::testing::TestDatabase::postgres(
        grokforge_storage::testing::DEFAULT_POSTGRES_URL,
    )
    .await
    .unwrap();
    let url = schema.postgres_url().unwrap().to_string();
    a_tiny_cognate_job_runs_to_completion_with_its_models_registered(Some(url)).await;
    schema.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_the_queue_and_the_concurrency_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), None, 1).await;
    let first = start(&node, tiny_spec(40, 1), 0).await;
    let low = start(&node, tiny_spec(8, 1), 0).await;
    let high = start(&node, tiny_spec(8, 1), 10).await;
    let mut running_at_once = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let all = node
            .directory
            .call::<TrainingServiceMessage, _, _>(
                names::TRAINING_SERVICE,
                |r| TrainingServiceMessage::ListJobs(JobFilter::default(), r),
                CALL,
            )
            .await
            .unwrap()
            .unwrap();
        running_at_once = running_at_once.max(
            all.iter()
                .filter(|j| j.status == JobStatus::Running)
                .count(),
        );
        if all.iter().all(|j| j.status == JobStatus::Completed) {
            let by_id = |id: Uuid| all.iter().find(|j| j.id == id).unwrap().clone();
            assert!(
                by_id(high.id).started_at < by_id(low.id).started_at,
                "priority 10 before priority 0"
            );
            assert!(by_id(first.id).started_at < by_id(high.id).started_at);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs did not finish: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running_at_once, 1, "max_concurrent_jobs = 1");
    node.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_with_a_checkpoint_and_a_queued_one_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), None, 1).await;
    let running = start(&node, tiny_spec(100_000, 1), 0).await;
    let queued = start(&node, tiny_spec(10, 1), 0).await;
    wait_for_status(
        &node,
        running.id,
        JobStatus::Running,
        Duration::from_secs(30),
    )
    .await;
    // Let it take some steps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !events(&node, running.id, 0)
        .await
        .iter()
        .any(|e| e.event.kind() == "training_progress")
    {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(cancel(&node, queued.id).await.status, JobStatus::Cancelled);
    cancel(&node, running.id).await;
    let stopped = wait_for_status(
        &node,
        running.id,
        JobStatus::Cancelled,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        stopped.last_checkpoint_path.is_some(),
        "the cancelled run wrote a checkpoint"
    );
    assert!(std::path::Path::new(stopped.last_checkpoint_path.as_ref().unwrap()).exists());
    assert_eq!(
        events(&node, running.id, 0)
            .await
            .last()
            .unwrap()
            .event
            .kind(),
        "training_cancelled"
    );

    let never = job(&node, queued.id).await;
    assert_eq!(never.status, JobStatus::Cancelled);
    assert_eq!(never.attempts, 0, "a cancelled queued job never started");
    node.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_without_a_recipe_is_refused_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), None, 1).await;
    let refused = node
        .directory
        .call::<TrainingServiceMessage, _, _>(
            names::TRAINING_SERVICE,
            |reply| TrainingServiceMessage::StartJob {
                phase: Phase::Evomerge,
                spec: Box::new(tiny_spec(4, 1)),
                priority: 0,
                reply,
            },
            CALL,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        refused.to_string().contains("cognate"),
        "names the phases that have a recipe: {refused}"
    );
    node.shutdown(Duration::from_secs(10)).await;
}
