//! One open file being tailed: its identity, read position, framing state and head hash.
//!
//! Policy (which files, when to close, what to log or count) is the read loop's; this type
//! only reads, frames, detects truncation and reports what happened.

use super::assemble::Assembler;
use super::framer::Framer;
use super::{Checkpoint, FileId, Line, HEAD_BYTES};
use crate::config::{Format, MultilineRules};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where a newly opened file starts, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// No checkpoint for this identity.
    Beginning,
    /// The checkpoint matched: identity and head hash.
    Resume(u64),
    /// The checkpoint's head hash did not match: the inode was reused by another file.
    HeadChanged,
    /// The file is shorter than the checkpoint's offset: truncated while we were not reading.
    Truncated { offset: u64, size: u64 },
    /// No checkpoint, and the source says not to read what is there (`read_from = "end"`
    /// at the first start, or `ignore_older`): just past the last complete line.
    End(u64),
    /// A copy of a generation already read up to this offset (fingerprint link).
    Linked(u64),
}

impl StartAt {
    pub(crate) fn offset(self) -> u64 {
        match self {
            StartAt::Resume(o) | StartAt::End(o) | StartAt::Linked(o) => o,
            _ => 0,
        }
    }
}

/// How the files of one source are framed and assembled.
#[derive(Debug, Clone)]
pub(crate) struct FileRules {
    pub max_line_bytes: usize,
    pub format: Format,
    pub multiline: Option<MultilineRules>,
}

/// What to do with a file that has no matching checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoCheckpoint {
    Beginning,
    End,
    /// Start at this offset (clamped to the file's size): a linked copy.
    Linked(u64),
}

/// What one read pass over a file did.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    pub lines: Vec<Line>,
    /// Bytes read from the file.
    pub bytes: u64,
    pub lines_split: u64,
    /// The file was found shorter than our position and reading restarted at 0.
    pub truncated: Option<(u64, u64)>,
    /// The unfinished final line was emitted because the file was idle.
    pub flushed_partial: bool,
    /// On truncation: the fingerprint of the generation read before and our checkpoint
    /// in it, so a copy of it can continue there.
    pub retired: Option<(u32, [u8; 32], u64)>,
}

pub(crate) struct TailedFile {
    pub id: FileId,
    pub source: usize,
    pub path: Arc<Path>,
    /// `None` while parked: closed to respect `max_open_files`, reopened by identity.
    file: Option<File>,
    framer: Framer,
    // Boxed: the read loop scans thousands of these per wake; small entries stay in cache.
    assembler: Box<Assembler>,
    rules: Arc<FileRules>,
    head_len: u32,
    head_hash: [u8; 32],
    /// The first [`PREFIX_BYTES`] bytes (fewer while the file is shorter): tells whether
    /// a new, still short file could be a copy of this one in progress.
    prefix: Vec<u8>,
    /// When bytes were last read (or the file was opened).
    pub last_growth: Instant,
    /// When the file was first seen gone from every matched path, or deleted.
    pub gone_since: Option<Instant>,
    /// The file has no link left: it can never be found again.
    pub deleted: bool,
    /// The last read pass reached the end of the file.
    pub at_eof: bool,
    /// Checkpoint offset in the last chunk handed to the pipeline (or the start offset).
    pub sent_offset: u64,
    /// A read error was already logged; cleared by the next successful pass.
    pub error_logged: bool,
    /// After its last read: at its end, present, holding nothing back, its checkpoint
    /// sent. Only a change notification or a full pass makes it worth reading.
    pub quiet: bool,
}

/// How many first bytes are kept to compare with new files that are still short.
pub(crate) const PREFIX_BYTES: usize = 64;

/// Bytes looked at, back from the end, for the last line end when starting at the end.
const END_SEARCH: u64 = 64 * 1024;

