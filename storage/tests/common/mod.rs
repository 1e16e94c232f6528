//! The one test body, run on both databases: `on_both!(body_fn, …)` makes a module per body
//! with a `sqlite` and a `postgres` test that call `body_fn(database, artifacts_dir)`.

#![allow(dead_code)]

use grokforge_storage::{ArtifactStore, Database, ModelRegistry, NewModel, NewModelFile};
use std::path::PathBuf;

#[macro_export]
macro_rules! on_both {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use grokforge_storage::testing::{TestBackend, run_on};

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    run_on(TestBackend::Sqlite, super::$body).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    run_on(TestBackend::Postgres, super::$body).await;
                }
            }
        )*
    };
}

pub fn registry(db: Database, artifacts: PathBuf) -> ModelRegistry {
    ModelRegistry::new(db, ArtifactStore::new(artifacts))
}

/// Weights whose bytes differ per name, so checksums differ too.
pub fn weights(seed: &str, len: usize) -> Vec<u8> {
    seed.bytes().cycle().take(len).collect()
}

pub fn new_model(name: &str, phase: &str) -> NewModel {
    NewModel {
        name: name.to_owned(),
        phase: phase.to_owned(),
        parent_ids: Vec::new(),
        job_id: None,
        format: "burn-mpk".to_owned(),
        config: serde_json::json!({"d_model": 128, "n_layers": 2}),
        metrics: serde_json::json!({"val_accuracy": 0.99}),
        tags: Vec::new(),
        files: vec![
            NewModelFile::new("model.mpk", weights(name, 3000)),
            NewModelFile::new("model.safetensors", weights(&format!("st-{name}"), 2000)),
        ],
    }
}
