//! The local event bus: fans events out to in-process subscribers by topic.
//!
//! Invariant: a publisher never waits for a subscriber. Publishing is a cast into the bus's
//! mailbox; the bus hands each event to every matching subscriber with `try_send` into that
//! subscriber's bounded queue. A subscriber whose queue is full is removed on the spot (its
//! receiver drains what it had, then ends, and [`Subscription::drop_reason`] says why), and
//! the drop is counted. Memory therefore stays bounded by `subscribers × capacity`, whatever
//! a slow consumer does.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::directory::{ServiceDirectory, names};
use crate::events::{Event, EventEnvelope, Topic};
use crate::metrics::{DropReason, NodeMetrics, SubscriberDropped};

pub struct EventBus;

pub enum EventBusMessage {
    Publish(Arc<EventEnvelope>),
    Subscribe(SubscribeRequest, RpcReplyPort<Subscription>),
    Unsubscribe(u64),
    Ping(RpcReplyPort<BusStats>),
}

pub struct SubscribeRequest {
    /// Who subscribes, for logs.
    pub subscriber: String,
    /// Topics of interest; empty means every event.
    pub topics: Vec<Topic>,
    /// Queue length; the bus's default when `None`.
    pub capacity: Option<usize>,
}

/// A live subscription: events arrive on `receiver` until the bus drops the subscriber or
/// the subscription is dropped.
pub struct Subscription {
    pub id: u64,
    pub receiver: mpsc::Receiver<Arc<EventEnvelope>>,
    drop_reason: Arc<OnceLock<DropReason>>,
}

impl Subscription {
    /// Why the bus ended this subscription, once `receiver` has returned `None`. `None` here
    /// means the bus itself stopped (e.g. it is being restarted).
    pub fn drop_reason(&self) -> Option<DropReason> {
        self.drop_reason.get().copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStats {
    pub subscribers: usize,
}

pub struct Arguments {
    pub metrics: NodeMetrics,
    pub default_capacity: usize,
}

struct Subscriber {
    name: String,
    topics: Vec<Topic>,
    sender: mpsc::Sender<Arc<EventEnvelope>>,
    drop_reason: Arc<OnceLock<DropReason>>,
}

pub struct EventBusState {
    subscribers: HashMap<u64, Subscriber>,
    next_id: u64,
    metrics: NodeMetrics,
    default_capacity: usize,
}

impl EventBusState {
    fn publish(&mut self, envelope: Arc<EventEnvelope>) {
        self.metrics
            .events_published_total
            .with_label_values(&[envelope.event.kind()])
            .inc();
        let mut dropped = Vec::new();
        for (id, subscriber) in &self.subscribers {
            let wanted = subscriber.topics.is_empty()
                || subscriber
                    .topics
                    .iter()
                    .any(|topic| envelope.event.belongs_to(topic));
            if !wanted {
                continue;
            }
            match subscriber.sender.try_send(envelope.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped.push((*id, DropReason::SlowSubscriber))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    dropped.push((*id, DropReason::SubscriberGone))
                }
            }
        }
        for (id, reason) in dropped {
            if let Some(subscriber) = self.subscribers.remove(&id) {
                let _ = subscriber.drop_reason.set(reason);
                SubscriberDropped {
                    subscriber: &subscriber.name,
                    reason,
                }
                .emit(&self.metrics);
            }
        }
        self.metrics
            .bus_subscribers
            .set(self.subscribers.len() as i64);
    }
}

impl Actor for EventBus {
    type Msg = EventBusMessage;
    type State = EventBusState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(EventBusState {
            subscribers: HashMap::new(),
            next_id: 1,
            metrics: args.metrics,
            default_capacity: args.default_capacity.max(1),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EventBusMessage::Publish(envelope) => state.publish(envelope),
            EventBusMessage::Subscribe(request, reply) => {
                let capacity = request.capacity.unwrap_or(state.default_capacity).max(1);
                let (sender, receiver) = mpsc::channel(capacity);
                let id = state.next_id;
                state.next_id += 1;
                let drop_reason = Arc::new(OnceLock::new());
                state.subscribers.insert(
                    id,
                    Subscriber {
                        name: request.subscriber,
                        topics: request.topics,
                        sender,
                        drop_reason: drop_reason.clone(),
                    },
                );
                state
                    .metrics
                    .bus_subscribers
                    .set(state.subscribers.len() as i64);
                let _ = reply.send(Subscription {
                    id,
                    receiver,
                    drop_reason,
                });
            }
            EventBusMessage::Unsubscribe(id) => {
                state.subscribers.remove(&id);
                state
                    .metrics
                    .bus_subscribers
                    .set(state.subscribers.len() as i64);
            }
            EventBusMessage::Ping(reply) => {
                let _ = reply.send(BusStats {
                    subscribers: state.subscribers.len(),
                });
            }
        }
        Ok(())
    }
}

/// What a service holds to publish: stamps the envelope with the node and service, and finds
/// the bus through the directory on each publish so a restarted bus is picked up.
#[derive(Clone)]
pub struct Publisher {
    node_id: Arc<str>,
    service: &'static str,
    directory: ServiceDirectory,
    metrics: NodeMetrics,
}

impl Publisher {
    pub fn new(
        node_id: impl Into<Arc<str>>,
        service: &'static str,
        directory: ServiceDirectory,
        metrics: NodeMetrics,
    ) -> Self {
        Publisher {
            node_id: node_id.into(),
            service,
            directory,
            metrics,
        }
    }

    pub fn envelope(&self, event: Event) -> EventEnvelope {
        EventEnvelope::new(&*self.node_id, self.service, event)
    }

    /// Publishes `event`; an event that finds no bus (it is restarting) is counted as dropped.
    pub fn publish(&self, event: Event) {
        self.publish_envelope(self.envelope(event));
    }

    pub fn publish_envelope(&self, envelope: EventEnvelope) {
        if !self.directory.cast(
            names::EVENT_BUS,
            EventBusMessage::Publish(Arc::new(envelope)),
        ) {
            self.metrics
                .events_dropped_total
                .with_label_values(&["bus_unavailable"])
                .inc();
        }
    }
}

/// Hands every event of `topics` (all, when empty) to `on_event` until `cancel` fires,
/// subscribing again whenever the subscription ends (the bus restarted, or dropped this
/// subscriber for falling behind — which `on_event` avoids by doing nothing slow).
pub async fn follow(
    directory: &ServiceDirectory,
    subscriber: &str,
    topics: Vec<Topic>,
    capacity: usize,
    cancel: &CancellationToken,
    mut on_event: impl FnMut(Arc<EventEnvelope>),
) {
    while !cancel.is_cancelled() {
        let subscription = directory
            .call::<EventBusMessage, _, _>(
                names::EVENT_BUS,
                |reply| {
                    EventBusMessage::Subscribe(
                        SubscribeRequest {
                            subscriber: subscriber.to_string(),
                            topics: topics.clone(),
                            capacity: Some(capacity),
                        },
                        reply,
                    )
                },
                Duration::from_secs(1),
            )
            .await;
        let Ok(mut subscription) = subscription else {
            // The bus is restarting; try again shortly.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        loop {
            let envelope = tokio::select! {
                _ = cancel.cancelled() => return,
                envelope = subscription.receiver.recv() => envelope,
            };
            match envelope {
                Some(envelope) => on_event(envelope),
                None => break,
            }
        }
        if let Some(reason) = subscription.drop_reason() {
            tracing::warn!(
                subscriber,
                ?reason,
                "the bus dropped a subscription; subscribing again"
            );
        }
    }
}
