//! RFC 9457 problem details: every error the gateway answers has this body, served as
//! `application/problem+json`.

use std::convert::Infallible;

use serde::Serialize;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Problem-specific members (RFC 9457 §3.2), e.g. the list of valid phases.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Problem {
        self.extensions.insert(key.into(), value.into());
        self
    }

    /// A 503 that tells the client when to come back.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Problem {
        let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail);
        problem.retry_after_secs = Some(retry_after_secs);
        problem
    }
}

impl warp::Reply for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            warp::http::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert("retry-after", warp::http::HeaderValue::from(secs));
        }
        response
    }
}

/// Turns warp's rejections into problem details; nothing leaves the gateway as a bare 404/500.
pub async fn recover(rejection: warp::Rejection) -> Result<Problem, Infallible> {
    let problem = if rejection.is_not_found() {
        Problem::new(StatusCode::NOT_FOUND, "no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
    } else if let Some(e) = rejection.find::<warp::reject::PayloadTooLarge>() {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        Problem::new(StatusCode::BAD_REQUEST, e.to_string())
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

/// A path id; one that is not a UUID names nothing, so it is a 404 like an unknown one.
pub fn parse_id(kind: &str, id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id)
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("{kind} {id} not found")))
}
