//! The central store (`logveil receive`): takes signed batches over HTTP(S) and keeps them
//! in an append-only archive.
//!
//! What it promises:
//! - **Durable before acknowledged.** A 2xx means the envelope's exact bytes are fsynced
//!   into the archive (`store`); anything refused gets a 4xx with a reason code and leaves
//!   no trace in the archive.
//! - **Only enrolled, intact, in-order batches.** A batch is stored only if its host has a
//!   key in `trusted_keys_dir/<host>.pub` (read per request: deleting the file revokes the
//!   host at once), its key id, signature and payload hash hold, its payload has exactly
//!   the records the header declares (`validate`), and it continues its chain (`chain`).
//! - **Exactly once.** A batch already stored is acknowledged again as a duplicate and not
//!   written twice, also when copies arrive concurrently (`ingest`).
//! - **Bounded.** Request body size, decompressed size, connections and time per request
//!   come from `[receiver]` (`server`, `http`).
//!
//! - **On record.** With `store_key` set, every accepted batch (and the chain head it
//!   advances to), refusal and declared gap goes into the signed custody ledger
//!   (`crate::custody`) before the answer.
//!
//! Modules, in the order a batch meets them: `server` (listener, TLS, connections) → `http`
//! (routes, body limits, JSON answers) → `ingest` (orchestration, metrics, logs) →
//! `validate` (stateless checks) → `chain` (sequence rules) → `store` (the archive backend:
//! the filesystem, or `s3_archive`, S3 with Object Lock, shareable by several instances);
//! `gap` (declared gaps); `read` (the operators' read API, every read in the ledger);
//! `retention` (the periodic sweep of expired days).
//! Startup: validate TLS files, recover chain state from the archive (removing temp files of
//! interrupted writes), then bind. Nothing is bound when any of that fails.

use crate::config::ReceiverConfig;
use crate::telemetry::ReceiverMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub mod chain;
pub mod gap;
pub mod http;
pub mod ingest;
pub mod read;
pub mod retention;
pub mod s3_archive;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;

#[cfg(test)]
pub(crate) mod test_support;

pub use ingest::{Accepted, Ingest, Peer};
pub use s3_archive::S3Archive;
pub use store::{ArchiveBackend, ChainKey, FsArchive, StoreError};
pub use validate::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("archive {path}: {source}")]
    Archive {
        path: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] crate::custody::LedgerError),
    #[error("store key: {0}")]
    StoreKey(#[from] crate::envelope::keys::KeyError),
    #[error("telemetry server on {addr}: {source}")]
    Telemetry {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Prepares the store (TLS, archive recovery) and binds `cfg.receiver.listen`, with the
/// filesystem archive under `archive_dir`.
pub async fn bind(
    cfg: &ReceiverConfig,
    metrics: ReceiverMetrics,
) -> Result<server::Server<FsArchive>, ReceiveError> {
    let r = &cfg.receiver;
    let archive = FsArchive::open(&r.archive_dir).map_err(|source| ReceiveError::Archive {
        path: r.archive_dir.clone(),
        source,
    })?;
    bind_with(cfg, archive, metrics).await
}

/// [`bind`] with a given archive backend; `archive_dir` holds the custody ledger.
pub async fn bind_with<A: ArchiveBackend>(
    cfg: &ReceiverConfig,
    archive: A,
    metrics: ReceiverMetrics,
) -> Result<server::Server<A>, ReceiveError> {
    let r = &cfg.receiver;
    let tls = match &r.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(t)?)),
        None => None,
    };
    let archive_err = |source| ReceiveError::Archive {
        path: r.archive_dir.clone(),
        source,
    };
    let ledger = match &r.store_key {
        Some(path) => {
            let key = crate::envelope::keys::load_signing_key(path)?;
            let (ledger, entries) = crate::custody::Ledger::open(&r.archive_dir, key)?;
            Some((Arc::new(ledger), entries))
        }
        None => {
            tracing::warn!("no receiver.store_key: the store keeps no custody ledger");
            None
        }
    };
    let ingest = Ingest::new(
        archive,
        r.trusted_keys_dir.clone(),
        r.max_decompressed_bytes,
        metrics,
        ledger,
    )
    .await
    .map_err(archive_err)?
    .with_recorded_rejections_per_minute(r.recorded_rejections_per_minute);
    let listener = tokio::net::TcpListener::bind(r.listen)
        .await
        .map_err(|source| ReceiveError::Bind {
            addr: r.listen,
            source,
        })?;
    let reads = match (&r.access, ingest.ledger()) {
        (Some(a), Some(ledger)) => Some(Arc::new(read::ReadApi {
            archive_dir: r.archive_dir.clone(),
            tokens_file: a.tokens_file.clone(),
            certs: a
                .certs
                .iter()
                .filter_map(|(n, role)| Some((n.clone(), crate::access::Role::parse(role)?)))
                .collect(),
            ledger: ledger.clone(),
            max_read_bytes: usize::try_from(a.max_read_bytes).unwrap_or(usize::MAX),
        })),
        _ => None,
    };
    Ok(server::Server {
        reads,
        listener,
        tls,
        ingest: Arc::new(ingest),
        limits: http::Limits {
            max_body_bytes: r.max_body_bytes,
            max_decompressed_bytes: r.max_decompressed_bytes,
            request_timeout: r.request_timeout,
        },
        max_connections: r.max_connections,
    })
}

