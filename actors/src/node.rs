//! Booting and stopping a node.
//!
//! Boot follows the dependency order of DESIGN.md: broker → database → the supervised
//! services (EventBus, ModelService, DatasetService, TrainingService, MonitoringService, WebSocketHub,
//! Discovery). A *configured* dependency that does not answer is retried with exponential
//! backoff until the boot deadline, then boot fails with an error naming it. The gateway is
//! started last by the caller, once [`Node::start`] has returned.
//!
//! Shutdown is the reverse, with a deadline: the caller stops the gateway, then
//! [`Node::shutdown`] stops the services in reverse boot order and closes the database.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grokforge_config::{ConfigManager, DatabaseKind, Settings};
use grokforge_storage::jobs::JobRepository;
use grokforge_storage::{ArtifactStore, Database, DatabaseTarget, DatasetRepository};
use grokforge_training_core::Device;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef};

use crate::bus::{self, EventBus, Publisher};
use crate::cluster::FrameCodec;
use crate::directory::{ServiceDirectory, names};
use crate::events::Event;
use crate::metrics::NodeMetrics;
use crate::resilience::{RetryPolicy, retry};
use crate::services::datasets::{self, DatasetService};
use crate::services::discovery::{self, ClusterDiscovery, Discovery, Membership, NodeInfo};
use crate::services::model::{self, ModelLists, ModelService};
use crate::services::monitoring::{self, HealthProbe, MonitoringService};
use crate::services::redis_bridge::{self, BridgeShared, RedisBridge};
use crate::services::training::{self, TrainingService};
use crate::services::websocket::{self, WebSocketHub};
use crate::supervisor::{
    self, ChildSpec, Escalation, NodeSupervisor, NodeSupervisorMessage, RestartPolicy,
    SupervisorOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{dependency} did not answer within {waited_ms} ms: {last_error}")]
    DependencyUnavailable {
        dependency: String,
        waited_ms: u128,
        last_error: String,
    },
    #[error("cannot prepare data directory {path}: {error}")]
    DataDir { path: String, error: String },
    #[error("{0}")]
    Supervisor(String),
}

/// A running node: its services, their directory and metrics.
pub struct Node {
    pub node_id: String,
    pub settings: Settings,
    pub directory: ServiceDirectory,
    pub metrics: NodeMetrics,
    pub database: Database,
    /// Set by the gateway while it accepts connections (the `api` health check reads it).
    pub api_listening: Arc<AtomicBool>,
    /// Where the gateway listens, once bound (Discovery reports it).
    pub api_address: Arc<OnceLock<String>>,
    /// The ModelService's cached model lists, for the gateway's `GET /models`.
    pub model_lists: ModelLists,
    /// The live nodes and this node's running jobs, as discovery keeps them.
    pub membership: Membership,
    supervisor: ActorRef<NodeSupervisorMessage>,
    supervisor_done: JoinHandle<()>,
    outcome: SupervisorOutcome,
}

