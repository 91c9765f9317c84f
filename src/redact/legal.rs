//! Legal exceptions: the only way PII leaves the host, and then only sealed.
//!
//! An exception (`[[redact.exceptions]]`) names a legal obligation that needs some fields of
//! some records (tax invoices, statutory accounting, regulator-requested evidence). For a
//! record that matches one, this module *lifts* exactly the listed fields out of the raw
//! record, before redaction, and seals them to the compliance public key; the pipeline
//! ships the sealed object on the `legal` stream and the record itself, fully redacted, on
//! `default` as always. This module owns matching, lifting, sealing and the compliance key
//! files; it does not build records or batches (`crate::pipeline` does).
//!
//! # Matching
//! A record matches an exception when its source is one of `sources` (any source when the
//! list is empty) and every `when` condition holds. A record is read as JSON when its
//! source's format is `json`, or (`auto`, `plain`, `cri`, `docker`) when it starts with
//! `{`; otherwise as logfmt pairs (`k=v`, `k="quoted \"v\""`). A field path is first looked
//! up as a literal key (`"buyer.tax_id"` as one JSON key, or a logfmt key with dots), then,
//! in JSON, as a dotted path through nested objects, where a segment that is a number
//! indexes an array (`items.0.sku`). Values are compared as text: a JSON string by its
//! content, a number or boolean by its literal; objects, arrays and `null` never match. A
//! condition given as a list matches any of its values. A line split at `max_line_bytes`,
//! or not valid UTF-8, never matches.
//!
//! # Lifting
//! The sealed plaintext is a JSON object `{field path: value}` holding only the listed
//! fields present in the record (a JSON value kept whole, objects and arrays included; a
//! logfmt value as a string). A listed field the record lacks is left out; a matching record
//! that holds none of the listed fields gives nothing to keep, so no legal record. Every listed
//! field is also a PII field name of the redaction engine ([`FIELD_TYPE`] unless already
//! typed), so the `default` record never holds it in clear, matched or not.
//!
//! # Sealing
//! An anonymous sealed box (`crypto_box`, libsodium's `crypto_box_seal`): an ephemeral
//! X25519 key agreed with the compliance public key, XSalsa20-Poly1305 over the plaintext.
//! Only the holder of the compliance secret key can open it; the agent keeps no secret that
//! could, and neither does the central store.
//!
//! # Key files
//! - `compliance.pub`: one line `logveil-x25519 <base64 of the 32-byte public key>`.
//! - `compliance.key`: one line `logveil-x25519-secret <base64 of the 32-byte secret>`, 0600.
//! - key id: hex of the first 8 bytes of SHA-256 of the public key, as for host keys.

use crate::config::{Format, RedactConfig};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The stream sealed exception fields are shipped on (readable by the compliance role only).
pub const LEGAL_STREAM: &str = crate::access::LEGAL_STREAM;

/// The redaction type of a field an exception lists that no other rule names: on the
/// `default` stream it is masked like any PII field (`[REDACTED:legal_field]`).
pub const FIELD_TYPE: &str = "legal_field";

const PUBLIC_TAG: &str = "logveil-x25519";
const SECRET_TAG: &str = "logveil-x25519-secret";

#[derive(Debug, thiserror::Error)]
pub enum LegalError {
    #[error("redact.compliance_key is required when an exception is declared")]
    NoComplianceKey,
    /// `message` names the file.
    #[error("cannot use the compliance key: {message}")]
    ComplianceKey { path: PathBuf, message: String },
    #[error("exception {index}: {key}: {message}")]
    Invalid {
        index: usize,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    // Not `source`: the message already says it, and anyhow would print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a logveil {what} (expected one line `{tag} <base64>`)", path.display())]
    Format {
        path: PathBuf,
        what: &'static str,
        tag: &'static str,
    },
}

/// Hex of the first 8 bytes of SHA-256 of a compliance public key.
pub fn key_id(public: &crypto_box::PublicKey) -> String {
    hex::encode(&crate::envelope::sha256(public.as_bytes())[..8])
}

fn read_tagged(
    path: &Path,
    tag: &'static str,
    what: &'static str,
) -> Result<[u8; 32], KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let bad = || KeyFileError::Format {
        path: path.to_path_buf(),
        what,
        tag,
    };
    let mut parts = text.split_whitespace();
    if parts.next() != Some(tag) {
        return Err(bad());
    }
    let bytes = parts
        .next()
        .and_then(|b| B64.decode(b).ok())
        .ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    bytes.try_into().map_err(|_| bad())
}

