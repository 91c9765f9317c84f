//! The pipeline: turns the source's chunks into redacted records, packs them into batches
//! bounded by bytes and by time, and seals each batch into the buffer.
//!
//! Runs on its own thread. For every line: decode (see [`record::decode_line`]), redact,
//! append one JSON record to the open batch. A batch is sealed when the next record would
//! push its payload past `batch_max_bytes`, when `batch_max_wait` has passed since its first
//! record, or when the source has stopped (shutdown). Sealing = zstd-compress, build and sign
//! the envelope, wait for buffer space (this wait is what pauses reading when the buffer is
//! full), then [`Buffer::seal`] the envelope together with the checkpoint of every file up
//! to the last line in the batch.
//!
//! Nothing unredacted leaves this stage: records are built from redacted text only.

pub mod record;

use crate::buffer::Buffer;
use crate::config::Format;
use crate::envelope::{self, Header, Kind};
use crate::redact::{Counts, Redactor};
use crate::source::{Checkpoint, Chunk, FileId};
use crate::telemetry::AgentMetrics;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The routing stream every record goes to for now.
pub const DEFAULT_STREAM: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
    #[error("compressing a batch failed: {0}")]
    Compress(std::io::Error),
}

/// What the pipeline needs to know of each source.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub name: String,
    pub format: Format,
}

pub struct Settings {
    pub host_id: String,
    pub sources: Vec<SourceInfo>,
    pub batch_max_bytes: usize,
    pub batch_max_wait: Duration,
    pub compression_level: i32,
}

