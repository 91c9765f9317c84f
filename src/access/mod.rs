//! Who may read the archive, and what a read returns.
//!
//! This module owns the access rules and the read itself; it neither serves HTTP
//! (`crate::receive::read` does) nor writes the custody ledger (its callers record every
//! read, allowed or denied, as a `read` entry before any record leaves).
//!
//! # Roles
//!
//! | role | may read |
//! |---|---|
//! | `reader` | every stream except `audit` and `legal` |
//! | `auditor` | every stream except `legal` |
//! | `compliance` | every stream |
//!
//! A query naming a stream its role may not read is refused whole ([`AccessError::Forbidden`],
//! HTTP 403); a query naming no stream covers only the streams the role may read.
//!
//! # Tokens file
//!
//! `[receiver.access] tokens_file`, one operator per line, `#` starts a comment:
//!
//! ```text
//! <name> <role> sha256:<64 hex digits of SHA-256(token)>
//! ```
//! The store keeps only hashes; the token itself (`lvt_` + 64 hex digits, from
//! `logveil archive token`) is shown once to the operator. The file is read at each request,
//! so removing a line revokes that operator at once. Names are safe identifiers.
//!
//! # Queries
//!
//! A [`Query`] filters by host, stream, record time (`since` inclusive, `until` exclusive,
//! RFC 3339, against the record's `timestamp` field) and fields (`field=value`, exact string
//! match on a top-level record field, dotted names for nested objects; all must match). Its
//! URL form is the query string of `GET /v1/records`.

pub mod client;

use crate::archive::{self, ArchiveError};
use crate::envelope::{is_safe_identifier, Envelope, Kind};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The legal-exception stream, readable only by [`Role::Compliance`].
pub const LEGAL_STREAM: &str = "legal";
/// The security audit stream, not for [`Role::Reader`].
pub const AUDIT_STREAM: &str = "audit";
/// Prefix of operator tokens.
pub const TOKEN_PREFIX: &str = "lvt_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Auditor,
    Compliance,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Auditor => "auditor",
            Role::Compliance => "compliance",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "auditor" => Some(Role::Auditor),
            "compliance" => Some(Role::Compliance),
            _ => None,
        }
    }

    /// Whether this role may read `stream` (see the module doc).
    pub fn may_read(self, stream: &str) -> bool {
        match stream {
            LEGAL_STREAM => self == Role::Compliance,
            AUDIT_STREAM => self != Role::Reader,
            _ => true,
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the tokens file {path}: {source}")]
    TokensRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokens file {path}: line {line}: {message}")]
    TokensFormat {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("role {role} may not read stream {stream}")]
    Forbidden { role: &'static str, stream: String },
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the result exceeds {limit} bytes; narrow the query")]
    TooLarge { limit: usize },
}

/// A new random operator token.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// The line of the tokens file for `token`.
pub fn token_line(name: &str, role: Role, token: &str) -> String {
    format!(
        "{name} {} sha256:{}\n",
        role.as_str(),
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// Parses a tokens file into `(name, role, token hash)`.
pub fn parse_tokens(path: &Path, text: &str) -> Result<Vec<(String, Role, [u8; 32])>, AccessError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: &str| AccessError::TokensFormat {
            path: path.to_path_buf(),
            line: i + 1,
            message: message.into(),
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = parts[..] else {
            return Err(bad("expected `<name> <role> sha256:<hex>`"));
        };
        if !is_safe_identifier(name) {
            return Err(bad("the name must be letters, digits, '.', '_' or '-'"));
        }
        let role =
            Role::parse(role).ok_or_else(|| bad("role must be reader, auditor or compliance"))?;
        let hash: [u8; 32] = hash
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("the hash must be sha256: and 64 hex digits"))?;
        out.push((name.to_string(), role, hash));
    }
    Ok(out)
}

/// The operator `token` belongs to, reading the tokens file now.
pub fn authenticate(tokens_file: &Path, token: &str) -> Result<Option<Operator>, AccessError> {
    let text = std::fs::read_to_string(tokens_file).map_err(|source| AccessError::TokensRead {
        path: tokens_file.to_path_buf(),
        source,
    })?;
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Compare every line without stopping early: the time taken does not say which matched.
    let mut found = None;
    for (name, role, hash) in parse_tokens(tokens_file, &text)? {
        let diff = hash
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 && found.is_none() {
            found = Some(Operator { name, role });
        }
    }
    Ok(found)
}

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub host: Option<String>,
    pub stream: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// `(field, value)`, all must match.
    pub fields: Vec<(String, String)>,
}

fn parse_time(s: &str) -> Result<SystemTime, AccessError> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| AccessError::BadQuery(format!("`{s}` is not an RFC 3339 time: {e}")))
}

