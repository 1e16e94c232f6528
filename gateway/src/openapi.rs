//! The gateway's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! utoipa builds it from what the server itself uses: the `#[utoipa::path]` attributes on the
//! handlers in `jobs`, `models` and `health`, and the `ToSchema` derives the storage,
//! training-core and actors crates carry behind their `openapi` feature. Written here are only
//! the things with no type of their own: the start body ([`StartJobRequest`], `TrainSpec`'s
//! schema with `phase` taken out and `priority` put in), the entries of `GET /phases`, and the
//! routes whose handlers live elsewhere (`GET /metrics`, `GET /ws`, `GET /openapi.json`).
//!
//! Each operation's path and id come from its route in the route table (`crate::routes`): the
//! handlers' attributes name it, and the tests below check that the document holds exactly the
//! table's documented routes. Authentication is applied in one place, [`BearerAuth`], from each
//! route's declared [`Access`], rather than on each handler, so a route cannot be documented as
//! open by forgetting an attribute.

use std::borrow::Cow;
use std::sync::OnceLock;

use grokforge_actors::training_core::{PATH_FIELDS, Phase, TrainSpec};
use grokforge_config::Role;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::jobs::{Edge, Range, START_LIMITS};
use crate::problem::Problem;
use crate::routes::{self, Access};

/// Names of the security schemes in `components.securitySchemes`.
const BEARER_SCHEME: &str = "bearer";
const QUERY_TOKEN_SCHEME: &str = "query_token";

/// The document. Cheap enough to build per call; [`json`] keeps the serialised form.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, built on first use.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // The document is plain structs and string-keyed maps, which always serialise; the
        // unit tests below serialise it on every run.
        document()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "grokforge gateway",
        description = "The HTTP API of a grokforge node: training phases and jobs, the model \
            registry and its export packages, health, metrics and the cluster's nodes. \
            Errors are RFC 9457 problem details (`application/problem+json`)."
    ),
    paths(
        crate::jobs::start,
        crate::jobs::phases,
        crate::jobs::phase_status,
        crate::jobs::list,
        crate::jobs::get,
        crate::jobs::cancel,
        crate::jobs::events,
        crate::models::list,
        crate::models::get,
        crate::models::delete,
        crate::models::export,
        crate::models::download,
        crate::datasets::upload,
        crate::datasets::list,
        crate::datasets::get,
        crate::datasets::delete,
        crate::health::health,
        crate::health::ready,
        crate::health::cluster_nodes,
        crate::health::alerts,
        crate::health::monitoring,
        metrics,
        websocket,
        openapi_json,
    ),
    // Types named only by query parameters or free-form refs are not collected from the paths.
    components(schemas(
        Problem,
        grokforge_actors::services::monitoring::AlertState,
        Phase,
        grokforge_actors::storage::jobs::JobStatus,
        StartJobRequest
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Training phases and the jobs that run them."),
        (name = "models", description = "The model registry and export packages."),
        (name = "datasets", description = "Uploaded corpora and tokenizers, and the built-in \
            tasks."),
        (name = "events", description = "Live events over WebSocket."),
        (name = "node", description = "Health, readiness, metrics and the cluster."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// Declares the bearer scheme and applies it, with its 401 and 403 answers, to every operation
/// whose route asks for a token, listing the roles that may call it.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`. A token has one role, and roles nest: \
                         `read` may call the GET routes, `user` also starts and cancels jobs, \
                         deletes and exports models and uploads and deletes datasets, `admin` \
                         may do everything. Each operation lists the roles it accepts.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            QUERY_TOKEN_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The bearer token as a query parameter, for the WebSocket handshake only \
                 (browsers cannot set headers on a WebSocket).",
            ))),
        );
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(Problem::name())))
                .build()
        };
        components.responses.insert(
            "Unauthorized".to_string(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("No token, or one the node does not know.")
                    .header(
                        "WWW-Authenticate",
                        HeaderBuilder::new()
                            .schema(String::schema())
                            .description(Some("`Bearer realm=\"grokforge\"`"))
                            .build(),
                    )
                    .content("application/problem+json", problem())
                    .build(),
            ),
        );
        components.responses.insert(
            "Forbidden".to_string(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(
                        "The token's role may not call this route; `required_role` names the \
                         least role that may.",
                    )
                    .content("application/problem+json", problem())
                    .build(),
            ),
        );

        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations_mut(item) {
                let route = routes::ALL.iter().find(|route| {
                    route.path == path && http_method(&route.method).as_ref() == Some(&method)
                });
                // An operation without a route fails the tests below; it is left as it is.
                let Some(route) = route else { continue };
                let Some(least) = route.access.role() else {
                    continue;
                };
                let roles = roles_from(least);
                // Alternatives: any one requirement of the list satisfies the operation.
                let mut security = vec![SecurityRequirement::new(
                    BEARER_SCHEME,
                    roles.iter().copied(),
                )];
                if matches!(route.access, Access::TokenOrQuery(_)) {
                    security.push(SecurityRequirement::new(
                        QUERY_TOKEN_SCHEME,
                        roles.iter().copied(),
                    ));
                }
                operation.security = Some(security);
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".to_string(),
                    RefOr::Ref(Ref::from_response_name("Unauthorized")),
                );
                responses.insert(
                    "403".to_string(),
                    RefOr::Ref(Ref::from_response_name("Forbidden")),
                );
            }
        }
    }
}

