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
//! Nothing unredacted leaves this stage: records are built from redacted text only. The
//! redaction engine ([`Redactor::redact_record`]) reads each record with its source's
//! format; a record it cannot scan arrives masked whole (counted as `unscannable`, logged
//! with source and offset only), and a record whose finding has mode `drop_record` is not
//! shipped at all, though its offset still advances.

pub mod record;
mod seal;

use crate::buffer::Buffer;
use crate::config::Format;
use crate::envelope;
use crate::redact::{Counts, Redactor};
use crate::source::{Checkpoint, Chunk, FileId};
use crate::telemetry::AgentMetrics;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ed25519_dalek::SigningKey;
use seal::{Batch, Sealer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The routing stream every record goes to for now.
pub const DEFAULT_STREAM: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot start the sealer thread: {0}")]
    Thread(std::io::Error),
    #[error("the sealer thread panicked")]
    SealerPanicked,
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
    metrics: AgentMetrics,
    /// Taken by `run`, which starts it on its own thread.
    sealer: Option<Sealer>,
    /// To the sealer thread, while `run` is running.
    to_sealer: Option<Sender<Batch>>,
    // The open batch.
    payload: Vec<u8>,
    records: u64,
    first_ts: i64,
    last_ts: i64,
    opened: Option<Instant>,
    checkpoints: HashMap<FileId, Checkpoint>,
    /// Checkpoints to delete once the batches before them are sealed.
    forget: Vec<FileId>,
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
        let sealer = Sealer {
            host_id: settings.host_id.clone(),
            key_id: envelope::keys::key_id(&key.verifying_key()),
            key,
            policy_hash: redactor.policy_hash(),
            buffer,
            metrics: metrics.clone(),
            compressor,
            seq: state.next_seq,
            link: state.link,
        };
        Ok(Pipeline {
            payload: Vec::with_capacity(settings.batch_max_bytes),
            settings,
            redactor,
            metrics,
            sealer: Some(sealer),
            to_sealer: None,
            records: 0,
            first_ts: 0,
            last_ts: 0,
            opened: None,
            checkpoints: HashMap::new(),
            forget: Vec::new(),
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
        let sealer = self.sealer.take().expect("run is called once");
        let (tx, sealer_rx) = crossbeam_channel::bounded(1);
        self.to_sealer = Some(tx);
        std::thread::scope(|scope| {
            let stop = &hard_stop;
            let sealing = std::thread::Builder::new()
                .name("logveil-sealer".into())
                .spawn_scoped(scope, move || sealer.run(sealer_rx, stop))
                .map_err(PipelineError::Thread)?;
            let batching = self.batch(rx, &hard_stop);
            // Hang up so the sealer finishes what it was given, then ends.
            self.to_sealer = None;
            let sealed = sealing.join().unwrap_or(Err(PipelineError::SealerPanicked));
            batching.and(sealed)
        })
    }

    fn batch(
        &mut self,
        rx: Receiver<Chunk>,
        hard_stop: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let hard_stop = hard_stop.clone();
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
        let info = self.settings.sources[chunk.source].clone();
        // The part of every record that is the same for the whole chunk.
        let mut prefix = Vec::with_capacity(128);
        prefix.extend_from_slice(b"{\"host\":");
        record::push_json_str(&mut prefix, &self.settings.host_id);
        prefix.extend_from_slice(b",\"source\":");
        record::push_json_str(&mut prefix, &info.name);
        prefix.extend_from_slice(b",\"stream\":\"");
        prefix.extend_from_slice(DEFAULT_STREAM.as_bytes());
        prefix.extend_from_slice(b"\",\"path\":");
        // File names can hold PII too (per-customer exports): the path is redacted like a line.
        let path = chunk.path.to_string_lossy();
        let path = self.redactor.redact(&path, &mut Counts::default());
        record::push_json_str(&mut prefix, &path);
        prefix.extend_from_slice(b",\"offset\":");
        let format = info.format;

        let mut rec = Vec::with_capacity(512);
        let mut line_counts = Counts::default();
        let mut ts_cache: Option<(SystemTime, String)> = None;
        for line in &chunk.lines {
            rec.clear();
            line_counts.clear();
            let redactor = &self.redactor;
            let (mut unscannable, mut dropped) = (false, false);
            let (body, escaped) = record::redact_line(&line.bytes, |t| {
                let red = redactor.redact_record(t, format, &mut line_counts, None);
                unscannable |= red.unscannable;
                dropped |= red.dropped;
                red.text
            });
            if unscannable {
                tracing::warn!(
                    source = %info.name,
                    offset = line.offset,
                    "record could not be scanned for PII: shipped masked whole"
                );
            }
            if dropped {
                // drop_record: nothing is shipped, but the line counts as read.
                for (det, n) in &line_counts.0 {
                    self.metrics
                        .count_redaction(self.redactor.kind(*det), u64::from(*n));
                }
                let mut cp = chunk.checkpoint.clone();
                cp.offset = line.end;
                self.checkpoints.insert(cp.id, cp);
                if self.opened.is_none() {
                    self.opened = Some(Instant::now());
                }
                continue;
            }
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
            // Forgotten by the sealer after the batches before it: an earlier batch still
            // on its way must not bring a forgotten checkpoint back.
            self.forget.extend_from_slice(&chunk.forget);
            if self.opened.is_none() {
                self.opened = Some(Instant::now());
            }
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

    /// Hands the open batch (if any) to the sealer. Returns false when the sealer has
    /// stopped (a hard stop interrupted its wait for buffer space).
    fn seal(&mut self, _hard_stop: &CancellationToken) -> Result<bool, PipelineError> {
        if self.opened.is_none() {
            return Ok(true);
        }
        let batch = Batch {
            payload: std::mem::replace(
                &mut self.payload,
                Vec::with_capacity(self.settings.batch_max_bytes),
            ),
            records: self.records,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            checkpoints: self.checkpoints.drain().map(|(_, c)| c).collect(),
            forget: std::mem::take(&mut self.forget),
        };
        self.records = 0;
        self.opened = None;
        let to_sealer = self.to_sealer.as_ref().expect("sealer running");
        Ok(to_sealer.send(batch).is_ok())
    }
}

fn itoa_u64(v: u64) -> String {
    v.to_string()
}
