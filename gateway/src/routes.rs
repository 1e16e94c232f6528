//! The route table: one declaration per route — method, path template, who may call it and
//! its operation in the OpenAPI document — that everything else is built from.
//!
//! * The filter chain (`crate::routes`) matches each route with [`Route::exact`] or
//!   [`Route::with_param`] and checks its [`Access`] with `auth::guard`.
//! * A request no route serves is answered here, by [`no_route`]: 405 with the `Allow` header
//!   RFC 9110 asks for when its path is a route's, 404 otherwise.
//! * The request metrics label a request with its route's template ([`template_of`]).
//! * The OpenAPI document takes each operation's path, operation id and security from here
//!   (the handlers' `#[utoipa::path]` attributes name their route); its tests check that the
//!   document holds exactly the [documented](Route::documented) routes.
//!
//! Templates are OpenAPI's: literal segments and `{name}` parameters, each one segment, plus
//! `{*name}` for "the rest of the path" as the last segment. A path belongs to the most specific
//! template it matches (a literal segment beats a parameter), so `/models/export` is never
//! `/models/{id}` with the id `export`.

use grokforge_config::Role;
use warp::Filter;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

use crate::problem::Problem;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: load balancers and orchestrators probe these without a token.
    Public,
    /// `Authorization: Bearer` with a token of this role or a higher one.
    Token(Role),
    /// Like `Token`, also accepting the token as `?token=`: browsers cannot set headers on a
    /// WebSocket.
    TokenOrQuery(Role),
    /// A `read` token, or none on a node with `gateway.metrics_open = true` (a scraper on a
    /// trusted network).
    Scrape,
}

impl Access {
    /// The least role a token must have; `None` for a route open to anyone.
    pub fn role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::Token(role) | Access::TokenOrQuery(role) => Some(role),
            Access::Scrape => Some(Role::Read),
        }
    }
}

/// One route of the gateway.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    /// The path template, as the OpenAPI document writes it.
    pub path: &'static str,
    pub access: Access,
    /// The operation's id in the OpenAPI document, and the route's name.
    pub operation_id: &'static str,
    /// Whether the OpenAPI document describes it (the dashboard's page and files are not API).
    pub documented: bool,
}

macro_rules! routes {
    ($($name:ident: $method:ident $path:literal, $access:expr, $operation_id:literal $(, $undocumented:ident)?;)+) => {
        $(
            pub static $name: Route = Route {
                method: Method::$method,
                path: $path,
                access: $access,
                operation_id: $operation_id,
                documented: routes!(@documented $($undocumented)?),
            };
        )+
        /// Every route, in the order the filter chain tries them.
        pub static ALL: &[&Route] = &[$(&$name),+];
    };
    (@documented) => { true };
    (@documented undocumented) => { false };
}

const READ: Access = Access::Token(Role::Read);
const USER: Access = Access::Token(Role::User);

// The order is the filter chain's: it decides nothing about which route answers (no two routes
// have the same method and template), only how many are tried first, so the reads a dashboard
// polls come first.
routes! {
    LIST_MODELS: GET "/models", READ, "list_models";
    LIST_JOBS: GET "/jobs", READ, "list_jobs";
    GET_JOB: GET "/jobs/{id}", READ, "get_job";
    JOB_EVENTS: GET "/jobs/{id}/events", READ, "job_events";
    EXPORT_MODELS: POST "/models/export", USER, "export_models";
    GET_MODEL: GET "/models/{id}", READ, "get_model";
    DELETE_MODEL: DELETE "/models/{id}", USER, "delete_model";
    HEALTH: GET "/health", Access::Public, "health";
    READY: GET "/ready", Access::Public, "ready";
    METRICS: GET "/metrics", Access::Scrape, "metrics";
    CLUSTER_NODES: GET "/cluster/nodes", READ, "cluster_nodes";
    OPENAPI: GET "/openapi.json", READ, "openapi";
    WEBSOCKET: GET "/ws", Access::TokenOrQuery(Role::Read), "websocket";
    START_PHASE: POST "/phases/{phase}/start", USER, "start_phase";
    LIST_PHASES: GET "/phases", READ, "list_phases";
    PHASE_STATUS: GET "/phases/{phase}/status", READ, "phase_status";
    CANCEL_JOB: POST "/jobs/{id}/cancel", USER, "cancel_job";
    DOWNLOAD_EXPORT: GET "/exports/{id}", READ, "download_export";
    LIST_ALERTS: GET "/alerts", READ, "list_alerts";
    MONITORING: GET "/monitoring", READ, "monitoring_summary";
    LIST_DATASETS: GET "/datasets", READ, "list_datasets";
    GET_DATASET: GET "/datasets/{id}", READ, "get_dataset";
    UPLOAD_DATASET: POST "/datasets", USER, "upload_dataset";
    DELETE_DATASET: DELETE "/datasets/{id}", USER, "delete_dataset";
    DASHBOARD: GET "/", Access::Public, "dashboard", undocumented;
    DASHBOARD_FILE: GET "/dashboard/{*file}", Access::Public, "dashboard_file", undocumented;
}

