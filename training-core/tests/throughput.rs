//! A quick step-throughput probe on the Grokfast paper's model (x·y mod 97), run by hand:
//!
//! ```text
//! cargo test -p grokforge-training-core --release --test throughput -- --ignored --nocapture
//! ```
//!
//! `GROKFORGE_PROBE_BATCHES` (comma-separated, default `512,1024`) and `GROKFORGE_PROBE_STEPS`
//! (default 40) change what it measures. The benchmarks proper live in `benches/`.

use std::sync::Arc;
use std::time::Instant;

use grokforge_training_core::{
    Dataset, GrokFastKind, NoopObserver, RunControl, TrainSpec, Trainer, backend_description,
    parse_device,
};

#[test]
#[ignore = "timing probe, run by hand"]
fn grokfast_paper_steps_per_second() {
    let batches: Vec<usize> = std::env::var("GROKFORGE_PROBE_BATCHES")
        .unwrap_or_else(|_| "512,1024".into())
        .split(',')
        .map(|b| b.trim().parse().expect("a batch size"))
        .collect();
    let steps: u64 = std::env::var("GROKFORGE_PROBE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let device = parse_device("cpu").unwrap();
    println!("backend: {}", backend_description(&device));
    for grokfast in [GrokFastKind::None, GrokFastKind::Ema, GrokFastKind::Ma] {
        for &batch_size in &batches {
            let spec = TrainSpec {
                dataset: Some("mod-mul:97".into()),
                batch_size,
                grokfast,
                steps: 5,
                // No evaluation inside the timed steps.
                eval_every: 1_000_000,
                ..TrainSpec::default()
            };
            let data = Arc::new(
                Dataset::prepare(
                    &spec.data_source().unwrap(),
                    &spec.dataset_options(None).unwrap(),
                )
                .unwrap(),
            );
            let mut config = spec.run_config(0, &data).unwrap();
            let mut trainer = Trainer::new(config.clone(), data.clone(), &device).unwrap();
            // Warm-up steps (allocator, first-use costs), then the timed ones.
            trainer
                .run(&RunControl::default(), &mut NoopObserver)
                .unwrap();
            config.steps = 5 + steps;
            let checkpoint = trainer.checkpoint().unwrap();
            let mut checkpoint = checkpoint;
            checkpoint.meta.run = config;
            let mut trainer = Trainer::resume(checkpoint, data, &device).unwrap();
            let start = Instant::now();
            trainer
                .run(&RunControl::default(), &mut NoopObserver)
                .unwrap();
            let elapsed = start.elapsed().as_secs_f64();
            println!(
                "grokfast {grokfast:>4}  batch {batch_size:>5}: {:.2} steps/s ({steps} steps in {elapsed:.2} s)",
                steps as f64 / elapsed
            );
        }
    }
}
