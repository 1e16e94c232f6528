//! What nodes say to each other through Redis: signed frames, and the discovery record.
//!
//! A frame is MessagePack with named fields: `{v, cluster, body, mac}`. `body` is the
//! MessagePack of a [`WireBody`] (an event envelope, a bridge heartbeat, or a discovery record: the
//! value of a node's key), `cluster`
//! identifies the cluster secret without revealing it (the first 8 bytes of
//! `HMAC(secret, "grokforge cluster id")`, hex), and `mac` is `HMAC-SHA256(secret, cluster ‖
//! body)` (with the frame version and the id's length in front, so no field can be shifted into
//! another). A reader checks, in this order, and drops with a reason at the first failure:
//! the frame decodes (`malformed`), it is this cluster's (`other_cluster`), it is signed
//! (`unsigned`), the signature holds (`bad_signature`), the body decodes (`malformed`) and its
//! schema is not newer than ours (`newer_schema`). Only then is anything inside trusted.
//! Decoding never panics: every failure is a [`FrameError`].

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::events::{EventEnvelope, SCHEMA_VERSION};
use crate::services::discovery::NodeInfo;

type HmacSha256 = Hmac<Sha256>;

/// Version of the frame layout itself.
pub const FRAME_VERSION: u16 = 1;

/// What a signed frame carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireBody {
    Event(EventEnvelope),
    /// A bridge's liveness probe: the bridge that sent it must hear it back.
    Heartbeat(Heartbeat),
    /// A node's discovery record (the value of its TTL key, not sent on the channel).
    Node(NodeInfo),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema_version: u16,
    pub node_id: String,
    pub seq: u64,
}

/// `body` and `mac` are MessagePack `bin` (serde_bytes): rmp-serde would write a plain
/// `Vec<u8>` as an array of integers, up to twice the size and slower to read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    v: u16,
    cluster: String,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(default, with = "serde_bytes")]
    mac: Vec<u8>,
}

/// Why an incoming frame was dropped; the label of `grokforge_cluster_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FrameError {
    #[error("malformed")]
    Malformed,
    #[error("other_cluster")]
    OtherCluster,
    #[error("unsigned")]
    Unsigned,
    #[error("bad_signature")]
    BadSignature,
    #[error("newer_schema")]
    NewerSchema,
}

impl FrameError {
    pub fn label(self) -> &'static str {
        match self {
            FrameError::Malformed => "malformed",
            FrameError::OtherCluster => "other_cluster",
            FrameError::Unsigned => "unsigned",
            FrameError::BadSignature => "bad_signature",
            FrameError::NewerSchema => "newer_schema",
        }
    }
}

/// Signs and verifies frames under one cluster secret.
#[derive(Clone)]
pub struct FrameCodec {
    key: Vec<u8>,
    cluster_id: String,
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl FrameCodec {
    pub fn new(secret: &str) -> FrameCodec {
        let key = secret.as_bytes().to_vec();
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(b"grokforge cluster id");
        let digest = mac.finalize().into_bytes();
        let cluster_id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        FrameCodec { key, cluster_id }
    }

    /// The public name of this cluster's secret.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Covers every field but the MAC itself: the version, the cluster id and the body.
    fn mac(&self, version: u16, cluster: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&version.to_be_bytes());
        mac.update(&(cluster.len() as u64).to_be_bytes());
        mac.update(cluster.as_bytes());
        mac.update(body);
        mac
    }

    pub fn encode(&self, body: &WireBody) -> Result<Vec<u8>, String> {
        let body = rmp_serde::to_vec_named(body).map_err(|e| e.to_string())?;
        self.seal(body)
    }

