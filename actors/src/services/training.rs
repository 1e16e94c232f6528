//! `TrainingService`: the durable job queue of a node and the workers that run its jobs.
//!
//! A job is a database row first (`queued`); the service claims jobs with a lease while it has
//! room (`training.max_concurrent_jobs`), runs each in a [`JobWorker`] on its own OS thread,
//! renews the leases on every tick, and turns the workers' reports into job events. Every job
//! event is appended to the job's event log — which assigns its sequence number — before it is
//! published, so a client that reconnects with `since=<seq>` can catch up from the log.
//!
//! At the end of a run the trained variants go to the registry through the ModelService
//! (`ModelSaved`, winner marked, handoff to the next phase recorded), then the job completes.
//!
//! Crash safety: the node reclaims the jobs it owned when it boots (they resume from their last
//! checkpoint); a job whose owner stopped renewing its lease is claimable by any node once the
//! lease expires. The worker's output directory is `<data_dir>/jobs/<job id>`, the same on
//! every attempt, so a resumed run finds its finished variants and its checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use grokforge_config::TrainingSettings;
use grokforge_storage::jobs::{JobEvent, JobFilter, JobRecord, JobRepository, JobStatus, NewJob};
use grokforge_storage::queue::{Finish, Renewal};
use grokforge_storage::{DatasetKind, DatasetRecord, DatasetRepository, DatasetRole, StorageError};
use grokforge_training_core::{Device, Phase, PhaseError, PhaseOutcome, PhaseStatus, TrainSpec};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Pingable;
use super::discovery::Membership;
use super::job_worker::{JobRun, JobWorker, RunFailure, VerifyFile, WorkerReport};
use super::model::ModelServiceMessage;
use crate::bus::Publisher;
use crate::directory::{ServiceDirectory, names};
use crate::events::{Event, Topic};
use crate::metrics::NodeMetrics;

pub struct TrainingService;

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error(transparent)]
    Phase(#[from] PhaseError),
    #[error("invalid training spec: {0}")]
    InvalidSpec(String),
    /// One setting of the spec is invalid; `field` names it as the request spells it.
    #[error("{detail}")]
    InvalidField { field: &'static str, detail: String },
    /// The spec names a file on the server (`text`, `tokenizer`, `out`, `resume`). Jobs that
    /// reach the queue come from the network; the node alone decides which files a job reads
    /// and writes.
    #[error(
        "`{field}` names a file on the server, which a request may not do; \
         upload a corpus with POST /datasets and refer to it with `dataset`: `ds:<id>` \
         (a tokenizer.json with `tokenizer_dataset`)"
    )]
    PathField { field: &'static str },
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// A phase's jobs and models at a glance.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseSummary {
    pub phase: Phase,
    pub has_recipe: bool,
    pub jobs_by_status: HashMap<String, usize>,
    pub latest_job: Option<JobRecord>,
}

/// The most events one [`TrainingServiceMessage::JobEvents`] answers: a replay of a long log
/// is read page by page, never whole into memory.
pub const MAX_EVENTS_PAGE: u32 = 10_000;

pub enum TrainingServiceMessage {
    Ping(RpcReplyPort<()>),
    StartJob {
        phase: Phase,
        spec: Box<TrainSpec>,
        priority: i64,
        reply: RpcReplyPort<Result<JobRecord, TrainingError>>,
    },
    GetJob(Uuid, RpcReplyPort<Result<JobRecord, TrainingError>>),
    ListJobs(
        JobFilter,
        RpcReplyPort<Result<Vec<JobRecord>, TrainingError>>,
    ),
    CancelJob(Uuid, RpcReplyPort<Result<JobRecord, TrainingError>>),
    /// A page of a job's event log: at most `limit` (capped at [`MAX_EVENTS_PAGE`]) events
    /// after `since`, oldest first. A shorter page is the end of the log as it is now.
    JobEvents {
        job_id: Uuid,
        since: u64,
        limit: u32,
        reply: RpcReplyPort<Result<Vec<JobEvent>, TrainingError>>,
    },
    PhaseStatus(Phase, RpcReplyPort<Result<PhaseSummary, TrainingError>>),
    /// Internal: renew leases, notice cancel requests, claim work.
    Tick,
    /// Internal: the registry save of a completed run finished (in a task of its own).
    Registered {
        job_id: Uuid,
        attempt: u32,
        result: Result<(Vec<Uuid>, Option<Uuid>), RunFailure>,
    },
    /// Internal: another node announced a cancel request on the bus.
    CancelAnnounced(Uuid),
    /// Internal: another node announced a job waiting in the queue.
    QueuedElsewhere,
    /// Internal: a worker's report.
    Worker {
        job_id: Uuid,
        attempt: u32,
        report: WorkerReport,
    },
    /// Test hook for supervision: the handler panics, as a bug in a handler would.
    #[doc(hidden)]
    Crash(String),
}

