//! Datasets, the train/validation split and the seeded data order.
//!
//! Every dataset is a set of fixed-length token sequences with labels: one answer token per
//! sequence for the algorithmic tasks ([`Target::LastToken`]), or the next token at every position
//! for text ([`Target::NextToken`]). [`DataOrder`] walks the training split epoch by epoch in a
//! seeded random order; its state is a few numbers and is saved in every checkpoint, so a resumed
//! run sees exactly the batches an uninterrupted one would have.

pub mod algorithmic;
pub mod text;

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;
pub use algorithmic::{ModularTask, Operation};
pub use text::{TextFormat, TextSource, TokenizerKind};

/// Where a run's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// A built-in algorithmic task.
    Algorithmic(ModularTask),
    /// A local text corpus.
    Text(TextSource),
}

impl DataSource {
    /// A short name for logs and file names (`mod-mul:97`, `text:corpus.txt`).
    pub fn label(&self) -> String {
        match self {
            DataSource::Algorithmic(task) => task.to_string(),
            DataSource::Text(source) => format!(
                "text:{}",
                source
                    .path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        }
    }
}

/// What the model is asked to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One label per sequence, predicted at the last position (the algorithmic tasks).
    LastToken,
    /// The next token at every position (language modelling).
    NextToken,
}

/// Sequences and their labels, flattened row by row.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    /// `len × seq_len` token ids.
    pub inputs: Vec<u32>,
    /// `len × target_len` label ids.
    pub targets: Vec<u32>,
}

/// How a prepared dataset used the prepared-data cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUse {
    /// The entry's key (`<cache_dir>/<key>.tokens`).
    pub key: String,
    /// Whether the tokens came from the cache (no tokenisation).
    pub hit: bool,
}

/// A prepared dataset, split into training and validation examples.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it came from.
    pub source: DataSource,
    /// The cache entry, for cached sources (text with a cache directory).
    pub cache: Option<CacheUse>,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Length of every input sequence.
    pub seq_len: usize,
    /// What is predicted.
    pub target: Target,
    /// Training split.
    pub train: Examples,
    /// Validation split.
    pub valid: Examples,
}

/// How to cut a source into a dataset.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// Share of the examples used for training, in (0, 1).
    pub train_fraction: f64,
    /// Seed of the train/validation split.
    pub split_seed: u64,
    /// Sequence length for text (ignored by the algorithmic tasks, which have length 4).
    pub seq_len: usize,
    /// Directory for the prepared-text cache; `None` disables caching.
    pub cache_dir: Option<PathBuf>,
}

impl Dataset {
    /// Loads or generates the data and splits it.
    pub fn prepare(source: &DataSource, options: &DatasetOptions) -> Result<Self> {
        if !(options.train_fraction > 0.0 && options.train_fraction < 1.0) {
            return Err(Error::invalid(
                "train_fraction",
                format!("must be between 0 and 1, got {}", options.train_fraction),
            ));
        }
        match source {
            DataSource::Algorithmic(task) => Ok(Self::algorithmic(task, options)),
            DataSource::Text(text_source) => text::prepare(text_source, options),
        }
    }

    fn algorithmic(task: &ModularTask, options: &DatasetOptions) -> Self {
        let equations = task.equations();
        let (train_rows, valid_rows) = split_rows(equations.len(), options);
        let gather = |rows: &[usize]| {
            let mut examples = Examples::default();
            for &row in rows {
                let (tokens, answer) = equations[row];
                examples.inputs.extend_from_slice(&tokens);
                examples.targets.push(answer);
            }
            examples
        };
        Self {
            source: DataSource::Algorithmic(*task),
            cache: None,
            vocab_size: task.vocab_size(),
            seq_len: 4,
            target: Target::LastToken,
            train: gather(&train_rows),
            valid: gather(&valid_rows),
        }
    }

    /// Labels per sequence: 1 or `seq_len`.
    pub fn target_len(&self) -> usize {
        match self.target {
            Target::LastToken => 1,
            Target::NextToken => self.seq_len,
        }
    }

