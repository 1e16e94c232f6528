//! Datasets over HTTP: `POST /datasets` (upload), `GET /datasets`, `GET /datasets/{id}`,
//! `DELETE /datasets/{id}`.
//!
//! An upload's body is streamed to the DatasetService chunk by chunk over a bounded channel,
//! never held whole here; the service writes, hashes, bounds and validates it. When it refuses
//! the upload (too large, say) it closes the channel, and the handler stops reading the client
//! and answers at once. Nothing a client sends names a file: the query carries a display name,
//! the kind and (for JSONL) the text field.

use std::sync::Arc;

use bytes::Buf;
use futures::{Stream, StreamExt};
use grokforge_actors::names;
use grokforge_actors::services::datasets::{
    DatasetDetail, DatasetEntry, DatasetError, DatasetPage, DatasetServiceMessage,
    UPLOAD_CHANNEL_CAPACITY, UploadRequest,
};
use grokforge_actors::storage::{DatasetKind, DatasetRecord};
use serde::Deserialize;
use utoipa::IntoParams;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::GatewayState;
use crate::problem::{MAX_INT64, Problem, in_range, json_or_problem};

/// Page size of `GET /datasets` unless `limit` says otherwise, and the largest `limit`.
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1000;

pub(crate) fn dataset_problem(error: DatasetError) -> Problem {
    let detail = error.to_string();
    match error {
        DatasetError::TooLarge { limit } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, detail).with("limit_bytes", limit)
        }
        DatasetError::Invalid { line, .. } => {
            let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail);
            match line {
                Some(line) => problem.with("line", line),
                None => problem,
            }
        }
        DatasetError::BadParameter { field, .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail).with("field", field)
        }
        DatasetError::Aborted(_) => Problem::new(StatusCode::BAD_REQUEST, detail),
        DatasetError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, detail),
        DatasetError::InUse { jobs, .. } => {
            let ids: Vec<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();
            Problem::new(StatusCode::CONFLICT, detail).with("jobs", ids)
        }
        DatasetError::BuiltIn(_) => Problem::new(StatusCode::CONFLICT, detail),
        DatasetError::Storage(e) if e.is_client_error() => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        DatasetError::Storage(e) => {
            tracing::error!(error = %e, "dataset storage error");
            Problem::unavailable(format!("datasets: {e}"), 1)
        }
    }
}

async fn call<R: Send + 'static>(
    state: &GatewayState,
    build: impl FnOnce(ractor::RpcReplyPort<Result<R, DatasetError>>) -> DatasetServiceMessage,
) -> Result<R, Problem> {
    state
        .call_service(names::DATASET_SERVICE, build, dataset_problem)
        .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// What to call it (shown in lists; never a path): 1 to 128 characters, no control
    /// characters, no spaces around. Default `dataset`.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
    )]
    name: Option<String>,
    /// `text` (UTF-8, default), `jsonl` (one JSON object per line) or `tokenizer`
    /// (a Hugging Face `tokenizer.json`).
    #[param(value_type = Option<DatasetKind>)]
    kind: Option<String>,
    /// With `kind=jsonl` only (refused with the other kinds): the field holding the text, 1 to
    /// 128 characters without control characters (default `text`).
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    text_field: Option<String>,
}

