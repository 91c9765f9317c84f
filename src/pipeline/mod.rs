//! The pipeline: turns the source's chunks into redacted records, packs them into batches
//! bounded by bytes and by time, and seals each batch into the buffer.
//!
//! Runs on its own thread. For every line: decode (see [`record::decode_line`]), redact,
//! append one JSON record to the open batch. Redaction is the costly step, so the lines of
//! a chunk are rendered on a pool of `agent.redact_threads` workers (rayon), collected in
//! their order, then appended to the batch one by one on this thread: records, batches and
//! checkpoints stay in file order whatever the number of workers. A batch is sealed when the next record would
//! push its payload past `batch_max_bytes`, when `batch_max_wait` has passed since its first
//! record, or when the source has stopped (shutdown). Sealing = zstd-compress, build and sign
//! the envelope, wait for buffer space (this wait is what pauses reading when the buffer is
//! full), then [`Buffer::seal`] the envelope together with the checkpoint of every file up
//! to the last line in the batch.
//!
//! # Streams
//! Every record goes to the `default` stream. A record that matches a legal exception
//! ([`crate::redact::legal`]) also gives, per matching exception, one record on the `legal`
//! stream holding only the exception's fields, lifted from the raw line before redaction and
//! sealed to the compliance public key (see [`record`] for its fields); the `default` record
//! is redacted in full as always. A batch holds one payload per stream; the sealer makes one
//! envelope per non-empty payload, each continuing its own stream's chain, and stores them
//! with the batch's checkpoints in one buffer transaction, so after a crash each line is on
//! each of its streams exactly once.
//!
//! Nothing unredacted leaves this stage: records are built from redacted text only (the
//! lifted legal fields exist in plaintext only until sealed, in memory). The
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
use crate::source::{Checkpoint, Chunk, FileId, Line};
use crate::telemetry::AgentMetrics;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ed25519_dalek::SigningKey;
use rayon::prelude::*;
use seal::{Batch, Sealer, StreamBatch};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The routing stream every record goes to.
pub const DEFAULT_STREAM: &str = "default";
/// The stream of sealed legal-exception fields.
pub use crate::redact::legal::LEGAL_STREAM;

/// The streams a batch can hold, in this order.
const STREAMS: [&str; 2] = [DEFAULT_STREAM, LEGAL_STREAM];
const DEFAULT: usize = 0;
const LEGAL: usize = 1;

/// The open payload of one stream.
#[derive(Default)]
struct OpenStream {
    payload: Vec<u8>,
    records: u64,
    first_ts: i64,
    last_ts: i64,
}

impl OpenStream {
    fn push(&mut self, rec: &[u8], ts: i64) {
        if self.records == 0 {
            self.first_ts = ts;
        }
        self.payload.extend_from_slice(rec);
        self.records += 1;
        self.last_ts = ts;
    }