/// The roles that may do what needs `least`, lowest first.
fn roles_from(least: Role) -> &'static [&'static str] {
    match least {
        Role::Read => &["read", "user", "admin"],
        Role::User => &["user", "admin"],
        Role::Admin => &["admin"],
    }
}

fn http_method(method: &warp::http::Method) -> Option<HttpMethod> {
    use warp::http::Method;
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::PUT => HttpMethod::Put,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        Method::OPTIONS => HttpMethod::Options,
        Method::HEAD => HttpMethod::Head,
        Method::PATCH => HttpMethod::Patch,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

/// The operations of a path, with their methods.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Delete, &mut item.delete),
        (HttpMethod::Options, &mut item.options),
        (HttpMethod::Head, &mut item.head),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Trace, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|operation| (method, operation)))
}

/// Start-body fields the training service replaces with the node's own choice.
const NODE_CHOSEN_FIELDS: [&str; 1] = ["device"];

/// The body of `POST /phases/{phase}/start`: `TrainSpec`'s fields except `phase` (the path
/// names it), plus the queue `priority`. Derived from `TrainSpec`'s own schema, so a new
/// training setting shows up here without an edit.
pub(crate) struct StartJobRequest;

impl PartialSchema for StartJobRequest {
    fn schema() -> RefOr<Schema> {
        let mut schema = TrainSpec::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.properties.remove("phase");
            object.required.retain(|field| field != "phase");
            // Fields that name a server file are refused over HTTP (422), so the document
            // leaves them out: `additionalProperties: false` then says the same.
            for field in PATH_FIELDS {
                object.properties.remove(field);
            }
            // Accepted (the body is a `TrainSpec`) but overridden by the training service.
            for field in NODE_CHOSEN_FIELDS {
                if let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field) {
                    property.description = Some(format!(
                        "{} Ignored over HTTP: the node decides.",
                        property.description.as_deref().unwrap_or_default()
                    ));
                }
            }
            object.properties.insert(
                "priority".to_string(),
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .default(Some(0.into()))
                    .description(Some("Queue priority; a higher one runs first."))
                    .into(),
            );
            for &(field, range) in START_LIMITS {
                if let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field) {
                    bound(property, range);
                }
            }
            for (field, pattern) in [
                (
                    "dataset",
                    format!("^(?:{TASK_PATTERN}|{UPLOADED_PATTERN})$"),
                ),
                ("tokenizer_dataset", format!("^{UPLOADED_PATTERN}$")),
            ] {
                if let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field) {
                    property.pattern = Some(pattern);
                }
            }
            object.description = Some(
                "Training settings: the flags of `grokforge train` as fields (`--batch-size` is \
                 `batch_size`), each optional with the default shown, plus the queue priority. \
                 Unknown fields are refused, and so are numbers out of the ranges stated here. \
                 Rules the schema cannot state are checked too (a 422 names the field): an \
                 uploaded dataset must exist and be of the right kind, `tokenizer_dataset` needs \
                 an uploaded `dataset`, a division task needs a prime modulus, and the heads \
                 must divide the model width."
                    .to_string(),
            );
        }
        schema
    }
}

/// A built-in algorithmic task as `dataset` names it: `mod-OP:P` with P from 2 to 4096.
const TASK_PATTERN: &str =
    "mod-(?:add|sub|mul|div|poly):(?:[2-9]|[1-9][0-9]{1,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-6])";

