//! The file source: finds files by glob, tails them through rotation and truncation, frames
//! lines, and hands them to the pipeline in [`Chunk`]s. It owns reading and framing; it does
//! not decode, parse, redact or persist anything. Checkpoints are persisted by the pipeline,
//! in the same transaction as the batch holding the lines before them.
//!
//! # Threads and backpressure
//! [`spawn`] starts one OS thread for all sources. Chunks go into a bounded channel; when it
//! is full the thread waits (reading pauses) until the pipeline takes one, or until the stop
//! token is cancelled. Cancelling stops reading promptly, also while waiting to send; the
//! chunk that could not be sent is dropped, and with it its checkpoint, so nothing is lost.
//!
//! # Discovery
//! Each source's `include` globs (absolute; `*` stays within a path component, `**`
//! crosses them) minus its `exclude` globs, matched against the path a file is found under.
//! Only each glob's static prefix directory (before the first component with a glob
//! metacharacter) is walked, only as deep as the glob reaches, following symlinks. A file
//! belongs to the first source, in config order, that matches it. Rescans happen on change
//! notifications (inotify, one watcher for the thread, on the prefix directories; recursive
//! when the glob spans several levels) and every `poll_interval` (the smallest among the
//! sources) in any case; if a watch cannot be set, polling alone keeps working.
//!
//! # Identity
//! A file is its (device, inode) ([`FileId`]), not its path: a file reached under two
//! paths (a symlink and its target) is read once; a file renamed to a name that still
//! matches is the same file and is never read again. The SHA-256 of its first
//! [`HEAD_BYTES`] bytes (fewer while the file is shorter; none for an empty file) is its
//! fingerprint: it tells apart two generations of contents under one inode, and links a
//! copy to a truncated generation (see Truncation). Two files that exist side by side are
//! never merged: a new file whose first bytes equal an open file's is held back at most
//! `rotate_wait` (waiting for that file's truncation), then read as a file of its own.
//!
//! # Start position
//! A file with a checkpoint for its identity resumes at the checkpoint's offset when its
//! first `head_len` bytes still hash to `head_hash`. If the file is now shorter than the
//! offset it was truncated while not read: it is read from 0, with a WARN and
//! `truncations` counted. If the hash differs (the inode was reused) it is read from 0.
//! A file without a checkpoint found by the first scan starts after its last complete
//! line when its source has `read_from = "end"` and no checkpoint of it existed (its very
//! first start), or when it was last modified longer than `ignore_older` ago; that start
//! is sent as a checkpoint at once. A new file that is the copy of a truncated generation
//! starts where that generation was left. Every other file is read from its beginning.
//! Files whose name ends like a compressed file (`.gz`, …) or that start with a
//! compression header are not read unless `read_compressed`.
//!
//! # Open files
//! At most `max_open_files` descriptors per source. To open a file, the least recently
//! active one that is read to its end, holds nothing back and is still present is parked
//! (descriptor closed, state kept); a parked file is reopened by path when it changes and
//! kept only if device, inode and fingerprint match. A parked file gone from every
//! matched path is looked for by device and inode in the directory it was last seen in;
//! if it grew there (renamed to an unmatched name) and its first bytes match, it is
//! reopened and read to its end before it is closed. When nothing can be parked, new
//! files wait for the next scan.
//!
//! # Checkpoint expiry
//! Checkpoints of files not open (closed after rotation or deletion, or loaded and not
//! found) are dropped once older than their source's `checkpoint_expiry`; the next chunk
//! (a chunk of its own, see [`Chunk::forget`]) tells the pipeline to delete them.
//!
//! # Reading
//! Open files are read round-robin, at most 256 KiB per file per pass, so a busy file
//! cannot starve the others. A pass looks at every open file after a scan and at least
//! every `poll_interval`; in between only at files named by a data change notification or
//! not yet quiet (not at their end, holding something back, gone, or with an unsent
//! checkpoint), so the cost of a line does not grow with the number of idle files. Each pass over a file that produced lines (or moved its
//! checkpoint) yields one [`Chunk`]: those lines and the file's checkpoint just past the
//! last of them. A checkpoint is never ahead of the lines handed over before or with it.
//! When no file had new bytes the thread sleeps until a change notification, the next
//! poll, or a partial-line / rotation deadline. Notifications are coalesced: after one,
//! if the previous came less than 100 ms before, the pass waits out the rest of that
//! window (never past a deadline), so writes trickling into many files cost one pass per
//! 100 ms rather than one per write; an isolated write is read at once, and a busy file
//! (one with bytes left to read) is never waited for.
//!
//! # Records
//! Framed lines go through the `assemble` stage (container formats, multiline; see that
//! module) when the source has one; its held lines keep the checkpoint before them. Lines
//! of another stream emitted past a held fragment are recorded per stream in the
//! checkpoint (`shipped_to`), so a resume before the fragment does not ship them again.
//!
//! # Framing
//! A line ends at `\n`; a `\r` right before the `\n` is not part of it; a lone `\r` is. A
//! line's offset is the file offset of its first byte. A UTF-8 BOM at offset 0 is not part
//! of the first line (whose offset is then 3). Bytes are passed on as they are: invalid
//! UTF-8 and NUL bytes included.
//!
//! # Long lines
//! A line longer than the source's `max_line_bytes` is emitted, as it is read, in parts of
//! at most `max_line_bytes` bytes, each with its own offset and `part: Some((index,
//! is_last))`; concatenated, the parts are the line. A part ends just after the last space
//! or tab within the final 1 KiB before the limit that is not between two digits, else at
//! the last UTF-8 character boundary before the limit, else (not UTF-8) at the limit. Each
//! split line counts once in `lines_split`. The checkpoint may point between parts: after a
//! restart there, the rest of the line is read as a new line (parts numbered from 0).
//!
//! # Final line without a newline
//! Held back while the file grows. Emitted whole (offset = its start) once the file has had
//! no new bytes for `partial_line_timeout`, or when the file is closed after rotation or
//! deletion; then the checkpoint moves past it, so it is never shipped twice: bytes
//! appended to it later form a new line. On shutdown it is not emitted: the checkpoint
//! stays before it and the next run reads it again.
//!
//! # Rotation and deletion
//! A file renamed away (app.log → app.log.1) stays open and is read to its end. Once it is
//! gone from every matched path, or deleted (no link left), and has had no new bytes for
//! `rotate_wait`, it is closed (so a deleted file's disk space is freed). The new file at
//! the old path is a new identity and is read from its start; so is a file deleted and
//! re-created under the same name.
//!
//! # Truncation
//! A file found shorter than our read position (copytruncate) is read again from 0: a WARN
//! (path and sizes, never contents), `truncations` counted, and the next chunk carries the
//! reset checkpoint even if it has no lines. A file whose first bytes changed without
//! shrinking below our position (truncated and refilled between two looks) is detected at
//! each rescan by its head hash and treated the same way.
//!
//! # Errors and logging
//! Errors on one file (permission denied, vanished, I/O) are logged once as a WARN with
//! the path and the error, counted in `source_errors`, retried, and never fatal. Nothing
//! this module logs contains a line's contents.
//!
//! # Metrics
//! `lines_read` (lines and parts handed over), `bytes_read` (bytes read from files),
//! `lines_split`, `truncations`, `files_open` (gauge), `source_errors`.

