//! Request ids: every request the gateway answers has one, so an operator can match what a
//! client was told with what the node logged.
//!
//! * A request that arrives with an `X-Request-Id` a proxy or client set keeps it, when it is
//!   1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 - _ . :` (anything else could forge log lines
//!   or carry a secret into them, and is replaced); otherwise the gateway makes one (a UUIDv7,
//!   so ids sort by time).
//! * The response carries it back in `X-Request-Id`; every problem body has it as
//!   `request_id` ([`current`] is read when a [`Problem`](crate::problem::Problem) is
//!   rendered).
//! * Everything the request logs is inside a `request{id=…}` span, so each of its log lines
//!   names it.
//!
//! [`serve`](crate::serve) wraps each request's future in [`scope`]; the id lives in a tokio
//! task-local for as long as the request's future runs.

use std::fmt;
use std::future::Future;

use tracing::Instrument;
use warp::http::{HeaderMap, HeaderValue};

/// The header the id travels in, both ways.
pub const HEADER: &str = "x-request-id";
/// The longest id accepted from a client.
pub const MAX_LEN: usize = 64;

/// One request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

tokio::task_local! {
    static CURRENT: RequestId;
}

impl RequestId {
    /// A new id.
    pub fn generate() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string())
    }

    /// The client's id when it is acceptable, else a new one.
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        headers
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| acceptable(id))
            .map(|id| RequestId(id.to_string()))
            .unwrap_or_else(RequestId::generate)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn header_value(&self) -> HeaderValue {
        // Only ASCII letters, digits and punctuation get here (see `acceptable`; a UUID is too).
        HeaderValue::from_str(&self.0).expect("a request id is a valid header value")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn acceptable(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The id of the request whose future is running, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` as the request `id`: [`current`] answers it, and its log lines are in the
/// request's span.
pub fn scope<F: Future>(id: RequestId, future: F) -> impl Future<Output = F::Output> {
    let span = tracing::info_span!("request", id = %id);
    CURRENT.scope(id, future).instrument(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(value: &str) -> RequestId {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_str(value).unwrap());
        RequestId::from_headers(&headers)
    }

    #[test]
    fn a_clients_plain_id_is_kept_and_anything_else_replaced() {
        assert_eq!(from("lb-7f3a.2:9").as_str(), "lb-7f3a.2:9");
        for bad in [
            "",
            "a b",
            "x\"}{\"admin\":true",
            "Bearer abc",
            &"a".repeat(MAX_LEN + 1),
        ] {
            let id = from(bad);
            assert_ne!(id.as_str(), bad);
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{id}");
        }
        let fresh = RequestId::from_headers(&HeaderMap::new());
        assert!(uuid::Uuid::parse_str(fresh.as_str()).is_ok());
    }

    #[tokio::test]
    async fn the_id_is_current_inside_its_scope_only() {
        assert_eq!(current(), None);
        let id = RequestId::generate();
        let seen = scope(id.clone(), async { current() }).await;
        assert_eq!(seen, Some(id));
        assert_eq!(current(), None);
    }
}
