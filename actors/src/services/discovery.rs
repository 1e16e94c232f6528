//! `Discovery`: which nodes make up the cluster.
//!
//! Alone (no broker configured) the answer is this node. In a cluster every node keeps a
//! record of itself ([`NodeInfo`]: id, name, advertised URL, version, start time, health of
//! its services, running jobs) under the Redis key `<broker.channel>:node:<node id>`, signed
//! like the bus frames, with a TTL of `discovery.ttl_ms` refreshed every
//! `discovery.heartbeat_interval_ms`. A node that dies without a goodbye disappears when its
//! key expires; a clean shutdown deletes the key at once. On every heartbeat the actor reads
//! the live records, and publishes `NodeJoined` / `NodeLeft` on the local bus for what changed
//! (each node sees membership for itself, so these events are not sent over the bridge).
//!
//! The live set also feeds the training service's rendezvous preference, through a watch
//! channel that outlives restarts of this actor. While Redis is away the last known set is
//! kept: a node cannot tell its peers died from not hearing them.
//!
//! Concurrency: the heartbeat runs in a task of its own tied to a cancellation token; the
//! handler only copies the latest list out of a std `Mutex`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Pingable;
use super::monitoring::MonitoringServiceMessage;
use crate::bus::Publisher;
use crate::cluster::{FrameCodec, WireBody};
use crate::directory::{CallError, ServiceDirectory, names};
use crate::events::{Event, HealthState};
use crate::metrics::NodeMetrics;

pub struct Discovery;

/// One node of the cluster, as `GET /cluster/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    pub node_id: String,
    pub name: String,
    pub version: String,
    /// The URL of the node's HTTP API (`node.advertise_url`, else the bound address).
    pub address: Option<String>,
    pub started_at: DateTime<Utc>,
    /// When the node last refreshed its record.
    pub heartbeat_at: DateTime<Utc>,
    /// The node's overall health at its latest completed check.
    pub status: Option<HealthState>,
    /// Each service's health at that check.
    pub services: BTreeMap<String, HealthState>,
    /// The jobs the node is running.
    pub running_jobs: Vec<Uuid>,
}

pub enum DiscoveryMessage {
    Ping(RpcReplyPort<()>),
    /// The live nodes of the cluster.
    ListNodes(RpcReplyPort<Vec<NodeInfo>>),
    /// The seed's `discover_service(name)`: the API URLs of live nodes whose `name` service
    /// is healthy.
    DiscoverService(String, RpcReplyPort<Vec<String>>),
    /// The seed's `health_check(name)`: the `name` service's state on every live node.
    HealthCheck(String, RpcReplyPort<Vec<(String, Option<HealthState>)>>),
    /// The seed's `register_service`: refresh this node's record now instead of at the next
    /// heartbeat (its services and running jobs, as they are).
    Register,
}

/// The seed's ServiceDiscovery interface, as a Rust API over the Discovery actor.
#[derive(Clone)]
pub struct ServiceDiscovery {
    pub directory: ServiceDirectory,
    pub timeout: Duration,
}

impl ServiceDiscovery {
    /// Publishes this node's record now.
    pub fn register_service(&self) -> Result<(), CallError> {
        if self
            .directory
            .cast(names::DISCOVERY, DiscoveryMessage::Register)
        {
            Ok(())
        } else {
            Err(CallError::Unavailable {
                service: names::DISCOVERY,
            })
        }
    }

    /// The API URLs of the live nodes whose `service` is healthy.
    pub async fn discover_service(&self, service: &str) -> Result<Vec<String>, CallError> {
        let service = service.to_string();
        self.directory
            .call(
                names::DISCOVERY,
                |reply| DiscoveryMessage::DiscoverService(service, reply),
                self.timeout,
            )
            .await
    }

    /// `service`'s state on every live node (`None` where the node has not reported it yet).
    pub async fn health_check(
        &self,
        service: &str,
    ) -> Result<Vec<(String, Option<HealthState>)>, CallError> {
        let service = service.to_string();
        self.directory
            .call(
                names::DISCOVERY,
                |reply| DiscoveryMessage::HealthCheck(service, reply),
                self.timeout,
            )
            .await
    }
}

impl Pingable for DiscoveryMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        DiscoveryMessage::Ping(reply)
    }
}

