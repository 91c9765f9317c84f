//! The read loop: the source thread's scheduler. It rescans on change notifications and
//! every poll interval, opens new files, reads open ones round-robin with a per-file byte
//! budget, hands one [`Chunk`] per file and pass to the pipeline, and closes files that
//! were rotated away or deleted once they have been idle long enough.

use super::discover::{Discovery, Found};
use super::tail::{FileRules, NoCheckpoint, StartAt, TailedFile, PREFIX_BYTES};
use super::{Checkpoint, Chunk, FileId, SourceError, HEAD_BYTES};
use crate::config::{ReadFrom, SourceConfig};
use crate::telemetry::AgentMetrics;
use crossbeam_channel::SendTimeoutError;
use notify::event::ModifyKind;
use notify::{EventKind, RecommendedWatcher, Watcher};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Bytes read from one file per pass before moving to the next file.
pub(crate) const PASS_BUDGET: usize = 256 * 1024;
/// Size of the one read buffer shared by all files.
const READ_BUF: usize = 64 * 1024;
/// While blocked sending to a full pipeline, how often the stop token is checked.
const SEND_STOP_CHECK: Duration = Duration::from_millis(50);
/// Shortest sleep when idle, so a deadline that cannot be acted on yet does not spin.
const MIN_WAIT: Duration = Duration::from_millis(10);
/// At most one notification-driven read pass per this window while writes trickle in.
const READ_COALESCE: Duration = Duration::from_millis(100);
/// Change notifications trigger a rescan at most this often.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(50);
/// Every this many scans, the first bytes of every open file are checked.
const FULL_HEAD_CHECK_EVERY: u64 = 10;
/// Name endings of compressed files, never opened unless `read_compressed`.
const COMPRESSED_SUFFIXES: &[&str] = &[".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".Z"];
/// First bytes of gzip, bzip2, xz, zstd, zip and lz4 files.
const COMPRESSED_MAGIC: &[&[u8]] = &[
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"PK\x03\x04",
    b"\x04\x22\x4d\x18",
];
/// Truncated generations remembered for linking a copy of them, at most this many ...
const RETIRED_MAX: usize = 256;
/// ... and for this long.
const RETIRED_MEMORY: Duration = Duration::from_secs(3600);

/// A generation of a file that was truncated (copytruncate) or replaced under its inode:
/// its fingerprint and how far it had been read. A new file with the same first bytes is
/// its copy (`app.log.1`) and continues at `offset`.
#[derive(Debug, Clone)]
struct Retired {
    /// The file it was a generation of: never linked to itself.
    from: FileId,
    head_len: u32,
    head_hash: [u8; 32],
    offset: u64,
    at: Instant,
}

/// Wakes the read loop: sends into a capacity-1 channel, dropping when a wake is pending.
struct Wakeup(SyncSender<()>);

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

/// Why the loop ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Stopped,
    ReceiverGone,
}

