//! Phases and jobs: `POST /phases/{phase}/start`, `GET /phases`, `GET /phases/{phase}/status`,
//! `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`, `GET /jobs/{id}/events?since=`.

use std::sync::Arc;

use grokforge_actors::services::training::{PhaseSummary, TrainingError, TrainingServiceMessage};
use grokforge_actors::storage::jobs::{JobFilter, JobRecord, JobStatus};
use grokforge_actors::training_core::{Phase, PhaseError, TrainSpec, phases_with_recipe};
use grokforge_actors::{EventEnvelope, names};
use serde::Deserialize;
use utoipa::IntoParams;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::GatewayState;
use crate::openapi::PhaseEntry;
use crate::problem::{Problem, json_or_problem, parse_id};

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
        (status = 422, description = "A setting is invalid or unknown; `field` names it.",
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
        let phase = parse_phase(&phase)?;
        let mut fields: serde_json::Map<String, serde_json::Value> =
            if body.iter().all(u8::is_ascii_whitespace) {
                serde_json::Map::new()
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not a JSON object: {e}"),
                    )
                })?
            };
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
        // serde_path_to_error names the offending field (`steps`), which serde alone does not.
        let spec: TrainSpec = serde_path_to_error::deserialize(serde_json::Value::Object(fields))
            .map_err(|e| {
            let field = e.path().to_string();
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("`{field}`: {}", e.inner()),
            )
            .with("field", field)
        })?;
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
    /// At most this many, newest first.
    limit: Option<u32>,
}

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
        let filter = JobFilter {
            status,
            phase,
            limit: query.limit,
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
    since: u64,
}

/// A job's event log
///
/// The job's event log after `since`, as the envelopes that were published, in sequence order.
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
    let result = match parse_id("job", &id) {
        Ok(job_id) => call(&state, |reply| TrainingServiceMessage::JobEvents {
            job_id,
            since: query.since,
            reply,
        })
        .await
        .map(|events| events.into_iter().map(|e| e.envelope).collect::<Vec<_>>()),
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::OK))
}
