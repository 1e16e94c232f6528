//! Text corpora from local files, tokenized and cached by content hash.
//!
//! A UTF-8 text file is one token stream. A JSONL file contributes the string in one named field
//! of every line, each record followed by an end-of-text token. The tokenizer is byte-level by
//! default (tokens are the UTF-8 bytes 0–255 plus end-of-text 256), or a Hugging Face
//! `tokenizer.json` (feature `hf-tokenizer`), whose end-of-text is the first of `</s>`,
//! `<|endoftext|>`, `<eos>`, `[SEP]` it knows. The stream is cut into windows of `seq_len + 1`
//! tokens (input and the next token at each position); windows are split into training and
//! validation by the seeded split. The tokenized stream is cached under
//! `cache_dir/<key>.tokens`, where the key ([`cache_key`]) covers the SHA-256 of the file's
//! bytes, that of the tokenizer's bytes and every setting that changes the tokens, so a changed
//! file or setting never reuses a stale cache — and a node that knows a dataset's hash can name
//! its cache entry without reading it. A hit refreshes the entry's modification time, which is
//! what [`evict`] orders by (least recently used first). Bad input is reported with the file and
//! line; [`inspect`] and [`inspect_tokenizer`] check a file the same way without tokenizing it.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CacheUse, DataSource, Dataset, DatasetOptions, Examples, Target, split_rows};
use crate::error::{Error, Result};

/// End-of-text token of the byte-level tokenizer.
pub const END_OF_TEXT: u32 = 256;
/// Vocabulary of the byte-level tokenizer: 256 bytes and end-of-text.
pub const BYTE_VOCAB_SIZE: usize = 257;

/// The layout of a text file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum TextFormat {
    /// The whole file is one UTF-8 text.
    Plain,
    /// One JSON object per line; the text is the string in `field`.
    Jsonl {
        /// The field holding the text.
        field: String,
    },
}

/// How text becomes tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenizerKind {
    /// UTF-8 bytes plus end-of-text: 257 tokens.
    #[default]
    Bytes,
    /// A Hugging Face `tokenizer.json`.
    Json {
        /// The `tokenizer.json` file.
        path: PathBuf,
    },
}

/// A local text corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSource {
    /// The file.
    pub path: PathBuf,
    /// Its layout.
    pub format: TextFormat,
    /// The tokenizer.
    #[serde(default)]
    pub tokenizer: TokenizerKind,
}

impl TextSource {
    /// A source whose format follows the file name: `.jsonl` files read the field `field`,
    /// anything else is plain text.
    pub fn from_path(path: impl Into<PathBuf>, field: &str) -> Self {
        let path = path.into();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => TextFormat::Jsonl {
                field: field.to_string(),
            },
            _ => TextFormat::Plain,
        };
        Self {
            path,
            format,
            tokenizer: TokenizerKind::Bytes,
        }
    }

    /// The same source read with the `tokenizer.json` at `path`.
    pub fn with_tokenizer_json(mut self, path: impl Into<PathBuf>) -> Self {
        self.tokenizer = TokenizerKind::Json { path: path.into() };
        self
    }
}

/// Version of the cache layout and tokenizer; part of the hash.
const CACHE_VERSION: &str = "grokforge-text-v3";
const CACHE_MAGIC: &[u8; 8] = b"GFTOKv02";

