//! The filter chain against the route table (`routes::ALL`): every declared route is served with
//! the access it declares, and a request no route serves is a 404, or a 405 whose `Allow`
//! header lists exactly the methods the table declares for its path.
//!
//! No actor runs here: the requests stop at the guard (401, 403) or at the 404/405 answer, and
//! only the public routes reach a handler (which answers 503 without its service, or serves an
//! embedded file).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use grokforge_actors::resilience::BreakerConfig;
use grokforge_actors::{NodeMetrics, ServiceDirectory};
use grokforge_config::{Role, TokenSettings};
use grokforge_gateway::routes::{self, Access, Route};
use grokforge_gateway::{Breakers, GatewayState, ListBodies, Tokens, WebSocketLimits};
use tokio_util::sync::CancellationToken;
use warp::http::Method;

const TOKENS: [(&str, Role); 3] = [
    ("admin-token", Role::Admin),
    ("user-token", Role::User),
    ("read-token", Role::Read),
];

fn state() -> GatewayState {
    let metrics = NodeMetrics::new();
    let tokens: Vec<TokenSettings> = TOKENS
        .iter()
        .map(|(token, role)| TokenSettings {
            token: (*token).into(),
            role: *role,
        })
        .collect();
    GatewayState {
        node_id: "test-node".into(),
        directory: ServiceDirectory::new(),
        call_timeout: Duration::from_millis(100),
        health_timeout: Duration::from_millis(200),
        shutting_down: Arc::new(AtomicBool::new(false)),
        max_body_bytes: 1 << 20,
        artifacts_dir: std::env::temp_dir(),
        tokens: Arc::new(Tokens::new(&tokens, false)),
        websocket: WebSocketLimits {
            ping_interval: Duration::from_secs(15),
            max_message_bytes: 65_536,
            max_subscriptions: 32,
        },
        breakers: Breakers::new(BreakerConfig::default(), &metrics),
        shutdown: CancellationToken::new(),
        model_lists: ListBodies::new(Default::default()),
        metrics,
    }
}

/// A path of the route's template: `x` for a parameter, an embedded file for the rest.
fn example_path(route: &Route) -> String {
    let segments: Vec<&str> = route
        .path
        .split('/')
        .skip(1)
        .map(|segment| match segment {
            s if s.starts_with("{*") => "app.js",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect();
    format!("/{}", segments.join("/"))
}

fn token_of(role: Role) -> &'static str {
    TOKENS.iter().find(|(_, r)| *r == role).unwrap().0
}

/// The next role down, if any.
fn weaker(role: Role) -> Option<Role> {
    match role {
        Role::Admin => Some(Role::User),
        Role::User => Some(Role::Read),
        Role::Read => None,
    }
}

async fn send(
    method: &Method,
    path: &str,
    token: Option<&str>,
    state: &GatewayState,
) -> warp::http::Response<bytes::Bytes> {
    let mut request = warp::test::request().method(method.as_str()).path(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request
        .reply(&grokforge_gateway::routes(state.clone()))
        .await
}

fn problem(response: &warp::http::Response<bytes::Bytes>) -> serde_json::Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{response:?}"
    );
    serde_json::from_slice(response.body()).unwrap()
}

#[tokio::test]
async fn every_route_of_the_table_is_served_with_its_access() {
    let state = state();
    for route in routes::ALL {
        let path = example_path(route);
        let what = format!("{} {path}", route.method);
        let anonymous = send(&route.method, &path, None, &state).await;
        match route.access.role() {
            Some(_) => {
                assert_eq!(anonymous.status(), 401, "{what}: {:?}", anonymous.body());
                assert!(
                    anonymous.headers().contains_key("www-authenticate"),
                    "{what}"
                );
            }
            None => {
                // A handler answered: not the chain's 404/405.
                assert!(
                    !matches!(anonymous.status().as_u16(), 404 | 405),
                    "{what}: {anonymous:?}"
                );
            }
        }
        if let Some(weaker) = route.access.role().and_then(weaker) {
            let refused = send(&route.method, &path, Some(token_of(weaker)), &state).await;
            assert_eq!(refused.status(), 403, "{what}");
            assert_eq!(
                problem(&refused)["required_role"],
                format!("{:?}", route.access.role().unwrap()).to_lowercase(),
                "{what}"
            );
        }
        if let Access::TokenOrQuery(role) = route.access {
            let by_query = format!("{path}?token={}", token_of(role));
            let admitted = send(&route.method, &by_query, None, &state).await;
            // Past the guard: the handshake's own refusal of a plain GET.
            assert_eq!(admitted.status(), 426, "{what}");
        }
    }
}

#[tokio::test]
async fn other_methods_on_a_routes_path_are_405_with_the_allow_header_of_the_table() {
    let state = state();
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::HEAD,
    ];
    for route in routes::ALL {
        let path = example_path(route);
        let declared: Vec<&str> = routes::ALL
            .iter()
            .filter(|r| r.path == route.path)
            .map(|r| r.method.as_str())
            .collect();
        for method in methods.iter().filter(|m| !declared.contains(&m.as_str())) {
            // With a token that may do anything: the method alone decides.
            let response = send(method, &path, Some(token_of(Role::Admin)), &state).await;
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(
                response.headers()["allow"],
                declared.join(", "),
                "{method} {path}"
            );
            if *method != Method::HEAD {
                assert_eq!(problem(&response)["status"], 405);
            }
        }
    }
    // `/models/export` is its own route, not `/models/{id}` with the id `export`.
    let response = send(&Method::GET, "/models/export", Some("admin-token"), &state).await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

#[tokio::test]
async fn a_path_of_no_route_is_404_whatever_the_method() {
    let state = state();
    for (method, path) in [
        (Method::GET, "/nothing"),
        (Method::TRACE, "/jobs/a/b/c"),
        (Method::POST, "/datasets/a/b"),
        (Method::GET, "/dashboard"),
    ] {
        let response = send(&method, path, Some("admin-token"), &state).await;
        assert_eq!(response.status(), 404, "{method} {path}");
        assert!(!response.headers().contains_key("allow"), "{method} {path}");
        assert_eq!(problem(&response)["detail"], "no such route");
    }
}
