//! The HTTP client of a running node, shared by `grokforge jobs …` and `grokforge models …
//! --server`.
//!
//! * [`Client`] — JSON calls to one node with its bearer token. An answer that is not a 2xx
//!   becomes an [`ApiError`]: one line with the status and the RFC 9457 problem body's title,
//!   detail and extra members (`valid_phases`, `field`, …), plus what to do about a 401 or 403.
//! * [`connect`] — the token to send: `--token` / `GROKFORGE_TOKEN`, else the admin token a
//!   node writes to `<data_dir>/admin-token` on its first start ([`read_token_file`]).
//! * [`ws_url`] — the node's WebSocket endpoint, derived from its HTTP address.
//! * [`print_table`] — the column layout every `list` command prints.
//!
//! The token goes into the `/ws` URL's query, so such a URL is never printed: messages name
//! the endpoint without it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The file in a node's data dir that holds the admin token it generated (mode 0600, one line).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Where a node answers when nothing else is said (`gateway.bind`'s default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// How long to wait for a TCP connection (and, for `jobs watch`, the WebSocket handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON call's whole answer must arrive within this. Export downloads have no overall
/// deadline (a large archive on a slow link takes as long as it takes), only [`READ_TIMEOUT`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest silence while reading any answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The client of one node.
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// The flags that name a node and how to authenticate to it, shared by the client commands
/// (`jobs`, `datasets`).
#[derive(clap::Args)]
pub struct NodeFlags {
    /// The node's HTTP address.
    #[arg(long, env = "GROKFORGE_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// Bearer token (default: the admin token in <data_dir>/admin-token, if readable).
    #[arg(long, env = "GROKFORGE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The node's data dir, only to find its admin token (default: the configured one).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

impl NodeFlags {
    /// The client these flags describe; an empty `GROKFORGE_SERVER` is as good as none.
    pub fn connect(self) -> anyhow::Result<Client> {
        let server = match self.server.trim() {
            "" => DEFAULT_SERVER,
            server => server,
        };
        let data_dir = self.data_dir;
        connect(server, self.token, || match data_dir {
            Some(dir) => Ok(dir),
            None => Ok(grokforge_config::Settings::load(None, std::env::vars())
                .context("cannot read the configuration to find the node's admin token")?
                .node
                .data_dir),
        })
    }
}

/// Runs one client command to its end on a runtime of its own (one thread: a command waits on
/// the node, it does not compute).
pub fn block_on<T>(
    command: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(command)
}

/// Builds the client for `server`. The token is `token` when given (the flag or
/// `GROKFORGE_TOKEN`), else the admin token in the data dir that `data_dir` names — asked for
/// only then, since finding it may mean reading the configuration — else none, and the node
/// answers 401 with a hint.
pub fn connect(
    server: &str,
    token: Option<String>,
    data_dir: impl FnOnce() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<Client> {
    let token = match token.filter(|t| !t.trim().is_empty()) {
        Some(token) => Some(token.trim().to_string()),
        None => read_token_file(&data_dir()?)?,
    };
    Client::new(server, token)
}

/// The admin token a node with this data dir generated, if the file exists. A file that
/// exists but cannot be read (another user's, mode 0600) is an error that says so, rather
/// than a request without a token and a puzzling 401.
pub fn read_token_file(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(content) => Ok(content
            .lines()
            .next()
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(str::to_string)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| {
            format!(
                "cannot read the admin token {}; pass --token or set GROKFORGE_TOKEN",
                path.display()
            )
        }),
    }
}

/// `--server` as a base URL: `host:port` means `http://host:port`; only http and https.
pub fn parse_server(server: &str) -> anyhow::Result<Url> {
    let text = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let mut url = Url::parse(&text).with_context(|| format!("--server {server:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!(
            "--server {server:?}: expected an http:// or https:// URL, not {}://",
            url.scheme()
        );
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// `base` with `segments` appended to its path (each percent-encoded as needed) and `query`.
/// A path prefix in `base` (a node behind a proxy at `/grokforge/`) is kept.
pub fn endpoint(base: &Url, segments: &[&str], query: &[(&str, String)]) -> Url {
    let mut url = base.clone();
    // http(s) URLs always have a path; `parse_server` admits no other scheme.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// The node's WebSocket endpoint for the HTTP address `base`: `http` → `ws`, `https` →
/// `wss`, same host, port and path prefix, `/ws`, and the token in the query when there is
/// one (the handshake also carries it as a header; the query is what browsers can send).
pub fn ws_url(base: &Url, token: Option<&str>) -> anyhow::Result<Url> {
    let mut url = endpoint(base, &["ws"], &[]);
    let scheme = match base.scheme() {
        "http" => "ws",
        "https" => "wss",
        other => bail!("no WebSocket scheme for {other}:// (expected http or https)"),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow!("cannot turn {base} into a {scheme}:// URL"))?;
    if let Some(token) = token {
        url.query_pairs_mut().append_pair("token", token);
    }
    Ok(url)
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = parse_server(server)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("grokforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { base, token, http })
    }

    /// The node's address as given (without any token).
    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let url = endpoint(&self.base, segments, query);
        let response = self
            .send(Method::GET, url.clone(), None, Some(REQUEST_TIMEOUT))
            .await?;
        decode(response, &url).await
    }

    /// POSTs `body` as JSON, or nothing when it is `None`.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = endpoint(&self.base, segments, &[]);
        let response = self
            .send(Method::POST, url.clone(), body, Some(REQUEST_TIMEOUT))
            .await?;
        decode(response, &url).await
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, segments: &[&str]) -> anyhow::Result<T> {
        let url = endpoint(&self.base, segments, &[]);
        let response = self
            .send(Method::DELETE, url.clone(), None, Some(REQUEST_TIMEOUT))
            .await?;
        decode(response, &url).await
    }

    /// POSTs `body` (a stream of `length` bytes) with `query`, bounded only by the per-read
    /// timeout: an upload takes as long as the bytes take.
    pub async fn post_stream<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        body: reqwest::Body,
        length: u64,
    ) -> anyhow::Result<T> {
        let url = endpoint(&self.base, segments, query);
        let mut request = self
            .http
            .post(url.clone())
            .header("content-type", "application/octet-stream")
            .header("content-length", length)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = self.finish(request).await?;
        decode(response, &url).await
    }

    /// A GET whose body the caller reads piece by piece (a download): a 2xx response, bounded
    /// only by the per-read timeout.
    pub async fn get_download(&self, segments: &[&str]) -> anyhow::Result<Response> {
        let url = endpoint(&self.base, segments, &[]);
        self.send(Method::GET, url, None, None).await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        deadline: Option<Duration>,
    ) -> anyhow::Result<Response> {
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        if let Some(deadline) = deadline {
            request = request.timeout(deadline);
        }
        self.finish(request).await
    }

    /// Sends `request`; a non-2xx answer becomes an [`ApiError`] with the problem's message.
    async fn finish(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(&error, &self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after_secs = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok());
        // The error body is only for the message; a body that breaks off still leaves the status.
        let body = response.bytes().await.unwrap_or_default();
        Err(
            ApiError::from_response(status.as_u16(), &body, self.token.is_some())
                .with_retry_after(retry_after_secs)
                .into(),
        )
    }
}

async fn decode<T: DeserializeOwned>(response: Response, url: &Url) -> anyhow::Result<T> {
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("the answer from {url} broke off"))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{url} answered JSON this client does not understand"))
}

