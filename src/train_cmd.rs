//! `grokforge train`: runs a phase recipe locally, without a server, with one progress bar per
//! variant. Ctrl-C stops at the next step, writes a checkpoint and prints how to resume; a second
//! Ctrl-C exits at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use grokforge_training_core::phase::variant_dir;
use grokforge_training_core::spec::VariedSetting;
use grokforge_training_core::{
    Checkpoint, GrokFastKind, ModelPreset, OptimizerKind, Phase, PhaseContext, PhaseOutcome,
    PhaseStatus, Progress, RecipeObserver, TrainSpec, TrainingObserver, VariantPlan, VariantResult,
    backend_description, parse_device, recipe_for,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Flags of `grokforge train`. Anything left out takes the default of the training spec (the
/// Grokfast paper's settings: x·y mod 97, Adam lr 1e-3, β = (0.9, 0.98), batch 512, GrokFast EMA).
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Phase to run (only `cognate` has a recipe so far).
    #[arg(long, default_value = "cognate")]
    phase: String,
    /// Model size: grokfast-paper or cognate-25m.
    #[arg(long)]
    preset: Option<String>,
    /// Algorithmic task `mod-OP:P` with OP add, sub, mul, div or poly (default mod-mul:97).
    #[arg(long, conflicts_with = "text")]
    dataset: Option<String>,
    /// A local UTF-8 text file, or a .jsonl file (see --text-field).
    #[arg(long)]
    text: Option<PathBuf>,
    /// The JSONL field holding the text.
    #[arg(long)]
    text_field: Option<String>,
    /// A Hugging Face tokenizer.json for --text (default: byte-level).
    #[arg(long, requires = "text")]
    tokenizer: Option<PathBuf>,
    /// Sequence length for text.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Optimizer steps per variant.
    #[arg(long)]
    steps: Option<u64>,
    /// Number of variants to train.
    #[arg(long)]
    variants: Option<usize>,
    /// What differs between variants besides the seed: lr, weight-decay or none.
    #[arg(long)]
    vary: Option<String>,
    /// Training batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// adam or adamw.
    #[arg(long)]
    optimizer: Option<String>,
    /// Linear warm-up steps.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// GrokFast filter: ema, ma or none.
    #[arg(long)]
    grokfast: Option<String>,
    /// EMA momentum α.
    #[arg(long)]
    alpha: Option<f64>,
    /// Amplification λ (default 2 for EMA, 5 for MA).
    #[arg(long)]
    lamb: Option<f64>,
    /// MA window.
    #[arg(long)]
    window: Option<usize>,
    /// Weight decay (default 0 for Adam, 1e-2 for AdamW).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Seed of the first variant; variant i uses seed + i.
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N steps (0: every epoch).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Write a checkpoint every N steps (0: only on Ctrl-C).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Stop a variant once its validation accuracy reaches this fraction (e.g. 0.95).
    #[arg(long)]
    stop_at_val_acc: Option<f64>,
    /// Output directory (default grokforge-runs/PHASE-TIMESTAMP).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Resume from a checkpoint; the run's settings come from the checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// cpu or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// LibTorch threads (results repeat exactly only at the same count).
    #[arg(long)]
    threads: Option<usize>,
}

impl TrainArgs {
    /// The spec these flags ask for, on top of `base`.
    fn apply(&self, mut spec: TrainSpec) -> anyhow::Result<TrainSpec> {
        spec.phase = self.phase.parse::<Phase>()?;
        if let Some(preset) = &self.preset {
            spec.preset = preset.parse::<ModelPreset>()?;
        }
        if self.dataset.is_some() {
            spec.dataset = self.dataset.clone();
            spec.text = None;
        }
        if self.text.is_some() {
            spec.text = self.text.clone();
            spec.dataset = None;
        }
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field {
                    spec.$field = value.clone();
                }
            )*};
        }
        macro_rules! set_option {
            ($($field:ident),*) => {$(
                if self.$field.is_some() {
                    spec.$field = self.$field.clone();
                }
            )*};
        }
        set!(
            text_field,
            seq_len,
            steps,
            variants,
            batch_size,
            lr,
            warmup_steps,
            alpha,
            window,
            seed,
            eval_every,
            checkpoint_every,
            device
        );
        set_option!(lamb, weight_decay, stop_at_val_acc, out, threads, tokenizer);
        if let Some(kind) = &self.grokfast {
            spec.grokfast = kind.parse::<GrokFastKind>()?;
        }
        if let Some(optimizer) = &self.optimizer {
            spec.optimizer = match optimizer.as_str() {
                "adam" => OptimizerKind::Adam,
                "adamw" => OptimizerKind::AdamW,
                other => bail!("--optimizer: expected adam or adamw, got {other:?}"),
            };
        }
        if let Some(vary) = &self.vary {
            spec.vary = match vary.as_str() {
                "lr" => VariedSetting::Lr,
                "weight-decay" | "weight_decay" => VariedSetting::WeightDecay,
                "none" => VariedSetting::None,
                other => bail!("--vary: expected lr, weight-decay or none, got {other:?}"),
            };
        }
        Ok(spec)
    }
}