/// An uploaded dataset as a spec names it: `ds:` and its id.
const UPLOADED_PATTERN: &str = "ds:[0-9a-fA-F-]{1,64}";

/// Writes `range` into a property's schema.
fn bound(property: &mut utoipa::openapi::schema::Object, range: Range) {
    use utoipa::Number;
    match range {
        Range::Integer { min, max } => {
            property.minimum = Some(Number::Int(min as isize));
            property.maximum = Some(Number::Int(max as isize));
        }
        Range::Number { min, max } => {
            match min {
                Some(Edge::Inclusive(m)) => property.minimum = Some(Number::Float(m)),
                Some(Edge::Exclusive(m)) => property.exclusive_minimum = Some(Number::Float(m)),
                None => {}
            }
            match max {
                Some(Edge::Inclusive(m)) => property.maximum = Some(Number::Float(m)),
                Some(Edge::Exclusive(m)) => property.exclusive_maximum = Some(Number::Float(m)),
                None => {}
            }
        }
    }
}

impl ToSchema for StartJobRequest {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StartJobRequest")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        TrainSpec::schemas(schemas);
    }
}

/// An entry of `GET /phases`.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "describes the JSON `jobs::phases` builds; never constructed"
)]
pub(crate) struct PhaseEntry {
    name: Phase,
    /// Whether the phase can be started (only phases with a recipe can).
    has_recipe: bool,
}

/// Prometheus metrics
///
/// The node's metrics in the Prometheus text exposition format (`grokforge_*`, base units).
/// Needs a token unless the node is configured with `gateway.metrics_open = true` (for a
/// scraper on a trusted network).
#[utoipa::path(
    get,
    path = crate::routes::METRICS.path,
    operation_id = crate::routes::METRICS.operation_id,
    tag = "node",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String,
            content_type = "text/plain; version=0.0.4"),
        (status = 503, description = "The model service (asked for the per-phase model \
            counts) is unavailable.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
#[expect(
    dead_code,
    reason = "documents the route only; the handler lives with the routes"
)]
fn metrics() {}

