//! The supervised services of a grokforge node and what they share.
//!
//! * [`node`] — boots a node in dependency order and shuts it down in reverse.
//! * [`supervisor`] — `NodeSupervisor`: one-for-one restarts under the same name, exponential
//!   backoff, OTP restart intensity that escalates a storm into a node exit.
//! * [`services`] — one actor per file: ModelService, TrainingService, MonitoringService,
//!   WebSocketHub, Discovery, and RedisBridge in a cluster.
//! * [`alerts`] — alert rules with Alertmanager's semantics (`for`, one alert per incident,
//!   resolved when it clears), evaluated by the MonitoringService; [`webhooks`] delivers them.
//! * [`bus`] and [`events`] — the `Event` vocabulary, its envelope and wire encodings, and the
//!   local EventBus with bounded per-subscriber queues.
//! * [`cluster`] — what nodes say to each other through Redis: signed frames (HMAC-SHA256 under
//!   the cluster secret), their checks, and the duplicate window. The RedisBridge and Discovery
//!   services carry them.
//! * [`directory`] — how services find each other across restarts; request/reply with a
//!   deadline.
//! * [`health`] — checks aggregated over the seed's dependency graph.
//! * [`resilience`] — circuit breaker and retry with an injectable clock.
//! * [`metrics`] — the node's Prometheus registry and the internal events that feed it.

pub mod aggregate;
pub mod alerts;
pub mod bus;
pub mod cluster;
pub mod directory;
pub mod events;
pub mod health;
pub mod metrics;
pub mod node;
pub mod resilience;
pub mod services;
pub mod supervisor;
pub mod webhooks;

// The gateway speaks in the storage's and the training core's types (job records, phases,
// train specs) without depending on those crates itself.
pub use grokforge_storage as storage;
pub use grokforge_training_core as training_core;

pub use directory::{CallError, ServiceDirectory, names};
pub use events::{Event, EventEnvelope, HealthState, Topic};
pub use metrics::NodeMetrics;
pub use node::{BootError, Node};
