//! `NodeSupervisor`: starts a node's services in dependency order and keeps them alive.
//!
//! Supervision is written out rather than left to ractor's default (which stops the parent
//! when a child dies):
//!
//! * one-for-one: only the child that died is restarted, under the same name, and the
//!   [`ServiceDirectory`] entry is pointed at the new actor;
//! * restarts are delayed by an exponential backoff (`initial · 2^(n-1)`, capped), where `n`
//!   counts the child's restarts inside the intensity period;
//! * OTP intensity: more than `intensity` restarts of one child within `period` is a storm
//!   the node cannot absorb. The supervisor then stops the remaining children in reverse boot
//!   order, records an [`Escalation`] naming the child and its last failure, and stops; the
//!   binary turns that into a non-zero exit.
//!
//! Every restart is logged and counted (`grokforge_actor_restarts_total{actor}`).
//!
//! Time is tokio's clock, so tests can pause and advance it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use tokio::time::Instant;

use crate::directory::ServiceDirectory;
use crate::metrics::{ActorRestarted, NodeMetrics};

pub type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// How to (re)start one child: `spawn(registered_name, supervisor)` must spawn the actor
/// linked to `supervisor` under `registered_name`.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: &'static str,
    pub spawn: Arc<dyn Fn(String, ActorCell) -> SpawnFuture + Send + Sync>,
}

impl ChildSpec {
    pub fn new<A, F>(name: &'static str, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        ChildSpec {
            name,
            spawn: Arc::new(move |registered, supervisor| {
                let (actor, arguments) = make();
                Box::pin(async move {
                    let (actor_ref, _join) =
                        Actor::spawn_linked(Some(registered), actor, arguments, supervisor).await?;
                    Ok(actor_ref.get_cell())
                })
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// At most this many restarts of one child within `period`; one more escalates.
    pub intensity: u32,
    pub period: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long the children get to stop during shutdown or escalation, all of them together
    /// (stopped one after the other, each with what is left).
    pub stop_timeout: Duration,
}

impl RestartPolicy {
    fn backoff(&self, restarts_in_period: usize) -> Duration {
        let exponent = restarts_in_period.saturating_sub(1).min(20) as u32;
        self.backoff_initial
            .saturating_mul(1 << exponent)
            .min(self.backoff_max)
    }
}

/// Why a supervisor gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub actor: &'static str,
    pub restarts: usize,
    pub period: Duration,
    pub last_failure: String,
}

impl std::fmt::Display for Escalation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "actor {} failed {} times within {:?} (restart intensity exceeded); last failure: {}",
            self.actor, self.restarts, self.period, self.last_failure
        )
    }
}

/// What the supervisor reports to whoever started it.
#[derive(Clone, Default)]
pub struct SupervisorOutcome {
    escalation: Arc<Mutex<Option<Escalation>>>,
}

impl SupervisorOutcome {
    pub fn escalation(&self) -> Option<Escalation> {
        self.escalation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, escalation: Escalation) {
        *self.escalation.lock().unwrap_or_else(|e| e.into_inner()) = Some(escalation);
    }
}

pub struct NodeSupervisor;

pub enum NodeSupervisorMessage {
    /// Internal: the backoff of a dead child has elapsed.
    Restart { name: &'static str },
    /// Stop every child in reverse boot order; replies with the order used.
    Shutdown(RpcReplyPort<Vec<&'static str>>),
    /// The children and their restart counts.
    Children(RpcReplyPort<Vec<ChildStatus>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    pub name: &'static str,
    pub running: bool,
    pub total_restarts: u64,
}

pub struct Arguments {
    /// Prefix of the registered actor names, so two nodes in one process do not collide.
    pub scope: String,
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    pub directory: ServiceDirectory,
    pub metrics: NodeMetrics,
    pub outcome: SupervisorOutcome,
}

struct ChildSlot {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    restarts: VecDeque<Instant>,
    total_restarts: u64,
    last_failure: String,
}

pub struct NodeSupervisorState {
    scope: String,
    children: Vec<ChildSlot>,
    policy: RestartPolicy,
    directory: ServiceDirectory,
    metrics: NodeMetrics,
    outcome: SupervisorOutcome,
    stopping: bool,
}

impl NodeSupervisorState {
    fn registered_name(&self, name: &str) -> String {
        format!("{}/{}", self.scope, name)
    }

    fn slot_of(&self, cell: &ActorCell) -> Option<usize> {
        let id = cell.get_id();
        self.children
            .iter()
            .position(|slot| slot.cell.as_ref().is_some_and(|c| c.get_id() == id))
    }

    async fn spawn_child(&mut self, index: usize, supervisor: &ActorCell) -> Result<(), SpawnErr> {
        let spec = self.children[index].spec.clone();
        let cell = (spec.spawn)(self.registered_name(spec.name), supervisor.clone()).await?;
        self.directory.insert(spec.name, cell.clone());
        self.children[index].cell = Some(cell);
        Ok(())
    }

    /// Stops the running children in reverse boot order, each with a deadline.
    async fn stop_children(&mut self, reason: &str) -> Vec<&'static str> {
        self.stopping = true;
        let mut order = Vec::new();
        let until = tokio::time::Instant::now() + self.policy.stop_timeout;
        for slot in self.children.iter_mut().rev() {
            let Some(cell) = slot.cell.take() else {
                continue;
            };
            tracing::info!(actor = slot.spec.name, "stopping");
            let left = until
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(1));
            if cell
                .stop_and_wait(Some(reason.to_string()), Some(left))
                .await
                .is_err()
            {
                tracing::warn!(actor = slot.spec.name, "did not stop in time; killing");
                cell.kill();
            }
            self.directory.remove(slot.spec.name);
            order.push(slot.spec.name);
        }
        order
    }

    /// Records a death of child `index`. Returns the backoff before its restart, or the
    /// escalation when the restart intensity is exceeded.
    fn record_failure(&mut self, index: usize, reason: String) -> Result<Duration, Escalation> {
        let now = Instant::now();
        let period = self.policy.period;
        let slot = &mut self.children[index];
        slot.cell = None;
        slot.last_failure = reason;
        slot.restarts.push_back(now);
        while slot
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            slot.restarts.pop_front();
        }
        if slot.restarts.len() > self.policy.intensity as usize {
            return Err(Escalation {
                actor: slot.spec.name,
                restarts: slot.restarts.len(),
                period,
                last_failure: slot.last_failure.clone(),
            });
        }
        slot.total_restarts += 1;
        let backoff = self.policy.backoff(slot.restarts.len());
        ActorRestarted {
            actor: slot.spec.name,
            reason: &slot.last_failure,
            restarts_in_period: slot.restarts.len(),
            backoff_ms: backoff.as_millis(),
        }
        .emit(&self.metrics);
        Ok(backoff)
    }