impl Pingable for TrainingServiceMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        TrainingServiceMessage::Ping(reply)
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub node_id: String,
    pub jobs: JobRepository,
    /// Uploaded datasets: resolved when a job is queued (they must exist) and when it starts
    /// (to the files the worker reads, whose hashes it checks).
    pub datasets: DatasetRepository,
    pub settings: TrainingSettings,
    pub device: Device,
    /// `<data_dir>/jobs`: one work directory per job.
    pub work_dir: PathBuf,
    /// Prepared-dataset cache.
    pub cache_dir: PathBuf,
    pub directory: ServiceDirectory,
    pub publisher: Publisher,
    pub metrics: NodeMetrics,
    /// How often leases are renewed and the queue is polled.
    pub tick: Duration,
    /// How long a shutdown waits for the workers to stop and write their checkpoints.
    pub stop_workers_within: Duration,
    /// The live nodes (for the rendezvous preference) and where this service says which
    /// jobs it runs (for discovery).
    pub membership: Membership,
}

struct RunningJob {
    worker: JobWorker,
    phase: Phase,
    /// The uploaded datasets it reads (id, name, hash), for its models' metadata.
    inputs: Option<serde_json::Value>,
    /// The latest step of the current variant heard of, from progress or checkpoints.
    last_step: u64,
}

/// What `finish` needs of a run whose worker ended.
struct EndedRun {
    phase: Phase,
    last_step: u64,
    inputs: Option<serde_json::Value>,
}

impl RunningJob {
    /// Moves `last_step` forward to `step`, counting the steps in between.
    fn advance_to(&mut self, step: u64, metrics: &NodeMetrics) {
        if step > self.last_step {
            metrics.training_steps_total.inc_by(step - self.last_step);
            self.last_step = step;
        }
    }
}

pub struct TrainingServiceState {
    args: Arguments,
    running: HashMap<Uuid, RunningJob>,
    /// Runs whose training ended and whose models are being saved to the registry, by job id
    /// (with the attempt). Their leases are renewed, and they hold their slot, until then.
    registering: HashMap<Uuid, u32>,
    /// Why the work directory could not be written at the last look, while it cannot.
    unwritable: Option<String>,
    ticker: Option<JoinHandle<()>>,
    /// Ends the task that listens to the other nodes on the bus (cancel requests, queued jobs).
    bus_listener: CancellationToken,
}

