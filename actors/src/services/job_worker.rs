//! `JobWorker`: runs one job's phase recipe on an OS thread of its own.
//!
//! Training is long, CPU-bound and blocking, so it never runs inside an actor handler or on
//! the async runtime's workers. The worker thread reports back to the TrainingService by
//! casting [`WorkerReport`]s; the service turns them into job events, lease renewals and, at
//! the end, registry entries. Progress is rate-limited here, at the source (at most
//! `progress_per_second`, but the last step of every variant always goes out), so a fast
//! model cannot flood the mailbox, the event log or WebSocket clients.
//!
//! Cancellation is the recipe's own flag: the loop checks it every step, writes a checkpoint
//! and returns `Cancelled`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grokforge_training_core::data::CacheUse;
use grokforge_training_core::{
    Dataset, Device, Phase, PhaseContext, PhaseOutcome, Progress, RecipeObserver, TrainSpec,
    TrainingObserver, VariantPlan, VariantResult, recipe_for,
};
use uuid::Uuid;

use crate::events::Divergence;

/// What a worker tells its service.
#[derive(Debug, Clone)]
pub enum WorkerReport {
    VariantStarted {
        variant: usize,
        start_step: u64,
    },
    Progress(ProgressReport),
    Checkpoint {
        variant: usize,
        step: u64,
        path: PathBuf,
    },
    /// The run's data is ready; how it used the prepared-data cache (`None`: not cached).
    DatasetPrepared(Option<CacheUse>),
    VariantEnded(Box<VariantResult>),
    /// The recipe returned (completed or cancelled) or failed; always the last report.
    Finished(Result<Box<PhaseOutcome>, RunFailure>),
}

/// Why a run failed, and whether another attempt could end otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFailure {
    pub message: String,
    /// `false` for a run that diverged (a NaN or infinite loss): the same seed and data diverge
    /// again at the same step, so the job fails for good instead of burning its attempts.
    pub retryable: bool,
    /// Where the loss stopped being a number, when that is why it failed.
    pub divergence: Option<Divergence>,
}

impl RunFailure {
    pub fn retryable(message: impl Into<String>) -> RunFailure {
        RunFailure {
            message: message.into(),
            retryable: true,
            divergence: None,
        }
    }

    /// A failure that another attempt would repeat.
    pub fn for_good(message: impl Into<String>) -> RunFailure {
        RunFailure {
            retryable: false,
            ..RunFailure::retryable(message)
        }
    }
}

