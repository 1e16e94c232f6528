//! The decoder-only causal transformer and its presets.
//!
//! Token and learned position embeddings, pre-LN blocks (causal multi-head self-attention, GELU
//! MLP), a final layer norm and a bias-free output head. Weights are initialised as PyTorch
//! initialises the equivalent layers (`nn.Embedding` N(0, 1), `nn.Linear` U(±1/√fan_in),
//! `nn.MultiheadAttention` Xavier-uniform input projection with zero biases), drawn from the
//! crate's own seeded [`Rng`] so the same seed gives the same model on every backend.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{embedding, layer_norm};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The shape of a [`Transformer`]. Saved as JSON next to every model it produced.
#[derive(Config, Debug, PartialEq, Eq)]
pub struct TransformerConfig {
    /// Number of token ids the model reads and predicts.
    pub vocab_size: usize,
    /// Longest sequence the position table covers.
    pub max_seq_len: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Attention heads per block; must divide `d_model`.
    pub n_heads: usize,
    /// Width of the MLP's hidden layer; `None` means 4 × `d_model`.
    pub d_ff: Option<usize>,
}

impl TransformerConfig {
    /// The MLP's hidden width.
    pub fn ff_width(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    /// Checks that the sizes make a model.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("max_seq_len", self.max_seq_len),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.ff_width()),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::invalid(field, "must be positive"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::invalid(
                "n_heads",
                format!(
                    "{} heads do not divide d_model {}",
                    self.n_heads, self.d_model
                ),
            ));
        }
        Ok(())
    }

    /// Number of trainable parameters a model of this shape has.
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let ff = self.ff_width();
        let block = 2 * (2 * d) // two layer norms
            + (d * 3 * d + 3 * d) + (d * d + d) // attention
            + (d * ff + ff) + (ff * d + d); // MLP
        self.vocab_size * d
            + self.max_seq_len * d
            + self.n_layers * block
            + 2 * d
            + d * self.vocab_size
    }

    /// Builds the model with weights drawn from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> Result<Transformer> {
        self.validate()?;
        let mut rng = Rng::for_stream(seed, "init");
        let d = self.d_model;
        let blocks = (0..self.n_layers)
            .map(|_| Block::new(d, self.n_heads, self.ff_width(), &mut rng, device))
            .collect();
        Ok(Transformer {
            token_embedding: normal_param([self.vocab_size, d], &mut rng, device),
            position_embedding: normal_param([self.max_seq_len, d], &mut rng, device),
            blocks,
            final_norm: LayerNorm::new(d, device),
            head: Projection::new(d, self.vocab_size, Bias::None, &mut rng, device),
        })
    }
}

/// Named model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ModelPreset {
    /// The Grokfast paper's algorithmic model: 2 layers, d = 128, 4 heads, no dropout
    /// (about 420k parameters at p = 97).
    GrokfastPaper,
    /// The Cognate size of the Agent Forge pipeline: d = 216, 11 layers, 4 heads, FFN 864,
    /// vocabulary 32k.
    #[serde(rename = "cognate-25m")]
    Cognate25m,
}

impl ModelPreset {
    /// Every preset, in the order the CLI lists them.
    pub const ALL: [ModelPreset; 2] = [ModelPreset::GrokfastPaper, ModelPreset::Cognate25m];

    /// The preset's name as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPreset::GrokfastPaper => "grokfast-paper",
            ModelPreset::Cognate25m => "cognate-25m",
        }
    }

    /// The preset's full configuration. A training run replaces `vocab_size` and `max_seq_len`
    /// with what its dataset needs.
    pub fn config(self) -> TransformerConfig {
        match self {
            ModelPreset::GrokfastPaper => TransformerConfig::new(99, 5, 128, 2, 4),
            ModelPreset::Cognate25m => {
                TransformerConfig::new(32_000, 512, 216, 11, 4).with_d_ff(Some(864))
            }
        }
    }
}

impl fmt::Display for ModelPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelPreset {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        ModelPreset::ALL
            .into_iter()
            .find(|preset| preset.as_str() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "preset",
                    format!("unknown preset {name:?}; expected grokfast-paper or cognate-25m"),
                )
            })
    }
}

