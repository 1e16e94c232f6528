//! The WebSocket wire protocol: JSON text frames, each an object tagged by `type`.
//!
//! Client → server: [`ClientFrame`] — `subscribe {topic, since?}`, `unsubscribe {topic}`, `ping`.
//! Server → client: [`ControlFrame`] — `connection_established`, `subscription_confirmed`,
//! `unsubscribed`, `pong`, `error` — and [`EventFrame`]s, one per event and topic:
//! `{type, topic, seq, source_service, timestamp, data}` plus the envelope's id, source node and
//! schema version. An event frame's `type` is the event's wire name (`training_progress`), so a
//! client dispatches on one field for both kinds of frame.
//!
//! These are wire types, separate from the hub's in-process messages; they carry
//! [`SCHEMA_VERSION`] in `connection_established` and in every event frame.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{Event, EventEnvelope, SCHEMA_VERSION, WireError};

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Start receiving `topic`. With `since`, on a `job:{id}` topic, first replay the job's
    /// events with a larger sequence number from its durable log.
    Subscribe {
        topic: String,
        #[serde(default)]
        since: Option<u64>,
    },
    Unsubscribe {
        topic: String,
    },
    // A struct variant, not a unit one: serde checks unknown fields only on struct variants.
    Ping {},
}

impl ClientFrame {
    /// Parses one text frame; the error says what was wrong in words a client developer reads.
    pub fn parse(text: &str) -> Result<ClientFrame, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "malformed frame: {e}; expected {{\"type\": \"subscribe\", \"topic\": …, \
                 \"since\"?: …}}, {{\"type\": \"unsubscribe\", \"topic\": …}} or \
                 {{\"type\": \"ping\"}}"
            )
        })
    }
}

/// What the server says about the connection itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame {
    ConnectionEstablished {
        connection_id: u64,
        node_id: String,
        role: String,
        schema_version: u16,
        max_subscriptions: u64,
        max_message_bytes: u64,
        ping_interval_ms: u64,
    },
    SubscriptionConfirmed {
        topic: String,
        /// Events replayed from the job log before live delivery began (with `since` only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replayed: Option<u64>,
    },
    Unsubscribed {
        topic: String,
    },
    Pong,
    Error {
        message: String,
        /// The topic the error is about, when it is about one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
}

impl ControlFrame {
    pub fn error(message: impl Into<String>) -> ControlFrame {
        ControlFrame::Error {
            message: message.into(),
            topic: None,
        }
    }

    pub fn to_json(&self) -> String {
        // A control frame is plain strings and integers: serialising it cannot fail.
        serde_json::to_string(self).expect("control frames always serialise")
    }
}

/// One event as a subscriber of `topic` receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// `type` and `data`, as the event enum writes them.
    #[serde(flatten)]
    pub event: Event,
    pub topic: String,
    /// The job event log's sequence number; `null` for events of no job.
    pub seq: Option<u64>,
    pub id: Uuid,
    pub source_node: String,
    pub source_service: String,
    pub timestamp: DateTime<Utc>,
    pub schema_version: u16,
}

impl EventFrame {
    pub fn parse(text: &str) -> Result<EventFrame, WireError> {
        let frame: EventFrame =
            serde_json::from_str(text).map_err(|e| WireError::Decode(e.to_string()))?;
        if frame.schema_version > SCHEMA_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: frame.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(frame)
    }
}

/// Encodes `envelope` as the frame a subscriber of `topic` receives. Borrowing keeps the
/// fan-out from cloning the event once per topic.
pub fn encode_event_frame(topic: &str, envelope: &EventEnvelope) -> Result<String, WireError> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        #[serde(flatten)]
        event: &'a Event,
        topic: &'a str,
        seq: Option<u64>,
        id: Uuid,
        source_node: &'a str,
        source_service: &'a str,
        timestamp: DateTime<Utc>,
        schema_version: u16,
    }
    serde_json::to_string(&Borrowed {
        event: &envelope.event,
        topic,
        seq: envelope.seq,
        id: envelope.id,
        source_node: &envelope.source_node,
        source_service: &envelope.source_service,
        timestamp: envelope.timestamp,
        schema_version: envelope.schema_version,
    })
    .map_err(|e| WireError::Encode(e.to_string()))
}

/// Anything the server sends, as a client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    Control(ControlFrame),
    Event(Box<EventFrame>),
}

