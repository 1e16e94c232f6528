//! The HTTP face of a grokforge node, on warp.
//!
//! * [`routes`] — every route of the node, with errors as RFC 9457 problem details.
//! * [`serve`] — serves the routes on a bound listener until a shutdown future resolves.
//! * [`problem`] — the `application/problem+json` error body and the rejection handler.
//!
//! The gateway holds no state of its own: it calls the node's actors through the service
//! directory, each call with a deadline.

mod health;
mod jobs;
mod models;
pub mod problem;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grokforge_actors::{NodeMetrics, ServiceDirectory};
use tokio::net::TcpListener;
use warp::Filter;

/// What the handlers need from the node.
#[derive(Clone)]
pub struct GatewayState {
    pub node_id: String,
    pub directory: ServiceDirectory,
    pub metrics: NodeMetrics,
    /// Deadline of a call from a handler to an actor.
    pub call_timeout: Duration,
    /// Deadline of a health round (the monitoring service's own check timeout plus margin).
    pub health_timeout: Duration,
    /// Set while the node drains: `/ready` answers 503 so load balancers stop sending work.
    pub shutting_down: Arc<AtomicBool>,
    /// Largest request body accepted; more is a 413.
    pub max_body_bytes: u64,
    /// Where the registry keeps its files (export downloads are read from here).
    pub artifacts_dir: std::path::PathBuf,
}

impl GatewayState {
    /// Calls `service` with the gateway's deadline and maps its error with `to_problem`: an
    /// actor that does not answer in time is a 503 with Retry-After, never a hung request.
    pub(crate) async fn call_service<M, R, E>(
        &self,
        service: &'static str,
        build: impl FnOnce(ractor::RpcReplyPort<Result<R, E>>) -> M,
        to_problem: fn(E) -> problem::Problem,
    ) -> Result<R, problem::Problem>
    where
        M: ractor::Message,
        R: Send + 'static,
        E: Send + 'static,
    {
        self.directory
            .call::<M, _, _>(service, build, self.call_timeout)
            .await
            .map_err(|e| problem::Problem::unavailable(e.to_string(), 1))?
            .map_err(to_problem)
    }
}

/// All routes of the node.
pub fn routes(
    state: GatewayState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let state_max_body = state.max_body_bytes;
    let with_state = warp::any().map(move || state.clone());
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_state.clone())
        .and_then(health::health);
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_state.clone())
        .and_then(health::ready);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state.clone())
        .map(health::metrics);
    let nodes = warp::path!("cluster" / "nodes")
        .and(warp::get())
        .and(with_state.clone())
        .and_then(health::cluster_nodes);

    let max_body_bytes = state_max_body;
    let start = warp::path!("phases" / String / "start")
        .and(warp::post())
        .and(warp::body::content_length_limit(max_body_bytes))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .and_then(jobs::start);
    let phases = warp::path!("phases")
        .and(warp::get())
        .and(with_state.clone())
        .and_then(jobs::phases);
    let phase_status = warp::path!("phases" / String / "status")
        .and(warp::get())
        .and(with_state.clone())
        .and_then(jobs::phase_status);
    let list_jobs = warp::path!("jobs")
        .and(warp::get())
        .and(warp::query::<jobs::JobQuery>())
        .and(with_state.clone())
        .and_then(jobs::list);
    let get_job = warp::path!("jobs" / String)
        .and(warp::get())
        .and(with_state.clone())
        .and_then(jobs::get);
    let cancel_job = warp::path!("jobs" / String / "cancel")
        .and(warp::post())
        .and(with_state.clone())
        .and_then(jobs::cancel);
    let job_events = warp::path!("jobs" / String / "events")
        .and(warp::get())
        .and(warp::query::<jobs::EventsQuery>())
        .and(with_state.clone())
        .and_then(jobs::events);
    let list_models = warp::path!("models")
        .and(warp::get())
        .and(warp::query::<models::ModelQuery>())
        .and(with_state.clone())
        .and_then(models::list);
    let get_model = warp::path!("models" / String)
        .and(warp::get())
        .and(with_state.clone())
        .and_then(models::get);
    let delete_model = warp::path!("models" / String)
        .and(warp::delete())
        .and(with_state.clone())
        .and_then(models::delete);
    let export = warp::path!("models" / "export")
        .and(warp::post())
        .and(warp::body::content_length_limit(max_body_bytes))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .and_then(models::export);
    let download = warp::path!("exports" / String)
        .and(warp::get())
        .and(with_state)
        .and_then(models::download);

    health
        .or(ready)
        .or(metrics)
        .or(nodes)
        .or(start)
        .or(phases)
        .or(phase_status)
        .or(list_jobs)
        .or(get_job)
        .or(cancel_job)
        .or(job_events)
        .or(export)
        .or(list_models)
        .or(get_model)
        .or(delete_model)
        .or(download)
        .recover(problem::recover)
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish. `listening` is true while connections are accepted.
pub async fn serve(
    listener: TcpListener,
    state: GatewayState,
    listening: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    listening.store(true, Ordering::Release);
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    listening.store(false, Ordering::Release);
}
