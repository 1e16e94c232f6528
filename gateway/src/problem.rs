//! RFC 9457 problem details: every error the gateway answers has this body, served as
//! `application/problem+json`.

use std::convert::Infallible;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// An RFC 9457 problem: the body of every error the gateway answers.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Not Found",
    "status": 404,
    "detail": "unknown phase `cognat`",
    "request_id": "019ad6f3-8c1e-7b52-9d0e-6c1f4a2b3c4d",
    "valid_phases": ["cognate", "evomerge"]
}))]
pub struct Problem {
    /// The problem type; `about:blank` (the status says it all).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Problem-specific members (RFC 9457 §3.2), e.g. the list of valid phases. Every problem
    /// the gateway answers has `request_id`: the request's id, also in its `X-Request-Id`
    /// response header and in every log line the request wrote — what to quote to an operator.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Response headers beyond the content type; boxed, because most problems have none and
    /// a `Problem` travels in every handler's `Result`.
    #[serde(skip)]
    headers: Option<Box<ProblemHeaders>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ProblemHeaders {
    retry_after_secs: Option<u64>,
    /// `WWW-Authenticate` on a 401.
    other: Vec<(&'static str, &'static str)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            extensions: serde_json::Map::new(),
            headers: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Problem {
        self.headers
            .get_or_insert_default()
            .other
            .push((name, value));
        self
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        self.headers.as_ref().and_then(|h| h.retry_after_secs)
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Problem {
        self.extensions.insert(key.into(), value.into());
        self
    }

    /// A 503 that tells the client when to come back.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Problem {
        let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail);
        problem.headers.get_or_insert_default().retry_after_secs = Some(retry_after_secs);
        problem
    }
}

impl warp::Reply for Problem {
    /// The body names the request (when rendered inside one, see [`crate::request_id`]), and
    /// the problem is logged in the request's span: a 5xx as a warning, a 4xx at info.
    fn into_response(mut self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Some(id) = crate::request_id::current() {
            self.extensions
                .entry("request_id")
                .or_insert_with(|| id.as_str().into());
        }
        let detail = self.detail.as_deref().unwrap_or("");
        if status.is_server_error() {
            tracing::warn!(status = self.status, detail, "answered with a problem");
        } else {
            tracing::info!(status = self.status, detail, "answered with a problem");
        }
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            warp::http::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(extra) = self.headers {
            if let Some(secs) = extra.retry_after_secs {
                headers.insert("retry-after", warp::http::HeaderValue::from(secs));
            }
            for (name, value) in extra.other {
                headers.insert(name, warp::http::HeaderValue::from_static(value));
            }
        }
        response
    }
}

/// A problem raised by a filter (auth) rather than a handler; [`recover`] answers it as is.
#[derive(Debug)]
pub struct Rejected(pub Problem);

impl warp::reject::Reject for Rejected {}

/// Turns warp's rejections into problem details; nothing leaves the gateway as a bare 404/500.
/// (A request for no route never gets here: `routes::no_route` answers it, with `Allow` on a
/// 405.)
pub async fn recover(rejection: warp::Rejection) -> Result<Problem, Infallible> {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MissingHeader, PayloadTooLarge,
        UnsupportedMediaType,
    };
    let problem = if let Some(Rejected(problem)) = rejection.find::<Rejected>() {
        problem.clone()
    } else if rejection.is_not_found() {
        Problem::new(StatusCode::NOT_FOUND, "no such route")
    } else if let Some(e) = rejection.find::<InvalidQuery>() {
        Problem::new(StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rejection.find::<InvalidHeader>() {
        Problem::new(StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rejection.find::<MissingHeader>() {
        Problem::new(StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = rejection.find::<LengthRequired>() {
        Problem::new(StatusCode::LENGTH_REQUIRED, e.to_string())
    } else if let Some(e) = rejection.find::<PayloadTooLarge>() {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
    } else if let Some(e) = rejection.find::<UnsupportedMediaType>() {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    Ok(problem)
}

/// `body` as JSON with `status`, or the problem.
pub fn json_or_problem(result: Result<impl Serialize, Problem>, status: StatusCode) -> Response {
    match result {
        Ok(body) => warp::reply::with_status(warp::reply::json(&body), status).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// A body that does not deserialize: a 422 naming the offending field (`steps`), which
/// serde_path_to_error knows and serde alone does not.
pub fn invalid_body<E: std::fmt::Display>(error: serde_path_to_error::Error<E>) -> Problem {
    let field = error.path().to_string();
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("`{field}`: {}", error.inner()),
    )
    .with("field", field)
}

/// A path id; one that is not a UUID names nothing, so it is a 404 like an unknown one.
pub fn parse_id(kind: &str, id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id)
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("{kind} {id} not found")))
}

/// The largest value of an unsigned query parameter or body field: what JSON Schema's `int64`
/// format (which the document declares for them) can hold.
pub const MAX_INT64: u64 = i64::MAX as u64;

/// `value` when it lies in `range`, else a 422 naming `field`, for a number the document
/// bounds (`minimum`/`maximum`), so the server refuses exactly what the document does.
pub fn in_range<T>(
    field: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, Problem>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(value);
    }
    Err(Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "`{field}` must be {} to {}, found {value}",
            range.start(),
            range.end()
        ),
    )
    .with("field", field))
}
