//! The checks a batch must pass before chain rules apply, and the reasons for refusing one.
//!
//! Order, first failure wins: decode (400 `malformed`) → host enrolled (403 `unknown_host`) →
//! key id is one of the host's keys, signature, payload hash (401 `key_mismatch`, 401
//! `bad_signature`, 400 `payload_hash`) → the key is not revoked (401 `key_revoked`) → payload (413 `decompressed_too_large`, 400 `bad_payload`, 422
//! `bad_records`, 400 `bad_tombstone`). These checks need no state beyond the trusted keys
//! directory, so they run outside the per-chain lock. `crate::verify` reuses
//! [`check_payload`] so the offline verifier holds archived batches to the same rules.
//!
//! Payload rules for data batches: the zstd payload decompresses to exactly
//! `decompressed_len` bytes of newline-terminated lines, `record_count` of them, each a JSON
//! object whose `"host"` and `"stream"` equal the header's. Tombstones carry no payload and
//! no records. Messages name line numbers, never record contents.

use crate::envelope::{keys, DecodeError, Envelope, Hash, Header, Kind, PayloadError, VerifyError};
use bytes::Bytes;
use hyper::StatusCode;
use std::path::{Path, PathBuf};

/// Why a batch is refused for good: a 4xx answer, and nothing written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body was not received within the request timeout")]
    Timeout,
    #[error("the request body could not be read")]
    BodyRead,
    #[error("envelope does not decode: {0}")]
    Malformed(DecodeError),
    #[error("host {host} is not enrolled (no trusted key)")]
    UnknownHost { host: String },
    #[error("{0}")]
    KeyMismatch(VerifyError),
    #[error("signature does not verify against the host's enrolled key")]
    BadSignature,
    #[error("key {key_id} of host {host} is revoked")]
    KeyRevoked { host: String, key_id: String },
    #[error("the client certificate is not valid for host {host}")]
    HostMismatch { host: String },
    #[error("the gap statement is invalid: {0}")]
    BadGap(String),
    #[error("payload SHA-256 does not match the header")]
    PayloadHash,
    #[error("payload decompresses past the limit of {limit} bytes")]
    DecompressedTooLarge { limit: u64 },
    #[error("bad payload: {0}")]
    BadPayload(String),
    #[error("bad records: {0}")]
    BadRecords(String),
    #[error("bad tombstone: {0}")]
    BadTombstone(String),
    #[error("prev_hash does not match the link of stored seq {last}")]
    BrokenChain { last: u64, expected_seq: u64 },
    #[error("a different batch is already stored at seq {seq}")]
    SeqConflict { seq: u64, expected_seq: u64 },
    #[error("seq {seq} is no longer held by the archive and cannot be compared")]
    SeqUnavailable { seq: u64, expected_seq: u64 },
    #[error("seq {seq} does not continue the chain")]
    SeqGap { seq: u64, expected_seq: u64 },
}

impl Rejection {
    /// The stable machine-readable reason (`error` in the JSON body, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BodyTooLarge { .. } => "body_too_large",
            Rejection::Timeout => "request_timeout",
            Rejection::BodyRead => "body_read",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownHost { .. } => "unknown_host",
            Rejection::KeyMismatch(_) => "key_mismatch",
            Rejection::BadSignature => "bad_signature",
            Rejection::KeyRevoked { .. } => "key_revoked",
            Rejection::HostMismatch { .. } => "host_mismatch",
            Rejection::BadGap(_) => "bad_gap",
            Rejection::PayloadHash => "payload_hash",
            Rejection::DecompressedTooLarge { .. } => "decompressed_too_large",
            Rejection::BadPayload(_) => "bad_payload",
            Rejection::BadRecords(_) => "bad_records",
            Rejection::BadTombstone(_) => "bad_tombstone",
            Rejection::BrokenChain { .. } => "broken_chain",
            Rejection::SeqConflict { .. } | Rejection::SeqUnavailable { .. } => "seq_conflict",
            Rejection::SeqGap { .. } => "seq_gap",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BodyTooLarge { .. } | Rejection::DecompressedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Rejection::Timeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyRead
            | Rejection::Malformed(_)
            | Rejection::PayloadHash
            | Rejection::BadPayload(_)
            | Rejection::BadTombstone(_)
            | Rejection::BadGap(_) => StatusCode::BAD_REQUEST,
            Rejection::UnknownHost { .. } | Rejection::HostMismatch { .. } => StatusCode::FORBIDDEN,
            Rejection::KeyMismatch(_) | Rejection::BadSignature | Rejection::KeyRevoked { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::BadRecords(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::BrokenChain { .. }
            | Rejection::SeqConflict { .. }
            | Rejection::SeqUnavailable { .. }
            | Rejection::SeqGap { .. } => StatusCode::CONFLICT,
        }
    }

