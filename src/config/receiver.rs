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
        Ok(cfg)
    }
}
