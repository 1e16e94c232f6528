//! `grokforge jobs …`: the training jobs of a running node, over its HTTP API and WebSocket.
//!
//! `list` prints a table, `show` the job record as JSON, `cancel` the status the cancel
//! request left, and `watch` follows one job live with a progress bar per variant until it
//! ends: exit 0 when it completes, non-zero when it fails, is cancelled or the node closes the
//! socket first.
//!
//! `watch` subscribes to `job:<id>` with `since: 0`, so the node replays the job's whole event
//! log and then goes on live, without gaps or duplicates; a job that had already ended is over
//! once its replay is. One event needs more than the stream: `training_failed` ends only the
//! attempt when attempts remain, so the job record decides whether the job failed or went back
//! to the queue.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use grokforge_actors::Event;
use grokforge_actors::events::{SCHEMA_VERSION, WireError};
use grokforge_actors::services::websocket::protocol::{
    ClientFrame, ControlFrame, EventFrame, ServerFrame,
};
use grokforge_actors::storage::{JobRecord, JobStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;

use crate::client::{self, ApiError, Client};

#[derive(clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    node: client::NodeFlags,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(clap::Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first, as a table.
    List {
        /// Only jobs in this status: queued, running, completed, failed, cancelled, interrupted.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this phase (e.g. `cognate`).
        #[arg(long)]
        phase: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One job's record as JSON.
    Show {
        /// Job id.
        id: Uuid,
    },
    /// Cancel a job: a queued one at once, a running one at its next step (with a checkpoint).
    Cancel {
        /// Job id.
        id: Uuid,
    },
    /// Follow a job live until it ends; exit 0 only if it completes.
    Watch {
        /// Job id.
        id: Uuid,
    },
}

/// Runs one `jobs` subcommand against the node.
pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    let client = args.node.connect()?;
    client::block_on(execute(&client, args.command))
}

async fn execute(client: &Client, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List {
            status,
            phase,
            limit,
        } => {
            let query = list_query(status, phase, limit);
            let jobs: Vec<JobRecord> = client.get_json(&["jobs"], &query).await?;
            print_jobs(&jobs);
        }
        JobsCommand::Show { id } => {
            let job: serde_json::Value = client.get_json(&["jobs", &id.to_string()], &[]).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsCommand::Cancel { id } => {
            let job: JobRecord = client
                .post_json(&["jobs", &id.to_string(), "cancel"], None)
                .await?;
            println!("{}", cancel_summary(&job));
        }
        JobsCommand::Watch { id } => watch(client, id).await?,
    }
    Ok(())
}

fn list_query(
    status: Option<String>,
    phase: Option<String>,
    limit: Option<u32>,
) -> Vec<(&'static str, String)> {
    [
        ("status", status),
        ("phase", phase),
        ("limit", limit.map(|l| l.to_string())),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| (key, v)))
    .collect()
}

fn print_jobs(jobs: &[JobRecord]) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|job| {
            [
                job.id.to_string(),
                job.phase.clone(),
                job.status.as_str().to_string(),
                format!("{}/{}", job.attempts, job.max_attempts),
                progress_cell(job.progress.as_ref()),
                job.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    client::print_table(
        ["ID", "PHASE", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED"],
        &rows,
    );
}

/// The last progress the job recorded (a `training_progress` event's data): `v1 300/1000`.
fn progress_cell(progress: Option<&serde_json::Value>) -> String {
    let Some(progress) = progress else {
        return String::new();
    };
    let step = progress.get("step").and_then(serde_json::Value::as_u64);
    let total = progress
        .get("total_steps")
        .and_then(serde_json::Value::as_u64);
    let variant = progress.get("variant").and_then(serde_json::Value::as_u64);
    match (step, total) {
        (Some(step), Some(total)) => match variant {
            Some(variant) => format!("v{variant} {step}/{total}"),
            None => format!("{step}/{total}"),
        },
        (Some(step), None) => format!("step {step}"),
        _ => String::new(),
    }
}

fn cancel_summary(job: &JobRecord) -> String {
    match job.status {
        JobStatus::Cancelled => format!("job {}: cancelled", job.id),
        JobStatus::Running if job.cancel_requested => format!(
            "job {}: running, cancel requested (it stops at its next step and writes a checkpoint)",
            job.id
        ),
        status if status.is_terminal() => format!(
            "job {}: {} (already finished; nothing to cancel)",
            job.id,
            status.as_str()
        ),
        status => format!("job {}: {}", job.id, status.as_str()),
    }
}

/// How a watched job ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Completed {
        model_ids: Vec<Uuid>,
        winner: Option<Uuid>,
    },
    Failed {
        attempts: u32,
        error: String,
    },
    Cancelled {
        step: u64,
    },
    /// The job had ended before the watch began and its log held no final event: what its
    /// record says.
    Recorded {
        status: JobStatus,
        error: Option<String>,
    },
}