    /// Number of training sequences.
    pub fn train_len(&self) -> usize {
        self.train.inputs.len() / self.seq_len
    }

    /// Number of validation sequences.
    pub fn valid_len(&self) -> usize {
        self.valid.inputs.len() / self.seq_len
    }

    /// The batch of training rows `rows` on `device`.
    pub fn train_batch(&self, rows: &[u32], device: &Device) -> Batch {
        self.batch(&self.train, rows, device)
    }

    /// Validation rows `start..start + len` on `device`.
    pub fn valid_batch(&self, start: usize, len: usize, device: &Device) -> Batch {
        let rows: Vec<u32> = (start as u32..(start + len) as u32).collect();
        self.batch(&self.valid, &rows, device)
    }

    fn batch(&self, examples: &Examples, rows: &[u32], device: &Device) -> Batch {
        let seq = self.seq_len;
        let tl = self.target_len();
        let mut inputs = Vec::with_capacity(rows.len() * seq);
        let mut targets = Vec::with_capacity(rows.len() * tl);
        for &row in rows {
            let row = row as usize;
            inputs.extend(
                examples.inputs[row * seq..(row + 1) * seq]
                    .iter()
                    .map(|&t| i64::from(t)),
            );
            targets.extend(
                examples.targets[row * tl..(row + 1) * tl]
                    .iter()
                    .map(|&t| i64::from(t)),
            );
        }
        let n = rows.len();
        Batch {
            inputs: Tensor::from_data(TensorData::new(inputs, [n, seq]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n * tl]), device),
        }
    }
}

/// Shuffles `0..len` with the split seed and cuts it at the train fraction (at least one row on
/// each side).
pub(crate) fn split_rows(len: usize, options: &DatasetOptions) -> (Vec<usize>, Vec<usize>) {
    let mut rows: Vec<usize> = (0..len).collect();
    Rng::for_stream(options.split_seed, "split").shuffle(&mut rows);
    let cut = ((len as f64) * options.train_fraction).round() as usize;
    let cut = if len < 2 { len } else { cut.clamp(1, len - 1) };
    let valid = rows.split_off(cut);
    (rows, valid)
}

/// One batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq_len]`.
    pub inputs: Tensor<2, Int>,
    /// `[batch × target_len]`, row-major.
    pub targets: Tensor<1, Int>,
}

/// The seeded, resumable order in which training rows are visited.
///
/// Each epoch is a fresh random permutation of the training rows, cut into consecutive batches;
/// the last batch of an epoch may be smaller (as `torch.split` does in the Grokfast reference).
/// The saved state is the generator as it was before the current epoch's shuffle plus the position
/// in that epoch; restoring replays the shuffle.
#[derive(Debug, Clone)]
pub struct DataOrder {
    rows: usize,
    batch_size: usize,
    state: DataOrderState,
    permutation: Vec<u32>,
    epoch_finished: bool,
}

/// The part of [`DataOrder`] that goes into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataOrderState {
    /// The generator before this epoch's shuffle.
    pub rng_at_epoch_start: Rng,
    /// The generator after it: the next epoch starts here.
    pub rng: Rng,
    /// Epochs started so far (1 during the first).
    pub epoch: u64,
    /// Rows of the current epoch already handed out.
    pub cursor: usize,
}

impl DataOrder {
    /// A new order over `rows` training rows.
    pub fn new(rows: usize, batch_size: usize, seed: u64) -> Self {
        let rng = Rng::for_stream(seed, "order");
        Self {
            rows,
            batch_size: batch_size.max(1),
            state: DataOrderState {
                rng_at_epoch_start: rng.clone(),
                rng,
                epoch: 0,
                cursor: rows,
            },
            permutation: Vec::new(),
            epoch_finished: false,
        }
    }