impl Node {
    /// Boots the node. `boot_deadline` bounds the wait for configured dependencies.
    pub async fn start(
        settings: Settings,
        device: Device,
        boot_deadline: Duration,
    ) -> Result<Node, BootError> {
        let data_dir = settings.data_dir().to_path_buf();
        std::fs::create_dir_all(&data_dir).map_err(|e| BootError::DataDir {
            path: data_dir.display().to_string(),
            error: e.to_string(),
        })?;
        let node_id = match &settings.node.id {
            Some(id) => id.clone(),
            None => persistent_node_id(&data_dir)?,
        };

        let redis = match &settings.broker.url {
            Some(url) => Some(connect_redis(url, boot_deadline).await?),
            None => None,
        };
        let database_config = ConfigManager::new(settings.clone()).database_config();
        let target = match database_config.kind {
            DatabaseKind::Sqlite { path } => DatabaseTarget::Sqlite(path),
            DatabaseKind::Postgres { url } => DatabaseTarget::Postgres(url),
        };
        let database = retry_until(&format!("database {target}"), boot_deadline, || {
            Database::connect(
                &target,
                settings.database.max_connections,
                settings.database.connect_timeout(),
            )
        })
        .await?;
        tracing::info!(node_id, database = %target, broker = settings.broker.url.is_some(), "dependencies ready");

        let directory = ServiceDirectory::new();
        let metrics = NodeMetrics::new();
        let api_listening = Arc::new(AtomicBool::new(false));
        let api_address = Arc::new(OnceLock::new());
        let publisher =
            |service| Publisher::new(node_id.clone(), service, directory.clone(), metrics.clone());

        let broker = &settings.broker;
        // With a broker, validation has made sure there is a secret.
        let codec = broker.cluster_secret.as_deref().map(FrameCodec::new);
        let cluster = redis.clone().zip(codec.clone());
        let bridge_shared = cluster
            .as_ref()
            .map(|_| BridgeShared::new(broker.outbox_capacity));
        let membership = Membership::new(&node_id);

        let probe = HealthProbe {
            node_id: node_id.clone(),
            directory: directory.clone(),
            database: database.clone(),
            data_dir: data_dir.clone(),
            artifacts_dir: settings.artifacts_dir(),
            bridge: bridge_shared.clone(),
            api_listening: api_listening.clone(),
            timeout: settings.monitoring.health_check_timeout(),
            slow: Default::default(),
        };
        let now = chrono::Utc::now();
        let this_node = NodeInfo {
            node_id: node_id.clone(),
            name: settings.node.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: None,
            started_at: now,
            heartbeat_at: now,
            status: None,
            services: Default::default(),
            running_jobs: Vec::new(),
        };

        let bus_args = (metrics.clone(), settings.broker.subscriber_queue_capacity);
        let model_lists = ModelLists::default();
        let model_args = model::Arguments {
            database: database.clone(),
            artifacts_dir: settings.artifacts_dir(),
            publisher: publisher(names::MODEL_SERVICE),
            lists: model_lists.clone(),
        };
        let dataset_args = datasets::Arguments {
            database: database.clone(),
            artifacts_dir: settings.artifacts_dir(),
            cache_dir: settings.artifacts_dir().join("cache"),
            max_dataset_bytes: settings.storage.max_dataset_bytes,
            max_cache_bytes: settings.storage.max_cache_bytes,
            metrics: metrics.clone(),
            evict_every: Duration::from_secs(60),
        };
        let training_args = training::Arguments {
            node_id: node_id.clone(),
            jobs: JobRepository::new(database.clone()),
            datasets: DatasetRepository::new(
                database.clone(),
                ArtifactStore::new(settings.artifacts_dir()),
            ),
            settings: settings.training.clone(),
            device,
            // In the artifacts directory, which the nodes of a cluster share: a node that takes
            // over a job resumes from the checkpoint its previous owner wrote, and prepared
            // data is made once for all.
            work_dir: settings.artifacts_dir().join("jobs"),
            cache_dir: settings.artifacts_dir().join("cache"),
            directory: directory.clone(),
            publisher: publisher(names::TRAINING_SERVICE),
            metrics: metrics.clone(),
            membership: membership.clone(),
            // Leases are renewed three times per lease period, so one slow tick never loses one;
            // and the queue is looked at least every second, so a job whose `job_queued` was
            // lost (pub/sub is at-most-once) still waits no longer than that.
            tick: (settings.training.lease_duration() / 3).min(Duration::from_secs(1)),
            stop_workers_within: worker_stop_budget(settings.node.shutdown_timeout()),
        };
        let monitoring_args = monitoring::Arguments {
            probe,
            interval: settings.monitoring.health_check_interval(),
            publisher: publisher(names::MONITORING_SERVICE),
            metrics: metrics.clone(),
            rules: crate::alerts::rules_from_settings(&settings.monitoring.alerts),
            webhooks: settings.monitoring.webhooks.clone(),
            lease: cluster
                .as_ref()
                .map(|(client, _)| monitoring::MonitoringLease {
                    client: client.clone(),
                    key: format!("{}:monitoring-lease", broker.channel),
                    ttl: Duration::from_secs(3),
                }),
        };
        let gateway = &settings.gateway;
        let hub_args = websocket::Arguments {
            directory: directory.clone(),
            metrics: metrics.clone(),
            limits: websocket::HubLimits {
                queue_capacity: saturating_usize(gateway.ws_queue_capacity),
                max_connections: saturating_usize(gateway.ws_max_connections),
                max_subscriptions: saturating_usize(gateway.ws_max_subscriptions),
            },
            // Bursts of a few seconds at full event rate wait here instead of dropping the hub.
            bus_queue_capacity: 65_536,
        };
        let discovery_args = discovery::Arguments {
            this_node: this_node.clone(),
            address: api_address.clone(),
            advertise_url: settings.node.advertise_url.clone(),
            cluster: cluster.clone().map(|(client, codec)| ClusterDiscovery {
                client,
                key_prefix: format!("{}:node:", broker.channel),
                codec,
                heartbeat_interval: settings.discovery.heartbeat_interval(),
                ttl: settings.discovery.ttl(),
                io_timeout: broker.connect_timeout(),
            }),
            membership: membership.clone(),
            directory: directory.clone(),
            publisher: publisher(names::DISCOVERY),
            metrics: metrics.clone(),
        };
        let mut children = vec![ChildSpec::new(names::EVENT_BUS, move || {
            (
                EventBus,
                bus::Arguments {
                    metrics: bus_args.0.clone(),
                    default_capacity: bus_args.1,
                },
            )
        })];
        if let (Some((client, codec)), Some(shared)) = (cluster, bridge_shared) {
            let bridge_args = redis_bridge::Arguments {
                node_id: node_id.clone(),
                client,
                channel: broker.channel.clone(),
                codec,
                heartbeat_interval: broker.heartbeat_interval(),
                heartbeat_timeout: broker.heartbeat_timeout(),
                io_timeout: broker.connect_timeout(),
                shared,
                directory: directory.clone(),
                publisher: publisher(names::REDIS_BRIDGE),
                metrics: metrics.clone(),
            };
            children.push(ChildSpec::new(names::REDIS_BRIDGE, move || {
                (RedisBridge, bridge_args.clone())
            }));
        }
        children.extend([
            ChildSpec::new(names::MODEL_SERVICE, move || {
                (ModelService, model_args.clone())
            }),
            ChildSpec::new(names::DATASET_SERVICE, move || {
                (DatasetService, dataset_args.clone())
            }),
            ChildSpec::new(names::TRAINING_SERVICE, move || {
                (TrainingService, training_args.clone())
            }),
            ChildSpec::new(names::MONITORING_SERVICE, move || {
                (MonitoringService, monitoring_args.clone())
            }),
            ChildSpec::new(names::WEBSOCKET_HUB, move || {
                (WebSocketHub, hub_args.clone())
            }),
            ChildSpec::new(names::DISCOVERY, move || {
                (Discovery, discovery_args.clone())
            }),
        ]);

        let outcome = SupervisorOutcome::default();
        let node = &settings.node;
        let policy = RestartPolicy {
            intensity: node.restart_intensity,
            period: node.restart_period(),
            backoff_initial: node.restart_backoff_initial(),
            backoff_max: node.restart_backoff_max(),
            stop_timeout: services_stop_budget(node.shutdown_timeout()),
        };
        let (supervisor, supervisor_done) = Actor::spawn(
            Some(format!("{node_id}/node_supervisor")),
            NodeSupervisor,
            supervisor::Arguments {
                scope: node_id.clone(),
                children,
                policy,
                directory: directory.clone(),
                metrics: metrics.clone(),
                outcome: outcome.clone(),
            },
        )
        .await
        .map_err(|e| BootError::Supervisor(e.to_string()))?;

        Publisher::new(node_id.clone(), "node", directory.clone(), metrics.clone()).publish(
            Event::NodeJoined {
                node_id: node_id.clone(),
                address: None,
            },
        );

        Ok(Node {
            node_id,
            settings,
            directory,
            metrics,
            database,
            api_listening,
            api_address,
            model_lists,
            membership,
            supervisor,
            supervisor_done,
            outcome,
        })
    }