    /// For chain refusals: the seq the store would accept next.
    pub fn expected_seq(&self) -> Option<u64> {
        match self {
            Rejection::BrokenChain { expected_seq, .. }
            | Rejection::SeqConflict { expected_seq, .. }
            | Rejection::SeqUnavailable { expected_seq, .. }
            | Rejection::SeqGap { expected_seq, .. } => Some(*expected_seq),
            _ => None,
        }
    }
}

/// A failure of the store itself, not of the batch: a 5xx answer, the agent retries.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error("cannot read the trusted key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("archive: {0}")]
    Store(#[from] super::store::StoreError),
    #[error("{0}")]
    Ledger(#[from] crate::custody::LedgerError),
    #[error("validation task failed: {0}")]
    Task(String),
}

/// Either outcome of a refused request.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Internal(#[from] InternalError),
}

/// A batch that passed every stateless check.
#[derive(Debug, Clone)]
pub struct Validated {
    pub header: Header,
    /// The hash the next batch of the chain must carry as `prev_hash`.
    pub link: Hash,
    pub records: u64,
    pub bytes: Bytes,
}

/// Runs every check that does not depend on chain state. Blocking (file read, signature,
/// decompression): call it off the async executor.
pub fn validate(
    bytes: Bytes,
    keys_dir: &Path,
    max_decompressed: u64,
) -> Result<Validated, Refusal> {
    let env = Envelope::decode(&bytes).map_err(Rejection::Malformed)?;
    let key = host_key(keys_dir, &env.header.host_id, &env.header.key_id)?;
    env.verify(&key.key).map_err(|e| match e {
        VerifyError::KeyId { .. } => Rejection::KeyMismatch(e),
        VerifyError::Signature => Rejection::BadSignature,
        VerifyError::PayloadHash => Rejection::PayloadHash,
    })?;
    if key.revoked {
        return Err(Rejection::KeyRevoked {
            host: env.header.host_id.clone(),
            key_id: key.key_id,
        }
        .into());
    }
    let records = check_payload(&env, max_decompressed)?;
    Ok(Validated {
        header: env.header.clone(),
        link: env.next_link(),
        records,
        bytes: bytes.clone(),
    })
}

/// The host's enrolled key with `key_id` (revoked or not). No key at all: `unknown_host`;
/// keys, but none with that id: `key_mismatch`.
pub fn host_key(keys_dir: &Path, host: &str, key_id: &str) -> Result<keys::TrustedKey, Refusal> {
    let all = keys::trusted_keys(keys_dir, host).map_err(|e| InternalError::Key {
        path: keys_dir.join(host),
        message: e.to_string(),
    })?;
    if all.is_empty() {
        return Err(Rejection::UnknownHost { host: host.into() }.into());
    }
    match all.iter().find(|k| k.key_id == key_id) {
        Some(k) => Ok(k.clone()),
        None => Err(Rejection::KeyMismatch(VerifyError::KeyId {
            expected: all
                .iter()
                .filter(|k| !k.revoked)
                .map(|k| k.key_id.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            actual: key_id.into(),
        })
        .into()),
    }
}

/// Checks the payload against the header (see the module doc); returns the record count.
pub fn check_payload(env: &Envelope<'_>, max_decompressed: u64) -> Result<u64, Rejection> {
    let h = &env.header;
    if h.kind == Kind::Tombstone {
        if !env.payload.is_empty() || h.record_count != 0 || h.decompressed_len != 0 {
            return Err(Rejection::BadTombstone(
                "a tombstone carries no payload and no records".into(),
            ));
        }
        return Ok(0);
    }
    let raw = env.decompress(max_decompressed).map_err(|e| match e {
        PayloadError::TooLarge(limit) => Rejection::DecompressedTooLarge { limit },
        PayloadError::Zstd(e) => Rejection::BadPayload(format!("not valid zstd: {e}")),
    })?;
    if raw.len() as u64 != h.decompressed_len {
        return Err(Rejection::BadPayload(format!(
            "payload decompresses to {} bytes, the header says {}",
            raw.len(),
            h.decompressed_len
        )));
    }
    check_records(&raw, h)?;
    Ok(h.record_count)
}

/// The record fields the store checks against the header; others are skipped unparsed.
#[derive(serde::Deserialize)]
struct RecordIds<'a> {
    #[serde(borrow, default)]
    host: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    stream: Option<std::borrow::Cow<'a, str>>,
}

