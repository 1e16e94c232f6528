//! `MonitoringService`: runs the node's health checks, keeps the latest report, and announces
//! every change of a component's state on the bus (`ServiceHealthChanged`). It also follows
//! every event on the bus (every node's, through the bridge) into its [`Aggregates`] (per job:
//! last progress, step, loss, rate; events by type) and its [`AlertEngine`], evaluates
//! the alert rules after each round of checks, and delivers what fires and resolves:
//! `alert_raised` / `alert_resolved` on `admin_alerts`, `grokforge_alerts_firing`, webhooks.
//!
//! In a cluster every node evaluates every rule, so that each knows the cluster's alerts, but
//! only the holder of the monitoring lease (a Redis key with a TTL, renewed every second)
//! announces the cluster-wide ones (jobs, nodes): one incident is one alert, not one per node.
//! When the holder dies another node takes the lease within its TTL; its engine has seen the
//! same events, so what is firing stays firing and is not announced again.
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
use crate::aggregate::{Aggregates, MonitoringSummary};
use crate::alerts::{Alert, AlertEngine, Inputs, Rule, RuleKind, Transition};
use crate::bus::{EventBusMessage, Publisher};
use crate::directory::{CallError, ServiceDirectory, names};
use crate::events::EventEnvelope;
use crate::events::{Event, HealthState};
use crate::health::{Check, HealthReport, aggregate};
use crate::metrics::NodeMetrics;
use crate::services::redis_bridge::BridgeShared;
use crate::webhooks::Webhook;

/// Why a check did not pass: unhealthy, unless it says it is only degraded or slow.
pub struct CheckFailure {
    state: HealthState,
    reason: String,
    /// No answer in time: degraded until it happens [`SLOW_ROUNDS_UNHEALTHY`] rounds in a row.
    slow: bool,
}

impl CheckFailure {
    pub fn degraded(reason: impl Into<String>) -> CheckFailure {
        CheckFailure {
            state: HealthState::Degraded,
            reason: reason.into(),
            slow: false,
        }
    }

    fn slow(reason: impl Into<String>) -> CheckFailure {
        CheckFailure {
            state: HealthState::Degraded,
            reason: reason.into(),
            slow: true,
        }
    }
}

impl From<String> for CheckFailure {
    fn from(reason: String) -> CheckFailure {
        CheckFailure {
            state: HealthState::Unhealthy,
            reason,
            slow: false,
        }
    }
}

impl From<CallError> for CheckFailure {
    fn from(error: CallError) -> CheckFailure {
        match error {
            CallError::Timeout { .. } => CheckFailure::slow(error.to_string()),
            CallError::Unavailable { .. } | CallError::Dropped { .. } => error.to_string().into(),
        }
    }
}

/// Rounds in a row a component may be too slow to answer before it counts as unhealthy. One
/// slow answer is a busy node (a saturated CPU, a burst of requests): degraded, still serving.
/// A service that stays silent is hung.
pub const SLOW_ROUNDS_UNHEALTHY: u32 = 3;

