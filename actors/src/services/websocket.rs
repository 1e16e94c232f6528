//! `WebSocketHub`: maps topics to WebSocket connections and fans the node's events out to them.
//!
//! The gateway owns the sockets; the hub owns who listens to what. A connection asks the hub
//! for a [`Connection`] (the actor checks the connection limit), then subscribes and
//! unsubscribes through it directly and reads its frames from [`Connection::recv`].
//!
//! Fan-out: the hub holds one subscription to the local EventBus. A task drains it and, for
//! each event, encodes one frame per topic that has listeners (the broad topic, and `job:{id}`
//! for job events), then hands an `Arc` of it to every listener with `try_send` into that
//! connection's bounded queue. A connection whose queue is full is disconnected on the spot with
//! [`CloseReason::SlowConsumer`]; the fan-out never waits, so one slow client cannot delay the
//! others, and memory stays bounded by `connections × queue capacity`.
//!
//! Invariant for replay without a gap: a job's events are appended to the job log *before* they
//! are published, and a subscription is registered (under the registry's write lock) before the
//! caller reads the log. An event the fan-out handled before the registration was therefore
//! already in the log when the caller read it; one it handles after reaches the queue. The
//! caller drops queued job events whose `seq` it has already replayed, so nothing is doubled.
//!
//! The registry is shared behind a std `RwLock` rather than living in the actor's state: the
//! fan-out reads it once per event from its own task, and subscribing must take effect
//! synchronously for the invariant above. No lock is held across an await.
//!
//! If the bus drops the hub (it fell behind) or stops, live delivery has a hole no client can
//! see, so the hub fails: the supervisor restarts it, and every open connection is closed with
//! [`CloseReason::HubRestarted`] so clients reconnect and replay with `since`.

pub mod protocol;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Pingable;
use crate::bus::{EventBusMessage, SubscribeRequest};
use crate::directory::{ServiceDirectory, names};
use crate::events::{EventEnvelope, Topic};
use crate::metrics::NodeMetrics;

pub struct WebSocketHub;

pub enum WebSocketHubMessage {
    Ping(RpcReplyPort<()>),
    /// Admits a new connection, or refuses it when the node has `max_connections` open.
    Connect(RpcReplyPort<Result<Connection, HubFull>>),
    Stats(RpcReplyPort<HubStats>),
    /// Internal: the fan-out task ended; the hub fails so the supervisor restarts it.
    FanOutEnded(String),
}

impl Pingable for WebSocketHubMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        WebSocketHubMessage::Ping(reply)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    /// Frames one connection may have queued before it is dropped as too slow.
    pub queue_capacity: usize,
    pub max_connections: usize,
    pub max_subscriptions: usize,
}

#[derive(Clone)]
pub struct Arguments {
    pub directory: ServiceDirectory,
    pub metrics: NodeMetrics,
    pub limits: HubLimits,
    /// Queue length of the hub's own bus subscription: a burst the fan-out has not caught up
    /// with yet waits here.
    pub bus_queue_capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node already has {max_connections} WebSocket connections open")]
pub struct HubFull {
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub subscriptions: usize,
}

/// Why the hub ended a connection's stream of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue was full: the client did not read fast enough.
    SlowConsumer { queue_capacity: usize },
    /// The hub restarted or stopped; events may have been missed, reconnect with `since`.
    HubRestarted,
}

impl CloseReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer { .. } => "slow_consumer",
            CloseReason::HubRestarted => "hub_restarted",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::SlowConsumer { queue_capacity } => write!(
                f,
                "slow consumer: {queue_capacity} frames were waiting unread"
            ),
            CloseReason::HubRestarted => {
                f.write_str("event stream restarted; reconnect and resubscribe with since")
            }
        }
    }
}

/// One frame on its way to the connections subscribed to `topic`.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Topic,
    /// The job event log's sequence number, for de-duplication after a replay.
    pub seq: Option<u64>,
    pub text: String,
    /// When the hub queued it, for [`NodeMetrics::websocket_delivery_seconds`].
    pub queued_at: std::time::Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("at most {max} subscriptions per connection")]
    TooMany { max: usize },
    #[error("the connection is closed: {0}")]
    Closed(CloseReason),
}