/// Loads `compliance.pub`.
pub fn load_public(path: &Path) -> Result<crypto_box::PublicKey, KeyFileError> {
    read_tagged(path, PUBLIC_TAG, "compliance public key").map(crypto_box::PublicKey::from_bytes)
}

/// Loads `compliance.key`.
pub fn load_secret(path: &Path) -> Result<crypto_box::SecretKey, KeyFileError> {
    read_tagged(path, SECRET_TAG, "compliance secret key").map(crypto_box::SecretKey::from_bytes)
}

/// Writes a new compliance key pair: `dir/compliance.key` (0600) and `dir/compliance.pub`.
/// Refuses to overwrite existing files. Returns both paths and the key id.
pub fn generate_pair(dir: &Path) -> Result<(PathBuf, PathBuf, String), KeyFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| KeyFileError::Io { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret = crypto_box::SecretKey::generate(&mut rand::rngs::OsRng);
    let public = secret.public_key();
    let secret_path = dir.join("compliance.key");
    let public_path = dir.join("compliance.pub");
    let write = |path: &Path, text: String, mode: u32| -> Result<(), KeyFileError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io(path))?;
        f.write_all(text.as_bytes()).map_err(io(path))?;
        f.sync_all().map_err(io(path))
    };
    write(
        &secret_path,
        format!("{SECRET_TAG} {}\n", B64.encode(secret.to_bytes())),
        0o600,
    )?;
    write(
        &public_path,
        format!("{PUBLIC_TAG} {}\n", B64.encode(public.as_bytes())),
        0o644,
    )?;
    Ok((secret_path, public_path, key_id(&public)))
}

/// One declared exception, validated.
#[derive(Debug, Clone)]
pub struct Exception {
    pub name: String,
    pub legal_basis: String,
    pub purpose: String,
    pub sources: Vec<String>,
    /// `(field path, accepted values as text)`; all must hold.
    pub when: Vec<(String, Vec<String>)>,
    pub fields: Vec<String>,
    pub retention_days: u64,
}

/// The fields of one record lifted for one exception: plaintext PII, to be sealed at once
/// and never logged, buffered or shipped as is.
pub struct Lifted<'e> {
    pub exception: &'e Exception,
    /// Field path -> original value, only the listed fields the record holds.
    pub values: serde_json::Map<String, Value>,
}

/// Every exception of the config and the key their fields are sealed to.
#[derive(Default)]
pub struct Exceptions {
    list: Vec<Exception>,
    key: Option<(crypto_box::PublicKey, String)>,
}