/// Live events over WebSocket
///
/// Upgrades the connection to a WebSocket. The token may be given as `Authorization: Bearer`
/// or, since browsers cannot set headers on a WebSocket, as `?token=`.
///
/// Frames are JSON objects tagged by `type`, as DESIGN.md ("HTTP and WebSocket") describes. The
/// client sends `{"type": "subscribe", "topic": ..., "since"?: seq}`,
/// `{"type": "unsubscribe", "topic": ...}` and `{"type": "ping"}`. The server sends
/// `connection_established`, `subscription_confirmed`, `unsubscribed`, `pong` and `error`
/// frames, and one event frame per event of a subscribed topic:
/// `{type, topic, seq, source_service, timestamp, data}` (plus the envelope's `id`,
/// `source_node` and `schema_version`), where `type` and `data` are those of the `Event`
/// schema. Topics: `training_updates`, `model_updates`, `admin_alerts` (admin role only),
/// `health` and `job:{id}` (with `since`, the job's events after that sequence number are
/// replayed first). Frames, subscriptions per connection and connections per node are
/// limited; a client too slow to keep up is dropped from the topic with a reason.
#[utoipa::path(
    get,
    path = crate::routes::WEBSOCKET.path,
    operation_id = crate::routes::WEBSOCKET.operation_id,
    tag = "events",
    // The handshake of RFC 6455, which the server checks (a 426 or 400 otherwise).
    params(
        ("Connection" = String, Header, description = "`Upgrade`.",
            pattern = "^[Uu][Pp][Gg][Rr][Aa][Dd][Ee]$"),
        ("Upgrade" = String, Header, description = "`websocket`.",
            pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`.", pattern = "^13$"),
        ("Sec-WebSocket-Key" = String, Header,
            description = "16 random bytes in base64 (RFC 6455 §4.1).",
            pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the connection is now a WebSocket."),
        (status = 400, description = "An upgrade request without a valid Sec-WebSocket-Key \
            (16 bytes in base64).",
            body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "Not a WebSocket upgrade, or not version 13: the `Upgrade` \
            or `Sec-WebSocket-Version` header says what to send.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The node has as many WebSocket connections as it allows, \
            or the WebSocket hub is unavailable.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
#[expect(
    dead_code,
    reason = "documents the route only; the handler lives with the routes"
)]
fn websocket() {}

/// This document
///
/// The OpenAPI 3.1 description of the gateway.
#[utoipa::path(
    get,
    path = crate::routes::OPENAPI.path,
    operation_id = crate::routes::OPENAPI.operation_id,
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document.", content(("application/json")))),
)]
#[expect(
    dead_code,
    reason = "documents the route only; the handler lives with the routes"
)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(json()).unwrap()
    }

    /// Every (method, path) with its operation.
    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), operation));
            }
        }
        out
    }

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc = doc();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["title"], "grokforge gateway");
        assert_eq!(serde_json::to_value(document()).unwrap(), doc);
    }

    #[test]
    fn it_lists_exactly_the_documented_routes_of_the_table() {
        let expected: BTreeSet<(String, &str, &str)> = routes::ALL
            .iter()
            .filter(|route| route.documented)
            .map(|route| {
                (
                    route.method.as_str().to_lowercase(),
                    route.path,
                    route.operation_id,
                )
            })
            .collect();
        let doc = doc();
        let found = operations(&doc);
        let actual: BTreeSet<(String, &str, &str)> = found
            .iter()
            .map(|(method, path, op)| {
                (
                    method.clone(),
                    path.as_str(),
                    op["operationId"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(actual, expected);
        assert_eq!(found.len(), expected.len());

        // Every path parameter is declared, with the name of the template.
        for (method, path, op) in &found {
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let templated: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, templated, "{method} {path}");
        }
    }

    #[test]
    fn every_route_that_asks_for_a_token_is_documented_with_its_roles() {
        let doc = doc();
        let scheme = &doc["components"]["securitySchemes"][BEARER_SCHEME];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        let scheme = &doc["components"]["securitySchemes"][QUERY_TOKEN_SCHEME];
        assert_eq!(
            (&scheme["type"], &scheme["in"]),
            (&"apiKey".into(), &"query".into())
        );
        assert_eq!(scheme["name"], "token");
        assert!(
            doc.get("security").is_none(),
            "no document-wide requirement"
        );

        for (method, path, op) in operations(&doc) {
            let route = routes::ALL
                .iter()
                .find(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(&method))
                .unwrap();
            let Some(least) = route.access.role() else {
                assert!(op.get("security").is_none(), "{method} {path} is public");
                assert!(op["responses"].get("401").is_none(), "{method} {path}");
                continue;
            };
            let security = op["security"].as_array().unwrap();
            let expected_roles = roles_from(least);
            let mut schemes = vec![BEARER_SCHEME];
            if matches!(route.access, Access::TokenOrQuery(_)) {
                schemes.push(QUERY_TOKEN_SCHEME);
            }
            assert_eq!(
                security.len(),
                schemes.len(),
                "{method} {path}: {security:?}"
            );
            for (requirement, scheme) in security.iter().zip(schemes) {
                let roles: Vec<&str> = requirement[scheme]
                    .as_array()
                    .unwrap_or_else(|| panic!("{method} {path}: {security:?}"))
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect();
                assert_eq!(roles, expected_roles, "{method} {path}");
            }
            for status in ["401", "403"] {
                let reference = op["responses"][status]["$ref"].as_str().unwrap();
                let name = reference.rsplit('/').next().unwrap();
                let response = &doc["components"]["responses"][name];
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
        // The routes the node's probes and the WebSocket rely on.
        assert_eq!(routes::HEALTH.access, Access::Public);
        assert_eq!(routes::READY.access, Access::Public);
        assert_eq!(routes::WEBSOCKET.access, Access::TokenOrQuery(Role::Read));
    }

    #[test]
    fn the_start_body_is_the_train_spec_without_phase_plus_priority() {
        let doc = doc();
        let body = &doc["paths"]["/phases/{phase}/start"]["post"]["requestBody"];
        let reference = body["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap();
        assert_eq!(reference, "#/components/schemas/StartJobRequest");
        // The body may be left out.
        assert!(body.get("required").is_none(), "{body:#}");
        let schema = &doc["components"]["schemas"]["StartJobRequest"];
        let properties = schema["properties"].as_object().unwrap();
        for field in [
            "steps",
            "checkpoint_every",
            "grokfast",
            "priority",
            "batch_size",
            "text_field",
        ] {
            assert!(properties.contains_key(field), "{field}: {schema:#}");
        }
        for field in PATH_FIELDS {
            assert!(!properties.contains_key(field), "{field}: {schema:#}");
        }
        assert!(!properties.contains_key("phase"));
        // Everything is optional; unknown fields are refused, as the handler does.
        assert!(schema.get("required").is_none(), "{schema:#}");
        assert_eq!(schema["additionalProperties"], false);
        // Defaults come from `TrainSpec::default()`.
        let defaults = serde_json::to_value(TrainSpec::default()).unwrap();
        assert_eq!(properties["steps"]["default"], defaults["steps"]);
        assert_eq!(properties["priority"]["default"], 0);
        let device = properties["device"]["description"].as_str().unwrap();
        assert!(
            device.ends_with("Ignored over HTTP: the node decides."),
            "{device}"
        );
        // The filter is the enum the handler accepts.
        let grokfast = &doc["components"]["schemas"]["GrokFastKind"];
        assert_eq!(grokfast["enum"], serde_json::json!(["none", "ema", "ma"]));
    }

    #[test]
    fn the_document_states_the_bounds_the_server_enforces() {
        let doc = doc();
        let start = &doc["components"]["schemas"]["StartJobRequest"]["properties"];
        // Every whole number of the start body has both ends, so none is left to its format
        // (`int64` would admit values the server refuses, or the other way round).
        for (field, property) in start.as_object().unwrap() {
            if property.to_string().contains("\"integer\"") {
                assert!(
                    property["minimum"].is_number() && property["maximum"].is_number(),
                    "{field}: {property}"
                );
            }
        }
        for &(field, range) in START_LIMITS {
            let property = &start[field];
            match range {
                Range::Integer { min, max } => {
                    assert_eq!(property["minimum"], min, "{field}");
                    assert_eq!(property["maximum"], max, "{field}");
                }
                Range::Number { min, max } => {
                    let key = |edge: &Edge, inclusive: &'static str, exclusive: &'static str| {
                        match edge {
                            Edge::Inclusive(v) => (inclusive, *v),
                            Edge::Exclusive(v) => (exclusive, *v),
                        }
                    };
                    for (edge, names) in [
                        (min, ("minimum", "exclusiveMinimum")),
                        (max, ("maximum", "exclusiveMaximum")),
                    ] {
                        if let Some(edge) = edge {
                            let (name, value) = key(&edge, names.0, names.1);
                            assert_eq!(property[name], value, "{field} {name}");
                        }
                    }
                }
            }
        }
        assert_eq!(
            start["dataset"]["pattern"],
            format!("^(?:{TASK_PATTERN}|{UPLOADED_PATTERN})$")
        );
        let export = &doc["components"]["schemas"]["ExportRequest"]["properties"];
        assert_eq!(export["model_ids"]["minItems"], 1);
        let query = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        for (path, name, min, max) in [
            ("/jobs", "limit", 1, 1000),
            ("/datasets", "limit", 1, 1000),
            ("/alerts", "limit", 1, 1000),
            ("/jobs/{id}/events", "since", 0, i64::MAX),
            ("/datasets", "offset", 0, i64::MAX),
            ("/alerts", "offset", 0, i64::MAX),
        ] {
            let schema = query(path, name);
            assert_eq!(schema["minimum"], min, "{path} {name}: {schema}");
            assert_eq!(schema["maximum"], max, "{path} {name}: {schema}");
        }
        // The phase without a recipe is an answer by design, and documented as one.
        let start_op = &doc["paths"]["/phases/{phase}/start"]["post"]["responses"];
        assert!(start_op["501"].is_object());
        let export_op = &doc["paths"]["/models/export"]["post"]["responses"];
        assert!(export_op["409"].is_object());
    }

    #[test]
    fn problems_are_documented_as_rfc_9457_bodies() {
        let doc = doc();
        let problem = &doc["components"]["schemas"]["Problem"];
        let properties = problem["properties"].to_string();
        for member in ["type", "title", "status", "detail"] {
            assert!(properties.contains(&format!("\"{member}\"")), "{problem:#}");
        }
        let not_found = &doc["paths"]["/jobs/{id}"]["get"]["responses"]["404"];
        assert_eq!(
            not_found["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }

    #[test]
    fn phase_names_are_the_ones_the_routes_accept() {
        let doc = doc();
        let names: Vec<String> = Phase::ALL.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            doc["components"]["schemas"]["Phase"]["enum"],
            serde_json::json!(names)
        );
    }

    #[test]
    fn every_referenced_schema_is_defined() {
        let doc = doc();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let prefix = "\"#/components/schemas/";
        for (start, _) in text.match_indices(prefix) {
            let rest = &text[start + prefix.len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
    }
}
