//! Phases and jobs: `POST /phases/{phase}/start`, `GET /phases`, `GET /phases/{phase}/status`,
//! `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`, `GET /jobs/{id}/events?since=`.

use std::sync::Arc;

use grokforge_actors::services::training::{
    MAX_EVENTS_PAGE, PhaseSummary, TrainingError, TrainingServiceMessage,
};
use grokforge_actors::storage::jobs::{JobFilter, JobRecord, JobStatus};
use grokforge_actors::training_core::{Phase, PhaseError, TrainSpec, phases_with_recipe};
use grokforge_actors::{EventEnvelope, names};
use serde::Deserialize;
use utoipa::IntoParams;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::GatewayState;
use crate::openapi::PhaseEntry;
use crate::problem::{MAX_INT64, Problem, in_range, json_or_problem, parse_id};

fn phase_names(phases: &[Phase]) -> Vec<String> {
    phases.iter().map(|p| p.to_string()).collect()
}

/// 404 for a name that is no phase, listing the valid ones.
fn parse_phase(name: &str) -> Result<Phase, Problem> {
    name.parse::<Phase>().map_err(|_| {
        Problem::new(StatusCode::NOT_FOUND, format!("unknown phase `{name}`"))
            .with("valid_phases", phase_names(&Phase::ALL))
    })
}

pub(crate) fn training_problem(error: TrainingError) -> Problem {
    match error {
        TrainingError::Phase(PhaseError::NoRecipe { phase, available }) => Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("phase `{phase}` has no recipe yet; nothing was queued"),
        )
        .with("phases_with_recipe", phase_names(&available)),
        TrainingError::Phase(other) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string())
        }
        TrainingError::InvalidSpec(detail) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
        }
        TrainingError::InvalidField { field, detail } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail).with("field", field)
        }
        error @ TrainingError::PathField { field } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()).with("field", field)
        }
        TrainingError::JobNotFound(id) => {
            Problem::new(StatusCode::NOT_FOUND, format!("job {id} not found"))
        }
        TrainingError::Storage(e) if e.is_client_error() => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        TrainingError::Storage(e) => {
            tracing::error!(error = %e, "storage error");
            Problem::unavailable(format!("storage: {e}"), 1)
        }
    }
}

async fn call<R: Send + 'static>(
    state: &GatewayState,
    build: impl FnOnce(ractor::RpcReplyPort<Result<R, TrainingError>>) -> TrainingServiceMessage,
) -> Result<R, Problem> {
    state
        .call_service(names::TRAINING_SERVICE, build, training_problem)
        .await
}

/// What a number of the start body may be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Range {
    /// A whole number in `min..=max`.
    Integer { min: i64, max: i64 },
    /// A number above `min` (or equal to it, when inclusive) and below `max` (or equal to it).
    Number {
        min: Option<Edge>,
        max: Option<Edge>,
    },
}

/// One end of a [`Range::Number`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Edge {
    Inclusive(f64),
    Exclusive(f64),
}

const fn int(min: i64, max: i64) -> Range {
    Range::Integer { min, max }
}

