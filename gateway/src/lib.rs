//! The HTTP face of a grokforge node, on warp.
//!
//! * [`routes()`] — every route of the node, with errors as RFC 9457 problem details.
//! * [`routes`] — the route table: each route's method, path template and access, declared
//!   once for the filter chain, the request metrics and the OpenAPI document.
//! * [`serve`] — serves the routes on a bound listener until a shutdown future resolves.
//! * [`auth`] — bearer tokens with roles; the generated admin token.
//! * [`ws`] — the WebSocket endpoint, one session per client over the node's WebSocketHub.
//! * [`openapi`] — the OpenAPI document, generated from the handlers' types.
//! * [`problem`] — the `application/problem+json` error body and the rejection handler.
//! * `dashboard` — the web page at `/`, embedded in the binary (not part of the API document).
//!
//! The gateway holds no state of its own: it calls the node's actors through the service
//! directory, each call behind a circuit breaker per service and with a deadline.

pub mod auth;
mod dashboard;
mod datasets;
mod health;
mod jobs;
mod metrics;
mod models;
pub mod openapi;
pub mod problem;
pub mod request_id;
pub mod routes;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grokforge_actors::resilience::{
    BreakerConfig, CircuitBreaker, Jitter, RetryPolicy, SystemClock, retry,
};
use grokforge_actors::{NodeMetrics, ServiceDirectory, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;

pub use auth::Tokens;
pub use jobs::parse_start_body;
pub use models::{ExportOrder, ListBodies, parse_export_body};
pub use ws::WebSocketLimits;

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
    pub tokens: Arc<Tokens>,
    pub websocket: WebSocketLimits,
    /// One breaker per service the gateway calls.
    pub breakers: Breakers,
    /// Cancelled when the gateway stops: open WebSocket sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Serialised `GET /models` bodies, reused while the registry's list is unchanged.
    pub model_lists: ListBodies,
}

/// The gateway's circuit breakers, one per service, their states mirrored in
/// `grokforge_breaker_state{breaker}`.
#[derive(Clone)]
pub struct Breakers {
    by_service: Arc<HashMap<&'static str, CircuitBreaker>>,
    /// How long the gateway waits for a restarting actor to be back in the directory.
    lookup: RetryPolicy,
}

impl Breakers {
    pub fn new(config: BreakerConfig, metrics: &NodeMetrics) -> Breakers {
        let services = [
            names::TRAINING_SERVICE,
            names::MODEL_SERVICE,
            names::DATASET_SERVICE,
            names::MONITORING_SERVICE,
            names::WEBSOCKET_HUB,
            names::DISCOVERY,
            names::EVENT_BUS,
        ];
        let gauge = metrics.breaker_state.clone();
        let by_service = services
            .into_iter()
            .map(|service| {
                gauge.with_label_values(&[service]).set(0);
                let gauge = gauge.clone();
                let breaker = CircuitBreaker::new(service, config.clone(), Arc::new(SystemClock))
                    .with_observer(Arc::new(move |name, from, to| {
                        tracing::warn!(breaker = name, %from, %to, "circuit breaker changed state");
                        gauge.with_label_values(&[name]).set(to.as_gauge());
                    }));
                (service, breaker)
            })
            .collect();
        Breakers {
            by_service: Arc::new(by_service),
            lookup: RetryPolicy {
                max_attempts: 4,
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(400),
                multiplier: 2.0,
                jitter: Jitter::Full,
                deadline: Some(Duration::from_secs(1)),
            },
        }
    }
}

impl GatewayState {
    /// Calls `service` and maps its error with `to_problem`. An actor that is restarting is
    /// waited for briefly (retry with backoff and jitter: the message has not been sent, so
    /// this is safe for any request); one that does not answer in time, or whose breaker is
    /// open after repeated failures, is a 503 with Retry-After — never a hung request. The
    /// message itself is sent once: a timed-out start or cancel may have been carried out.
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
        use problem::Problem;
        let permit = match self.breakers.by_service.get(service) {
            Some(breaker) => Some(breaker.try_acquire().map_err(|open| {
                Problem::unavailable(
                    format!("{service} is failing; the gateway stopped calling it for a while"),
                    open.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                )
            })?),
            None => None,
        };
        let actor = retry(
            &self.breakers.lookup,
            |_| true,
            |_| async {
                self.directory
                    .get::<M>(service)
                    .ok_or(grokforge_actors::CallError::Unavailable { service })
            },
        )
        .await
        .map_err(|e| Problem::unavailable(e.last.to_string(), 1))?;
        let reply = match actor.call(build, Some(self.call_timeout)).await {
            Ok(ractor::rpc::CallResult::Success(reply)) => reply,
            Ok(ractor::rpc::CallResult::Timeout) => {
                return Err(Problem::unavailable(
                    format!(
                        "{service} did not answer within {} ms",
                        self.call_timeout.as_millis()
                    ),
                    1,
                ));
            }
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                return Err(Problem::unavailable(
                    format!("{service} dropped the request"),
                    1,
                ));
            }
        };
        // The actor answered: whatever it said, it is alive.
        if let Some(permit) = permit {
            permit.success();
        }
        reply.map_err(to_problem)
    }
}

