//! `RedisBridge`: carries the node's events to the other nodes of the cluster and theirs to
//! this node's bus, over one Redis pub/sub channel (`broker.channel`).
//!
//! Out: every envelope this node publishes on its bus that is meant for the cluster
//! ([`Event::is_cluster_wide`]) is signed ([`FrameCodec`]) and put in the outbox; the
//! connection loop publishes the outbox in pipelined batches. In: frames from the channel are
//! verified and then published on the local bus as they are — their `source_node` marks them
//! remote, so the forwarder never sends them back out. Drops are counted by reason in
//! `grokforge_cluster_messages_dropped_total`.
//!
//! Outages: pub/sub is at-most-once, and the node must work alone while Redis is away. The
//! outbox is bounded (`broker.outbox_capacity`, the oldest frame dropped first, counted) and
//! outlives the actor, so a restart of the bridge loses nothing queued. A lost connection is
//! re-made with jittered exponential backoff through a circuit breaker, with a fresh
//! subscription each time. A subscription can also go quiet while its connection looks fine,
//! so the bridge sends itself a heartbeat through the channel every
//! `broker.heartbeat_interval_ms`; if none has come back for `broker.heartbeat_timeout_ms`
//! the broker is degraded and the connection is re-made.
//!
//! Concurrency: the actor only owns two tasks tied to a cancellation token (the forwarder
//! from the bus, and the connection loop) and answers status questions; nothing slow runs in
//! its handler. The status is shared with the health check through a std `Mutex`, held for a
//! field copy only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Pingable;
use crate::bus::Publisher;
use crate::cluster::{FrameCodec, Heartbeat, RecentIds, WireBody};
use crate::directory::{ServiceDirectory, names};
use crate::events::SCHEMA_VERSION;
use crate::metrics::NodeMetrics;
use crate::resilience::{BreakerConfig, CircuitBreaker, Jitter, RetryPolicy, SystemClock};

pub struct RedisBridge;

pub enum RedisBridgeMessage {
    Ping(RpcReplyPort<()>),
    Status(RpcReplyPort<BridgeStatus>),
}

impl Pingable for RedisBridgeMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        RedisBridgeMessage::Ping(reply)
    }
}

/// Where the bridge stands, as the health check reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Subscribed, and the bridge's own heartbeat came back within the bound.
    pub healthy: bool,
    /// Why not, while not healthy.
    pub reason: Option<String>,
    /// Frames waiting for Redis.
    pub outbox: usize,
}

/// The bridge's status and outbox, shared with the health check and kept across restarts of
/// the actor.
#[derive(Clone)]
pub struct BridgeShared {
    status: Arc<Mutex<(bool, Option<String>)>>,
    outbox: Arc<Outbox>,
}

impl BridgeShared {
    pub fn new(outbox_capacity: usize) -> BridgeShared {
        BridgeShared {
            status: Arc::new(Mutex::new((
                false,
                Some("not connected to redis yet".to_string()),
            ))),
            outbox: Arc::new(Outbox::new(outbox_capacity)),
        }
    }

    pub fn status(&self) -> BridgeStatus {
        let (healthy, reason) = self.status.lock().expect("status lock").clone();
        BridgeStatus {
            healthy,
            reason,
            outbox: self.outbox.len(),
        }
    }

    fn set(&self, healthy: bool, reason: Option<String>) {
        let mut status = self.status.lock().expect("status lock");
        if status.0 != healthy {
            match &reason {
                None => tracing::info!("cluster broker healthy: subscribed, own heartbeat heard"),
                Some(reason) => tracing::warn!(%reason, "cluster broker degraded"),
            }
        }
        *status = (healthy, reason);
    }
}