/// A connection's handle on the hub: subscribe, unsubscribe, receive. Dropping it removes the
/// connection from every topic.
pub struct Connection {
    id: u64,
    receiver: mpsc::Receiver<Arc<Delivery>>,
    registry: Arc<Registry>,
    close_reason: Arc<OnceLock<CloseReason>>,
    closed: CancellationToken,
}

impl Connection {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Starts delivering `topic`'s events; `Ok(false)` when already subscribed. Takes effect
    /// before this returns (see the module's replay invariant).
    pub fn subscribe(&self, topic: Topic) -> Result<bool, SubscribeError> {
        let mut inner = self.registry.write();
        let max = self.registry.limits.max_subscriptions;
        let Some(entry) = inner.connections.get_mut(&self.id) else {
            return Err(SubscribeError::Closed(
                self.close_reason().unwrap_or(CloseReason::HubRestarted),
            ));
        };
        if entry.topics.contains(&topic) {
            return Ok(false);
        }
        if entry.topics.len() >= max {
            return Err(SubscribeError::TooMany { max });
        }
        entry.topics.insert(topic.clone());
        inner.topics.entry(topic).or_default().insert(self.id);
        Ok(true)
    }

    /// Stops delivering `topic`; `false` when it was not subscribed.
    pub fn unsubscribe(&self, topic: &Topic) -> bool {
        let mut inner = self.registry.write();
        let removed = inner
            .connections
            .get_mut(&self.id)
            .is_some_and(|entry| entry.topics.remove(topic));
        if removed {
            inner.remove_listener(topic, self.id);
        }
        removed
    }