/// All routes of the node: one filter per entry of the route table ([`routes::ALL`]), each
/// matched by its method and template and guarded by its access, then [`routes::no_route`]
/// for the requests none of them serves.
pub fn routes(
    state: GatewayState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    use routes::Route;

    let max_body_bytes = state.max_body_bytes;
    let tokens = state.tokens.clone();
    // In an `Arc`: warp clones the log filter's closure for every request, and the metrics are
    // dozens of reference-counted handles.
    let metrics_registry = Arc::new(state.metrics.clone());
    // Handlers share one state: cloning the struct itself per request would copy its strings
    // and touch every one of its reference counts.
    let state = Arc::new(state);
    let with_state = warp::any().map(move || state.clone());
    // A route of the table without parameters, and one with its parameter: the method, the
    // path, then the token the route's access asks for.
    let at = |route: &'static Route| {
        route
            .exact()
            .and(auth::guard(&tokens, route.access))
            .map(|_caller| ())
            .untuple_one()
    };
    let at_param = |route: &'static Route| {
        route
            .with_param()
            .and(auth::guard(&tokens, route.access))
            .map(|param: String, _caller| param)
    };

    let health = at(&routes::HEALTH)
        .and(warp::query::<health::HealthQuery>())
        .and(with_state.clone())
        .and_then(health::health);
    let alerts = at(&routes::LIST_ALERTS)
        .and(warp::query::<health::AlertsQuery>())
        .and(with_state.clone())
        .and_then(health::alerts);
    let monitoring = at(&routes::MONITORING)
        .and(with_state.clone())
        .and_then(health::monitoring);
    let ready = at(&routes::READY)
        .and(with_state.clone())
        .and_then(health::ready);
    let metrics = at(&routes::METRICS)
        .and(with_state.clone())
        .and_then(metrics::metrics);
    let nodes = at(&routes::CLUSTER_NODES)
        .and(with_state.clone())
        .and_then(health::cluster_nodes);
    let openapi = at(&routes::OPENAPI)
        .map(|| warp::reply::with_header(openapi::json(), "content-type", "application/json"));
    // The session needs the caller's role (admin topics), so this one keeps it.
    let websocket = routes::WEBSOCKET
        .exact()
        .and(auth::guard(&tokens, routes::WEBSOCKET.access))
        .and(ws::handshake())
        .and(with_state.clone())
        .and_then(|caller, handshake, state| ws::upgrade(handshake, caller, state));

    let start = at_param(&routes::START_PHASE)
        .and(warp::body::content_length_limit(max_body_bytes))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .and_then(jobs::start);
    let phases = at(&routes::LIST_PHASES)
        .and(with_state.clone())
        .and_then(jobs::phases);
    let phase_status = at_param(&routes::PHASE_STATUS)
        .and(with_state.clone())
        .and_then(jobs::phase_status);
    let list_jobs = at(&routes::LIST_JOBS)
        .and(warp::query::<jobs::JobQuery>())
        .and(with_state.clone())
        .and_then(jobs::list);
    let get_job = at_param(&routes::GET_JOB)
        .and(with_state.clone())
        .and_then(jobs::get);
    let cancel_job = at_param(&routes::CANCEL_JOB)
        .and(with_state.clone())
        .and_then(jobs::cancel);
    let job_events = at_param(&routes::JOB_EVENTS)
        .and(warp::query::<jobs::EventsQuery>())
        .and(with_state.clone())
        .and_then(jobs::events);
    let list_models = at(&routes::LIST_MODELS)
        .and(warp::query::<models::ModelQuery>())
        .and(with_state.clone())
        .and_then(models::list);
    let get_model = at_param(&routes::GET_MODEL)
        .and(with_state.clone())
        .and_then(models::get);
    let delete_model = at_param(&routes::DELETE_MODEL)
        .and(with_state.clone())
        .and_then(models::delete);
    let export = at(&routes::EXPORT_MODELS)
        .and(warp::body::content_length_limit(max_body_bytes))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .and_then(models::export);
    let download = at_param(&routes::DOWNLOAD_EXPORT)
        .and(with_state.clone())
        .and_then(models::download);
    // The body is streamed to the dataset service, so no `content_length_limit` here: the
    // service bounds it by `storage.max_dataset_bytes` (a declared length above that is
    // refused before any byte is read).
    let upload_dataset = at(&routes::UPLOAD_DATASET)
        .and(warp::query::<datasets::UploadQuery>())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state.clone())
        .and_then(datasets::upload);
    let list_datasets = at(&routes::LIST_DATASETS)
        .and(warp::query::<datasets::ListQuery>())
        .and(with_state.clone())
        .and_then(datasets::list);
    let get_dataset = at_param(&routes::GET_DATASET)
        .and(with_state.clone())
        .and_then(datasets::get);
    let delete_dataset = at_param(&routes::DELETE_DATASET)
        .and(with_state)
        .and_then(datasets::delete);
    let dashboard = at(&routes::DASHBOARD).and_then(dashboard::index);
    let dashboard_file = at_param(&routes::DASHBOARD_FILE).and_then(dashboard::file);

    // In the table's order (`routes::ALL`; `every_route_of_the_table_is_served` checks each).
    list_models
        .or(list_jobs)
        .or(get_job)
        .or(job_events)
        .or(export)
        .or(get_model)
        .or(delete_model)
        .or(health)
        .or(ready)
        .or(metrics)
        .or(nodes)
        .or(openapi)
        .or(websocket)
        .or(start)
        .or(phases)
        .or(phase_status)
        .or(cancel_job)
        .or(download)
        .or(alerts)
        .or(monitoring)
        .or(list_datasets)
        .or(get_dataset)
        .or(upload_dataset)
        .or(delete_dataset)
        .or(dashboard)
        .or(dashboard_file)
        .or(routes::no_route())
        .recover(problem::recover)
        .with(warp::log::custom(move |info| {
            metrics::observe_request(&metrics_registry, &info)
        }))
}