/// What one server frame asks of the watch loop.
#[derive(Debug, PartialEq)]
enum Step {
    Continue,
    /// An attempt failed; the job record says whether the job did.
    AttemptFailed {
        attempt: u32,
        error: String,
    },
    /// The watch cannot go on: the node refused the subscription (an `error` frame), or sends
    /// events this client cannot read.
    Fatal(String),
    Finished(Outcome),
}

/// The watch of one job: frames in, bars and lines out.
struct Watch {
    job_id: Uuid,
    topic: String,
    /// The record as fetched before subscribing: if it had ended, every event up to its
    /// `last_event_seq` is in the replay and nothing follows.
    initial: JobRecord,
    last_seq: u64,
    bars: JobBars,
}

impl Watch {
    fn new(initial: JobRecord, bars: JobBars) -> Watch {
        Watch {
            job_id: initial.id,
            topic: format!("job:{}", initial.id),
            initial,
            last_seq: 0,
            bars,
        }
    }

    fn subscribe(&self) -> Message {
        let frame = ClientFrame::Subscribe {
            topic: self.topic.clone(),
            since: Some(0),
        };
        // Strings and integers: serializing it cannot fail.
        Message::text(serde_json::to_string(&frame).unwrap_or_default())
    }

    fn on_text(&mut self, text: &str) -> Step {
        match ServerFrame::parse(text) {
            Ok(ServerFrame::Control(ControlFrame::SubscriptionConfirmed { .. })) => {
                if self.replay_ended_the_job() {
                    return Step::Finished(self.recorded_outcome());
                }
                Step::Continue
            }
            Ok(ServerFrame::Control(ControlFrame::Error { message, .. })) => Step::Fatal(format!(
                "the node refused to stream job {}: {message}",
                self.job_id
            )),
            Ok(ServerFrame::Control(_)) => Step::Continue,
            Ok(ServerFrame::Event(frame)) => self.on_event(*frame),
            // Reading on could misread the event that ends the job and wait forever.
            Err(WireError::UnsupportedVersion { found, .. }) => Step::Fatal(format!(
                "the node sends events of schema version {found}; this grokforge reads up to \
                 {SCHEMA_VERSION}: use a grokforge as new as the node's"
            )),
            Err(error) => {
                self.bars.say(format!(
                    "ignoring a frame this grokforge cannot read: {error}"
                ));
                Step::Continue
            }
        }
    }

    fn on_event(&mut self, frame: EventFrame) -> Step {
        let EventFrame {
            event, topic, seq, ..
        } = frame;
        if topic != self.topic || event.job_id() != Some(self.job_id) {
            return Step::Continue;
        }
        if let Some(seq) = seq {
            // The node promises no duplicates; this only guards the bars against one.
            if seq <= self.last_seq {
                return Step::Continue;
            }
            self.last_seq = seq;
        }
        let step = self.apply(event);
        if step == Step::Continue && self.replay_ended_the_job() {
            return Step::Finished(self.recorded_outcome());
        }
        step
    }

    /// Whether the job had ended before the watch and its whole log has now been replayed.
    fn replay_ended_the_job(&self) -> bool {
        self.initial.status.is_terminal() && self.last_seq >= self.initial.last_event_seq
    }

