//! NodeSupervisor against real ractor actors: restart under the same name, restart counting,
//! escalation of a restart storm, and shutdown order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use grokforge_actors::ServiceDirectory;
use grokforge_actors::metrics::NodeMetrics;
use grokforge_actors::supervisor::{
    self, ChildSpec, NodeSupervisor, NodeSupervisorMessage, RestartPolicy, SupervisorOutcome,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};

/// A child that panics on request and records when it stops.
struct Crashy;

enum CrashyMessage {
    Crash,
    Ping(RpcReplyPort<()>),
}

#[derive(Clone)]
struct CrashyArgs {
    name: &'static str,
    stopped: Arc<Mutex<Vec<&'static str>>>,
}

impl Actor for Crashy {
    type Msg = CrashyMessage;
    type State = CrashyArgs;
    type Arguments = CrashyArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: CrashyArgs,
    ) -> Result<CrashyArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CrashyMessage::Crash => panic!("asked to crash"),
            CrashyMessage::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut CrashyArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.stopped.lock().unwrap().push(state.name);
        Ok(())
    }
}

struct Harness {
    supervisor: ActorRef<NodeSupervisorMessage>,
    done: tokio::task::JoinHandle<()>,
    directory: ServiceDirectory,
    metrics: NodeMetrics,
    outcome: SupervisorOutcome,
    stopped: Arc<Mutex<Vec<&'static str>>>,
    scope: String,
}

async fn start(children: &[&'static str], intensity: u32) -> Harness {
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let specs = children
        .iter()
        .map(|&name| {
            let args = CrashyArgs {
                name,
                stopped: stopped.clone(),
            };
            ChildSpec::new(name, move || (Crashy, args.clone()))
        })
        .collect();
    let directory = ServiceDirectory::new();
    let metrics = NodeMetrics::new();
    let outcome = SupervisorOutcome::default();
    let scope = format!("test-{}", uuid::Uuid::now_v7().simple());
    let (supervisor, done) = Actor::spawn(
        None,
        NodeSupervisor,
        supervisor::Arguments {
            scope: scope.clone(),
            children: specs,
            policy: RestartPolicy {
                intensity,
                period: Duration::from_secs(30),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(40),
                stop_timeout: Duration::from_secs(2),
            },
            directory: directory.clone(),
            metrics: metrics.clone(),
            outcome: outcome.clone(),
        },
    )
    .await
    .expect("supervisor starts");
    Harness {
        supervisor,
        done,
        directory,
        metrics,
        outcome,
        stopped,
        scope,
    }
}

/// Polls `condition` until it holds or `deadline` passes.
async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn id_of(directory: &ServiceDirectory, name: &str) -> Option<ractor::ActorId> {
    directory.cell(name).map(|c: ActorCell| c.get_id())
}

#[tokio::test]
async fn a_child_that_panics_is_restarted_under_the_same_name_and_counted() {
    let h = start(&["a", "b"], 5).await;
    let first = id_of(&h.directory, "a").unwrap();
    let sibling = id_of(&h.directory, "b").unwrap();

    assert!(h.directory.cast("a", CrashyMessage::Crash));
    wait_until("a restarted", Duration::from_secs(5), || {
        id_of(&h.directory, "a").is_some_and(|id| id != first)
    })
    .await;

    let restarted = h.directory.cell("a").unwrap();
    assert_eq!(
        restarted.get_name().as_deref(),
        Some(format!("{}/a", h.scope).as_str())
    );
    let answered = h
        .directory
        .call::<CrashyMessage, (), _>("a", CrashyMessage::Ping, Duration::from_secs(1))
        .await;
    assert_eq!(answered, Ok(()), "the restarted actor serves requests");
    assert_eq!(
        id_of(&h.directory, "b"),
        Some(sibling),
        "one-for-one: the sibling is untouched"
    );
    assert_eq!(
        h.metrics
            .actor_restarts_total
            .with_label_values(&["a"])
            .get(),
        1
    );
    assert_eq!(
        h.metrics
            .actor_restarts_total
            .with_label_values(&["b"])
            .get(),
        0
    );

    let children = h
        .supervisor
        .call(
            NodeSupervisorMessage::Children,
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        children
            .iter()
            .map(|c| (c.name, c.total_restarts))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 0)]
    );
    h.supervisor.stop(None);
}

#[tokio::test]
async fn a_restart_storm_escalates_and_stops_everything() {
    let h = start(&["a", "b", "c"], 2).await;
    let b = h.directory.cell("b").unwrap();
    // Two restarts are absorbed; the third failure within the period escalates.
    for round in 0..3 {
        let before = id_of(&h.directory, "b").unwrap();
        assert!(
            h.directory.cast("b", CrashyMessage::Crash),
            "round {round}: b is reachable"
        );
        if round < 2 {
            wait_until("b restarted", Duration::from_secs(5), || {
                id_of(&h.directory, "b").is_some_and(|id| id != before)
            })
            .await;
        }
    }
    tokio::time::timeout(Duration::from_secs(5), h.done)
        .await
        .expect("supervisor stops")
        .unwrap();

    let escalation = h.outcome.escalation().expect("escalation recorded");
    assert_eq!(escalation.actor, "b");
    assert_eq!(escalation.restarts, 3);
    assert!(
        escalation.last_failure.contains("asked to crash"),
        "{}",
        escalation.last_failure
    );
    assert!(
        escalation.to_string().contains("actor b failed 3 times"),
        "{escalation}"
    );
    assert_eq!(b.get_status(), ActorStatus::Stopped);
    // The siblings were stopped in reverse boot order.
    let stopped = h.stopped.lock().unwrap().clone();
    assert_eq!(&stopped[stopped.len() - 2..], ["c", "a"]);
    assert_eq!(
        h.metrics
            .actor_restarts_total
            .with_label_values(&["b"])
            .get(),
        2
    );
}

#[tokio::test]
async fn shutdown_stops_children_in_reverse_boot_order() {
    let h = start(&["first", "second", "third"], 5).await;
    let order = h
        .supervisor
        .call(
            NodeSupervisorMessage::Shutdown,
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order, ["third", "second", "first"]);
    assert_eq!(*h.stopped.lock().unwrap(), ["third", "second", "first"]);
    tokio::time::timeout(Duration::from_secs(5), h.done)
        .await
        .expect("supervisor stops")
        .unwrap();
    assert!(
        h.outcome.escalation().is_none(),
        "a requested shutdown is not an escalation"
    );
    assert_eq!(
        h.metrics
            .actor_restarts_total
            .with_label_values(&["first"])
            .get(),
        0,
        "stopping is not a restart"
    );
}