impl Exceptions {
    pub fn from_config(cfg: &RedactConfig) -> Result<Self, LegalError> {
        let key = match &cfg.compliance_key {
            Some(path) => {
                let k = load_public(path).map_err(|e| LegalError::ComplianceKey {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let id = key_id(&k);
                Some((k, id))
            }
            None if cfg.exceptions.is_empty() => None,
            None => return Err(LegalError::NoComplianceKey),
        };
        let mut list: Vec<Exception> = Vec::with_capacity(cfg.exceptions.len());
        for (index, x) in cfg.exceptions.iter().enumerate() {
            let bad = |key: &'static str, message: &str| LegalError::Invalid {
                index,
                key,
                message: message.to_string(),
            };
            if !crate::envelope::is_safe_identifier(&x.name) {
                return Err(bad(
                    "name",
                    "use letters, digits, '.', '_' and '-', not starting with '.'",
                ));
            }
            if list.iter().any(|e| e.name == x.name) {
                return Err(bad("name", "exception names must be unique"));
            }
            if x.legal_basis.trim().is_empty() {
                return Err(bad("legal_basis", "must name the legal obligation"));
            }
            if x.purpose.trim().is_empty() {
                return Err(bad("purpose", "must say what the fields are kept for"));
            }
            if x.sources.iter().any(|s| s.is_empty()) {
                return Err(bad("sources", "source names must be non-empty"));
            }
            if x.fields.is_empty() {
                return Err(bad("fields", "at least one field is required"));
            }
            for (i, f) in x.fields.iter().enumerate() {
                if !valid_path(f) {
                    return Err(bad(
                        "fields",
                        "a field path must be non-empty, without empty segments",
                    ));
                }
                if x.fields[..i].contains(f) {
                    return Err(bad("fields", "a field is listed twice"));
                }
            }
            if x.retention_days == 0 {
                return Err(bad("retention_days", "must be greater than zero"));
            }
            if x.when.is_empty() {
                return Err(bad(
                    "when",
                    "at least one condition is required: an exception must not apply to every record",
                ));
            }
            let mut when = Vec::with_capacity(x.when.len());
            for (path, v) in &x.when {
                if !valid_path(path) {
                    return Err(bad(
                        "when",
                        "a field path must be non-empty, without empty segments",
                    ));
                }
                let values = match v {
                    toml::Value::Array(a) if a.is_empty() => {
                        return Err(bad("when", "a list of values must not be empty"))
                    }
                    toml::Value::Array(a) => a.iter().map(scalar_text).collect(),
                    one => scalar_text(one).map(|t| vec![t]),
                };
                let values = values.ok_or_else(|| {
                    bad(
                        "when",
                        "a value must be a string, an integer, a boolean, or a list of them",
                    )
                })?;
                when.push((path.clone(), values));
            }
            list.push(Exception {
                name: x.name.clone(),
                legal_basis: x.legal_basis.clone(),
                purpose: x.purpose.clone(),
                sources: x.sources.clone(),
                when,
                fields: x.fields.clone(),
                retention_days: x.retention_days,
            });
        }
        Ok(Exceptions { list, key })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[Exception] {
        &self.list
    }

    /// The key id of the compliance key, when one is configured.
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|(_, id)| id.as_str())
    }

    /// The lines this config adds to the redaction policy hash: every exception (all its
    /// settings) and the compliance key id.
    pub fn policy(&self) -> String {
        let mut out = String::new();
        if let Some(id) = self.key_id() {
            out.push_str(&format!("compliance_key\t{id}\n"));
        }
        for x in &self.list {
            out.push_str(&format!(
                "exception\t{:?}\t{:?}\t{:?}\t{:?}\t{:?}\t{:?}\t{}\n",
                x.name, x.legal_basis, x.purpose, x.sources, x.when, x.fields, x.retention_days
            ));
        }
        out
    }

    /// Whether any exception can apply to records of `source` (a cheap check before
    /// parsing a record).
    pub fn applies_to(&self, source: &str) -> bool {
        self.list
            .iter()
            .any(|x| x.sources.is_empty() || x.sources.iter().any(|s| s == source))
    }

    /// The fields to keep of one raw record, one entry per matching exception that finds
    /// at least one of its fields. Empty for a record that matches none.
    pub fn lift(&self, source: &str, format: Format, text: &str) -> Vec<Lifted<'_>> {
        let of_source =
            |x: &Exception| x.sources.is_empty() || x.sources.iter().any(|s| s == source);
        // Cheap necessary condition before parsing: without escapes in the text, a value that
        // matches appears in it literally.
        let escaped = memchr::memchr(b'\\', text.as_bytes()).is_some();
        let may_match = |x: &Exception| {
            escaped
                || x.when
                    .iter()
                    .all(|(_, accepted)| accepted.iter().any(|a| text.contains(a.as_str())))
        };
        if !self.list.iter().any(|x| of_source(x) && may_match(x)) {
            return Vec::new();
        }
        let Some(record) = Parsed::parse(format, text) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for x in &self.list {
            if !of_source(x) {
                continue;
            }
            let holds = x.when.iter().all(|(path, accepted)| {
                record
                    .get(path)
                    .and_then(|v| value_text(&v))
                    .is_some_and(|t| accepted.contains(&t))
            });
            if !holds {
                continue;
            }
            let mut values = serde_json::Map::new();
            for f in &x.fields {
                if let Some(v) = record.get(f) {
                    values.insert(f.clone(), v);
                }
            }
            if !values.is_empty() {
                out.push(Lifted {
                    exception: x,
                    values,
                });
            }
        }
        out
    }

    /// Seals lifted fields to the compliance key: base64 of the sealed box over the JSON
    /// object. `None` when no compliance key is configured (never the case once exceptions
    /// validated).
    pub fn seal(&self, lifted: &Lifted<'_>) -> Option<String> {
        let (key, _) = self.key.as_ref()?;
        let plaintext = serde_json::to_vec(&lifted.values).expect("a JSON map serializes");
        let sealed = key.seal(&mut rand::rngs::OsRng, &plaintext).ok()?;
        Some(B64.encode(sealed))
    }
}