    fn apply(&mut self, event: Event) -> Step {
        match event {
            Event::TrainingStarted { phase, attempt, .. } => {
                self.bars
                    .say(format!("attempt {attempt} of phase {phase} started"));
            }
            Event::TrainingProgress {
                variant,
                step,
                total_steps,
                loss,
                val_accuracy,
                steps_per_second,
                ..
            } => self.bars.progress(
                variant,
                step,
                total_steps,
                loss,
                val_accuracy,
                steps_per_second,
            ),
            Event::CheckpointSaved { variant, step, .. } => self.bars.checkpoint(variant, step),
            Event::ModelSaved {
                model_id,
                name,
                version,
                ..
            } => {
                self.bars
                    .say(format!("saved model {name} v{version} ({model_id})"));
            }
            Event::TrainingCompleted {
                model_ids, winner, ..
            } => return Step::Finished(Outcome::Completed { model_ids, winner }),
            Event::TrainingFailed { attempt, error, .. } => {
                return Step::AttemptFailed { attempt, error };
            }
            Event::TrainingCancelled { step, .. } => {
                return Step::Finished(Outcome::Cancelled { step });
            }
            _ => {}
        }
        Step::Continue
    }

    fn recorded_outcome(&self) -> Outcome {
        Outcome::Recorded {
            status: self.initial.status,
            error: self.initial.error.clone(),
        }
    }
}

/// One bar per variant, made when its first progress arrives (a job's variant count is in its
/// spec, which the watch does not interpret). Checkpoints go into the bar's message rather than
/// a line each: a job may checkpoint every few steps.
struct JobBars {
    multi: MultiProgress,
    style: ProgressStyle,
    bars: BTreeMap<u32, ProgressBar>,
    /// The step of each variant's latest checkpoint.
    checkpoints: BTreeMap<u32, u64>,
    /// Each variant's latest metrics, the message without the checkpoint.
    metrics: BTreeMap<u32, String>,
}

impl JobBars {
    fn new(draw_target: ProgressDrawTarget) -> JobBars {
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:30.cyan/blue}] {pos:>6}/{len:6} {msg}",
        )
        .expect("a valid progress template")
        .progress_chars("=> ");
        JobBars {
            multi: MultiProgress::with_draw_target(draw_target),
            style,
            bars: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            metrics: BTreeMap::new(),
        }
    }

    fn checkpoint(&mut self, variant: u32, step: u64) {
        self.checkpoints.insert(variant, step);
        self.refresh_message(variant);
    }

    fn refresh_message(&self, variant: u32) {
        let Some(bar) = self.bars.get(&variant) else {
            return;
        };
        let metrics = self.metrics.get(&variant).map(String::as_str);
        let checkpoint = self.checkpoints.get(&variant);
        bar.set_message(match (metrics, checkpoint) {
            (Some(metrics), Some(step)) => format!("{metrics}  checkpoint @{step}"),
            (Some(metrics), None) => metrics.to_string(),
            (None, Some(step)) => format!("checkpoint @{step}"),
            (None, None) => String::new(),
        });
    }

    fn progress(
        &mut self,
        variant: u32,
        step: u64,
        total_steps: u64,
        loss: f64,
        val_accuracy: Option<f64>,
        steps_per_second: f64,
    ) {
        let bar = self.bars.entry(variant).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(total_steps));
            bar.set_style(self.style.clone());
            bar.set_prefix(format!("variant {variant}"));
            bar
        });
        bar.set_length(total_steps);
        bar.set_position(step);
        let val = val_accuracy
            .map(|acc| format!("val acc {:5.1}%", acc * 100.0))
            .unwrap_or_else(|| "val acc     -".to_string());
        self.metrics.insert(
            variant,
            format!("loss {loss:.4}  {val}  {steps_per_second:.1} steps/s"),
        );
        self.refresh_message(variant);
    }

    /// A line above the bars; on stdout when there are no bars to draw (not a terminal), since
    /// indicatif drops lines printed to a hidden target.
    fn say(&self, line: String) {
        if self.multi.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Leaves every bar where it stopped, so the final numbers stay on screen; without a
    /// terminal, prints them.
    fn finish(&mut self) {
        let hidden = self.multi.is_hidden();
        for (variant, bar) in &self.bars {
            bar.abandon();
            if hidden {
                println!(
                    "variant {variant}: step {}/{}  {}",
                    bar.position(),
                    bar.length().unwrap_or_default(),
                    bar.message()
                );
            }
        }
        // A second call (an error after the end) prints nothing again.
        self.bars.clear();
    }
}