fn check_records(raw: &[u8], h: &Header) -> Result<(), Rejection> {
    if !raw.is_empty() && raw.last() != Some(&b'\n') {
        return Err(Rejection::BadRecords(
            "the last record is not newline-terminated".into(),
        ));
    }
    let mut count = 0u64;
    // Every line ends with a newline (checked above): drop the last one, split on the rest.
    let body = raw.split_last().map_or(&[][..], |(_newline, body)| body);
    let lines = body.split(|&b| b == b'\n').take_while(|_| !raw.is_empty());
    for (i, line) in lines.enumerate() {
        let n = i + 1;
        // Parses the whole object (so it must be valid JSON) but keeps only the two fields.
        let ids: RecordIds = serde_json::from_slice(line)
            .map_err(|_| Rejection::BadRecords(format!("line {n} is not a JSON object")))?;
        for (field, value, expected) in [
            ("host", ids.host.as_deref(), &h.host_id),
            ("stream", ids.stream.as_deref(), &h.stream),
        ] {
            if value != Some(expected.as_str()) {
                return Err(Rejection::BadRecords(format!(
                    "line {n}: \"{field}\" is not the header's {field} {expected}"
                )));
            }
        }
        count += 1;
    }
    if count != h.record_count {
        return Err(Rejection::BadRecords(format!(
            "payload holds {count} records, the header says {}",
            h.record_count
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::test_support::Chain;

    fn run(chain: &Chain, keys: &Path, bytes: Vec<u8>) -> Result<Validated, Rejection> {
        validate(Bytes::from(bytes), keys, 1 << 20).map_err(|e| match e {
            Refusal::Rejected(r) => r,
            Refusal::Internal(e) => panic!("{} internal: {e}", chain.host),
        })
    }

    #[test]
    fn valid_batches_pass_and_report_their_link() {
        let keys = tempfile::tempdir().unwrap();
        let mut chain = Chain::new("web-1", "default", [1; 16]);
        chain.enroll(keys.path());
        let bytes = chain.next_data(&["a", "b"]);
        let v = run(&chain, keys.path(), bytes).unwrap();
        assert_eq!(v.records, 2);
        assert_eq!(v.link, chain.link);
        let tomb = chain.next_tombstone();
        assert_eq!(run(&chain, keys.path(), tomb).unwrap().link, chain.link);
    }

    #[test]
    fn each_check_has_its_own_reason() {
        let keys = tempfile::tempdir().unwrap();
        let chain = Chain::new("web-1", "default", [1; 16]);
        chain.enroll(keys.path());
        let code = |bytes: Vec<u8>| run(&chain, keys.path(), bytes).unwrap_err().code();

        assert_eq!(code(b"garbage".to_vec()), "malformed");
        assert_eq!(
            code(Chain::new("web-9", "default", [1; 16]).data_over(b"", 0)),
            "unknown_host"
        );

        let mut good = chain.data_over(&chain.records(&["a"]), 1);
        let last = good.len() - 1;
        good[last] ^= 1;
        assert_eq!(code(good), "payload_hash");

        let mut sig = chain.data_over(&chain.records(&["a"]), 1);
        let env = Envelope::decode(&sig).unwrap();
        let at = 8 + env.header_bytes.len();
        sig[at] ^= 1;
        assert_eq!(code(sig), "bad_signature");

        assert_eq!(
            code(chain.data_over(&chain.records(&["a"]), 2)),
            "bad_records"
        );
        assert_eq!(code(chain.data_over(b"not json\n", 1)), "bad_records");
        assert_eq!(
            code(chain.data_over(b"{\"host\":\"web-1\"}\n", 1)),
            "bad_records"
        );
        assert_eq!(code(chain.data_over(b"[1]\n", 1)), "bad_records");
        let no_newline = chain.records(&["a"]);
        assert_eq!(
            code(chain.data_over(&no_newline[..no_newline.len() - 1], 1)),
            "bad_records"
        );
        let other_host = Chain::new("web-2", "default", [1; 16]).records(&["a"]);
        assert_eq!(code(chain.data_over(&other_host, 1)), "bad_records");

        let mut h = chain.header(Kind::Data);
        h.payload_sha256 = crate::envelope::sha256(b"not zstd");
        h.payload_len = 8;
        h.decompressed_len = 8;
        assert_eq!(code(chain.seal(&h, b"not zstd").0), "bad_payload");

        let raw = chain.records(&["a"]);
        let z = zstd::bulk::compress(&raw, 3).unwrap();
        let mut h = chain.header(Kind::Data);
        h.payload_sha256 = crate::envelope::sha256(&z);
        h.payload_len = z.len() as u64;
        h.decompressed_len = raw.len() as u64 + 1;
        h.record_count = 1;
        assert_eq!(code(chain.seal(&h, &z).0), "bad_payload");

        let mut h = chain.header(Kind::Tombstone);
        h.record_count = 1;
        assert_eq!(code(chain.seal(&h, b"").0), "bad_tombstone");
    }

    #[test]
    fn another_hosts_key_is_a_key_mismatch() {
        let keys = tempfile::tempdir().unwrap();
        let a = Chain::new("web-a", "default", [1; 16]);
        let b = Chain::new("web-b", "default", [1; 16]);
        a.enroll(keys.path());
        b.enroll(keys.path());
        // Host A's key signs a batch claiming to be host B.
        let mut impostor = Chain::new("web-b", "default", [1; 16]);
        impostor.key = a.key.clone();
        let bytes = impostor.data_over(&impostor.records(&["x"]), 1);
        let err = run(&b, keys.path(), bytes).unwrap_err();
        assert_eq!(
            (err.code(), err.status()),
            ("key_mismatch", StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn a_rotated_key_is_accepted_and_a_revoked_one_refused() {
        let keys = tempfile::tempdir().unwrap();
        let old = Chain::new("web-1", "default", [1; 16]);
        let mut new = Chain::new("web-1", "default", [1; 16]);
        new.key = keys::generate();
        let host_dir = keys.path().join("web-1");
        std::fs::create_dir(&host_dir).unwrap();
        let line = |c: &Chain| keys::public_key_line(&c.key.verifying_key());
        std::fs::write(host_dir.join("old.pub"), line(&old)).unwrap();
        std::fs::write(host_dir.join("new.pub"), line(&new)).unwrap();
        let b_old = old.data_over(&old.records(&["a"]), 1);
        let b_new = new.data_over(&new.records(&["a"]), 1);
        run(&old, keys.path(), b_old.clone()).unwrap();
        run(&new, keys.path(), b_new.clone()).unwrap();
        std::fs::rename(host_dir.join("old.pub"), host_dir.join("old.pub.revoked")).unwrap();
        let err = run(&old, keys.path(), b_old).unwrap_err();
        assert_eq!(
            (err.code(), err.status()),
            ("key_revoked", StatusCode::UNAUTHORIZED)
        );
        run(&new, keys.path(), b_new).unwrap();
        // A key that was never enrolled for the host.
        let mut stranger = Chain::new("web-1", "default", [1; 16]);
        stranger.key = keys::generate();
        let err = run(&old, keys.path(), stranger.data_over(b"", 0)).unwrap_err();
        assert_eq!(err.code(), "key_mismatch");
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_limit() {
        let keys = tempfile::tempdir().unwrap();
        let chain = Chain::new("web-1", "default", [1; 16]);
        chain.enroll(keys.path());
        let raw = vec![b' '; 4 << 20];
        let bytes = chain.data_over(&raw, 0);
        let err = run(&chain, keys.path(), bytes).unwrap_err();
        assert_eq!(err, Rejection::DecompressedTooLarge { limit: 1 << 20 });
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn an_unreadable_key_file_is_the_stores_fault() {
        let keys = tempfile::tempdir().unwrap();
        let chain = Chain::new("web-1", "default", [1; 16]);
        std::fs::write(keys.path().join("web-1.pub"), "not a key").unwrap();
        let r = validate(Bytes::from(chain.data_over(b"", 0)), keys.path(), 1 << 20);
        assert!(matches!(
            r,
            Err(Refusal::Internal(InternalError::Key { .. }))
        ));
    }
}