/// Upload a dataset
///
/// Streams the body (a corpus or a `tokenizer.json`) into the node's artifact store, computing
/// its SHA-256 on the way, refusing it past `storage.max_dataset_bytes`, then validates it. The
/// same content uploaded again is the same dataset (200 instead of 201). Jobs name it as
/// `"dataset": "ds:<id>"` (or `"tokenizer_dataset": "ds:<id>"`).
#[utoipa::path(
    post,
    path = crate::routes::UPLOAD_DATASET.path,
    operation_id = crate::routes::UPLOAD_DATASET.operation_id,
    tag = "datasets",
    params(UploadQuery),
    request_body(content = String, content_type = "application/octet-stream",
        description = "The file's bytes."),
    responses(
        (status = 201, description = "Stored; the new dataset.", body = DatasetEntry),
        (status = 200, description = "The same content was there already: that dataset.",
            body = DatasetEntry),
        (status = 400, description = "The upload was cut short, or a query parameter is \
            unknown.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `storage.max_dataset_bytes` (`limit_bytes`); \
            nothing was kept.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not what its kind says (`line` names the line: invalid \
            UTF-8, a JSONL line that is not an object with the text field), empty, or not a \
            tokenizer; or a bad parameter (`field`). Nothing was kept.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The dataset service is unavailable.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn upload<S, B>(
    query: UploadQuery,
    content_length: Option<u64>,
    body: S,
    state: Arc<GatewayState>,
) -> Result<Response, warp::Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let result: Result<_, Problem> = async {
        let kind_name = query.kind.as_deref().unwrap_or("text");
        let kind = DatasetKind::parse(kind_name).ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("`kind`: expected text, jsonl or tokenizer, got {kind_name:?}"),
            )
            .with("field", "kind")
        })?;
        let request = UploadRequest {
            name: query.name.unwrap_or_else(|| "dataset".to_string()),
            kind,
            text_field: query.text_field,
            declared_bytes: content_length,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(UPLOAD_CHANNEL_CAPACITY);
        let outcome = call(&state, |reply| DatasetServiceMessage::Upload {
            request,
            body: receiver,
            reply,
        })
        .await?;
        // Feed the writer until the body ends or the writer stops listening (it refused the
        // upload): then the rest of the body is never read.
        let mut body = std::pin::pin!(body);
        loop {
            let chunk = tokio::select! {
                biased;
                () = sender.closed() => break,
                chunk = body.next() => chunk,
            };
            match chunk {
                None => break,
                Some(Ok(mut buf)) => {
                    let bytes = buf.copy_to_bytes(buf.remaining());
                    if sender.send(Ok(bytes)).await.is_err() {
                        break;
                    }
                }
                Some(Err(error)) => {
                    let _ = sender.send(Err(error.to_string())).await;
                    break;
                }
            }
        }
        drop(sender);
        let uploaded = outcome
            .await
            .map_err(|_| Problem::unavailable("the dataset service stopped the upload", 1))?
            .map_err(dataset_problem)?;
        Ok(uploaded)
    }
    .await;
    Ok(match result {
        Ok(uploaded) => {
            let status = if uploaded.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_or_problem(Ok(DatasetEntry::from(uploaded.record)), status)
        }
        Err(problem) => problem.into_response(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many uploaded datasets (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// Skip this many (the previous page's `next_offset`).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    offset: Option<u64>,
}

/// List datasets
///
/// Uploaded datasets, oldest first and paged, and the built-in algorithmic tasks.
#[utoipa::path(
    get,
    path = crate::routes::LIST_DATASETS.path,
    operation_id = crate::routes::LIST_DATASETS.operation_id,
    tag = "datasets",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of uploaded datasets, and the built-in tasks.",
            body = DatasetPage),
        (status = 400, description = "An unknown or malformed query parameter.",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` or `offset` is out of range; `field` names it.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The dataset service is unavailable.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn list(query: ListQuery, state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let result = async {
        let limit = in_range("limit", query.limit.unwrap_or(DEFAULT_LIMIT), 1..=MAX_LIMIT)?;
        let offset = in_range("offset", query.offset.unwrap_or(0), 0..=MAX_INT64)?;
        call(&state, |reply| DatasetServiceMessage::List {
            limit,
            offset,
            reply,
        })
        .await
    }
    .await;
    Ok(json_or_problem(result, StatusCode::OK))
}

/// `ds:<id>` may arrive percent-encoded (`ds%3A<id>`).
fn decode(id: &str) -> String {
    id.replacen("%3A", ":", 1).replacen("%3a", ":", 1)
}

/// One dataset
///
/// The dataset (name, kind, size, SHA-256, lines and records, when it was created) and the
/// jobs that read it.
#[utoipa::path(
    get,
    path = crate::routes::GET_DATASET.path,
    operation_id = crate::routes::GET_DATASET.operation_id,
    tag = "datasets",
    params(("id" = String, Path, description = "`ds:<id>` or the bare id.")),
    responses(
        (status = 200, description = "The dataset and the jobs that read it.",
            body = DatasetDetail),
        (status = 404, description = "No dataset with this id.",
            body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The dataset service is unavailable.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn get(id: String, state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let id = decode(&id);
    let result = call(&state, |reply| DatasetServiceMessage::Get(id, reply)).await;
    Ok(json_or_problem(result, StatusCode::OK))
}

/// Delete a dataset
///
/// Removes the dataset's record, then its file; refused while a queued, running or
/// interrupted job reads it.
#[utoipa::path(
    delete,
    path = crate::routes::DELETE_DATASET.path,
    operation_id = crate::routes::DELETE_DATASET.operation_id,
    tag = "datasets",
    params(("id" = String, Path, description = "`ds:<id>` or the bare id.")),
    responses(
        (status = 200, description = "Deleted; the record that was deleted.",
            body = DatasetRecord),
        (status = 404, description = "No dataset with this id.",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Jobs that have not finished read it (`jobs` lists them), \
            or it is built in.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The dataset service is unavailable.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub async fn delete(id: String, state: Arc<GatewayState>) -> Result<Response, warp::Rejection> {
    let id = decode(&id);
    let result = call(&state, |reply| DatasetServiceMessage::Delete(id, reply)).await;
    Ok(json_or_problem(result, StatusCode::OK))
}