/// Binds the gateway's listener. Accepted sockets inherit its options on Linux (warp accepts
/// them itself, so they cannot be set per connection):
///
/// * `TCP_NODELAY`: every response and WebSocket frame leaves when it is written. With Nagle's
///   algorithm a small frame written while the previous one is unacknowledged waits for the
///   peer's (possibly delayed) ACK, which costs a live event feed up to tens of milliseconds.
/// * `SO_SNDBUF` when `send_buffer_bytes` > 0: bounds what the kernel holds for each client, so a
///   slow client's backlog shows in its session queue instead of hiding in the kernel.
pub fn listen(bind: std::net::SocketAddr, send_buffer_bytes: u64) -> std::io::Result<TcpListener> {
    let socket = if bind.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    if send_buffer_bytes > 0 {
        socket.set_send_buffer_size(u32::try_from(send_buffer_bytes).unwrap_or(u32::MAX))?;
    }
    socket.bind(bind)?;
    socket.listen(1024)
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting, closes the
/// WebSocket sessions and lets in-flight requests finish. `listening` is true while
/// connections are accepted.
///
/// The accept loop is warp's own (`warp::serve(..).graceful(..)`), less one thing warp cannot
/// do: each request runs in its [`request_id::scope`], and its response carries the id.
pub async fn serve(
    listener: TcpListener,
    state: GatewayState,
    listening: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tower_service::Service;

    let sessions = state.shutdown.clone();
    let service = warp::service(routes(state));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    listening.store(true, Ordering::Release);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = service.clone();
        let per_request = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let id = request_id::RequestId::from_headers(request.headers());
            let header = id.header_value();
            // Boxed: the filter chain's future type is too deep to nest in another one.
            let response: std::pin::Pin<
                Box<dyn Future<Output = Result<warp::reply::Response, Infallible>> + Send>,
            > = Box::pin(service.clone().call(request));
            request_id::scope(id, async move {
                let Ok(mut response) = response.await;
                response.headers_mut().insert(request_id::HEADER, header);
                Ok::<_, Infallible>(response)
            })
        });
        let connection = auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(stream), per_request)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    listening.store(false, Ordering::Release);
    drop(listener);
    sessions.cancel();
    connections.shutdown().await;
}

/// An accept that failed for the listener rather than for one connection (out of file
/// descriptors, say) is logged and retried after a second, as warp does.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept connections; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::listen;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_the_send_buffer() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 64 * 1024).unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on the accepted socket"
        );
        // Linux doubles the requested size for its bookkeeping.
        let accepted = tokio::net::TcpSocket::from_std_stream(accepted.into_std().unwrap());
        let sndbuf = accepted.send_buffer_size().unwrap();
        assert!(
            (64 * 1024..=128 * 1024).contains(&sndbuf),
            "SO_SNDBUF {sndbuf}"
        );
        drop(client);
    }
}