    /// An order restored from a checkpoint.
    pub fn restore(rows: usize, batch_size: usize, state: DataOrderState) -> Self {
        let mut order = Self {
            rows,
            batch_size: batch_size.max(1),
            state,
            permutation: Vec::new(),
            epoch_finished: false,
        };
        if order.state.epoch > 0 {
            let mut rng = order.state.rng_at_epoch_start.clone();
            order.permutation = shuffled(rows, &mut rng);
        }
        order
    }

    /// The state to checkpoint.
    pub fn state(&self) -> &DataOrderState {
        &self.state
    }

    /// The next batch of row indices.
    pub fn next_batch(&mut self) -> Vec<u32> {
        if self.state.cursor >= self.rows {
            self.state.rng_at_epoch_start = self.state.rng.clone();
            self.permutation = shuffled(self.rows, &mut self.state.rng);
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
        let start = self.state.cursor;
        let end = (start + self.batch_size).min(self.rows);
        self.state.cursor = end;
        self.epoch_finished = end == self.rows;
        self.permutation[start..end].to_vec()
    }

    /// Whether the batch just handed out was the last of its epoch.
    pub fn epoch_finished(&self) -> bool {
        self.epoch_finished
    }

    /// The current epoch (1-based once the first batch was taken).
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }
}

fn shuffled(rows: usize, rng: &mut Rng) -> Vec<u32> {
    let mut permutation: Vec<u32> = (0..rows as u32).collect();
    rng.shuffle(&mut permutation);
    permutation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DatasetOptions {
        DatasetOptions {
            train_fraction: 0.5,
            split_seed: 3,
            seq_len: 4,
            cache_dir: None,
        }
    }

    #[test]
    fn algorithmic_split_is_seeded_and_disjoint() {
        let source = DataSource::Algorithmic("mod-mul:11".parse().unwrap());
        let a = Dataset::prepare(&source, &options()).unwrap();
        let b = Dataset::prepare(&source, &options()).unwrap();
        assert_eq!(a.train.inputs, b.train.inputs);
        assert_eq!(a.train_len() + a.valid_len(), 121);
        assert_eq!(a.train_len(), 61); // round(60.5)
        assert_eq!(a.vocab_size, 13);
        let rows = |e: &Examples| -> std::collections::HashSet<Vec<u32>> {
            e.inputs.chunks(4).map(<[u32]>::to_vec).collect()
        };
        assert!(rows(&a.train).is_disjoint(&rows(&a.valid)));

        let other = Dataset::prepare(
            &source,
            &DatasetOptions {
                split_seed: 4,
                ..options()
            },
        )
        .unwrap();
        assert_ne!(a.train.inputs, other.train.inputs);
    }

    #[test]
    fn bad_train_fraction_is_refused() {
        let source = DataSource::Algorithmic("mod-add:5".parse().unwrap());
        for fraction in [0.0, 1.0, -0.5, f64::NAN] {
            let result = Dataset::prepare(
                &source,
                &DatasetOptions {
                    train_fraction: fraction,
                    ..options()
                },
            );
            assert!(result.is_err(), "{fraction}");
        }
    }

    #[test]
    fn data_order_covers_each_epoch_and_restores_exactly() {
        let mut order = DataOrder::new(10, 4, 9);
        let mut epoch: Vec<u32> = Vec::new();
        for expected_len in [4, 4, 2] {
            let batch = order.next_batch();
            assert_eq!(batch.len(), expected_len);
            epoch.extend(batch);
        }
        assert!(order.epoch_finished());
        epoch.sort_unstable();
        assert_eq!(epoch, (0..10).collect::<Vec<_>>());

        order.next_batch();
        let saved = order.state().clone();
        let json = serde_json::to_string(&saved).unwrap();
        let expected: Vec<Vec<u32>> = (0..5).map(|_| order.next_batch()).collect();
        let mut restored = DataOrder::restore(10, 4, serde_json::from_str(&json).unwrap());
        let actual: Vec<Vec<u32>> = (0..5).map(|_| restored.next_batch()).collect();
        assert_eq!(actual, expected);
    }
}