/// One segment of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'t> {
    Literal(&'t str),
    Param,
    Rest,
}

impl Segment<'_> {
    fn parse(segment: &str) -> Segment<'_> {
        if segment.starts_with("{*") {
            Segment::Rest
        } else if segment.starts_with('{') {
            Segment::Param
        } else {
            Segment::Literal(segment)
        }
    }

    /// Higher is more specific.
    fn rank(self) -> u8 {
        match self {
            Segment::Literal(_) => 2,
            Segment::Param => 1,
            Segment::Rest => 0,
        }
    }
}

/// The segments of a path or template: `/` is none, and one trailing `/` is ignored.
fn segments(path: &str) -> impl Iterator<Item = &str> + Clone {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/').filter(move |_| !path.is_empty())
}

fn template_segments(template: &str) -> impl Iterator<Item = Segment<'_>> + Clone {
    segments(template).map(Segment::parse)
}

/// What a path captured for a template's parameter: nothing, one segment, or the rest.
type Capture<'p> = Option<&'p str>;

/// Matches `path` against `template`; the capture of its parameter (templates have at most
/// one, which `at_most_one_parameter_per_template` keeps so).
fn capture<'p>(template: &str, path: &'p str) -> Option<Capture<'p>> {
    let mut captured = None;
    let mut rest = path.strip_prefix('/').unwrap_or(path);
    let mut want = template_segments(template);
    let mut got = segments(path);
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(captured),
            (Some(Segment::Literal(literal)), Some(segment)) if literal == segment => {}
            (Some(Segment::Param), Some(segment)) if !segment.is_empty() => {
                captured = Some(segment);
            }
            (Some(Segment::Rest), Some(segment)) if !segment.is_empty() => {
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                return Some(Some(rest));
            }
            _ => return None,
        }
        // Past the segment just matched and its `/`.
        rest = rest.split_once('/').map_or("", |(_, after)| after);
    }
}

/// Whether template `a` is more specific than `b` (both matching some path): at the first
/// segment where they differ in kind, `a`'s is the more specific.
fn more_specific(a: &str, b: &str) -> bool {
    let b_segments = template_segments(b);
    for (x, y) in template_segments(a).zip(b_segments) {
        match x.rank().cmp(&y.rank()) {
            std::cmp::Ordering::Equal => continue,
            order => return order == std::cmp::Ordering::Greater,
        }
    }
    false
}

/// The template `path` belongs to: the most specific one it matches.
fn resolve(path: &str) -> Option<&'static str> {
    let mut best: Option<&'static str> = None;
    for route in ALL {
        if best == Some(route.path) || capture(route.path, path).is_none() {
            continue;
        }
        if best.is_none_or(|best| more_specific(route.path, best)) {
            best = Some(route.path);
        }
    }
    best
}

/// The route template of `path`, for the request metrics: one of a closed set, never the raw
/// path (ids would make the label set unbounded). `unmatched` when no route has it.
pub fn template_of(path: &str) -> &'static str {
    resolve(path).unwrap_or("unmatched")
}

/// The routes of `path`'s template, one per method it is served with.
fn routes_of(path: &str) -> impl Iterator<Item = &'static Route> {
    let template = resolve(path);
    ALL.iter()
        .copied()
        .filter(move |route| Some(route.path) == template)
}

/// The `Allow` header of `path`: the methods its template is served with, comma-separated.
pub fn allow(path: &str) -> Option<String> {
    let methods: Vec<&str> = routes_of(path).map(|route| route.method.as_str()).collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

impl Route {
    fn parameters(&self) -> usize {
        template_segments(self.path)
            .filter(|s| matches!(s, Segment::Param | Segment::Rest))
            .count()
    }

    /// Matches a request for this route: its method, and a path that belongs to its template.
    /// Everything else is a `not_found` rejection, the weakest there is, so another route's
    /// rejection (a 401, a bad query) wins over it; [`no_route`] answers what no route takes.
    fn matching(
        &'static self,
    ) -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
        // The templates more specific than this one that some of its paths match: those paths
        // are theirs (`/models/export` for `/models/{id}`). Found once, here.
        let shadowed_by: Vec<&'static str> = ALL
            .iter()
            .map(|route| route.path)
            .filter(|&other| other != self.path && more_specific(other, self.path))
            .filter(|other| overlaps(other, self.path))
            .collect();
        warp::method().and(warp::path::full()).and_then(
            move |method: Method, path: warp::path::FullPath| {
                let matched = if method == self.method {
                    capture(self.path, path.as_str())
                        .filter(|_| {
                            !shadowed_by
                                .iter()
                                .any(|t| capture(t, path.as_str()).is_some())
                        })
                        .map(|captured| captured.map(str::to_string))
                } else {
                    None
                };
                std::future::ready(matched.ok_or_else(warp::reject::not_found))
            },
        )
    }

    /// A filter for a route without parameters.
    ///
    /// # Panics
    /// When the template has a parameter: a mistake in the table, caught by every test that
    /// builds the routes.
    pub fn exact(&'static self) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
        assert_eq!(self.parameters(), 0, "{} has a parameter", self.path);
        self.matching().map(|_: Option<String>| ()).untuple_one()
    }

    /// A filter for a route with one parameter, which it extracts as the path has it (not
    /// percent-decoded).
    ///
    /// # Panics
    /// When the template has no parameter (see [`Route::exact`]).
    pub fn with_param(
        &'static self,
    ) -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
        assert_eq!(self.parameters(), 1, "{} needs one parameter", self.path);
        self.matching()
            .map(|captured: Option<String>| captured.unwrap_or_default())
    }
}