impl Actor for TrainingService {
    type Msg = TrainingServiceMessage;
    type State = TrainingServiceState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        std::fs::create_dir_all(&args.work_dir)
            .map_err(|e| format!("cannot create {}: {e}", args.work_dir.display()))?;
        // Whatever this node was running when it (or this actor) died goes back to the queue and
        // resumes from its checkpoint.
        let reclaimed = args.jobs.reclaim_owned(&args.node_id).await?;
        if !reclaimed.is_empty() {
            tracing::warn!(jobs = ?reclaimed, "reclaimed jobs interrupted on this node; they resume from their checkpoints");
        }
        let ticker = myself.send_interval(args.tick, || TrainingServiceMessage::Tick);
        let _ = myself.cast(TrainingServiceMessage::Tick);
        // A cancel recorded on another node reaches this one over the bus, so the worker stops
        // at its next step rather than at the next lease renewal; a job queued elsewhere is
        // claimed at once by a node with room.
        let bus_listener = CancellationToken::new();
        let (directory, stop, me) = (args.directory.clone(), bus_listener.clone(), myself.clone());
        let node_id = args.node_id.clone();
        tokio::spawn(async move {
            crate::bus::follow(
                &directory,
                "training_service/coordination",
                vec![Topic::Coordination],
                1024,
                &stop,
                |envelope| match envelope.event {
                    Event::CancelRequested { job_id } => {
                        let _ = me.cast(TrainingServiceMessage::CancelAnnounced(job_id));
                    }
                    Event::JobQueued { .. } if envelope.source_node != node_id => {
                        let _ = me.cast(TrainingServiceMessage::QueuedElsewhere);
                    }
                    _ => {}
                },
            )
            .await;
        });
        Ok(TrainingServiceState {
            args,
            running: HashMap::new(),
            registering: HashMap::new(),
            unwritable: None,
            ticker: Some(ticker),
            bus_listener,
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
        state.bus_listener.cancel();
        // Running jobs stop at their next step and write a checkpoint, then go back to the
        // queue at once (`interrupted`, no owner), so another node resumes them without
        // waiting for the lease to expire. A job whose thread did not stop in time keeps its
        // row `running` under this node: its lease expires, or the next boot reclaims it.
        let (ids, workers): (Vec<Uuid>, Vec<JobWorker>) = state
            .running
            .drain()
            .map(|(id, job)| (id, job.worker))
            .unzip();
        let deadline = state.args.stop_workers_within;
        let stopped = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .map(|worker| worker.stop(deadline))
                .collect::<Vec<bool>>()
        })
        .await
        .unwrap_or_default();
        for (id, stopped) in ids.into_iter().zip(stopped) {
            if !stopped {
                tracing::warn!(job_id = %id, "a training thread did not stop in time");
                continue;
            }
            let released = state
                .args
                .jobs
                .finish(
                    id,
                    &state.args.node_id,
                    Finish::Interrupted {
                        reason: "interrupted: its node shut down; resumed from its checkpoint"
                            .into(),
                    },
                )
                .await;
            match released {
                Ok(job) => {
                    tracing::info!(job_id = %id, status = %job.status.as_str(), "job released for another node");
                    if job.status == JobStatus::Interrupted {
                        state.args.publisher.publish(Event::JobQueued {
                            job_id: id,
                            phase: job.phase,
                        });
                    }
                }
                Err(error) => {
                    tracing::warn!(job_id = %id, %error, "cannot release the job; its lease will expire")
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TrainingServiceMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            TrainingServiceMessage::StartJob {
                phase,
                spec,
                priority,
                reply,
            } => {
                let result = state.start_job(phase, *spec, priority).await;
                let started = result.is_ok();
                let _ = reply.send(result);
                if started {
                    state.fill(&myself).await;
                }
            }
            // Reads of the job table are answered from tasks of their own: they need nothing of
            // this actor's state, and through its mailbox one slow query would hold up every
            // other read, lease renewal and claim behind it (500 concurrent REST clients made
            // the gateway's calls time out).
            TrainingServiceMessage::GetJob(id, reply) => {
                let jobs = state.args.jobs.clone();
                tokio::spawn(async move {
                    let job = jobs.find(id).await.map_err(TrainingError::from);
                    let _ =
                        reply.send(job.and_then(|job| job.ok_or(TrainingError::JobNotFound(id))));
                });
            }
            TrainingServiceMessage::ListJobs(filter, reply) => {
                let jobs = state.args.jobs.clone();
                tokio::spawn(async move {
                    let _ = reply.send(jobs.list(&filter).await.map_err(Into::into));
                });
            }
            TrainingServiceMessage::CancelJob(id, reply) => {
                let result = state.cancel(id).await;
                let _ = reply.send(result);
            }
            TrainingServiceMessage::JobEvents {
                job_id,
                since,
                limit,
                reply,
            } => {
                let jobs = state.args.jobs.clone();
                tokio::spawn(async move {
                    let result = match jobs.find(job_id).await {
                        Ok(Some(_)) => jobs
                            .events_since(job_id, since, limit.min(MAX_EVENTS_PAGE))
                            .await
                            .map_err(Into::into),
                        Ok(None) => Err(TrainingError::JobNotFound(job_id)),
                        Err(error) => Err(error.into()),
                    };
                    let _ = reply.send(result);
                });
            }
            TrainingServiceMessage::PhaseStatus(phase, reply) => {
                let _ = reply.send(state.phase_status(phase).await);
            }
            TrainingServiceMessage::Registered {
                job_id,
                attempt,
                result,
            } => {
                if state.registering.remove(&job_id) == Some(attempt) {
                    state.conclude(job_id, attempt, result).await;
                    state.fill(&myself).await;
                }
            }
            TrainingServiceMessage::QueuedElsewhere => state.fill(&myself).await,
            TrainingServiceMessage::CancelAnnounced(job_id) => {
                if let Some(job) = state.running.get(&job_id) {
                    tracing::info!(%job_id, "cancel requested elsewhere in the cluster; stopping");
                    job.worker.cancel();
                }
            }
            TrainingServiceMessage::Tick => {
                state.renew().await;
                state.fill(&myself).await;
            }
            TrainingServiceMessage::Worker {
                job_id,
                attempt,
                report,
            } => {
                state.on_report(&myself, job_id, attempt, report).await;
            }
            TrainingServiceMessage::Crash(why) => panic!("{why}"),
        }
        let running = &state.running;
        state.args.membership.running_jobs.send_if_modified(|jobs| {
            let mut now: Vec<Uuid> = running.keys().copied().collect();
            now.sort();
            let changed = *jobs != now;
            if changed {
                *jobs = now;
            }
            changed
        });
        Ok(())
    }
}

impl TrainingServiceState {
    async fn start_job(
        &self,
        phase: Phase,
        spec: TrainSpec,
        priority: i64,
    ) -> Result<JobRecord, TrainingError> {
        grokforge_training_core::recipe_for(phase)?;
        if let Some(field) = spec.path_fields_set().first() {
            return Err(TrainingError::PathField { field });
        }
        let mut spec = TrainSpec { phase, ..spec };
        // The node decides which device its jobs run on (where their files go is decided
        // when a worker starts: `<data_dir>/jobs/<id>`).
        spec.device = self.args.settings.device.clone();
        spec.validate().map_err(|e| match e {
            grokforge_training_core::Error::InvalidSetting { field, .. } => {
                TrainingError::InvalidField {
                    field,
                    detail: e.to_string(),
                }
            }
            other => TrainingError::InvalidSpec(other.to_string()),
        })?;
        let mut reads = Vec::new();
        if let Some(reference) = spec
            .dataset
            .as_deref()
            .filter(|_| spec.uploaded_dataset().is_some())
        {
            let corpus = self
                .uploaded(
                    reference,
                    "dataset",
                    &[DatasetKind::Text, DatasetKind::Jsonl],
                )
                .await?;
            reads.push((corpus.id, DatasetRole::Corpus, corpus.sha256));
        }
        if let Some(reference) = spec.tokenizer_dataset.as_deref() {
            let tokenizer = self
                .uploaded(reference, "tokenizer_dataset", &[DatasetKind::Tokenizer])
                .await?;
            reads.push((tokenizer.id, DatasetRole::Tokenizer, tokenizer.sha256));
        }
        let spec =
            serde_json::to_value(&spec).map_err(|e| TrainingError::InvalidSpec(e.to_string()))?;
        let job = self
            .args
            .jobs
            .insert_reading(
                NewJob {
                    phase: phase.to_string(),
                    spec,
                    priority,
                    max_attempts: self.args.settings.max_attempts,
                },
                &reads,
            )
            .await?;
        tracing::info!(job_id = %job.id, %phase, priority, "job queued");
        self.args.publisher.publish(Event::JobQueued {
            job_id: job.id,
            phase: job.phase.clone(),
        });
        self.args
            .metrics
            .jobs_total
            .with_label_values(&["queued"])
            .inc();
        Ok(job)
    }