impl ServerFrame {
    /// Reads one text frame. An event frame of a newer schema is refused as such
    /// ([`WireError::UnsupportedVersion`]) before its event is read: its kinds may be unknown here.
    pub fn parse(text: &str) -> Result<ServerFrame, WireError> {
        if let Ok(control) = serde_json::from_str::<ControlFrame>(text) {
            return Ok(ServerFrame::Control(control));
        }
        #[derive(Deserialize)]
        struct Head {
            schema_version: Option<u16>,
        }
        let head: Head =
            serde_json::from_str(text).map_err(|e| WireError::Decode(e.to_string()))?;
        if let Some(found) = head.schema_version.filter(|v| *v > SCHEMA_VERSION) {
            return Err(WireError::UnsupportedVersion {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        EventFrame::parse(text).map(|frame| ServerFrame::Event(Box::new(frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_from_the_documented_shapes() {
        let id = Uuid::now_v7();
        assert_eq!(
            ClientFrame::parse(&format!(
                r#"{{"type":"subscribe","topic":"job:{id}","since":7}}"#
            )),
            Ok(ClientFrame::Subscribe {
                topic: format!("job:{id}"),
                since: Some(7)
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","topic":"training_updates"}"#),
            Ok(ClientFrame::Subscribe {
                topic: "training_updates".into(),
                since: None
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"unsubscribe","topic":"health"}"#),
            Ok(ClientFrame::Unsubscribe {
                topic: "health".into()
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping {})
        );
        for bad in [
            "",
            "null",
            "[]",
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","topic":"health","since":-1}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"ping","extra":1}"#,
        ] {
            let error = ClientFrame::parse(bad).unwrap_err();
            assert!(error.starts_with("malformed frame"), "{bad}: {error}");
        }
    }

    #[test]
    fn control_frames_round_trip() {
        for frame in [
            ControlFrame::ConnectionEstablished {
                connection_id: 3,
                node_id: "n".into(),
                role: "read".into(),
                schema_version: SCHEMA_VERSION,
                max_subscriptions: 32,
                max_message_bytes: 65_536,
                ping_interval_ms: 15_000,
            },
            ControlFrame::SubscriptionConfirmed {
                topic: "health".into(),
                replayed: None,
            },
            ControlFrame::SubscriptionConfirmed {
                topic: "job:x".into(),
                replayed: Some(4),
            },
            ControlFrame::Unsubscribed {
                topic: "health".into(),
            },
            ControlFrame::Pong,
            ControlFrame::error("no"),
        ] {
            let json = frame.to_json();
            assert_eq!(serde_json::from_str::<ControlFrame>(&json).unwrap(), frame);
        }
        assert_eq!(ControlFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn event_frames_carry_the_documented_fields_and_round_trip() {
        let job_id = Uuid::now_v7();
        let envelope = EventEnvelope::new(
            "node-a",
            "training_service",
            Event::TrainingProgress {
                job_id,
                variant: 0,
                step: 10,
                total_steps: 100,
                loss: 1.5,
                accuracy: Some(0.25),
                val_loss: None,
                val_accuracy: None,
                learning_rate: 1e-3,
                steps_per_second: 20.0,
            },
        )
        .with_seq(5);
        let topic = format!("job:{job_id}");
        let text = encode_event_frame(&topic, &envelope).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "training_progress");
        assert_eq!(value["topic"], topic.as_str());
        assert_eq!(value["seq"], 5);
        assert_eq!(value["source_service"], "training_service");
        assert_eq!(value["data"]["step"], 10);
        assert!(value["timestamp"].is_string());

        let frame = EventFrame::parse(&text).unwrap();
        assert_eq!(frame.event, envelope.event);
        assert_eq!(frame.seq, Some(5));
        assert_eq!(frame.id, envelope.id);
        assert_eq!(frame.topic, topic);
    }

    #[test]
    fn an_event_frame_from_a_newer_schema_is_refused() {
        let envelope = EventEnvelope::new(
            "n",
            "s",
            Event::NodeLeft {
                node_id: "n".into(),
                reason: "bye".into(),
            },
        );
        let text = encode_event_frame("health", &envelope).unwrap().replace(
            &format!("\"schema_version\":{SCHEMA_VERSION}"),
            "\"schema_version\":999",
        );
        assert!(matches!(
            EventFrame::parse(&text),
            Err(WireError::UnsupportedVersion { found: 999, .. })
        ));
    }
}