impl From<grokforge_training_core::Error> for RunFailure {
    fn from(error: grokforge_training_core::Error) -> RunFailure {
        match error {
            grokforge_training_core::Error::NonFiniteLoss { step, loss } => RunFailure {
                divergence: Some(Divergence { step, loss }),
                ..RunFailure::for_good(error.to_string())
            },
            other => RunFailure::retryable(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgressReport {
    pub variant: usize,
    pub step: u64,
    pub total_steps: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub learning_rate: f64,
    pub steps_per_second: f64,
}

/// Everything a job run needs.
pub struct JobRun {
    pub job_id: Uuid,
    pub attempt: u32,
    pub phase: Phase,
    /// The request, with `out` set to the job's work directory and `resume` to the checkpoint
    /// to continue from, if any.
    pub spec: TrainSpec,
    pub device: Device,
    pub cache_dir: Option<PathBuf>,
    pub progress_per_second: u32,
    /// `training.stop_on_divergence`: fail at the first step whose loss is not finite.
    pub stop_on_divergence: bool,
    /// Files to check before training: each must still have the SHA-256 it had when the job
    /// was queued.
    pub verify: Vec<VerifyFile>,
}

/// An input file and the SHA-256 it must have.
#[derive(Debug, Clone)]
pub struct VerifyFile {
    /// How errors name it (`ds:<id>`).
    pub label: String,
    pub path: PathBuf,
    pub sha256: String,
}

impl VerifyFile {
    /// Streams the file through SHA-256 and compares.
    fn check(&self) -> Result<(), String> {
        use sha2::Digest;
        use std::io::Read;
        let mut file = std::fs::File::open(&self.path)
            .map_err(|e| format!("dataset {} cannot be read: {e}", self.label))?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(|e| format!("dataset {} cannot be read: {e}", self.label))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let found = format!("{:x}", hasher.finalize());
        if found != self.sha256 {
            return Err(format!(
                "dataset {} changed: its bytes hash to {found}, the job was queued on {}; \
                 refusing to train (or resume) on different data",
                self.label, self.sha256
            ));
        }
        Ok(())
    }
}

/// A running worker: its cancel flag and thread.
pub struct JobWorker {
    pub job_id: Uuid,
    pub attempt: u32,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl JobWorker {
    /// Starts the run on a new thread; `report` receives every [`WorkerReport`], the last one
    /// being `Finished`.
    pub fn spawn(
        run: JobRun,
        report: impl Fn(WorkerReport) + Send + 'static,
    ) -> std::io::Result<JobWorker> {
        let cancel = Arc::new(AtomicBool::new(false));
        let job_id = run.job_id;
        let attempt = run.attempt;
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("job-{}", &job_id.simple().to_string()[..8]))
            .spawn(move || {
                // Dropped on this thread once the run and all it trained with are gone.
                let heap = grokforge_training_core::allocator::TrainingHeap::enter();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    execute(run, flag, &report)
                }));
                drop(heap);
                let outcome = outcome.unwrap_or_else(|panic| {
                    Err(RunFailure::retryable(format!(
                        "training panicked: {}",
                        panic_text(&panic)
                    )))
                });
                report(WorkerReport::Finished(outcome.map(Box::new)));
            })?;
        Ok(JobWorker {
            job_id,
            attempt,
            cancel,
            thread: Some(thread),
        })
    }

    /// Asks the run to stop at its next step (it writes a checkpoint first).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Cancels and waits up to `deadline` for the thread to end; `false` if it did not.
    pub fn stop(mut self, deadline: Duration) -> bool {
        self.cancel();
        let started = Instant::now();
        while !self.is_finished() {
            if started.elapsed() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        true
    }
}

fn execute(
    run: JobRun,
    cancel: Arc<AtomicBool>,
    report: &dyn Fn(WorkerReport),
) -> Result<PhaseOutcome, RunFailure> {
    let recipe = recipe_for(run.phase).map_err(|e| RunFailure::retryable(e.to_string()))?;
    // Bytes that differ from the job's record stay different on every attempt.
    for file in &run.verify {
        file.check().map_err(RunFailure::for_good)?;
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(run.progress_per_second.max(1)));
    let mut observer = Reporter {
        report,
        interval,
        last_sent: None,
    };
    let mut context = PhaseContext {
        spec: run.spec,
        device: run.device,
        cancel,
        observer: &mut observer,
        cache_dir: run.cache_dir,
        inputs: Vec::new(),
        continue_on_divergence: !run.stop_on_divergence,
    };
    recipe.run(&mut context).map_err(RunFailure::from)
}

struct Reporter<'a> {
    report: &'a dyn Fn(WorkerReport),
    interval: Duration,
    last_sent: Option<Instant>,
}

impl TrainingObserver for Reporter<'_> {
    fn on_progress(&mut self, progress: &Progress<'_>) {
        let last_step = progress.step >= progress.total_steps;
        let due = self.last_sent.is_none_or(|t| t.elapsed() >= self.interval);
        if !(due || last_step) {
            return;
        }
        self.last_sent = Some(Instant::now());
        (self.report)(WorkerReport::Progress(ProgressReport {
            variant: progress.variant,
            step: progress.step,
            total_steps: progress.total_steps,
            loss: progress.loss,
            accuracy: progress.accuracy,
            val_loss: progress.last_eval.map(|e| e.val_loss),
            val_accuracy: progress.last_eval.map(|e| e.val_accuracy),
            learning_rate: progress.lr,
            steps_per_second: progress.steps_per_sec,
        }));
    }

    fn on_checkpoint(&mut self, variant: usize, step: u64, path: &std::path::Path) {
        (self.report)(WorkerReport::Checkpoint {
            variant,
            step,
            path: path.to_path_buf(),
        });
    }
}

impl RecipeObserver for Reporter<'_> {
    fn on_variant_start(&mut self, plan: &VariantPlan) {
        self.last_sent = None;
        (self.report)(WorkerReport::VariantStarted {
            variant: plan.index,
            start_step: plan.start_step,
        });
    }

    fn on_variant_end(&mut self, result: &VariantResult) {
        (self.report)(WorkerReport::VariantEnded(Box::new(result.clone())));
    }

    fn on_dataset_prepared(&mut self, dataset: &Dataset) {
        (self.report)(WorkerReport::DatasetPrepared(dataset.cache.clone()));
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
