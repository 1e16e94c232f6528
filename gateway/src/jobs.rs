//! Phases and jobs: `POST /phases/{phase}/start`, `GET /phases`, `GET /phases/{phase}/status`,
//! `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`, `GET /jobs/{id}/events?since=`.

use grokforge_actors::names;
use grokforge_actors::services::training::{TrainingError, TrainingServiceMessage};
use grokforge_actors::storage::jobs::{JobFilter, JobStatus};
use grokforge_actors::training_core::{Phase, PhaseError, TrainSpec, phases_with_recipe};
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::GatewayState;
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

fn training_problem(error: TrainingError) -> Problem {
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

/// The start body: the flags of `grokforge train` as fields (`checkpoint_every`, …), every one
/// optional, plus the queue priority.
pub async fn start(
    phase: String,
    body: bytes::Bytes,
    state: GatewayState,
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

pub async fn phases(_state: GatewayState) -> Result<Response, warp::Rejection> {
    let with_recipe = phases_with_recipe();
    let phases: Vec<serde_json::Value> = Phase::ALL
        .iter()
        .map(|p| serde_json::json!({"name": p.to_string(), "has_recipe": with_recipe.contains(p)}))
        .collect();
    Ok(warp::reply::json(&phases).into_response())
}

pub async fn phase_status(phase: String, state: GatewayState) -> Result<Response, warp::Rejection> {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    phase: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

pub async fn list(query: JobQuery, state: GatewayState) -> Result<Response, warp::Rejection> {
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

pub async fn get(id: String, state: GatewayState) -> Result<Response, warp::Rejection> {
    let result = match parse_id("job", &id) {
        Ok(id) => call(&state, |reply| TrainingServiceMessage::GetJob(id, reply)).await,
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::OK))
}

pub async fn cancel(id: String, state: GatewayState) -> Result<Response, warp::Rejection> {
    let result = match parse_id("job", &id) {
        Ok(id) => call(&state, |reply| TrainingServiceMessage::CancelJob(id, reply)).await,
        Err(problem) => Err(problem),
    };
    Ok(json_or_problem(result, StatusCode::ACCEPTED))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    since: u64,
}

/// The job's event log after `since`, as the envelopes that were published.
pub async fn events(
    id: String,
    query: EventsQuery,
    state: GatewayState,
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
