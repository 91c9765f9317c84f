//! The sealer: turns a full batch payload into a signed envelope and stores it.
//!
//! Runs on its own thread, fed by the batcher through a channel of capacity one, so
//! compressing and signing batch N overlaps redacting batch N+1 (two cores busy instead of
//! one). Batches arrive in order and are sealed in order: the chain position (seq, link)
//! lives here and nowhere else. Sealing = zstd-compress, build and sign the header, wait for
//! buffer space (this wait is what pauses reading when the buffer is full, since the batcher
//! then blocks on the channel and the source on its own), then [`Buffer::seal`] the envelope
//! with the checkpoints of every file up to the batch's last line.

use super::{PipelineError, DEFAULT_STREAM};
use crate::buffer::Buffer;
use crate::envelope::{self, Header, Kind};
use crate::source::Checkpoint;
use crate::telemetry::AgentMetrics;
use crossbeam_channel::Receiver;
use ed25519_dalek::SigningKey;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A closed batch on its way to the buffer.
pub(super) struct Batch {
    pub payload: Vec<u8>,
    pub records: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    /// Where each file resumes after this batch. A batch with no records only moves
    /// checkpoints (a truncation reset).
    pub checkpoints: Vec<Checkpoint>,
    /// Checkpoints of files gone for good, deleted after this batch is stored.
    pub forget: Vec<crate::source::FileId>,
}

pub(super) struct Sealer {
    pub host_id: String,
    pub key: SigningKey,
    pub key_id: String,
    pub policy_hash: [u8; 32],
    pub buffer: Arc<Buffer>,
    pub metrics: AgentMetrics,
    pub compressor: zstd::bulk::Compressor<'static>,
    pub seq: u64,
    pub link: [u8; 32],
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
        if batch.records == 0 {
            self.buffer.save_checkpoints(&batch.checkpoints)?;
            self.buffer.forget_checkpoints(&batch.forget)?;
            return Ok(true);
        }
        let compressed = self
            .compressor
            .compress(&batch.payload)
            .map_err(PipelineError::Compress)?;
        let header = Header {
            kind: Kind::Data,
            host_id: self.host_id.clone(),
            key_id: self.key_id.clone(),
            stream: DEFAULT_STREAM.to_string(),
            chain_id: self.buffer.chain_id(),
            seq: self.seq,
            prev_hash: self.link,
            payload_sha256: envelope::sha256(&compressed),
            payload_len: compressed.len() as u64,
            decompressed_len: batch.payload.len() as u64,
            record_count: batch.records,
            first_ts_ns: batch.first_ts,
            last_ts_ns: batch.last_ts,
            policy_hash: self.policy_hash,
            refused_link: [0; 32],
            refused_payload_sha256: [0; 32],
            reason: String::new(),
        };
        let (bytes, link) = envelope::seal(&header, &compressed, &self.key);
        if !self.buffer.has_space(bytes.len() as u64) {
            self.metrics.buffer_full_pauses.inc();
            tracing::info!(
                buffer_bytes = self.buffer.usage().bytes,
                "buffer full: reading paused until the central store acknowledges batches"
            );
        }
        if !self
            .buffer
            .wait_for_space(bytes.len() as u64, &|| hard_stop.is_cancelled())
        {
            return Ok(false);
        }
        self.buffer
            .seal(DEFAULT_STREAM, self.seq, link, &bytes, &batch.checkpoints)?;
        self.buffer.forget_checkpoints(&batch.forget)?;
        self.metrics.batches_sealed.inc();
        tracing::debug!(
            seq = self.seq,
            records = batch.records,
            bytes = bytes.len(),
            "batch sealed"
        );
        self.seq += 1;
        self.link = link;
        Ok(true)
    }
}