    /// The uploaded dataset `reference` (`ds:<id>`) names, which must be one of `kinds`.
    async fn uploaded(
        &self,
        reference: &str,
        field: &'static str,
        kinds: &[DatasetKind],
    ) -> Result<DatasetRecord, TrainingError> {
        let refuse = |detail: String| TrainingError::InvalidField { field, detail };
        let id = super::datasets::parse_reference(reference)
            .ok_or_else(|| refuse(format!("`{field}`: {reference} is not `ds:<uuid>`")))?;
        let record = self.args.datasets.find(id).await?.ok_or_else(|| {
            refuse(format!(
                "`{field}`: no uploaded dataset {reference} (see GET /datasets)"
            ))
        })?;
        if !kinds.contains(&record.kind) {
            let wanted: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            return Err(refuse(format!(
                "`{field}`: {reference} is a {} dataset; expected {}",
                record.kind.as_str(),
                wanted.join(" or ")
            )));
        }
        Ok(record)
    }

    async fn get(&self, id: Uuid) -> Result<JobRecord, TrainingError> {
        self.args
            .jobs
            .find(id)
            .await?
            .ok_or(TrainingError::JobNotFound(id))
    }

    async fn cancel(&mut self, id: Uuid) -> Result<JobRecord, TrainingError> {
        self.get(id).await?;
        let job = self.args.jobs.request_cancel(id).await?;
        match self.running.get(&id) {
            Some(running) => running.worker.cancel(),
            // Running elsewhere: tell its node now.
            None if job.status == JobStatus::Running => {
                self.args
                    .publisher
                    .publish(Event::CancelRequested { job_id: id });
            }
            None => {}
        }
        if job.status == JobStatus::Cancelled && !self.running.contains_key(&id) {
            self.emit(
                id,
                Event::TrainingCancelled {
                    job_id: id,
                    step: 0,
                },
            )
            .await;
        }
        Ok(job)
    }

    async fn phase_status(&self, phase: Phase) -> Result<PhaseSummary, TrainingError> {
        let jobs = self
            .args
            .jobs
            .list(&JobFilter {
                phase: Some(phase.to_string()),
                ..JobFilter::default()
            })
            .await?;
        let mut jobs_by_status = HashMap::new();
        for job in &jobs {
            *jobs_by_status
                .entry(job.status.as_str().to_string())
                .or_insert(0) += 1;
        }
        Ok(PhaseSummary {
            phase,
            has_recipe: grokforge_training_core::recipe_for(phase).is_ok(),
            jobs_by_status,
            latest_job: jobs.into_iter().next(),
        })
    }

    fn lease_until(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + chrono::Duration::from_std(self.args.settings.lease_duration())
                .unwrap_or(chrono::Duration::seconds(30))
    }

    /// Renews the lease of every running job; stops a job whose lease was lost or whose cancel
    /// was requested (possibly by another node).
    async fn renew(&mut self) {
        let ids: Vec<Uuid> = self
            .running
            .keys()
            .chain(self.registering.keys())
            .copied()
            .collect();
        for id in ids {
            let renewal = self
                .args
                .jobs
                .renew_lease(id, &self.args.node_id, self.lease_until())
                .await;
            match renewal {
                Ok(Renewal::Renewed {
                    cancel_requested: true,
                }) => {
                    if let Some(job) = self.running.get(&id) {
                        job.worker.cancel();
                    }
                }
                Ok(Renewal::Renewed { .. }) => {}
                Ok(Renewal::LeaseLost) => {
                    tracing::warn!(job_id = %id, "lease lost to another node; stopping the local run");
                    if let Some(job) = self.running.remove(&id) {
                        job.worker.cancel();
                    }
                    self.registering.remove(&id);
                }
                Err(error) => tracing::warn!(job_id = %id, %error, "cannot renew lease"),
            }
        }
    }

