//! The HTTP API of the central store.
//!
//! - `GET /v1/limits` → 200 `{"max_body_bytes": N, "max_decompressed_bytes": N}`; the agent
//!   refuses to start when its batches could exceed them.
//! - `POST /v1/batches`, body = one envelope (`application/octet-stream`):
//!   - 200 `{"status": "stored" | "duplicate", "seq": N}` once the batch is durable;
//!   - 4xx `{"error": "<code>", "message": "<reason>"}` (plus `"expected_seq"` for chain
//!     refusals) when refused for good — nothing is written; see `validate` and `chain`;
//!   - 413 `body_too_large` is answered from `Content-Length` alone, without reading the
//!     body, and enforced again while the body streams in; 408 `request_timeout` when the
//!     body has not arrived within `request_timeout`. Both close the connection;
//!   - 503 `{"error": "unavailable"}` with `Retry-After` when the store itself failed (it
//!     could not write, a key file was unreadable): nothing was stored, the agent retries
//!     after the given time.
//! - `POST /v1/gaps`, body = a host's signed gap statement (`gap`): 200
//!   `{"status": "gap_recorded" | "duplicate", "from": N, "to": M}`, or a 4xx as above.
//! - `GET /v1/records`: the read API for operators (`read`), when `[receiver.access]` is set.
//! - Anything else: 404 / 405 with the same JSON error shape.

use super::gap::GAPS_PATH;
use super::ingest::{Accepted, Ids, Ingest, Peer};
use super::read::{ReadApi, RECORDS_PATH};
use super::store::ArchiveBackend;
use super::validate::{Refusal, Rejection};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

pub const LIMITS_PATH: &str = "/v1/limits";
pub const BATCHES_PATH: &str = "/v1/batches";

/// The request limits the API enforces and advertises.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_decompressed_bytes: u64,
    pub request_timeout: Duration,
}

/// Answers one request. Never fails: every error becomes a response.
pub async fn handle<A, B>(
    ingest: Arc<Ingest<A>>,
    limits: Limits,
    reads: Option<Arc<ReadApi>>,
    peer: Arc<Peer>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible>
where
    A: ArchiveBackend,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path();
    let response = match (req.method(), path) {
        (&Method::GET, LIMITS_PATH) => json(
            StatusCode::OK,
            serde_json::json!({
                "max_body_bytes": limits.max_body_bytes,
                "max_decompressed_bytes": limits.max_decompressed_bytes,
            }),
        ),
        (&Method::POST, BATCHES_PATH) => post_batch(ingest, limits, &peer, req).await,
        (&Method::POST, GAPS_PATH) => post_gap(ingest, limits, &peer, req).await,
        (&Method::GET, RECORDS_PATH) => match reads {
            Some(reads) => reads.handle(req, &peer).await,
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "this store has no read API ([receiver.access] is not configured)",
            ),
        },
        (_, LIMITS_PATH | BATCHES_PATH | GAPS_PATH | RECORDS_PATH) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET /v1/limits, POST /v1/batches, POST /v1/gaps or GET /v1/records",
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    Ok(response)
}

/// Reads a request body within the limits; a refusal is already noted and answered.
async fn read_body<A, B>(
    ingest: &Ingest<A>,
    limits: Limits,
    peer: &Peer,
    req: Request<B>,
) -> Result<Bytes, Response<Full<Bytes>>>
where
    A: ArchiveBackend,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = Rejection::BodyTooLarge {
        limit: limits.max_body_bytes,
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let none = Ids::default();
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        ingest.note_rejection(&too_large, &none, peer, None).await;
        return Err(closing(rejection(&too_large)));
    }
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(limits.request_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            let r = if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large
            } else {
                Rejection::BodyRead
            };
            ingest.note_rejection(&r, &none, peer, None).await;
            Err(closing(rejection(&r)))
        }
        Err(_) => {
            ingest
                .note_rejection(&Rejection::Timeout, &none, peer, None)
                .await;
            Err(closing(rejection(&Rejection::Timeout)))
        }
    }
}

async fn post_batch<A, B>(
    ingest: Arc<Ingest<A>>,
    limits: Limits,
    peer: &Arc<Peer>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    A: ArchiveBackend,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match read_body(&ingest, limits, peer, req).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    // Own task: a client that hangs up mid-write must not cut a started write short.
    let peer = peer.clone();
    let task = tokio::spawn(async move { ingest.ingest(bytes, &peer).await });
    match task.await {
        Ok(Ok(Accepted::Stored { seq })) => json(
            StatusCode::OK,
            serde_json::json!({"status": "stored", "seq": seq}),
        ),
        Ok(Ok(Accepted::Duplicate { seq })) => json(
            StatusCode::OK,
            serde_json::json!({"status": "duplicate", "seq": seq}),
        ),
        Ok(Err(Refusal::Rejected(r))) => rejection(&r),
        Ok(Err(Refusal::Internal(_))) | Err(_) => unavailable(),
    }
}

