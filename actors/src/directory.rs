//! Where a node's services find each other.
//!
//! A restarted actor is a new actor behind the same name, so holding an `ActorRef` across a
//! restart would mean talking to the dead one. Services therefore look each other up here on
//! every call; the supervisor updates the entry each time it (re)spawns a child. The directory
//! is per node rather than ractor's process-global registry, so several nodes can live in one
//! test process.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, Message, RpcReplyPort};

/// The names of a node's services, in boot order.
pub mod names {
    pub const EVENT_BUS: &str = "event_bus";
    /// Only in a cluster (`broker.url` set).
    pub const REDIS_BRIDGE: &str = "redis_bridge";
    pub const MODEL_SERVICE: &str = "model_service";
    pub const DATASET_SERVICE: &str = "dataset_service";
    pub const TRAINING_SERVICE: &str = "training_service";
    pub const MONITORING_SERVICE: &str = "monitoring_service";
    pub const WEBSOCKET_HUB: &str = "websocket_hub";
    pub const DISCOVERY: &str = "discovery";
}

#[derive(Clone, Default)]
pub struct ServiceDirectory {
    // std RwLock: lookups are a hash-map read, never held across an await.
    entries: Arc<RwLock<HashMap<&'static str, ActorCell>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("service {service} is not running")]
    Unavailable { service: &'static str },
    #[error("service {service} did not answer within {timeout_ms} ms")]
    Timeout {
        service: &'static str,
        timeout_ms: u128,
    },
    #[error("service {service} dropped the request")]
    Dropped { service: &'static str },
}

impl ServiceDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, name: &'static str, cell: ActorCell) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, cell);
    }

    pub fn remove(&self, name: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    pub fn cell(&self, name: &str) -> Option<ActorCell> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The live actor behind `name`, typed. `M` must be the actor's message type; a mismatch
    /// shows up as a failed send, never as a wrong delivery.
    pub fn get<M: Message>(&self, name: &str) -> Option<ActorRef<M>> {
        self.cell(name).map(ActorRef::from)
    }

    /// Request/reply with a deadline: the one way services and the gateway call each other.
    pub async fn call<M, R, F>(
        &self,
        service: &'static str,
        build: F,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        M: Message,
        R: Send + 'static,
        F: FnOnce(RpcReplyPort<R>) -> M,
    {
        let actor = self
            .get::<M>(service)
            .ok_or(CallError::Unavailable { service })?;
        match actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(CallError::Timeout {
                service,
                timeout_ms: timeout.as_millis(),
            }),
            Ok(CallResult::SenderError) => Err(CallError::Dropped { service }),
            Err(_) => Err(CallError::Unavailable { service }),
        }
    }

    /// Fire-and-forget to a service; `false` when it is not running.
    pub fn cast<M: Message>(&self, service: &'static str, message: M) -> bool {
        self.get::<M>(service)
            .is_some_and(|actor| actor.cast(message).is_ok())
    }
}
