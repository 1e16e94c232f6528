//! The local EventBus: topic fan-out and the slow-subscriber rule.

use std::sync::Arc;
use std::time::Duration;

use grokforge_actors::bus::{
    self, EventBus, EventBusMessage, Publisher, SubscribeRequest, Subscription,
};
use grokforge_actors::metrics::{DropReason, NodeMetrics};
use grokforge_actors::{Event, ServiceDirectory, Topic, names};
use ractor::{Actor, ActorRef};
use uuid::Uuid;

async fn bus(capacity: usize) -> (ActorRef<EventBusMessage>, ServiceDirectory, NodeMetrics) {
    let metrics = NodeMetrics::new();
    let (actor, _) = Actor::spawn(
        None,
        EventBus,
        bus::Arguments {
            metrics: metrics.clone(),
            default_capacity: capacity,
        },
    )
    .await
    .unwrap();
    let directory = ServiceDirectory::new();
    directory.insert(names::EVENT_BUS, actor.get_cell());
    (actor, directory, metrics)
}

async fn subscribe(
    actor: &ActorRef<EventBusMessage>,
    name: &str,
    topics: Vec<Topic>,
    capacity: Option<usize>,
) -> Subscription {
    let request = SubscribeRequest {
        subscriber: name.into(),
        topics,
        capacity,
    };
    actor
        .call(
            |reply| EventBusMessage::Subscribe(request, reply),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap()
        .unwrap()
}

fn progress(job_id: Uuid, step: u64) -> Event {
    Event::TrainingCancelled { job_id, step }
}

async fn next(subscription: &mut Subscription) -> Option<Arc<grokforge_actors::EventEnvelope>> {
    tokio::time::timeout(Duration::from_secs(2), subscription.receiver.recv())
        .await
        .expect("event within 2 s")
}

#[tokio::test]
async fn events_fan_out_to_the_subscribers_of_their_topics() {
    let (actor, directory, metrics) = bus(16).await;
    let job = Uuid::now_v7();
    let mut training = subscribe(&actor, "training", vec![Topic::TrainingUpdates], None).await;
    let mut models = subscribe(&actor, "models", vec![Topic::ModelUpdates], None).await;
    let mut this_job = subscribe(&actor, "job", vec![Topic::Job(job)], None).await;
    let mut everything = subscribe(&actor, "all", vec![], None).await;

    let publisher = Publisher::new("node-a", "test", directory, metrics.clone());
    publisher.publish(progress(Uuid::now_v7(), 1));
    publisher.publish(progress(job, 2));
    publisher.publish(Event::ModelHandoff {
        from_phase: "cognate".into(),
        to_phase: "evomerge".into(),
        model_ids: vec![],
    });

    for expected in [1, 2] {
        let envelope = next(&mut training).await.unwrap();
        assert!(
            matches!(envelope.event, Event::TrainingCancelled { step, .. } if step == expected)
        );
        assert_eq!(envelope.source_node, "node-a");
        assert_eq!(envelope.source_service, "test");
    }
    assert!(matches!(
        next(&mut this_job).await.unwrap().event,
        Event::TrainingCancelled { step: 2, .. }
    ));
    assert!(matches!(
        next(&mut models).await.unwrap().event,
        Event::ModelHandoff { .. }
    ));
    for _ in 0..3 {
        next(&mut everything).await.unwrap();
    }
    // Nothing else was delivered to the narrow subscribers.
    let stats = actor
        .call(EventBusMessage::Ping, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.subscribers, 4);
    assert!(training.receiver.try_recv().is_err());
    assert!(this_job.receiver.try_recv().is_err());
    assert_eq!(
        metrics
            .events_published_total
            .with_label_values(&["training_cancelled"])
            .get(),
        2
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_dropped_and_counted_without_blocking_others() {
    let (actor, directory, metrics) = bus(64).await;
    let mut slow = subscribe(&actor, "slow", vec![], Some(2)).await;
    let mut fast = subscribe(&actor, "fast", vec![], None).await;
    let publisher = Publisher::new("n", "test", directory, metrics.clone());
    let job = Uuid::now_v7();
    for step in 0..10 {
        publisher.publish(progress(job, step));
    }
    // The fast subscriber gets everything, in order.
    for step in 0..10 {
        assert!(
            matches!(next(&mut fast).await.unwrap().event, Event::TrainingCancelled { step: s, .. } if s == step)
        );
    }
    // The slow one keeps what fit in its queue, then its stream ends with the reason.
    assert!(next(&mut slow).await.is_some());
    assert!(next(&mut slow).await.is_some());
    assert!(next(&mut slow).await.is_none());
    assert_eq!(slow.drop_reason(), Some(DropReason::SlowSubscriber));
    assert_eq!(
        metrics
            .events_dropped_total
            .with_label_values(&["slow_subscriber"])
            .get(),
        1
    );
    let stats = actor
        .call(EventBusMessage::Ping, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.subscribers, 1);
}

#[tokio::test]
async fn publishing_without_a_bus_is_a_counted_drop() {
    let metrics = NodeMetrics::new();
    let publisher = Publisher::new("n", "test", ServiceDirectory::new(), metrics.clone());
    publisher.publish(progress(Uuid::now_v7(), 0));
    assert_eq!(
        metrics
            .events_dropped_total
            .with_label_values(&["bus_unavailable"])
            .get(),
        1
    );
}
