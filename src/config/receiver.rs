//! The central store's config file (`logveil receive --config collector.toml`).

use super::{duration, ConfigError, Source, TelemetryConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub receiver: ReceiverSection,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSection {
    pub listen: SocketAddr,
    pub archive_dir: PathBuf,
    /// Per enrolled host `<host_id>.pub` and/or `<host_id>/*.pub` (rotation); a
    /// `*.pub.revoked` file is a revoked key (see `crate::envelope::keys`).
    pub trusted_keys_dir: PathBuf,
    /// The store's own secret key (`logveil keygen`), which signs the custody ledger. Without
    /// it the store keeps no ledger.
    pub store_key: Option<PathBuf>,
    /// Largest request body (one envelope) accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest payload after decompression.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: u64,
    /// A client must send its whole request within this time.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Refusals from one peer address recorded in the custody ledger per minute; beyond
    /// that they are counted, and the next recorded one says how many were not.
    #[serde(default = "default_recorded_rejections_per_minute")]
    pub recorded_rejections_per_minute: u32,
    pub tls: Option<ReceiverTls>,
    /// The read API (`GET /v1/records`) for operators; off when absent.
    pub access: Option<ReceiverAccess>,
    /// Retention per stream, enforced by a periodic sweep; off when absent.
    pub retention: Option<ReceiverRetention>,
    /// Archive batches in S3-compatible object storage with Object Lock instead of under
    /// `archive_dir` (which then holds only this instance's custody ledger).
    pub s3: Option<ReceiverS3>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverS3 {
    /// `http(s)://host[:port]` of the S3 API (path-style requests).
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix of the archive inside the bucket (no leading or trailing `/` needed).
    #[serde(default)]
    pub prefix: String,
    /// Credentials; when absent, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Object Lock (compliance mode) retention per stream, in days from the write; `"*"`
    /// (required) is every other stream.
    pub retain_days: std::collections::BTreeMap<String, u64>,
    /// This store instance's name, unique among the instances sharing the bucket; recorded
    /// on every object it writes. Default: the hostname.
    pub instance_id: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl ReceiverS3 {
    /// Object Lock days for `stream`.
    pub fn retain_days_for(&self, stream: &str) -> u64 {
        self.retain_days
            .get(stream)
            .or_else(|| self.retain_days.get("*"))
            .copied()
            .unwrap_or(1)
    }

    /// The key prefix without surrounding slashes (may be empty).
    pub fn prefix(&self) -> &str {
        self.prefix.trim_matches('/')
    }

    /// The client settings, credentials from the file or else the environment.
    pub fn settings(&self) -> Result<crate::s3::S3Settings, String> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let access_key_id = self
            .access_key_id
            .clone()
            .or_else(|| from_env("AWS_ACCESS_KEY_ID"))
            .ok_or("no access_key_id and no AWS_ACCESS_KEY_ID in the environment")?;
        let secret_access_key = self
            .secret_access_key
            .clone()
            .or_else(|| from_env("AWS_SECRET_ACCESS_KEY"))
            .ok_or("no secret_access_key and no AWS_SECRET_ACCESS_KEY in the environment")?;
        Ok(crate::s3::S3Settings {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key_id,
            secret_access_key,
        })
    }

    /// This instance's id: the configured one or the hostname.
    pub fn instance(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "logveil".into())
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverAccess {
    /// Operators' token hashes (`crate::access`), read at each request.
    pub tokens_file: Option<PathBuf>,
    /// Operators by client certificate (with `[receiver.tls] client_ca`): a certificate valid
    /// for the name (subject alternative name) authenticates as that operator with the role.
    #[serde(default)]
    pub certs: std::collections::BTreeMap<String, String>,
    /// Largest answer of one read; a larger result is refused (narrow the query).
    #[serde(default = "default_max_read_bytes")]
    pub max_read_bytes: u64,
}

fn default_max_read_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverRetention {
    /// How often the store sweeps the archive for expired days.
    #[serde(default = "default_sweep_interval", deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// Days each stream is kept (by stream name); `"*"` is every other stream. A stream with
    /// no entry and no `"*"` is kept forever.
    pub retention_days: std::collections::BTreeMap<String, u64>,
}

fn default_sweep_interval() -> Duration {
    Duration::from_secs(3600)
}

impl ReceiverRetention {
    /// The retention of `stream` in days, if it has one.
    pub fn days_for(&self, stream: &str) -> Option<u64> {
        self.retention_days
            .get(stream)
            .or_else(|| self.retention_days.get("*"))
            .copied()
    }
}

fn default_max_body_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_decompressed_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_recorded_rejections_per_minute() -> u32 {
    60
}
fn default_max_connections() -> usize {
    1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl ReceiverConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = super::read(path)?;
        Self::from_text(path, &text)
    }

    pub fn from_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let src = Source { path, text };
        let cfg: ReceiverConfig = src.parse()?;
        let r = &cfg.receiver;
        if r.max_body_bytes < 1024 {
            return Err(src.error("receiver.max_body_bytes", "must be at least 1024"));
        }
        if r.max_decompressed_bytes < 1024 {
            return Err(src.error("receiver.max_decompressed_bytes", "must be at least 1024"));
        }
        if r.recorded_rejections_per_minute == 0 {
            return Err(src.error(
                "receiver.recorded_rejections_per_minute",
                "must be at least 1",
            ));
        }
        if r.max_connections == 0 {
            return Err(src.error("receiver.max_connections", "must be at least 1"));
        }
        if let Some(a) = &r.access {
            if r.store_key.is_none() {
                return Err(src.error(
                    "receiver.access",
                    "needs receiver.store_key: every read is recorded in the custody ledger",
                ));
            }
            if a.tokens_file.is_none() && a.certs.is_empty() {
                return Err(src.error(
                    "receiver.access",
                    "set tokens_file and/or certs, or no operator can read",
                ));
            }
            if !a.certs.is_empty() && r.tls.as_ref().and_then(|t| t.client_ca.as_ref()).is_none() {
                return Err(src.error(
                    "receiver.access.certs",
                    "needs receiver.tls.client_ca (client certificates)",
                ));
            }
            for (name, role) in &a.certs {
                if crate::access::Role::parse(role).is_none() {
                    return Err(src.error(
                        &format!("receiver.access.certs.{name}"),
                        "role must be reader, auditor or compliance",
                    ));
                }
            }
        }
        if let Some(ret) = &r.retention {
            if r.store_key.is_none() {
                return Err(src.error(
                    "receiver.retention",
                    "needs receiver.store_key: every deletion is recorded in the custody ledger",
                ));
            }
            if ret.sweep_interval < Duration::from_secs(1) {
                return Err(src.error("receiver.retention.sweep_interval", "must be at least 1s"));
            }
            if ret.retention_days.contains_key(crate::access::LEGAL_STREAM) {
                return Err(src.error(
                    "receiver.retention.retention_days.legal",
                    "the legal stream's retention comes from each legal exception's \
                     retention_days (carried by its records); remove this key",
                ));
            }
            for (stream, days) in &ret.retention_days {
                if *days == 0 {
                    return Err(src.error(
                        &format!("receiver.retention.retention_days.{stream}"),
                        "must be at least 1",
                    ));
                }
            }
        }
        if let Some(s3) = &r.s3 {
            validate_s3(&src, s3)?;
            if r.retention.is_some() {
                return Err(src.error(
                    "receiver.retention",
                    "not available with receiver.s3: objects are kept by Object Lock (receiver.s3.retain_days)",
                ));
            }
            if r.access.is_some() {
                return Err(src.error(
                    "receiver.access",
                    "the read API is not available with receiver.s3 yet",
                ));
            }
        }
        Ok(cfg)
    }
}

fn validate_s3(src: &Source<'_>, s3: &ReceiverS3) -> Result<(), ConfigError> {
    let ep = s3.endpoint.as_str();
    let rest = ep
        .strip_prefix("https://")
        .or_else(|| ep.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.trim_end_matches('/').is_empty()
                && !host.trim_end_matches('/').contains('/') => {}
        _ => {
            return Err(src.error(
                "receiver.s3.endpoint",
                "must be http(s)://host[:port] without a path",
            ))
        }
    }
    let bucket_ok = (3..=63).contains(&s3.bucket.len())
        && s3
            .bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(src.error(
            "receiver.s3.bucket",
            "must be 3 to 63 characters of a-z, 0-9, '-' and '.'",
        ));
    }
    if !s3
        .prefix()
        .split('/')
        .all(|p| s3.prefix().is_empty() || crate::envelope::is_safe_identifier(p))
    {
        return Err(src.error(
            "receiver.s3.prefix",
            "must be '/'-separated parts of [A-Za-z0-9._-]",
        ));
    }
    if !s3.retain_days.contains_key("*") {
        return Err(src.error(
            "receiver.s3.retain_days",
            "needs \"*\" (the Object Lock days of every other stream)",
        ));
    }
    for (stream, days) in &s3.retain_days {
        if *days == 0 {
            return Err(src.error(
                &format!("receiver.s3.retain_days.{stream}"),
                "must be at least 1",
            ));
        }
    }
    if let Some(id) = &s3.instance_id {
        if !crate::envelope::is_safe_identifier(id) {
            return Err(src.error("receiver.s3.instance_id", "must be [A-Za-z0-9._-]"));
        }
    }
    if let Err(e) = s3.settings() {
        return Err(src.error("receiver.s3", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legal_stream_takes_no_configured_retention() {
        let text = "[receiver]\nlisten = \"127.0.0.1:1\"\narchive_dir = \"/a\"\ntrusted_keys_dir = \"/k\"\nstore_key = \"/s\"\n[receiver.retention]\nretention_days = { default = 30, legal = 365 }\n";
        let err = ReceiverConfig::from_text(Path::new("store.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.toml"), "{err}");
        assert!(
            err.contains("receiver.retention.retention_days.legal"),
            "{err}"
        );
        let ok = text.replace(", legal = 365", "");
        ReceiverConfig::from_text(Path::new("store.toml"), &ok).unwrap();
    }

    const BASE: &str =
        "[receiver]\nlisten = \"127.0.0.1:1\"\narchive_dir = \"/a\"\ntrusted_keys_dir = \"/k\"\n";
    const S3: &str = "[receiver.s3]\nendpoint = \"http://127.0.0.1:8333\"\nbucket = \"logs\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nretain_days = { \"*\" = 30, audit = 365 }\n";

    fn load(text: &str) -> Result<ReceiverConfig, String> {
        ReceiverConfig::from_text(Path::new("c.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn an_s3_section_is_read_with_defaults() {
        let cfg = load(&format!("{BASE}{S3}prefix = \"/archive/\"\n")).unwrap();
        let s3 = cfg.receiver.s3.unwrap();
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.prefix(), "archive");
        assert_eq!(s3.retain_days_for("audit"), 365);
        assert_eq!(s3.retain_days_for("default"), 30);
        assert_eq!(s3.settings().unwrap().access_key_id, "k");
    }

    #[test]
    fn bad_s3_settings_name_their_key() {
        for (extra, key) in [
            ("", ""),
            ("prefix = \"a/../b\"\n", "receiver.s3.prefix"),
            ("instance_id = \"a b\"\n", "receiver.s3.instance_id"),
        ] {
            let text = format!("{BASE}{S3}{extra}");
            match load(&text) {
                Ok(_) if key.is_empty() => {}
                Ok(_) => panic!("{extra} accepted"),
                Err(e) => assert!(e.contains(key), "{e}"),
            }
        }
        let cases = [
            (
                S3.replace("http://127.0.0.1:8333", "127.0.0.1:8333"),
                "receiver.s3.endpoint",
            ),
            (
                S3.replace("http://127.0.0.1:8333", "http://h/path"),
                "receiver.s3.endpoint",
            ),
            (
                S3.replace("\"logs\"", "\"Logs_Bucket\""),
                "receiver.s3.bucket",
            ),
            (S3.replace("\"*\" = 30, ", ""), "receiver.s3.retain_days"),
            (
                S3.replace("audit = 365", "audit = 0"),
                "receiver.s3.retain_days.audit",
            ),
        ];
        for (s3, key) in cases {
            let e = load(&format!("{BASE}{s3}")).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        let with_retention = format!(
            "{BASE}store_key = \"/s\"\n[receiver.retention]\nretention_days = {{ \"*\" = 1 }}\n{S3}"
        );
        let e = load(&with_retention).unwrap_err();
        assert!(e.contains("receiver.retention"), "{e}");
    }
}