/// Signed frames waiting to go out, oldest first, at most `capacity` of them.
struct Outbox {
    frames: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    fn new(capacity: usize) -> Outbox {
        Outbox {
            frames: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn len(&self) -> usize {
        self.frames.lock().expect("outbox lock").len()
    }

    /// Appends `frame`; returns how many old frames were dropped to make room.
    fn push(&self, frame: Vec<u8>) -> usize {
        let mut frames = self.frames.lock().expect("outbox lock");
        let mut dropped = 0;
        while frames.len() >= self.capacity {
            frames.pop_front();
            dropped += 1;
        }
        frames.push_back(frame);
        drop(frames);
        self.ready.notify_one();
        dropped
    }

    fn take(&self, at_most: usize) -> Vec<Vec<u8>> {
        let mut frames = self.frames.lock().expect("outbox lock");
        let n = frames.len().min(at_most);
        frames.drain(..n).collect()
    }

    /// Puts back a batch that could not be sent, ahead of what came since, within capacity.
    fn requeue(&self, batch: Vec<Vec<u8>>) -> usize {
        let mut frames = self.frames.lock().expect("outbox lock");
        for frame in batch.into_iter().rev() {
            frames.push_front(frame);
        }
        let mut dropped = 0;
        while frames.len() > self.capacity {
            frames.pop_front();
            dropped += 1;
        }
        dropped
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub node_id: String,
    pub client: redis::Client,
    pub channel: String,
    pub codec: FrameCodec,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Bound on one connect or publish round trip.
    pub io_timeout: Duration,
    pub shared: BridgeShared,
    pub directory: ServiceDirectory,
    /// Publishes remote envelopes on the local bus.
    pub publisher: Publisher,
    pub metrics: NodeMetrics,
}

pub struct RedisBridgeState {
    shared: BridgeShared,
    cancel: CancellationToken,
}

/// How many frames one pipelined publish carries at most.
const PUBLISH_BATCH: usize = 512;
/// Envelope ids remembered for duplicate detection.
const RECENT_IDS: usize = 16_384;
/// How long a stopping bridge waits for its outbox to drain.
const FLUSH_ON_STOP: Duration = Duration::from_millis(500);

impl Actor for RedisBridge {
    type Msg = RedisBridgeMessage;
    type State = RedisBridgeState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cancel = CancellationToken::new();
        tokio::spawn(forward_from_bus(args.clone(), cancel.clone()));
        tokio::spawn(connection_loop(args.clone(), cancel.clone()));
        Ok(RedisBridgeState {
            shared: args.shared,
            cancel,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The bridge stops after the services (boot order reversed), so what they said last —
        // a job handed back on shutdown — is on its way: give the outbox a moment to drain
        // while Redis is there. Bounded, and skipped when the broker is down.
        if state.shared.status().healthy {
            let until = tokio::time::Instant::now() + FLUSH_ON_STOP;
            tokio::time::sleep(Duration::from_millis(20)).await;
            while state.shared.outbox.len() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        state.cancel.cancel();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RedisBridgeMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            RedisBridgeMessage::Status(reply) => {
                let _ = reply.send(state.shared.status());
            }
        }
        Ok(())
    }
}

/// Takes this node's cluster-wide envelopes off the bus, signs them and queues them.
async fn forward_from_bus(args: Arguments, cancel: CancellationToken) {
    let dropped = args
        .metrics
        .cluster_messages_dropped_total
        .with_label_values(&["outbox_full"]);
    crate::bus::follow(
        &args.directory,
        names::REDIS_BRIDGE,
        Vec::new(),
        65_536,
        &cancel,
        |envelope| {
            if envelope.source_node != args.node_id || !envelope.event.is_cluster_wide() {
                return;
            }
            match args.codec.encode(&WireBody::Event((*envelope).clone())) {
                Ok(frame) => dropped.inc_by(args.shared.outbox.push(frame) as u64),
                Err(error) => tracing::error!(%error, "cannot encode an envelope for the cluster"),
            }
        },
    )
    .await;
}

/// Connects, runs the connection until it fails or goes quiet, and connects again, with
/// jittered exponential backoff and a circuit breaker, until cancelled.
async fn connection_loop(args: Arguments, cancel: CancellationToken) {
    let backoff = RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        multiplier: 2.0,
        jitter: Jitter::Full,
        deadline: None,
    };
    // Opens after three failed connects in a row within the window, and then lets one probe
    // through per `open_wait`: a Redis that is down costs one attempt every few seconds.
    let breaker = CircuitBreaker::new(
        "redis_bridge",
        BreakerConfig {
            failure_rate_threshold: 1.0,
            minimum_calls: 3,
            window: Duration::from_secs(30),
            open_wait: Duration::from_secs(2),
            half_open_max_probes: 1,
        },
        Arc::new(SystemClock),
    );
    let mut failures: u32 = 0;
    while !cancel.is_cancelled() {
        let reason = match breaker.try_acquire() {
            Err(open) => format!("redis unreachable; circuit breaker open: {open}"),
            Ok(permit) => match connect(&args).await {
                Ok(connection) => {
                    permit.success();
                    failures = 0;
                    match run(&args, connection, &cancel).await {
                        None => return,
                        Some(reason) => reason,
                    }
                }
                Err(error) => {
                    permit.failure();
                    format!("cannot connect to redis: {error}")
                }
            },
        };
        args.shared.set(false, Some(reason));
        let wait = backoff.backoff(failures, &mut rand::rng());
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

struct Connection {
    messages: redis::aio::PubSubStream,
    publisher: redis::aio::MultiplexedConnection,
}

async fn connect(args: &Arguments) -> Result<Connection, String> {
    let connecting = async {
        let mut pubsub = args.client.get_async_pubsub().await?;
        pubsub.subscribe(&args.channel).await?;
        let publisher = args.client.get_multiplexed_async_connection().await?;
        Ok::<_, redis::RedisError>(Connection {
            messages: pubsub.into_on_message(),
            publisher,
        })
    };
    within(args.io_timeout, connecting).await
}

/// `round_trip`'s outcome, or that Redis did not answer within `timeout`.
async fn within<T>(
    timeout: Duration,
    round_trip: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, round_trip).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Serves one connection; returns why it ended, or `None` when cancelled.
async fn run(
    args: &Arguments,
    mut connection: Connection,
    cancel: &CancellationToken,
) -> Option<String> {
    let metrics = &args.metrics;
    let dropped = &metrics.cluster_messages_dropped_total;
    let received = metrics
        .cluster_messages_total
        .with_label_values(&["received"]);
    let published = metrics
        .cluster_messages_total
        .with_label_values(&["published"]);
    let mut recent = RecentIds::new(RECENT_IDS);
    let mut heartbeat = tokio::time::interval(args.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connected_at = Instant::now();
    let mut last_heard: Option<Instant> = None;
    let mut heartbeat_seq: u64 = 0;
    tracing::info!(channel = %args.channel, "redis bridge subscribed");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            message = connection.messages.next() => {
                let Some(message) = message else {
                    return Some("the redis subscription closed".to_string());
                };
                match args.codec.decode(message.get_payload_bytes()) {
                    Err(error) => dropped.with_label_values(&[error.label()]).inc(),
                    // A discovery record has no business on the channel.
                    Ok(WireBody::Node(_)) => dropped.with_label_values(&["malformed"]).inc(),
                    Ok(WireBody::Heartbeat(beat)) => {
                        if beat.node_id == args.node_id {
                            if last_heard.is_none() {
                                args.shared.set(true, None);
                            }
                            last_heard = Some(Instant::now());
                        }
                    }
                    Ok(WireBody::Event(envelope)) => {
                        if envelope.source_node == args.node_id {
                            dropped.with_label_values(&["own_echo"]).inc();
                        } else if !recent.insert(envelope.id) {
                            dropped.with_label_values(&["duplicate"]).inc();
                        } else {
                            received.inc();
                            args.publisher.publish_envelope(envelope);
                        }
                    }
                }
            }
            _ = args.shared.outbox.ready.notified() => {
                loop {
                    let batch = args.shared.outbox.take(PUBLISH_BATCH);
                    if batch.is_empty() {
                        break;
                    }
                    let count = batch.len();
                    if let Err(error) = publish(args, &mut connection.publisher, &batch).await {
                        let lost = args.shared.outbox.requeue(batch);
                        if lost > 0 {
                            dropped.with_label_values(&["outbox_full"]).inc_by(lost as u64);
                        }
                        return Some(format!("cannot publish to redis: {error}"));
                    }
                    published.inc_by(count as u64);
                }
            }
            _ = heartbeat.tick() => {
                let heard = last_heard.unwrap_or(connected_at);
                if heard.elapsed() > args.heartbeat_timeout {
                    return Some(format!(
                        "own heartbeat not heard back through redis within {} ms",
                        args.heartbeat_timeout.as_millis()
                    ));
                }
                heartbeat_seq += 1;
                let beat = WireBody::Heartbeat(Heartbeat {
                    schema_version: SCHEMA_VERSION,
                    node_id: args.node_id.clone(),
                    seq: heartbeat_seq,
                });
                let frame = match args.codec.encode(&beat) {
                    Ok(frame) => frame,
                    Err(error) => return Some(format!("cannot encode a heartbeat: {error}")),
                };
                if let Err(error) = publish(args, &mut connection.publisher, &[frame]).await {
                    return Some(format!("cannot publish to redis: {error}"));
                }
            }
        }
    }
}

async fn publish(
    args: &Arguments,
    connection: &mut redis::aio::MultiplexedConnection,
    frames: &[Vec<u8>],
) -> Result<(), String> {
    let mut pipe = redis::pipe();
    for frame in frames {
        pipe.cmd("PUBLISH")
            .arg(&args.channel)
            .arg(frame.as_slice())
            .ignore();
    }
    within(args.io_timeout, pipe.query_async::<()>(connection)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_the_newest_frames_within_its_capacity() {
        let outbox = Outbox::new(3);
        assert_eq!(outbox.push(vec![1]), 0);
        assert_eq!(outbox.push(vec![2]), 0);
        assert_eq!(outbox.push(vec![3]), 0);
        assert_eq!(outbox.push(vec![4]), 1);
        assert_eq!(outbox.take(2), vec![vec![2], vec![3]]);
        assert_eq!(outbox.push(vec![5]), 0);
        // A failed batch goes back in front, and what no longer fits is the oldest.
        assert_eq!(outbox.requeue(vec![vec![2], vec![3]]), 1);
        assert_eq!(outbox.take(10), vec![vec![3], vec![4], vec![5]]);
        assert_eq!(outbox.len(), 0);
    }
}