impl TailedFile {
    /// Opens `path`, which must still be the file `id` (else `Ok(None)`: it was replaced
    /// since the scan), positioned per its checkpoint.
    pub(crate) fn open(
        id: FileId,
        source: usize,
        path: &Path,
        checkpoint: Option<&Checkpoint>,
        no_checkpoint: NoCheckpoint,
        rules: &Arc<FileRules>,
    ) -> io::Result<Option<(TailedFile, StartAt)>> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if FileId::of(&meta) != id {
            return Ok(None);
        }
        let size = meta.len();
        let start = match checkpoint {
            None => match no_checkpoint {
                NoCheckpoint::Beginning => StartAt::Beginning,
                NoCheckpoint::End => StartAt::End(last_line_end(&file, size)?),
                NoCheckpoint::Linked(o) => StartAt::Linked(o.min(size)),
            },
            Some(cp) if size < cp.offset => StartAt::Truncated {
                offset: cp.offset,
                size,
            },
            Some(cp) => {
                let (len, hash) = head_of(&file, u64::from(cp.head_len))?;
                if len == cp.head_len && hash == cp.head_hash {
                    StartAt::Resume(cp.offset)
                } else {
                    StartAt::HeadChanged
                }
            }
        };
        let offset = start.offset();
        file.seek(SeekFrom::Start(offset))?;
        let mut assembler = Box::new(Assembler::new(
            rules.format,
            rules.max_line_bytes,
            rules.multiline.clone(),
        ));
        if let (StartAt::Resume(_), Some(cp)) = (start, checkpoint) {
            assembler.resume(cp.offset, cp.shipped_to);
        }
        let (head_len, head_hash) = head_of(&file, size)?;
        let prefix = prefix_of(&file)?;
        let t = TailedFile {
            id,
            source,
            path: Arc::from(path),
            file: Some(file),
            framer: Framer::new(rules.max_line_bytes, offset),
            assembler,
            rules: rules.clone(),
            head_len,
            head_hash,
            prefix,
            last_growth: Instant::now(),
            gone_since: None,
            deleted: false,
            at_eof: false,
            sent_offset: offset,
            error_logged: false,
            quiet: false,
        };
        Ok(Some((t, start)))
    }

    /// True when the file starts like a gzip, bzip2, xz, zstd, zip or lz4 file.
    pub(crate) fn head_is_compressed(&self) -> bool {
        let Some(file) = self.file.as_ref() else {
            return false;
        };
        let mut head = [0u8; 8];
        let n = file.read_at(&mut head, 0).unwrap_or(0);
        super::reader::has_compressed_magic(&head[..n])
    }

    /// True while closed to respect `max_open_files`.
    pub(crate) fn is_parked(&self) -> bool {
        self.file.is_none()
    }

    /// Closes the file descriptor; the read position and framing state are kept.
    pub(crate) fn park(&mut self) {
        self.file = None;
        self.at_eof = true;
    }

    /// Reopens a parked file at `path`, positioned where it was. `Ok(false)`: the same
    /// inode with other first bytes (truncated in place, or deleted and the inode reused
    /// while no descriptor pinned it). `NotFound` when the path holds another file.
    pub(crate) fn unpark(&mut self, path: &Path) -> io::Result<bool> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if FileId::of(&meta) != self.id {
            // Replaced between the scan and now: the next scan looks again.
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "replaced since the scan",
            ));
        }
        let (len, hash) = head_of(&file, u64::from(self.head_len))?;
        if len != self.head_len || hash != self.head_hash {
            return Ok(false);
        }
        file.seek(SeekFrom::Start(self.framer.read_offset()))?;
        self.file = Some(file);
        self.path = Arc::from(path);
        self.at_eof = false;
        Ok(true)
    }

    /// Offset of the next byte to read.
    pub(crate) fn read_offset(&self) -> u64 {
        self.framer.read_offset()
    }

    /// When a held multiline record may become due.
    pub(crate) fn assembly_deadline(&self) -> Option<Instant> {
        self.assembler.deadline()
    }

    /// The file's first bytes (up to [`PREFIX_BYTES`]).
    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Length and hash of the first bytes: the fingerprint of the generation being read.
    pub(crate) fn fingerprint(&self) -> (u32, [u8; 32]) {
        (self.head_len, self.head_hash)
    }

    /// Reads up to `budget` bytes (through `buf`) and frames them. Emits the unfinished
    /// final line when no byte has arrived for `partial_timeout`. Returns also whether the
    /// file has been deleted (no link left).
    pub(crate) fn read_pass(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        partial_timeout: std::time::Duration,
    ) -> io::Result<(Pass, bool)> {
        let mut pass = Pass::default();
        let Some(file) = self.file.as_ref() else {
            return Ok((pass, false));
        };
        let meta = file.metadata()?;
        let size = meta.len();
        if size < self.framer.read_offset() {
            pass.truncated = Some((self.framer.read_offset(), size));
            pass.retired = Some((self.head_len, self.head_hash, self.checkpoint().offset));
            self.restart_from_zero()?;
        }
        let read_at = SystemTime::now();
        let mut pos = self.framer.read_offset();
        let direct = self.assembler.is_passthrough();
        let mut framed = Vec::new();
        let file = self.file.as_mut().expect("checked above");
        while pass.bytes < budget as u64 && pos < size {
            let want = buf.len().min(budget - pass.bytes as usize);
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let out = if direct { &mut pass.lines } else { &mut framed };
            let stats = self.framer.feed(&buf[..n], read_at, out);
            pass.lines_split += stats.lines_split;
            pass.bytes += n as u64;
            pos += n as u64;
        }
        let now = Instant::now();
        self.at_eof = pos >= size;
        if pass.bytes > 0 {
            self.last_growth = now;
        } else if self.framer.has_pending()
            && now.duration_since(self.last_growth) >= partial_timeout
        {
            let out = if direct { &mut pass.lines } else { &mut framed };
            let stats = self.framer.flush(read_at, out);
            pass.lines_split += stats.lines_split;
            pass.flushed_partial = true;
        }
        if !direct {
            for line in framed {
                self.assembler.push(line, &mut pass.lines);
            }
            let at_rest = self.at_eof && !self.framer.has_pending();
            self.assembler.flush_idle(
                at_rest,
                now.duration_since(self.last_growth),
                partial_timeout,
                &mut pass.lines,
            );
        }
        if (self.head_len as usize) < HEAD_BYTES && pos.max(size) > u64::from(self.head_len) {
            let file = self.file.as_ref().expect("checked above");
            (self.head_len, self.head_hash) = head_of(file, pos.max(size))?;
            if self.prefix.len() < PREFIX_BYTES {
                self.prefix = prefix_of(file)?;
            }
        }
        Ok((pass, meta.nlink() == 0))
    }

    /// True when the file's first `head_len` bytes no longer hash as when read: it was
    /// rewritten in place (copytruncate followed by new writes past our offset).
    /// A file shorter than our position is left to the truncation check of the next pass.
    pub(crate) fn head_changed(&self) -> io::Result<bool> {
        let Some(file) = self.file.as_ref() else {
            return Ok(false);
        };
        if file.metadata()?.len() < self.framer.read_offset() {
            return Ok(false);
        }
        let (len, hash) = head_of(file, u64::from(self.head_len))?;
        Ok(len != self.head_len || hash != self.head_hash)
    }

    /// True when the file is now shorter than our read position or its first bytes
    /// changed: a truncation the next pass or scan will handle. False when unsure.
    pub(crate) fn looks_truncated(&self) -> bool {
        let Some(file) = self.file.as_ref() else {
            // Parked: look at the path, if it is still this file.
            return std::fs::metadata(&self.path).is_ok_and(|m| {
                m.dev() == self.id.dev
                    && m.ino() == self.id.ino
                    && m.len() < self.framer.read_offset()
            });
        };
        match file.metadata() {
            Ok(m) if m.len() < self.framer.read_offset() => true,
            Ok(_) => self.head_changed().unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Drops the framing state and reads again from offset 0.
    pub(crate) fn restart_from_zero(&mut self) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(0))?;
        self.framer = Framer::new(self.rules.max_line_bytes, 0);
        self.assembler.reset();
        let size = file.metadata()?.len();
        (self.head_len, self.head_hash) = head_of(file, size)?;
        self.prefix = prefix_of(file)?;
        Ok(())
    }

    /// Emits the unfinished final line, if any: the file is being closed for good.
    pub(crate) fn flush(&mut self) -> (Vec<Line>, u64) {
        let mut framed = Vec::new();
        let stats = self.framer.flush(SystemTime::now(), &mut framed);
        let mut lines = Vec::new();
        for line in framed {
            self.assembler.push(line, &mut lines);
        }
        self.assembler.flush_all(&mut lines);
        (lines, stats.lines_split)
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.framer.has_pending() || self.assembler.held_from().is_some()
    }

    /// Offset of [`TailedFile::checkpoint`], without building it.
    pub(crate) fn checkpoint_offset(&self) -> u64 {
        self.assembler
            .held_from()
            .map_or(self.framer.committed_offset(), |h| {
                h.min(self.framer.committed_offset())
            })
    }

    /// The checkpoint after every line the framer has emitted so far.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        let offset = self.checkpoint_offset();
        Checkpoint {
            id: self.id,
            path: self.path.to_path_buf(),
            offset,
            shipped_to: self.assembler.shipped_past(offset),
            head_len: self.head_len,
            head_hash: self.head_hash,
            updated_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

fn prefix_of(file: &File) -> io::Result<Vec<u8>> {
    let mut p = vec![0u8; PREFIX_BYTES];
    let mut got = 0;
    while got < p.len() {
        match file.read_at(&mut p[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    p.truncate(got);
    Ok(p)
}

/// Offset just past the last `\n` in the file (0 if none in the last [`END_SEARCH`] bytes
/// of a longer file, then the start of that window), so a line being written is read whole.
fn last_line_end(file: &File, size: u64) -> io::Result<u64> {
    let from = size.saturating_sub(END_SEARCH);
    let mut tail = vec![0u8; (size - from) as usize];
    let mut got = 0;
    while got < tail.len() {
        match file.read_at(&mut tail[got..], from + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(match memchr::memrchr(b'\n', &tail[..got]) {
        Some(i) => from + i as u64 + 1,
        None => from,
    })
}

/// Length and SHA-256 of the file's first `min(limit, HEAD_BYTES)` bytes (fewer if the file
/// is shorter).
pub(crate) fn head_of(file: &File, limit: u64) -> io::Result<(u32, [u8; 32])> {
    let want = limit.min(HEAD_BYTES as u64) as usize;
    let mut head = [0u8; HEAD_BYTES];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut head[got..want], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let hash: [u8; 32] = Sha256::digest(&head[..got]).into();
    Ok((got as u32, hash))
}