    pub fn supervisor(&self) -> &ActorRef<NodeSupervisorMessage> {
        &self.supervisor
    }

    /// Resolves when the supervisor stops on its own: `Some` when a restart storm escalated.
    pub async fn stopped(&mut self) -> Option<Escalation> {
        let _ = (&mut self.supervisor_done).await;
        self.outcome.escalation()
    }

    /// Stops the services in reverse boot order within `deadline`, then closes the database.
    /// Returns the order in which the services were stopped.
    pub async fn shutdown(mut self, deadline: Duration) -> Vec<&'static str> {
        let until = tokio::time::Instant::now() + deadline;
        // Discovery deletes this node's key as it stops, so the others see it leave at once.
        self.membership
            .leaving
            .store(true, std::sync::atomic::Ordering::Release);
        let order = match self
            .supervisor
            .call(NodeSupervisorMessage::Shutdown, Some(deadline))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(order)) => order,
            _ => {
                tracing::warn!("services did not stop within the deadline; killing them");
                self.supervisor.kill();
                Vec::new()
            }
        };
        let _ = tokio::time::timeout_at(until, &mut self.supervisor_done).await;
        self.database.close().await;
        order
    }
}

/// The node's id when none is configured: generated on first boot and kept in the data
/// directory, so a node that restarts is the same node — it reclaims the jobs it owned.
fn persistent_node_id(data_dir: &std::path::Path) -> Result<String, BootError> {
    let path = data_dir.join("node-id");
    let error = |e: std::io::Error| BootError::DataDir {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let id = format!("node-{}", uuid::Uuid::now_v7().simple());
    // Written atomically: a crash mid-write must not leave an empty id behind.
    let temp = data_dir.join(".node-id.tmp");
    std::fs::write(&temp, &id).map_err(error)?;
    std::fs::rename(&temp, &path).map_err(error)?;
    Ok(id)
}

async fn connect_redis(url: &str, deadline: Duration) -> Result<redis::Client, BootError> {
    let client = redis::Client::open(url).map_err(|e| BootError::DependencyUnavailable {
        dependency: "broker".into(),
        waited_ms: 0,
        last_error: e.to_string(),
    })?;
    retry_until("broker (redis)", deadline, || {
        let client = client.clone();
        async move {
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        }
    })
    .await?;
    Ok(client)
}

/// Retries `attempt` with exponential backoff and jitter until it succeeds or `deadline` has
/// passed; then fails naming `dependency` and the last error.
async fn retry_until<T, E, F, Fut>(
    dependency: &str,
    deadline: Duration,
    mut attempt: F,
) -> Result<T, BootError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let policy = RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        deadline: Some(deadline),
        ..RetryPolicy::default()
    };
    let started = tokio::time::Instant::now();
    let outcome = retry(&policy, |_: &String| true, |attempt_number| {
        // One attempt may not outlive the boot deadline either.
        let remaining = deadline.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let attempt = attempt();
        async move {
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => {
                    tracing::warn!(dependency, attempt = attempt_number, %error, "dependency not ready");
                    Err(error.to_string())
                }
                Err(_) => Err(format!("no answer within {} ms", remaining.as_millis())),
            }
        }
    })
    .await;
    outcome.map_err(|error| BootError::DependencyUnavailable {
        dependency: dependency.to_string(),
        waited_ms: started.elapsed().as_millis(),
        last_error: error.last,
    })
}

/// How `node.shutdown_timeout_ms` is shared out, so that the parts add up to at most the
/// whole: the gateway drains for a quarter ([`gateway_drain_budget`]), the services then stop
/// within five eighths (the training service's workers, which write a checkpoint, within
/// half: [`worker_stop_budget`]), and the last eighth is left for closing the database.
pub fn gateway_drain_budget(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout / 4
}

/// See [`gateway_drain_budget`].
pub fn services_stop_budget(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout * 5 / 8
}

/// See [`gateway_drain_budget`].
pub fn worker_stop_budget(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout / 2
}

fn saturating_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