pub(super) fn prepare(source: &TextSource, options: &DatasetOptions) -> Result<Dataset> {
    if options.seq_len == 0 {
        return Err(Error::invalid("seq_len", "must be positive"));
    }
    let bytes = fs::read(&source.path).map_err(|e| Error::io("reading", &source.path, e))?;
    let tokenizer = Tokenizer::load(&source.tokenizer)?;
    let key = cache_key(
        &hex(&Sha256::digest(&bytes)),
        &source.format,
        &tokenizer.fingerprint,
    );
    let cached = options
        .cache_dir
        .as_ref()
        .map(|dir| dir.join(format!("{key}.tokens")));

    let mut hit = false;
    let tokens = match cached.as_deref().and_then(read_cache) {
        Some(tokens) => {
            tracing::debug!(path = %source.path.display(), "text dataset: cache hit");
            hit = true;
            if let Some(path) = &cached {
                // Recently used: the eviction order is by modification time.
                let _ = fs::File::options()
                    .append(true)
                    .open(path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }
            tokens
        }
        None => {
            let tokens = tokenize(&source.path, &bytes, &source.format, &tokenizer)?;
            if let Some(path) = &cached {
                // A cache that cannot be written only costs time next run.
                if let Err(error) = write_cache(path, &tokens) {
                    tracing::warn!(path = %path.display(), %error, "text dataset: cache not written");
                }
            }
            tokens
        }
    };

    let seq = options.seq_len;
    if tokens.len() < 2 * (seq + 1) {
        return Err(Error::DataFile {
            path: source.path.clone(),
            line: 1,
            reason: format!(
                "{} tokens are too few for two windows of {} tokens",
                tokens.len(),
                seq + 1
            ),
        });
    }
    let windows = (tokens.len() - 1) / seq;
    let (train_rows, valid_rows) = split_rows(windows, options);
    let gather = |rows: &[usize]| {
        let mut examples = Examples::default();
        for &row in rows {
            let start = row * seq;
            examples
                .inputs
                .extend_from_slice(&tokens[start..start + seq]);
            examples
                .targets
                .extend_from_slice(&tokens[start + 1..start + seq + 1]);
        }
        examples
    };
    Ok(Dataset {
        source: DataSource::Text(source.clone()),
        cache: cached.is_some().then_some(CacheUse { key, hit }),
        vocab_size: tokenizer.vocab_size,
        seq_len: seq,
        target: Target::NextToken,
        train: gather(&train_rows),
        valid: gather(&valid_rows),
    })
}

/// The cache key of a corpus whose bytes have SHA-256 `content_sha256` (hex), read as `format`
/// with the tokenizer `tokenizer` ([`tokenizer_fingerprint`]).
pub fn cache_key(content_sha256: &str, format: &TextFormat, tokenizer: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(CACHE_VERSION.as_bytes());
    hasher.update(serde_json::to_vec(format).unwrap_or_default());
    hasher.update(b"\0");
    hasher.update(tokenizer.as_bytes());
    hasher.update(b"\0");
    hasher.update(content_sha256.as_bytes());
    hex(&hasher.finalize())
}

/// What identifies a tokenizer in [`cache_key`]: `bytes`, or `json:<SHA-256 of the
/// tokenizer.json>` (hex).
pub fn tokenizer_fingerprint(tokenizer_json_sha256: Option<&str>) -> String {
    match tokenizer_json_sha256 {
        None => "bytes".to_string(),
        Some(sha) => format!("json:{sha}"),
    }
}

/// What [`inspect`] found in a valid corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inspection {
    /// Lines of the file (a last line without a newline counts).
    pub lines: u64,
    /// Records: JSONL objects, or non-empty lines of a text.
    pub records: u64,
}