/// How many rounds in a row each component has been too slow, shared by every round: the
/// periodic ones and the fresh ones (`?fresh=true`, `/ready`) alike.
#[derive(Clone, Default)]
pub struct SlowStreaks(Arc<std::sync::Mutex<BTreeMap<&'static str, u32>>>);

impl SlowStreaks {
    /// Notes whether `component` was slow this round; the streak it is on.
    fn note(&self, component: &'static str, slow: bool) -> u32 {
        let mut streaks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slow {
            let streak = streaks.entry(component).or_default();
            *streak += 1;
            *streak
        } else {
            streaks.remove(component);
            0
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
    /// Where checkpoints, models and exports go (the data dir's `artifacts`, or a shared
    /// directory of the cluster's): probed as well when it is elsewhere.
    pub artifacts_dir: PathBuf,
    /// The Redis bridge's status, in a cluster.
    pub bridge: Option<BridgeShared>,
    /// Set by the gateway while it accepts connections.
    pub api_listening: Arc<AtomicBool>,
    pub timeout: Duration,
    pub slow: SlowStreaks,
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
            let outcome = match tokio::time::timeout(self.timeout, check).await {
                Ok(outcome) => outcome.map_err(Into::into),
                Err(_) => Err(CheckFailure::slow(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))),
            };
            let latency_ms = started.elapsed().as_millis() as u64;
            let streak = self
                .slow
                .note(component, outcome.as_ref().is_err_and(|f| f.slow));
            let check = judge(outcome, streak, latency_ms);
            (component.to_string(), check)
        })
    }

    async fn ping<M: Pingable>(&self, service: &'static str) -> Result<(), CallError> {
        self.directory
            .call::<M, (), _>(service, M::ping, self.timeout)
            .await
    }

    async fn api(&self) -> Result<(), String> {
        if self.api_listening.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("gateway is not accepting connections".into())
        }
    }

    async fn database(&self) -> Result<(), String> {
        self.database.check().await.map_err(|e| e.to_string())
    }

    /// The data directory and the artifacts directory each take a small synced write.
    async fn file_system(&self) -> Result<(), String> {
        let data = self.data_dir.clone();
        let artifacts = self.artifacts_dir.clone();
        tokio::task::spawn_blocking(move || {
            grokforge_storage::fs::probe_writable(&data)
                .map_err(|e| format!("data directory {e}"))?;
            if artifacts != data {
                grokforge_storage::fs::probe_writable(&artifacts)
                    .map_err(|e| format!("artifacts directory {e}"))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("probe task failed: {e}"))?
    }

    /// The in-process bus must answer. In a cluster the Redis bridge must be subscribed and
    /// hearing its own heartbeat back: while it is not, the node works alone, degraded.
    async fn broker(&self) -> Result<(), CheckFailure> {
        self.directory
            .call::<EventBusMessage, _, _>(names::EVENT_BUS, EventBusMessage::Ping, self.timeout)
            .await?;
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

/// A check's result: a slow answer is degraded until its streak reaches
/// [`SLOW_ROUNDS_UNHEALTHY`].
fn judge(outcome: Result<(), CheckFailure>, streak: u32, latency_ms: u64) -> Check {
    match outcome {
        Ok(()) => Check::healthy(latency_ms),
        Err(failure) if failure.slow => Check {
            state: if streak >= SLOW_ROUNDS_UNHEALTHY {
                HealthState::Unhealthy
            } else {
                HealthState::Degraded
            },
            reason: Some(format!(
                "{} ({streak} round(s) in a row; unhealthy at {SLOW_ROUNDS_UNHEALTHY})",
                failure.reason
            )),
            latency_ms,
        },
        Err(failure) => Check {
            state: failure.state,
            reason: Some(failure.reason),
            latency_ms,
        },
    }
}

pub struct MonitoringService;

/// Which alerts `GET /alerts` wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    #[default]
    Firing,
    Resolved,
}

pub enum MonitoringServiceMessage {
    Ping(RpcReplyPort<()>),
    /// Alerts in `state`, newest first: (`offset`, `limit`) of them.
    Alerts {
        state: AlertState,
        offset: usize,
        limit: usize,
        reply: RpcReplyPort<Vec<Alert>>,
    },
    /// What the bus said of each job, and its events by type.
    Summary(RpcReplyPort<MonitoringSummary>),
    /// Internal: an event from the bus, for the aggregates and the alert engine.
    Observed(Arc<EventEnvelope>),
    /// Run the checks now and reply with the fresh report.
    CheckNow(RpcReplyPort<HealthReport>),
    /// The latest report, without checking (`None` before the first round finished).
    Latest(RpcReplyPort<Option<HealthReport>>),
    /// Internal: time for the periodic round.
    Tick,
    /// Internal: a finished round, with the data directory's free share, and the `CheckNow`
    /// that asked for it.
    Report {
        report: Box<HealthReport>,
        free: Option<f64>,
        reply: Option<RpcReplyPort<HealthReport>>,
    },
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
    pub rules: Vec<Rule>,
    pub webhooks: Vec<grokforge_config::WebhookSettings>,
    /// The monitoring lease, in a cluster.
    pub lease: Option<MonitoringLease>,
}

/// The cluster's monitoring lease: one Redis key, held by one node at a time.
#[derive(Clone)]
pub struct MonitoringLease {
    pub client: redis::Client,
    pub key: String,
    pub ttl: Duration,
}

/// Takes the lease when it is free, renews it when it is ours; `1` when we hold it after.
const LEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

pub struct MonitoringServiceState {
    arguments: Arguments,
    latest: Option<HealthReport>,
    /// Last state of each component, to announce changes only.
    states: BTreeMap<String, HealthState>,
    ticker: Option<JoinHandle<()>>,
    tasks: CancellationToken,
    engine: AlertEngine,
    aggregates: Aggregates,
    webhooks: Vec<Webhook>,
    /// Whether this node announces the cluster-wide alerts.
    leader: Arc<AtomicBool>,
    /// Cluster-wide incidents (rule, labels) whose `alert_raised` is out, by any node: a new
    /// lease holder announces what fired while nobody held the lease, and nothing twice.
    announced: std::collections::HashSet<(String, BTreeMap<String, String>)>,
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
                    let dir = probe.data_dir.clone();
                    let free = tokio::task::spawn_blocking(move || free_share(&dir))
                        .await
                        .ok()
                        .flatten();
                    // The reply waits until the actor has recorded the round: a `/health` after
                    // a fresh one answers from it.
                    let _ = myself.cast(MonitoringServiceMessage::Report {
                        report: Box::new(report),
                        free,
                        reply,
                    });
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

    /// Evaluates the alert rules and delivers what fired and resolved.
    fn evaluate(&mut self, disk_free_share: Option<f64>) {
        let metrics = self.arguments.metrics.clone();
        let mut inputs = Inputs {
            node_id: self.arguments.probe.node_id.clone(),
            health: self.latest.clone(),
            disk_free_share,
            ..Inputs::default()
        };
        for family in metrics.registry().gather() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|pair| pair.name() == name)
                        .map(|pair| pair.value().to_string())
                        .unwrap_or_default()
                };
                match family.name() {
                    "grokforge_breaker_state" if metric.get_gauge().get_value() == 1.0 => {
                        inputs.open_breakers.push(label("breaker"));
                    }
                    "grokforge_actor_restarts_total" => {
                        inputs
                            .restarts
                            .insert(label("actor"), metric.get_counter().get_value() as u64);
                    }
                    // Drops that mean lost events; a subscriber that went away and a node's
                    // own echo are the normal course of things.
                    "grokforge_events_dropped_total" if label("reason") != "subscriber_gone" => {
                        inputs.dropped += metric.get_counter().get_value() as u64;
                    }
                    "grokforge_cluster_messages_dropped_total"
                        if !matches!(label("reason").as_str(), "own_echo" | "duplicate") =>
                    {
                        inputs.dropped += metric.get_counter().get_value() as u64;
                    }
                    _ => {}
                }
            }
        }
        let transitions = self.engine.evaluate(&inputs, chrono::Utc::now());
        let leader = self.leader.load(Ordering::Acquire);
        for transition in transitions {
            let (alert, raised) = match transition {
                Transition::Raised(alert) => (alert, true),
                Transition::Resolved(alert) => (alert, false),
            };
            if RuleKind::parse(&alert.rule).is_some_and(RuleKind::is_cluster_wide) {
                let key = (alert.rule.clone(), alert.labels.clone());
                let out = self.announced.contains(&key);
                // Raised: by the lease holder. Resolved: by whoever holds the lease now, if
                // its raise went out.
                if !leader || raised == out {
                    continue;
                }
                if raised {
                    self.announced.insert(key);
                } else {
                    self.announced.remove(&key);
                }
            }
            self.deliver(alert, raised);
        }
        // What fired while no node held the lease (or before the holder died) goes out now.
        let firing = self.engine.firing();
        if leader {
            for alert in &firing {
                let cluster_wide =
                    RuleKind::parse(&alert.rule).is_some_and(RuleKind::is_cluster_wide);
                let key = (alert.rule.clone(), alert.labels.clone());
                if cluster_wide && self.announced.insert(key) {
                    self.deliver(alert.clone(), true);
                }
            }
        }
        // The gauge counts what this node speaks for: its own alerts, and the cluster's while it
        // holds the lease.
        metrics.alerts_firing.reset();
        for alert in &firing {
            if leader || !RuleKind::parse(&alert.rule).is_some_and(RuleKind::is_cluster_wide) {
                metrics
                    .alerts_firing
                    .with_label_values(&[alert.rule.as_str(), alert.severity.as_str()])
                    .inc();
            }
        }
    }

    /// Notes an alert event of another node: what it announced, this node need not, and the
    /// alert keeps the announcer's id and start here too.
    fn observe_alert(&mut self, envelope: &EventEnvelope) {
        if envelope.source_node == self.arguments.probe.node_id {
            return;
        }
        match &envelope.event {
            Event::AlertRaised(alert) => {
                self.engine.adopt(alert);
                self.announced
                    .insert((alert.rule.clone(), alert.labels.clone()));
            }
            Event::AlertResolved(alert) => {
                self.engine.forget(alert);
                self.announced
                    .remove(&(alert.rule.clone(), alert.labels.clone()));
            }
            _ => {}
        }
    }

    /// Announces `alert`: the bus (`admin_alerts`, and through the bridge every node's
    /// clients), the webhooks, the gauge and the log.
    fn deliver(&self, alert: Alert, raised: bool) {
        AlertChanged {
            alert: &alert,
            raised,
        }
        .emit();
        let severity = alert.severity;
        let event = if raised {
            Event::AlertRaised(alert)
        } else {
            Event::AlertResolved(alert)
        };
        let envelope = self.arguments.publisher.envelope(event);
        if let Ok(body) = serde_json::to_vec(&envelope) {
            for webhook in &self.webhooks {
                webhook.send(severity, &body);
            }
        }
        self.arguments.publisher.publish_envelope(envelope);
    }
}

