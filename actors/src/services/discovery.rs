//! `Discovery`: which nodes make up the cluster. Alone (no broker configured) the answer is
//! this node; the Redis heartbeat registry joins it when clustering arrives.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::Pingable;

pub struct Discovery;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    pub node_id: String,
    pub name: String,
    pub version: String,
    pub address: Option<String>,
    pub started_at: DateTime<Utc>,
}

pub enum DiscoveryMessage {
    Ping(RpcReplyPort<()>),
    /// The live nodes of the cluster.
    ListNodes(RpcReplyPort<Vec<NodeInfo>>),
}

impl Pingable for DiscoveryMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        DiscoveryMessage::Ping(reply)
    }
}

pub struct Arguments {
    pub this_node: NodeInfo,
    /// Filled by the gateway once it has bound its port; shared so a restarted Discovery
    /// still knows it.
    pub address: Arc<OnceLock<String>>,
}

pub struct DiscoveryState {
    this_node: NodeInfo,
    address: Arc<OnceLock<String>>,
}

impl Actor for Discovery {
    type Msg = DiscoveryMessage;
    type State = DiscoveryState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        arguments: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DiscoveryState {
            this_node: arguments.this_node,
            address: arguments.address,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DiscoveryMessage::Ping(reply) => {
                let _ = reply.send(());
            }
            DiscoveryMessage::ListNodes(reply) => {
                let mut this_node = state.this_node.clone();
                this_node.address = state.address.get().cloned();
                let _ = reply.send(vec![this_node]);
            }
        }
        Ok(())
    }
}