    /// Whether adding `add` bytes would push a non-empty payload past `max`.
    fn would_overflow(&self, add: usize, max: usize) -> bool {
        !self.payload.is_empty() && self.payload.len() + add > max
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot start a pipeline thread: {0}")]
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
    /// Redaction worker threads; 1: redact on the pipeline thread.
    pub redact_threads: usize,
}

/// Chunks with fewer lines are redacted on the pipeline thread: sharing them costs more
/// than it saves.
const PARALLEL_MIN_LINES: usize = 32;

pub struct Pipeline {
    settings: Settings,
    redactor: Arc<Redactor>,
    metrics: AgentMetrics,
    /// Redaction workers (records keep their order); none with `redact_threads = 1`.
    workers: Option<rayon::ThreadPool>,
    /// Taken by `run`, which starts it on its own thread.
    sealer: Option<Sealer>,
    /// To the sealer thread, while `run` is running.
    to_sealer: Option<Sender<Batch>>,
    // The open batch: one payload per stream of [`STREAMS`].
    open: [OpenStream; 2],
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
        let mut chains = HashMap::new();
        for stream in STREAMS {
            chains.insert(stream, buffer.chain_state(stream)?);
        }
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
            chains,
        };
        let mut open: [OpenStream; 2] = Default::default();
        open[DEFAULT].payload = Vec::with_capacity(settings.batch_max_bytes);
        let workers = if settings.redact_threads > 1 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(settings.redact_threads)
                .thread_name(|i| format!("logveil-redact-{i}"))
                .build()
                .map_err(|e| PipelineError::Thread(std::io::Error::other(e)))?
                .into()
        } else {
            None
        };
        Ok(Pipeline {
            workers,
            open,
            settings,
            redactor,
            metrics,
            sealer: Some(sealer),
            to_sealer: None,
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
        let rendered = self.render_chunk(&chunk);
        for (line, Rendered { rec, legal }) in chunk.lines.iter().zip(rendered) {
            let max = self.settings.batch_max_bytes;
            if (self.open[DEFAULT].would_overflow(rec.len(), max)
                || self.open[LEGAL].would_overflow(legal.len(), max))
                && !self.seal(hard_stop)?
            {
                return Ok(false);
            }
            if self.opened.is_none() {
                self.opened = Some(Instant::now());
            }
            let ts = unix_nanos(line.read_at);
            if !rec.is_empty() {
                self.open[DEFAULT].push(&rec, ts);
            }
            // One legal record per matching exception; each ends with its newline.
            for r in legal.split_inclusive(|&b| b == b'\n') {
                self.open[LEGAL].push(r, ts);
                self.metrics.legal_records.inc();
            }
            let mut cp = chunk.checkpoint.clone();
            cp.offset = line.end;
            cp.shipped_to = line.shipped_to;
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

    /// Redacts and renders every line of `chunk`, in order: on the redaction workers when
    /// the chunk is big enough to share, else on this thread.
    fn render_chunk(&self, chunk: &Chunk) -> Vec<Rendered> {
        let info = &self.settings.sources[chunk.source];
        // File names can hold PII too (per-customer exports): the path is redacted like a line.
        let path = chunk.path.to_string_lossy();
        let path = self.redactor.redact(&path, &mut Counts::default());
        // The part of every record of a stream that is the same for the whole chunk.
        let prefix_of = |stream: &str| {
            let mut prefix = Vec::with_capacity(128);
            prefix.extend_from_slice(b"{\"host\":");
            record::push_json_str(&mut prefix, &self.settings.host_id);
            prefix.extend_from_slice(b",\"source\":");
            record::push_json_str(&mut prefix, &info.name);
            prefix.extend_from_slice(b",\"stream\":");
            record::push_json_str(&mut prefix, stream);
            prefix.extend_from_slice(b",\"path\":");
            record::push_json_str(&mut prefix, &path);
            prefix.extend_from_slice(b",\"offset\":");
            prefix
        };
        let lift = self.redactor.exceptions().applies_to(&info.name);
        let render = Render {
            redactor: &self.redactor,
            metrics: &self.metrics,
            source: &info.name,
            format: info.format,
            prefix: prefix_of(DEFAULT_STREAM),
            legal_prefix: if lift {
                prefix_of(LEGAL_STREAM)
            } else {
                Vec::new()
            },
            lift,
            batch_max_bytes: self.settings.batch_max_bytes,
        };
        match &self.workers {
            Some(pool) if chunk.lines.len() >= PARALLEL_MIN_LINES => pool.install(|| {
                chunk
                    .lines
                    .par_iter()
                    .with_min_len(PARALLEL_MIN_LINES / 2)
                    .map(|line| render.line(line))
                    .collect()
            }),
            _ => chunk.lines.iter().map(|line| render.line(line)).collect(),
        }
    }

    /// Hands the open batch (if any) to the sealer. Returns false when the sealer has
    /// stopped (a hard stop interrupted its wait for buffer space).
    fn seal(&mut self, _hard_stop: &CancellationToken) -> Result<bool, PipelineError> {
        if self.opened.is_none() {
            return Ok(true);
        }
        let max = self.settings.batch_max_bytes;
        let streams = STREAMS
            .iter()
            .zip(self.open.iter_mut())
            .map(|(stream, open)| {
                // The default payload is almost always full-sized; the legal one rarely is.
                let fresh = OpenStream {
                    payload: Vec::with_capacity(if *stream == DEFAULT_STREAM { max } else { 0 }),
                    ..OpenStream::default()
                };
                let o = std::mem::replace(open, fresh);
                StreamBatch {
                    stream,
                    payload: o.payload,
                    records: o.records,
                    first_ts: o.first_ts,
                    last_ts: o.last_ts,
                }
            })
            .collect();
        let batch = Batch {
            streams,
            checkpoints: self.checkpoints.drain().map(|(_, c)| c).collect(),
            forget: std::mem::take(&mut self.forget),
        };
        self.opened = None;
        let to_sealer = self.to_sealer.as_ref().expect("sealer running");
        Ok(to_sealer.send(batch).is_ok())
    }
}

/// A line made ready for the open batch: its `default` record (empty when dropped) and its
/// `legal` records (each ending with a newline; usually none).
struct Rendered {
    rec: Vec<u8>,
    legal: Vec<u8>,
}

/// What rendering the lines of one chunk needs; shared by the redaction workers.
struct Render<'a> {
    redactor: &'a Redactor,
    metrics: &'a AgentMetrics,
    source: &'a str,
    format: Format,
    prefix: Vec<u8>,
    legal_prefix: Vec<u8>,
    lift: bool,
    batch_max_bytes: usize,
}

impl Render<'_> {
    /// Lifts legal-exception fields (sealed), redacts, and renders one line's records.
    /// Nothing unredacted is in what it returns.
    fn line(&self, line: &Line) -> Rendered {
        let format = self.format;
        let mut rec = Vec::with_capacity(self.prefix.len() + line.bytes.len() + 192);
        let mut legal: Vec<u8> = Vec::new();
        let mut line_counts = Counts::default();
        // `"timestamp":"…"` and, for an event time, `"observed_timestamp":"…"`.
        let mut times = Vec::with_capacity(96);
        times.extend_from_slice(b",\"timestamp\":\"");
        let event_ts = line.event.and_then(|e| e.timestamp);
        if let Some(t) = event_ts {
            times.extend_from_slice(humantime::format_rfc3339_nanos(t).to_string().as_bytes());
            times.extend_from_slice(b"\",\"observed_timestamp\":\"");
        }
        times.extend_from_slice(
            humantime::format_rfc3339_micros(line.read_at)
                .to_string()
                .as_bytes(),
        );
        times.push(b'"');

        // Legal exceptions: lift and seal their fields from the raw line, before
        // redaction. Whole lines only (a part of a split line is no record).
        if self.lift && line.part.is_none() {
            if let Ok(text) = std::str::from_utf8(&line.bytes) {
                let exceptions = self.redactor.exceptions();
                for lifted in exceptions.lift(self.source, format, text) {
                    let Some(sealed) = exceptions.seal(&lifted) else {
                        tracing::error!(
                            source = %self.source,
                            offset = line.offset,
                            exception = %lifted.exception.name,
                            "sealing the fields of a legal exception failed: not shipped"
                        );
                        continue;
                    };
                    let start = legal.len();
                    record::push_legal_record(
                        &mut legal,
                        &self.legal_prefix,
                        &record::LegalTags {
                            offset: line.offset,
                            times: &times,
                            exception: lifted.exception,
                            key_id: exceptions.key_id().unwrap_or_default(),
                            fields: lifted.values.keys().map(String::as_str),
                            sealed: &sealed,
                        },
                    );
                    if legal.len() - start > self.batch_max_bytes {
                        // Cannot fit any batch; the store would refuse it.
                        legal.truncate(start);
                        self.metrics.legal_records_too_large.inc();
                        tracing::error!(
                            source = %self.source,
                            offset = line.offset,
                            exception = %lifted.exception.name,
                            "the sealed fields of a legal exception exceed sink.batch_max_bytes: not shipped"
                        );
                    }
                }
            }
        }

        let redactor = self.redactor;
        let (mut unscannable, mut dropped) = (false, false);
        let (body, escaped) = record::redact_line(&line.bytes, |t| {
            let red = redactor.redact_record(t, format, &mut line_counts, None);
            unscannable |= red.unscannable;
            dropped |= red.dropped;
            red.text
        });
        if unscannable {
            tracing::warn!(
                source = %self.source,
                offset = line.offset,
                "record could not be scanned for PII: shipped masked whole"
            );
        }
        for (det, n) in &line_counts.0 {
            self.metrics
                .count_redaction(redactor.kind(*det), u64::from(*n));
        }
        if dropped {
            // drop_record: nothing is shipped on `default`, but the line counts as read.
            return Rendered { rec, legal };
        }
        rec.extend_from_slice(&self.prefix);
        rec.extend_from_slice(itoa_u64(line.offset).as_bytes());
        rec.extend_from_slice(&times);
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
        if format == Format::Json && serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
            self.metrics.json_parse_errors.inc();
            rec.extend_from_slice(b",\"json_error\":true");
        }
        if !line_counts.is_empty() {
            rec.extend_from_slice(b",\"redactions\":{");
            for (i, (det, n)) in line_counts.0.iter().enumerate() {
                if i > 0 {
                    rec.push(b',');
                }
                record::push_json_str(&mut rec, redactor.kind(*det));
                rec.push(b':');
                rec.extend_from_slice(itoa_u64(u64::from(*n)).as_bytes());
            }
            rec.push(b'}');
        }
        rec.extend_from_slice(b"}\n");
        Rendered { rec, legal }
    }
}

fn itoa_u64(v: u64) -> String {
    v.to_string()
}
