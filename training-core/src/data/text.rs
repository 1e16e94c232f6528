//! Text corpora from local files, tokenized and cached by content hash.
//!
//! A UTF-8 text file is one token stream. A JSONL file contributes the string in one named field
//! of every line, each record followed by an end-of-text token. The tokenizer is byte-level by
//! default (tokens are the UTF-8 bytes 0–255 plus end-of-text 256), or a Hugging Face
//! `tokenizer.json` (feature `hf-tokenizer`), whose end-of-text is the first of `</s>`,
//! `<|endoftext|>`, `<eos>`, `[SEP]` it knows. The stream is cut into windows of `seq_len + 1`
//! tokens (input and the next token at each position); windows are split into training and
//! validation by the seeded split. The tokenized stream is cached under
//! `cache_dir/<sha256>.tokens`, where the hash covers the file's bytes, the tokenizer's bytes and
//! every setting that changes the tokens, so a changed file or setting never reuses a stale cache.
//! Bad input is reported with the file and line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DataSource, Dataset, DatasetOptions, Examples, Target, split_rows};
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
const CACHE_VERSION: &str = "grokforge-text-v2";
const CACHE_MAGIC: &[u8; 8] = b"GFTOKv02";

pub(super) fn prepare(source: &TextSource, options: &DatasetOptions) -> Result<Dataset> {
    if options.seq_len == 0 {
        return Err(Error::invalid("seq_len", "must be positive"));
    }
    let bytes = fs::read(&source.path).map_err(|e| Error::io("reading", &source.path, e))?;
    let tokenizer = Tokenizer::load(&source.tokenizer)?;
    let key = cache_key(&bytes, &source.format, &tokenizer.fingerprint);
    let cached = options
        .cache_dir
        .as_ref()
        .map(|dir| dir.join(format!("{key}.tokens")));

    let tokens = match cached.as_deref().and_then(read_cache) {
        Some(tokens) => {
            tracing::debug!(path = %source.path.display(), "text dataset: cache hit");
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
        vocab_size: tokenizer.vocab_size,
        seq_len: seq,
        target: Target::NextToken,
        train: gather(&train_rows),
        valid: gather(&valid_rows),
    })
}

fn cache_key(bytes: &[u8], format: &TextFormat, tokenizer: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(CACHE_VERSION.as_bytes());
    hasher.update(serde_json::to_vec(format).unwrap_or_default());
    hasher.update(tokenizer.as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
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
                let tokenizer =
                    tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::DataFile {
                        path: path.clone(),
                        line: 1,
                        reason: format!("not a usable tokenizer.json: {e}"),
                    })?;
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
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
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
}
