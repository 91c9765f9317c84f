//! The read API: `GET /v1/records` for authenticated operators, every read on record.
//!
//! Request: the query string of a `crate::access::Query` (`host`, `stream`, `since`,
//! `until`, `field=name=value` repeated), and
//! - who: `Authorization: Bearer <token>` (checked against `[receiver.access] tokens_file`)
//!   or, with mutual TLS, a client certificate valid for a name in `[receiver.access.certs]`;
//! - why: `X-Logveil-Reason: <reason / ticket id>` (1 to [`MAX_REASON`] printable characters).
//!
//! Answers:
//! - 200, `application/x-ndjson`: the matching records, one JSON object per line, headers
//!   `X-Logveil-Records` (count) and `X-Logveil-Ledger-Entry` (the `read` entry recording it);
//! - 401 `unauthenticated` (no or unknown token / certificate), 400 `no_reason` or
//!   `bad_query`, 403 `forbidden` (the role may not read the named stream), 413
//!   `too_large` (narrow the query), 500 `internal`.
//!
//! Order: the `read` entry (allowed or not) is appended to the custody ledger and fsynced
//! before the answer; if the ledger cannot be written, nothing is read out (500). Denials of
//! an authenticated operator are `read` entries with `"allowed": false`; a request with no
//! valid identity is a `read` entry by `who = "-"` without the (unauthenticated) reason.

use crate::access::{self, AccessError, Operator, Query, Role};
use crate::custody::{Event, Ledger};
use crate::receive::ingest::Peer;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub const RECORDS_PATH: &str = "/v1/records";
pub const REASON_HEADER: &str = "x-logveil-reason";
pub const MAX_REASON: usize = 256;
const MAX_WHAT: usize = 512;

/// What the read API needs.
#[derive(Debug)]
pub struct ReadApi {
    pub archive_dir: PathBuf,
    pub tokens_file: Option<PathBuf>,
    /// Certificate name → role.
    pub certs: BTreeMap<String, Role>,
    pub ledger: Arc<Ledger>,
    pub max_read_bytes: usize,
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl ReadApi {
    fn identify<B>(
        &self,
        req: &Request<B>,
        peer: &Peer,
    ) -> Result<Option<(Operator, &'static str)>, AccessError> {
        if let Some(auth) = req.headers().get(AUTHORIZATION) {
            let token = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            return match (token, &self.tokens_file) {
                (Some(t), Some(file)) => {
                    Ok(access::authenticate(file, t)?.map(|o| (o, "api-token")))
                }
                _ => Ok(None),
            };
        }
        if let Some(der) = &peer.cert {
            let Ok(cert) = rustls::server::ParsedCertificate::try_from(der) else {
                return Ok(None);
            };
            for (name, role) in &self.certs {
                let Ok(sn) = rustls::pki_types::ServerName::try_from(name.clone()) else {
                    continue;
                };
                if rustls::client::verify_server_name(&cert, &sn).is_ok() {
                    let op = Operator {
                        name: name.clone(),
                        role: *role,
                    };
                    return Ok(Some((op, "api-cert")));
                }
            }
        }
        Ok(None)
    }

    /// Answers one `GET /v1/records`.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>, peer: &Peer) -> Response<Full<Bytes>> {
        let who = match self.identify(&req, peer) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "the read API cannot check identities");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "identities cannot be checked",
                );
            }
        };
        let Some((op, via)) = who else {
            let peer_addr = peer.addr.map(|a| a.ip().to_string()).unwrap_or_default();
            let event = Event::Read {
                who: "-".into(),
                role: "-".into(),
                via: format!("api peer {peer_addr}"),
                reason: "-".into(),
                what: "-".into(),
                allowed: false,
                records: 0,
            };
            if let Err(e) = self.ledger.record(event).await {
                tracing::error!(error = %e, "an unauthenticated read could not be recorded");
            }
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an operator token (Authorization: Bearer) or client certificate is required",
            );
        };
        let reason = req
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if reason.is_empty() || reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
            return error(
                StatusCode::BAD_REQUEST,
                "no_reason",
                "state the reason or ticket id in X-Logveil-Reason (1 to 256 printable characters)",
            );
        }
        let reason = reason.to_string();
        let pairs: Vec<(String, String)> = match req.uri().query() {
            None => Vec::new(),
            Some(q) => match reqwest::Url::parse(&format!("http://x/?{q}")) {
                Ok(u) => u
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        "the query string does not parse",
                    )
                }
            },
        };
        let query = match Query::from_pairs(pairs) {
            Ok(q) => q,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", &e.to_string()),
        };
        let what = truncate(&query.describe(), MAX_WHAT);
        let read_event = |allowed: bool, records: u64| Event::Read {
            who: op.name.clone(),
            role: op.role.as_str().into(),
            via: via.into(),
            reason: reason.clone(),
            what: what.clone(),
            allowed,
            records,
        };
        if let Err(e) = access::authorize(op.role, &query) {
            if let Err(le) = self.ledger.record(read_event(false, 0)).await {
                tracing::error!(error = %le, "a denied read could not be recorded");
            }
            tracing::warn!(who = %op.name, role = op.role.as_str(), what = %what, "read denied");
            return error(StatusCode::FORBIDDEN, "forbidden", &e.to_string());
        }
        let this = self.clone();
        let q = query.clone();
        let role = op.role;
        let found = tokio::task::spawn_blocking(move || {
            access::search(&this.archive_dir, role, &q, this.max_read_bytes)
        })
        .await;
        let (body, records) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(AccessError::TooLarge { limit })) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    &format!("the result exceeds {limit} bytes; narrow the query"),
                )
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a read failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the archive could not be read",
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "a read failed");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the archive could not be read",
                );
            }
        };
        let n = match self.ledger.record(read_event(true, records)).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "a read could not be recorded; nothing was read out");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the read could not be recorded",
                );
            }
        };
        tracing::info!(who = %op.name, role = op.role.as_str(), what = %what, records, ledger_entry = n, "archive read");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let h = response.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        h.insert("x-logveil-records", HeaderValue::from(records));
        h.insert("x-logveil-ledger-entry", HeaderValue::from(n));
        response
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": code, "message": message});
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

    fn api(dir: &std::path::Path) -> ReadApi {
        let (ledger, _) = Ledger::open(dir, crate::envelope::keys::generate()).unwrap();
        ReadApi {
            archive_dir: dir.to_path_buf(),
            tokens_file: None,
            certs: [("alice.ops".to_string(), Role::Compliance)]
                .into_iter()
                .collect(),
            ledger: Arc::new(ledger),
            max_read_bytes: 1 << 20,
        }
    }

    fn peer_with_cert(name: &str) -> Peer {
        let cert = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        Peer {
            addr: None,
            cert: Some(cert.cert.der().clone()),
        }
    }

    #[test]
    fn a_client_certificate_names_the_operator_and_role() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let req = Request::get(RECORDS_PATH).body(()).unwrap();
        let (op, via) = api
            .identify(&req, &peer_with_cert("alice.ops"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (op.name.as_str(), op.role, via),
            ("alice.ops", Role::Compliance, "api-cert")
        );
        assert!(api
            .identify(&req, &peer_with_cert("mallory.ops"))
            .unwrap()
            .is_none());
        // A bearer header without a tokens file identifies nobody, whatever the certificate.
        let req = Request::get(RECORDS_PATH)
            .header(AUTHORIZATION, "Bearer lvt_x")
            .body(())
            .unwrap();
        assert!(api
            .identify(&req, &peer_with_cert("alice.ops"))
            .unwrap()
            .is_none());
    }
}