/// Checks a corpus file the way [`Dataset::prepare`] would read it, streaming (the file is
/// never held whole): valid UTF-8, and for JSONL every non-empty line an object whose `field`
/// is a string. Refuses an empty corpus. Errors name the line.
pub fn inspect(path: &Path, format: &TextFormat) -> Result<Inspection> {
    let file = fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut found = Inspection::default();
    let mut raw = Vec::new();
    let mut text_bytes = 0u64;
    loop {
        raw.clear();
        let read = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| Error::io("reading", path, e))?;
        if read == 0 {
            break;
        }
        found.lines += 1;
        let line = found.lines as usize;
        let bad = |reason: String| Error::DataFile {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let text = std::str::from_utf8(&raw).map_err(|e| {
            bad(format!(
                "invalid UTF-8 at byte {} of the line",
                e.valid_up_to()
            ))
        })?;
        let trimmed = text.trim();
        match format {
            TextFormat::Plain => {
                text_bytes += text.len() as u64;
                if !trimmed.is_empty() {
                    found.records += 1;
                }
            }
            TextFormat::Jsonl { field } => {
                if trimmed.is_empty() {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(trimmed).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                let object = value
                    .as_object()
                    .ok_or_else(|| bad("not a JSON object".to_string()))?;
                let content = object
                    .get(field)
                    .ok_or_else(|| bad(format!("no field {field:?}")))?
                    .as_str()
                    .ok_or_else(|| bad(format!("field {field:?} is not a string")))?;
                text_bytes += content.len() as u64;
                found.records += 1;
            }
        }
    }
    if text_bytes == 0 {
        return Err(Error::DataFile {
            path: path.to_path_buf(),
            line: 1,
            reason: "the corpus holds no text".to_string(),
        });
    }
    Ok(found)
}

/// Checks that `path` is a usable `tokenizer.json`; returns its vocabulary size.
pub fn inspect_tokenizer(path: &Path) -> Result<usize> {
    let tokenizer = Tokenizer::load(&TokenizerKind::Json {
        path: path.to_path_buf(),
    })?;
    if tokenizer.vocab_size == 0 {
        return Err(Error::DataFile {
            path: path.to_path_buf(),
            line: 1,
            reason: "the tokenizer has an empty vocabulary".to_string(),
        });
    }
    Ok(tokenizer.vocab_size)
}

/// What [`evict`] removed and what the cache holds after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Keys removed, least recently used first, with their sizes.
    pub removed: Vec<(String, u64)>,
    /// Bytes the cache holds after.
    pub remaining_bytes: u64,
}

/// Bounds the cache in `cache_dir` to `max_bytes`: removes `<key>.tokens` entries, least
/// recently used (oldest modification time) first, until the rest fits, never one whose key
/// is in `keep` (what running jobs use). Temp files of writes in flight are left alone.
pub fn evict(
    cache_dir: &Path,
    max_bytes: u64,
    keep: &HashSet<String>,
) -> std::io::Result<Eviction> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Eviction::default()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".tokens") else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        total += meta.len();
        let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        files.push((modified, key.to_string(), meta.len(), entry.path()));
    }
    files.sort();
    let mut removed = Vec::new();
    for (_, key, size, path) in files {
        if total <= max_bytes {
            break;
        }
        if keep.contains(&key) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                total -= size;
                removed.push((key, size));
            }
            // Another node evicted it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= size,
            Err(e) => return Err(e),
        }
    }
    Ok(Eviction {
        removed,
        remaining_bytes: total,
    })
}

/// A loaded tokenizer.
struct Tokenizer {
    /// What identifies its behaviour in the cache key.
    fingerprint: String,
    vocab_size: usize,
    end_of_text: Option<u32>,
    engine: Engine,
}

enum Engine {
    Bytes,
    #[cfg(feature = "hf-tokenizer")]
    Json(Box<tokenizers::Tokenizer>, PathBuf),
}