/// The numbers of the start body and their ranges: checked by [`start`] before the training
/// service sees the spec, and written into the document's `StartJobRequest` schema
/// (`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`), so a client is told exactly
/// which values are refused. The upper bounds are what one node is built to train (models up
/// to a few hundred million parameters, runs up to ten million steps); seeds and other
/// unsigned values stop at `int64`, the format the document gives them.
pub(crate) const START_LIMITS: &[(&str, Range)] = &[
    ("d_model", int(1, 1024)),
    ("n_layers", int(1, 32)),
    ("n_heads", int(1, 64)),
    ("d_ff", int(1, 8192)),
    ("seq_len", int(1, 2048)),
    ("steps", int(1, 10_000_000)),
    ("variants", int(1, 16)),
    ("batch_size", int(1, 8192)),
    ("warmup_steps", int(0, 10_000_000)),
    ("window", int(1, 100_000)),
    ("seed", int(0, i64::MAX)),
    ("data_seed", int(0, i64::MAX)),
    ("eval_every", int(0, 10_000_000)),
    ("eval_batch_size", int(1, 65_536)),
    ("checkpoint_every", int(0, 10_000_000)),
    ("threads", int(1, 256)),
    ("priority", int(i64::MIN, i64::MAX)),
    (
        "train_fraction",
        Range::Number {
            min: Some(Edge::Exclusive(0.0)),
            max: Some(Edge::Exclusive(1.0)),
        },
    ),
    (
        "lr",
        Range::Number {
            min: Some(Edge::Exclusive(0.0)),
            max: None,
        },
    ),
    (
        "beta1",
        Range::Number {
            min: Some(Edge::Inclusive(0.0)),
            max: Some(Edge::Exclusive(1.0)),
        },
    ),
    (
        "beta2",
        Range::Number {
            min: Some(Edge::Inclusive(0.0)),
            max: Some(Edge::Exclusive(1.0)),
        },
    ),
    (
        "epsilon",
        Range::Number {
            min: Some(Edge::Exclusive(0.0)),
            max: None,
        },
    ),
    (
        "weight_decay",
        Range::Number {
            min: Some(Edge::Inclusive(0.0)),
            max: None,
        },
    ),
    (
        "alpha",
        Range::Number {
            min: Some(Edge::Inclusive(0.0)),
            max: Some(Edge::Exclusive(1.0)),
        },
    ),
    (
        "stop_at_val_acc",
        Range::Number {
            min: Some(Edge::Inclusive(0.0)),
            max: Some(Edge::Inclusive(1.0)),
        },
    ),
];

impl Range {
    /// Whether `value` is in range. A value of the wrong type passes: deserialising the spec
    /// refuses it with the field's expected type.
    fn admits(self, value: &serde_json::Value) -> bool {
        match self {
            Range::Integer { min, max } => {
                let whole = value
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| value.as_u64().map(i128::from));
                whole.is_none_or(|v| (i128::from(min)..=i128::from(max)).contains(&v))
            }
            Range::Number { min, max } => {
                let Some(v) = value.as_f64() else {
                    return true;
                };
                let above = match min {
                    None => true,
                    Some(Edge::Inclusive(m)) => v >= m,
                    Some(Edge::Exclusive(m)) => v > m,
                };
                let below = match max {
                    None => true,
                    Some(Edge::Inclusive(m)) => v <= m,
                    Some(Edge::Exclusive(m)) => v < m,
                };
                above && below
            }
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Range::Integer { min, max } => write!(f, "a whole number from {min} to {max}"),
            Range::Number { min, max } => {
                let mut ends = Vec::new();
                match min {
                    Some(Edge::Inclusive(m)) => ends.push(format!("≥ {m}")),
                    Some(Edge::Exclusive(m)) => ends.push(format!("> {m}")),
                    None => {}
                }
                match max {
                    Some(Edge::Inclusive(m)) => ends.push(format!("≤ {m}")),
                    Some(Edge::Exclusive(m)) => ends.push(format!("< {m}")),
                    None => {}
                }
                write!(f, "a number {}", ends.join(" and "))
            }
        }
    }
}