/// A request that got no HTTP answer at all: a refused connection names the node's address,
/// since a wrong or missing `--server` is the usual cause.
fn transport_error(error: &reqwest::Error, base: &Url) -> anyhow::Error {
    if error.is_connect() {
        let cause = io_cause(error)
            .map(|e| e.to_string())
            .unwrap_or_else(|| error_chain(error));
        return anyhow!(
            "cannot connect to the node at {base}: {cause} (is `grokforge serve` running there? \
             set --server or GROKFORGE_SERVER)"
        );
    }
    let url = error.url().unwrap_or(base);
    if error.is_timeout() {
        return anyhow!("no answer from {url} in time");
    }
    anyhow!("request to {url} failed: {}", error_chain(error))
}

/// The innermost I/O error under `error` ("Connection refused (os error 111)").
pub fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut found = None;
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(io_error) = current.downcast_ref::<io::Error>() {
            found = Some(io_error);
        }
        next = current.source();
    }
    found
}

/// `error` and its sources on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut next = error.source();
    while let Some(current) = next {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}

/// An error answer of the node, printed as `<status> <title>: <detail> (<extras>)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub title: String,
    pub detail: Option<String>,
    /// Problem members beyond the standard ones, rendered (`valid_phases: cognate, evomerge`).
    pub extras: Vec<(String, String)>,
    pub retry_after_secs: Option<u64>,
    /// Whether the request carried a token (a 401 then means a wrong one, not a missing one).
    token_sent: bool,
}

/// The RFC 9457 members this client reads by name; the rest are the problem's extras.
#[derive(Deserialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    type_uri: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    #[serde(flatten)]
    members: serde_json::Map<String, serde_json::Value>,
}

/// Longest piece of a non-problem error body that goes into the message.
const MAX_BODY_CHARS: usize = 200;