/// The Redis side of discovery, present in a cluster.
#[derive(Clone)]
pub struct ClusterDiscovery {
    pub client: redis::Client,
    /// `<broker.channel>:node:`; a node's key is this plus its id.
    pub key_prefix: String,
    pub codec: FrameCodec,
    pub heartbeat_interval: Duration,
    pub ttl: Duration,
    /// Bound on one Redis round trip.
    pub io_timeout: Duration,
}

impl ClusterDiscovery {
    pub fn key(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.key_prefix)
    }
}

/// What discovery shares with the rest of the node, kept across restarts of the actor.
#[derive(Clone)]
pub struct Membership {
    /// The ids of the live nodes, sorted; this node's alone until the first heartbeat.
    pub live: Arc<watch::Sender<Vec<String>>>,
    /// The jobs this node runs, kept by the training service.
    pub running_jobs: Arc<watch::Sender<Vec<Uuid>>>,
    /// Set when the node shuts down: discovery then deletes its key as it stops.
    pub leaving: Arc<AtomicBool>,
}

impl Membership {
    pub fn new(node_id: &str) -> Membership {
        Membership {
            live: Arc::new(watch::Sender::new(vec![node_id.to_string()])),
            running_jobs: Arc::new(watch::Sender::new(Vec::new())),
            leaving: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub this_node: NodeInfo,
    /// Filled by the gateway once it has bound its port; shared so a restarted Discovery
    /// still knows it.
    pub address: Arc<OnceLock<String>>,
    /// `node.advertise_url`, which wins over the bound address.
    pub advertise_url: Option<String>,
    pub cluster: Option<ClusterDiscovery>,
    pub membership: Membership,
    pub directory: ServiceDirectory,
    pub publisher: Publisher,
    pub metrics: NodeMetrics,
}

pub struct DiscoveryState {
    args: Arguments,
    /// The live nodes at the latest heartbeat (empty before the first one).
    nodes: Arc<Mutex<Vec<NodeInfo>>>,
    /// Wakes the heartbeat task before its next tick.
    beat_now: Arc<Notify>,
    cancel: CancellationToken,
}

impl Actor for Discovery {
    type Msg = DiscoveryMessage;
    type State = DiscoveryState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let nodes = Arc::new(Mutex::new(Vec::new()));
        let beat_now = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        if let Some(cluster) = args.cluster.clone() {
            tokio::spawn(heartbeat_loop(
                args.clone(),
                cluster,
                nodes.clone(),
                beat_now.clone(),
                cancel.clone(),
            ));
        } else {
            args.metrics.cluster_nodes.set(1);
        }
        Ok(DiscoveryState {
            args,
            nodes,
            beat_now,
            cancel,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.cancel.cancel();
        // Only a node that leaves says goodbye; a restarted actor re-registers at once.
        if let Some(cluster) = &state.args.cluster
            && state.args.membership.leaving.load(Ordering::Acquire)
        {
            let key = cluster.key(&state.args.this_node.node_id);
            let deleted = tokio::time::timeout(cluster.io_timeout, async {
                let mut connection = cluster.client.get_multiplexed_async_connection().await?;
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await;
            match deleted {
                Ok(Ok(_)) => tracing::info!(%key, "left the cluster"),
                Ok(Err(error)) => {
                    tracing::warn!(%key, %error, "cannot delete the discovery key; it expires")
                }
                Err(_) => tracing::warn!(%key, "redis did not answer the goodbye; the key expires"),
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DiscoveryMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            DiscoveryMessage::ListNodes(reply) => {
                let _ = reply.send(state.list());
            }
            DiscoveryMessage::DiscoverService(service, reply) => {
                let endpoints = state
                    .list()
                    .into_iter()
                    .filter(|node| node.services.get(&service) == Some(&HealthState::Healthy))
                    .filter_map(|node| node.address)
                    .collect();
                let _ = reply.send(endpoints);
            }
            DiscoveryMessage::HealthCheck(service, reply) => {
                let states = state
                    .list()
                    .into_iter()
                    .map(|node| {
                        let health = node.services.get(&service).copied();
                        (node.node_id, health)
                    })
                    .collect();
                let _ = reply.send(states);
            }
            DiscoveryMessage::Register => state.beat_now.notify_one(),
        }
        Ok(())
    }
}

impl DiscoveryState {
    fn list(&self) -> Vec<NodeInfo> {
        let nodes = self.nodes.lock().expect("nodes lock").clone();
        if nodes.is_empty() {
            vec![this_node_now(&self.args, None)]
        } else {
            nodes
        }
    }
}

/// This node's record as of now; `health` from the monitoring service's latest check.
fn this_node_now(args: &Arguments, health: Option<&crate::health::HealthReport>) -> NodeInfo {
    let mut node = args.this_node.clone();
    node.address = args
        .advertise_url
        .clone()
        .or_else(|| args.address.get().cloned());
    node.heartbeat_at = Utc::now();
    node.running_jobs = args.membership.running_jobs.borrow().clone();
    if let Some(report) = health {
        node.status = Some(report.status);
        node.services = report
            .services
            .iter()
            .map(|(name, component)| (name.clone(), component.status))
            .collect();
    }
    node
}

async fn heartbeat_loop(
    args: Arguments,
    cluster: ClusterDiscovery,
    nodes: Arc<Mutex<Vec<NodeInfo>>>,
    beat_now: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cluster.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    // `None` until the first successful read: the nodes found then are not announced as
    // joining, they were there before us.
    let mut known: Option<Vec<String>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            _ = beat_now.notified() => {}
        }
        let health = args
            .directory
            .call::<MonitoringServiceMessage, _, _>(
                names::MONITORING_SERVICE,
                MonitoringServiceMessage::Latest,
                Duration::from_millis(500),
            )
            .await
            .ok()
            .flatten();
        let me = this_node_now(&args, health.as_ref());
        let round = tokio::time::timeout(cluster.io_timeout, beat(&cluster, &mut connection, &me))
            .await
            .unwrap_or_else(|_| Err("no answer from redis in time".to_string()));
        let mut live = match round {
            Ok(live) => live,
            Err(error) => {
                connection = None;
                tracing::warn!(%error, "discovery heartbeat failed; keeping the last known nodes");
                continue;
            }
        };
        // Our own record is there even if the read raced its write.
        if !live.iter().any(|node| node.node_id == me.node_id) {
            live.push(me.clone());
        }
        live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let ids: Vec<String> = live.iter().map(|node| node.node_id.clone()).collect();
        if let Some(before) = &known {
            for joined in ids.iter().filter(|id| !before.contains(id)) {
                let address = live
                    .iter()
                    .find(|node| &node.node_id == joined)
                    .and_then(|node| node.address.clone());
                tracing::info!(node_id = %joined, ?address, "node joined the cluster");
                args.publisher.publish(Event::NodeJoined {
                    node_id: joined.clone(),
                    address,
                });
            }
            for left in before.iter().filter(|id| !ids.contains(id)) {
                tracing::warn!(node_id = %left, "node left the cluster");
                args.publisher.publish(Event::NodeLeft {
                    node_id: left.clone(),
                    reason: "its discovery record expired or was removed".to_string(),
                });
            }
        }
        args.metrics.cluster_nodes.set(ids.len() as i64);
        args.membership.live.send_if_modified(|current| {
            let changed = *current != ids;
            if changed {
                current.clone_from(&ids);
            }
            changed
        });
        known = Some(ids);
        *nodes.lock().expect("nodes lock") = live;
    }
}

/// Refreshes this node's key and reads every live record.
async fn beat(
    cluster: &ClusterDiscovery,
    connection: &mut Option<redis::aio::MultiplexedConnection>,
    me: &NodeInfo,
) -> Result<Vec<NodeInfo>, String> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(
            cluster
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    let record = cluster.codec.encode(&WireBody::Node(me.clone()))?;
    let ttl_ms = u64::try_from(cluster.ttl.as_millis()).unwrap_or(u64::MAX);
    redis::cmd("SET")
        .arg(cluster.key(&me.node_id))
        .arg(record)
        .arg("PX")
        .arg(ttl_ms)
        .query_async::<()>(connection)
        .await
        .map_err(|e| e.to_string())?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", cluster.key_prefix))
            .arg("COUNT")
            .arg(512)
            .query_async(connection)
            .await
            .map_err(|e| e.to_string())?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    let mut live = Vec::new();
    for (key, value) in keys.iter().zip(values) {
        // Expired between SCAN and MGET.
        let Some(value) = value else { continue };
        match cluster.codec.decode(&value) {
            Ok(WireBody::Node(node)) if cluster.key(&node.node_id) == *key => live.push(node),
            Ok(_) => {
                tracing::warn!(%key, "a discovery key holds something else than its node's record")
            }
            Err(error) => {
                tracing::warn!(%key, %error, "ignoring a discovery record that does not verify")
            }
        }
    }
    Ok(live)
}