    /// Claims queued jobs while there is room.
    /// Whether this node can write checkpoints now. A node whose work directory is full or
    /// read-only takes no job: every attempt it made would fail at its first checkpoint and use
    /// up the job's attempts in seconds. It looks again at every tick; the other nodes of a
    /// cluster take the work meanwhile. (`/health` names the cause: the `file_system` check.)
    async fn can_write_checkpoints(&mut self) -> bool {
        let dir = self.args.work_dir.clone();
        let probe =
            tokio::task::spawn_blocking(move || grokforge_storage::fs::probe_writable(&dir))
                .await
                .map_err(|e| e.to_string())
                .and_then(|result| result.map_err(|e| e.to_string()));
        match (probe, self.unwritable.is_some()) {
            (Ok(()), false) => true,
            (Ok(()), true) => {
                self.unwritable = None;
                tracing::info!(dir = %self.args.work_dir.display(), "the work directory is writable again: taking jobs");
                true
            }
            (Err(reason), was) => {
                if !was {
                    tracing::warn!(%reason, "the work directory cannot be written: taking no job until it can");
                }
                self.unwritable = Some(reason);
                false
            }
        }
    }

    async fn fill(&mut self, myself: &ActorRef<TrainingServiceMessage>) {
        if self.running.len() + self.registering.len() < self.args.settings.max_concurrent_jobs
            && !self.can_write_checkpoints().await
        {
            return;
        }
        while self.running.len() + self.registering.len() < self.args.settings.max_concurrent_jobs {
            let live = self.args.membership.live.borrow().clone();
            let claimed = self
                .args
                .jobs
                .claim_next(&self.args.node_id, &live, self.lease_until())
                .await;
            let job = match claimed {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim a job");
                    return;
                }
            };
            if let Err(error) = self.launch(myself, &job).await {
                tracing::error!(job_id = %job.id, %error, "cannot start the job's worker");
                let finished = self
                    .args
                    .jobs
                    .finish(
                        job.id,
                        &self.args.node_id,
                        Finish::Failed {
                            error: error.clone(),
                        },
                    )
                    .await;
                self.emit(
                    job.id,
                    Event::TrainingFailed {
                        job_id: job.id,
                        attempt: job.attempts,
                        error,
                        will_retry: finished.is_ok_and(|job| job.status != JobStatus::Failed),
                        divergence: None,
                    },
                )
                .await;
            }
        }
    }

    async fn launch(
        &mut self,
        myself: &ActorRef<TrainingServiceMessage>,
        job: &JobRecord,
    ) -> Result<(), String> {
        let phase: Phase = job.phase.parse().map_err(|e: PhaseError| e.to_string())?;
        let mut spec: TrainSpec = serde_json::from_value(job.spec.clone())
            .map_err(|e| format!("stored spec is unreadable: {e}"))?;
        let out = self.args.work_dir.join(job.id.to_string());
        spec.out = Some(out);
        spec.resume = job
            .last_checkpoint_path
            .as_ref()
            .map(PathBuf::from)
            .filter(|p| p.exists());
        // The node checkpoints at least every `checkpoint_every_steps` so a crash loses little;
        // a job may ask for more often, and 0 (the spec's "only at the end") means the node's.
        let node_every = self.args.settings.checkpoint_every_steps.max(1);
        spec.checkpoint_every = match spec.checkpoint_every {
            0 => node_every,
            asked => asked.min(node_every),
        };
        let (verify, inputs) = self.resolve_uploads(job.id, &mut spec).await?;
        let resumed_from = spec.resume.clone();
        let attempt = job.attempts;
        let job_id = job.id;
        let reply_to = myself.clone();
        let worker = JobWorker::spawn(
            JobRun {
                job_id,
                attempt,
                phase,
                spec,
                device: self.args.device.clone(),
                cache_dir: Some(self.args.cache_dir.clone()),
                progress_per_second: self.args.settings.progress_events_per_second,
                stop_on_divergence: self.args.settings.stop_on_divergence,
                verify,
            },
            move |report| {
                let _ = reply_to.cast(TrainingServiceMessage::Worker {
                    job_id,
                    attempt,
                    report,
                });
            },
        )
        .map_err(|e| format!("cannot spawn the training thread: {e}"))?;
        tracing::info!(%job_id, attempt, resumed_from = ?resumed_from, "job started");
        self.running.insert(
            job_id,
            RunningJob {
                worker,
                phase,
                inputs,
                last_step: 0,
            },
        );
        self.args
            .metrics
            .jobs_total
            .with_label_values(&["running"])
            .inc();
        self.emit(
            job_id,
            Event::TrainingStarted {
                job_id,
                phase: phase.to_string(),
                attempt,
            },
        )
        .await;
        Ok(())
    }

