//! The events a node publishes, and the envelope they travel in.
//!
//! `Event` is the one vocabulary shared by the bus, the Redis bridge, the job event log and the
//! WebSocket protocol. On the wire an event is adjacently tagged, `{"type": "training_progress",
//! "data": {...}}`, with snake_case names. Every event travels inside an [`EventEnvelope`] that
//! says who sent it, when, and — for job events — its per-job sequence number, so a client that
//! reconnects can ask for what it missed.
//!
//! The envelope carries [`SCHEMA_VERSION`]; a reader rejects an envelope from a newer major
//! schema instead of guessing at its meaning.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the envelope and event schema. Bump on any change a reader of the previous
/// version would misread.
pub const SCHEMA_VERSION: u16 = 1;

/// The step at which a run's loss stopped being a number, and what it was.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Divergence {
    /// The 1-based step whose loss was not finite.
    pub step: u64,
    /// `"NaN"`, `"Infinity"` or `"-Infinity"`.
    #[serde(with = "non_finite")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub loss: f64,
}

/// An `f64` that may be NaN or infinite: JSON has no such numbers (serde_json would write
/// `null` and then fail to read it back), so those travel as the strings JavaScript's
/// `Number()` parses.
pub mod non_finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if *value > 0.0 {
            serializer.serialize_str("Infinity")
        } else {
            serializer.serialize_str("-Infinity")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Number(f64),
            Text(String),
        }
        match Wire::deserialize(deserializer)? {
            Wire::Number(value) => Ok(value),
            Wire::Text(text) => match text.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"NaN\", \"Infinity\" or \"-Infinity\", got {other:?}"
                ))),
            },
        }
    }
}

/// Health of one service, as reported by checks and carried in `ServiceHealthChanged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// Ordered: `info` < `warning` < `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    Info,
    Warning,
    Critical,
}

impl AlertSeverity {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSeverity::Info => "info",
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }

    pub fn parse(name: &str) -> Option<AlertSeverity> {
        [
            AlertSeverity::Info,
            AlertSeverity::Warning,
            AlertSeverity::Critical,
        ]
        .into_iter()
        .find(|severity| severity.as_str() == name)
    }
}

/// Everything that happens on a node that someone outside the emitting actor may care about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// A job is waiting in the queue: just started, or handed back by a node that shut down.
    /// Idle nodes claim it at once instead of at their next poll.
    JobQueued {
        job_id: Uuid,
        phase: String,
    },
    TrainingStarted {
        job_id: Uuid,
        phase: String,
        attempt: u32,
    },
    TrainingProgress {
        job_id: Uuid,
        variant: u32,
        step: u64,
        total_steps: u64,
        /// A number; `"NaN"`, `"Infinity"` or `"-Infinity"` when the node trains on through a
        /// divergence (`training.stop_on_divergence = false`).
        #[serde(with = "non_finite")]
        loss: f64,
        accuracy: Option<f64>,
        val_loss: Option<f64>,
        val_accuracy: Option<f64>,
        learning_rate: f64,
        steps_per_second: f64,
    },
    CheckpointSaved {
        job_id: Uuid,
        variant: u32,
        step: u64,
        sha256: String,
    },
    TrainingCompleted {
        job_id: Uuid,
        model_ids: Vec<Uuid>,
        winner: Option<Uuid>,
    },
    TrainingFailed {
        job_id: Uuid,
        attempt: u32,
        error: String,
        /// Whether the job goes back to the queue for another attempt; `false` when it failed
        /// for good (attempts used up, or a run that would fail the same way again).
        #[serde(default)]
        will_retry: bool,
        /// Set when the attempt stopped because its loss was no longer finite.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        divergence: Option<Divergence>,
    },
    TrainingCancelled {
        job_id: Uuid,
        step: u64,
    },
    /// A cancel of a running job was recorded; the node that runs it stops at its next step
    /// (and reports `training_cancelled`) without waiting for its next lease renewal.
    CancelRequested {
        job_id: Uuid,
    },
    ModelSaved {
        model_id: Uuid,
        name: String,
        phase: String,
        version: u32,
        sha256: String,
        job_id: Option<Uuid>,
    },
    ModelHandoff {
        from_phase: String,
        to_phase: String,
        model_ids: Vec<Uuid>,
    },
    ServiceHealthChanged {
        service: String,
        from: Option<HealthState>,
        to: HealthState,
        reason: Option<String>,
    },
    /// An alert fired (see [`crate::alerts`]).
    AlertRaised(crate::alerts::Alert),
    /// A firing alert's condition cleared.
    AlertResolved(crate::alerts::Alert),
    NodeJoined {
        node_id: String,
        address: Option<String>,
    },
    NodeLeft {
        node_id: String,
        reason: String,
    },
}