/// An alert this node announces, fired or resolved: its log line.
struct AlertChanged<'a> {
    alert: &'a Alert,
    raised: bool,
}

impl AlertChanged<'_> {
    fn emit(&self) {
        let alert = self.alert;
        if self.raised {
            tracing::warn!(rule = %alert.rule, severity = alert.severity.as_str(), labels = ?alert.labels, summary = %alert.summary, "alert firing");
        } else {
            tracing::info!(rule = %alert.rule, labels = ?alert.labels, "alert resolved");
        }
    }
}

/// The free share of the file system holding `dir`.
fn free_share(dir: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 || stat.f_blocks == 0 {
        return None;
    }
    Some(stat.f_bavail as f64 / stat.f_blocks as f64)
}

/// Holds or seeks the monitoring lease every second until cancelled.
async fn lease_loop(
    lease: MonitoringLease,
    node_id: String,
    leader: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let script = redis::Script::new(LEASE_SCRIPT);
    let ttl_ms = lease.ttl.as_millis() as u64;
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut ticker = tokio::time::interval(lease.ttl / 3);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let held = async {
            if connection.is_none() {
                connection = Some(lease.client.get_multiplexed_async_connection().await?);
            }
            let connection = connection.as_mut().expect("just connected");
            script
                .key(&lease.key)
                .arg(&node_id)
                .arg(ttl_ms)
                .invoke_async::<i64>(connection)
                .await
        };
        let held = match tokio::time::timeout(lease.ttl / 3, held).await {
            Ok(Ok(held)) => held == 1,
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot reach redis for the monitoring lease");
                connection = None;
                false
            }
            Err(_) => false,
        };
        if leader.swap(held, Ordering::AcqRel) != held {
            tracing::info!(node_id, held, "monitoring lease changed hands");
        }
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
        let tasks = CancellationToken::new();
        let directory = arguments.probe.directory.clone();
        let (me, stop) = (myself.clone(), tasks.clone());
        tokio::spawn(async move {
            crate::bus::follow(
                &directory,
                "monitoring_service",
                Vec::new(),
                65_536,
                &stop,
                |envelope| {
                    let _ = me.cast(MonitoringServiceMessage::Observed(envelope));
                },
            )
            .await;
        });
        let leader = Arc::new(AtomicBool::new(arguments.lease.is_none()));
        if let Some(lease) = arguments.lease.clone() {
            tokio::spawn(lease_loop(
                lease,
                arguments.probe.node_id.clone(),
                leader.clone(),
                tasks.clone(),
            ));
        }
        let webhooks = arguments
            .webhooks
            .iter()
            .map(|settings| Webhook::spawn(settings, arguments.metrics.clone(), tasks.clone()))
            .collect();
        Ok(MonitoringServiceState {
            engine: AlertEngine::new(arguments.rules.clone()),
            aggregates: Aggregates::default(),
            arguments,
            latest: None,
            states: BTreeMap::new(),
            ticker: Some(ticker),
            tasks,
            webhooks,
            leader,
            announced: Default::default(),
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
            MonitoringServiceMessage::Summary(reply) => {
                let _ = reply.send(state.aggregates.summary());
            }
            MonitoringServiceMessage::Latest(reply) => {
                let _ = reply.send(state.latest.clone());
            }
            MonitoringServiceMessage::Report {
                report,
                free,
                reply,
            } => {
                let answer = reply.map(|reply| (reply, (*report).clone()));
                state.record(*report);
                state.evaluate(free);
                if let Some((reply, report)) = answer {
                    let _ = reply.send(report);
                }
            }
            MonitoringServiceMessage::Observed(envelope) => {
                state.observe_alert(&envelope);
                state.aggregates.observe(&envelope);
                state.engine.observe(&envelope, chrono::Utc::now());
            }
            MonitoringServiceMessage::Alerts {
                state: wanted,
                offset,
                limit,
                reply,
            } => {
                let alerts = match wanted {
                    AlertState::Firing => state.engine.firing(),
                    AlertState::Resolved => state.engine.resolved(),
                };
                let _ = reply.send(alerts.into_iter().skip(offset).take(limit).collect());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow() -> Result<(), CheckFailure> {
        Err(CallError::Timeout {
            service: names::TRAINING_SERVICE,
            timeout_ms: 1000,
        }
        .into())
    }

    #[test]
    fn a_service_too_slow_to_answer_is_degraded_until_it_stays_silent() {
        let streaks = SlowStreaks::default();
        let mut states = Vec::new();
        for _ in 0..SLOW_ROUNDS_UNHEALTHY + 1 {
            let streak = streaks.note("training", true);
            states.push(judge(slow(), streak, 1000).state);
        }
        assert_eq!(
            states,
            [
                HealthState::Degraded,
                HealthState::Degraded,
                HealthState::Unhealthy,
                HealthState::Unhealthy
            ]
        );
        let check = judge(slow(), 3, 1000);
        assert!(
            check
                .reason
                .as_deref()
                .unwrap()
                .contains("3 round(s) in a row"),
            "{:?}",
            check.reason
        );
        // One answer in time ends the streak; another component's streak is its own.
        assert_eq!(streaks.note("model", true), 1);
        assert_eq!(streaks.note("training", false), 0);
        assert_eq!(streaks.note("training", true), 1);
        assert_eq!(streaks.note("model", true), 2);
    }

    #[test]
    fn a_service_that_is_gone_is_unhealthy_at_once() {
        let gone: CheckFailure = CallError::Unavailable {
            service: names::TRAINING_SERVICE,
        }
        .into();
        assert_eq!(judge(Err(gone), 0, 0).state, HealthState::Unhealthy);
        let failed: CheckFailure = String::from("disk full").into();
        assert_eq!(judge(Err(failed), 0, 0).state, HealthState::Unhealthy);
    }
}