pub struct Pipeline {
    settings: Settings,
    redactor: Arc<Redactor>,
    key: SigningKey,
    key_id: String,
    buffer: Arc<Buffer>,
    metrics: AgentMetrics,
    // The open batch.
    payload: Vec<u8>,
    records: u64,
    first_ts: i64,
    last_ts: i64,
    opened: Option<Instant>,
    checkpoints: HashMap<FileId, Checkpoint>,
    chain_seq: u64,
    chain_link: [u8; 32],
    compressor: zstd::bulk::Compressor<'static>,
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Pipeline {
    pub fn new(
        settings: Settings,
        redactor: Arc<Redactor>,
        key: SigningKey,
        buffer: Arc<Buffer>,
        metrics: AgentMetrics,
    ) -> Result<Self, PipelineError> {
        let state = buffer.chain_state(DEFAULT_STREAM)?;
        let compressor = zstd::bulk::Compressor::new(settings.compression_level)
            .map_err(PipelineError::Compress)?;
        Ok(Pipeline {
            key_id: envelope::keys::key_id(&key.verifying_key()),
            payload: Vec::with_capacity(settings.batch_max_bytes),
            settings,
            redactor,
            key,
            buffer,
            metrics,
            records: 0,
            first_ts: 0,
            last_ts: 0,
            opened: None,
            checkpoints: HashMap::new(),
            chain_seq: state.next_seq,
            chain_link: state.link,
            compressor,
        })
    }

    /// Runs until the source side hangs up (then seals what it has) or `hard_stop` is
    /// cancelled while waiting for buffer space (then the open batch is dropped unsealed:
    /// its lines are read again after restart, since their checkpoints did not advance).
    pub fn run(
        mut self,
        rx: Receiver<Chunk>,
        hard_stop: CancellationToken,
    ) -> Result<(), PipelineError> {
        loop {
            let wait = match self.opened {
                Some(t) => self.settings.batch_max_wait.saturating_sub(t.elapsed()),
                None => Duration::from_millis(500),
            };
            match rx.recv_timeout(wait) {
                Ok(chunk) => {
                    if !self.add_chunk(chunk, &hard_stop)? {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.seal(&hard_stop)?;
                    return Ok(());
                }
            }
            if self
                .opened
                .is_some_and(|t| t.elapsed() >= self.settings.batch_max_wait)
                && !self.seal(&hard_stop)?
            {
                return Ok(());
            }
        }
    }

    /// Returns false when a hard stop interrupted sealing.
    fn add_chunk(
        &mut self,
        chunk: Chunk,
        hard_stop: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        let info = &self.settings.sources[chunk.source];
        // The part of every record that is the same for the whole chunk.
        let mut prefix = Vec::with_capacity(128);
        prefix.extend_from_slice(b"{\"host\":");
        record::push_json_str(&mut prefix, &self.settings.host_id);
        prefix.extend_from_slice(b",\"source\":");
        record::push_json_str(&mut prefix, &info.name);
        prefix.extend_from_slice(b",\"stream\":\"");
        prefix.extend_from_slice(DEFAULT_STREAM.as_bytes());
        prefix.extend_from_slice(b"\",\"path\":");
        record::push_json_str(&mut prefix, &chunk.path.to_string_lossy());
        prefix.extend_from_slice(b",\"offset\":");
        let format = info.format;

        let mut rec = Vec::with_capacity(512);
        let mut line_counts = Counts::default();
        let mut ts_cache: Option<(SystemTime, String)> = None;
        for line in &chunk.lines {
            rec.clear();
            line_counts.clear();
            let (text, escaped) = record::decode_line(&line.bytes);
            let body = self.redactor.redact(&text, &mut line_counts);
            rec.extend_from_slice(&prefix);
            rec.extend_from_slice(itoa_u64(line.offset).as_bytes());
            rec.extend_from_slice(b",\"timestamp\":\"");
            let event_ts = line.event.and_then(|e| e.timestamp);
            if let Some(t) = event_ts {
                rec.extend_from_slice(humantime::format_rfc3339_nanos(t).to_string().as_bytes());
                rec.extend_from_slice(b"\",\"observed_timestamp\":\"");
            }
            match &ts_cache {
                Some((t, s)) if *t == line.read_at => rec.extend_from_slice(s.as_bytes()),
                _ => {
                    let s = humantime::format_rfc3339_micros(line.read_at).to_string();
                    rec.extend_from_slice(s.as_bytes());
                    ts_cache = Some((line.read_at, s));
                }
            }
            rec.push(b'"');
            if let Some(e) = line.event {
                rec.extend_from_slice(b",\"attributes\":{\"log.iostream\":\"");
                rec.extend_from_slice(e.iostream.as_str().as_bytes());
                rec.extend_from_slice(b"\"}");
            }
            rec.extend_from_slice(b",\"body\":");
            record::push_json_str(&mut rec, &body);
            if escaped {
                rec.extend_from_slice(b",\"body_encoding\":\"escaped\"");
            }
            if let Some((index, last)) = line.part {
                rec.extend_from_slice(format!(",\"part\":{index},\"last_part\":{last}").as_bytes());
            }
            if format == Format::Json
                && serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err()
            {
                self.metrics.json_parse_errors.inc();
                rec.extend_from_slice(b",\"json_error\":true");
            }
            if !line_counts.is_empty() {
                rec.extend_from_slice(b",\"redactions\":{");
                for (i, (det, n)) in line_counts.0.iter().enumerate() {
                    if i > 0 {
                        rec.push(b',');
                    }
                    record::push_json_str(&mut rec, self.redactor.kind(*det));
                    rec.push(b':');
                    rec.extend_from_slice(itoa_u64(u64::from(*n)).as_bytes());
                    self.metrics
                        .count_redaction(self.redactor.kind(*det), u64::from(*n));
                }
                rec.push(b'}');
            }
            rec.extend_from_slice(b"}\n");

            if !self.payload.is_empty()
                && self.payload.len() + rec.len() > self.settings.batch_max_bytes
                && !self.seal(hard_stop)?
            {
                return Ok(false);
            }
            if self.opened.is_none() {
                self.opened = Some(Instant::now());
                self.first_ts = unix_nanos(line.read_at);
            }
            self.payload.extend_from_slice(&rec);
            self.records += 1;
            self.last_ts = unix_nanos(line.read_at);
            let mut cp = chunk.checkpoint.clone();
            cp.offset = line.end;
            self.checkpoints.insert(cp.id, cp);
        }
        if !chunk.forget.is_empty() {
            for id in &chunk.forget {
                self.checkpoints.remove(id);
            }
            self.buffer.forget_checkpoints(&chunk.forget)?;
            if chunk.forget.contains(&chunk.checkpoint.id) {
                return Ok(true);
            }
        }
        // The chunk's own checkpoint can be past its last line (a reset after truncation).
        let cp = chunk.checkpoint;
        let changed = self.checkpoints.get(&cp.id) != Some(&cp);
        self.checkpoints.insert(cp.id, cp);
        if changed && self.opened.is_none() {
            // Nothing to ship, but the new position must become durable too.
            self.opened = Some(Instant::now());
        }
        Ok(true)
    }

    /// Seals the open batch (if any). Returns false when a hard stop interrupted the wait
    /// for buffer space.
    fn seal(&mut self, hard_stop: &CancellationToken) -> Result<bool, PipelineError> {
        if self.opened.is_none() {
            return Ok(true);
        }
        if self.records == 0 {
            // Only checkpoints changed (e.g. a truncation reset): persist them alone.
            let cps: Vec<Checkpoint> = self.checkpoints.drain().map(|(_, c)| c).collect();
            self.buffer.save_checkpoints(&cps)?;
            self.opened = None;
            return Ok(true);
        }
        let compressed = self
            .compressor
            .compress(&self.payload)
            .map_err(PipelineError::Compress)?;
        let header = Header {
            kind: Kind::Data,
            host_id: self.settings.host_id.clone(),
            key_id: self.key_id.clone(),
            stream: DEFAULT_STREAM.to_string(),
            chain_id: self.buffer.chain_id(),
            seq: self.chain_seq,
            prev_hash: self.chain_link,
            payload_sha256: envelope::sha256(&compressed),
            payload_len: compressed.len() as u64,
            decompressed_len: self.payload.len() as u64,
            record_count: self.records,
            first_ts_ns: self.first_ts,
            last_ts_ns: self.last_ts,
            policy_hash: self.redactor.policy_hash(),
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
        let cps: Vec<Checkpoint> = self.checkpoints.drain().map(|(_, c)| c).collect();
        self.buffer
            .seal(DEFAULT_STREAM, self.chain_seq, link, &bytes, &cps)?;
        self.metrics.batches_sealed.inc();
        tracing::debug!(
            seq = self.chain_seq,
            records = self.records,
            bytes = bytes.len(),
            "batch sealed"
        );
        self.chain_seq += 1;
        self.chain_link = link;
        self.payload.clear();
        self.records = 0;
        self.opened = None;
        Ok(true)
    }
}

fn itoa_u64(v: u64) -> String {
    v.to_string()
}