/// Whether a projection has a bias, and how it starts.
#[derive(Debug, Clone, Copy)]
enum Bias {
    None,
    Zeros,
    Uniform,
}

/// `y = x·W + b` over the last axis, computed as one 2-D matrix product.
///
/// Why not `burn::nn::Linear`: burn-dispatch 0.22.1 does not forward `linear` to the backend
/// (`// TODO: linear ops` in its `ops/module.rs`), so `Linear` on a `[B, S, d_in]` input falls
/// back to a broadcast batched matmul, and once B·S reaches 4096 burn stops folding the batch
/// into rows: autodiff's backward then builds each weight gradient as a `[B, d_in, d_out]`
/// temporary summed afterwards (1 GiB per step at batch 1024 on the Grokfast model, 5× slower
/// than PyTorch). Flattening to `[B·S, d_in]` first, as `torch.nn.functional.linear` does,
/// makes the weight gradient a single `[d_in, B·S] × [B·S, d_out]` product.
#[derive(Module, Debug)]
pub struct Projection {
    /// `[d_in, d_out]` (burn's orientation, the transpose of PyTorch's).
    pub weight: Param<Tensor<2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Projection {
    fn new(d_in: usize, d_out: usize, bias: Bias, rng: &mut Rng, device: &Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        Self::with_bound(d_in, d_out, bound, bias, rng, device)
    }

    fn with_bound(
        d_in: usize,
        d_out: usize,
        bound: f64,
        bias: Bias,
        rng: &mut Rng,
        device: &Device,
    ) -> Self {
        // Drawn in PyTorch's [d_out, d_in] order and transposed, so a weight is the same matrix
        // PyTorch would draw from the same uniform stream.
        let torch_order: Vec<f32> = (0..d_in * d_out).map(|_| uniform(rng, bound)).collect();
        let mut burn_order = vec![0f32; d_in * d_out];
        for o in 0..d_out {
            for i in 0..d_in {
                burn_order[i * d_out + o] = torch_order[o * d_in + i];
            }
        }
        let weight = Param::from_data(TensorData::new(burn_order, [d_in, d_out]), device);
        let bias_bound = 1.0 / (d_in as f64).sqrt();
        let bias = match bias {
            Bias::None => None,
            Bias::Zeros => Some(Param::from_data(
                TensorData::new(vec![0f32; d_out], [d_out]),
                device,
            )),
            Bias::Uniform => {
                let values: Vec<f32> = (0..d_out).map(|_| uniform(rng, bias_bound)).collect();
                Some(Param::from_data(TensorData::new(values, [d_out]), device))
            }
        };
        Self { weight, bias }
    }

    /// Applies the projection to the last axis of `input`.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        project(
            input,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        )
    }

    /// Output columns `start..start + len` only: `forward(input).narrow(D - 1, start, len)`
    /// without computing the others.
    fn forward_columns<const D: usize>(
        &self,
        input: Tensor<D>,
        start: usize,
        len: usize,
    ) -> Tensor<D> {
        project(
            input,
            self.weight.val().narrow(1, start, len),
            self.bias.as_ref().map(|b| b.val().narrow(0, start, len)),
        )
    }
}

/// `input · weight + bias` over the last axis of `input`, as one 2-D matrix product.
fn project<const D: usize>(
    input: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let mut dims = input.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = weight.dims()[1];
    let output = input.reshape([rows, d_in]).matmul(weight);
    let output = match bias {
        Some(bias) => output + bias.unsqueeze::<2>(),
        None => output,
    };
    output.reshape(dims)
}

/// Layer normalisation over the last axis with a learned scale and shift.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale, starts at 1.
    pub gamma: Param<Tensor<1>>,
    /// Shift, starts at 0.
    pub beta: Param<Tensor<1>>,
    epsilon: f64,
}

impl LayerNorm {
    fn new(d: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_data(TensorData::new(vec![1f32; d], [d]), device),
            beta: Param::from_data(TensorData::new(vec![0f32; d], [d]), device),
            // PyTorch's nn.LayerNorm default.
            epsilon: 1e-5,
        }
    }

    fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        layer_norm(input, self.gamma.val(), Some(self.beta.val()), self.epsilon)
    }
}