pub(crate) struct ReadLoop {
    sources: Vec<SourceConfig>,
    rules: Vec<Arc<FileRules>>,
    /// Per source: no checkpoint of it existed at start (`read_from` applies).
    first_start: Vec<bool>,
    /// Scans done since the loop started (`read_from`, `ignore_older` apply to the first).
    scans: u64,
    /// Per source: files holding a descriptor (not parked).
    open_count: Vec<usize>,
    /// Compressed files found and not read.
    skipped: HashSet<FileId>,
    /// New files whose first bytes equal those of an open file, held back (since when)
    /// to see whether that file gets truncated (then the new one is its copy).
    held: HashMap<FileId, Instant>,
    retired: Vec<Retired>,
    /// Generations retired so far (to notice new ones).
    retired_total: u64,
    /// Last checkpoints of deleted files: never resumed, only expired (deleted from the
    /// buffer after `checkpoint_expiry`).
    deleted: HashMap<FileId, Checkpoint>,
    /// Paths with data change notifications since the last read pass.
    changed: Arc<Mutex<ChangedPaths>>,
    /// When every open file was last looked at (they are, every `poll_interval`).
    last_full_read: Option<Instant>,
    /// The next read pass looks at every open file (after a scan).
    full_read_next: bool,
    /// Index into `files` by path, for change notifications; rebuilt when stale.
    path_index: HashMap<Arc<std::path::Path>, usize>,
    path_index_stale: bool,
    /// Set when some file is parked or held: data change notifications then trigger a
    /// rescan.
    parked_any: Arc<AtomicBool>,
    discovery: Discovery,
    /// Checkpoints of files not open: loaded at start, and those of closed files.
    checkpoints: HashMap<FileId, Checkpoint>,
    files: Vec<TailedFile>,
    /// Index into `files` where the next pass starts, so every file gets to go first.
    rr_start: usize,
    tx: crossbeam_channel::Sender<Chunk>,
    stop: CancellationToken,
    metrics: AgentMetrics,
    wake_rx: Receiver<()>,
    rescan: Arc<AtomicBool>,
    watcher: Option<RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    watch_warned: bool,
    /// Paths whose last open failed, with the error already logged for them.
    open_failures: HashMap<PathBuf, io::ErrorKind>,
    walk_warned: HashSet<PathBuf>,
    last_scan: Option<Instant>,
    /// When the loop was last woken by a change notification (see `coalesce_wakes`).
    last_wake: Option<Instant>,
    poll_interval: Duration,
    buf: Vec<u8>,
    /// Keeps the stop token's waker registered: cancelling wakes the loop at once.
    _stop_wait: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ReadLoop {
    pub(crate) fn new(
        sources: Vec<SourceConfig>,
        checkpoints: Vec<Checkpoint>,
        tx: crossbeam_channel::Sender<Chunk>,
        stop: CancellationToken,
        metrics: AgentMetrics,
    ) -> Result<Self, SourceError> {
        let discovery = Discovery::new(&sources)?;
        let mut rules = Vec::with_capacity(sources.len());
        for s in &sources {
            let multiline = match &s.multiline {
                Some(m) => Some(m.compile().map_err(|reason| SourceError::Glob {
                    glob: format!("{}: multiline", s.name),
                    reason,
                })?),
                None => None,
            };
            rules.push(Arc::new(FileRules {
                max_line_bytes: s.max_line_bytes,
                format: s.format,
                multiline,
            }));
        }
        let mut first_start = vec![true; sources.len()];
        for c in &checkpoints {
            if let Some(i) = discovery.source_of(&c.path) {
                first_start[i] = false;
            }
        }
        let parked_any = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Mutex::new(ChangedPaths::default()));
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel(1);
        let rescan = Arc::new(AtomicBool::new(true));

        let waker = Waker::from(Arc::new(Wakeup(wake_tx.clone())));
        let mut stop_wait = Box::pin(stop.clone().cancelled_owned());
        // Registers the waker; a token already cancelled is seen by the loop's first check.
        let _ = stop_wait.as_mut().poll(&mut Context::from_waker(&waker));

        let watcher = {
            let rescan = rescan.clone();
            let parked_any = parked_any.clone();
            let changed = changed.clone();
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let (mut needs_rescan, wake) = classify(&res);
                if wake && !needs_rescan {
                    if let Ok(ev) = &res {
                        changed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .add(&ev.paths);
                    }
                }
                // A parked file is only reopened by a scan: data changes must trigger one.
                needs_rescan |= wake && parked_any.load(Ordering::Acquire);
                if needs_rescan {
                    rescan.store(true, Ordering::Release);
                }
                if wake || needs_rescan {
                    let _ = wake_tx.try_send(());
                }
            })
        };
        let mut watch_warned = false;
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot create a file change watcher; relying on polling.");
                watch_warned = true;
                None
            }
        };
        let poll_interval = sources
            .iter()
            .map(|s| s.poll_interval)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        let n = sources.len();
        Ok(ReadLoop {
            rules,
            first_start,
            scans: 0,
            open_count: vec![0; n],
            skipped: HashSet::new(),
            held: HashMap::new(),
            retired: Vec::new(),
            retired_total: 0,
            deleted: HashMap::new(),
            parked_any,
            changed,
            last_full_read: None,
            full_read_next: true,
            path_index: HashMap::new(),
            path_index_stale: true,
            sources,
            discovery,
            checkpoints: checkpoints.into_iter().map(|c| (c.id, c)).collect(),
            files: Vec::new(),
            rr_start: 0,
            tx,
            stop,
            metrics,
            wake_rx,
            rescan,
            watcher,
            watched: HashSet::new(),
            watch_warned,
            open_failures: HashMap::new(),
            walk_warned: HashSet::new(),
            last_scan: None,
            last_wake: None,
            poll_interval,
            buf: vec![0; READ_BUF],
            _stop_wait: stop_wait,
        })
    }

    /// Drops the change watcher, as when inotify watches or instances are exhausted: only
    /// polling finds and reads changes.
    #[cfg(test)]
    pub(crate) fn without_watcher(mut self) -> Self {
        self.watcher = None;
        self
    }

    pub(crate) fn run(mut self) -> Ended {
        let ended = self.run_inner();
        self.metrics.files_open.dec_by(self.files.len() as i64);
        self.files.clear();
        tracing::debug!(?ended, "File source stopped.");
        ended
    }

    fn run_inner(&mut self) -> Ended {
        loop {
            if self.stop.is_cancelled() {
                return Ended::Stopped;
            }
            if self.scan_due() {
                if let Err(e) = self.scan() {
                    return e;
                }
            }
            let any_data = match self.read_all() {
                Ok(d) => d,
                Err(e) => return e,
            };
            if let Err(e) = self.close_finished() {
                return e;
            }
            if !any_data {
                let wait = self
                    .next_deadline()
                    .saturating_duration_since(Instant::now());
                match self.wake_rx.recv_timeout(wait.max(MIN_WAIT)) {
                    Ok(()) => self.coalesce_wakes(),
                    Err(RecvTimeoutError::Timeout) => {}
                    // Cannot happen while the watcher/waker hold a sender; poll instead.
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                }
            }
        }
    }

    /// After a change notification: if the previous one came less than
    /// [`READ_COALESCE`] ago, waits out the rest of that window (never past a deadline)
    /// so that writes trickling into many files are read in one pass, not one pass per
    /// write. An isolated write is read at once.
    fn coalesce_wakes(&mut self) {
        let now = Instant::now();
        let previous = self.last_wake.replace(now);
        let Some(previous) = previous else {
            return;
        };
        let until = (previous + READ_COALESCE).min(self.next_deadline());
        if until > now && !self.stop.is_cancelled() {
            std::thread::sleep(until - now);
            self.last_wake = Some(until);
        }
    }

    fn scan_due(&self) -> bool {
        match self.last_scan {
            None => true,
            Some(t) => {
                let since = t.elapsed();
                since >= self.poll_interval
                    || (since >= MIN_RESCAN_GAP && self.rescan.load(Ordering::Acquire))
            }
        }
    }

    /// The earliest moment something needs doing without a notification.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let last_scan = self.last_scan.unwrap_or(now);
        let mut next = last_scan + self.poll_interval;
        if self.rescan.load(Ordering::Acquire) {
            next = next.min(last_scan + MIN_RESCAN_GAP);
        }
        for f in self.files.iter().filter(|f| !f.quiet) {
            let cfg = &self.sources[f.source];
            if f.has_pending() {
                next = next.min(f.last_growth + cfg.partial_line_timeout);
            }
            if let Some(d) = f.assembly_deadline() {
                next = next.min(d);
            }
            if let Some(gone) = f.gone_since {
                next = next.min(f.last_growth.max(gone) + cfg.rotate_wait);
            }
        }
        for (id, since) in &self.held {
            let wait = self
                .files
                .iter()
                .find(|f| f.id == *id)
                .map_or(Duration::from_secs(5), |f| {
                    self.sources[f.source].rotate_wait
                });
            next = next.min(*since + wait);
        }
        next
    }

    /// Finds files, opens new ones, marks open ones gone or present, retries watches.
    fn scan(&mut self) -> Result<(), Ended> {
        self.path_index_stale = true;
        self.rescan.store(false, Ordering::Release);
        self.last_scan = Some(Instant::now());
        self.ensure_watches();
        let (found, problems) = self.discovery.scan();
        for p in problems {
            if self.walk_warned.insert(p.path.clone()) {
                tracing::warn!(path = %crate::redact::safe_path(&p.path), error = %p.error, "Cannot search for log files here.");
                self.metrics.source_errors.inc();
            }
        }
        let now = Instant::now();
        let present: HashMap<FileId, &Found> = found.iter().map(|f| (f.id, f)).collect();
        let mut to_unpark = Vec::new();
        for (i, t) in self.files.iter_mut().enumerate() {
            match present.get(&t.id) {
                Some(f) => {
                    t.gone_since = None;
                    let moved = *t.path != *f.path;
                    if moved && t.is_parked() {
                        // Without a descriptor the inode alone proves nothing (the file
                        // may have been deleted and its inode reused): check on reopen.
                        to_unpark.push(i);
                    }
                    if moved {
                        tracing::debug!(from = %crate::redact::safe_path(&t.path), to = %crate::redact::safe_path(&f.path), "Open file found under a new path.");
                        t.path = Arc::from(f.path.as_path());
                    }
                    if t.is_parked() && f.len != t.read_offset() && !moved {
                        to_unpark.push(i);
                    }
                }
                None => {
                    if t.gone_since.is_none() {
                        tracing::debug!(path = %crate::redact::safe_path(&t.path), "Open file no longer matched; reading it to its end.");
                        t.gone_since = Some(now);
                    }
                    // A parked file renamed to a name the globs do not match still owes
                    // the lines written since it was parked: find it by identity where it
                    // was last seen and reopen it to read them.
                    if t.is_parked() && !t.deleted {
                        if let Some(p) = renamed_with_new_bytes(t) {
                            tracing::debug!(from = %crate::redact::safe_path(&t.path), to = %crate::redact::safe_path(&p), "Closed file renamed to an unmatched name has new lines; reopening it to read them.");
                            t.path = Arc::from(p.as_path());
                            to_unpark.push(i);
                        }
                    }
                }
            }
        }
        // Descending: a parked file found replaced is removed without moving the others.
        for i in to_unpark.into_iter().rev() {
            self.unpark(i);
        }
        let first = self.scans == 0;
        self.scans += 1;
        let open: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        let found_paths: HashSet<&PathBuf> = found.iter().map(|f| &f.path).collect();
        self.open_failures.retain(|p, _| found_paths.contains(p));
        self.skipped.retain(|id| present.contains_key(id));
        self.held.retain(|id, _| present.contains_key(id));
        let new: Vec<&Found> = found
            .iter()
            .filter(|f| !open.contains(&f.id) && !self.skipped.contains(&f.id))
            .collect();
        // Checkpoints that no longer fit their file (truncated while we were away, or the
        // inode reused by another file) are retired first, so a copy of that generation
        // among the new files, whatever its name or inode, continues where it was left.
        for f in &new {
            self.retire_if_stale(f);
        }
        // Before new files, which could otherwise take every descriptor.
        if first {
            self.resume_renamed_away(&present)?;
        }
        for f in &new {
            self.open_new(f, first)?;
        }
        let retired_before = self.retired_total;
        let sizes: HashMap<FileId, u64> = found.iter().map(|f| (f.id, f.len)).collect();
        self.check_heads(&sizes)?;
        if self.retired_total != retired_before {
            // A file just found rewritten in place: a copy of it among the new files is
            // linked now, before the file's reset checkpoint can be sent (see open_new).
            let open: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
            for f in new.iter().filter(|f| !open.contains(&f.id)) {
                self.open_new(f, first)?;
            }
        }
        self.forget_old_checkpoints()?;
        let watch_data = !self.held.is_empty() || self.files.iter().any(|t| t.is_parked());
        self.parked_any.store(watch_data, Ordering::Release);
        self.full_read_next = true;
        Ok(())
    }

    /// Reopens a parked file that changed, if a descriptor is free (else the next scan
    /// tries again).
    fn unpark(&mut self, i: usize) {
        let source = self.files[i].source;
        if !self.make_room(source, Some(i)) {
            self.rescan.store(true, Ordering::Release);
            return;
        }
        let path = self.files[i].path.clone();
        match self.files[i].unpark(&path) {
            Ok(true) => self.open_count[source] += 1,
            Ok(false) => {
                // Same inode, other first bytes: truncated in place while parked, or
                // deleted and its inode reused. Either way this generation is over: it is
                // retired (a copy of it continues where it was left) and the file now at
                // the path is opened as a new one by this scan.
                let t = self.files.remove(i);
                tracing::warn!(path = %crate::redact::safe_path(&path), "File was truncated or replaced while closed (max_open_files); reading it as a new file.");
                self.metrics.truncations.inc();
                self.metrics.files_open.dec();
                let (len, hash) = t.fingerprint();
                self.push_retired(t.id, len, hash, t.checkpoint_offset());
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    self.file_error(i, &e);
                }
            }
        }
    }

    /// Makes sure `source` may open one more file: parks its least recently active open
    /// file that is read to its end, holds nothing back and is still present. False when
    /// none can be parked now.
    fn make_room(&mut self, source: usize, except: Option<usize>) -> bool {
        let max = self.sources[source].max_open_files;
        if self.open_count[source] < max {
            return true;
        }
        let victim = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                Some(*i) != except
                    && t.source == source
                    && !t.is_parked()
                    && t.at_eof
                    && !t.has_pending()
                    && t.gone_since.is_none()
                    && !t.deleted
                    && t.sent_offset == t.checkpoint_offset()
            })
            .min_by_key(|(_, t)| t.last_growth)
            .map(|(i, _)| i);
        match victim {
            Some(v) => {
                self.files[v].park();
                self.open_count[source] -= 1;
                self.parked_any.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Opens a newly found file. A copy linked to a truncated generation has its
    /// checkpoint sent at once: it must become durable no later than the truncated file's
    /// reset, or a crash in between would forget the link and ship the copy again.
    fn open_new(&mut self, f: &Found, first: bool) -> Result<(), Ended> {
        let cfg = &self.sources[f.source];
        if !cfg.read_compressed && is_compressed(f) {
            tracing::debug!(path = %crate::redact::safe_path(&f.path), "Not reading a compressed file.");
            self.skipped.insert(f.id);
            return Ok(());
        }
        if !self.make_room(f.source, None) {
            // Every descriptor is busy with a file not yet read to its end: try later.
            self.rescan.store(true, Ordering::Release);
            return Ok(());
        }
        let cp = self.checkpoints.get(&f.id).cloned();
        let no_checkpoint = if cp.is_some() {
            NoCheckpoint::Beginning
        } else {
            match self.without_checkpoint(f, first) {
                Some(n) => n,
                None => return Ok(()),
            }
        };
        let rules = &self.rules[f.source];
        match TailedFile::open(f.id, f.source, &f.path, cp.as_ref(), no_checkpoint, rules) {
            Ok(Some((mut t, start))) => {
                self.open_failures.remove(&f.path);
                self.held.remove(&f.id);
                match start {
                    StartAt::Beginning => {
                        tracing::debug!(path = %crate::redact::safe_path(&f.path), "Reading new file from its start.")
                    }
                    StartAt::Resume(offset) => {
                        tracing::debug!(path = %crate::redact::safe_path(&f.path), offset, "Resuming file at its checkpoint.")
                    }
                    StartAt::End(offset) => {
                        tracing::debug!(path = %crate::redact::safe_path(&f.path), offset, "Reading file from its end (read_from or ignore_older).");
                        // The start position becomes durable even if no line follows.
                        t.sent_offset = u64::MAX;
                    }
                    StartAt::Linked(offset) => {
                        tracing::info!(path = %crate::redact::safe_path(&f.path), offset, "New file is a copy of a truncated file already read; continuing where that one was left.");
                        t.sent_offset = u64::MAX;
                    }
                    // Changed between retire_if_stale and the open: read from 0.
                    StartAt::HeadChanged | StartAt::Truncated { .. } => {
                        tracing::info!(path = %crate::redact::safe_path(&f.path), "File changed while being opened; reading it from its start.");
                        self.retire(f.id, cp.as_ref());
                    }
                }
                if t.head_is_compressed() && !self.sources[f.source].read_compressed {
                    tracing::debug!(path = %crate::redact::safe_path(&f.path), "Not reading a compressed file.");
                    self.skipped.insert(f.id);
                    return Ok(());
                }
                self.checkpoints.remove(&f.id);
                self.metrics.files_open.inc();
                self.open_count[f.source] += 1;
                let linked = matches!(start, StartAt::Linked(_));
                self.files.push(t);
                if linked {
                    self.send_lines(self.files.len() - 1, Vec::new())?;
                }
            }
            // Replaced between the walk and the open: the next scan sees the new file.
            Ok(None) => self.rescan.store(true, Ordering::Release),
            Err(e) => {
                if self.open_failures.insert(f.path.clone(), e.kind()) != Some(e.kind()) {
                    tracing::warn!(path = %crate::redact::safe_path(&f.path), error = %e, "Cannot open log file; will retry.");
                    self.metrics.source_errors.inc();
                }
            }
        }
        Ok(())
    }

    /// At startup: a checkpointed file no longer matched under any path may have been
    /// renamed, while the agent was down, to a name the globs do not match (`app.log` →
    /// `app.log-20261203`). Its unread tail is still owed: a file with the checkpoint's
    /// device and inode in the directory it was last read in, whose first bytes still
    /// match, is opened at the checkpoint, read to its end and closed like any file
    /// rotated away. Files moved to another directory are not searched for.
    fn resume_renamed_away(&mut self, present: &HashMap<FileId, &Found>) -> Result<(), Ended> {
        let mut by_dir: HashMap<PathBuf, Vec<Checkpoint>> = HashMap::new();
        for cp in self.checkpoints.values() {
            if present.contains_key(&cp.id) {
                continue;
            }
            if let Some(dir) = cp.path.parent() {
                by_dir
                    .entry(dir.to_path_buf())
                    .or_default()
                    .push(cp.clone());
            }
        }
        let now = Instant::now();
        for (dir, cps) in by_dir {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let wanted: HashMap<FileId, &Checkpoint> = cps.iter().map(|c| (c.id, c)).collect();
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let id = FileId::of(&meta);
                let Some(cp) = wanted.get(&id) else {
                    continue;
                };
                // The source of the name it was read under; none if the config changed.
                let Some(source) = self.discovery.source_of(&cp.path) else {
                    continue;
                };
                if !meta.is_file() || meta.len() <= cp.offset {
                    continue;
                }
                let found = Found {
                    id,
                    source,
                    path: entry.path(),
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                self.retire_if_stale(&found);
                if !self.checkpoints.contains_key(&id) {
                    // Other contents under the inode: not the file that was read.
                    continue;
                }
                tracing::info!(from = %crate::redact::safe_path(&cp.path), to = %crate::redact::safe_path(&found.path), "File renamed away while the agent was down; reading it to its end.");
                let before = self.files.len();
                self.open_new(&found, true)?;
                if let Some(t) = self.files.get_mut(before) {
                    t.gone_since = Some(now);
                }
            }
        }
        Ok(())
    }

    /// Where a file without a checkpoint starts; `None`: hold it back for now (it may be
    /// the copy of an open file about to be truncated).
    fn without_checkpoint(&mut self, f: &Found, first: bool) -> Option<NoCheckpoint> {
        let head = read_head(&f.path).unwrap_or_default();
        let mut hashes: HashMap<u32, [u8; 32]> = HashMap::new();
        let mut prefix_hash = |len: u32| -> Option<[u8; 32]> {
            if len == 0 || head.len() < len as usize {
                return None;
            }
            Some(
                *hashes
                    .entry(len)
                    .or_insert_with(|| Sha256::digest(&head[..len as usize]).into()),
            )
        };
        let now = Instant::now();
        self.retired
            .retain(|r| now.duration_since(r.at) < RETIRED_MEMORY);
        if let Some(k) = self
            .retired
            .iter()
            .position(|r| r.from != f.id && prefix_hash(r.head_len) == Some(r.head_hash))
        {
            let r = self.retired.remove(k);
            return Some(NoCheckpoint::Linked(r.offset));
        }
        let cfg = &self.sources[f.source];
        if !first {
            // A twin: an open file with the same first bytes. The new file may be its copy
            // (copytruncate) in progress, also while it is still shorter than the
            // fingerprint (or empty): wait and see whether the twin gets truncated.
            let short = &head[..head.len().min(PREFIX_BYTES)];
            let twin = self.files.iter().position(|t| {
                let (len, hash) = t.fingerprint();
                if t.id == f.id || t.gone_since.is_some() || len == 0 {
                    return false;
                }
                if head.len() >= len as usize {
                    prefix_hash(len) == Some(hash)
                } else {
                    t.prefix().starts_with(short)
                }
            });
            if let Some(twin) = twin {
                let since = *self.held.entry(f.id).or_insert(now);
                // A twin already truncated whose truncation this loop has not handled yet
                // (it was busy, e.g. blocked by backpressure) keeps the new file held,
                // however long that took.
                if now.duration_since(since) < cfg.rotate_wait || self.files[twin].looks_truncated()
                {
                    return None;
                }
                // Still side by side after rotate_wait: two files, not a copy.
            }
            return Some(NoCheckpoint::Beginning);
        }
        if self.first_start[f.source] && cfg.read_from == ReadFrom::End {
            return Some(NoCheckpoint::End);
        }
        if let (Some(limit), Some(modified)) = (cfg.ignore_older, f.modified) {
            let age = std::time::SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default();
            if age > limit {
                return Some(NoCheckpoint::End);
            }
        }
        Some(NoCheckpoint::Beginning)
    }

    fn retire(&mut self, from: FileId, cp: Option<&Checkpoint>) {
        if let Some(cp) = cp {
            self.push_retired(from, cp.head_len, cp.head_hash, cp.offset);
        }
    }

    /// Drops the checkpoint of a found file if it no longer fits the file (shorter than
    /// the offset, or other first bytes), retiring its generation; the file is then
    /// treated as having no checkpoint.
    fn retire_if_stale(&mut self, f: &Found) {
        let Some(cp) = self.checkpoints.get(&f.id) else {
            return;
        };
        let Ok(head) = read_head(&f.path) else {
            return;
        };
        let len = cp.head_len as usize;
        let head_fits = head.len() >= len && {
            let h: [u8; 32] = Sha256::digest(&head[..len]).into();
            h == cp.head_hash
        };
        if f.len >= cp.offset && head_fits {
            return;
        }
        if f.len < cp.offset {
            tracing::warn!(
                path = %crate::redact::safe_path(&f.path), checkpoint_offset = cp.offset, size = f.len,
                "File is shorter than its checkpoint (truncated while not read); reading it from its start."
            );
            self.metrics.truncations.inc();
        } else {
            tracing::info!(
                path = %crate::redact::safe_path(&f.path),
                "File has a checkpointed identity but other contents (inode reused or rewritten); reading it from its start."
            );
        }
        let cp = self.checkpoints.remove(&f.id).expect("checked");
        self.retire(f.id, Some(&cp));
    }

    fn push_retired(&mut self, from: FileId, head_len: u32, head_hash: [u8; 32], offset: u64) {
        if head_len == 0 || offset == 0 {
            return;
        }
        self.retired_total += 1;
        if self.retired.len() >= RETIRED_MAX {
            self.retired.remove(0);
        }
        self.retired.push(Retired {
            from,
            head_len,
            head_hash,
            offset,
            at: Instant::now(),
        });
        if !self.held.is_empty() {
            self.rescan.store(true, Ordering::Release);
        }
    }

    /// Detects files rewritten in place whose size did not drop below our offset.
    /// Files whose size equals our read position and that were quiet are skipped, except
    /// every [`FULL_HEAD_CHECK_EVERY`]th scan: a file truncated and refilled to exactly the
    /// same size between two scans is rare, and reading every head each scan is most of
    /// the idle cost with thousands of files.
    fn check_heads(&mut self, sizes: &HashMap<FileId, u64>) -> Result<(), Ended> {
        let all = self.scans % FULL_HEAD_CHECK_EVERY == 0;
        for i in 0..self.files.len() {
            let t = &mut self.files[i];
            if !all && t.quiet && sizes.get(&t.id) == Some(&t.read_offset()) {
                continue;
            }
            match t.head_changed() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(path = %crate::redact::safe_path(&t.path), "File's first bytes changed (rewritten in place); reading it again from its start.");
                    self.metrics.truncations.inc();
                    let (len, hash) = t.fingerprint();
                    let offset = t.checkpoint().offset;
                    let res = t.restart_from_zero();
                    let id = t.id;
                    self.push_retired(id, len, hash, offset);
                    if let Err(e) = res {
                        self.file_error(i, &e);
                    }
                }
                Err(e) => self.file_error(i, &e),
            }
        }
        Ok(())
    }

    /// Drops the checkpoints of files not seen for their source's `checkpoint_expiry`, and
    /// has the pipeline delete them from the buffer.
    fn forget_old_checkpoints(&mut self) -> Result<(), Ended> {
        let now = super::unix_now();
        let default_expiry = self
            .sources
            .iter()
            .map(|s| s.checkpoint_expiry)
            .min()
            .unwrap_or(Duration::from_secs(7 * 24 * 3600));
        // An inode reused by a file being read now: its checkpoint is that file's.
        let open: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        self.deleted.retain(|id, _| !open.contains(id));
        let mut forget = Vec::new();
        for (id, c) in self.checkpoints.iter().chain(&self.deleted) {
            let expiry = self
                .discovery
                .source_of(&c.path)
                .map_or(default_expiry, |s| self.sources[s].checkpoint_expiry);
            if now.saturating_sub(c.updated_unix) >= expiry.as_secs() {
                forget.push(*id);
            }
        }
        if forget.is_empty() {
            return Ok(());
        }
        let mut placeholder = Checkpoint {
            id: forget[0],
            path: PathBuf::new(),
            offset: 0,
            head_len: 0,
            head_hash: [0; 32],
            updated_unix: now,
            shipped_to: [0; 3],
        };
        for id in &forget {
            if let Some(c) = self
                .checkpoints
                .remove(id)
                .or_else(|| self.deleted.remove(id))
            {
                tracing::debug!(path = %crate::redact::safe_path(&c.path), "Forgetting the checkpoint of a file gone for longer than checkpoint_expiry.");
                placeholder.path = c.path;
            }
        }
        self.send(Chunk {
            source: 0,
            path: Arc::from(placeholder.path.as_path()),
            lines: Vec::new(),
            checkpoint: placeholder,
            forget,
        })
    }

    fn ensure_watches(&mut self) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for root in self.discovery.roots() {
            if self.watched.contains(&root.dir) {
                continue;
            }
            match w.watch(&root.dir, root.watch_mode()) {
                Ok(()) => {
                    self.watched.insert(root.dir.clone());
                }
                Err(e) => {
                    if !self.watch_warned {
                        tracing::warn!(dir = %crate::redact::safe_path(&root.dir), error = %e, "Cannot watch a log directory for changes; relying on polling.");
                        self.watch_warned = true;
                    }
                }
            }
        }
    }

    /// One round-robin pass over every open file. True if any file had new bytes.
    ///
    /// Every `poll_interval`, after a scan, and when notifications overflowed, the pass
    /// looks at every open file. Otherwise only at files with a data change notification,
    /// not read to their end, holding something back, or gone: with thousands of mostly
    /// idle files, a line written to one of them costs one read, not one per file.
    fn read_all(&mut self) -> Result<bool, Ended> {
        let n = self.files.len();
        if n == 0 {
            return Ok(false);
        }
        let changed = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()));
        let full = changed.overflow
            || std::mem::take(&mut self.full_read_next)
            || self.watcher.is_none()
            || match self.last_full_read {
                None => true,
                Some(t) => t.elapsed() >= self.poll_interval,
            };
        if full {
            self.last_full_read = Some(Instant::now());
        }
        let mut notified = vec![false; n];
        if !full && !changed.paths.is_empty() {
            if self.path_index_stale {
                self.path_index = self
                    .files
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.path.clone(), i))
                    .collect();
                self.path_index_stale = false;
            }
            for p in &changed.paths {
                if let Some(&i) = self.path_index.get(p.as_path()) {
                    if let Some(x) = notified.get_mut(i) {
                        *x = true;
                    }
                }
            }
        }
        let start = self.rr_start % n;
        self.rr_start = (start + 1) % n;
        let mut any_data = false;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(t) = self.files.get(i) else {
                break;
            };
            // `quiet` is from this file's last read; a scan since then makes this pass full.
            if !full && t.quiet && !notified.get(i).copied().unwrap_or(true) {
                continue;
            }
            if self.stop.is_cancelled() {
                return Err(Ended::Stopped);
            }
            any_data |= self.read_one(i)?;
        }
        Ok(any_data)
    }

    fn read_one(&mut self, i: usize) -> Result<bool, Ended> {
        if self.files[i].is_parked() {
            return Ok(false);
        }
        let cfg = &self.sources[self.files[i].source];
        let partial_timeout = cfg.partial_line_timeout;
        let t = &mut self.files[i];
        let (pass, deleted) = match t.read_pass(&mut self.buf, PASS_BUDGET, partial_timeout) {
            Ok(r) => r,
            Err(e) => {
                self.file_error(i, &e);
                return Ok(false);
            }
        };
        if t.error_logged {
            t.error_logged = false;
            tracing::info!(path = %crate::redact::safe_path(&t.path), "Reading the file works again.");
        }
        if deleted && !t.deleted {
            tracing::debug!(path = %crate::redact::safe_path(&t.path), "Open file was deleted; reading it to its end.");
            t.deleted = true;
            t.gone_since.get_or_insert_with(Instant::now);
        }
        if let Some((len, hash, at)) = pass.retired {
            let before = self.retired_total;
            let id = self.files[i].id;
            self.push_retired(id, len, hash, at);
            if self.retired_total != before {
                // Link a copy of the truncated generation before this file's reset
                // checkpoint goes out (see open_new).
                self.scan()?;
            }
        }
        let t = &mut self.files[i];
        if let Some((offset, size)) = pass.truncated {
            tracing::warn!(path = %crate::redact::safe_path(&t.path), offset, size, "File was truncated; reading it again from its start.");
            self.metrics.truncations.inc();
        }
        self.metrics.bytes_read.inc_by(pass.bytes);
        self.metrics.lines_split.inc_by(pass.lines_split);
        let had_data = pass.bytes > 0;
        self.send_lines(i, pass.lines)?;
        let t = &mut self.files[i];
        t.quiet = t.at_eof
            && t.gone_since.is_none()
            && !t.has_pending()
            && t.sent_offset == t.checkpoint_offset();
        Ok(had_data)
    }

    /// Sends the file's lines with its current checkpoint, if there are lines or the
    /// checkpoint moved.
    fn send_lines(&mut self, i: usize, lines: Vec<super::Line>) -> Result<(), Ended> {
        let t = &self.files[i];
        let checkpoint = t.checkpoint();
        if lines.is_empty() && checkpoint.offset == t.sent_offset {
            return Ok(());
        }
        let count = lines.len() as u64;
        let offset = checkpoint.offset;
        let chunk = Chunk {
            source: t.source,
            path: t.path.clone(),
            lines,
            checkpoint,
            forget: Vec::new(),
        };
        self.metrics.lines_read.inc_by(count);
        self.send(chunk)?;
        self.files[i].sent_offset = offset;
        Ok(())
    }

    /// Blocks while the pipeline is full (that is the backpressure), but returns as soon
    /// as the stop token is cancelled.
    fn send(&self, mut chunk: Chunk) -> Result<(), Ended> {
        loop {
            // Wakes the moment the pipeline takes a chunk; the timeout only bounds how long
            // a stop can go unnoticed while the pipeline is not taking any.
            match self.tx.send_timeout(chunk, SEND_STOP_CHECK) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Disconnected(_)) => return Err(Ended::ReceiverGone),
                Err(SendTimeoutError::Timeout(c)) => {
                    chunk = c;
                    if self.stop.is_cancelled() {
                        return Err(Ended::Stopped);
                    }
                }
            }
        }
    }

    /// Closes files that are gone (renamed away from every matched path, or deleted),
    /// read to their end, and idle for `rotate_wait`. An unfinished last line is emitted.
    fn close_finished(&mut self) -> Result<(), Ended> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.files.len() {
            let t = &self.files[i];
            if t.gone_since.is_none() {
                i += 1;
                continue;
            }
            let rotate_wait = self.sources[t.source].rotate_wait;
            let done = t.at_eof
                && t.gone_since
                    .is_some_and(|g| now.duration_since(t.last_growth.max(g)) >= rotate_wait);
            if !done {
                i += 1;
                continue;
            }
            if t.is_parked() && !t.deleted && renamed_with_new_bytes(t).is_some() {
                // Not read to its end after all: the next scan reopens it (when a
                // descriptor is free).
                self.rescan.store(true, Ordering::Release);
                i += 1;
                continue;
            }
            let (lines, split) = self.files[i].flush();
            self.metrics.lines_split.inc_by(split);
            self.send_lines(i, lines)?;
            let t = self.files.remove(i);
            self.path_index_stale = true;
            tracing::debug!(path = %crate::redact::safe_path(&t.path), "Closed a rotated or deleted file.");
            self.metrics.files_open.dec();
            if !t.is_parked() {
                self.open_count[t.source] -= 1;
            }
            // A deleted file never comes back; its inode number may be reused by a new file,
            // so its checkpoint is kept only to be deleted from the buffer in time.
            let cp = t.checkpoint();
            if t.deleted {
                self.deleted.insert(cp.id, cp);
            } else {
                self.checkpoints.insert(cp.id, cp);
            }
        }
        Ok(())
    }

    fn file_error(&mut self, i: usize, e: &io::Error) {
        let t = &mut self.files[i];
        // Nothing more can be read now; lets a gone file with errors be closed in time.
        t.at_eof = true;
        if !t.error_logged {
            t.error_logged = true;
            tracing::warn!(path = %crate::redact::safe_path(&t.path), error = %e, "Cannot read log file; will retry.");
            self.metrics.source_errors.inc();
        }
    }
}