/// Whether some path matches both templates (of the same length, each segment pair compatible).
fn overlaps(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (template_segments(a), template_segments(b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(Segment::Rest), Some(_)) | (Some(_), Some(Segment::Rest)) => return true,
            (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x != y => return false,
            (Some(_), Some(_)) => {}
            _ => return false,
        }
    }
}

/// The last filter of the chain: answers a request that no route of the table serves, with 405
/// and `Allow` when its path is a route's under another method, else 404. A request some
/// route serves is rejected here with `not_found`, so that route's own answer or rejection
/// stands.
pub fn no_route() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and_then(|method: Method, path: warp::path::FullPath| {
            let path = path.as_str();
            let answer = if routes_of(path).any(|route| route.method == method) {
                Err(warp::reject::not_found())
            } else {
                Ok(no_route_answer(&method, path))
            };
            std::future::ready(answer)
        })
}

fn no_route_answer(method: &Method, path: &str) -> Response {
    let Some(allow) = allow(path) else {
        return Problem::new(StatusCode::NOT_FOUND, "no such route").into_response();
    };
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on this route; it allows {allow}"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response
            .headers_mut()
            .insert(warp::http::header::ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A path of `template`, with `x` for its parameter.
    pub(crate) fn example_path(template: &str) -> String {
        let path: Vec<&str> = template_segments(template)
            .map(|s| match s {
                Segment::Literal(literal) => literal,
                Segment::Param => "x",
                Segment::Rest => "app.js",
            })
            .collect();
        format!("/{}", path.join("/"))
    }

    #[test]
    fn no_two_routes_share_a_method_and_template_or_an_operation_id() {
        let keys: BTreeSet<(&str, &str)> =
            ALL.iter().map(|r| (r.method.as_str(), r.path)).collect();
        assert_eq!(keys.len(), ALL.len());
        let ids: BTreeSet<&str> = ALL.iter().map(|r| r.operation_id).collect();
        assert_eq!(ids.len(), ALL.len());
    }

    #[test]
    fn at_most_one_parameter_per_template() {
        for route in ALL {
            assert!(route.parameters() <= 1, "{}", route.path);
            let rest = template_segments(route.path).position(|s| s == Segment::Rest);
            if let Some(position) = rest {
                assert_eq!(
                    position + 1,
                    template_segments(route.path).count(),
                    "{}",
                    route.path
                );
            }
        }
    }

    #[test]
    fn paths_map_to_their_most_specific_template() {
        for route in ALL {
            assert_eq!(template_of(&example_path(route.path)), route.path);
        }
        for (path, template) in [
            ("/", "/"),
            ("/health/", "/health"),
            ("/jobs/0190a4b2-0000-7000-8000-000000000000", "/jobs/{id}"),
            ("/models/export", "/models/export"),
            ("/models/abc", "/models/{id}"),
            (
                "/datasets/ds:0190a4b2-0000-7000-8000-000000000000",
                "/datasets/{id}",
            ),
            ("/dashboard/vendor/uPlot.min.css", "/dashboard/{*file}"),
            ("/dashboard", "unmatched"),
            ("/datasets/a/b", "unmatched"),
            ("/jobs//events", "unmatched"),
            ("/no/such/route/here", "unmatched"),
            ("/jobs/a/b/c", "unmatched"),
            ("/jobs/a/events/extra", "unmatched"),
        ] {
            assert_eq!(template_of(path), template, "{path}");
        }
    }

    #[test]
    fn parameters_capture_their_segment_or_the_rest() {
        assert_eq!(
            capture("/jobs/{id}/events", "/jobs/abc/events"),
            Some(Some("abc"))
        );
        assert_eq!(capture("/health", "/health"), Some(None));
        assert_eq!(
            capture("/dashboard/{*file}", "/dashboard/vendor/a.css"),
            Some(Some("vendor/a.css"))
        );
        assert_eq!(capture("/jobs/{id}", "/jobs/"), None);
    }

    #[test]
    fn allow_lists_the_methods_of_a_paths_template() {
        assert_eq!(allow("/models/abc").as_deref(), Some("GET, DELETE"));
        assert_eq!(allow("/models/export").as_deref(), Some("POST"));
        assert_eq!(allow("/datasets").as_deref(), Some("GET, POST"));
        assert_eq!(allow("/nothing"), None);
    }
}
