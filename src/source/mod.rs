//! The file source: finds files by glob, tails them through rotation and truncation, frames
//! lines, and hands them to the pipeline in [`Chunk`]s.
//!
//! (Module spec to be completed by the tailer implementation.)

pub mod checkpoint;

pub use checkpoint::{Checkpoint, FileId, HEAD_BYTES};

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// One framed line (or one part of a line longer than `max_line_bytes`).
#[derive(Debug, Clone)]
pub struct Line {
    /// Byte offset in the file of the line's (or part's) first byte.
    pub offset: u64,
    /// The line's bytes without the line end (`\n`, or `\r\n`).
    pub bytes: Vec<u8>,
    /// When the agent read it.
    pub read_at: SystemTime,
    /// For a line split because it exceeded `max_line_bytes`: (0-based part index, is last part).
    pub part: Option<(u32, bool)>,
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
}