    async fn escalate(&mut self, myself: &ActorRef<NodeSupervisorMessage>, escalation: Escalation) {
        tracing::error!(
            actor = escalation.actor,
            restarts = escalation.restarts,
            period_ms = escalation.period.as_millis() as u64,
            last_failure = %escalation.last_failure,
            "restart intensity exceeded; shutting the node down"
        );
        let reason = escalation.to_string();
        self.outcome.set(escalation);
        self.stop_children("node supervisor escalated a restart storm")
            .await;
        myself.stop(Some(reason));
    }

    async fn handle_death(
        &mut self,
        myself: &ActorRef<NodeSupervisorMessage>,
        index: usize,
        reason: String,
    ) {
        match self.record_failure(index, reason) {
            Ok(backoff) => {
                let name = self.children[index].spec.name;
                myself.send_after(backoff, move || NodeSupervisorMessage::Restart { name });
            }
            Err(escalation) => self.escalate(myself, escalation).await,
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMessage;
    type State = NodeSupervisorState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = NodeSupervisorState {
            scope: args.scope,
            children: args
                .children
                .into_iter()
                .map(|spec| ChildSlot {
                    spec,
                    cell: None,
                    restarts: VecDeque::new(),
                    total_restarts: 0,
                    last_failure: String::new(),
                })
                .collect(),
            policy: args.policy,
            directory: args.directory,
            metrics: args.metrics,
            outcome: args.outcome,
            stopping: false,
        };
        // Boot in dependency order; a child that cannot start at boot fails the node's start
        // (with the child named) instead of entering a restart loop before anyone is listening.
        for index in 0..state.children.len() {
            let name = state.children[index].spec.name;
            if let Err(error) = state.spawn_child(index, &myself.get_cell()).await {
                state.stop_children("boot failed").await;
                return Err(format!("{name} failed to start: {error}").into());
            }
            tracing::info!(actor = name, "started");
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeSupervisorMessage::Restart { name } => {
                if state.stopping {
                    return Ok(());
                }
                let Some(index) = state.children.iter().position(|s| s.spec.name == name) else {
                    return Ok(());
                };
                match state.spawn_child(index, &myself.get_cell()).await {
                    Ok(()) => tracing::info!(actor = name, "restarted"),
                    Err(error) => {
                        state
                            .handle_death(&myself, index, format!("restart failed: {error}"))
                            .await
                    }
                }
            }
            NodeSupervisorMessage::Shutdown(reply) => {
                let order = state.stop_children("node shutting down").await;
                let _ = reply.send(order);
                myself.stop(Some("node shut down".into()));
            }
            NodeSupervisorMessage::Children(reply) => {
                let children = state
                    .children
                    .iter()
                    .map(|slot| ChildStatus {
                        name: slot.spec.name,
                        running: slot.cell.is_some(),
                        total_restarts: slot.total_restarts,
                    })
                    .collect();
                let _ = reply.send(children);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, format!("failed: {error}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "stopped: {}",
                    reason.as_deref().unwrap_or("no reason given")
                ),
            ),
            _ => return Ok(()),
        };
        // Events of an actor we already replaced (or never knew) are stale.
        let Some(index) = state.slot_of(&cell) else {
            return Ok(());
        };
        state.directory.remove(state.children[index].spec.name);
        state.handle_death(&myself, index, reason).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RestartPolicy {
            intensity: 5,
            period: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            stop_timeout: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=5).map(|n| policy.backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }
}
