//! `TrainingService`: will own the durable job queue and its workers. Until the job queue
//! exists it answers liveness probes only; it accepts no work it could not do.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Pingable;
use crate::bus::Publisher;

pub struct TrainingService;

pub enum TrainingServiceMessage {
    Ping(RpcReplyPort<()>),
    /// Test hook for supervision: the handler panics, as a bug in a handler would.
    #[doc(hidden)]
    Crash(String),
}

impl Pingable for TrainingServiceMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        TrainingServiceMessage::Ping(reply)
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub max_concurrent_jobs: usize,
    pub publisher: Publisher,
}

pub struct TrainingServiceState {
    #[allow(dead_code)] // used by the job queue
    arguments: Arguments,
}

impl Actor for TrainingService {
    type Msg = TrainingServiceMessage;
    type State = TrainingServiceState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        arguments: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TrainingServiceState { arguments })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TrainingServiceMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            TrainingServiceMessage::Crash(why) => panic!("{why}"),
        }
        Ok(())
    }
}