/// Causal multi-head self-attention with a fused query/key/value projection.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// `d → 3d`: queries, keys and values side by side.
    pub qkv: Projection,
    /// `d → d`.
    pub out: Projection,
    n_heads: usize,
}

impl CausalSelfAttention {
    fn new(d: usize, n_heads: usize, rng: &mut Rng, device: &Device) -> Self {
        // nn.MultiheadAttention: Xavier-uniform in_proj over [3d, d], zero biases.
        let xavier = (6.0 / (d as f64 + 3.0 * d as f64)).sqrt();
        Self {
            qkv: Projection::with_bound(d, 3 * d, xavier, Bias::Zeros, rng, device),
            out: Projection::new(d, d, Bias::Zeros, rng, device),
            n_heads,
        }
    }

    fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        let [batch, seq, d] = input.dims();
        let heads = self.n_heads;
        let head_dim = d / heads;
        let device = input.device();

        let qkv = self.qkv.forward(input);
        let split = |index: usize| {
            qkv.clone()
                .narrow(2, index * d, d)
                .reshape([batch, seq, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (query, key, value) = (split(0), split(1), split(2));

        let scores = query
            .matmul(key.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt());
        let scores = scores + causal_mask(seq, &device);
        let weights = softmax(scores, 3);
        let context = weights
            .matmul(value)
            .swap_dims(1, 2)
            .reshape([batch, seq, d]);
        self.out.forward(context)
    }

    /// The attention output at the last position only, `[batch, d]`: the last query against
    /// every key (nothing lies after it, so no mask), without the other positions' queries.
    fn forward_last(&self, input: Tensor<3>) -> Tensor<2> {
        let [batch, seq, d] = input.dims();
        let heads = self.n_heads;
        let head_dim = d / heads;

        let last = input.clone().narrow(1, seq - 1, 1).reshape([batch, d]);
        let query = self
            .qkv
            .forward_columns(last, 0, d)
            .reshape([batch, heads, 1, head_dim]);
        let kv = self.qkv.forward_columns(input, d, 2 * d);
        let split = |index: usize| {
            kv.clone()
                .narrow(2, index * d, d)
                .reshape([batch, seq, heads, head_dim])
                .swap_dims(1, 2)
        };
        let (key, value) = (split(0), split(1));

        let scores = query
            .matmul(key.swap_dims(2, 3))
            .mul_scalar(1.0 / (head_dim as f64).sqrt());
        let weights = softmax(scores, 3);
        // [batch, heads, 1, head_dim] is already the heads side by side.
        let context = weights.matmul(value).reshape([batch, d]);
        self.out.forward(context)
    }
}

/// `[1, 1, seq, seq]` with −∞ above the diagonal (a position never sees later ones), 0 elsewhere.
fn causal_mask(seq: usize, device: &Device) -> Tensor<4> {
    let mut values = vec![0f32; seq * seq];
    for row in 0..seq {
        for col in row + 1..seq {
            values[row * seq + col] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_data(TensorData::new(values, [1, 1, seq, seq]), device)
}

/// The position-wise MLP: `d → ff → d` with GELU (the exact, erf-based one, as `nn.GELU()`).
#[derive(Module, Debug)]
pub struct Mlp {
    /// `d → ff`.
    pub up: Projection,
    /// `ff → d`.
    pub down: Projection,
}

impl Mlp {
    fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.down.forward(gelu(self.up.forward(input)))
    }
}

/// One pre-LN block: `x + attn(ln₁(x))`, then `x + mlp(ln₂(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: LayerNorm,
    /// Causal self-attention.
    pub attn: CausalSelfAttention,
    /// Norm before the MLP.
    pub mlp_norm: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl Block {
    fn new(d: usize, n_heads: usize, ff: usize, rng: &mut Rng, device: &Device) -> Self {
        Self {
            attn_norm: LayerNorm::new(d, device),
            attn: CausalSelfAttention::new(d, n_heads, rng, device),
            mlp_norm: LayerNorm::new(d, device),
            mlp: Mlp {
                up: Projection::new(d, ff, Bias::Uniform, rng, device),
                down: Projection::new(ff, d, Bias::Uniform, rng, device),
            },
        }
    }

    fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        let x = input.clone() + self.attn.forward(self.attn_norm.forward(input));
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }

    /// The block's output at the last position only, `[batch, d]`. Keys and values still come
    /// from every position; the query, the attention output, the residual and the MLP are
    /// computed for the last one alone.
    fn forward_last(&self, input: Tensor<3>) -> Tensor<2> {
        let [batch, seq, d] = input.dims();
        let last = input.clone().narrow(1, seq - 1, 1).reshape([batch, d]);
        let x = last + self.attn.forward_last(self.attn_norm.forward(input));
        x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
    }
}

/// The decoder-only transformer.
#[derive(Module, Debug)]
pub struct Transformer {
    /// `[vocab, d]`.
    pub token_embedding: Param<Tensor<2>>,
    /// `[max_seq_len, d]`.
    pub position_embedding: Param<Tensor<2>>,
    /// The blocks, input first.
    pub blocks: Vec<Block>,
    /// Norm before the head.
    pub final_norm: LayerNorm,
    /// `d → vocab`, without bias.
    pub head: Projection,
}

impl Transformer {
    /// The embedded input, `[batch, seq, d]`: token plus position embeddings.
    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [_, seq] = tokens.dims();
        let d = self.token_embedding.dims()[1];
        let tokens = embedding(self.token_embedding.val(), tokens);
        let positions = self
            .position_embedding
            .val()
            .narrow(0, 0, seq)
            .reshape([1, seq, d]);
        tokens + positions
    }

    /// The final hidden states, `[batch, seq, d]`, after the final norm.
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let mut x = self.embed(tokens);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.final_norm.forward(x)
    }