/// Seconds a client is asked to wait after the store itself failed.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// 503 with `Retry-After`: the store could not take the request now; nothing was written.
fn unavailable() -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the store could not take the request; retry later",
    );
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
    );
    r
}

async fn post_gap<A, B>(
    ingest: Arc<Ingest<A>>,
    limits: Limits,
    peer: &Arc<Peer>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    A: ArchiveBackend,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match read_body(&ingest, limits, peer, req).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let peer = peer.clone();
    let task = tokio::spawn(async move { ingest.declare_gap(bytes, &peer).await });
    match task.await {
        Ok(Ok(new)) => json(
            StatusCode::OK,
            serde_json::json!({"status": if new { "gap_recorded" } else { "duplicate" }}),
        ),
        Ok(Err(Refusal::Rejected(r))) => rejection(&r),
        Ok(Err(Refusal::Internal(e))) => {
            tracing::error!(error = %e, "a gap could not be recorded");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the store could not record the gap; retry later",
            )
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the store could not record the gap; retry later",
        ),
    }
}

fn rejection(r: &Rejection) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({"error": r.code(), "message": r.to_string()});
    if let Some(expected) = r.expected_seq() {
        body["expected_seq"] = expected.into();
    }
    json(r.status(), body)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": code, "message": message}),
    )
}

fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::store::FsArchive;
    use crate::receive::test_support::Chain;
    use crate::telemetry::ReceiverMetrics;

    const LIMITS: Limits = Limits {
        max_body_bytes: 4096,
        max_decompressed_bytes: 1 << 20,
        request_timeout: Duration::from_secs(5),
    };

    async fn fixture() -> (tempfile::TempDir, tempfile::TempDir, Arc<Ingest<FsArchive>>) {
        let archive = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let store = FsArchive::open(archive.path()).unwrap();
        let ingest = Ingest::new(
            store,
            keys.path().into(),
            1 << 20,
            ReceiverMetrics::default(),
            None,
        )
        .await
        .unwrap();
        (archive, keys, Arc::new(ingest))
    }

    async fn call(
        ingest: &Arc<Ingest<FsArchive>>,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, serde_json::Value, Option<HeaderValue>) {
        let resp = handle(ingest.clone(), LIMITS, None, Arc::default(), req)
            .await
            .unwrap();
        let status = resp.status();
        let conn = resp.headers().get(CONNECTION).cloned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap(), conn)
    }

    fn post(body: Vec<u8>) -> Request<Full<Bytes>> {
        Request::post(BATCHES_PATH)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    #[tokio::test]
    async fn limits_are_advertised() {
        let (_a, _k, ingest) = fixture().await;
        let req = Request::get(LIMITS_PATH).body(Full::default()).unwrap();
        let (status, body, _) = call(&ingest, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({"max_body_bytes": 4096, "max_decompressed_bytes": 1 << 20})
        );
    }

    #[tokio::test]
    async fn batches_are_stored_then_acknowledged_as_duplicates() {
        let (_a, keys, ingest) = fixture().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(keys.path());
        let b1 = c.next_data(&["a"]);
        let (status, body, _) = call(&ingest, post(b1.clone())).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                serde_json::json!({"status": "stored", "seq": 1})
            )
        );
        let (status, body, _) = call(&ingest, post(b1)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                serde_json::json!({"status": "duplicate", "seq": 1})
            )
        );
    }

    #[tokio::test]
    async fn refusals_carry_code_message_and_expected_seq() {
        let (_a, keys, ingest) = fixture().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(keys.path());
        c.seq = 4;
        let (status, body, _) = call(&ingest, post(c.next_data(&["a"]))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"], "seq_gap");
        assert_eq!(body["expected_seq"], 1);
        assert!(body["message"].as_str().unwrap().contains("seq 5"));

        let (status, body, _) = call(&ingest, post(b"junk".to_vec())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("malformed"))
        );
        assert!(body.get("expected_seq").is_none());
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_by_header_and_by_length() {
        let (_a, _k, ingest) = fixture().await;
        let req = Request::post(BATCHES_PATH)
            .header(CONTENT_LENGTH, "999999999")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let (status, body, conn) = call(&ingest, req).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );
        assert_eq!(conn.unwrap(), "close");
        // No Content-Length: caught while streaming.
        let req = Request::post(BATCHES_PATH)
            .body(Full::new(Bytes::from(vec![0u8; 5000])))
            .unwrap();
        let (status, body, _) = call(&ingest, req).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let (_a, _k, ingest) = fixture().await;
        let (status, body, _) = call(
            &ingest,
            Request::get("/nope").body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, _, _) = call(
            &ingest,
            Request::get(BATCHES_PATH).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
