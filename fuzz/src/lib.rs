//! The fuzz targets' bodies: one function per parser of untrusted bytes, each fed anything and
//! required never to panic, hang or grow without bound. The `cargo fuzz` binaries in
//! `fuzz_targets/` call them; `tests/fuzz_corpora.rs` replays every seed and every saved
//! finding through the same functions in `make test` (it includes this file by path).
//!
//! A parser behind a checksum or signature is fuzzed twice: with the bytes as they come (the
//! check must refuse them cleanly) and with the check satisfied (the bytes sealed as the writer
//! would seal them), so the fuzzer reaches the decoder the check guards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use grokforge_actors::cluster::FrameCodec;
use grokforge_actors::events::Topic;
use grokforge_actors::services::websocket::protocol::ClientFrame;
use grokforge_actors::storage::export::verify_archive;
use grokforge_actors::training_core::checkpoint::{
    CHECKPOINT_FORMAT_VERSION, Checkpoint, HEADER_LEN, MAGIC,
};
use grokforge_actors::training_core::data::text::{self, TextFormat, TextSource};
use grokforge_actors::training_core::{DataSource, Dataset, GrokFast};
use sha2::{Digest, Sha256};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `cargo fuzz` binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("cluster_frame", cluster_frame),
    ("ws_client_frame", ws_client_frame),
    ("json_bodies", json_bodies),
    ("config_toml", config_toml),
    ("checkpoint", checkpoint),
    ("text_corpus", text_corpus),
    ("tokenizer_json", tokenizer_json),
    ("export_archive", export_archive),
];

/// A frame from Redis (an event, a heartbeat, a discovery record): decoded and verified; then
/// the same bytes as the body of a correctly signed frame.
pub fn cluster_frame(data: &[u8]) {
    static CODEC: OnceLock<FrameCodec> = OnceLock::new();
    let codec = CODEC.get_or_init(|| FrameCodec::new("fuzz-cluster-secret"));
    let _ = codec.decode(data);
    if let Ok(sealed) = codec.seal(data.to_vec()) {
        let _ = codec.decode(&sealed);
    }
}

/// A WebSocket text frame from a client, and the topic it names.
pub fn ws_client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Subscribe { topic, .. } | ClientFrame::Unsubscribe { topic }) =
        ClientFrame::parse(text)
    {
        let _ = Topic::parse(&topic);
    }
}

/// The JSON request bodies: a phase's start body (and the checks the training service makes of
/// the spec before queueing it), an export order.
pub fn json_bodies(data: &[u8]) {
    if let Ok((_, spec, _)) = grokforge_gateway::parse_start_body("cognate", data) {
        let _ = spec.path_fields_set();
        if spec.validate().is_ok() {
            let _ = spec.data_source();
            let _ = spec.grokfast_config();
        }
    }
    let _ = grokforge_gateway::parse_export_body(data);
}

/// A node's TOML configuration file.
pub fn config_toml(data: &[u8]) {
    let path = scratch_file("config.toml", data);
    let _ = grokforge_config::Settings::load(Some(&path), std::iter::empty());
}

/// A checkpoint file: as read from disk, then with a valid header around the bytes, so the
/// sections, the metadata and the GrokFast state are decoded.
pub fn checkpoint(data: &[u8]) {
    let path = Path::new("fuzz.ckpt");
    let _ = Checkpoint::from_bytes(data, path);
    let Ok(checkpoint) = Checkpoint::from_bytes(&seal_checkpoint(data), path) else {
        return;
    };
    let device = grokforge_actors::training_core::parse_device("cpu").expect("a CPU device");
    let _ = GrokFast::from_state_bytes(checkpoint.meta.run.grokfast, &checkpoint.grokfast, &device);
}

/// `payload` under the header a checkpoint writer puts in front of it.
pub fn seal_checkpoint(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// An uploaded corpus: checked as plain text and as JSONL (the upload's inspection), then
/// tokenized into windows (what a job does with it).
pub fn text_corpus(data: &[u8]) {
    let path = scratch_file("corpus.jsonl", data);
    let plain = TextFormat::Plain;
    let jsonl = TextFormat::Jsonl {
        field: "text".into(),
    };
    for format in [plain, jsonl] {
        if text::inspect(&path, &format).is_ok() {
            let source = DataSource::Text(TextSource {
                path: path.clone(),
                format,
                tokenizer: Default::default(),
            });
            let _ = Dataset::prepare(&source, &options());
        }
    }
}

/// An uploaded `tokenizer.json`: inspected, then used to tokenize a small corpus.
pub fn tokenizer_json(data: &[u8]) {
    let path = scratch_file("tokenizer.json", data);
    if text::inspect_tokenizer(&path).is_ok() {
        let corpus = scratch_file(
            "tokenizer-corpus.txt",
            "grokking happens late, then fast\n".as_bytes(),
        );
        let source =
            DataSource::Text(TextSource::from_path(corpus, "text").with_tokenizer_json(path));
        let _ = Dataset::prepare(&source, &options());
    }
}

/// A downloaded export package: its manifest read and every file it lists checked.
pub fn export_archive(data: &[u8]) {
    let _ = verify_archive(std::io::Cursor::new(data));
}

fn options() -> grokforge_actors::training_core::data::DatasetOptions {
    grokforge_actors::training_core::data::DatasetOptions {
        train_fraction: 0.5,
        split_seed: 0,
        seq_len: 8,
        cache_dir: None,
    }
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// Removes this process's scratch directory (the replay test calls it when done).
pub fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Writes `data` to `name` in this process's scratch directory (in memory where `/dev/shm`
/// exists) and returns its path.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = SCRATCH.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("grokforge-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    });
    let path =
        dir.join(format!("{:?}-{name}", std::thread::current().id()).replace(['(', ')'], ""));
    let mut file = std::fs::File::create(&path).expect("a scratch file");
    file.write_all(data).expect("writing a scratch file");
    path
}