impl Tokenizer {
    fn load(kind: &TokenizerKind) -> Result<Self> {
        match kind {
            TokenizerKind::Bytes => Ok(Self {
                fingerprint: "bytes".to_string(),
                vocab_size: BYTE_VOCAB_SIZE,
                end_of_text: Some(END_OF_TEXT),
                engine: Engine::Bytes,
            }),
            #[cfg(feature = "hf-tokenizer")]
            TokenizerKind::Json { path } => {
                let bytes = fs::read(path).map_err(|e| Error::io("reading tokenizer", path, e))?;
                // tokenizers 0.22 panics (`expect("Helper")` in its decoder's deserializer) on a
                // JSON syntax error inside `"decoder"` (found by `fuzz/`, target
                // `tokenizer_json`): the file is parsed as JSON first, so such a file is this
                // error. A full parse, as the library's own: `IgnoredAny` skips strings without
                // checking their UTF-8, which the library's parse then refuses with the panic.
                serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
                    Error::DataFile {
                        path: path.clone(),
                        line: e.line().max(1),
                        reason: format!("not a usable tokenizer.json: not JSON: {e}"),
                    }
                })?;
                // Any other panic of the library over a file it cannot read is an error of
                // that file, never a crash of the node.
                let unusable = |reason: String| Error::DataFile {
                    path: path.clone(),
                    line: 1,
                    reason: format!("not a usable tokenizer.json: {reason}"),
                };
                let tokenizer =
                    std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
                        .map_err(|_| unusable("the tokenizers library could not read it".into()))?
                        .map_err(|e| unusable(e.to_string()))?;
                let end_of_text = ["</s>", "<|endoftext|>", "<eos>", "[SEP]"]
                    .iter()
                    .find_map(|token| tokenizer.token_to_id(token));
                Ok(Self {
                    fingerprint: format!("json:{}", hex(&Sha256::digest(&bytes))),
                    vocab_size: tokenizer.get_vocab_size(true),
                    end_of_text,
                    engine: Engine::Json(Box::new(tokenizer), path.clone()),
                })
            }
            #[cfg(not(feature = "hf-tokenizer"))]
            TokenizerKind::Json { path } => Err(Error::DataFile {
                path: path.clone(),
                line: 1,
                reason: "this build has no tokenizer.json support (feature `hf-tokenizer`)"
                    .to_string(),
            }),
        }
    }

    /// Appends the tokens of `text` (which came from `line` of `path`) to `out`.
    #[cfg_attr(not(feature = "hf-tokenizer"), allow(unused_variables))]
    fn encode(&self, text: &str, path: &Path, line: usize, out: &mut Vec<u32>) -> Result<()> {
        match &self.engine {
            Engine::Bytes => {
                out.extend(text.bytes().map(u32::from));
                Ok(())
            }
            #[cfg(feature = "hf-tokenizer")]
            Engine::Json(tokenizer, tokenizer_path) => {
                let encoding = tokenizer.encode(text, false).map_err(|e| Error::DataFile {
                    path: path.to_path_buf(),
                    line,
                    reason: format!("{} cannot encode it: {e}", tokenizer_path.display()),
                })?;
                out.extend_from_slice(encoding.get_ids());
                Ok(())
            }
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tokenize(
    path: &Path,
    bytes: &[u8],
    format: &TextFormat,
    tokenizer: &Tokenizer,
) -> Result<Vec<u32>> {
    match format {
        TextFormat::Plain => {
            let text = std::str::from_utf8(bytes).map_err(|error| {
                let offset = error.valid_up_to();
                let line = 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
                Error::DataFile {
                    path: path.to_path_buf(),
                    line,
                    reason: format!("invalid UTF-8 at byte {offset}"),
                }
            })?;
            let mut tokens = Vec::with_capacity(bytes.len());
            tokenizer.encode(text, path, 1, &mut tokens)?;
            Ok(tokens)
        }
        TextFormat::Jsonl { field } => {
            let mut tokens = Vec::with_capacity(bytes.len());
            for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = index + 1;
                let bad = |reason: String| Error::DataFile {
                    path: path.to_path_buf(),
                    line,
                    reason,
                };
                let text = std::str::from_utf8(raw)
                    .map_err(|e| bad(format!("invalid UTF-8: {e}")))?
                    .trim();
                if text.is_empty() {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                let content = value
                    .get(field)
                    .ok_or_else(|| bad(format!("no field {field:?}")))?
                    .as_str()
                    .ok_or_else(|| bad(format!("field {field:?} is not a string")))?;
                tokenizer.encode(content, path, line, &mut tokens)?;
                tokens.extend(tokenizer.end_of_text);
            }
            Ok(tokens)
        }
    }
}

fn read_cache(path: &Path) -> Option<Vec<u32>> {
    let bytes = fs::read(path).ok()?;
    let body = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
    let (len, body) = body.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    if body.len() != len.checked_mul(4)? {
        return None;
    }
    Some(
        body.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn write_cache(path: &Path, tokens: &[u32]) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(16 + tokens.len() * 4);
    body.extend_from_slice(CACHE_MAGIC);
    body.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for &token in tokens {
        body.extend_from_slice(&token.to_le_bytes());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    // Unique per writer: two nodes (or two jobs of one node) may prepare the same corpus at
    // once; the last rename wins and both wrote the same tokens.
    let tmp = path.with_extension(format!(
        "tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(cache: Option<PathBuf>) -> DatasetOptions {
        DatasetOptions {
            train_fraction: 0.75,
            split_seed: 1,
            seq_len: 8,
            cache_dir: cache,
        }
    }

    #[test]
    fn plain_text_windows_predict_the_next_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.txt");
        fs::write(&path, "hello grokforge, hello burn! ".repeat(8)).unwrap();
        let source = DataSource::Text(TextSource::from_path(&path, "text"));
        let data = Dataset::prepare(&source, &options(None)).unwrap();
        assert_eq!(data.vocab_size, BYTE_VOCAB_SIZE);
        assert_eq!(data.target, Target::NextToken);
        let inputs = &data.train.inputs[..8];
        let targets = &data.train.targets[..8];
        assert_eq!(&inputs[1..], &targets[..7]);
        assert_eq!(data.train_len() + data.valid_len(), (29 * 8 - 1) / 8);
    }

    #[test]
    fn jsonl_reads_the_field_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.jsonl");
        fs::write(
            &path,
            "{\"text\": \"first document here\"}\n\n{\"text\": \"second one, longer\"}\n",
        )
        .unwrap();
        let source = DataSource::Text(TextSource::from_path(&path, "text"));
        let data = Dataset::prepare(&source, &options(None)).unwrap();
        let all: Vec<u32> = data
            .train
            .inputs
            .iter()
            .chain(&data.valid.inputs)
            .copied()
            .collect();
        assert!(all.contains(&END_OF_TEXT));

        fs::write(&path, "{\"text\": \"ok\"}\n{\"body\": \"no text field\"}\n").unwrap();
        match Dataset::prepare(&source, &options(None)) {
            Err(Error::DataFile { line, reason, .. }) => {
                assert_eq!(line, 2);
                assert!(reason.contains("text"), "{reason}");
            }
            other => panic!("expected a DataFile error, got {other:?}"),
        }
        fs::write(&path, "{\"text\": \"ok\"}\n{not json\n").unwrap();
        assert!(matches!(
            Dataset::prepare(&source, &options(None)),
            Err(Error::DataFile { line: 2, .. })
        ));
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        fs::write(&path, b"line one\nline two\nbad \xff byte\n").unwrap();
        let source = DataSource::Text(TextSource::from_path(&path, "text"));
        assert!(matches!(
            Dataset::prepare(&source, &options(None)),
            Err(Error::DataFile { line: 3, .. })
        ));
    }

    /// tokenizers 0.22 panics on a syntax error inside `"decoder"`: the crash `fuzz/` found
    /// (`fuzz/regressions/tokenizer_json/`) is a clear error of the file.
    #[cfg(feature = "hf-tokenizer")]
    #[test]
    fn a_syntax_error_in_the_decoder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = dir.path().join("tokenizer.json");
        fs::write(
            &tokenizer,
            "{\"version\": \"1.0\", \"added_tokens\": [],\n \"decoder\": \u{1}nul,\n \"model\": {}}",
        )
        .unwrap();
        let error = inspect_tokenizer(&tokenizer).unwrap_err();
        let Error::DataFile { line, reason, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(*line, 2, "{error}");
        assert!(reason.contains("not JSON"), "{error}");
        // Bytes that are not UTF-8 in a string: what a syntax check that skips strings passes
        // and the library's parse refuses (with the panic).
        fs::write(
            &tokenizer,
            b"{\"version\": \"1.0\", \"decoder\": {\"\x82\x82type\": \"Whitespace\"}, \"model\": {}}",
        )
        .unwrap();
        let error = inspect_tokenizer(&tokenizer).unwrap_err();
        assert!(error.to_string().contains("not JSON"), "{error}");
    }

    #[cfg(feature = "hf-tokenizer")]
    #[test]
    fn a_tokenizer_json_sets_the_vocabulary_and_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = dir.path().join("tokenizer.json");
        fs::write(
            &tokenizer,
            r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "unk_token": "[UNK]",
                          "vocab": {"[UNK]": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4}}}"#,
        )
        .unwrap();
        let corpus = dir.path().join("docs.jsonl");
        fs::write(&corpus, "{\"text\": \"the cat sat\"}\n".repeat(12)).unwrap();
        let source = DataSource::Text(
            TextSource::from_path(&corpus, "text").with_tokenizer_json(&tokenizer),
        );
        let data = Dataset::prepare(
            &source,
            &DatasetOptions {
                seq_len: 4,
                ..options(None)
            },
        )
        .unwrap();
        assert_eq!(data.vocab_size, 5);
        let all: Vec<u32> = data
            .train
            .inputs
            .iter()
            .chain(&data.valid.inputs)
            .copied()
            .collect();
        assert!(all.iter().all(|&t| (1..=4).contains(&t)), "{all:?}");
        // "the cat sat </s>" repeats: every window is a rotation of [2, 3, 4, 1].
        assert!(data.train.inputs.chunks(4).all(|w| {
            let start = [2, 3, 4, 1].iter().position(|&t| t == w[0]).unwrap();
            (0..4).all(|i| w[i] == [2, 3, 4, 1][(start + i) % 4])
        }));

        fs::write(&tokenizer, "{not a tokenizer").unwrap();
        assert!(matches!(
            Dataset::prepare(&source, &options(None)),
            Err(Error::DataFile { .. })
        ));
    }

    #[test]
    fn the_cache_is_keyed_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = dir.path().join("corpus.txt");
        fs::write(&path, "abcdefghijklmnopqrstuvwxyz".repeat(4)).unwrap();
        let source = DataSource::Text(TextSource::from_path(&path, "text"));
        let first = Dataset::prepare(&source, &options(Some(cache.clone()))).unwrap();
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
        let second = Dataset::prepare(&source, &options(Some(cache.clone()))).unwrap();
        assert_eq!(first.train.inputs, second.train.inputs);

        fs::write(&path, "zyxwvutsrqponmlkjihgfedcba".repeat(4)).unwrap();
        let changed = Dataset::prepare(&source, &options(Some(cache.clone()))).unwrap();
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 2);
        assert_ne!(first.train.inputs, changed.train.inputs);
    }

    #[test]
    fn eviction_drops_the_least_recently_used_but_never_a_kept_entry() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        // a is the oldest, c the newest; each is 100 bytes.
        for (age, key) in [(30, "a"), (20, "b"), (10, "c")] {
            let path = dir.path().join(format!("{key}.tokens"));
            fs::write(&path, [0u8; 100]).unwrap();
            fs::File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(now - std::time::Duration::from_secs(age))
                .unwrap();
        }
        fs::write(dir.path().join("x.tmp-1"), [0u8; 500]).unwrap();
        // Within the bound: nothing goes.
        let report = evict(dir.path(), 300, &HashSet::new()).unwrap();
        assert!(report.removed.is_empty());
        // Over it: the oldest goes first, except a kept one.
        let keep: HashSet<String> = ["a".to_string()].into();
        let report = evict(dir.path(), 150, &keep).unwrap();
        assert_eq!(
            report.removed,
            vec![("b".to_string(), 100), ("c".to_string(), 100)]
        );
        assert_eq!(report.remaining_bytes, 100);
        assert!(dir.path().join("a.tokens").exists());
        assert!(dir.path().join("x.tmp-1").exists(), "writes in flight stay");
    }

    #[test]
    fn inspect_counts_records_and_refuses_an_empty_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.jsonl");
        fs::write(&path, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}").unwrap();
        let format = TextFormat::Jsonl {
            field: "text".into(),
        };
        assert_eq!(
            inspect(&path, &format).unwrap(),
            Inspection {
                lines: 3,
                records: 2
            }
        );
        fs::write(&path, "{\"text\": \"\"}\n").unwrap();
        assert!(matches!(
            inspect(&path, &format),
            Err(Error::DataFile { .. })
        ));
        fs::write(&path, "").unwrap();
        assert!(inspect(&path, &TextFormat::Plain).is_err());
    }
}
