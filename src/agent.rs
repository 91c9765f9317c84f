//! `logveil run`: wires source → pipeline → buffer → shipper and runs them until a signal.
//!
//! Threads: the source (tailing, framing) and the pipeline (redact, batch, compress, sign,
//! seal) are OS threads joined by a bounded channel; the shipper and telemetry are tokio
//! tasks. Shutdown (SIGTERM or SIGINT) runs in phases: stop reading; the pipeline seals what
//! it has (complete lines only) with its checkpoints; the shipper drains the buffer; all of it
//! bounded by `agent.shutdown_timeout`, after which whatever is unsent stays in the buffer for
//! the next start. A second signal cuts the drain short. Exit status 0 either way.

use crate::buffer::Buffer;
use crate::config::AgentConfig;
use crate::envelope::keys;
use crate::pipeline::{Pipeline, Settings, SourceInfo};
use crate::redact::Redactor;
use crate::ship::Shipper;
use crate::telemetry::AgentMetrics;
use anyhow::{bail, Context};
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Chunks in flight between the source and the pipeline. A chunk is at most one read pass
/// of one file, so this bounds the memory between reading and sealing.
const CHANNEL_CHUNKS: usize = 4;

/// Envelope bytes beyond the payload: framing, header (host id and reason are bounded) and
/// signature.
const ENVELOPE_OVERHEAD: u64 = 8 + 1024 + 64;

/// The store's limits must admit the largest batch this agent can seal.
pub fn check_limits(batch_max_bytes: usize, limits: &crate::ship::Limits) -> anyhow::Result<()> {
    let max_body = zstd::zstd_safe::compress_bound(batch_max_bytes) as u64 + ENVELOPE_OVERHEAD;
    if batch_max_bytes as u64 > limits.max_decompressed_bytes {
        bail!(
            "sink.batch_max_bytes ({batch_max_bytes}) is above the central store's max_decompressed_bytes ({})",
            limits.max_decompressed_bytes
        );
    }
    if max_body > limits.max_body_bytes {
        bail!(
            "sink.batch_max_bytes ({batch_max_bytes}) can make envelopes of up to {max_body} bytes, above the central store's max_body_bytes ({})",
            limits.max_body_bytes
        );
    }
    Ok(())
}

pub fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let host_id = cfg.host_id();
    let key = keys::load_signing_key(&cfg.agent.signing_key)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.agent.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.agent.data_dir.display()))?;
    let buffer = Arc::new(
        Buffer::open(
            &cfg.agent.data_dir.join("buffer"),
            cfg.buffer.cache_capacity,
            cfg.buffer.max_bytes,
        )
        .with_context(|| format!("opening the buffer in {}", cfg.agent.data_dir.display()))?,
    );
    let redactor = Arc::new(Redactor::from_config(&cfg.redact)?);
    let metrics = AgentMetrics::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("logveil-io")
        .build()?;
    runtime.block_on(run_async(cfg, host_id, key, buffer, redactor, metrics))
}

async fn run_async(
    cfg: AgentConfig,
    host_id: String,
    key: ed25519_dalek::SigningKey,
    buffer: Arc<Buffer>,
    redactor: Arc<Redactor>,
    metrics: AgentMetrics,
) -> anyhow::Result<()> {
    let shipper = Shipper::new(
        cfg.sink.clone(),
        buffer.clone(),
        key.clone(),
        metrics.clone(),
    )?;
    let (client, url) = crate::ship::client::build(&cfg.sink)?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        crate::ship::fetch_limits(&client, &url),
    )
    .await
    {
        Ok(Ok(limits)) => check_limits(cfg.sink.batch_max_bytes, &limits)?,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the central store's limits; starting anyway")
        }
        Err(_) => tracing::warn!(
            "the central store did not answer GET /v1/limits in time; starting anyway"
        ),
    }

    let stop_reading = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let drained = CancellationToken::new();
    let telemetry_stop = CancellationToken::new();
    if let Some(listen) = cfg.telemetry.listen {
        let registry = Arc::new(metrics.registry());
        let stop = telemetry_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::telemetry::serve(listen, registry, stop).await {
                tracing::error!(%listen, error = %e, "telemetry server failed");
            }
        });
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CHUNKS);
    let source = crate::source::spawn(
        cfg.sources.clone(),
        buffer.checkpoints()?,
        tx,
        stop_reading.clone(),
        metrics.clone(),
    )?;
    let settings = Settings {
        host_id: host_id.clone(),
        sources: cfg
            .sources
            .iter()
            .map(|s| SourceInfo {
                name: s.name.clone(),
                format: s.format,
            })
            .collect(),
        batch_max_bytes: cfg.sink.batch_max_bytes,
        batch_max_wait: cfg.sink.batch_max_wait,
        compression_level: cfg.sink.compression_level,
        redact_threads: cfg.agent.redact_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(1)
        }),
    };
    let pipeline = Pipeline::new(settings, redactor, key, buffer.clone(), metrics.clone())?;
    let (pipe_done_tx, mut pipe_done) = tokio::sync::oneshot::channel();
    let pipe_stop = hard_stop.clone();
    std::thread::Builder::new()
        .name("logveil-pipeline".into())
        .spawn(move || {
            let _ = pipe_done_tx.send(pipeline.run(rx, pipe_stop));
        })?;
    let ship_task = tokio::spawn(shipper.run(drained.clone(), hard_stop.clone()));
    tracing::info!(host_id = %host_id, sources = cfg.sources.len(), "agent started");

    let mut pipeline_result = None;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = sigint.recv() => tracing::info!("SIGINT: draining"),
        r = &mut pipe_done => pipeline_result = Some(r),
    }
    if let Some(r) = pipeline_result {
        // The pipeline only ends on its own when something is badly wrong.
        stop_reading.cancel();
        hard_stop.cancel();
        let err = match r {
            Ok(Err(e)) => anyhow::Error::from(e),
            _ => anyhow::anyhow!("the pipeline thread stopped unexpectedly"),
        };
        return Err(err.context("pipeline failed"));
    }

    // Phase 1: stop reading. Phase 2: seal. Phase 3: drain. All under one deadline.
    stop_reading.cancel();
    let deadline = tokio::time::sleep(cfg.agent.shutdown_timeout);
    tokio::pin!(deadline);
    let hard = hard_stop.clone();
    let mut drain = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || source.join())
            .await
            .ok();
        let sealed = pipe_done.await;
        drained.cancel();
        let shipped = ship_task.await;
        (sealed, shipped)
    });
    let outcome = tokio::select! {
        r = &mut drain => Some(r),
        _ = &mut deadline => None,
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
    };
    let outcome = match outcome {
        Some(r) => r,
        None => {
            tracing::warn!("drain deadline reached; unsent batches stay in the buffer");
            hard.cancel();
            drain.await
        }
    };
    telemetry_stop.cancel();
    buffer.flush()?;
    if let Ok((Ok(Err(e)), _)) = &outcome {
        tracing::error!(error = %e, "sealing failed during shutdown");
    }
    if let Ok((_, Ok(Err(e)))) = &outcome {
        tracing::error!(error = %e, "shipping failed during shutdown");
    }
    let usage = buffer.usage();
    tracing::info!(
        unsent_batches = usage.batches,
        unsent_bytes = usage.bytes,
        "agent stopped"
    );
    Ok(())
}
