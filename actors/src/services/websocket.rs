//! `WebSocketHub`: will map topics to WebSocket subscribers with bounded per-connection
//! queues. Until the WebSocket endpoint exists it answers liveness probes only.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Pingable;

pub struct WebSocketHub;

pub enum WebSocketHubMessage {
    Ping(RpcReplyPort<()>),
}

impl Pingable for WebSocketHubMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        WebSocketHubMessage::Ping(reply)
    }
}

pub struct Arguments;

pub struct WebSocketHubState;

impl Actor for WebSocketHub {
    type Msg = WebSocketHubMessage;
    type State = WebSocketHubState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _arguments: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WebSocketHubState)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WebSocketHubMessage::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