    /// Logits for every position, `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head.forward(self.hidden(tokens))
    }

    /// Logits for the last position only, `[batch, vocab]`: what the algorithmic tasks score.
    /// The same numbers as `forward(..)[:, -1]` (up to float rounding), with the last block
    /// computing only what the last position needs: its query, attention output and MLP, but
    /// every position's keys and values. On the `grokfast-paper` model that is about a third of
    /// the arithmetic of a step.
    pub fn forward_last(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        let mut x = self.embed(tokens);
        let (last_block, earlier) = self
            .blocks
            .split_last()
            .expect("a validated config has at least one block");
        for block in earlier {
            x = block.forward(x);
        }
        self.head
            .forward(self.final_norm.forward(last_block.forward_last(x)))
    }
}

fn uniform(rng: &mut Rng, bound: f64) -> f32 {
    ((rng.next_f64() * 2.0 - 1.0) * bound) as f32
}

fn normal_param(shape: [usize; 2], rng: &mut Rng, device: &Device) -> Param<Tensor<2>> {
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| rng.normal() as f32)
        .collect();
    Param::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device;

    #[test]
    fn presets_parse_print_and_have_the_documented_sizes() {
        for preset in ModelPreset::ALL {
            assert_eq!(preset.as_str().parse::<ModelPreset>().unwrap(), preset);
        }
        let paper = ModelPreset::GrokfastPaper.config();
        assert_eq!((paper.d_model, paper.n_layers, paper.n_heads), (128, 2, 4));
        assert_eq!(paper.ff_width(), 512);
        let params = paper.num_params();
        assert!((400_000..450_000).contains(&params), "{params}");

        let cognate = ModelPreset::Cognate25m.config();
        assert_eq!(
            (
                cognate.d_model,
                cognate.n_layers,
                cognate.n_heads,
                cognate.ff_width()
            ),
            (216, 11, 4, 864)
        );
        assert_eq!(cognate.vocab_size, 32_000);
        assert!("gpt-5".parse::<ModelPreset>().is_err());
    }

    #[test]
    fn config_round_trips_through_json() {
        let config = ModelPreset::Cognate25m.config();
        let json = serde_json::to_string(&config).unwrap();
        let back: TransformerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let device = test_device();
        let config = TransformerConfig::new(11, 4, 16, 2, 4).with_d_ff(Some(24));
        let model = config.init(1, &device).unwrap();
        assert_eq!(model.num_params(), config.num_params());
    }

    #[test]
    fn the_model_is_causal_and_shapes_are_right() {
        let device = test_device();
        let config = TransformerConfig::new(10, 4, 16, 2, 2);
        let model = config.init(3, &device).unwrap();
        let a = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [1, 4]), &device);
        let b = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2, 9, 9], [1, 4]), &device);
        let logits_a = model.forward(a.clone());
        assert_eq!(logits_a.dims(), [1, 4, 10]);
        let logits_b = model.forward(b);
        // Positions 0 and 1 cannot see positions 2 and 3.
        let early_a = crate::to_f32_vec(logits_a.clone().narrow(1, 0, 2));
        let early_b = crate::to_f32_vec(logits_b.narrow(1, 0, 2));
        for (x, y) in early_a.iter().zip(&early_b) {
            assert!((x - y).abs() < 1e-5);
        }
        let last = crate::to_f32_vec(model.forward_last(a));
        let from_full = crate::to_f32_vec(logits_a.narrow(1, 3, 1));
        for (x, y) in last.iter().zip(&from_full) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    /// `forward_last` prunes the last block to the last position; the loss it trains on must
    /// have the gradients of the unpruned model's last position, for every parameter (the
    /// pruned query/key/value columns and the other positions' paths included).
    #[test]
    fn the_last_position_path_has_the_full_models_gradients() {
        use burn::optim::GradientsParams;

        let device = test_device().autodiff();
        let config = TransformerConfig::new(12, 5, 16, 3, 4).with_d_ff(Some(40));
        let model = config.init(7, &device).unwrap();
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 4, 2, 11, 3, 0, 7, 7, 5, 10], [2, 5]),
            &device,
        );
        let weights = Tensor::<2>::from_data(
            TensorData::new((0..24).map(|i| (i as f32 * 0.37).sin()).collect(), [2, 12]),
            &device,
        );
        let grads = |logits: Tensor<2>| {
            let loss = (logits * weights.clone()).sum();
            GradientsParams::from_grads(loss.backward(), &model)
        };
        let pruned = grads(model.forward_last(tokens.clone()));
        let full = grads(model.forward(tokens).narrow(1, 4, 1).reshape([2, 12]));

        struct Compare<'a> {
            pruned: &'a GradientsParams,
            full: &'a GradientsParams,
            checked: usize,
        }
        impl burn::module::ModuleVisitor for Compare<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let id = param.id;
                let (Some(a), Some(b)) = (self.pruned.get::<D>(id), self.full.get::<D>(id)) else {
                    panic!("parameter {id} has a gradient on one path only");
                };
                let (a, b) = (crate::to_f32_vec(a), crate::to_f32_vec(b));
                let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-4 * scale, "parameter {id}: {x} vs {y}");
                }
                self.checked += 1;
            }
        }
        let mut compare = Compare {
            pruned: &pruned,
            full: &full,
            checked: 0,
        };
        model.visit(&mut compare);
        // Embeddings 2, three blocks of 12, final norm 2, head 1.
        assert_eq!(compare.checked, 2 + 3 * 12 + 2 + 1);
    }

    #[test]
    fn same_seed_same_weights_different_seed_different_weights() {
        let device = test_device();
        let config = TransformerConfig::new(10, 4, 8, 1, 2);
        let weights = |seed| -> Vec<f32> {
            let model = config.init(seed, &device).unwrap();
            crate::to_f32_vec(model.head.weight.val())
        };
        assert_eq!(weights(5), weights(5));
        assert_ne!(weights(5), weights(6));
    }

    #[test]
    fn heads_must_divide_the_width() {
        let config = TransformerConfig::new(10, 4, 10, 1, 3);
        assert!(matches!(
            config.init(0, &test_device()),
            Err(Error::InvalidSetting {
                field: "n_heads",
                ..
            })
        ));
    }
}