/// Runs the central store until `shutdown` is cancelled, with the telemetry server when
/// `[telemetry] listen` is set. If telemetry fails, the store stops too.
pub async fn run(cfg: ReceiverConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = ReceiverMetrics::default();
    match &cfg.receiver.s3 {
        None => {
            let server = bind(&cfg, metrics.clone()).await?;
            serve(cfg, server, metrics, shutdown).await
        }
        Some(s3) => {
            let archive = S3Archive::open(s3)
                .await
                .map_err(|source| ReceiveError::Archive {
                    path: format!("s3://{}/{}", s3.bucket, s3.prefix()).into(),
                    source,
                })?;
            // The ledger (and nothing else) lives in archive_dir.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&cfg.receiver.archive_dir)?;
            tracing::info!(
                bucket = %s3.bucket,
                prefix = %s3.prefix(),
                instance = %archive.instance(),
                "archiving to S3 with Object Lock"
            );
            let server = bind_with(&cfg, archive, metrics.clone()).await?;
            serve(cfg, server, metrics, shutdown).await
        }
    }
}

async fn serve<A: ArchiveBackend>(
    cfg: ReceiverConfig,
    server: server::Server<A>,
    metrics: ReceiverMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = server.local_addr()?;
    tracing::info!(
        %addr,
        tls = cfg.receiver.tls.is_some(),
        mtls = cfg.receiver.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        archive = %cfg.receiver.archive_dir.display(),
        "central store listening"
    );
    let stop = shutdown.child_token();
    let telemetry = async {
        let Some(addr) = cfg.telemetry.listen else {
            return Ok(());
        };
        let registry = Arc::new(metrics.registry());
        let result = crate::telemetry::serve(addr, registry, stop.clone()).await;
        if result.is_err() {
            stop.cancel();
        }
        result.map_err(|source| ReceiveError::Telemetry { addr, source })
    };
    let ledger = server.ingest.ledger().cloned();
    let retention = async {
        if let (Some(policy), Some(ledger)) = (&cfg.receiver.retention, ledger) {
            retention::run(
                cfg.receiver.archive_dir.clone(),
                policy.clone(),
                ledger,
                stop.clone(),
            )
            .await
        }
    };
    let ((), telemetry, ()) = tokio::join!(server.serve(stop.clone()), telemetry, retention);
    telemetry?;
    tracing::info!("central store stopped");
    Ok(())
}