/// How long to wait for the node to record the end of a failed attempt (it emits the event
/// first, then updates the record).
const ATTEMPT_RECORD_DEADLINE: Duration = Duration::from_secs(10);

async fn watch(client: &Client, id: Uuid) -> anyhow::Result<()> {
    let job: JobRecord = client.get_json(&["jobs", &id.to_string()], &[]).await?;
    println!(
        "job {id} (phase {}): {}, attempt {}/{}",
        job.phase,
        job.status.as_str(),
        job.attempts,
        job.max_attempts
    );
    let mut watch = Watch::new(job, JobBars::new(ProgressDrawTarget::stderr()));

    let url = client::ws_url(client.base(), client.token())?;
    // What messages may show: the same endpoint without the token.
    let shown = client::ws_url(client.base(), None)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("cannot build the WebSocket request for {shown}"))?;
    if let Some(token) = client.token() {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not valid in an HTTP header")?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let (mut socket, _) = tokio::time::timeout(
        client::CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "no WebSocket handshake from {shown} within {}s",
            client::CONNECT_TIMEOUT.as_secs()
        )
    })?
    .map_err(|error| handshake_error(error, &shown, client.token().is_some()))?;
    socket
        .send(watch.subscribe())
        .await
        .with_context(|| format!("cannot subscribe to {} on {shown}", watch.topic))?;

    // One future for the whole watch: a Ctrl-C between two frames is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = &mut ctrl_c => {
                watch.bars.finish();
                let _ = socket.close(None).await;
                bail!(
                    "stopped watching; job {id} goes on (`grokforge jobs cancel {id}` stops it)"
                );
            }
        };
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                watch.bars.finish();
                bail!(
                    "the WebSocket to {shown} failed before job {id} ended: {error} \
                     (`grokforge jobs watch {id}` picks it up again)"
                );
            }
            None => {
                watch.bars.finish();
                bail!(
                    "the node closed the WebSocket before job {id} ended, without a reason \
                     (`grokforge jobs watch {id}` picks it up again)"
                );
            }
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                watch.bars.finish();
                bail!(
                    "the node closed the WebSocket before job {id} ended: {} \
                     (`grokforge jobs watch {id}` picks it up again)",
                    close_reason(frame.as_ref())
                );
            }
            // tungstenite answers protocol pings itself; binary frames are not in the protocol.
            _ => continue,
        };
        match watch.on_text(&text) {
            Step::Continue => {}
            Step::Fatal(message) => {
                watch.bars.finish();
                let _ = socket.close(None).await;
                bail!(message);
            }
            Step::AttemptFailed { attempt, error } => {
                let job = attempt_record(client, id, attempt).await?;
                if job.status == JobStatus::Failed && job.attempts == attempt {
                    break Outcome::Failed {
                        attempts: attempt,
                        error,
                    };
                }
                // During a replay the record is already past this attempt: only a record
                // still at it says where the job went.
                let next = match job.status {
                    JobStatus::Queued | JobStatus::Interrupted if job.attempts == attempt => {
                        "; back in the queue for another attempt"
                    }
                    _ => "",
                };
                watch.bars.say(format!(
                    "attempt {attempt} of {} failed: {error}{next}",
                    job.max_attempts
                ));
                if watch.replay_ended_the_job() {
                    break watch.recorded_outcome();
                }
            }
            Step::Finished(outcome) => break outcome,
        }
    };
    watch.bars.finish();
    let _ = socket.close(None).await;
    report(id, outcome)
}

