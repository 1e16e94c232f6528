//! What the monitoring service gathers from the bus, every node's events included: per job the
//! last progress (time, step, loss, rate) and how many events of each type it sent, and the
//! cluster's events counted by type. `GET /monitoring` answers from it.
//!
//! Bounded: running jobs are all kept; of the finished ones, the last [`FINISHED_KEPT`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::events::{Event, EventEnvelope};

/// How many finished jobs are kept.
pub const FINISHED_KEPT: usize = 1000;

/// How a job stands, as far as its events tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// One job's aggregate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobAggregate {
    pub job_id: Uuid,
    pub state: JobPhase,
    /// The node whose events last spoke of the job.
    pub node: String,
    /// When its last `training_progress` arrived.
    pub last_progress_at: Option<DateTime<Utc>>,
    pub step: Option<u64>,
    pub total_steps: Option<u64>,
    /// The last training loss: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
    #[serde(serialize_with = "optional_float")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub steps_per_second: Option<f64>,
    /// Events of the job by type.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u64>))]
    pub events: BTreeMap<&'static str, u64>,
}

fn optional_float<S: serde::Serializer>(
    value: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => crate::events::non_finite::serialize(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// The answer of `GET /monitoring`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MonitoringSummary {
    /// Events seen on the bus since this node started, by type.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u64>))]
    pub events: BTreeMap<&'static str, u64>,
    /// Running jobs first, then the finished ones, most recent first.
    pub jobs: Vec<JobAggregate>,
}

#[derive(Debug, Default)]
pub struct Aggregates {
    events: BTreeMap<&'static str, u64>,
    jobs: HashMap<Uuid, JobAggregate>,
    /// Finished jobs, oldest first.
    finished: VecDeque<Uuid>,
}

impl Aggregates {
    /// Takes in one event of the bus.
    pub fn observe(&mut self, envelope: &EventEnvelope) {
        let kind = envelope.event.kind();
        *self.events.entry(kind).or_insert(0) += 1;
        let Some(job_id) = envelope.event.job_id() else {
            return;
        };
        let job = self.jobs.entry(job_id).or_insert_with(|| JobAggregate {
            job_id,
            state: JobPhase::Queued,
            node: envelope.source_node.clone(),
            last_progress_at: None,
            step: None,
            total_steps: None,
            loss: None,
            val_accuracy: None,
            steps_per_second: None,
            events: BTreeMap::new(),
        });
        *job.events.entry(kind).or_insert(0) += 1;
        job.node.clone_from(&envelope.source_node);
        let was_finished = matches!(
            job.state,
            JobPhase::Completed | JobPhase::Failed | JobPhase::Cancelled
        );
        match &envelope.event {
            Event::JobQueued { .. } => job.state = JobPhase::Queued,
            Event::TrainingStarted { .. } => job.state = JobPhase::Running,
            Event::TrainingProgress {
                step,
                total_steps,
                loss,
                val_accuracy,
                steps_per_second,
                ..
            } => {
                job.state = JobPhase::Running;
                job.last_progress_at = Some(envelope.timestamp);
                job.step = Some(*step);
                job.total_steps = Some(*total_steps);
                job.loss = Some(*loss);
                if val_accuracy.is_some() {
                    job.val_accuracy = *val_accuracy;
                }
                job.steps_per_second = Some(*steps_per_second);
            }
            Event::TrainingCompleted { .. } => job.state = JobPhase::Completed,
            Event::TrainingCancelled { .. } => job.state = JobPhase::Cancelled,
            Event::TrainingFailed { will_retry, .. } => {
                job.state = if *will_retry {
                    JobPhase::Queued
                } else {
                    JobPhase::Failed
                };
            }
            _ => {}
        }
        let finished = matches!(
            job.state,
            JobPhase::Completed | JobPhase::Failed | JobPhase::Cancelled
        );
        if finished && !was_finished {
            self.finished.push_back(job_id);
        } else if was_finished && !finished {
            self.finished.retain(|id| *id != job_id);
        }
        while self.finished.len() > FINISHED_KEPT {
            if let Some(oldest) = self.finished.pop_front() {
                self.jobs.remove(&oldest);
            }
        }
    }

    pub fn summary(&self) -> MonitoringSummary {
        let mut jobs: Vec<JobAggregate> = self.jobs.values().cloned().collect();
        let finished = |job: &JobAggregate| {
            matches!(
                job.state,
                JobPhase::Completed | JobPhase::Failed | JobPhase::Cancelled
            )
        };
        // UUIDv7 ids sort by creation time.
        jobs.sort_by(|a, b| {
            finished(a)
                .cmp(&finished(b))
                .then_with(|| b.job_id.cmp(&a.job_id))
        });
        MonitoringSummary {
            events: self.events.clone(),
            jobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: Event) -> EventEnvelope {
        EventEnvelope::new("node-a", "training_service", event)
    }

    fn progress(job_id: Uuid, step: u64, loss: f64) -> Event {
        Event::TrainingProgress {
            job_id,
            variant: 0,
            step,
            total_steps: 100,
            loss,
            accuracy: None,
            val_loss: None,
            val_accuracy: (step == 20).then_some(0.5),
            learning_rate: 1e-3,
            steps_per_second: 40.0,
        }
    }

    #[test]
    fn keeps_each_jobs_last_progress_and_counts_events_by_type() {
        let mut aggregates = Aggregates::default();
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        for event in [
            Event::TrainingStarted {
                job_id: first,
                phase: "cognate".into(),
                attempt: 1,
            },
            progress(first, 10, 2.0),
            progress(first, 20, 1.5),
            progress(first, 30, f64::NAN),
            progress(second, 5, 3.0),
            Event::TrainingCompleted {
                job_id: second,
                model_ids: vec![],
                winner: None,
            },
        ] {
            aggregates.observe(&envelope(event));
        }
        let summary = aggregates.summary();
        assert_eq!(summary.events["training_progress"], 4);
        assert_eq!(summary.events["training_started"], 1);
        assert_eq!(summary.events["training_completed"], 1);
        // Running first.
        let job = &summary.jobs[0];
        assert_eq!(job.job_id, first);
        assert_eq!(job.state, JobPhase::Running);
        assert_eq!((job.step, job.total_steps), (Some(30), Some(100)));
        assert!(job.loss.unwrap().is_nan());
        // The last validation accuracy stays until the next one.
        assert_eq!(job.val_accuracy, Some(0.5));
        assert_eq!(job.steps_per_second, Some(40.0));
        assert_eq!(job.events["training_progress"], 3);
        assert_eq!(summary.jobs[1].state, JobPhase::Completed);
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["jobs"][0]["loss"], "NaN");
        assert_eq!(json["jobs"][1]["loss"], 3.0);
    }

    #[test]
    fn finished_jobs_are_bounded_and_running_ones_are_not() {
        let mut aggregates = Aggregates::default();
        let running = Uuid::now_v7();
        aggregates.observe(&envelope(progress(running, 1, 1.0)));
        for _ in 0..FINISHED_KEPT + 10 {
            let job_id = Uuid::now_v7();
            aggregates.observe(&envelope(Event::TrainingCancelled { job_id, step: 1 }));
        }
        let summary = aggregates.summary();
        assert_eq!(summary.jobs.len(), FINISHED_KEPT + 1);
        assert_eq!(summary.jobs[0].job_id, running);
    }
}
