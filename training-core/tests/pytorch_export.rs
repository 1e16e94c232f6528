//! The safetensors export loads into the PyTorch reference model
//! (`training-core/benches/reference_model.py`) and gives the logits grokforge gives.
//!
//! The model comes from a real `cognate` run (a few steps, so layer norms and biases are no
//! longer at their initial 1s and 0s and a misnamed or mis-oriented tensor shows), through
//! `save_variant`'s `model.safetensors`. Python is the LibTorch virtualenv's
//! (`scripts/libtorch-env.sh`, found by `tests/support`); `GROKFORGE_TORCH_PYTHON` overrides it.
//! Without an importable torch the test says so and passes, unless `GROKFORGE_REQUIRE_TORCH=1`,
//! when it fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use grokforge_training_core::burn_tensor::{Int, Tensor, TensorData};
use grokforge_training_core::export::SAFETENSORS_FILE;
use grokforge_training_core::{
    NoopObserver, PhaseContext, TrainSpec, load_model, parse_device, recipe_for,
};

use support::{bench_script, torch_or_skip};

const TOLERANCE: f32 = 1e-5;

#[test]
fn exported_safetensors_give_the_same_logits_in_pytorch() {
    let Some(python) = torch_or_skip("the PyTorch export check") else {
        return;
    };

    // A few training steps through the cognate recipe, which writes model.safetensors.
    let device = parse_device("cpu").unwrap();
    let out = tempfile::tempdir().unwrap();
    let spec = TrainSpec {
        dataset: Some("mod-add:11".into()),
        d_model: Some(16),
        n_layers: Some(2),
        n_heads: Some(4),
        d_ff: Some(24),
        batch_size: 16,
        steps: 8,
        eval_every: 4,
        lr: 1e-2,
        warmup_steps: 1,
        variants: 1,
        out: Some(out.path().to_path_buf()),
        ..TrainSpec::default()
    };
    let outcome = recipe_for(spec.phase)
        .unwrap()
        .run(&mut PhaseContext {
            spec: spec.clone(),
            device: device.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
            observer: &mut NoopObserver,
            cache_dir: None,
            inputs: Vec::new(),
            continue_on_divergence: false,
        })
        .unwrap();
    let dir = outcome.variants[0].dir.clone().unwrap();
    let weights = dir.join(SAFETENSORS_FILE);
    assert!(weights.exists(), "{} was not written", weights.display());
    let (config, model) = load_model(&dir, &device).unwrap();
    assert!(
        model.blocks[0]
            .attn_norm
            .beta
            .val()
            .try_into_vec_as::<f32>()
            .unwrap()
            .iter()
            .any(|b| *b != 0.0),
        "training should have moved the layer norm shifts off zero"
    );

    // A fixed batch covering every position and several tokens.
    let (batch, seq, vocab) = (3usize, config.max_seq_len, config.vocab_size);
    let tokens: Vec<i64> = (0..batch * seq)
        .map(|i| ((i * 7 + 3) % vocab) as i64)
        .collect();
    let rows: Vec<Vec<i64>> = tokens.chunks(seq).map(<[i64]>::to_vec).collect();
    let ours: Vec<f32> = model
        .forward(Tensor::<2, Int>::from_data(
            TensorData::new(tokens, [batch, seq]),
            &device,
        ))
        .try_into_vec_as::<f32>()
        .unwrap();

    let run = python
        .command()
        .arg(bench_script("reference_model.py"))
        .arg("logits")
        .arg(&weights)
        .arg(serde_json::to_string(&rows).unwrap())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "reference_model.py failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(reply["shape"], serde_json::json!([batch, seq, vocab]));
    let theirs: Vec<f32> = reply["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(theirs.len(), ours.len());

    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "max abs logit difference grokforge vs PyTorch: {max_diff:e} over {} logits",
        ours.len()
    );
    assert!(
        max_diff <= TOLERANCE,
        "max abs logit difference {max_diff} > {TOLERANCE}"
    );
}
