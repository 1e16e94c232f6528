//! Weights in the safetensors format, under the parameter names of a plain PyTorch module.
//!
//! [`to_safetensors`] writes a [`Transformer`] so that the PyTorch reference model in
//! `training-core/benches/reference_model.py` (`GrokforgeTransformer`) loads it with
//! `load_state_dict(strict=True)` and computes the same logits. The names, in PyTorch's
//! orientation (`nn.Linear.weight` is `[out, in]`, the transpose of our [`Projection`]'s):
//!
//! | name | shape | ours |
//! |---|---|---|
//! | `tok_emb.weight` | `[vocab, d]` | `token_embedding` |
//! | `pos_emb.weight` | `[max_seq_len, d]` | `position_embedding` |
//! | `blocks.{i}.ln1.weight` / `.bias` | `[d]` | `blocks[i].attn_norm` |
//! | `blocks.{i}.attn.qkv.weight` / `.bias` | `[3d, d]` / `[3d]` | `blocks[i].attn.qkv` (q, k, v stacked) |
//! | `blocks.{i}.attn.out.weight` / `.bias` | `[d, d]` / `[d]` | `blocks[i].attn.out` |
//! | `blocks.{i}.ln2.weight` / `.bias` | `[d]` | `blocks[i].mlp_norm` |
//! | `blocks.{i}.mlp.up.weight` / `.bias` | `[ff, d]` / `[ff]` | `blocks[i].mlp.up` |
//! | `blocks.{i}.mlp.down.weight` / `.bias` | `[d, ff]` / `[d]` | `blocks[i].mlp.down` |
//! | `ln_f.weight` / `.bias` | `[d]` | `final_norm` |
//! | `head.weight` | `[vocab, d]` | `head` (no bias) |
//!
//! The file is written by hand (the format is an 8-byte little-endian header length, a JSON
//! header, then the raw little-endian data), so no extra crate is needed: every tensor is `F32`,
//! tensors follow in name order, and `__metadata__` carries `format: pt`, the whole
//! [`TransformerConfig`] as JSON under `config`, and each of its sizes as a string.
//!
//! [`Projection`]: crate::model::Projection

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::{LayerNorm, Projection, Transformer, TransformerConfig};

/// The file name a saved variant (and so the registry and its exports) gives the safetensors
/// weights.
pub const SAFETENSORS_FILE: &str = "model.safetensors";

