//! `/health`, `/ready`, `/metrics` and `/cluster/nodes`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use grokforge_actors::aggregate::MonitoringSummary;
use grokforge_actors::alerts::Alert;
use grokforge_actors::health::HealthReport;
use grokforge_actors::services::discovery::{DiscoveryMessage, NodeInfo};
use grokforge_actors::services::monitoring::{AlertState, MonitoringServiceMessage};
use grokforge_actors::{HealthState, names};
use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::GatewayState;
use crate::problem::{MAX_INT64, Problem, in_range};

async fn fresh_report(state: &GatewayState) -> Result<HealthReport, Problem> {
    state
        .directory
        .call::<MonitoringServiceMessage, _, _>(
            names::MONITORING_SERVICE,
            MonitoringServiceMessage::CheckNow,
            state.health_timeout,
        )
        .await
        .map_err(|error| Problem::unavailable(format!("cannot check health: {error}"), 1))
}

/// The latest completed round of checks (its `checked_at` says when), or a fresh round when
/// asked or when none has completed yet.
async fn report(state: &GatewayState, fresh: bool) -> Result<HealthReport, Problem> {
    if !fresh {
        let latest = state
            .directory
            .call::<MonitoringServiceMessage, _, _>(
                names::MONITORING_SERVICE,
                MonitoringServiceMessage::Latest,
                state.call_timeout,
            )
            .await
            .map_err(|error| Problem::unavailable(format!("cannot read health: {error}"), 1))?;
        if let Some(report) = latest {
            return Ok(report);
        }
    }
    fresh_report(state).await
}

/// `GET /health`'s query.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Run the checks now instead of answering from the latest round.
    #[serde(default)]
    pub fresh: bool,
}

/// `GET /alerts`'s query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// `firing` (the default) or `resolved`.
    #[serde(default)]
    pub state: AlertState,
    /// How many to skip, newest first.
    #[serde(default)]
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub offset: usize,
    /// How many at most (1–1000, default 100).
    #[serde(default = "default_alert_limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: usize,
}

fn default_alert_limit() -> usize {
    100
}