impl Query {
    /// Checks the filters; names must be safe identifiers, times RFC 3339.
    pub fn check(&self) -> Result<(), AccessError> {
        for (what, v) in [("host", &self.host), ("stream", &self.stream)] {
            if let Some(v) = v {
                if !is_safe_identifier(v) {
                    return Err(AccessError::BadQuery(format!(
                        "{what} `{v}` is not an identifier"
                    )));
                }
            }
        }
        for t in [&self.since, &self.until].into_iter().flatten() {
            parse_time(t)?;
        }
        if self.fields.iter().any(|(k, _)| k.is_empty()) {
            return Err(AccessError::BadQuery(
                "a field filter needs a field name".into(),
            ));
        }
        Ok(())
    }

    /// The query as URL query pairs (`field` repeated, as `name=value`).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in [
            ("host", &self.host),
            ("stream", &self.stream),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v {
                out.push((k.to_string(), v.clone()));
            }
        }
        for (k, v) in &self.fields {
            out.push(("field".into(), format!("{k}={v}")));
        }
        out
    }

    /// The query from URL query pairs; unknown keys are refused.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (String, String)> + 'a,
    ) -> Result<Query, AccessError> {
        let mut q = Query::default();
        for (k, v) in pairs {
            match k.as_str() {
                "host" => q.host = Some(v),
                "stream" => q.stream = Some(v),
                "since" => q.since = Some(v),
                "until" => q.until = Some(v),
                "field" => q.fields.push(parse_field(&v)?),
                other => {
                    return Err(AccessError::BadQuery(format!(
                        "unknown parameter `{other}`"
                    )))
                }
            }
        }
        q.check()?;
        Ok(q)
    }

    /// A short description for the ledger's `what`.
    pub fn describe(&self) -> String {
        let pairs = self.to_pairs();
        if pairs.is_empty() {
            return "all records".into();
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn record_matches(
        &self,
        rec: &serde_json::Value,
        since: Option<SystemTime>,
        until: Option<SystemTime>,
    ) -> bool {
        if since.is_some() || until.is_some() {
            let Some(ts) = rec
                .get("timestamp")
                .and_then(|t| t.as_str())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            else {
                return false;
            };
            if since.is_some_and(|s| ts < s) || until.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        self.fields.iter().all(|(k, want)| {
            let mut v = rec;
            for part in k.split('.') {
                match v.get(part) {
                    Some(next) => v = next,
                    None => return false,
                }
            }
            match v {
                serde_json::Value::String(s) => s == want,
                other => {
                    *other == serde_json::from_str::<serde_json::Value>(want).unwrap_or_default()
                }
            }
        })
    }
}

/// `name=value` of a field filter.
pub fn parse_field(s: &str) -> Result<(String, String), AccessError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| AccessError::BadQuery(format!("field filter `{s}` is not name=value")))?;
    if k.is_empty() {
        return Err(AccessError::BadQuery(
            "a field filter needs a field name".into(),
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Refuses a query naming a stream `role` may not read.
pub fn authorize(role: Role, q: &Query) -> Result<(), AccessError> {
    match &q.stream {
        Some(s) if !role.may_read(s) => Err(AccessError::Forbidden {
            role: role.as_str(),
            stream: s.clone(),
        }),
        _ => Ok(()),
    }
}

/// Reads the records of the archive under `root` that match `q` and that `role` may read,
/// as JSON lines, in archive order, up to `limit` bytes. Returns the lines and their count.
/// Checks no signature: that is `logveil verify`.
pub fn search(
    root: &Path,
    role: Role,
    q: &Query,
    limit: usize,
) -> Result<(Vec<u8>, u64), AccessError> {
    q.check()?;
    authorize(role, q)?;
    let since = q.since.as_deref().map(parse_time).transpose()?;
    let until = q.until.as_deref().map(parse_time).transpose()?;
    let filtered = since.is_some() || until.is_some() || !q.fields.is_empty();
    let listing = archive::list(root)?;
    let mut out = Vec::new();
    let mut count = 0u64;
    for batch in listing.batches() {
        let batch = batch?;
        let c = batch.chain;
        if q.host.as_ref().is_some_and(|h| *h != c.host)
            || q.stream.as_ref().is_some_and(|s| *s != c.stream)
            || !role.may_read(&c.stream)
        {
            continue;
        }
        let path = batch.path.to_path_buf();
        let env = Envelope::decode(&batch.bytes).map_err(|source| ArchiveError::Decode {
            path: path.clone(),
            source,
        })?;
        if env.header.kind == Kind::Tombstone {
            continue;
        }
        let payload = env
            .decompress(env.header.decompressed_len)
            .map_err(|source| ArchiveError::Payload { path, source })?;
        for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if filtered {
                let Ok(rec) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                if !q.record_matches(&rec, since, until) {
                    continue;
                }
            }
            if out.len() + line.len() + 1 > limit {
                return Err(AccessError::TooLarge { limit });
            }
            out.extend_from_slice(line);
            out.push(b'\n');
            count += 1;
        }
    }
    Ok((out, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::test_support::{write_archive_file, Chain};

    #[test]
    fn legal_is_for_compliance_and_audit_not_for_readers() {
        assert!(!Role::Reader.may_read("legal"));
        assert!(!Role::Auditor.may_read("legal"));
        assert!(Role::Compliance.may_read("legal"));
        assert!(!Role::Reader.may_read("audit"));
        assert!(Role::Auditor.may_read("audit"));
        assert!(Role::Reader.may_read("default"));
    }

    #[test]
    fn tokens_authenticate_by_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let (a, b) = (new_token(), new_token());
        let text = format!(
            "# operators\n{}{}",
            token_line("alice", Role::Auditor, &a),
            token_line("bob", Role::Reader, &b)
        );
        assert!(!text.contains(&a), "the file holds no token");
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            authenticate(&path, &a).unwrap(),
            Some(Operator {
                name: "alice".into(),
                role: Role::Auditor
            })
        );
        assert_eq!(authenticate(&path, &b).unwrap().unwrap().role, Role::Reader);
        assert_eq!(authenticate(&path, "lvt_wrong").unwrap(), None);
        std::fs::write(&path, "alice boss sha256:00\n").unwrap();
        assert!(matches!(
            authenticate(&path, &a),
            Err(AccessError::TokensFormat { line: 1, .. })
        ));
    }

    #[test]
    fn queries_round_trip_and_refuse_bad_filters() {
        let q = Query {
            host: Some("web-1".into()),
            stream: Some("default".into()),
            since: Some("2025-01-01T00:00:00Z".into()),
            until: None,
            fields: vec![("event.kind".into(), "auth=ok".into())],
        };
        assert_eq!(Query::from_pairs(q.to_pairs()).unwrap(), q);
        assert!(Query::from_pairs([("host".into(), "../../etc".into())]).is_err());
        assert!(Query::from_pairs([("since".into(), "yesterday".into())]).is_err());
        assert!(Query::from_pairs([("bogus".into(), "1".into())]).is_err());
    }

    #[test]
    fn search_filters_by_stream_role_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Chain::new("web-1", "default", [1; 16]);
        let mut l = Chain::new("web-1", "legal", [2; 16]);
        write_archive_file(dir.path(), &d.next_data(&["a", "b"]));
        write_archive_file(dir.path(), &l.next_data(&["secret"]));
        let all = Query::default();
        let (out, n) = search(dir.path(), Role::Reader, &all, 1 << 20).unwrap();
        assert_eq!(n, 2, "{}", String::from_utf8_lossy(&out));
        assert_eq!(
            search(dir.path(), Role::Compliance, &all, 1 << 20)
                .unwrap()
                .1,
            3
        );
        let legal = Query {
            stream: Some("legal".into()),
            ..Query::default()
        };
        assert!(matches!(
            search(dir.path(), Role::Auditor, &legal, 1 << 20),
            Err(AccessError::Forbidden { .. })
        ));
        let by_field = Query {
            fields: vec![("msg".into(), "b".into())],
            ..Query::default()
        };
        let (out, n) = search(dir.path(), Role::Reader, &by_field, 1 << 20).unwrap();
        assert_eq!(n, 1);
        assert!(String::from_utf8(out).unwrap().contains("\"b\""));
        assert!(matches!(
            search(dir.path(), Role::Reader, &all, 4),
            Err(AccessError::TooLarge { .. })
        ));
    }
}
