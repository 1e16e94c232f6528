//! `MonitoringService`: runs the node's health checks, keeps the latest report, and announces
//! every change of a component's state on the bus (`ServiceHealthChanged`).
//!
//! Checks run in a task of their own, never in the handler: a check waits up to its deadline
//! on a database or an actor, and the mailbox must stay responsive meanwhile. The tasks are
//! tied to a cancellation token that `post_stop` cancels.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use grokforge_storage::Database;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::sync::CancellationToken;

use super::Pingable;
use super::discovery::DiscoveryMessage;
use super::model::ModelServiceMessage;
use super::training::TrainingServiceMessage;
use super::websocket::WebSocketHubMessage;
use crate::bus::{EventBusMessage, Publisher};
use crate::directory::{ServiceDirectory, names};
use crate::events::{Event, HealthState};
use crate::health::{Check, HealthReport, aggregate};
use crate::metrics::NodeMetrics;
use crate::services::redis_bridge::BridgeShared;

/// Why a check did not pass: unhealthy, unless it says it is only degraded.
pub struct CheckFailure {
    state: HealthState,
    reason: String,
}

impl CheckFailure {
    pub fn degraded(reason: impl Into<String>) -> CheckFailure {
        CheckFailure {
            state: HealthState::Degraded,
            reason: reason.into(),
        }
    }
}

impl From<String> for CheckFailure {
    fn from(reason: String) -> CheckFailure {
        CheckFailure {
            state: HealthState::Unhealthy,
            reason,
        }
    }
}

/// Everything the checks need, cheap to clone into a check task.
#[derive(Clone)]
pub struct HealthProbe {
    pub node_id: String,
    pub directory: ServiceDirectory,
    pub database: Database,
    pub data_dir: PathBuf,
    /// The Redis bridge's status, in a cluster.
    pub bridge: Option<BridgeShared>,
    /// Set by the gateway while it accepts connections.
    pub api_listening: Arc<AtomicBool>,
    pub timeout: Duration,
}

impl HealthProbe {
    /// Runs every check concurrently, each bounded by `timeout`, and aggregates them.
    pub async fn run(&self) -> HealthReport {
        let checks = join_all([
            self.timed(
                "training",
                self.ping::<TrainingServiceMessage>(names::TRAINING_SERVICE),
            ),
            self.timed(
                "model",
                self.ping::<ModelServiceMessage>(names::MODEL_SERVICE),
            ),
            self.timed(
                "websocket",
                self.ping::<WebSocketHubMessage>(names::WEBSOCKET_HUB),
            ),
            self.timed("monitoring", async { Ok::<(), String>(()) }),
            self.timed("discovery", self.ping::<DiscoveryMessage>(names::DISCOVERY)),
            self.timed("api", self.api()),
            self.timed("database", self.database()),
            self.timed("file_system", self.file_system()),
            self.timed("broker", self.broker()),
        ])
        .await;
        aggregate(
            &self.node_id,
            &checks.into_iter().collect::<BTreeMap<_, _>>(),
        )
    }