/// One tensor ready to be written: row-major `f32` values in PyTorch's orientation.
struct Named {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Encodes `model` (of shape `config`) as a safetensors file with PyTorch parameter names.
///
/// Fails if the model's tensors do not have the sizes `config` gives them.
pub fn to_safetensors(model: &Transformer, config: &TransformerConfig) -> Result<Vec<u8>> {
    config.validate()?;
    let tensors = pytorch_state_dict(model, config)?;

    let mut header = serde_json::Map::new();
    header.insert("__metadata__".to_string(), metadata(config)?);
    let mut offset = 0usize;
    for (name, tensor) in &tensors {
        let end = offset + tensor.values.len() * 4;
        header.insert(
            name.clone(),
            json!({ "dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::Record(format!("safetensors header: {e}")))?;
    // Pad with spaces (as the reference writer does) so the data starts 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }

    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for tensor in tensors.values() {
        for value in &tensor.values {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
    Ok(bytes)
}

fn metadata(config: &TransformerConfig) -> Result<Value> {
    let config_json =
        serde_json::to_string(config).map_err(|e| Error::Record(format!("model config: {e}")))?;
    Ok(json!({
        "format": "pt",
        "config": config_json,
        "vocab_size": config.vocab_size.to_string(),
        "max_seq_len": config.max_seq_len.to_string(),
        "d_model": config.d_model.to_string(),
        "n_layers": config.n_layers.to_string(),
        "n_heads": config.n_heads.to_string(),
        "d_ff": config.ff_width().to_string(),
        "layer_norm_eps": "1e-05",
        "activation": "gelu",
    }))
}

/// Every parameter under its PyTorch name, sorted by name.
fn pytorch_state_dict(
    model: &Transformer,
    config: &TransformerConfig,
) -> Result<BTreeMap<String, Named>> {
    let d = config.d_model;
    let ff = config.ff_width();
    if model.blocks.len() != config.n_layers {
        return Err(mismatch(
            "blocks",
            &[config.n_layers],
            &[model.blocks.len()],
        ));
    }

    let mut out = BTreeMap::new();
    out.insert(
        "tok_emb.weight".to_string(),
        plain(
            "tok_emb.weight",
            model.token_embedding.val(),
            [config.vocab_size, d],
        )?,
    );
    out.insert(
        "pos_emb.weight".to_string(),
        plain(
            "pos_emb.weight",
            model.position_embedding.val(),
            [config.max_seq_len, d],
        )?,
    );
    for (i, block) in model.blocks.iter().enumerate() {
        let prefix = format!("blocks.{i}");
        norm(&mut out, &format!("{prefix}.ln1"), &block.attn_norm, d)?;
        linear(
            &mut out,
            &format!("{prefix}.attn.qkv"),
            &block.attn.qkv,
            d,
            3 * d,
            true,
        )?;
        linear(
            &mut out,
            &format!("{prefix}.attn.out"),
            &block.attn.out,
            d,
            d,
            true,
        )?;
        norm(&mut out, &format!("{prefix}.ln2"), &block.mlp_norm, d)?;
        linear(
            &mut out,
            &format!("{prefix}.mlp.up"),
            &block.mlp.up,
            d,
            ff,
            true,
        )?;
        linear(
            &mut out,
            &format!("{prefix}.mlp.down"),
            &block.mlp.down,
            ff,
            d,
            true,
        )?;
    }
    norm(&mut out, "ln_f", &model.final_norm, d)?;
    linear(&mut out, "head", &model.head, d, config.vocab_size, false)?;
    Ok(out)
}

fn plain<const D: usize>(name: &str, tensor: Tensor<D>, shape: [usize; D]) -> Result<Named> {
    let dims = tensor.dims();
    if dims != shape {
        return Err(mismatch(name, &shape, &dims));
    }
    Ok(Named {
        shape: shape.to_vec(),
        values: crate::to_f32_vec(tensor),
    })
}

fn norm(out: &mut BTreeMap<String, Named>, prefix: &str, norm: &LayerNorm, d: usize) -> Result<()> {
    let weight = format!("{prefix}.weight");
    let bias = format!("{prefix}.bias");
    out.insert(weight.clone(), plain(&weight, norm.gamma.val(), [d])?);
    out.insert(bias.clone(), plain(&bias, norm.beta.val(), [d])?);
    Ok(())
}

/// A projection as `nn.Linear(d_in, d_out)`: weight `[d_out, d_in]` (ours is `[d_in, d_out]`).
fn linear(
    out: &mut BTreeMap<String, Named>,
    prefix: &str,
    projection: &Projection,
    d_in: usize,
    d_out: usize,
    with_bias: bool,
) -> Result<()> {
    let weight_name = format!("{prefix}.weight");
    let ours = plain(&weight_name, projection.weight.val(), [d_in, d_out])?.values;
    let mut torch = vec![0f32; ours.len()];
    for i in 0..d_in {
        for o in 0..d_out {
            torch[o * d_in + i] = ours[i * d_out + o];
        }
    }
    out.insert(
        weight_name,
        Named {
            shape: vec![d_out, d_in],
            values: torch,
        },
    );

    let bias_name = format!("{prefix}.bias");
    match (&projection.bias, with_bias) {
        (Some(bias), true) => {
            out.insert(bias_name.clone(), plain(&bias_name, bias.val(), [d_out])?);
        }
        (None, false) => {}
        (Some(_), false) => return Err(Error::Record(format!("{bias_name}: unexpected bias"))),
        (None, true) => return Err(Error::Record(format!("{bias_name}: missing bias"))),
    }
    Ok(())
}

fn mismatch(name: &str, expected: &[usize], found: &[usize]) -> Error {
    Error::Record(format!(
        "{name}: the model has shape {found:?} where its config gives {expected:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device;

    fn header(bytes: &[u8]) -> (usize, serde_json::Map<String, Value>) {
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        (8 + len, header.as_object().unwrap().clone())
    }

    fn tensor(bytes: &[u8], start: usize, entry: &Value) -> Vec<f32> {
        let offsets = entry["data_offsets"].as_array().unwrap();
        let (a, b) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        bytes[start + a..start + b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_file_has_every_parameter_in_pytorch_orientation() {
        let config = TransformerConfig::new(11, 4, 8, 2, 2).with_d_ff(Some(12));
        let model = config.init(7, &test_device()).unwrap();
        let bytes = to_safetensors(&model, &config).unwrap();
        let (start, header) = header(&bytes);
        assert_eq!(start % 8, 0, "data must start 8-byte aligned");

        let meta = header["__metadata__"].as_object().unwrap();
        assert_eq!(meta["format"], "pt");
        let back: TransformerConfig =
            serde_json::from_str(meta["config"].as_str().unwrap()).unwrap();
        assert_eq!(back, config);

        // Every parameter, each once, the data contiguous and in name order.
        let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
        assert_eq!(names.len(), 2 + 2 * 12 + 2 + 1);
        let mut entries: Vec<(&String, u64, u64)> = names
            .iter()
            .map(|name| {
                let offsets = header[*name]["data_offsets"].as_array().unwrap();
                (
                    *name,
                    offsets[0].as_u64().unwrap(),
                    offsets[1].as_u64().unwrap(),
                )
            })
            .collect();
        entries.sort_by_key(|(_, a, _)| *a);
        let mut expected_start = 0;
        for window in entries.windows(2) {
            assert!(window[0].0 < window[1].0, "tensors are in name order");
        }
        let mut params = 0;
        for (name, a, b) in &entries {
            assert_eq!(*a, expected_start, "{name}");
            expected_start = *b;
            let shape = header[*name]["shape"].as_array().unwrap();
            let count: u64 = shape.iter().map(|s| s.as_u64().unwrap()).product();
            assert_eq!(b - a, count * 4, "{name}");
            params += count;
        }
        assert_eq!(bytes.len() - start, expected_start as usize);
        assert_eq!(params as usize, config.num_params());

        // nn.Linear orientation: head.weight is [vocab, d] and row v is our column v.
        assert_eq!(header["head.weight"]["shape"], json!([11, 8]));
        let ours = crate::to_f32_vec(model.head.weight.val()); // [d, vocab]
        let theirs = tensor(&bytes, start, &header["head.weight"]);
        for v in 0..11 {
            for i in 0..8 {
                assert_eq!(theirs[v * 8 + i], ours[i * 11 + v]);
            }
        }
        assert_eq!(header["blocks.1.attn.qkv.weight"]["shape"], json!([24, 8]));
        assert_eq!(header["blocks.0.mlp.up.weight"]["shape"], json!([12, 8]));
        assert!(!header.contains_key("head.bias"));
    }

    #[test]
    fn a_config_that_does_not_fit_the_model_is_refused() {
        let config = TransformerConfig::new(11, 4, 8, 1, 2);
        let model = config.init(7, &test_device()).unwrap();
        let other = TransformerConfig::new(12, 4, 8, 1, 2);
        let err = to_safetensors(&model, &other).unwrap_err().to_string();
        assert!(err.contains("tok_emb.weight"), "{err}");
    }
}
