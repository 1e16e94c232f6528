//! The services a node supervises, one actor per file.

pub mod datasets;
pub mod discovery;
pub mod job_worker;
pub mod model;
pub mod monitoring;
pub mod redis_bridge;
pub mod training;
pub mod websocket;

use ractor::{Message, RpcReplyPort};

/// A message type that can carry a liveness probe: the health check sends it and waits, with a
/// deadline, for the actor to answer from its mailbox (so a wedged handler shows up).
pub trait Pingable: Message {
    fn ping(reply: RpcReplyPort<()>) -> Self;
}