impl ApiError {
    /// Reads a problem body; anything else (a proxy's HTML page, plain text) contributes its
    /// first line as the detail.
    pub fn from_response(status: u16, body: &[u8], token_sent: bool) -> ApiError {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut error = ApiError {
            status,
            title: reason.to_string(),
            detail: None,
            extras: Vec::new(),
            retry_after_secs: None,
            token_sent,
        };
        match serde_json::from_slice::<ProblemBody>(body) {
            Ok(problem) => {
                if let Some(title) = problem.title.filter(|t| !t.is_empty()) {
                    error.title = title;
                }
                error.detail = problem.detail.filter(|d| !d.is_empty());
                if let Some(type_uri) = problem.type_uri.filter(|t| t != "about:blank") {
                    error.extras.push(("type".into(), type_uri));
                }
                error.extras.extend(
                    problem
                        .members
                        .into_iter()
                        .filter(|(key, _)| key != "status")
                        .map(|(key, value)| (key, render_value(&value))),
                );
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let first_line = text.lines().map(str::trim).find(|l| !l.is_empty());
                error.detail =
                    first_line.map(|line| line.chars().take(MAX_BODY_CHARS).collect::<String>());
            }
        }
        error
    }

    pub fn with_retry_after(mut self, retry_after_secs: Option<u64>) -> ApiError {
        self.retry_after_secs = retry_after_secs;
        self
    }

