//! `/metrics`, and the HTTP request metrics every route feeds.
//!
//! Requests are labelled by route *template* (`/jobs/{id}`, from the route table), never by the
//! raw path: ids would make the label set unbounded. A path that matches no route is
//! `unmatched`.

use std::sync::Arc;

use grokforge_actors::NodeMetrics;
use grokforge_actors::names;
use grokforge_actors::services::model::ModelServiceMessage;
use grokforge_actors::storage::StorageError;
use grokforge_actors::training_core::Phase;
use warp::reply::Response;

use crate::GatewayState;
use crate::problem::Problem;

/// Counts and times one finished request (called by warp's log filter).
pub fn observe_request(metrics: &NodeMetrics, info: &warp::log::Info<'_>) {
    let method = match info.method().as_str() {
        method @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => method,
        _ => "other",
    };
    let route = crate::routes::template_of(info.path());
    metrics
        .http_requests_total
        .with_label_values(&[method, route, info.status().as_str()])
        .inc();
    metrics
        .http_request_duration_seconds
        .with_label_values(&[method, route])
        .observe(info.elapsed().as_secs_f64());
}

/// The registry in Prometheus text format, with the models-per-phase gauge refreshed first.
/// The registry count is a database query, so it is taken at scrape time instead of being
/// kept in step with every save and delete across the cluster.
pub async fn metrics(state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let counts = state
        .call_service(
            names::MODEL_SERVICE,
            ModelServiceMessage::CountByPhase,
            |e: StorageError| Problem::unavailable(e.to_string(), 1),
        )
        .await;
    match counts {
        Ok(counts) => {
            // Every phase gets a value, 0 included, so a phase whose last model was deleted
            // does not keep its old count.
            for phase in Phase::ALL {
                let name = phase.to_string();
                let count = counts
                    .iter()
                    .find(|(p, _)| *p == name)
                    .map_or(0, |(_, n)| *n);
                state
                    .metrics
                    .models
                    .with_label_values(&[name.as_str()])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
        // Metrics must render when the registry is down; the gauge keeps its last values.
        Err(problem) => {
            tracing::warn!(detail = ?problem.detail, "cannot count models for /metrics")
        }
    }
    Ok(crate::health::metrics(state))
}
