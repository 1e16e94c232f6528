//! `/metrics`, and the HTTP request metrics every route feeds.
//!
//! Requests are labelled by route *template* (`/jobs/{id}`), never by the raw path: ids would
//! make the label set unbounded. A path that matches no route is `unmatched`.

use std::sync::Arc;

use grokforge_actors::NodeMetrics;
use grokforge_actors::names;
use grokforge_actors::services::model::ModelServiceMessage;
use grokforge_actors::storage::StorageError;
use grokforge_actors::training_core::Phase;
use warp::reply::Response;

use crate::GatewayState;
use crate::problem::Problem;

/// The route template of `path`: one of a closed set. Called for every request, so it looks at
/// the first segments in place instead of collecting them.
pub fn route_template(path: &str) -> &'static str {
    let mut segments = path.trim_matches('/').split('/');
    // Every route has at most three segments; a fourth means no route.
    let s: [Option<&str>; 4] = std::array::from_fn(|_| segments.next());
    match s {
        [Some(""), None, None, None] => "/",
        [Some("health"), None, None, None] => "/health",
        [Some("ready"), None, None, None] => "/ready",
        [Some("alerts"), None, None, None] => "/alerts",
        [Some("monitoring"), None, None, None] => "/monitoring",
        [Some("metrics"), None, None, None] => "/metrics",
        [Some("openapi.json"), None, None, None] => "/openapi.json",
        [Some("ws"), None, None, None] => "/ws",
        [Some("cluster"), Some("nodes"), None, None] => "/cluster/nodes",
        [Some("phases"), None, None, None] => "/phases",
        [Some("phases"), Some(_), Some("start"), None] => "/phases/{phase}/start",
        [Some("phases"), Some(_), Some("status"), None] => "/phases/{phase}/status",
        [Some("jobs"), None, None, None] => "/jobs",
        [Some("jobs"), Some(_), None, None] => "/jobs/{id}",
        [Some("jobs"), Some(_), Some("cancel"), None] => "/jobs/{id}/cancel",
        [Some("jobs"), Some(_), Some("events"), None] => "/jobs/{id}/events",
        [Some("models"), None, None, None] => "/models",
        [Some("models"), Some("export"), None, None] => "/models/export",
        [Some("models"), Some(_), None, None] => "/models/{id}",
        [Some("exports"), Some(_), None, None] => "/exports/{id}",
        [Some("datasets"), None, None, None] => "/datasets",
        [Some("datasets"), Some(_), None, None] => "/datasets/{id}",
        [Some("dashboard"), Some(_), _, None] => "/dashboard/{file}",
        _ => "unmatched",
    }
}

/// Counts and times one finished request (called by warp's log filter).
pub fn observe_request(metrics: &NodeMetrics, info: &warp::log::Info<'_>) {
    let method = match info.method().as_str() {
        method @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => method,
        _ => "other",
    };
    let route = route_template(info.path());
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

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn paths_map_to_a_bounded_set_of_templates() {
        for (path, template) in [
            ("/", "/"),
            ("/health", "/health"),
            ("/jobs", "/jobs"),
            ("/jobs/0190a4b2-0000-7000-8000-000000000000", "/jobs/{id}"),
            ("/jobs/x/events", "/jobs/{id}/events"),
            ("/jobs/x/cancel", "/jobs/{id}/cancel"),
            ("/phases/cognate/start", "/phases/{phase}/start"),
            ("/phases/whatever/status", "/phases/{phase}/status"),
            ("/models/export", "/models/export"),
            ("/models/abc", "/models/{id}"),
            ("/exports/abc", "/exports/{id}"),
            ("/datasets", "/datasets"),
            (
                "/datasets/ds:0190a4b2-0000-7000-8000-000000000000",
                "/datasets/{id}",
            ),
            ("/datasets/a/b", "unmatched"),
            ("/ws", "/ws"),
            ("/openapi.json", "/openapi.json"),
            ("/no/such/route/here", "unmatched"),
            ("/jobs/a/b/c", "unmatched"),
            ("/jobs/a/events/extra", "unmatched"),
            ("/health/", "/health"),
        ] {
            assert_eq!(route_template(path), template, "{path}");
        }
    }
}