    fn hint(&self) -> Option<&'static str> {
        match (self.status, self.token_sent) {
            (401, false) => Some(
                "no token was sent: pass --token or set GROKFORGE_TOKEN (or run on the node, \
                 whose <data_dir>/admin-token is read)",
            ),
            (401, true) => Some("pass a valid token with --token or GROKFORGE_TOKEN"),
            (403, _) => Some(
                "the token's role may not do this: pass --token or set GROKFORGE_TOKEN with one \
                 that may",
            ),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if !self.extras.is_empty() {
            let extras: Vec<String> = self
                .extras
                .iter()
                .map(|(key, value)| format!("{key}: {value}"))
                .collect();
            write!(f, " ({})", extras.join("; "))?;
        }
        if let Some(secs) = self.retry_after_secs {
            write!(f, " (retry in {secs} s)")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// A problem member as text: strings bare, lists comma-separated, anything else as JSON.
fn render_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(render_value)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Prints `rows` under `header` in left-aligned columns two spaces apart.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    print!("{}", render_table(header, rows));
}

fn render_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> Url {
        parse_server(s).unwrap()
    }

    #[test]
    fn server_addresses_default_to_http_and_refuse_other_schemes() {
        assert_eq!(
            base("127.0.0.1:8080").as_str(),
            "http://127.0.0.1:8080/",
            "a bare host:port is http"
        );
        assert_eq!(base("localhost:9000").as_str(), "http://localhost:9000/");
        assert_eq!(
            base("https://node.example/grokforge/?x=1#f").as_str(),
            "https://node.example/grokforge/"
        );
        let error = parse_server("ftp://node.example").unwrap_err().to_string();
        assert!(error.contains("http:// or https://"), "{error}");
        assert!(parse_server("http://").is_err());
    }

    #[test]
    fn endpoints_append_to_the_base_path_and_encode_queries() {
        let url = endpoint(
            &base("http://127.0.0.1:8080"),
            &["jobs", "0193-abc", "events"],
            &[("since", "7".into())],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/jobs/0193-abc/events?since=7"
        );
        let behind_proxy = endpoint(
            &base("https://node.example/grokforge/"),
            &["models"],
            &[("tag", "a b&c".into()), ("winner", "true".into())],
        );
        assert_eq!(
            behind_proxy.as_str(),
            "https://node.example/grokforge/models?tag=a+b%26c&winner=true"
        );
        let no_slash = endpoint(&base("http://h:1/prefix"), &["jobs"], &[]);
        assert_eq!(no_slash.as_str(), "http://h:1/prefix/jobs");
        let encoded = endpoint(&base("http://h:1"), &["models", "a/b"], &[]);
        assert_eq!(encoded.as_str(), "http://h:1/models/a%2Fb");
    }

    #[test]
    fn websocket_urls_follow_the_http_scheme_and_carry_the_token() {
        assert_eq!(
            ws_url(&base("http://127.0.0.1:8080"), Some("s3cr/t"))
                .unwrap()
                .as_str(),
            "ws://127.0.0.1:8080/ws?token=s3cr%2Ft"
        );
        assert_eq!(
            ws_url(&base("https://node.example/grokforge/"), None)
                .unwrap()
                .as_str(),
            "wss://node.example/grokforge/ws"
        );
        // Default ports stay implicit in both schemes.
        assert_eq!(
            ws_url(&base("http://node.example:80"), None)
                .unwrap()
                .as_str(),
            "ws://node.example/ws"
        );
        assert_eq!(
            ws_url(&base("https://node.example:8443"), None)
                .unwrap()
                .as_str(),
            "wss://node.example:8443/ws"
        );
    }

    #[test]
    fn a_problem_body_becomes_one_line_with_its_extras() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,
            "detail":"unknown phase `nope`","valid_phases":["cognate","evomerge"]}"#;
        let error = ApiError::from_response(404, body, true);
        assert_eq!(
            error.to_string(),
            "404 Not Found: unknown phase `nope` (valid_phases: cognate, evomerge)"
        );
        let body = br#"{"type":"about:blank","title":"Unprocessable Entity","status":422,
            "detail":"`steps`: invalid type","field":"steps","limit":3}"#;
        assert_eq!(
            ApiError::from_response(422, body, true).to_string(),
            "422 Unprocessable Entity: `steps`: invalid type (field: steps; limit: 3)"
        );
        let body = br#"{"type":"https://grokforge.invalid/busy","title":"Service Unavailable",
            "status":503,"detail":"training service did not answer"}"#;
        assert_eq!(
            ApiError::from_response(503, body, true)
                .with_retry_after(Some(1))
                .to_string(),
            "503 Service Unavailable: training service did not answer \
             (type: https://grokforge.invalid/busy) (retry in 1 s)"
        );
    }

    #[test]
    fn bodies_that_are_no_problem_still_give_status_and_a_line() {
        let error = ApiError::from_response(502, b"\n<html>bad gateway</html>\nmore", true);
        assert_eq!(
            error.to_string(),
            "502 Bad Gateway: <html>bad gateway</html>"
        );
        assert_eq!(
            ApiError::from_response(500, b"", true).to_string(),
            "500 Internal Server Error"
        );
        let long = "x".repeat(1000);
        let error = ApiError::from_response(500, long.as_bytes(), true);
        assert_eq!(error.detail.unwrap().len(), MAX_BODY_CHARS);
    }

    #[test]
    fn auth_failures_say_how_to_pass_a_token() {
        let body = br#"{"title":"Unauthorized","status":401,"detail":"missing bearer token"}"#;
        let without = ApiError::from_response(401, body, false).to_string();
        assert!(
            without.starts_with("401 Unauthorized: missing bearer token; no token was sent"),
            "{without}"
        );
        assert!(without.contains("--token") && without.contains("GROKFORGE_TOKEN"));
        let with = ApiError::from_response(401, body, true).to_string();
        assert!(with.contains("pass a valid token"), "{with}");
        let forbidden = ApiError::from_response(
            403,
            br#"{"title":"Forbidden","status":403,"detail":"admin role required"}"#,
            true,
        )
        .to_string();
        assert!(
            forbidden.starts_with("403 Forbidden: admin role required; ")
                && forbidden.contains("--token or set GROKFORGE_TOKEN"),
            "{forbidden}"
        );
    }

    #[test]
    fn the_token_file_is_read_when_present_and_its_absence_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_token_file(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "gf_admin_123\n").unwrap();
        assert_eq!(
            read_token_file(dir.path()).unwrap().as_deref(),
            Some("gf_admin_123")
        );
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "  \n").unwrap();
        assert_eq!(read_token_file(dir.path()).unwrap(), None);
        // A directory where the file should be cannot be read: an error naming the path.
        let odd = tempfile::tempdir().unwrap();
        std::fs::create_dir(odd.path().join(ADMIN_TOKEN_FILE)).unwrap();
        let error = format!("{:#}", read_token_file(odd.path()).unwrap_err());
        assert!(error.contains(ADMIN_TOKEN_FILE), "{error}");
    }

    #[test]
    fn a_given_token_wins_and_the_data_dir_is_only_asked_for_without_one() {
        let client = connect(DEFAULT_SERVER, Some("given".into()), || {
            panic!("the data dir is not needed when a token is given")
        })
        .unwrap();
        assert_eq!(client.token(), Some("given"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "from-file\n").unwrap();
        let client = connect(DEFAULT_SERVER, Some(" ".into()), || Ok(dir.path().into())).unwrap();
        assert_eq!(
            client.token(),
            Some("from-file"),
            "a blank token counts as none"
        );

        let empty = tempfile::tempdir().unwrap();
        let client = connect(DEFAULT_SERVER, None, || Ok(empty.path().into())).unwrap();
        assert_eq!(client.token(), None);
    }

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let rows = [
            ["a".to_string(), "running".to_string(), String::new()],
            ["bbbb".to_string(), "queued".to_string(), "x".to_string()],
        ];
        assert_eq!(
            render_table(["ID", "STATUS", "P"], &rows),
            "ID    STATUS   P\na     running\nbbbb  queued   x\n"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_server() {
        // Bind, learn the port, close: nothing listens there any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = Client::new(&format!("127.0.0.1:{port}"), None).unwrap();
        let error = client
            .get_json::<serde_json::Value>(&["jobs"], &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot connect to the node at http://127.0.0.1:{port}/"
            )),
            "{error}"
        );
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }
}