/// The job's record once the node has recorded the end of `attempt` (or after a deadline, as
/// it then is).
async fn attempt_record(client: &Client, id: Uuid, attempt: u32) -> anyhow::Result<JobRecord> {
    let started = Instant::now();
    loop {
        let job: JobRecord = client.get_json(&["jobs", &id.to_string()], &[]).await?;
        let still_that_attempt = job.status == JobStatus::Running && job.attempts == attempt;
        if !still_that_attempt || started.elapsed() >= ATTEMPT_RECORD_DEADLINE {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(id: Uuid, outcome: Outcome) -> anyhow::Result<()> {
    match outcome {
        Outcome::Completed { model_ids, winner } => {
            println!("job {id} completed: {} model(s)", model_ids.len());
            for model_id in &model_ids {
                let star = if Some(*model_id) == winner {
                    "★"
                } else {
                    " "
                };
                println!("{star} {model_id}");
            }
            if let Some(winner) = winner {
                println!("winner: {winner}");
            }
            Ok(())
        }
        Outcome::Failed { attempts, error } => {
            bail!("job {id} failed after {attempts} attempt(s): {error}")
        }
        Outcome::Cancelled { step } => bail!("job {id} was cancelled at step {step}"),
        Outcome::Recorded { status, error } => match status {
            JobStatus::Completed => {
                println!("job {id} completed");
                Ok(())
            }
            status => match error {
                Some(error) => bail!("job {id} {}: {error}", status.as_str()),
                None => bail!("job {id} {}", status.as_str()),
            },
        },
    }
}

fn close_reason(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) if !frame.reason.is_empty() => {
            format!("{} {}", u16::from(frame.code), frame.reason)
        }
        Some(frame) => format!("code {}", u16::from(frame.code)),
        None => "no reason given".to_string(),
    }
}

/// A failed handshake: the node's HTTP answer as a problem (401 without a token, …), or what
/// kept the connection from being made.
fn handshake_error(
    error: tungstenite::Error,
    shown: &reqwest::Url,
    token_sent: bool,
) -> anyhow::Error {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            anyhow!(ApiError::from_response(
                response.status().as_u16(),
                body,
                token_sent
            ))
        }
        tungstenite::Error::Io(io_error)
            if io_error.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            anyhow!(
                "cannot connect to the node at {shown}: {io_error} (is `grokforge serve` running \
                 there? set --server or GROKFORGE_SERVER)"
            )
        }
        other => anyhow!("the WebSocket handshake with {shown} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(status: JobStatus, last_event_seq: u64) -> JobRecord {
        let now = "2026-01-02T03:04:05Z";
        serde_json::from_value(json!({
            "id": "01933b3e-0000-7000-8000-000000000001",
            "phase": "cognate",
            "spec": {},
            "status": status,
            "priority": 0,
            "attempts": 1,
            "max_attempts": 3,
            "owner_node": null,
            "lease_expires_at": null,
            "cancel_requested": false,
            "last_checkpoint_path": null,
            "progress": null,
            "error": if status == JobStatus::Failed { json!("boom") } else { json!(null) },
            "attempt_errors": [],
            "last_event_seq": last_event_seq,
            "created_at": now,
            "started_at": null,
            "finished_at": null,
            "updated_at": now,
        }))
        .unwrap()
    }

    fn watch_of(status: JobStatus, last_event_seq: u64) -> Watch {
        Watch::new(
            record(status, last_event_seq),
            JobBars::new(ProgressDrawTarget::hidden()),
        )
    }

    /// An event frame as the node's hub writes it: the event's `type` and `data` beside the
    /// envelope's members.
    fn frame(seq: u64, kind: &str, data: serde_json::Value) -> String {
        json!({
            "type": kind,
            "data": data,
            "topic": "job:01933b3e-0000-7000-8000-000000000001",
            "seq": seq,
            "id": "01933b3e-0000-7000-8000-0000000000f0",
            "source_node": "node-a",
            "source_service": "training",
            "timestamp": "2026-01-02T03:04:05Z",
            "schema_version": SCHEMA_VERSION,
        })
        .to_string()
    }

    const JOB: &str = "01933b3e-0000-7000-8000-000000000001";

    fn progress(variant: u32, step: u64) -> serde_json::Value {
        json!({"job_id": JOB, "variant": variant, "step": step, "total_steps": 100,
               "loss": 1.5, "accuracy": 0.5, "val_loss": null, "val_accuracy": 0.25,
               "learning_rate": 0.001, "steps_per_second": 12.5})
    }

    #[test]
    fn the_subscription_asks_for_the_whole_log_of_the_job() {
        let watch = watch_of(JobStatus::Running, 0);
        let Message::Text(text) = watch.subscribe() else {
            panic!("a text frame");
        };
        let sent: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            sent,
            json!({"type": "subscribe", "topic": format!("job:{JOB}"), "since": 0})
        );
    }

    #[test]
    fn control_frames_pass_and_errors_end_the_watch() {
        let mut watch = watch_of(JobStatus::Running, 0);
        let established = json!({"type": "connection_established", "connection_id": "c1"});
        assert_eq!(watch.on_text(&established.to_string()), Step::Continue);
        let confirmed = json!({"type": "subscription_confirmed", "topic": format!("job:{JOB}"),
                               "replayed": 0});
        assert_eq!(watch.on_text(&confirmed.to_string()), Step::Continue);
        assert_eq!(watch.on_text(r#"{"type":"pong"}"#), Step::Continue);
        assert_eq!(watch.on_text("not json"), Step::Continue);
        assert_eq!(
            watch.on_text(r#"{"type":"node_joined","data":{"node_id":"n2","address":null}}"#),
            Step::Continue
        );
        let newer = json!({"type": "training_cancelled", "topic": format!("job:{JOB}"), "seq": 1,
                           "schema_version": SCHEMA_VERSION + 1,
                           "data": {"job_id": JOB, "step": 1}});
        let Step::Fatal(message) = watch.on_text(&newer.to_string()) else {
            panic!("a newer schema stops the watch");
        };
        assert!(message.contains("schema version"), "{message}");
        assert_eq!(
            watch.on_text(r#"{"type":"error","message":"job x not found","topic":"job:x"}"#),
            Step::Fatal(format!(
                "the node refused to stream job {JOB}: job x not found"
            ))
        );
    }

    #[test]
    fn progress_moves_one_bar_per_variant_and_completion_ends_the_watch() {
        let mut watch = watch_of(JobStatus::Running, 0);
        let started = json!({"job_id": JOB, "phase": "cognate", "attempt": 1});
        assert_eq!(
            watch.on_text(&frame(1, "training_started", started)),
            Step::Continue
        );
        assert_eq!(
            watch.on_text(&frame(2, "training_progress", progress(0, 40))),
            Step::Continue
        );
        assert_eq!(
            watch.on_text(&frame(3, "training_progress", progress(1, 10))),
            Step::Continue
        );
        assert_eq!(watch.bars.bars.len(), 2);
        assert_eq!(watch.bars.bars[&0].position(), 40);
        assert_eq!(watch.bars.bars[&0].length(), Some(100));
        assert!(
            watch.bars.bars[&0].message().contains("val acc  25.0%"),
            "{}",
            watch.bars.bars[&0].message()
        );
        // A repeated sequence number does not move the bar back.
        assert_eq!(
            watch.on_text(&frame(3, "training_progress", progress(0, 5))),
            Step::Continue
        );
        assert_eq!(watch.bars.bars[&0].position(), 40);
        // A checkpoint shows in the variant's bar at once, and stays there.
        let saved = json!({"job_id": JOB, "variant": 0, "step": 40, "sha256": "ab"});
        assert_eq!(
            watch.on_text(&frame(4, "checkpoint_saved", saved)),
            Step::Continue
        );
        assert!(
            watch.bars.bars[&0]
                .message()
                .ends_with("steps/s  checkpoint @40"),
            "{}",
            watch.bars.bars[&0].message()
        );
        watch.on_text(&frame(5, "training_progress", progress(0, 41)));
        assert!(
            watch.bars.bars[&0].message().ends_with("checkpoint @40"),
            "{}",
            watch.bars.bars[&0].message()
        );

        let winner = "01933b3e-0000-7000-8000-0000000000aa";
        let done = json!({"job_id": JOB, "model_ids": [winner], "winner": winner});
        assert_eq!(
            watch.on_text(&frame(6, "training_completed", done)),
            Step::Finished(Outcome::Completed {
                model_ids: vec![winner.parse().unwrap()],
                winner: Some(winner.parse().unwrap()),
            })
        );
    }

    #[test]
    fn failures_go_to_the_record_and_cancellation_ends_the_watch() {
        let mut watch = watch_of(JobStatus::Running, 0);
        let failed = json!({"job_id": JOB, "attempt": 1, "error": "out of memory"});
        assert_eq!(
            watch.on_text(&frame(1, "training_failed", failed)),
            Step::AttemptFailed {
                attempt: 1,
                error: "out of memory".into()
            }
        );
        let cancelled = json!({"job_id": JOB, "step": 42});
        assert_eq!(
            watch.on_text(&frame(2, "training_cancelled", cancelled)),
            Step::Finished(Outcome::Cancelled { step: 42 })
        );
    }

    #[test]
    fn frames_of_other_jobs_and_malformed_events_are_skipped() {
        let mut watch = watch_of(JobStatus::Running, 0);
        let other = "01933b3e-0000-7000-8000-000000000002";
        let mut foreign = serde_json::from_str::<serde_json::Value>(&frame(
            1,
            "training_cancelled",
            json!({"job_id": other, "step": 1}),
        ))
        .unwrap();
        assert_eq!(watch.on_text(&foreign.to_string()), Step::Continue);
        foreign["topic"] = json!(format!("job:{other}"));
        assert_eq!(watch.on_text(&foreign.to_string()), Step::Continue);
        assert_eq!(
            watch.on_text(&frame(1, "training_progress", json!({"job_id": JOB}))),
            Step::Continue
        );
        assert!(watch.bars.bars.is_empty());
    }

    #[test]
    fn a_finished_job_ends_with_its_replay() {
        // Ended with no events at all: the confirmation is the end of the replay.
        let mut empty = watch_of(JobStatus::Cancelled, 0);
        let confirmed = json!({"type": "subscription_confirmed", "topic": format!("job:{JOB}")});
        assert_eq!(
            empty.on_text(&confirmed.to_string()),
            Step::Finished(Outcome::Recorded {
                status: JobStatus::Cancelled,
                error: None
            })
        );
        // Ended after two events, the last not a final one: over once seq 2 is replayed.
        let mut watch = watch_of(JobStatus::Failed, 2);
        assert_eq!(watch.on_text(&confirmed.to_string()), Step::Continue);
        let started = json!({"job_id": JOB, "phase": "cognate", "attempt": 1});
        assert_eq!(
            watch.on_text(&frame(1, "training_started", started)),
            Step::Continue
        );
        assert_eq!(
            watch.on_text(&frame(2, "training_progress", progress(0, 3))),
            Step::Finished(Outcome::Recorded {
                status: JobStatus::Failed,
                error: Some("boom".into())
            })
        );
    }

    #[test]
    fn outcomes_set_the_exit_status() {
        let id: Uuid = JOB.parse().unwrap();
        assert!(
            report(
                id,
                Outcome::Completed {
                    model_ids: vec![],
                    winner: None
                }
            )
            .is_ok()
        );
        let failed = report(
            id,
            Outcome::Failed {
                attempts: 3,
                error: "nan loss".into(),
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            failed,
            format!("job {id} failed after 3 attempt(s): nan loss")
        );
        assert!(report(id, Outcome::Cancelled { step: 7 }).is_err());
        assert!(
            report(
                id,
                Outcome::Recorded {
                    status: JobStatus::Completed,
                    error: None
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn list_queries_carry_only_the_given_filters() {
        assert_eq!(
            list_query(Some("running".into()), None, Some(5)),
            vec![
                ("status", "running".to_string()),
                ("limit", "5".to_string())
            ]
        );
        assert!(list_query(None, None, None).is_empty());
    }

    #[test]
    fn the_progress_column_shows_variant_and_steps() {
        assert_eq!(progress_cell(Some(&progress(1, 30))), "v1 30/100");
        assert_eq!(progress_cell(Some(&json!({"step": 3}))), "step 3");
        assert_eq!(progress_cell(None), "");
    }

    #[test]
    fn close_reasons_are_printed_with_their_code() {
        use tungstenite::protocol::frame::coding::CloseCode;
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: "too slow: dropped from job topic".into(),
        };
        assert_eq!(
            close_reason(Some(&frame)),
            "1008 too slow: dropped from job topic"
        );
        assert_eq!(close_reason(None), "no reason given");
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            jobs: JobsArgs,
        }
        let before = Cli::try_parse_from(["jobs", "--server", "http://a:1", "list"]).unwrap();
        assert_eq!(before.jobs.node.server, "http://a:1");
        let after = Cli::try_parse_from([
            "jobs",
            "watch",
            JOB,
            "--server",
            "http://b:2",
            "--token",
            "t",
        ])
        .unwrap();
        assert_eq!(after.jobs.node.server, "http://b:2");
        assert_eq!(after.jobs.node.token.as_deref(), Some("t"));
        assert!(Cli::try_parse_from(["jobs", "show", "not-a-uuid"]).is_err());
    }
}