    /// A frame of this cluster, signed, around `body` — whatever its bytes (the fuzz targets
    /// use it to get past the signature to the body's decoder).
    pub fn seal(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let mac = self
            .mac(FRAME_VERSION, &self.cluster_id, &body)
            .finalize()
            .into_bytes()
            .to_vec();
        rmp_serde::to_vec_named(&Frame {
            v: FRAME_VERSION,
            cluster: self.cluster_id.clone(),
            body,
            mac,
        })
        .map_err(|e| e.to_string())
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<WireBody, FrameError> {
        let frame: Frame = rmp_serde::from_slice(bytes).map_err(|_| FrameError::Malformed)?;
        if frame.v > FRAME_VERSION {
            return Err(FrameError::NewerSchema);
        }
        if frame.cluster != self.cluster_id {
            return Err(FrameError::OtherCluster);
        }
        if frame.mac.is_empty() {
            return Err(FrameError::Unsigned);
        }
        // `verify_slice` compares in constant time.
        self.mac(frame.v, &frame.cluster, &frame.body)
            .verify_slice(&frame.mac)
            .map_err(|_| FrameError::BadSignature)?;
        let body: WireBody =
            rmp_serde::from_slice(&frame.body).map_err(|_| FrameError::Malformed)?;
        let version = match &body {
            WireBody::Event(envelope) => envelope.schema_version,
            WireBody::Heartbeat(heartbeat) => heartbeat.schema_version,
            WireBody::Node(_) => SCHEMA_VERSION,
        };
        if version > SCHEMA_VERSION {
            return Err(FrameError::NewerSchema);
        }
        Ok(body)
    }
}

/// A bounded memory of recently seen envelope ids: an id seen again within the last
/// `capacity` ids is a duplicate. Memory stays `capacity` ids, whatever arrives.
pub struct RecentIds {
    order: VecDeque<Uuid>,
    seen: HashSet<Uuid>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            order: VecDeque::with_capacity(capacity.min(65_536)),
            seen: HashSet::with_capacity(capacity.min(65_536)),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; `false` if it was already there.
    pub fn insert(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;

    fn envelope() -> EventEnvelope {
        EventEnvelope::new(
            "node-a",
            "training",
            Event::TrainingCancelled {
                job_id: Uuid::now_v7(),
                step: 3,
            },
        )
        .with_seq(7)
    }

    #[test]
    fn a_frame_round_trips_and_its_body_is_bytes() {
        let codec = FrameCodec::new("a-cluster-secret-of-some-length");
        let body = WireBody::Event(envelope());
        let bytes = codec.encode(&body).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), body);
        let heartbeat = WireBody::Heartbeat(Heartbeat {
            schema_version: SCHEMA_VERSION,
            node_id: "n".into(),
            seq: 9,
        });
        assert_eq!(
            codec.decode(&codec.encode(&heartbeat).unwrap()).unwrap(),
            heartbeat
        );
        // `bin`, not an array of integers: the frame is about as long as its parts.
        let raw: Frame = rmp_serde::from_slice(&bytes).unwrap();
        assert!(bytes.len() < raw.body.len() + 80, "{}", bytes.len());
    }

    #[test]
    fn every_kind_of_bad_frame_is_refused_with_its_reason() {
        let codec = FrameCodec::new("a-cluster-secret-of-some-length");
        let bytes = codec.encode(&WireBody::Event(envelope())).unwrap();

        // Any one flipped byte: the frame no longer decodes, or its signature fails.
        for index in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x01;
            let error = codec.decode(&tampered).unwrap_err();
            assert!(
                matches!(
                    error,
                    FrameError::Malformed
                        | FrameError::BadSignature
                        | FrameError::OtherCluster
                        | FrameError::NewerSchema
                        | FrameError::Unsigned
                ),
                "byte {index}: {error:?}"
            );
        }
        assert_eq!(codec.decode(b"random bytes"), Err(FrameError::Malformed));
        assert_eq!(codec.decode(&[]), Err(FrameError::Malformed));

        // The same secret names the same cluster; another secret, another cluster.
        let other = FrameCodec::new("another-secret-entirely");
        assert_ne!(other.cluster_id(), codec.cluster_id());
        let foreign = other.encode(&WireBody::Event(envelope())).unwrap();
        assert_eq!(codec.decode(&foreign), Err(FrameError::OtherCluster));

        // Signed with another secret but claiming our cluster id: a forgery.
        let mut forged: Frame = rmp_serde::from_slice(&foreign).unwrap();
        forged.cluster = codec.cluster_id().to_string();
        let forged = rmp_serde::to_vec_named(&forged).unwrap();
        assert_eq!(codec.decode(&forged), Err(FrameError::BadSignature));

        let mut unsigned: Frame = rmp_serde::from_slice(&bytes).unwrap();
        unsigned.mac.clear();
        let unsigned = rmp_serde::to_vec_named(&unsigned).unwrap();
        assert_eq!(codec.decode(&unsigned), Err(FrameError::Unsigned));

        let mut newer = envelope();
        newer.schema_version = SCHEMA_VERSION + 1;
        let newer = codec.encode(&WireBody::Event(newer)).unwrap();
        assert_eq!(codec.decode(&newer), Err(FrameError::NewerSchema));
    }

    #[test]
    fn recent_ids_remember_a_bounded_window() {
        let mut recent = RecentIds::new(3);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        assert!(recent.insert(ids[0]));
        assert!(!recent.insert(ids[0]));
        for id in &ids[1..] {
            assert!(recent.insert(*id));
        }
        // ids[0] and ids[1] fell out of the window of 3.
        assert!(recent.insert(ids[0]));
        assert!(!recent.insert(ids[4]));
        assert!(recent.order.len() <= 3 && recent.seen.len() <= 3);
    }
}