    /// Points a job's spec at the files of the uploaded datasets it reads (server paths, set
    /// here and never taken from the request), and returns what the worker must check before
    /// training — each file against the hash it had when the job was queued, so a resumed job
    /// never continues on different bytes — and the datasets for the models' metadata.
    async fn resolve_uploads(
        &self,
        job_id: Uuid,
        spec: &mut TrainSpec,
    ) -> Result<(Vec<VerifyFile>, Option<serde_json::Value>), String> {
        if spec.uploaded_dataset().is_none() {
            return Ok((Vec::new(), None));
        }
        let links = self
            .args
            .datasets
            .of_job(job_id)
            .await
            .map_err(|e| format!("reading the job's datasets: {e}"))?;
        let mut verify = Vec::new();
        let mut inputs = serde_json::Map::new();
        for link in &links {
            let record = self
                .args
                .datasets
                .find(link.dataset_id)
                .await
                .map_err(|e| format!("reading dataset ds:{}: {e}", link.dataset_id))?
                .ok_or_else(|| format!("dataset ds:{} was deleted", link.dataset_id))?;
            let path = self.args.datasets.path_of(&record);
            match link.role {
                DatasetRole::Corpus => {
                    spec.dataset = None;
                    spec.text = Some(path.clone());
                    if record.kind == DatasetKind::Jsonl {
                        spec.text_field = record.text_field.clone();
                    }
                }
                DatasetRole::Tokenizer => {
                    spec.tokenizer_dataset = None;
                    spec.tokenizer = Some(path.clone());
                }
            }
            inputs.insert(
                link.role.as_str().to_string(),
                serde_json::json!({
                    "id": record.reference(),
                    "name": record.name,
                    "kind": record.kind,
                    "sha256": link.sha256,
                }),
            );
            verify.push(VerifyFile {
                label: record.reference(),
                path,
                sha256: link.sha256.clone(),
            });
        }
        if spec.dataset.is_some() {
            return Err("the job's uploaded dataset is not recorded with it".into());
        }
        Ok((verify, Some(serde_json::Value::Object(inputs))))
    }

    /// Appends the event to the job's log (which numbers it), then publishes it.
    async fn emit(&self, job_id: Uuid, event: Event) {
        let envelope = self.args.publisher.envelope(event);
        let logged = self
            .args
            .jobs
            .append_event(job_id, |seq| {
                serde_json::to_value(envelope.clone().with_seq(seq))
                    .unwrap_or(serde_json::Value::Null)
            })
            .await;
        match logged {
            Ok(logged) => self
                .args
                .publisher
                .publish_envelope(envelope.with_seq(logged.seq)),
            Err(error) => {
                // Never publish what the log does not have: a reconnecting client could not
                // replay it.
                tracing::error!(%job_id, %error, "cannot append job event; not publishing it");
                self.args
                    .metrics
                    .events_dropped_total
                    .with_label_values(&["event_log_unavailable"])
                    .inc();
            }
        }
    }