/// Opens a sealed object (base64) with the compliance secret key.
pub fn unseal(
    secret: &crypto_box::SecretKey,
    sealed_b64: &str,
) -> Result<serde_json::Map<String, Value>, &'static str> {
    let sealed = B64
        .decode(sealed_b64.trim())
        .map_err(|_| "the sealed field is not base64")?;
    let plain = secret
        .unseal(&sealed)
        .map_err(|_| "it was not sealed to this key, or it was altered")?;
    serde_json::from_slice(&plain).map_err(|_| "the opened fields are not a JSON object")
}

fn valid_path(p: &str) -> bool {
    !p.is_empty() && p.split('.').all(|s| !s.is_empty())
}

/// A config value as the text it matches.
fn scalar_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A record value as the text a condition compares with.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A raw record read for matching and lifting.
enum Parsed {
    Json(Value),
    Logfmt(Vec<(String, String)>),
}

impl Parsed {
    fn parse(format: Format, text: &str) -> Option<Parsed> {
        let trimmed = text.trim_start();
        let json = match format {
            Format::Json => true,
            Format::Logfmt => false,
            Format::Auto | Format::Plain | Format::Cri | Format::Docker => trimmed.starts_with('{'),
        };
        if json {
            match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Some(Parsed::Json(v)),
                _ => None,
            }
        } else {
            let pairs = logfmt_pairs(text);
            (!pairs.is_empty()).then_some(Parsed::Logfmt(pairs))
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        match self {
            Parsed::Logfmt(pairs) => pairs
                .iter()
                .find(|(k, _)| k == path)
                .map(|(_, v)| Value::String(v.clone())),
            Parsed::Json(root) => {
                if let Some(v) = root.get(path) {
                    return Some(v.clone());
                }
                let mut at = root;
                for seg in path.split('.') {
                    at = match at {
                        Value::Object(m) => m.get(seg)?,
                        Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                        _ => return None,
                    };
                }
                Some(at.clone())
            }
        }
    }
}

