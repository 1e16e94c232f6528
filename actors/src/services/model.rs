//! `ModelService`: owns the model registry's storage. For now it opens and owns the artifact
//! directory next to the metadata database and answers liveness probes; the registry
//! operations (save, list, export) arrive with the registry.

use std::path::PathBuf;

use grokforge_storage::Database;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Pingable;
use crate::bus::Publisher;

pub struct ModelService;

pub enum ModelServiceMessage {
    Ping(RpcReplyPort<()>),
}

impl Pingable for ModelServiceMessage {
    fn ping(reply: RpcReplyPort<()>) -> Self {
        ModelServiceMessage::Ping(reply)
    }
}

#[derive(Clone)]
pub struct Arguments {
    pub database: Database,
    pub artifacts_dir: PathBuf,
    pub publisher: Publisher,
}

pub struct ModelServiceState {
    #[allow(dead_code)] // used by the registry operations
    arguments: Arguments,
}

impl Actor for ModelService {
    type Msg = ModelServiceMessage;
    type State = ModelServiceState;
    type Arguments = Arguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        arguments: Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        tokio::fs::create_dir_all(&arguments.artifacts_dir)
            .await
            .map_err(|e| {
                format!(
                    "cannot create artifacts dir {}: {e}",
                    arguments.artifacts_dir.display()
                )
            })?;
        Ok(ModelServiceState { arguments })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ModelServiceMessage::Ping(reply) => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