    async fn on_report(
        &mut self,
        myself: &ActorRef<TrainingServiceMessage>,
        job_id: Uuid,
        attempt: u32,
        report: WorkerReport,
    ) {
        // Reports of a run we no longer own (lease lost, stale attempt) are ignored.
        let Some(running) = self
            .running
            .get_mut(&job_id)
            .filter(|r| r.worker.attempt == attempt)
        else {
            return;
        };
        let node = self.args.node_id.clone();
        match report {
            WorkerReport::VariantStarted {
                variant,
                start_step,
            } => {
                tracing::info!(%job_id, variant, start_step, "variant started");
                // Steps are counted per variant: the next variant starts over from its own
                // first step (or from its checkpoint when resumed).
                running.last_step = start_step;
            }
            WorkerReport::Progress(p) => {
                running.advance_to(p.step, &self.args.metrics);
                let metrics = &self.args.metrics;
                metrics.training_loss.set(p.loss);
                metrics.training_accuracy.set(p.accuracy);
                if p.steps_per_second > 0.0 {
                    metrics
                        .training_step_duration_seconds
                        .observe(1.0 / p.steps_per_second);
                }
                let event = Event::TrainingProgress {
                    job_id,
                    variant: p.variant as u32,
                    step: p.step,
                    total_steps: p.total_steps,
                    loss: p.loss,
                    accuracy: Some(p.accuracy),
                    val_loss: p.val_loss,
                    val_accuracy: p.val_accuracy,
                    learning_rate: p.learning_rate,
                    steps_per_second: p.steps_per_second,
                };
                if let Ok(progress) = serde_json::to_value(&event) {
                    let _ = self
                        .args
                        .jobs
                        .record_progress(job_id, &node, &progress["data"])
                        .await;
                }
                self.emit(job_id, event).await;
            }
            WorkerReport::Checkpoint {
                variant,
                step,
                path,
            } => {
                // Progress reports are rate-limited; a checkpoint (the one written on cancel in
                // particular) may be the latest word on where the run is.
                running.advance_to(step, &self.args.metrics);
                self.args.metrics.checkpoints_written_total.inc();
                let _ = self
                    .args
                    .jobs
                    .record_checkpoint(job_id, &node, &path.to_string_lossy())
                    .await;
                let sha256 = tokio::task::spawn_blocking(move || file_sha256(&path))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                self.emit(
                    job_id,
                    Event::CheckpointSaved {
                        job_id,
                        variant: variant as u32,
                        step,
                        sha256,
                    },
                )
                .await;
            }
            WorkerReport::DatasetPrepared(cache) => {
                let Some(cache) = cache else { return };
                if cache.hit {
                    self.args.metrics.dataset_cache_hits_total.inc();
                    tracing::info!(%job_id, key = %cache.key, "prepared data from the cache");
                } else {
                    self.args.metrics.dataset_cache_misses_total.inc();
                    tracing::info!(%job_id, key = %cache.key, "data prepared and cached");
                    // A new entry: bound the cache now rather than at the next timer.
                    self.args.directory.cast(
                        names::DATASET_SERVICE,
                        super::datasets::DatasetServiceMessage::EvictCache,
                    );
                }
            }
            WorkerReport::VariantEnded(result) => {
                tracing::info!(%job_id, variant = result.index, steps = result.steps, stop = ?result.stop, "variant ended");
            }
            WorkerReport::Finished(outcome) => {
                let Some(running) = self.running.remove(&job_id) else {
                    return;
                };
                let ended = EndedRun {
                    phase: running.phase,
                    last_step: running.last_step,
                    inputs: running.inputs.clone(),
                };
                // The thread has returned its outcome; reap it off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    running.worker.stop(Duration::from_secs(5))
                })
                .await;
                self.finish(myself, job_id, attempt, ended, outcome).await;
                self.fill(myself).await;
            }
        }
    }

    async fn finish(
        &mut self,
        myself: &ActorRef<TrainingServiceMessage>,
        job_id: Uuid,
        attempt: u32,
        ended: EndedRun,
        outcome: Result<Box<PhaseOutcome>, RunFailure>,
    ) {
        let EndedRun {
            phase,
            last_step,
            inputs,
        } = ended;
        let node = self.args.node_id.clone();
        let outcome = match outcome {
            Ok(outcome) => match outcome.status {
                PhaseStatus::Completed => {
                    grokforge_config::crashpoint::reached(grokforge_config::crashpoint::HANDOFF);
                    // Saving to the registry waits on the ModelService (and its database)
                    // for as long as it takes: in a task, so this mailbox keeps renewing the
                    // leases of the other jobs meanwhile.
                    self.registering.insert(job_id, attempt);
                    let directory = self.args.directory.clone();
                    let myself = myself.clone();
                    tokio::spawn(async move {
                        let result = register_models(&directory, job_id, phase, inputs, &outcome)
                            .await
                            .map_err(RunFailure::retryable);
                        let _ = myself.cast(TrainingServiceMessage::Registered {
                            job_id,
                            attempt,
                            result,
                        });
                    });
                    return;
                }
                PhaseStatus::Cancelled { .. } => {
                    self.emit(
                        job_id,
                        Event::TrainingCancelled {
                            job_id,
                            step: last_step,
                        },
                    )
                    .await;
                    let _ = self
                        .args
                        .jobs
                        .finish(job_id, &node, Finish::Cancelled)
                        .await;
                    self.args
                        .metrics
                        .jobs_total
                        .with_label_values(&["cancelled"])
                        .inc();
                    return;
                }
            },
            Err(error) => Err(error),
        };
        self.conclude(job_id, attempt, outcome).await;
    }

    /// Records how a run ended: completed with its models, or failed.
    async fn conclude(
        &mut self,
        job_id: Uuid,
        attempt: u32,
        outcome: Result<(Vec<Uuid>, Option<Uuid>), RunFailure>,
    ) {
        let node = self.args.node_id.clone();
        match outcome {
            Ok((model_ids, winner)) => {
                self.emit(
                    job_id,
                    Event::TrainingCompleted {
                        job_id,
                        model_ids,
                        winner,
                    },
                )
                .await;
                let _ = self
                    .args
                    .jobs
                    .finish(job_id, &node, Finish::Completed)
                    .await;
                self.args
                    .metrics
                    .jobs_total
                    .with_label_values(&["completed"])
                    .inc();
                tracing::info!(%job_id, "job completed");
            }
            Err(RunFailure {
                message,
                retryable,
                divergence,
            }) => {
                tracing::warn!(%job_id, attempt, error = %message, retryable, "job attempt failed");
                // Whether another attempt follows, so that the event says so.
                let will_retry =
                    retryable
                        && self.args.jobs.get(job_id).await.is_ok_and(|job| {
                            job.attempts < job.max_attempts && !job.cancel_requested
                        });
                self.emit(
                    job_id,
                    Event::TrainingFailed {
                        job_id,
                        attempt,
                        error: message.clone(),
                        will_retry,
                        divergence,
                    },
                )
                .await;
                let finish = if retryable {
                    Finish::Failed { error: message }
                } else {
                    Finish::FailedForGood { error: message }
                };
                match self.args.jobs.finish(job_id, &node, finish).await {
                    Ok(job) if job.status == JobStatus::Failed => {
                        self.args
                            .metrics
                            .jobs_total
                            .with_label_values(&["failed"])
                            .inc();
                    }
                    Ok(_) => tracing::info!(%job_id, "job requeued for another attempt"),
                    Err(error) => tracing::error!(%job_id, %error, "cannot record the failure"),
                }
            }
        }
        if self.running.is_empty() && self.registering.is_empty() {
            // The heap policy keeps freed memory for the next training step; with no run left
            // it only holds memory, in every arena the runs touched.
            tokio::task::spawn_blocking(|| {
                if grokforge_training_core::allocator::release_freed_memory() {
                    tracing::debug!("no job running: freed heap memory returned to the kernel");
                }
            });
        }
    }
}