/// Paths named by data change notifications, bounded: past [`CHANGED_MAX`] paths only
/// "everything may have changed" is kept.
#[derive(Default)]
struct ChangedPaths {
    paths: HashSet<PathBuf>,
    overflow: bool,
}

const CHANGED_MAX: usize = 4096;

impl ChangedPaths {
    fn add(&mut self, paths: &[PathBuf]) {
        if self.overflow {
            return;
        }
        if paths.is_empty() || self.paths.len() + paths.len() > CHANGED_MAX {
            self.overflow = true;
            self.paths.clear();
            return;
        }
        self.paths.extend(paths.iter().cloned());
    }
}

/// True for a file that is not read unless `read_compressed`: by its name ending.
fn is_compressed(f: &Found) -> bool {
    let name = f.path.to_string_lossy();
    COMPRESSED_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// True when `head` starts like a compressed file.
pub(crate) fn has_compressed_magic(head: &[u8]) -> bool {
    COMPRESSED_MAGIC.iter().any(|m| head.starts_with(m))
}

/// For a parked file no longer found under a matched path: its new path, if it is still
/// in the directory it was last seen in (same device and inode, same first bytes) and has
/// grown past the read position. Files moved to another directory are not searched for.
fn renamed_with_new_bytes(t: &TailedFile) -> Option<PathBuf> {
    let dir = t.path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if FileId::of(&meta) != t.id {
            continue;
        }
        if !meta.is_file() || meta.len() <= t.read_offset() {
            return None;
        }
        let path = entry.path();
        // The inode alone proves nothing without a descriptor pinning it (deleted and
        // reused): the first bytes must be those read.
        let file = std::fs::File::open(&path).ok()?;
        let (head_len, _) = t.fingerprint();
        let head = super::tail::head_of(&file, u64::from(head_len)).ok()?;
        return (head == t.fingerprint()).then_some(path);
    }
    None
}

/// The first [`HEAD_BYTES`] bytes of the file at `path` (fewer if it is shorter).
fn read_head(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut head = vec![0u8; HEAD_BYTES];
    let mut got = 0;
    while got < head.len() {
        match std::os::unix::fs::FileExt::read_at(&file, &mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok(head)
}

/// (needs a rescan, needs a read) for a change notification. Access and metadata events of
/// our own reads and walks must not wake us, or the loop would spin.
fn classify(res: &notify::Result<notify::Event>) -> (bool, bool) {
    let ev = match res {
        Ok(ev) => ev,
        Err(_) => return (true, true),
    };
    if ev.need_rescan() {
        return (true, true);
    }
    match ev.kind {
        EventKind::Create(_) | EventKind::Remove(_) => (true, true),
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Modify(ModifyKind::Metadata(_)) => {
            (true, true)
        }
        EventKind::Modify(_) => (false, true),
        EventKind::Access(_) => (false, false),
        EventKind::Any | EventKind::Other => (true, true),
    }
}