/// The first number of `fields` outside its [`START_LIMITS`] range, as a 422 naming it.
///
/// A whole number written with a fraction (`31.0`) is an integer to JSON Schema, so it is
/// taken as one: serde would refuse it for an integer field.
fn check_start_limits(
    fields: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), Problem> {
    for &(field, range) in START_LIMITS {
        if let (Range::Integer { .. }, Some(value)) = (range, fields.get_mut(field))
            && let Some(whole) = value
                .as_f64()
                .filter(|v| v.fract() == 0.0 && v.abs() < 2e18)
            && !value.is_i64()
            && !value.is_u64()
        {
            *value = serde_json::Value::from(whole as i64);
        }
        match fields.get(field) {
            Some(value) if !value.is_null() && !range.admits(value) => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("`{field}` must be {range}, found {value}"),
                )
                .with("field", field));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Queue a training job for a phase
///
/// The start body: the flags of `grokforge train` as fields (`checkpoint_every`, …), every one
/// optional, plus the queue priority. An empty body queues the defaults.
#[utoipa::path(
    post,
    path = crate::routes::START_PHASE.path,
    operation_id = crate::routes::START_PHASE.operation_id,
    tag = "jobs",
    params(("phase" = Phase, Path, description = "The phase to run.")),
    // A free-form ref, because utoipa marks any typed body required (or, for an `Option`,
    // nullable); this body may be left out, which the default `required: false` says.
    request_body(
        content = ref("#/components/schemas/StartJobRequest"),
        content_type = "application/json",
        description = "Training settings; every field is optional and has a default, and an \
            empty body queues the defaults.",
    ),
    responses(
        (status = 202, description = "Queued; the new job record.", body = JobRecord),
        (status = 400, description = "The body is not a JSON object.", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such phase; `valid_phases` lists the phases.",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the gateway's limit.",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A setting is invalid or unknown (`field` names it): out of \
            its range, or breaking a rule that involves more than the one field or the node's \
            state, which the schema cannot state — an uploaded dataset (`ds:<id>`) that does not \
            exist or is of the wrong kind, `tokenizer_dataset` without an uploaded `dataset`, a \
            division task (`mod-div:P`) whose modulus is not prime, heads that do not divide the \
            model width.",
            body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The phase has no recipe yet and nothing was queued; \
            `phases_with_recipe` lists those that have one.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The training service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn start(
    phase: String,
    body: bytes::Bytes,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection> {
    let result = async {
        let (phase, spec, priority) = parse_start_body(&phase, &body)?;
        call(&state, |reply| TrainingServiceMessage::StartJob {
            phase,
            spec: Box::new(spec),
            priority,
            reply,
        })
        .await
    }
    .await;
    Ok(json_or_problem(result, StatusCode::ACCEPTED))
}

/// Parses and checks a start request: the phase of its path, then its body — a JSON object (or
/// nothing) within the documented limits that is a valid [`TrainSpec`] plus `priority`. A 404
/// for an unknown phase, 400 for a body that is no JSON object, 422 naming the field otherwise.
/// (The training service checks the rest: the phase's recipe, the spec's consistency, that no
/// field names a file.)
pub fn parse_start_body(phase: &str, body: &[u8]) -> Result<(Phase, TrainSpec, i64), Problem> {
    let phase = parse_phase(phase)?;
    let mut fields: serde_json::Map<String, serde_json::Value> =
        if body.iter().all(u8::is_ascii_whitespace) {
            serde_json::Map::new()
        } else {
            serde_json::from_slice(body).map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a JSON object: {e}"),
                )
            })?
        };
    check_start_limits(&mut fields)?;
    let priority = match fields.remove("priority") {
        None | Some(serde_json::Value::Null) => 0,
        Some(value) => value.as_i64().ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "`priority` must be an integer",
            )
            .with("field", "priority")
        })?,
    };
    let spec: TrainSpec = serde_path_to_error::deserialize(serde_json::Value::Object(fields))
        .map_err(crate::problem::invalid_body)?;
    Ok((phase, spec, priority))
}

/// List the phases
///
/// Every phase of the pipeline in order, and whether it has a recipe (can be started).
#[utoipa::path(
    get,
    path = crate::routes::LIST_PHASES.path,
    operation_id = crate::routes::LIST_PHASES.operation_id,
    tag = "jobs",
    responses((status = 200, description = "The phases in pipeline order.", body = [PhaseEntry])),
)]
pub async fn phases(_state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let with_recipe = phases_with_recipe();
    let phases: Vec<serde_json::Value> = Phase::ALL
        .iter()
        .map(|p| serde_json::json!({"name": p.to_string(), "has_recipe": with_recipe.contains(p)}))
        .collect();
    Ok(warp::reply::json(&phases).into_response())
}