/// Alerts of the cluster
///
/// Alerts firing now, or resolved ones (the last thousand), newest first. The same alerts go to
/// admin WebSocket clients on `admin_alerts` and to the configured webhooks.
#[utoipa::path(
    get,
    path = crate::routes::LIST_ALERTS.path,
    operation_id = crate::routes::LIST_ALERTS.operation_id,
    tag = "node",
    params(AlertsQuery),
    responses(
        (status = 200, description = "The alerts, newest first.", body = [Alert]),
        (status = 400, description = "An unknown or malformed query parameter.", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is out of range.", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The monitoring service is unavailable (no answer in \
            time, or restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn alerts(
    query: AlertsQuery,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection> {
    let checked = in_range("limit", query.limit, 1..=1000)
        .and_then(|_| in_range("offset", query.offset as u64, 0..=MAX_INT64));
    if let Err(problem) = checked {
        return Ok(problem.into_response());
    }
    let alerts = state
        .directory
        .call::<MonitoringServiceMessage, Vec<Alert>, _>(
            names::MONITORING_SERVICE,
            |reply| MonitoringServiceMessage::Alerts {
                state: query.state,
                offset: query.offset,
                limit: query.limit,
                reply,
            },
            state.call_timeout,
        )
        .await;
    Ok(match alerts {
        Ok(alerts) => warp::reply::json(&alerts).into_response(),
        Err(error) => Problem::unavailable(error.to_string(), 1).into_response(),
    })
}

/// What monitoring gathered from the bus
///
/// Every node's events, as this node's monitoring service saw them: per job its state, node,
/// last progress (time, step, loss, rate, validation accuracy) and its events by type; and the
/// events seen since the node started, by type. Running jobs first, then up to 1,000 finished
/// ones, newest first.
#[utoipa::path(
    get,
    path = "/monitoring",
    operation_id = crate::routes::MONITORING.operation_id,
    tag = "node",
    responses(
        (status = 200, description = "The aggregates.", body = MonitoringSummary),
        (status = 503, description = "The monitoring service is unavailable (no answer in \
            time, or restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn monitoring(state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let summary = state
        .directory
        .call::<MonitoringServiceMessage, MonitoringSummary, _>(
            names::MONITORING_SERVICE,
            MonitoringServiceMessage::Summary,
            state.call_timeout,
        )
        .await;
    Ok(match summary {
        Ok(summary) => warp::reply::json(&summary).into_response(),
        Err(error) => Problem::unavailable(error.to_string(), 1).into_response(),
    })
}

/// The node's health
///
/// Each service's state, the dependency graph and the overall status, from the latest round
/// of checks (`checked_at`; they run every `monitoring.health_check_interval_ms`), or from checks
/// run now with `?fresh=true`. 200 while the node is healthy or degraded, 503 when it is
/// unhealthy. A service too slow to answer its check is degraded; three rounds in a row, unhealthy.
#[utoipa::path(
    get,
    path = crate::routes::HEALTH.path,
    operation_id = crate::routes::HEALTH.operation_id,
    tag = "node",
    params(HealthQuery),
    responses(
        (status = 200, description = "Healthy or degraded.", body = HealthReport),
        (status = 400, description = "A malformed query parameter (`fresh` is `true` or \
            `false`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Unhealthy (the report says why), or the checks could not \
            be run (a problem).",
            content(
                (HealthReport = "application/json"),
                (Problem = "application/problem+json"),
            ),
            headers(("Retry-After" = u64,
                description = "With the problem: seconds to wait before retrying."))),
    ),
)]
pub async fn health(
    query: HealthQuery,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection> {
    Ok(match report(&state, query.fresh).await {
        Ok(report) => {
            let status = if report.status == HealthState::Unhealthy {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            warp::reply::with_status(warp::reply::json(&report), status).into_response()
        }
        Err(problem) => problem.into_response(),
    })
}

/// The body of `GET /ready`.
#[derive(Serialize, ToSchema)]
struct Readiness {
    ready: bool,
    node_id: String,
    /// Why the node is not ready; empty when it is.
    reasons: Vec<String>,
}

/// Whether the node accepts work
///
/// Whether the node accepts work: not draining, and the services that take work (training,
/// model) and the database are not unhealthy.
#[utoipa::path(
    get,
    path = crate::routes::READY.path,
    operation_id = crate::routes::READY.operation_id,
    tag = "node",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; `reasons` says why.", body = Readiness),
    ),
)]
pub async fn ready(state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let mut reasons = Vec::new();
    if state.shutting_down.load(Ordering::Acquire) {
        reasons.push("node is shutting down".to_string());
    }
    match fresh_report(&state).await {
        Ok(report) => {
            let components = [
                ("training", report.services.get("training")),
                ("model", report.services.get("model")),
                ("database", report.dependencies.get("database")),
            ];
            for (name, health) in components {
                match health {
                    Some(h) if h.status != HealthState::Unhealthy => {}
                    Some(h) => reasons.push(format!(
                        "{name} is unhealthy: {}",
                        h.reason.as_deref().unwrap_or("no reason")
                    )),
                    None => reasons.push(format!("{name} was not checked")),
                }
            }
        }
        Err(problem) => reasons.push(problem.detail.unwrap_or_default()),
    }
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        node_id: state.node_id.clone(),
        reasons,
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}

pub fn metrics(state: Arc<GatewayState>) -> Response {
    warp::reply::with_header(
        state.metrics.render(),
        "content-type",
        "text/plain; version=0.0.4",
    )
    .into_response()
}

/// The live nodes of the cluster
#[utoipa::path(
    get,
    path = crate::routes::CLUSTER_NODES.path,
    operation_id = crate::routes::CLUSTER_NODES.operation_id,
    tag = "node",
    responses(
        (status = 200, description = "Every live node, this one included.", body = [NodeInfo]),
        (status = 503, description = "The discovery service is unavailable (no answer in time, or \
            restarting).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn cluster_nodes(state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let nodes = state
        .directory
        .call::<DiscoveryMessage, Vec<NodeInfo>, _>(
            names::DISCOVERY,
            DiscoveryMessage::ListNodes,
            state.call_timeout,
        )
        .await;
    Ok(match nodes {
        Ok(nodes) => warp::reply::json(&nodes).into_response(),
        Err(error) => Problem::unavailable(error.to_string(), 1).into_response(),
    })
}