/// Where subscribers look for events. Every event belongs to one broad topic; job events also
/// belong to their job's own topic (`job:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Topic {
    TrainingUpdates,
    ModelUpdates,
    AdminAlerts,
    Health,
    Job(Uuid),
    /// Between the nodes' services only (`job_queued`, `cancel_requested`): carried by the bus
    /// and the bridge, never offered to clients (it does not parse).
    Coordination,
}

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, String> {
        match s {
            "training_updates" => Ok(Topic::TrainingUpdates),
            "model_updates" => Ok(Topic::ModelUpdates),
            "admin_alerts" => Ok(Topic::AdminAlerts),
            "health" => Ok(Topic::Health),
            other => match other.strip_prefix("job:") {
                Some(id) => Uuid::parse_str(id)
                    .map(Topic::Job)
                    .map_err(|_| format!("topic `{other}`: `{id}` is not a job id (a UUID)")),
                None => Err(format!(
                    "unknown topic `{other}`; expected training_updates, model_updates, \
                     admin_alerts, health or job:{{id}}"
                )),
            },
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::TrainingUpdates => f.write_str("training_updates"),
            Topic::ModelUpdates => f.write_str("model_updates"),
            Topic::AdminAlerts => f.write_str("admin_alerts"),
            Topic::Health => f.write_str("health"),
            Topic::Job(id) => write!(f, "job:{id}"),
            Topic::Coordination => f.write_str("coordination"),
        }
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for Topic {
    type Error = String;
    fn try_from(s: String) -> Result<Topic, String> {
        Topic::parse(&s)
    }
}

impl Event {
    /// The wire name of the event (`training_progress`), also used as a metric label: the set
    /// is closed, so the label stays bounded.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::JobQueued { .. } => "job_queued",
            Event::TrainingStarted { .. } => "training_started",
            Event::TrainingProgress { .. } => "training_progress",
            Event::CheckpointSaved { .. } => "checkpoint_saved",
            Event::TrainingCompleted { .. } => "training_completed",
            Event::TrainingFailed { .. } => "training_failed",
            Event::TrainingCancelled { .. } => "training_cancelled",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::ModelSaved { .. } => "model_saved",
            Event::ModelHandoff { .. } => "model_handoff",
            Event::ServiceHealthChanged { .. } => "service_health_changed",
            Event::AlertRaised(_) => "alert_raised",
            Event::AlertResolved(_) => "alert_resolved",
            Event::NodeJoined { .. } => "node_joined",
            Event::NodeLeft { .. } => "node_left",
        }
    }

    /// Whether the Redis bridge sends the event to the other nodes. Membership changes are not
    /// sent: every node's discovery sees them for itself, and each would otherwise reach a
    /// client once per node.
    pub fn is_cluster_wide(&self) -> bool {
        !matches!(self, Event::NodeJoined { .. } | Event::NodeLeft { .. })
    }

    /// The job this event belongs to, if any.
    pub fn job_id(&self) -> Option<Uuid> {
        match self {
            Event::JobQueued { job_id, .. }
            | Event::TrainingStarted { job_id, .. }
            | Event::TrainingProgress { job_id, .. }
            | Event::CheckpointSaved { job_id, .. }
            | Event::TrainingCompleted { job_id, .. }
            | Event::TrainingFailed { job_id, .. }
            | Event::TrainingCancelled { job_id, .. }
            | Event::CancelRequested { job_id } => Some(*job_id),
            Event::ModelSaved { job_id, .. } => *job_id,
            _ => None,
        }
    }

    /// The broad topic of the event.
    pub fn topic(&self) -> Topic {
        match self {
            Event::TrainingStarted { .. }
            | Event::TrainingProgress { .. }
            | Event::CheckpointSaved { .. }
            | Event::TrainingCompleted { .. }
            | Event::TrainingFailed { .. }
            | Event::TrainingCancelled { .. } => Topic::TrainingUpdates,
            Event::JobQueued { .. } | Event::CancelRequested { .. } => Topic::Coordination,
            Event::ModelSaved { .. } | Event::ModelHandoff { .. } => Topic::ModelUpdates,
            Event::AlertRaised(_) | Event::AlertResolved(_) => Topic::AdminAlerts,
            Event::ServiceHealthChanged { .. }
            | Event::NodeJoined { .. }
            | Event::NodeLeft { .. } => Topic::Health,
        }
    }

    /// The `job:{id}` topic of the event: the training events of one job, which are exactly
    /// the events of its durable log, so a subscriber can replay them with `since`. (A
    /// `model_saved` names its job too, but the model service publishes it outside the log.)
    pub fn job_topic(&self) -> Option<Topic> {
        match self.topic() {
            Topic::TrainingUpdates => self.job_id().map(Topic::Job),
            _ => None,
        }
    }

    /// Whether a subscriber of `topic` receives this event.
    pub fn belongs_to(&self, topic: &Topic) -> bool {
        match topic {
            Topic::Job(_) => self.job_topic().as_ref() == Some(topic),
            broad => &self.topic() == broad,
        }
    }
}

