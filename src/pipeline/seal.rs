//! The sealer: turns a full batch payload into a signed envelope and stores it.
//!
//! Runs on its own thread, fed by the batcher through a channel of capacity one, so
//! compressing and signing batch N overlaps redacting batch N+1 (two cores busy instead of
//! one). Batches arrive in order and are sealed in order: the chain position (seq, link)
//! lives here and nowhere else, one chain per stream. Sealing = zstd-compress, build and sign the header, wait for
//! buffer space (this wait is what pauses reading when the buffer is full, since the batcher
//! then blocks on the channel and the source on its own), then [`Buffer::seal_streams`] the
//! envelopes (one per stream with records: `default`, and `legal` when an exception matched)
//! with the checkpoints of every file up to the batch's last line, in one transaction.

use super::PipelineError;
use crate::buffer::{Buffer, ChainState, Sealing};
use crate::envelope::{self, Header, Kind};
use crate::source::Checkpoint;
use crate::telemetry::AgentMetrics;
use crossbeam_channel::Receiver;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The records of one stream in a closed batch.
pub(super) struct StreamBatch {
    pub stream: &'static str,
    pub payload: Vec<u8>,
    pub records: u64,
    pub first_ts: i64,
    pub last_ts: i64,
}

/// A closed batch on its way to the buffer.
pub(super) struct Batch {
    /// One payload per stream; empty ones are not sealed.
    pub streams: Vec<StreamBatch>,
    /// Where each file resumes after this batch. A batch with no records only moves
    /// checkpoints (a truncation reset, or lines dropped by `drop_record`).
    pub checkpoints: Vec<Checkpoint>,
    /// Checkpoints of files gone for good, deleted after this batch is stored.
    pub forget: Vec<crate::source::FileId>,
}

/// One stream's envelope of a batch, signed, before it is stored.
struct Sealed {
    stream: &'static str,
    seq: u64,
    bytes: Vec<u8>,
    link: [u8; 32],
    records: u64,
}

pub(super) struct Sealer {
    pub host_id: String,
    pub key: SigningKey,
    pub key_id: String,
    pub policy_hash: [u8; 32],
    pub buffer: Arc<Buffer>,
    pub metrics: AgentMetrics,
    pub compressor: zstd::bulk::Compressor<'static>,
    /// Each stream's chain position: the seq and link its next envelope takes.
    pub chains: HashMap<&'static str, ChainState>,
}

impl Sealer {
    /// Seals batches until the batcher hangs up, or until `hard_stop` interrupts a wait
    /// for buffer space (the unsealed batch's lines are read again after restart).
    pub fn run(
        mut self,
        rx: Receiver<Batch>,
        hard_stop: &CancellationToken,
    ) -> Result<(), PipelineError> {
        for batch in rx {
            if !self.seal(batch, hard_stop)? {
                return Ok(());
            }
        }
        Ok(())
    }

    fn seal(&mut self, batch: Batch, hard_stop: &CancellationToken) -> Result<bool, PipelineError> {
        if batch.streams.iter().all(|s| s.records == 0) {
            self.buffer.save_checkpoints(&batch.checkpoints)?;
            self.buffer.forget_checkpoints(&batch.forget)?;
            return Ok(true);
        }
        // One envelope per stream with records, each continuing its own chain.
        let mut sealed: Vec<Sealed> = Vec::new();
        for s in batch.streams.iter().filter(|s| s.records > 0) {
            let chain = self.chains.get(s.stream).copied().unwrap_or(ChainState {
                next_seq: 1,
                link: envelope::GENESIS_PREV_HASH,
            });
            let compressed = self
                .compressor
                .compress(&s.payload)
                .map_err(PipelineError::Compress)?;
            let header = Header {
                kind: Kind::Data,
                host_id: self.host_id.clone(),
                key_id: self.key_id.clone(),
                stream: s.stream.to_string(),
                chain_id: self.buffer.chain_id(),
                seq: chain.next_seq,
                prev_hash: chain.link,
                payload_sha256: envelope::sha256(&compressed),
                payload_len: compressed.len() as u64,
                decompressed_len: s.payload.len() as u64,
                record_count: s.records,
                first_ts_ns: s.first_ts,
                last_ts_ns: s.last_ts,
                policy_hash: self.policy_hash,
                refused_link: [0; 32],
                refused_payload_sha256: [0; 32],
                reason: String::new(),
            };
            let (bytes, link) = envelope::seal(&header, &compressed, &self.key);
            sealed.push(Sealed {
                stream: s.stream,
                seq: chain.next_seq,
                bytes,
                link,
                records: s.records,
            });
        }
        let total: u64 = sealed.iter().map(|s| s.bytes.len() as u64).sum();
        if !self.buffer.has_space(total) {
            self.metrics.buffer_full_pauses.inc();
            tracing::info!(
                buffer_bytes = self.buffer.usage().bytes,
                "buffer full: reading paused until the central store acknowledges batches"
            );
        }
        if !self
            .buffer
            .wait_for_space(total, &|| hard_stop.is_cancelled())
        {
            return Ok(false);
        }
        let sealings: Vec<Sealing<'_>> = sealed
            .iter()
            .map(|s| Sealing {
                stream: s.stream,
                seq: s.seq,
                next_link: s.link,
                envelope: &s.bytes,
            })
            .collect();
        self.buffer.seal_streams(&sealings, &batch.checkpoints)?;
        self.buffer.forget_checkpoints(&batch.forget)?;
        for s in &sealed {
            self.metrics.batches_sealed.inc();
            tracing::debug!(
                stream = s.stream,
                seq = s.seq,
                records = s.records,
                bytes = s.bytes.len(),
                "batch sealed"
            );
            self.chains.insert(
                s.stream,
                ChainState {
                    next_seq: s.seq + 1,
                    link: s.link,
                },
            );
        }
        Ok(true)
    }
}
