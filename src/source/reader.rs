//! The read loop: the source thread's scheduler. It rescans on change notifications and
//! every poll interval, opens new files, reads open ones round-robin with a per-file byte
//! budget, hands one [`Chunk`] per file and pass to the pipeline, and closes files that
//! were rotated away or deleted once they have been idle long enough.

use super::discover::{Discovery, Found};
use super::tail::{StartAt, TailedFile};
use super::{Checkpoint, Chunk, FileId, SourceError};
use crate::config::SourceConfig;
use crate::telemetry::AgentMetrics;
use crossbeam_channel::SendTimeoutError;
use notify::event::ModifyKind;
use notify::{EventKind, RecommendedWatcher, Watcher};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
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
/// Change notifications trigger a rescan at most this often.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(50);
/// Closed files' last checkpoints are remembered this long, so a file that comes back
/// under a matched path (renamed back) resumes instead of being read again.
const CLOSED_MEMORY_SECS: u64 = 24 * 3600;

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
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel(1);
        let rescan = Arc::new(AtomicBool::new(true));

        let waker = Waker::from(Arc::new(Wakeup(wake_tx.clone())));
        let mut stop_wait = Box::pin(stop.clone().cancelled_owned());
        // Registers the waker; a token already cancelled is seen by the loop's first check.
        let _ = stop_wait.as_mut().poll(&mut Context::from_waker(&waker));

        let watcher = {
            let rescan = rescan.clone();
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let (needs_rescan, wake) = classify(&res);
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
        Ok(ReadLoop {
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
            poll_interval,
            buf: vec![0; READ_BUF],
            _stop_wait: stop_wait,
        })
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
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    // Cannot happen while the watcher/waker hold a sender; poll instead.
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                }
            }
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
        for f in &self.files {
            let cfg = &self.sources[f.source];
            if f.has_pending() {
                next = next.min(f.last_growth + cfg.partial_line_timeout);
            }
            if let Some(gone) = f.gone_since {
                next = next.min(f.last_growth.max(gone) + cfg.rotate_wait);
            }
        }
        next
    }

    /// Finds files, opens new ones, marks open ones gone or present, retries watches.
    fn scan(&mut self) -> Result<(), Ended> {
        self.rescan.store(false, Ordering::Release);
        self.last_scan = Some(Instant::now());
        self.ensure_watches();
        let (found, problems) = self.discovery.scan();
        for p in problems {
            if self.walk_warned.insert(p.path.clone()) {
                tracing::warn!(path = %p.path.display(), error = %p.error, "Cannot search for log files here.");
                self.metrics.source_errors.inc();
            }
        }
        let now = Instant::now();
        let present: HashMap<FileId, &Found> = found.iter().map(|f| (f.id, f)).collect();
        for t in &mut self.files {
            match present.get(&t.id) {
                Some(f) => {
                    t.gone_since = None;
                    if *t.path != *f.path {
                        tracing::debug!(from = %t.path.display(), to = %f.path.display(), "Open file found under a new path.");
                        t.path = Arc::from(f.path.as_path());
                    }
                }
                None => {
                    if t.gone_since.is_none() {
                        tracing::debug!(path = %t.path.display(), "Open file no longer matched; reading it to its end.");
                        t.gone_since = Some(now);
                    }
                }
            }
        }
        let open: HashSet<FileId> = self.files.iter().map(|t| t.id).collect();
        let found_paths: HashSet<&PathBuf> = found.iter().map(|f| &f.path).collect();
        self.open_failures.retain(|p, _| found_paths.contains(p));
        for f in found.iter().filter(|f| !open.contains(&f.id)) {
            self.open_new(f);
        }
        self.check_heads()?;
        self.forget_old_checkpoints();
        Ok(())
    }

    fn open_new(&mut self, f: &Found) {
        let cfg = &self.sources[f.source];
        let cp = self.checkpoints.get(&f.id);
        match TailedFile::open(f.id, f.source, &f.path, cp, cfg.max_line_bytes) {
            Ok(Some((t, start))) => {
                self.open_failures.remove(&f.path);
                match start {
                    StartAt::Beginning => {
                        tracing::debug!(path = %f.path.display(), "Reading new file from its start.")
                    }
                    StartAt::Resume(offset) => {
                        tracing::debug!(path = %f.path.display(), offset, "Resuming file at its checkpoint.")
                    }
                    StartAt::HeadChanged => tracing::info!(
                        path = %f.path.display(),
                        "File has a checkpointed identity but other contents (inode reused); reading it from its start."
                    ),
                    StartAt::Truncated { offset, size } => {
                        tracing::warn!(
                            path = %f.path.display(), checkpoint_offset = offset, size,
                            "File is shorter than its checkpoint (truncated while not read); reading it from its start."
                        );
                        self.metrics.truncations.inc();
                    }
                }
                self.checkpoints.remove(&f.id);
                self.metrics.files_open.inc();
                self.files.push(t);
            }
            // Replaced between the walk and the open: the next scan sees the new file.
            Ok(None) => self.rescan.store(true, Ordering::Release),
            Err(e) => {
                if self.open_failures.insert(f.path.clone(), e.kind()) != Some(e.kind()) {
                    tracing::warn!(path = %f.path.display(), error = %e, "Cannot open log file; will retry.");
                    self.metrics.source_errors.inc();
                }
            }
        }
    }

    /// Detects files rewritten in place whose size did not drop below our offset.
    fn check_heads(&mut self) -> Result<(), Ended> {
        for i in 0..self.files.len() {
            let t = &mut self.files[i];
            match t.head_changed() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(path = %t.path.display(), "File's first bytes changed (rewritten in place); reading it again from its start.");
                    self.metrics.truncations.inc();
                    if let Err(e) = t.restart_from_zero() {
                        self.file_error(i, &e);
                    }
                }
                Err(e) => self.file_error(i, &e),
            }
        }
        Ok(())
    }

    fn forget_old_checkpoints(&mut self) {
        let now = super::unix_now();
        self.checkpoints
            .retain(|_, c| now.saturating_sub(c.updated_unix) < CLOSED_MEMORY_SECS);
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
                        tracing::warn!(dir = %root.dir.display(), error = %e, "Cannot watch a log directory for changes; relying on polling.");
                        self.watch_warned = true;
                    }
                }
            }
        }
    }

    /// One round-robin pass over every open file. True if any file had new bytes.
    fn read_all(&mut self) -> Result<bool, Ended> {
        let n = self.files.len();
        if n == 0 {
            return Ok(false);
        }
        let start = self.rr_start % n;
        self.rr_start = (start + 1) % n;
        let mut any_data = false;
        for k in 0..n {
            if self.stop.is_cancelled() {
                return Err(Ended::Stopped);
            }
            let i = (start + k) % n;
            any_data |= self.read_one(i)?;
        }
        Ok(any_data)
    }

    fn read_one(&mut self, i: usize) -> Result<bool, Ended> {
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
            tracing::info!(path = %t.path.display(), "Reading the file works again.");
        }
        if deleted && !t.deleted {
            tracing::debug!(path = %t.path.display(), "Open file was deleted; reading it to its end.");
            t.deleted = true;
            t.gone_since.get_or_insert_with(Instant::now);
        }
        if let Some((offset, size)) = pass.truncated {
            tracing::warn!(path = %t.path.display(), offset, size, "File was truncated; reading it again from its start.");
            self.metrics.truncations.inc();
        }
        self.metrics.bytes_read.inc_by(pass.bytes);
        self.metrics.lines_split.inc_by(pass.lines_split);
        let had_data = pass.bytes > 0;
        self.send_lines(i, pass.lines)?;
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
            let rotate_wait = self.sources[t.source].rotate_wait;
            let done = t.at_eof
                && t.gone_since
                    .is_some_and(|g| now.duration_since(t.last_growth.max(g)) >= rotate_wait);
            if !done {
                i += 1;
                continue;
            }
            let (lines, split) = self.files[i].flush();
            self.metrics.lines_split.inc_by(split);
            self.send_lines(i, lines)?;
            let t = self.files.remove(i);
            tracing::debug!(path = %t.path.display(), "Closed a rotated or deleted file.");
            self.metrics.files_open.dec();
            // A deleted file never comes back; its inode number may be reused by a new file.
            if !t.deleted {
                let cp = t.checkpoint();
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
            tracing::warn!(path = %t.path.display(), error = %e, "Cannot read log file; will retry.");
            self.metrics.source_errors.inc();
        }
    }
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