/// An event with its provenance. This is what the bus carries, what the Redis bridge signs and
/// what the job event log stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventEnvelope {
    pub schema_version: u16,
    /// UUIDv7: unique and ordered by creation time, so logs sort naturally.
    pub id: Uuid,
    /// Per-job sequence number, assigned by the job event log; `None` for events of no job.
    pub seq: Option<u64>,
    pub source_node: String,
    pub source_service: String,
    pub timestamp: DateTime<Utc>,
    pub event: Event,
}

impl EventEnvelope {
    pub fn new(
        source_node: impl Into<String>,
        source_service: impl Into<String>,
        event: Event,
    ) -> Self {
        EventEnvelope {
            schema_version: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            seq: None,
            source_node: source_node.into(),
            source_service: source_service.into(),
            timestamp: Utc::now(),
            event,
        }
    }

    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    pub fn to_json(&self) -> Result<String, WireError> {
        serde_json::to_string(self).map_err(|e| WireError::Encode(e.to_string()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, WireError> {
        let envelope: EventEnvelope =
            serde_json::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
        envelope.check_version()
    }

    /// MessagePack with field names, so a reader of a later minor schema can skip fields it
    /// does not know instead of misreading positions.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, WireError> {
        rmp_serde::to_vec_named(self).map_err(|e| WireError::Encode(e.to_string()))
    }

    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, WireError> {
        let envelope: EventEnvelope =
            rmp_serde::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
        envelope.check_version()
    }

    fn check_version(self) -> Result<Self, WireError> {
        if self.schema_version > SCHEMA_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("cannot encode event: {0}")]
    Encode(String),
    #[error("malformed event: {0}")]
    Decode(String),
    #[error("event schema version {found} is newer than the supported {supported}")]
    UnsupportedVersion { found: u16, supported: u16 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        let job_id = Uuid::now_v7();
        vec![
            Event::JobQueued {
                job_id,
                phase: "cognate".into(),
            },
            Event::TrainingStarted {
                job_id,
                phase: "cognate".into(),
                attempt: 1,
            },
            Event::TrainingProgress {
                job_id,
                variant: 2,
                step: 120,
                total_steps: 1000,
                loss: 1.25,
                accuracy: Some(0.5),
                val_loss: None,
                val_accuracy: Some(0.25),
                learning_rate: 1e-3,
                steps_per_second: 21.5,
            },
            Event::CheckpointSaved {
                job_id,
                variant: 0,
                step: 100,
                sha256: "ab".repeat(32),
            },
            Event::TrainingCompleted {
                job_id,
                model_ids: vec![Uuid::now_v7()],
                winner: None,
            },
            Event::TrainingFailed {
                job_id,
                attempt: 3,
                error: "loss is not finite at step 7 (loss = NaN)".into(),
                will_retry: false,
                divergence: Some(Divergence {
                    step: 7,
                    loss: 1e40,
                }),
            },
            Event::TrainingCancelled { job_id, step: 9 },
            Event::CancelRequested { job_id },
            Event::ModelSaved {
                model_id: Uuid::now_v7(),
                name: "cognate-a".into(),
                phase: "cognate".into(),
                version: 2,
                sha256: "00".repeat(32),
                job_id: Some(job_id),
            },
            Event::ModelHandoff {
                from_phase: "cognate".into(),
                to_phase: "evomerge".into(),
                model_ids: vec![Uuid::now_v7(), Uuid::now_v7()],
            },
            Event::ServiceHealthChanged {
                service: "model".into(),
                from: Some(HealthState::Healthy),
                to: HealthState::Unhealthy,
                reason: Some("database: connection refused".into()),
            },
            Event::AlertRaised(crate::alerts::Alert {
                id: Uuid::now_v7(),
                rule: "restart_storm".into(),
                severity: AlertSeverity::Critical,
                labels: [("actor".to_string(), "model_service".to_string())].into(),
                summary: "model_service restarted 5 times".into(),
                started_at: Utc::now(),
                resolved_at: None,
            }),
            Event::AlertResolved(crate::alerts::Alert {
                id: Uuid::now_v7(),
                rule: "node_left".into(),
                severity: AlertSeverity::Warning,
                labels: [("node".to_string(), "n2".to_string())].into(),
                summary: "node n2 left".into(),
                started_at: Utc::now(),
                resolved_at: Some(Utc::now()),
            }),
            Event::NodeJoined {
                node_id: "n1".into(),
                address: Some("127.0.0.1:8080".into()),
            },
            Event::NodeLeft {
                node_id: "n1".into(),
                reason: "heartbeat expired".into(),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_json_and_msgpack() {
        for event in samples() {
            let envelope = EventEnvelope::new("node-a", "training", event).with_seq(42);
            let json = envelope.to_json().unwrap();
            assert_eq!(
                EventEnvelope::from_json(json.as_bytes()).unwrap(),
                envelope,
                "{json}"
            );
            let packed = envelope.to_msgpack().unwrap();
            assert_eq!(EventEnvelope::from_msgpack(&packed).unwrap(), envelope);
        }
    }

    #[test]
    fn wire_names_are_snake_case_and_match_kind() {
        for event in samples() {
            let value = serde_json::to_value(&event).unwrap();
            assert_eq!(value["type"], event.kind());
            assert!(value.get("data").is_some());
        }
        let envelope = EventEnvelope::new("n", "s", samples().remove(2));
        let value: serde_json::Value = serde_json::from_str(&envelope.to_json().unwrap()).unwrap();
        assert_eq!(value["event"]["type"], "training_progress");
        assert_eq!(value["schema_version"], SCHEMA_VERSION);
        assert_eq!(
            Uuid::parse_str(value["id"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            7
        );
    }

    #[test]
    fn a_loss_that_is_not_a_number_survives_json_and_msgpack() {
        let job_id = Uuid::now_v7();
        for loss in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let event = Event::TrainingFailed {
                job_id,
                attempt: 1,
                error: "diverged".into(),
                will_retry: false,
                divergence: Some(Divergence { step: 7, loss }),
            };
            let progress = Event::TrainingProgress {
                job_id,
                variant: 0,
                step: 7,
                total_steps: 10,
                loss,
                accuracy: None,
                val_loss: None,
                val_accuracy: None,
                learning_rate: 1.0,
                steps_per_second: 1.0,
            };
            for event in [event, progress] {
                let envelope = EventEnvelope::new("n", "s", event);
                let json = envelope.to_json().unwrap();
                let back = EventEnvelope::from_json(json.as_bytes()).unwrap();
                let packed = EventEnvelope::from_msgpack(&envelope.to_msgpack().unwrap()).unwrap();
                for read in [back, packed] {
                    let found = match read.event {
                        Event::TrainingFailed { divergence, .. } => divergence.unwrap().loss,
                        Event::TrainingProgress { loss, .. } => loss,
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(found.to_bits(), loss.to_bits(), "{json}");
                }
            }
        }
        let wrong = r#"{"type":"training_progress","data":{"job_id":"00000000-0000-0000-0000-000000000000","variant":0,"step":1,"total_steps":1,"loss":"many","accuracy":null,"val_loss":null,"val_accuracy":null,"learning_rate":1.0,"steps_per_second":1.0}}"#;
        let error = serde_json::from_str::<Event>(wrong)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"many\""), "{error}");
    }

    #[test]
    fn newer_schema_and_garbage_are_refused() {
        let mut envelope = EventEnvelope::new("n", "s", samples().remove(0));
        envelope.schema_version = SCHEMA_VERSION + 1;
        let packed = rmp_serde::to_vec_named(&envelope).unwrap();
        assert!(matches!(
            EventEnvelope::from_msgpack(&packed),
            Err(WireError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            EventEnvelope::from_msgpack(b"\xc1\x00junk"),
            Err(WireError::Decode(_))
        ));
        assert!(matches!(
            EventEnvelope::from_json(b"{\"id\": 3}"),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn topics_parse_print_and_route() {
        let job = Uuid::now_v7();
        for topic in [
            Topic::TrainingUpdates,
            Topic::ModelUpdates,
            Topic::AdminAlerts,
            Topic::Health,
            Topic::Job(job),
        ] {
            assert_eq!(Topic::parse(&topic.to_string()).unwrap(), topic);
        }
        assert!(
            Topic::parse("job:nope")
                .unwrap_err()
                .contains("not a job id")
        );
        assert!(
            Topic::parse("gossip")
                .unwrap_err()
                .contains("unknown topic")
        );

        let progress = Event::TrainingCancelled {
            job_id: job,
            step: 1,
        };
        assert!(progress.belongs_to(&Topic::TrainingUpdates));
        assert!(progress.belongs_to(&Topic::Job(job)));
        assert!(!progress.belongs_to(&Topic::Job(Uuid::now_v7())));
        assert!(!progress.belongs_to(&Topic::ModelUpdates));
    }
}
