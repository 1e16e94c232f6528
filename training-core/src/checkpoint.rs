//! Checkpoint files: written atomically, verified by SHA-256 before anything is read.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "GFCKPT\0\x01"  magic (8 bytes)
//! u32             format version
//! u64             payload length
//! [u8; 32]        SHA-256 of the payload
//! payload:        four length-prefixed (u64) sections —
//!                 metadata (JSON), model (burnpack), optimizer (burnpack), GrokFast state
//! ```
//!
//! A file is written to a temporary name in the same directory, fsynced, renamed over the target
//! and the directory fsynced, so a crash leaves either the old checkpoint or the new one, never a
//! mix. On load the length and the hash are checked first: a truncated or corrupted file is
//! refused with [`Error::CorruptCheckpoint`] saying which check failed.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::DataOrderState;
use crate::error::{Error, Result};
use crate::spec::TrainSpec;
use crate::train::{MetricHistory, RunConfig};

/// The first bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"GFCKPT\0\x01";
/// Version of the checkpoint layout and metadata written by this build.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Magic, format version (u32 LE), payload length (u64 LE), SHA-256 of the payload.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Everything about a run that is not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// The run's settings.
    pub run: RunConfig,
    /// The request the run belongs to, when it was started from one (the recipe fills it in).
    pub spec: Option<TrainSpec>,
    /// Optimizer steps completed.
    pub step: u64,
    /// The data order.
    pub data_order: DataOrderState,
    /// Evaluations so far.
    pub history: MetricHistory,
    /// Running sums of training loss, accuracy and step count since the last evaluation.
    pub window: (f64, f64, f64),
    /// SHA-256 of the training and validation split.
    pub dataset_fingerprint: String,
    /// LibTorch threads in use (results repeat exactly only at the same count).
    pub threads: usize,
    /// Backend and device, in words.
    pub backend: String,
}

/// A run's complete state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Settings, step, data order, metrics.
    pub meta: CheckpointMeta,
    /// The model record (burnpack bytes).
    pub model: Vec<u8>,
    /// The optimizer record (burnpack bytes).
    pub optimizer: Vec<u8>,
    /// The GrokFast state.
    pub grokfast: Vec<u8>,
}

impl Checkpoint {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&self.meta)
            .map_err(|e| Error::Record(format!("checkpoint metadata: {e}")))?;
        let mut payload = Vec::with_capacity(
            32 + meta.len() + self.model.len() + self.optimizer.len() + self.grokfast.len(),
        );
        for section in [&meta, &self.model, &self.optimizer, &self.grokfast] {
            payload.extend_from_slice(&(section.len() as u64).to_le_bytes());
            payload.extend_from_slice(section);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&payload));
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Parses and verifies a checkpoint read from `path` (used in error messages).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let refuse = |reason: String| Error::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(refuse(if bytes.len() >= 8 && &bytes[..8] != MAGIC {
                "not a grokforge checkpoint (bad magic bytes)".to_string()
            } else {
                format!(
                    "truncated: {} bytes is shorter than the header",
                    bytes.len()
                )
            }));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != CHECKPOINT_FORMAT_VERSION {
            return Err(refuse(format!(
                "format version {version}, this build reads version {CHECKPOINT_FORMAT_VERSION}"
            )));
        }
        let declared = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let payload = &bytes[HEADER_LEN..];
        if payload.len() as u64 != declared {
            return Err(refuse(format!(
                "truncated or padded: the header declares {declared} payload bytes, the file has {}",
                payload.len()
            )));
        }
        if Sha256::digest(payload).as_slice() != &bytes[20..52] {
            return Err(refuse(
                "SHA-256 mismatch: the file is corrupted".to_string(),
            ));
        }
        let mut sections = Vec::with_capacity(4);
        let mut at = 0usize;
        for _ in 0..4 {
            let len = payload
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .and_then(|len| usize::try_from(len).ok())
                .ok_or_else(|| refuse("a section header is missing".to_string()))?;
            at += 8;
            let end = at
                .checked_add(len)
                .filter(|&end| end <= payload.len())
                .ok_or_else(|| refuse("a section runs past the end".to_string()))?;
            sections.push(payload[at..end].to_vec());
            at = end;
        }
        if at != payload.len() {
            return Err(refuse("trailing bytes after the last section".to_string()));
        }
        let grokfast = sections.pop().expect("four sections");
        let optimizer = sections.pop().expect("four sections");
        let model = sections.pop().expect("four sections");
        let meta: CheckpointMeta = serde_json::from_slice(&sections[0])
            .map_err(|e| refuse(format!("metadata does not parse: {e}")))?;
        Ok(Self {
            meta,
            model,
            optimizer,
            grokfast,
        })
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_file(path, &self.to_bytes()?, true)
    }

    /// Reads and verifies the checkpoint at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| Error::io("reading checkpoint", path, e))?;
        Self::from_bytes(&bytes, path)
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the complete new one: temporary
/// file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, false)
}

/// Removes what interrupted [`write_atomic`]s left in `dir` — their temporary files
/// (`.<name>.tmp-<pid>-<n>`), never a complete file — and returns how many. A run calls it on its
/// directory before it starts or resumes there: a process killed in the middle of a write leaves
/// one behind.
pub fn remove_unfinished_writes(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") && fs::remove_file(entry.path()).is_ok()
        {
            tracing::info!(path = %entry.path().display(), "removed the file of an unfinished write");
            removed += 1;
        }
    }
    removed
}

/// [`write_atomic`]; a checkpoint's write passes the crash points of checkpoints
/// (`grokforge_config::crashpoint`).
fn write_file(path: &Path, bytes: &[u8], checkpoint: bool) -> Result<()> {
    use grokforge_config::crashpoint;
    let reached = |point| {
        if checkpoint {
            crashpoint::reached(point);
        }
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io("creating directory", &dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        let (head, tail) = bytes.split_at(bytes.len() / 2);
        file.write_all(head)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        reached(crashpoint::CHECKPOINT_WRITE);
        file.write_all(tail)
            .map_err(|e| Error::io("writing", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))?;
        reached(crashpoint::CHECKPOINT_RENAME);
        // The rename is durable only once the directory entry is.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing directory", &dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