mod assemble;
pub mod checkpoint;
mod discover;
mod framer;
mod reader;
mod tail;
#[cfg(test)]
mod tests;

pub use assemble::parse_rfc3339;
pub use checkpoint::{Checkpoint, FileId, HEAD_BYTES};

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// One framed line (or one part of a line longer than `max_line_bytes`).
#[derive(Debug, Clone)]
pub struct Line {
    /// Byte offset in the file of the line's (or part's) first byte.
    pub offset: u64,
    /// Where reading resumes if this line and every line handed over before it are kept:
    /// just past the line (or part) and its line end, or earlier when bytes before that
    /// are still held (an unfinished multiline record or CRI/Docker partial of the other
    /// stream); never later.
    pub end: u64,
    /// With `end`: per stream (stdout, stderr, lines without one), the offset up to which
    /// that stream's lines were handed over, when past `end` (else 0). A resume at `end`
    /// drops the lines of a stream that start before its mark: they were shipped while a
    /// fragment of the other stream held `end` back. See `assemble`.
    pub shipped_to: [u64; 3],
    /// The line's bytes without the line end (`\n`, or `\r\n`).
    pub bytes: Vec<u8>,
    /// When the agent read it.
    pub read_at: SystemTime,
    /// For a line split because it exceeded `max_line_bytes`: (0-based part index, is last part).
    pub part: Option<(u32, bool)>,
    /// What a container log format (`cri`, `docker`) said about the line.
    pub event: Option<Event>,
}