/// A phase's jobs and models at a glance
#[utoipa::path(
    get,
    path = crate::routes::PHASE_STATUS.path,
    operation_id = crate::routes::PHASE_STATUS.operation_id,
    tag = "jobs",
    params(("phase" = Phase, Path, description = "The phase.")),
    responses(
        (status = 200, description = "Job counts by status and the latest job.",
            body = PhaseSummary),
        (status = 404, description = "No such phase; `valid_phases` lists the phases.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The training service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn phase_status(
    phase: String,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection> {
    let result = match parse_phase(&phase) {
        Ok(phase) => {
            call(&state, |reply| {
                TrainingServiceMessage::PhaseStatus(phase, reply)
            })
            .await
        }
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::OK))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only jobs of this phase (an unknown phase is a 404).
    #[param(value_type = Option<Phase>)]
    phase: Option<String>,
    /// Only jobs in this state (an unknown state is a 400).
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// At most this many (1–1000), newest first; all of them without it.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The largest `limit` of `GET /jobs`.
const MAX_JOBS_LIMIT: u32 = 1000;

/// List jobs
///
/// Newest first, optionally filtered by phase and status.
#[utoipa::path(
    get,
    path = crate::routes::LIST_JOBS.path,
    operation_id = crate::routes::LIST_JOBS.operation_id,
    tag = "jobs",
    params(JobQuery),
    responses(
        (status = 200, description = "The matching jobs, newest first.", body = [JobRecord]),
        (status = 400, description = "An unknown status (`valid_statuses` lists them) or an \
            unknown or malformed query parameter.",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such phase; `valid_phases` lists the phases.",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` is out of range; `field` names it.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The training service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn list(query: JobQuery, state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let result = async {
        let status = match query.status.as_deref() {
            None => None,
            Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
                Problem::new(StatusCode::BAD_REQUEST, format!("unknown job status `{s}`")).with(
                    "valid_statuses",
                    vec![
                        "queued",
                        "running",
                        "completed",
                        "failed",
                        "cancelled",
                        "interrupted",
                    ],
                )
            })?),
        };
        let phase = match query.phase {
            Some(name) => Some(parse_phase(&name)?.to_string()),
            None => None,
        };
        let limit = match query.limit {
            Some(limit) => Some(in_range("limit", limit, 1..=MAX_JOBS_LIMIT)?),
            None => None,
        };
        let filter = JobFilter {
            status,
            phase,
            limit,
        };
        call(&state, |reply| {
            TrainingServiceMessage::ListJobs(filter, reply)
        })
        .await
    }
    .await;
    Ok(json_or_problem(result, StatusCode::OK))
}