/// Runs `grokforge train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let spec = match &args.resume {
        Some(path) => {
            let checkpoint = Checkpoint::load(path)?;
            let mut spec = checkpoint.meta.spec.with_context(|| {
                format!("{} holds no training request to resume", path.display())
            })?;
            // Only where it runs may change on resume; everything else decides the numbers.
            if let Some(device) = &args.device {
                spec.device = device.clone();
            }
            if args.threads.is_some() {
                spec.threads = args.threads;
            }
            spec.resume = Some(path.clone());
            spec
        }
        None => {
            let mut spec = args.apply(TrainSpec::default())?;
            if spec.out.is_none() {
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                spec.out = Some(PathBuf::from(format!(
                    "grokforge-runs/{}-{stamp}",
                    spec.phase
                )));
            }
            spec
        }
    };
    spec.validate()?;
    let recipe = recipe_for(spec.phase)?;
    let device = parse_device(&spec.device)?;
    let out = spec.out.clone().expect("an output directory is always set");
    if let Some(threads) = spec.threads {
        grokforge_training_core::device::set_num_threads(threads);
    }

    let cancel = Arc::new(AtomicBool::new(false));
    let handler_flag = cancel.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping at the next step and writing a checkpoint (Ctrl-C again to quit now)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;

    println!(
        "training phase {} on {} ({} variant(s), {} steps each) → {}",
        spec.phase,
        backend_description(&device),
        spec.variants,
        spec.steps,
        out.display()
    );
    let mut bars = Bars::new(spec.variants);
    let outcome = recipe.run(&mut PhaseContext {
        spec: spec.clone(),
        device,
        cancel,
        observer: &mut bars,
        cache_dir: Some(out.join(".cache")),
        inputs: Vec::new(),
        continue_on_divergence: false,
    })?;
    drop(bars);
    report(&outcome, &out);
    Ok(())
}

fn report(outcome: &PhaseOutcome, out: &std::path::Path) {
    for variant in &outcome.variants {
        let eval = variant.final_eval.as_ref();
        println!(
            "{} {:<12} steps {:>6}  val acc {:>6}  val loss {:>8}  {}",
            if variant.winner { "★" } else { " " },
            variant.name,
            variant.steps,
            eval.map(|e| format!("{:.1}%", e.val_accuracy * 100.0))
                .unwrap_or_else(|| "-".into()),
            eval.map(|e| format!("{:.4}", e.val_loss))
                .unwrap_or_else(|| "-".into()),
            variant
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        );
    }
    match &outcome.status {
        PhaseStatus::Completed => {
            if let Some(winner) = outcome.winner {
                println!(
                    "winner: variant {winner} ({})",
                    variant_dir(out, winner).display()
                );
            }
            println!("summary: {}", out.join("summary.json").display());
        }
        PhaseStatus::Cancelled {
            variant,
            checkpoint,
        } => match checkpoint {
            Some(path) => println!(
                "interrupted in variant {variant}; checkpoint written to {}\nresume with: grokforge train --resume {}",
                path.display(),
                path.display()
            ),
            None => println!("interrupted in variant {variant}; no checkpoint was written"),
        },
    }
}

/// One progress bar per variant: loss, validation accuracy and steps/s.
struct Bars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl Bars {
    fn new(variants: usize) -> Self {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:30.cyan/blue}] {pos:>6}/{len:6} {msg}",
        )
        .expect("a valid progress template")
        .progress_chars("=> ");
        let bars = (0..variants)
            .map(|index| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(format!("variant {index}"));
                bar.set_message("waiting");
                bar
            })
            .collect();
        Self {
            _multi: multi,
            bars,
        }
    }

    fn bar(&self, variant: usize) -> Option<&ProgressBar> {
        self.bars.get(variant)
    }
}

impl TrainingObserver for Bars {
    fn on_progress(&mut self, progress: &Progress<'_>) {
        let Some(bar) = self.bar(progress.variant) else {
            return;
        };
        bar.set_position(progress.step);
        let val = progress
            .last_eval
            .map(|e| format!("val acc {:5.1}%", e.val_accuracy * 100.0))
            .unwrap_or_else(|| "val acc     -".to_string());
        bar.set_message(format!(
            "loss {:.4}  {val}  {:.1} steps/s",
            progress.loss, progress.steps_per_sec
        ));
    }
}

impl RecipeObserver for Bars {
    fn on_variant_start(&mut self, plan: &VariantPlan) {
        if let Some(bar) = self.bar(plan.index) {
            bar.set_length(plan.config.steps);
            bar.set_position(plan.start_step);
            bar.reset_eta();
            bar.set_message("starting");
        }
    }

    fn on_variant_end(&mut self, result: &VariantResult) {
        if let Some(bar) = self.bar(result.index) {
            let acc = result
                .final_eval
                .as_ref()
                .map(|e| format!("val acc {:.1}%", e.val_accuracy * 100.0))
                .unwrap_or_default();
            bar.abandon_with_message(format!("{acc}  ({})", result.stop));
        }
    }
}
