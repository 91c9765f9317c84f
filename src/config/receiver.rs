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
    pub tls: Option<ReceiverTls>,
    /// The read API (`GET /v1/records`) for operators; off when absent.
    pub access: Option<ReceiverAccess>,
    /// Retention per stream, enforced by a periodic sweep; off when absent.
    pub retention: Option<ReceiverRetention>,
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
        Ok(cfg)
    }
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
}