    fn timed<'a, E: Into<CheckFailure>>(
        &'a self,
        component: &'static str,
        check: impl Future<Output = Result<(), E>> + Send + 'a,
    ) -> BoxFuture<'a, (String, Check)> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.timeout, check).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            let check = match outcome {
                Ok(Ok(())) => Check::healthy(latency_ms),
                Ok(Err(failure)) => {
                    let failure = failure.into();
                    Check {
                        state: failure.state,
                        reason: Some(failure.reason),
                        latency_ms,
                    }
                }
                Err(_) => Check::unhealthy(
                    format!("no answer within {} ms", self.timeout.as_millis()),
                    latency_ms,
                ),
            };
            (component.to_string(), check)
        })
    }

    async fn ping<M: Pingable>(&self, service: &'static str) -> Result<(), String> {
        self.directory
            .call::<M, (), _>(service, M::ping, self.timeout)
            .await
            .map_err(|e| e.to_string())
    }

    async fn api(&self) -> Result<(), String> {
        if self.api_listening.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("gateway is not accepting connections".into())
        }
    }

    async fn database(&self) -> Result<(), String> {
        self.database.ping().await.map_err(|e| e.to_string())
    }

    async fn file_system(&self) -> Result<(), String> {
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || grokforge_storage::fs::probe_writable(&dir))
            .await
            .map_err(|e| format!("probe task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// The in-process bus must answer. In a cluster the Redis bridge must be subscribed and
    /// hearing its own heartbeat back: while it is not, the node works alone, degraded.
    async fn broker(&self) -> Result<(), CheckFailure> {
        self.directory
            .call::<EventBusMessage, _, _>(names::EVENT_BUS, EventBusMessage::Ping, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let Some(bridge) = &self.bridge else {
            return Ok(());
        };
        let status = bridge.status();
        if status.healthy {
            return Ok(());
        }
        Err(CheckFailure::degraded(format!(
            "{}; working alone, {} envelope(s) waiting in the outbox",
            status
                .reason
                .as_deref()
                .unwrap_or("redis bridge not connected"),
            status.outbox
        )))
    }
}

pub struct MonitoringService;

pub enum MonitoringServiceMessage {
    Ping(RpcReplyPort<()>),
    /// Run the checks now and reply with the fresh report.
    CheckNow(RpcReplyPort<HealthReport>),
    /// The latest report, without checking (`None` before the first round finished).
    Latest(RpcReplyPort<Option<HealthReport>>),
    /// Internal: time for the periodic round.
    Tick,
    /// Internal: a finished round.
    Report(Box<HealthReport>),
}

impl Pingable for MonitoringServiceMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        MonitoringServiceMessage::Ping(reply)
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub probe: HealthProbe,
    pub interval: Duration,
    pub publisher: Publisher,
    pub metrics: NodeMetrics,
}

pub struct MonitoringServiceState {
    arguments: Arguments,
    latest: Option<HealthReport>,
    /// Last state of each component, to announce changes only.
    states: BTreeMap<String, HealthState>,
    ticker: Option<JoinHandle<()>>,
    tasks: CancellationToken,
}

impl MonitoringServiceState {
    fn spawn_round(
        &self,
        myself: &ActorRef<MonitoringServiceMessage>,
        reply: Option<RpcReplyPort<HealthReport>>,
    ) {
        let probe = self.arguments.probe.clone();
        let myself = myself.clone();
        let cancelled = self.tasks.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancelled.cancelled() => {}
                report = probe.run() => {
                    if let Some(reply) = reply {
                        let _ = reply.send(report.clone());
                    }
                    let _ = myself.cast(MonitoringServiceMessage::Report(Box::new(report)));
                }
            }
        });
    }

    fn record(&mut self, report: HealthReport) {
        let components = report.services.iter().chain(report.dependencies.iter());
        for (name, health) in components {
            self.arguments
                .metrics
                .set_service_health(name, health.status);
            let previous = self.states.insert(name.clone(), health.status);
            if previous != Some(health.status) {
                if previous.is_some() || health.status != HealthState::Healthy {
                    tracing::info!(
                        component = %name,
                        from = previous.map(HealthState::as_str),
                        to = health.status.as_str(),
                        reason = health.reason.as_deref(),
                        "health changed"
                    );
                }
                self.arguments
                    .publisher
                    .publish(Event::ServiceHealthChanged {
                        service: name.clone(),
                        from: previous,
                        to: health.status,
                        reason: health.reason.clone(),
                    });
            }
        }
        self.latest = Some(report);
    }
}

impl Actor for MonitoringService {
    type Msg = MonitoringServiceMessage;
    type State = MonitoringServiceState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        arguments: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = myself.send_interval(arguments.interval, || MonitoringServiceMessage::Tick);
        Ok(MonitoringServiceState {
            arguments,
            latest: None,
            states: BTreeMap::new(),
            ticker: Some(ticker),
            tasks: CancellationToken::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.cancel();
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
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
            MonitoringServiceMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            MonitoringServiceMessage::CheckNow(reply) => state.spawn_round(&myself, Some(reply)),
            MonitoringServiceMessage::Tick => state.spawn_round(&myself, None),
            MonitoringServiceMessage::Latest(reply) => {
                let _ = reply.send(state.latest.clone());
            }
            MonitoringServiceMessage::Report(report) => state.record(*report),
        }
        Ok(())
    }
}