    pub fn topics(&self) -> Vec<Topic> {
        self.registry
            .read()
            .connections
            .get(&self.id)
            .map(|entry| entry.topics.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The next frame, or `None` once the hub has ended the connection ([`Self::close_reason`]
    /// says why). Frames queued before a slow-consumer drop are discarded: the client is being
    /// disconnected for not reading them.
    pub async fn recv(&mut self) -> Option<Arc<Delivery>> {
        if self.close_reason.get().is_some() {
            return None;
        }
        let delivery = self.receiver.recv().await?;
        if self.close_reason.get().is_some() {
            return None;
        }
        Some(delivery)
    }

    /// Waits for a frame, then moves it and whatever else is queued, `limit` at most, to the
    /// end of `buffer`; returns how many, 0 once the hub has ended the connection (nothing is
    /// added then). One call per burst instead of one per frame: the queue's permits go back in
    /// one step, and a busy fan-out costs each session one wake-up per burst.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Arc<Delivery>>, limit: usize) -> usize {
        if self.close_reason.get().is_some() {
            return 0;
        }
        let before = buffer.len();
        let received = self.receiver.recv_many(buffer, limit).await;
        if self.close_reason.get().is_some() {
            buffer.truncate(before);
            return 0;
        }
        received
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }

    /// Resolves once the hub has ended the connection, so a session blocked writing to a
    /// client that does not read can give up at once.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

struct Registry {
    inner: RwLock<RegistryInner>,
    next_id: AtomicU64,
    limits: HubLimits,
    metrics: NodeMetrics,
}

#[derive(Default)]
struct RegistryInner {
    connections: HashMap<u64, ConnectionEntry>,
    /// Listeners per topic; a topic with none is removed, so the fan-out skips encoding it.
    topics: HashMap<Topic, HashSet<u64>>,
    /// Set when the hub stops: no new connections are admitted into a dead registry.
    closed: bool,
}

struct ConnectionEntry {
    sender: mpsc::Sender<Arc<Delivery>>,
    topics: HashSet<Topic>,
    close_reason: Arc<OnceLock<CloseReason>>,
    closed: CancellationToken,
}

impl RegistryInner {
    fn remove_listener(&mut self, topic: &Topic, id: u64) {
        if let Some(listeners) = self.topics.get_mut(topic) {
            listeners.remove(&id);
            if listeners.is_empty() {
                self.topics.remove(topic);
            }
        }
    }
}

impl Registry {
    // A poisoned lock means a panic while holding it, in code that only updates maps; the maps
    // are still consistent enough to serve and to clean up, so the poison is ignored.
    fn read(&self) -> RwLockReadGuard<'_, RegistryInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, RegistryInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(self: &Arc<Self>) -> Result<Connection, HubFull> {
        let mut inner = self.write();
        let max_connections = self.limits.max_connections;
        if inner.closed || inner.connections.len() >= max_connections {
            return Err(HubFull { max_connections });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(self.limits.queue_capacity.max(1));
        let close_reason = Arc::new(OnceLock::new());
        let closed = CancellationToken::new();
        inner.connections.insert(
            id,
            ConnectionEntry {
                sender,
                topics: HashSet::new(),
                close_reason: close_reason.clone(),
                closed: closed.clone(),
            },
        );
        self.metrics.websocket_connections.inc();
        Ok(Connection {
            id,
            receiver,
            registry: self.clone(),
            close_reason,
            closed,
        })
    }

    /// Removes a connection. When the hub ends it, `reason` is recorded for its owner (and
    /// counted here: the owner may be stuck writing to the client for a while yet).
    fn remove_with(&self, inner: &mut RegistryInner, id: u64, reason: Option<CloseReason>) {
        let Some(entry) = inner.connections.remove(&id) else {
            return;
        };
        if let Some(reason) = reason {
            let _ = entry.close_reason.set(reason);
            entry.closed.cancel();
            self.metrics
                .websocket_disconnects_total
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        for topic in &entry.topics {
            inner.remove_listener(topic, id);
        }
        self.metrics.websocket_connections.dec();
    }

    fn remove(&self, id: u64) {
        let mut inner = self.write();
        self.remove_with(&mut inner, id, None);
    }

    /// Delivers `envelope` to every listener of its topics; returns the frames queued.
    fn fan_out(&self, envelope: &EventEnvelope) -> usize {
        let broad = envelope.event.topic();
        let job = envelope.event.job_topic();
        let mut queued = 0;
        let mut too_slow = Vec::new();
        {
            let inner = self.read();
            for topic in std::iter::once(broad).chain(job) {
                let Some(listeners) = inner.topics.get(&topic) else {
                    continue;
                };
                let text = match protocol::encode_event_frame(&topic.to_string(), envelope) {
                    Ok(text) => text,
                    Err(error) => {
                        tracing::error!(%error, kind = envelope.event.kind(), "cannot encode event frame");
                        continue;
                    }
                };
                let delivery = Arc::new(Delivery {
                    topic: topic.clone(),
                    seq: envelope.seq,
                    text,
                    queued_at: std::time::Instant::now(),
                });
                for id in listeners {
                    let Some(entry) = inner.connections.get(id) else {
                        continue;
                    };
                    match entry.sender.try_send(delivery.clone()) {
                        Ok(()) => queued += 1,
                        // Closed: the owner is going away and will remove itself.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => too_slow.push(*id),
                    }
                }
            }
        }
        if !too_slow.is_empty() {
            let reason = CloseReason::SlowConsumer {
                queue_capacity: self.limits.queue_capacity,
            };
            let mut inner = self.write();
            for id in too_slow {
                if inner.connections.contains_key(&id) {
                    tracing::warn!(connection = id, %reason, "dropping websocket client");
                    self.remove_with(&mut inner, id, Some(reason));
                }
            }
        }
        queued
    }

    /// Ends every connection (the hub is stopping) and refuses new ones.
    fn close_all(&self, reason: CloseReason) {
        let mut inner = self.write();
        inner.closed = true;
        let ids: Vec<u64> = inner.connections.keys().copied().collect();
        for id in ids {
            self.remove_with(&mut inner, id, Some(reason));
        }
    }

    fn stats(&self) -> HubStats {
        let inner = self.read();
        HubStats {
            connections: inner.connections.len(),
            subscriptions: inner.connections.values().map(|c| c.topics.len()).sum(),
        }
    }
}

pub struct WebSocketHubState {
    registry: Arc<Registry>,
    fan_out: JoinHandle<()>,
}

impl Actor for WebSocketHub {
    type Msg = WebSocketHubMessage;
    type State = WebSocketHubState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let registry = Arc::new(Registry {
            inner: RwLock::new(RegistryInner::default()),
            next_id: AtomicU64::new(1),
            limits: args.limits,
            metrics: args.metrics.clone(),
        });
        let subscription = args
            .directory
            .call::<EventBusMessage, _, _>(
                names::EVENT_BUS,
                |reply| {
                    EventBusMessage::Subscribe(
                        SubscribeRequest {
                            subscriber: names::WEBSOCKET_HUB.to_string(),
                            topics: Vec::new(),
                            capacity: Some(args.bus_queue_capacity),
                        },
                        reply,
                    )
                },
                std::time::Duration::from_secs(5),
            )
            .await?;
        let fan_out = {
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut subscription = subscription;
                while let Some(envelope) = subscription.receiver.recv().await {
                    registry.fan_out(&envelope);
                }
                let why = match subscription.drop_reason() {
                    Some(reason) => format!("the event bus dropped the hub: {}", reason.as_str()),
                    None => "the event bus stopped".to_string(),
                };
                let _ = myself.cast(WebSocketHubMessage::FanOutEnded(why));
            })
        };
        Ok(WebSocketHubState { registry, fan_out })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WebSocketHubMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            WebSocketHubMessage::Connect(reply) => {
                let _ = reply.send(state.registry.connect());
            }
            WebSocketHubMessage::Stats(reply) => {
                let _ = reply.send(state.registry.stats());
            }
            WebSocketHubMessage::FanOutEnded(why) => return Err(why.into()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.fan_out.abort();
        state.registry.close_all(CloseReason::HubRestarted);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::events::Event;

    fn registry(queue_capacity: usize, max_connections: usize) -> Arc<Registry> {
        Arc::new(Registry {
            inner: RwLock::new(RegistryInner::default()),
            next_id: AtomicU64::new(1),
            limits: HubLimits {
                queue_capacity,
                max_connections,
                max_subscriptions: 3,
            },
            metrics: NodeMetrics::new(),
        })
    }

    fn progress(job_id: Uuid, seq: u64) -> EventEnvelope {
        EventEnvelope::new(
            "n",
            "training_service",
            Event::TrainingProgress {
                job_id,
                variant: 0,
                step: seq,
                total_steps: 10,
                loss: 1.0,
                accuracy: None,
                val_loss: None,
                val_accuracy: None,
                learning_rate: 1e-3,
                steps_per_second: 1.0,
            },
        )
        .with_seq(seq)
    }

    async fn next(connection: &mut Connection) -> Arc<Delivery> {
        tokio::time::timeout(Duration::from_secs(5), connection.recv())
            .await
            .expect("a frame within the deadline")
            .expect("the connection is open")
    }

    #[tokio::test]
    async fn events_reach_the_listeners_of_their_topics_only() {
        let registry = registry(16, 10);
        let job = Uuid::now_v7();
        let mut broad = registry.connect().unwrap();
        let mut by_job = registry.connect().unwrap();
        let mut other = registry.connect().unwrap();
        broad.subscribe(Topic::TrainingUpdates).unwrap();
        by_job.subscribe(Topic::Job(job)).unwrap();
        other.subscribe(Topic::Job(Uuid::now_v7())).unwrap();

        assert_eq!(registry.fan_out(&progress(job, 1)), 2);
        let got = next(&mut broad).await;
        assert_eq!(got.topic, Topic::TrainingUpdates);
        assert!(got.text.contains(r#""topic":"training_updates""#));
        let got = next(&mut by_job).await;
        assert_eq!((got.topic.clone(), got.seq), (Topic::Job(job), Some(1)));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_burst_is_received_in_order_up_to_the_limit() {
        let registry = registry(16, 10);
        let job = Uuid::now_v7();
        let mut connection = registry.connect().unwrap();
        connection.subscribe(Topic::Job(job)).unwrap();
        for seq in 1..=5 {
            registry.fan_out(&progress(job, seq));
        }
        let mut buffer = Vec::new();
        assert_eq!(connection.recv_many(&mut buffer, 3).await, 3);
        assert_eq!(connection.recv_many(&mut buffer, 3).await, 2);
        let seqs: Vec<_> = buffer.iter().map(|delivery| delivery.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5].map(Some));
    }

    #[tokio::test]
    async fn unsubscribe_and_drop_stop_delivery_and_free_the_topic() {
        let registry = registry(16, 10);
        let job = Uuid::now_v7();
        let connection = registry.connect().unwrap();
        assert_eq!(connection.subscribe(Topic::Job(job)), Ok(true));
        assert_eq!(connection.subscribe(Topic::Job(job)), Ok(false));
        assert!(connection.unsubscribe(&Topic::Job(job)));
        assert!(!connection.unsubscribe(&Topic::Job(job)));
        assert_eq!(registry.fan_out(&progress(job, 1)), 0);
        assert!(registry.read().topics.is_empty());

        connection.subscribe(Topic::Health).unwrap();
        drop(connection);
        assert_eq!(
            registry.stats(),
            HubStats {
                connections: 0,
                subscriptions: 0
            }
        );
        assert!(registry.read().topics.is_empty());
        assert_eq!(registry.metrics.websocket_connections.get(), 0);
    }

    #[tokio::test]
    async fn limits_on_subscriptions_and_connections_hold() {
        let registry = registry(16, 2);
        let connection = registry.connect().unwrap();
        let _second = registry.connect().unwrap();
        assert_eq!(
            registry.connect().err(),
            Some(HubFull { max_connections: 2 })
        );
        for topic in [Topic::Health, Topic::ModelUpdates, Topic::TrainingUpdates] {
            connection.subscribe(topic).unwrap();
        }
        assert_eq!(
            connection.subscribe(Topic::AdminAlerts),
            Err(SubscribeError::TooMany { max: 3 })
        );
    }

    #[tokio::test]
    async fn a_slow_consumer_is_dropped_without_holding_back_the_others() {
        let registry = registry(4, 10);
        let job = Uuid::now_v7();
        let mut slow = registry.connect().unwrap();
        let mut fast = registry.connect().unwrap();
        slow.subscribe(Topic::Job(job)).unwrap();
        fast.subscribe(Topic::Job(job)).unwrap();
        for seq in 1..=20 {
            registry.fan_out(&progress(job, seq));
            // The fast client keeps up; the slow one never reads.
            assert_eq!(next(&mut fast).await.seq, Some(seq));
        }
        assert_eq!(
            slow.close_reason(),
            Some(CloseReason::SlowConsumer { queue_capacity: 4 })
        );
        // Nothing of what piled up is handed out after the drop.
        let mut buffer = Vec::new();
        assert_eq!(slow.recv_many(&mut buffer, 8).await, 0);
        assert!(buffer.is_empty());
        assert!(slow.recv().await.is_none());
        assert_eq!(registry.stats().connections, 1);
        assert_eq!(registry.metrics.websocket_connections.get(), 1);
    }

    #[tokio::test]
    async fn closing_the_hub_ends_every_connection_with_a_reason() {
        let registry = registry(4, 10);
        let mut connection = registry.connect().unwrap();
        connection.subscribe(Topic::Health).unwrap();
        registry.close_all(CloseReason::HubRestarted);
        assert!(connection.recv().await.is_none());
        assert_eq!(connection.close_reason(), Some(CloseReason::HubRestarted));
        assert!(matches!(
            connection.subscribe(Topic::ModelUpdates),
            Err(SubscribeError::Closed(CloseReason::HubRestarted))
        ));
        assert!(registry.connect().is_err());
    }
}