/// `key=value` and `key="quoted \"value\""` pairs separated by whitespace; words without
/// `=` are skipped.
fn logfmt_pairs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        // A key runs to '=' or whitespace.
        let mut end = start;
        let mut has_eq = false;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' {
                end = i;
                has_eq = true;
                chars.next();
                break;
            }
            if c.is_whitespace() {
                end = i;
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let key = &text[start..end];
        if !has_eq {
            continue;
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|&(_, c)| c == '"') {
            chars.next();
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, e)) => value.push(e),
                        None => {}
                    },
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if !key.is_empty() {
            out.push((key.to_string(), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExceptionConfig;

    fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
        let (s, p, _) = generate_pair(dir).unwrap();
        (s, p)
    }

    fn invoice_exception() -> ExceptionConfig {
        ExceptionConfig {
            name: "tax-invoice".into(),
            legal_basis: "VAT Directive 2006/112/EC art. 244".into(),
            purpose: "tax invoice".into(),
            sources: vec!["billing".into()],
            when: [(
                "event".to_string(),
                toml::Value::String("invoice.issued".into()),
            )]
            .into_iter()
            .collect(),
            fields: vec![
                "buyer.tax_id".into(),
                "buyer.name".into(),
                "billing_address".into(),
            ],
            retention_days: 3650,
        }
    }

    fn config(dir: &Path, exceptions: Vec<ExceptionConfig>) -> RedactConfig {
        let (_, public) = keypair(dir);
        RedactConfig {
            compliance_key: Some(public),
            exceptions,
            ..RedactConfig::default()
        }
    }

    #[test]
    fn nested_fields_of_a_matching_json_record_are_lifted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let x = Exceptions::from_config(&config(dir.path(), vec![invoice_exception()])).unwrap();
        let line = r#"{"event":"invoice.issued","buyer":{"tax_id":"DE123456789","name":"Jane Roe","email":"jane@example.com"},"billing_address":{"street":"1 Main St","city":"Berlin"},"amount":12.5}"#;
        let lifted = x.lift("billing", Format::Json, line);
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].exception.name, "tax-invoice");
        assert_eq!(
            Value::Object(lifted[0].values.clone()),
            serde_json::json!({
                "buyer.tax_id": "DE123456789",
                "buyer.name": "Jane Roe",
                "billing_address": {"street": "1 Main St", "city": "Berlin"},
            })
        );
    }

    #[test]
    fn records_of_other_sources_or_events_or_unparsable_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let x = Exceptions::from_config(&config(dir.path(), vec![invoice_exception()])).unwrap();
        let matching = r#"{"event":"invoice.issued","buyer":{"tax_id":"DE1"}}"#;
        assert!(x.lift("app", Format::Json, matching).is_empty());
        assert!(!x.applies_to("app"));
        let other = r#"{"event":"invoice.viewed","buyer":{"tax_id":"DE1"}}"#;
        assert!(x.lift("billing", Format::Json, other).is_empty());
        // The condition's value nested or as an object does not count.
        let nested = r#"{"meta":{"event":"invoice.issued"},"buyer":{"tax_id":"DE1"}}"#;
        assert!(x.lift("billing", Format::Json, nested).is_empty());
        assert!(x.lift("billing", Format::Json, "{not json").is_empty());
        assert!(x
            .lift("billing", Format::Auto, "event=invoice.issued free text")
            .is_empty());
    }

    #[test]
    fn a_matching_record_missing_a_field_keeps_only_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let x = Exceptions::from_config(&config(dir.path(), vec![invoice_exception()])).unwrap();
        let line = r#"{"event":"invoice.issued","buyer":{"tax_id":"DE123456789"}}"#;
        let lifted = x.lift("billing", Format::Auto, line);
        assert_eq!(lifted.len(), 1);
        assert_eq!(
            Value::Object(lifted[0].values.clone()),
            serde_json::json!({"buyer.tax_id": "DE123456789"})
        );
        // None of the fields: nothing to keep, no legal record.
        let bare = r#"{"event":"invoice.issued","amount":3}"#;
        assert!(x.lift("billing", Format::Json, bare).is_empty());
    }

    #[test]
    fn array_paths_and_value_lists_and_typed_values_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut xc = invoice_exception();
        xc.sources.clear();
        xc.when = [
            (
                "event".to_string(),
                toml::Value::Array(vec!["invoice.issued".into(), "invoice.corrected".into()]),
            ),
            ("lines.0.taxable".to_string(), toml::Value::Boolean(true)),
            ("version".to_string(), toml::Value::Integer(2)),
        ]
        .into_iter()
        .collect();
        xc.fields = vec!["lines.1.buyer_ref".into(), "parties".into()];
        let x = Exceptions::from_config(&config(dir.path(), vec![xc])).unwrap();
        let line = r#"{"event":"invoice.corrected","version":2,"lines":[{"taxable":true},{"buyer_ref":"C-77"}],"parties":["Jane Roe","ACME"]}"#;
        let lifted = x.lift("any-source", Format::Json, line);
        assert_eq!(lifted.len(), 1);
        assert_eq!(
            Value::Object(lifted[0].values.clone()),
            serde_json::json!({"lines.1.buyer_ref": "C-77", "parties": ["Jane Roe", "ACME"]})
        );
        let wrong_version = line.replace("\"version\":2", "\"version\":3");
        assert!(x.lift("s", Format::Json, &wrong_version).is_empty());
        let wrong_event = line.replace("invoice.corrected", "invoice.deleted");
        assert!(x.lift("s", Format::Json, &wrong_event).is_empty());
    }

    #[test]
    fn values_written_with_json_escapes_still_match() {
        let dir = tempfile::tempdir().unwrap();
        let x = Exceptions::from_config(&config(dir.path(), vec![invoice_exception()])).unwrap();
        let line = r#"{"event":"invoice\u002eissued","buyer":{"tax_id":"DE\u0031"}}"#;
        let lifted = x.lift("billing", Format::Json, line);
        assert_eq!(lifted.len(), 1);
        assert_eq!(lifted[0].values["buyer.tax_id"], "DE1");
    }

    #[test]
    fn logfmt_records_match_on_literal_keys_and_quoted_values() {
        let dir = tempfile::tempdir().unwrap();
        let x = Exceptions::from_config(&config(dir.path(), vec![invoice_exception()])).unwrap();
        let line = r#"level=info event=invoice.issued buyer.tax_id=DE123456789 buyer.name="Jane \"JR\" Roe" billing_address="1 Main St, Berlin" buyer.email=jane@example.com"#;
        for format in [Format::Logfmt, Format::Auto, Format::Plain] {
            let lifted = x.lift("billing", format, line);
            assert_eq!(lifted.len(), 1, "{format:?}");
            assert_eq!(
                Value::Object(lifted[0].values.clone()),
                serde_json::json!({
                    "buyer.tax_id": "DE123456789",
                    "buyer.name": "Jane \"JR\" Roe",
                    "billing_address": "1 Main St, Berlin",
                })
            );
        }
        assert!(x
            .lift(
                "billing",
                Format::Logfmt,
                "event=invoice.viewed buyer.tax_id=DE1"
            )
            .is_empty());
    }

    #[test]
    fn sealed_fields_open_only_with_the_matching_secret_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), vec![invoice_exception()]);
        let x = Exceptions::from_config(&cfg).unwrap();
        let line = r#"{"event":"invoice.issued","buyer":{"tax_id":"DE123456789"}}"#;
        let lifted = x.lift("billing", Format::Json, line);
        let sealed = x.seal(&lifted[0]).unwrap();
        assert!(!sealed.contains("DE123456789"));
        let secret = load_secret(&dir.path().join("compliance.key")).unwrap();
        assert_eq!(unseal(&secret, &sealed).unwrap(), lifted[0].values);
        let other = tempfile::tempdir().unwrap();
        keypair(other.path());
        let wrong = load_secret(&other.path().join("compliance.key")).unwrap();
        assert!(unseal(&wrong, &sealed).is_err());
        // Each seal uses a fresh ephemeral key: equal inputs do not give equal outputs.
        assert_ne!(x.seal(&lifted[0]).unwrap(), sealed);
    }

    #[test]
    fn the_policy_hash_covers_every_exception_setting_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let base = config(dir.path(), vec![invoice_exception()]);
        let hash = |cfg: &RedactConfig| {
            crate::redact::Redactor::from_config(cfg)
                .unwrap()
                .policy_hash()
        };
        let h = hash(&base);
        assert_eq!(h, hash(&base), "same config, same hash");
        let none = RedactConfig::default();
        assert_ne!(h, hash(&none));
        let edits: [fn(&mut ExceptionConfig); 6] = [
            |x| x.retention_days = 3651,
            |x| {
                x.fields.pop();
            },
            |x| x.purpose = "audit".into(),
            |x| x.legal_basis = "another law".into(),
            |x| x.sources.clear(),
            |x| {
                x.when.insert("status".into(), toml::Value::Integer(1));
            },
        ];
        for edit in edits {
            let mut cfg = base.clone();
            edit(&mut cfg.exceptions[0]);
            assert_ne!(h, hash(&cfg));
        }
        // Another compliance key is another policy.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(h, hash(&config(other.path(), vec![invoice_exception()])));
    }

    proptest::proptest! {
        /// Whatever a line holds, lifting never panics and never keeps a field that is not
        /// listed; a lifted JSON value is the record's own.
        #[test]
        fn lifting_keeps_only_listed_fields_of_any_line(
            junk in "[ -~]{0,80}",
            tax in "[A-Za-z0-9 \"\\=.]{0,20}",
            event in proptest::sample::select(vec!["invoice.issued", "invoice.viewed"]),
            extra in "[a-z_.]{1,12}",
            json_line in proptest::bool::ANY,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut xc = invoice_exception();
            xc.sources.clear();
            let x = Exceptions::from_config(&config(dir.path(), vec![xc])).unwrap();
            // Never one of the exception's own keys.
            let extra = format!("x_{extra}");
            let line = if json_line {
                serde_json::json!({
                    "event": event, "buyer": {"tax_id": tax}, extra.clone(): junk
                })
                .to_string()
            } else {
                format!("event={event} buyer.tax_id={tax:?} {extra}={junk:?} {junk}")
            };
            for format in [Format::Json, Format::Logfmt, Format::Auto, Format::Plain] {
                for l in x.lift("s", format, &line) {
                    for k in l.values.keys() {
                        proptest::prop_assert!(l.exception.fields.contains(k));
                    }
                }
                let _ = x.lift("s", format, &junk);
            }
            if json_line {
                let lifted = x.lift("s", Format::Json, &line);
                let issued = event == "invoice.issued";
                proptest::prop_assert_eq!(lifted.len(), usize::from(issued));
                if issued {
                    proptest::prop_assert_eq!(&lifted[0].values["buyer.tax_id"], &Value::String(tax));
                }
            }
        }
    }

    #[test]
    fn listed_fields_are_redacted_on_default_even_when_no_other_rule_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut xc = invoice_exception();
        xc.fields = vec!["order.customer_ref".into(), "lines.0".into()];
        let red = crate::redact::Redactor::from_config(&config(dir.path(), vec![xc])).unwrap();
        let mut counts = crate::redact::Counts::default();
        let json = r#"{"event":"invoice.issued","order":{"customer_ref":"CR-7781"},"customer_ref":"CR-1"}"#;
        let out = red
            .redact_record(json, Format::Json, &mut counts, None)
            .text;
        assert!(!out.contains("CR-7781") && !out.contains("CR-1"), "{out}");
        assert!(out.contains("[REDACTED:legal_field]"), "{out}");
        let kv = "event=invoice.issued order.customer_ref=CR-7781 lines=3";
        let out = red
            .redact_record(kv, Format::Logfmt, &mut counts, None)
            .text;
        assert!(!out.contains("CR-7781"), "{out}");
        // `lines.0` is an element of `lines`: the whole array is masked (fail closed).
        assert!(out.contains("lines=[REDACTED:legal_field]"), "{out}");
        // Without exceptions nothing changes.
        let plain = crate::redact::Redactor::defaults();
        assert!(plain
            .redact_record(json, Format::Json, &mut counts, None)
            .text
            .contains("CR-7781"));
    }

    #[test]
    fn the_secret_key_file_is_private_and_keys_load_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret, public, id) = generate_pair(dir.path()).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = load_secret(&secret).unwrap();
        let p = load_public(&public).unwrap();
        assert_eq!(s.public_key(), p);
        assert_eq!(key_id(&p), id);
        assert!(generate_pair(dir.path()).is_err(), "never overwrites a key");
        assert!(
            load_public(&secret).is_err(),
            "a secret key is not a public key"
        );
    }

    #[test]
    fn bad_exception_config_is_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let check = |edit: &dyn Fn(&mut ExceptionConfig), key: &str| {
            let mut x = invoice_exception();
            edit(&mut x);
            match Exceptions::from_config(&config(tempfile::tempdir().unwrap().path(), vec![x])) {
                Err(LegalError::Invalid {
                    key: k, index: 0, ..
                }) => assert_eq!(k, key),
                Err(e) => panic!("{key}: unexpected error {e}"),
                Ok(_) => panic!("{key}: accepted"),
            }
        };
        check(&|x| x.fields.clear(), "fields");
        check(&|x| x.fields.push("buyer.name".into()), "fields");
        check(&|x| x.fields.push("buyer..x".into()), "fields");
        check(&|x| x.retention_days = 0, "retention_days");
        check(&|x| x.name = "../x".into(), "name");
        check(&|x| x.legal_basis = " ".into(), "legal_basis");
        check(&|x| x.when.clear(), "when");
        check(
            &|x| {
                x.when
                    .insert("event".into(), toml::Value::Array(Vec::new()));
            },
            "when",
        );
        check(
            &|x| {
                x.when.insert("event".into(), toml::Value::Float(1.5));
            },
            "when",
        );
        let dup = config(dir.path(), vec![invoice_exception(), invoice_exception()]);
        assert!(matches!(
            Exceptions::from_config(&dup),
            Err(LegalError::Invalid {
                index: 1,
                key: "name",
                ..
            })
        ));
        let no_key = RedactConfig {
            exceptions: vec![invoice_exception()],
            ..RedactConfig::default()
        };
        assert!(matches!(
            Exceptions::from_config(&no_key),
            Err(LegalError::NoComplianceKey)
        ));
        let unreadable = RedactConfig {
            compliance_key: Some(dir.path().join("missing.pub")),
            exceptions: vec![invoice_exception()],
            ..RedactConfig::default()
        };
        assert!(matches!(
            Exceptions::from_config(&unreadable),
            Err(LegalError::ComplianceKey { .. })
        ));
    }
}