/// One job
#[utoipa::path(
    get,
    path = crate::routes::GET_JOB.path,
    operation_id = crate::routes::GET_JOB.operation_id,
    tag = "jobs",
    params(("id" = Uuid, Path, description = "The job id.")),
    responses(
        (status = 200, description = "The job record.", body = JobRecord),
        (status = 404, description = "No job with this id (or the id is not a UUID).",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The training service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn get(id: String, state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let result = match parse_id("job", &id) {
        Ok(id) => call(&state, |reply| TrainingServiceMessage::GetJob(id, reply)).await,
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::OK))
}

/// Cancel a job
///
/// A queued or interrupted job is cancelled at once; a running one stops at its next step and
/// writes a checkpoint. Cancelling a finished job changes nothing and answers its record.
#[utoipa::path(
    post,
    path = crate::routes::CANCEL_JOB.path,
    operation_id = crate::routes::CANCEL_JOB.operation_id,
    tag = "jobs",
    params(("id" = Uuid, Path, description = "The job id.")),
    responses(
        (status = 202, description = "Cancel requested; the job record.", body = JobRecord),
        (status = 404, description = "No job with this id (or the id is not a UUID).",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The training service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn cancel(id: String, state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let result = match parse_id("job", &id) {
        Ok(id) => call(&state, |reply| TrainingServiceMessage::CancelJob(id, reply)).await,
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::ACCEPTED))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a sequence number above this one (0, the default: from the start).
    #[serde(default)]
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    since: u64,
    /// At most this many events (1 to 10000; default 1000). A full page may have more after
    /// it: ask again with `since` set to the last event's `seq`.
    #[serde(default = "default_events_limit")]
    #[param(minimum = 1, maximum = 10_000, default = 1000)]
    limit: u64,
}

fn default_events_limit() -> u64 {
    1000
}

/// A job's event log
///
/// The job's event log after `since`, as the envelopes that were published, in sequence order,
/// a page of at most `limit` at a time: a client reads a long log by asking again from the
/// last `seq` it got until a page is shorter than `limit`.
#[utoipa::path(
    get,
    path = crate::routes::JOB_EVENTS.path,
    operation_id = crate::routes::JOB_EVENTS.operation_id,
    tag = "jobs",
    params(("id" = Uuid, Path, description = "The job id."), EventsQuery),
    responses(
        (status = 200, description = "The events after `since`, oldest first.",
            body = [EventEnvelope]),
        (status = 400, description = "An unknown or malformed query parameter.",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No job with this id (or the id is not a UUID).",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`since` or `limit` is out of range; `field` names it.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The training service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn events(
    id: String,
    query: EventsQuery,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection> {
    let max_page = u64::from(MAX_EVENTS_PAGE);
    let result = match parse_id("job", &id).and_then(|job_id| {
        Ok((
            job_id,
            in_range("since", query.since, 0..=MAX_INT64)?,
            in_range("limit", query.limit, 1..=max_page)?,
        ))
    }) {
        Ok((job_id, since, limit)) => call(&state, |reply| TrainingServiceMessage::JobEvents {
            job_id,
            since,
            limit: limit as u32,
            reply,
        })
        .await
        .map(|events| events.into_iter().map(|e| e.envelope).collect::<Vec<_>>()),
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn start_limits_refuse_exactly_what_is_out_of_range() {
        let check = |mut body: serde_json::Value| check_start_limits(body.as_object_mut().unwrap());
        check(json!({"d_model": 1024, "steps": 1, "lr": 1e-9, "beta2": 0.0, "seed": i64::MAX}))
            .unwrap();
        check(json!({"stop_at_val_acc": 1.0, "train_fraction": 0.5, "priority": -5})).unwrap();
        // `31.0` is a whole number, and one in range.
        let mut body = json!({"n_layers": 31.0, "steps": 2.0e7});
        let problem = check_start_limits(body.as_object_mut().unwrap()).unwrap_err();
        assert_eq!(problem.extensions["field"], "steps");
        assert_eq!(body["n_layers"], json!(31));
        // Types are left to deserialisation, which names the expected one.
        check(json!({"steps": "many", "d_model": null})).unwrap();
        for (field, value) in [
            ("d_model", json!(1025)),
            ("steps", json!(0)),
            ("seed", json!(u64::MAX)),
            ("lr", json!(0.0)),
            ("beta1", json!(1.0)),
            ("train_fraction", json!(1.0)),
            ("stop_at_val_acc", json!(-0.1)),
        ] {
            let problem = check(json!({ field: value })).unwrap_err();
            assert_eq!(problem.status, 422, "{field}");
            assert_eq!(problem.extensions["field"], field);
        }
    }

    #[test]
    fn every_limit_names_a_field_of_the_start_body() {
        let spec = serde_json::to_value(TrainSpec::default()).unwrap();
        for (field, _) in START_LIMITS {
            assert!(
                *field == "priority" || spec.get(*field).is_some(),
                "{field} is no TrainSpec field"
            );
        }
    }
}