/// A container runtime's view of a line: when it was written and to which stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The runtime's timestamp; becomes the record's `timestamp`.
    pub timestamp: Option<SystemTime>,
    pub iostream: IoStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoStream {
    Stdout,
    Stderr,
}

impl IoStream {
    pub fn as_str(self) -> &'static str {
        match self {
            IoStream::Stdout => "stdout",
            IoStream::Stderr => "stderr",
        }
    }
}

/// Lines read from one file in one pass, and that file's checkpoint after the last of them.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Index of the source in the config's `[[sources]]`.
    pub source: usize,
    pub path: Arc<Path>,
    pub lines: Vec<Line>,
    /// Where reading resumes after these lines, should they be sealed.
    pub checkpoint: Checkpoint,
    /// Checkpoints to delete: files gone for longer than their source's
    /// `checkpoint_expiry`. A chunk whose own checkpoint's id is in this list carries
    /// nothing else (no lines, and its checkpoint is not to be saved).
    pub forget: Vec<FileId>,
}

/// Errors of the file source as a whole (one file's errors are never fatal).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad glob `{glob}`: {reason}")]
    Glob { glob: String, reason: String },
    #[error("cannot start the file source thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the file source thread panicked")]
    Panicked,
}

impl From<SourceError> for std::io::Error {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Spawn(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
        }
    }
}

/// The running file source thread.
pub struct SourceHandle {
    thread: std::thread::JoinHandle<()>,
}

impl SourceHandle {
    /// Waits for the thread to end: after the stop token is cancelled, or when the
    /// receiving side of the channel is dropped.
    pub fn join(self) -> Result<(), SourceError> {
        self.thread.join().map_err(|_| SourceError::Panicked)
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts reading `sources` on a thread of its own; see the module doc for the rules.
/// `checkpoints` are those loaded from the buffer; `tx` is bounded and blocking on it is the
/// backpressure; cancelling `stop` ends the thread promptly.
pub fn spawn(
    sources: Vec<crate::config::SourceConfig>,
    checkpoints: Vec<Checkpoint>,
    tx: crossbeam_channel::Sender<Chunk>,
    stop: tokio_util::sync::CancellationToken,
    metrics: crate::telemetry::AgentMetrics,
) -> std::io::Result<SourceHandle> {
    let read_loop = reader::ReadLoop::new(sources, checkpoints, tx, stop, metrics)?;
    let thread = std::thread::Builder::new()
        .name("logveil-source".into())
        .spawn(move || {
            read_loop.run();
        })
        .map_err(SourceError::Spawn)?;
    Ok(SourceHandle { thread })
}

/// [`spawn`] without a change watcher: the polling fallback alone.
#[cfg(test)]
pub(crate) fn spawn_polling_only(
    sources: Vec<crate::config::SourceConfig>,
    tx: crossbeam_channel::Sender<Chunk>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<SourceHandle> {
    let read_loop =
        reader::ReadLoop::new(sources, Vec::new(), tx, stop, Default::default())?.without_watcher();
    let thread = std::thread::Builder::new()
        .name("logveil-source".into())
        .spawn(move || {
            read_loop.run();
        })
        .map_err(SourceError::Spawn)?;
    Ok(SourceHandle { thread })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