/// Saves a completed run's variants to the registry through the ModelService, marks the
/// winner and records the handoff to the next phase.
async fn register_models(
    directory: &ServiceDirectory,
    job_id: Uuid,
    phase: Phase,
    inputs: Option<serde_json::Value>,
    outcome: &PhaseOutcome,
) -> Result<(Vec<Uuid>, Option<Uuid>), String> {
    let timeout = Duration::from_secs(60);
    let mut model_ids = Vec::new();
    let mut winner = None;
    for variant in &outcome.variants {
        // An earlier attempt that died between two saves registered some variants already:
        // those are not saved twice (the registry would give them a second version).
        let registered = directory
            .call::<ModelServiceMessage, _, _>(
                names::MODEL_SERVICE,
                |reply| {
                    ModelServiceMessage::List(
                        grokforge_storage::models::ModelFilter {
                            name: Some(variant.name.clone()),
                            ..Default::default()
                        },
                        reply,
                    )
                },
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("listing {}: {e}", variant.name))?
            .iter()
            .find(|model| model.job_id == Some(job_id))
            .map(|model| model.id);
        if let Some(id) = registered {
            tracing::info!(%job_id, model_id = %id, name = %variant.name, "variant registered by an earlier attempt");
            if variant.winner {
                winner = Some(id);
            }
            model_ids.push(id);
            continue;
        }
        let dir = variant
            .dir
            .clone()
            .ok_or("the recipe kept no files for a variant")?;
        let files = tokio::task::spawn_blocking(move || read_variant_files(&dir))
            .await
            .map_err(|e| e.to_string())??;
        let model = grokforge_storage::models::NewModel {
            name: variant.name.clone(),
            phase: phase.to_string(),
            parent_ids: Vec::new(),
            job_id: Some(job_id),
            format: "burn-record".into(),
            config: {
                let mut config =
                    serde_json::to_value(&variant.config).map_err(|e| e.to_string())?;
                // The uploaded datasets it was trained on, by id and hash (the run config
                // itself only has the node's path of the file).
                if let (Some(inputs), Some(object)) = (&inputs, config.as_object_mut()) {
                    object.insert("dataset".into(), inputs.clone());
                }
                config
            },
            metrics: serde_json::json!({
                "steps": variant.steps,
                "num_params": variant.num_params,
                "final_eval": variant.final_eval,
                "reached_target_at_step": variant.history.reached_target_at_step,
            }),
            tags: vec![phase.to_string()],
            files,
        };
        let saved = directory
            .call::<ModelServiceMessage, _, _>(
                names::MODEL_SERVICE,
                |reply| ModelServiceMessage::Save(Box::new(model), reply),
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("saving {}: {e}", variant.name))?;
        if variant.winner {
            winner = Some(saved.id);
        }
        model_ids.push(saved.id);
    }
    if let Some(winner) = winner {
        directory
            .call::<ModelServiceMessage, _, _>(
                names::MODEL_SERVICE,
                |reply| ModelServiceMessage::MarkWinner(winner, reply),
                timeout,
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("marking the winner: {e}"))?;
        if let Some(next) = next_phase(phase) {
            directory
                .call::<ModelServiceMessage, _, _>(
                    names::MODEL_SERVICE,
                    |reply| ModelServiceMessage::Handoff {
                        from_phase: phase.to_string(),
                        to_phase: next.to_string(),
                        model_ids: vec![winner],
                        reply,
                    },
                    timeout,
                )
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("recording the handoff: {e}"))?;
        }
    }
    Ok((model_ids, winner))
}

/// The phase that takes a phase's models, in the Agent Forge pipeline's order.
fn next_phase(phase: Phase) -> Option<Phase> {
    let index = Phase::ALL.iter().position(|p| *p == phase)?;
    Phase::ALL.get(index + 1).copied()
}

/// The files of a trained variant, primary (the Burn record) first.
fn read_variant_files(
    dir: &std::path::Path,
) -> Result<Vec<grokforge_storage::models::NewModelFile>, String> {
    let mut files = Vec::new();
    for name in [
        "model.bpk",
        "model.json",
        "run.json",
        "metrics.json",
        "model.safetensors",
    ] {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => files.push(grokforge_storage::models::NewModelFile::new(name, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "model.safetensors" => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(files)
}

fn file_sha256(path: &std::path::Path) -> Option<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).ok()?;
    Some(format!("{:x}", sha2::Sha256::digest(&bytes)))
}
