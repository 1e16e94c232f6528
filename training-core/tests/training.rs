//! End-to-end tests of the training core on tiny models: the loop, exact resume, checkpoint
//! integrity, cancellation and the `cognate` recipe.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use grokforge_training_core::{
    Checkpoint, Dataset, Error, GrokFastKind, NoopObserver, PhaseContext, PhaseStatus, Progress,
    RecipeObserver, RunControl, StopReason, TrainSpec, Trainer, TrainingObserver, VariantPlan,
    VariantResult, load_model, parse_device, recipe_for,
};

fn tiny_spec() -> TrainSpec {
    TrainSpec {
        dataset: Some("mod-add:11".into()),
        d_model: Some(16),
        n_layers: Some(1),
        n_heads: Some(2),
        d_ff: Some(32),
        batch_size: 16,
        steps: 12,
        eval_every: 4,
        lr: 3e-3,
        weight_decay: Some(0.01),
        warmup_steps: 2,
        variants: 2,
        ..TrainSpec::default()
    }
}

fn dataset(spec: &TrainSpec) -> Arc<Dataset> {
    Arc::new(
        Dataset::prepare(
            &spec.data_source().unwrap(),
            &spec.dataset_options(None).unwrap(),
        )
        .unwrap(),
    )
}

/// Every float parameter, in visit order, as raw bits.
fn weights<M: Module>(model: &M) -> Vec<Vec<u32>> {
    struct Collect(Vec<Vec<u32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values: Vec<f32> = param.val().try_into_vec_as::<f32>().unwrap();
            self.0.push(values.into_iter().map(f32::to_bits).collect());
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

#[derive(Default)]
struct Recorder {
    steps: Vec<u64>,
    losses: Vec<f64>,
    evals: usize,
    rates: Vec<f64>,
    stop_after: Option<(u64, Arc<AtomicBool>)>,
}

impl TrainingObserver for Recorder {
    fn on_progress(&mut self, progress: &Progress<'_>) {
        self.steps.push(progress.step);
        self.losses.push(progress.loss);
        self.rates.push(progress.steps_per_sec);
        if progress.evaluated {
            self.evals += 1;
            assert!(progress.last_eval.is_some());
        }
        if let Some((at, flag)) = &self.stop_after
            && progress.step == *at
        {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl RecipeObserver for Recorder {}

#[test]
fn a_tiny_run_reports_every_step_and_evaluates_on_schedule() {
    let device = parse_device("cpu").unwrap();
    let spec = tiny_spec();
    let data = dataset(&spec);
    let config = spec.run_config(0, &data).unwrap();
    let mut trainer = Trainer::new(config, data, &device).unwrap();
    let mut recorder = Recorder::default();
    let outcome = trainer.run(&RunControl::default(), &mut recorder).unwrap();
    assert_eq!(outcome.reason, StopReason::Completed);
    assert_eq!(recorder.steps, (1..=12).collect::<Vec<_>>());
    assert_eq!(recorder.evals, 3);
    assert_eq!(trainer.history().evals.len(), 3);
    assert!(recorder.losses.iter().all(|l| l.is_finite()));
    let last = outcome.final_eval.unwrap();
    assert_eq!(last.step, 12);
    assert!((0.0..=1.0).contains(&last.val_accuracy));
    assert!(recorder.rates.last().unwrap() > &0.0);
}

fn interrupted_matches_uninterrupted(grokfast: GrokFastKind) {
    // Bit-identical results need a fixed intra-op thread count; with one thread LibTorch's
    // reductions do not depend on what the other tests run concurrently.
    grokforge_training_core::device::set_num_threads(1);
    let device = parse_device("cpu").unwrap();
    let spec = TrainSpec {
        grokfast,
        window: 3,
        ..tiny_spec()
    };
    let data = dataset(&spec);
    let config = spec.run_config(0, &data).unwrap();

    let mut straight = Trainer::new(config.clone(), data.clone(), &device).unwrap();
    straight
        .run(&RunControl::default(), &mut NoopObserver)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.gfck");
    let cancel = Arc::new(AtomicBool::new(false));
    let control = RunControl {
        cancel: cancel.clone(),
        checkpoint_path: Some(path.clone()),
        spec: None,
        continue_on_divergence: false,
    };
    let mut first = Trainer::new(config, data.clone(), &device).unwrap();
    let mut recorder = Recorder {
        stop_after: Some((7, cancel)),
        ..Recorder::default()
    };
    let outcome = first.run(&control, &mut recorder).unwrap();
    assert_eq!(outcome.step, 7);
    assert_eq!(
        outcome.reason,
        StopReason::Cancelled {
            checkpoint: Some(path.clone())
        }
    );
    drop(first);

    let mut resumed = Trainer::resume(Checkpoint::load(&path).unwrap(), data, &device).unwrap();
    assert_eq!(resumed.step(), 7);
    resumed
        .run(&RunControl::default(), &mut NoopObserver)
        .unwrap();
    assert_eq!(resumed.step(), 12);
    assert_eq!(weights(resumed.model()), weights(straight.model()));
    assert_eq!(resumed.history(), straight.history());
}

#[test]
fn interrupted_and_resumed_ends_with_the_same_weights_ema() {
    interrupted_matches_uninterrupted(GrokFastKind::Ema);
}

#[test]
fn interrupted_and_resumed_ends_with_the_same_weights_ma() {
    interrupted_matches_uninterrupted(GrokFastKind::Ma);
}

fn write_checkpoint(dir: &Path) -> std::path::PathBuf {
    let device = parse_device("cpu").unwrap();
    let spec = TrainSpec {
        steps: 2,
        ..tiny_spec()
    };
    let data = dataset(&spec);
    let mut trainer = Trainer::new(spec.run_config(0, &data).unwrap(), data, &device).unwrap();
    trainer
        .run(&RunControl::default(), &mut NoopObserver)
        .unwrap();
    let path = dir.join("ok.gfck");
    trainer.checkpoint().unwrap().save(&path).unwrap();
    path
}

#[test]
fn truncated_or_corrupted_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_checkpoint(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    Checkpoint::load(&path).unwrap();

    let truncated = dir.path().join("truncated.gfck");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    match Checkpoint::load(&truncated) {
        Err(Error::CorruptCheckpoint { path, reason }) => {
            assert_eq!(path, truncated);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let corrupted = dir.path().join("corrupted.gfck");
    let mut flipped = bytes.clone();
    let middle = flipped.len() - 100;
    flipped[middle] ^= 0x40;
    std::fs::write(&corrupted, &flipped).unwrap();
    match Checkpoint::load(&corrupted) {
        Err(Error::CorruptCheckpoint { reason, .. }) => {
            assert!(reason.contains("SHA-256"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let foreign = dir.path().join("foreign.gfck");
    std::fs::write(
        &foreign,
        b"PK\x03\x04 this is a zip file, not a checkpoint at all",
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::load(&foreign),
        Err(Error::CorruptCheckpoint { .. })
    ));
    // No temporary files are left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_diverging_run_stops_with_the_step_of_the_bad_loss() {
    let device = parse_device("cpu").unwrap();
    let spec = TrainSpec {
        lr: 1e30,
        warmup_steps: 0,
        steps: 20,
        grokfast: GrokFastKind::None,
        ..tiny_spec()
    };
    let data = dataset(&spec);
    let mut trainer = Trainer::new(spec.run_config(0, &data).unwrap(), data, &device).unwrap();
    match trainer.run(&RunControl::default(), &mut NoopObserver) {
        Err(Error::NonFiniteLoss { step, .. }) => {
            assert!(step >= 2, "the first loss is finite, got step {step}");
            assert_eq!(trainer.step(), step - 1, "the bad step is not applied");
        }
        other => panic!("expected a non-finite loss, got {other:?}"),
    }
}

#[test]
fn a_diverging_run_keeps_its_last_checkpoint_or_trains_on_when_told() {
    let device = parse_device("cpu").unwrap();
    let spec = TrainSpec {
        lr: 1e30,
        warmup_steps: 0,
        steps: 20,
        checkpoint_every: 1,
        grokfast: GrokFastKind::None,
        ..tiny_spec()
    };
    let data = dataset(&spec);
    let config = spec.run_config(0, &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.gfck");
    let control = RunControl {
        checkpoint_path: Some(path.clone()),
        ..RunControl::default()
    };
    let mut trainer = Trainer::new(config.clone(), data.clone(), &device).unwrap();
    let Err(Error::NonFiniteLoss { step, .. }) = trainer.run(&control, &mut NoopObserver) else {
        panic!("expected a non-finite loss");
    };
    // The checkpoint of the step before is there, whole, and was not overwritten.
    let checkpoint = Checkpoint::load(&path).unwrap();
    assert_eq!(checkpoint.meta.step, step - 1);

    let mut trainer = Trainer::new(config, data, &device).unwrap();
    let outcome = trainer
        .run(
            &RunControl {
                continue_on_divergence: true,
                ..RunControl::default()
            },
            &mut NoopObserver,
        )
        .unwrap();
    assert_eq!(outcome.step, 20, "trained on to the end");
}

#[test]
fn stop_at_val_acc_ends_the_run_early() {
    let device = parse_device("cpu").unwrap();
    let spec = TrainSpec {
        stop_at_val_acc: Some(0.0),
        ..tiny_spec()
    };
    let data = dataset(&spec);
    let mut trainer = Trainer::new(spec.run_config(0, &data).unwrap(), data, &device).unwrap();
    let outcome = trainer
        .run(&RunControl::default(), &mut NoopObserver)
        .unwrap();
    assert_eq!(outcome.reason, StopReason::ReachedTarget);
    assert_eq!(outcome.step, 4);
    assert_eq!(trainer.history().reached_target_at_step, Some(4));
}

#[derive(Default)]
struct RecipeRecorder {
    inner: Recorder,
    starts: Vec<VariantPlan>,
    ends: Vec<VariantResult>,
}

impl TrainingObserver for RecipeRecorder {
    fn on_progress(&mut self, progress: &Progress<'_>) {
        self.inner.on_progress(progress);
    }
}

impl RecipeObserver for RecipeRecorder {
    fn on_variant_start(&mut self, plan: &VariantPlan) {
        self.starts.push(plan.clone());
    }
    fn on_variant_end(&mut self, result: &VariantResult) {
        self.ends.push(result.clone());
    }
}

#[test]
fn cognate_trains_variants_marks_a_winner_and_resumes_after_cancel() {
    let device = parse_device("cpu").unwrap();
    let out = tempfile::tempdir().unwrap();
    let spec = TrainSpec {
        out: Some(out.path().to_path_buf()),
        ..tiny_spec()
    };
    let recipe = recipe_for(spec.phase).unwrap();

    // Cancel the second variant after 5 steps.
    let cancel = Arc::new(AtomicBool::new(false));
    let mut observer = RecipeRecorder::default();
    struct CancelSecond {
        inner: RecipeRecorder,
        cancel: Arc<AtomicBool>,
    }
    impl TrainingObserver for CancelSecond {
        fn on_progress(&mut self, progress: &Progress<'_>) {
            if progress.variant == 1 && progress.step == 5 {
                self.cancel.store(true, Ordering::SeqCst);
            }
            self.inner.on_progress(progress);
        }
    }
    impl RecipeObserver for CancelSecond {
        fn on_variant_end(&mut self, result: &VariantResult) {
            self.inner.on_variant_end(result);
        }
    }
    let mut cancelling = CancelSecond {
        inner: RecipeRecorder::default(),
        cancel: cancel.clone(),
    };
    let outcome = recipe
        .run(&mut PhaseContext {
            spec: spec.clone(),
            device: device.clone(),
            cancel: cancel.clone(),
            observer: &mut cancelling,
            cache_dir: None,
            inputs: Vec::new(),
            continue_on_divergence: false,
        })
        .unwrap();
    let checkpoint = match &outcome.status {
        PhaseStatus::Cancelled {
            variant: 1,
            checkpoint: Some(path),
        } => path.clone(),
        other => panic!("expected a cancel in variant 1, got {other:?}"),
    };
    assert!(checkpoint.exists());
    assert_eq!(outcome.variants.len(), 2);
    assert_eq!(outcome.winner, None);

    // Resume: variant 0 is reused, variant 1 continues from step 5.
    cancel.store(false, Ordering::SeqCst);
    let resumed = recipe
        .run(&mut PhaseContext {
            spec: TrainSpec {
                resume: Some(checkpoint),
                ..spec.clone()
            },
            device: device.clone(),
            cancel,
            observer: &mut observer,
            cache_dir: None,
            inputs: Vec::new(),
            continue_on_divergence: false,
        })
        .unwrap();
    assert_eq!(resumed.status, PhaseStatus::Completed);
    assert_eq!(observer.starts.len(), 1);
    assert_eq!(observer.starts[0].index, 1);
    assert_eq!(observer.starts[0].start_step, 5);
    assert_eq!(observer.inner.steps, (6..=12).collect::<Vec<_>>());
    assert_eq!(observer.ends.len(), 2);

    let winner = resumed.winner.expect("a winner");
    assert!(resumed.variants[winner].winner);
    assert_eq!(resumed.variants.iter().filter(|v| v.winner).count(), 1);
    // Variants differ in seed and learning rate.
    assert_ne!(
        resumed.variants[0].config.seed,
        resumed.variants[1].config.seed
    );
    assert_ne!(
        resumed.variants[0].config.optimizer.lr,
        resumed.variants[1].config.optimizer.lr
    );
    for variant in &resumed.variants {
        let dir = variant.dir.as_ref().unwrap();
        for file in [
            "model.bpk",
            "model.json",
            "run.json",
            "metrics.json",
            "spec.json",
        ] {
            assert!(dir.join(file).exists(), "{}", dir.join(file).display());
        }
        let (config, model) = load_model(dir, &device).unwrap();
        assert_eq!(config, variant.config.model);
        assert_eq!(model.num_params(), config.num_params());
    }
    assert!(out.path().join("summary.json").exists());
}

#[test]
fn a_text_run_predicts_every_next_byte_and_reports_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let line = "{\"text\": \"the quick brown fox jumps over the lazy dog\"}\n";
    std::fs::write(&corpus, line.repeat(20)).unwrap();
    let spec = TrainSpec {
        dataset: None,
        text: Some(corpus),
        seq_len: 16,
        steps: 3,
        eval_every: 3,
        ..tiny_spec()
    };
    let device = parse_device("cpu").unwrap();
    let data = Arc::new(
        Dataset::prepare(
            &spec.data_source().unwrap(),
            &spec
                .dataset_options(Some(dir.path().join("cache")))
                .unwrap(),
        )
        .unwrap(),
    );
    let config = spec.run_config(0, &data).unwrap();
    assert_eq!(config.model.vocab_size, 257);
    assert_eq!(config.model.max_seq_len, 16);
    let mut trainer = Trainer::new(config, data, &device).unwrap();
    let outcome = trainer
        .run(&RunControl::default(), &mut NoopObserver)
        .unwrap();
    let eval = outcome.final_eval.unwrap();
    let perplexity = eval.val_perplexity.expect("text runs report perplexity");
    assert!((perplexity - eval.val_loss.exp()).abs() < 1e-9);
    // Untrained on 257 byte values: the loss is near ln 257 ≈ 5.5.
    assert!(
        eval.val_loss > 3.0 && eval.val_loss < 9.0,
        "{}",
        eval.val_loss
    );
}
