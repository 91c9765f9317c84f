//! In-process tests of the file source: real files in temporary directories, `spawn` with a
//! real config, chunks read from the channel with deadlines.

use super::*;
use crate::config::{Format, SourceConfig};
use crate::telemetry::AgentMetrics;
use crossbeam_channel::{bounded as sync_channel, Receiver, RecvTimeoutError};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

fn source(include: &[&Path], exclude: &[&Path]) -> SourceConfig {
    let s = |p: &[&Path]| p.iter().map(|p| p.to_str().unwrap().to_string()).collect();
    SourceConfig {
        name: "test".into(),
        include: s(include),
        exclude: s(exclude),
        format: Format::Plain,
        max_line_bytes: 64 * 1024,
        partial_line_timeout: Duration::from_millis(400),
        poll_interval: Duration::from_millis(50),
        rotate_wait: Duration::from_millis(200),
        read_from: Default::default(),
        ignore_older: None,
        max_open_files: 1024,
        checkpoint_expiry: Duration::from_secs(3600),
        read_compressed: false,
        multiline: None,
    }
}

/// A received line, with the chunk it came in.
#[derive(Debug, Clone)]
struct Got {
    path: PathBuf,
    offset: u64,
    text: Vec<u8>,
    part: Option<(u32, bool)>,
    id: FileId,
    at: Instant,
}

struct Harness {
    rx: Receiver<Chunk>,
    stop: CancellationToken,
    handle: Option<SourceHandle>,
    metrics: AgentMetrics,
    got: Vec<Got>,
    chunks: Vec<Chunk>,
}

impl Harness {
    fn start(sources: Vec<SourceConfig>, checkpoints: Vec<Checkpoint>) -> Self {
        Self::start_with_capacity(sources, checkpoints, 64)
    }

    fn start_with_capacity(
        sources: Vec<SourceConfig>,
        checkpoints: Vec<Checkpoint>,
        cap: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(cap);
        let stop = CancellationToken::new();
        let metrics = AgentMetrics::default();
        let handle = spawn(sources, checkpoints, tx, stop.clone(), metrics.clone()).unwrap();
        Harness {
            rx,
            stop,
            handle: Some(handle),
            metrics,
            got: Vec::new(),
            chunks: Vec::new(),
        }
    }

    fn take(&mut self, chunk: Chunk) {
        for l in &chunk.lines {
            // The chunk's checkpoint is never before the end of a line it carries.
            assert!(
                l.end <= chunk.checkpoint.offset,
                "checkpoint {} before the end of the line at {} (end {})",
                chunk.checkpoint.offset,
                l.offset,
                l.end
            );
            self.got.push(Got {
                path: chunk.path.to_path_buf(),
                offset: l.offset,
                text: l.bytes.clone(),
                part: l.part,
                id: chunk.checkpoint.id,
                at: Instant::now(),
            });
        }
        self.chunks.push(chunk);
    }

    /// Receives until `cond` holds; panics at the deadline.
    fn until(&mut self, what: &str, mut cond: impl FnMut(&Harness) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !cond(self) {
            assert!(
                Instant::now() < end,
                "timed out waiting for: {what}; got {:?}",
                self.texts()
            );
            match self.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(c) => self.take(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("source ended"),
            }
        }
    }

    /// Receives for `d` (to check that nothing more, e.g. no duplicate, arrives).
    fn settle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Ok(c) = self.rx.recv_timeout(left) {
                self.take(c);
            }
        }
    }

    fn texts(&self) -> Vec<String> {
        self.got
            .iter()
            .map(|g| String::from_utf8_lossy(&g.text).into_owned())
            .collect()
    }

    fn has(&self, text: &str) -> bool {
        self.got.iter().any(|g| g.text == text.as_bytes())
    }

    fn count(&self, text: &str) -> usize {
        self.got
            .iter()
            .filter(|g| g.text == text.as_bytes())
            .count()
    }

    fn line(&self, text: &str) -> &Got {
        self.got
            .iter()
            .find(|g| g.text == text.as_bytes())
            .unwrap_or_else(|| panic!("no line {text:?}"))
    }

    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        t.elapsed()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn checkpoint_for(path: &Path, offset: u64) -> Checkpoint {
    let bytes = fs::read(path).unwrap();
    let head = &bytes[..bytes.len().min(HEAD_BYTES)];
    let meta = fs::metadata(path).unwrap();
    Checkpoint {
        id: FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        },
        path: path.to_path_buf(),
        offset,
        head_len: head.len() as u32,
        head_hash: Sha256::digest(head).into(),
        updated_unix: unix_now(),
        shipped_to: [0; 3],
    }
}

#[test]
fn lines_from_files_present_at_start_and_created_later_have_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    append(&a, b"first\nsecond\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("a.log's lines", |h| h.has("second"));
    assert_eq!(h.line("first").offset, 0);
    assert_eq!(h.line("second").offset, 6);

    let b = dir.path().join("b.log");
    append(&b, b"x\nyy\n");
    append(&a, b"third\n");
    h.until("b.log's lines and a.log's third", |h| {
        h.has("yy") && h.has("third")
    });
    assert_eq!(h.line("x").offset, 0);
    assert_eq!(h.line("x").path, b);
    assert_eq!(h.line("yy").offset, 2);
    assert_eq!(h.line("third").offset, 13);
    assert_eq!(h.metrics.lines_read.get(), 5);
    assert_eq!(h.metrics.bytes_read.get(), 19 + 5);
    assert_eq!(h.metrics.files_open.get(), 2);
    let last_a = h.chunks.iter().rev().find(|c| *c.path == *a).unwrap();
    assert_eq!(last_a.checkpoint.offset, 19);
    assert_eq!(last_a.checkpoint.head_len, 19);
    assert_eq!(last_a.checkpoint.path, a);
}

#[test]
fn crlf_line_end_is_not_part_of_the_line() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("w.log"), b"one\r\ntwo\r\nthree\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("three", |h| h.has("three"));
    assert_eq!(h.texts(), ["one", "two", "three"]);
    assert_eq!(h.line("two").offset, 5);
    assert_eq!(h.line("three").offset, 10);
}

#[test]
fn utf8_bom_is_not_part_of_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("bom.log"), b"\xEF\xBB\xBFhello\nworld\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("world", |h| h.has("world"));
    assert_eq!(h.line("hello").offset, 3);
    assert_eq!(h.line("world").offset, 9);
}

#[test]
fn invalid_utf8_and_nul_bytes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("bin.log"), b"a\xFF\x00b\xC3\n\x00\nend\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("end", |h| h.has("end"));
    assert_eq!(h.got[0].text, b"a\xFF\x00b\xC3");
    assert_eq!(h.got[1].text, b"\x00");
    assert_eq!(h.got[1].offset, 6);
}

#[test]
fn long_lines_are_split_into_parts_with_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = source(&[&dir.path().join("*.log")], &[]);
    cfg.max_line_bytes = 256;
    let long: Vec<u8> = (0..600).map(|i| b'a' + (i % 26) as u8).collect();
    let mut content = b"short\n".to_vec();
    content.extend_from_slice(&long);
    content.extend_from_slice(b"\nafter\n");
    append(&dir.path().join("long.log"), &content);
    let mut h = Harness::start(vec![cfg], vec![]);
    h.until("after", |h| h.has("after"));
    let parts: Vec<_> = h.got[1..4]
        .iter()
        .map(|g| (g.offset, g.text.len(), g.part))
        .collect();
    assert_eq!(
        parts,
        vec![
            (6, 256, Some((0, false))),
            (262, 256, Some((1, false))),
            (518, 88, Some((2, true)))
        ]
    );
    let joined: Vec<u8> = h.got[1..4].iter().flat_map(|g| g.text.clone()).collect();
    assert_eq!(joined, long);
    assert_eq!(h.line("after").offset, 607);
    assert_eq!(h.line("after").part, None);
    assert_eq!(h.metrics.lines_split.get(), 1);
}

#[test]
fn partial_final_line_is_held_back_then_emitted_once_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.log");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    let written = Instant::now();
    append(&p, b"full\npart");
    h.until("part", |h| h.has("part"));
    let waited = h.line("part").at.duration_since(written);
    assert!(
        waited >= Duration::from_millis(400),
        "emitted after {waited:?}"
    );
    assert!(h.line("full").at < h.line("part").at);
    assert_eq!(h.line("part").offset, 5);
    let cp = &h.chunks.last().unwrap().checkpoint;
    assert_eq!(cp.offset, 9);

    append(&p, b"more\n");
    h.until("more", |h| h.has("more"));
    assert_eq!(h.line("more").offset, 9);
    h.settle(Duration::from_millis(200));
    assert_eq!(h.count("part"), 1);
}

#[test]
fn incomplete_line_is_not_emitted_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.log");
    append(&p, b"done\nunfinished");
    let mut cfg = source(&[&dir.path().join("*.log")], &[]);
    cfg.partial_line_timeout = Duration::from_secs(60);
    let mut h = Harness::start(vec![cfg], vec![]);
    h.until("done", |h| h.has("done"));
    h.stop();
    while let Ok(c) = h.rx.try_recv() {
        h.take(c);
    }
    assert!(!h.has("unfinished"));
    assert!(h.chunks.iter().all(|c| c.checkpoint.offset <= 5));
}

fn rotation_keeps_every_line_exactly_once(glob_matches_rotated: bool) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let rotated = dir.path().join("app.log.1");
    let glob = dir.path().join(if glob_matches_rotated {
        "app.log*"
    } else {
        "app.log"
    });
    append(&log, b"old-1\nold-2\n");
    let mut h = Harness::start(vec![source(&[&glob], &[])], vec![]);
    h.until("old-2", |h| h.has("old-2"));

    // The writer keeps its descriptor across the rename, like a logger that has not yet
    // reopened its file.
    let mut writer = OpenOptions::new().append(true).open(&log).unwrap();
    fs::rename(&log, &rotated).unwrap();
    writer.write_all(b"old-3\n").unwrap();
    append(&log, b"new-1\n");
    writer.write_all(b"old-4\n").unwrap();
    append(&log, b"new-2\n");
    drop(writer);
    h.until("all lines", |h| {
        ["old-3", "old-4", "new-1", "new-2"]
            .iter()
            .all(|t| h.has(t))
    });
    if !glob_matches_rotated {
        h.until("the rotated file to be closed", |h| {
            h.metrics.files_open.get() == 1
        });
    }
    h.settle(Duration::from_millis(300));
    let mut texts = h.texts();
    texts.sort();
    assert_eq!(
        texts,
        ["new-1", "new-2", "old-1", "old-2", "old-3", "old-4"]
    );
    assert_eq!(h.line("old-3").offset, 12);
    assert_eq!(h.line("new-1").offset, 0);
    assert_eq!(h.line("new-2").offset, 6);
    if glob_matches_rotated {
        // Same identity under its new name: not a new file.
        assert_eq!(h.line("old-4").id, h.line("old-1").id);
        assert_eq!(h.metrics.files_open.get(), 2);
    }
}

#[test]
fn rename_rotation_reads_every_line_exactly_once() {
    rotation_keeps_every_line_exactly_once(false);
}

#[test]
fn rename_rotation_to_a_matching_name_keeps_the_identity() {
    rotation_keeps_every_line_exactly_once(true);
}

#[test]
fn copytruncate_restarts_at_zero_and_sends_the_reset_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.log");
    append(&p, b"one\ntwo\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("two", |h| h.has("two"));
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    h.until("the reset checkpoint", |h| {
        h.chunks
            .iter()
            .any(|c| c.lines.is_empty() && c.checkpoint.offset == 0)
    });
    assert_eq!(h.metrics.truncations.get(), 1);
    append(&p, b"three\n");
    h.until("three", |h| h.has("three"));
    assert_eq!(h.line("three").offset, 0);
    assert_eq!(h.chunks.last().unwrap().checkpoint.offset, 6);
    assert_eq!(h.count("one"), 1);
}

#[test]
fn resumes_at_a_matching_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.log");
    append(&p, b"sealed\nnot-yet\n");
    let cp = checkpoint_for(&p, 7);
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![cp]);
    h.until("not-yet", |h| h.has("not-yet"));
    h.settle(Duration::from_millis(150));
    assert_eq!(h.texts(), ["not-yet"]);
    assert_eq!(h.line("not-yet").offset, 7);
    assert_eq!(h.metrics.truncations.get(), 0);
}

#[test]
fn checkpoint_with_another_head_hash_reads_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.log");
    append(&p, b"reused\ninode\n");
    let mut cp = checkpoint_for(&p, 7);
    cp.head_hash = [0; 32];
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![cp]);
    h.until("inode", |h| h.has("inode"));
    assert_eq!(h.line("reused").offset, 0);
    assert_eq!(h.metrics.truncations.get(), 0);
}

#[test]
fn file_shorter_than_its_checkpoint_is_read_from_zero_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.log");
    append(&p, b"short\n");
    let cp = checkpoint_for(&p, 100);
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![cp]);
    h.until("short", |h| h.has("short"));
    assert_eq!(h.line("short").offset, 0);
    assert_eq!(h.metrics.truncations.get(), 1);
}

#[test]
fn excluded_files_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("secret.log"), b"hidden\n");
    append(&dir.path().join("app.log"), b"shown\n");
    let cfg = source(&[&dir.path().join("*.log")], &[&dir.path().join("secret*")]);
    let mut h = Harness::start(vec![cfg], vec![]);
    h.until("shown", |h| h.has("shown"));
    append(&dir.path().join("secret.log"), b"hidden-2\n");
    h.settle(Duration::from_millis(200));
    assert_eq!(h.texts(), ["shown"]);
}

#[test]
fn double_star_globs_match_at_any_depth_including_new_directories() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("x/y")).unwrap();
    append(&dir.path().join("top.log"), b"top\n");
    append(&dir.path().join("x/one.log"), b"one\n");
    append(&dir.path().join("x/y/two.log"), b"two\n");
    append(&dir.path().join("x/y/two.txt"), b"not-a-log\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("**/*.log")], &[])], vec![]);
    h.until("existing files", |h| {
        ["top", "one", "two"].iter().all(|t| h.has(t))
    });
    fs::create_dir_all(dir.path().join("later/deeper")).unwrap();
    append(&dir.path().join("later/deeper/three.log"), b"three\n");
    h.until("three", |h| h.has("three"));
    assert!(!h.has("not-a-log"));
}

#[test]
fn single_star_does_not_cross_directories() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("sub")).unwrap();
    append(&dir.path().join("sub/deep.log"), b"deep\n");
    append(&dir.path().join("top.log"), b"top\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("top", |h| h.has("top"));
    h.settle(Duration::from_millis(150));
    assert_eq!(h.texts(), ["top"]);
}

#[test]
fn symlink_and_target_both_matching_are_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.log");
    append(&target, b"once\n");
    std::os::unix::fs::symlink(&target, dir.path().join("link.log")).unwrap();
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("once", |h| h.has("once"));
    append(&target, b"twice?\n");
    h.until("second line", |h| h.has("twice?"));
    h.settle(Duration::from_millis(200));
    assert_eq!(h.count("once"), 1);
    assert_eq!(h.count("twice?"), 1);
    assert_eq!(h.metrics.files_open.get(), 1);
}

fn fds_pointing_at(path: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = fs::read_link(e.path()) {
            if target
                .to_string_lossy()
                .starts_with(&*path.to_string_lossy())
            {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn deleted_file_is_read_to_its_end_then_closed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gone.log");
    append(&p, b"before\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("before", |h| {
        h.has("before") && h.metrics.files_open.get() == 1
    });
    assert_eq!(fds_pointing_at(&p), 1);
    let mut writer = OpenOptions::new().append(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    writer.write_all(b"last words\n").unwrap();
    drop(writer);
    h.until("last words", |h| h.has("last words"));
    h.until("the file to be closed", |h| h.metrics.files_open.get() == 0);
    assert_eq!(fds_pointing_at(&p), 0);

    // Re-created under the same name: a new file, read from its start.
    append(&p, b"reborn\n");
    h.until("reborn", |h| h.has("reborn"));
    assert_eq!(h.line("reborn").offset, 0);
    assert_eq!(h.count("before"), 1);
}

#[test]
fn busy_file_does_not_starve_a_quiet_one() {
    let dir = tempfile::tempdir().unwrap();
    let busy = dir.path().join("busy.log");
    let line = [b'b'; 1023];
    let mut content = Vec::new();
    for _ in 0..4096 {
        content.extend_from_slice(&line);
        content.push(b'\n');
    }
    append(&busy, &content); // 4 MiB: 16 passes of 256 KiB
    append(&dir.path().join("quiet.log"), b"quiet\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("quiet", |h| h.has("quiet"));
    let busy_before = h.got.iter().filter(|g| g.path == busy).count();
    assert!(
        busy_before <= 2 * 256,
        "quiet line came after {busy_before} busy lines"
    );
    h.until("all busy lines", |h| {
        h.got.iter().filter(|g| g.path == busy).count() == 4096
    });
}

#[test]
fn stop_ends_the_thread_promptly_while_the_channel_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.log");
    let mut content = Vec::new();
    for i in 0..40_000 {
        content.extend_from_slice(
            format!("line {i:08} with some padding to be long enough\n").as_bytes(),
        );
    }
    append(&p, &content); // ~2 MiB
    let cfg = source(&[&dir.path().join("*.log")], &[]);
    let mut h = Harness::start_with_capacity(vec![cfg], vec![], 1);
    // Two passes read means the first chunk fills the channel and the second is blocked.
    let end = Instant::now() + DEADLINE;
    while h.metrics.bytes_read.get() < 2 * 256 * 1024 {
        assert!(Instant::now() < end, "reading did not start");
        std::thread::yield_now();
    }
    let took = h.stop();
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    let mut received = 0;
    while let Ok(c) = h.rx.try_recv() {
        received += c.lines.len();
    }
    assert!(received < 40_000, "backpressure did not pause reading");
}

#[test]
fn change_notifications_wake_the_reader_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("sub")).unwrap();
    let mut cfg = source(&[&dir.path().join("**/*.log")], &[]);
    cfg.poll_interval = Duration::from_secs(60);
    let mut h = Harness::start(vec![cfg], vec![]);
    let p = dir.path().join("sub/new.log");
    append(&p, b"created\n");
    h.until("created", |h| h.has("created"));
    append(&p, b"appended\n");
    h.until("appended", |h| h.has("appended"));
}

#[test]
fn stop_wakes_an_idle_source_at_once() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("idle.log"), b"idle\n");
    let mut cfg = source(&[&dir.path().join("*.log")], &[]);
    cfg.poll_interval = Duration::from_secs(60);
    let mut h = Harness::start(vec![cfg], vec![]);
    h.until("idle", |h| h.has("idle"));
    let took = h.stop();
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    assert_eq!(h.metrics.files_open.get(), 0);
}

#[test]
fn unreadable_file_is_reported_and_others_still_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked.log");
    append(&locked, b"locked\n");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    if File::open(&locked).is_ok() {
        return; // running as root: permissions are not enforced
    }
    append(&dir.path().join("open.log"), b"open\n");
    let mut h = Harness::start(vec![source(&[&dir.path().join("*.log")], &[])], vec![]);
    h.until("open", |h| h.has("open"));
    h.until("the error counted", |h| h.metrics.source_errors.get() == 1);
    h.settle(Duration::from_millis(200));
    assert_eq!(
        h.metrics.source_errors.get(),
        1,
        "an error is counted once, not per poll"
    );
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644)).unwrap();
    h.until("locked", |h| h.has("locked"));
}

/// Copytruncate with the copy matched by the glob, with or without unread lines at the
/// moment of the copy: the copy continues where the truncated file was left.
fn copy_of_truncated_file_continues_where_it_was_left(unread: bool) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.log");
    let lines: String = (0..200)
        .map(|i| format!("first {i:04} padding\n"))
        .collect();
    append(&p, lines.as_bytes());
    let mut h = Harness::start(vec![source(&[&dir.path().join("c.log*")], &[])], vec![]);
    h.until("first", |h| h.has("first 0199 padding"));
    if unread {
        append(&p, b"late one\nlate two\n");
    }
    fs::copy(&p, dir.path().join("c.log.1")).unwrap();
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&p, b"after\n");
    h.until("after", |h| h.has("after"));
    if unread {
        h.until("late lines", |h| h.has("late two"));
    }
    h.settle(Duration::from_millis(800));
    assert_eq!(h.count("first 0000 padding"), 1, "{:?}", h.texts().len());
    assert_eq!(h.count("late one"), usize::from(unread));
    assert_eq!(h.got.len(), 200 + 1 + 2 * usize::from(unread));
}

#[test]
fn copy_of_a_truncated_file_is_not_read_again() {
    copy_of_truncated_file_continues_where_it_was_left(false);
}

#[test]
fn copy_of_a_truncated_file_yields_the_lines_not_read_before_the_truncation() {
    copy_of_truncated_file_continues_where_it_was_left(true);
}

#[test]
fn without_change_notifications_polling_finds_new_files_and_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = source(&[&dir.path().join("*.log")], &[]);
    cfg.poll_interval = Duration::from_millis(100);
    let (tx, rx) = sync_channel(64);
    let stop = CancellationToken::new();
    let handle = spawn_polling_only(vec![cfg], tx, stop.clone()).unwrap();
    let mut h = Harness {
        rx,
        stop,
        handle: Some(handle),
        metrics: AgentMetrics::default(),
        got: Vec::new(),
        chunks: Vec::new(),
    };
    std::thread::sleep(Duration::from_millis(150));
    append(&dir.path().join("late.log"), b"found by polling\n");
    h.until("the new file's line", |h| h.has("found by polling"));
    append(&dir.path().join("late.log"), b"appended later\n");
    h.until("the appended line", |h| h.has("appended later"));
    assert_eq!(h.count("found by polling"), 1);
}

#[test]
fn with_more_files_than_max_open_files_all_are_read_and_descriptors_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        append(
            &dir.path().join(format!("f{i:02}.log")),
            format!("file {i} first\n").as_bytes(),
        );
    }
    let mut cfg = source(&[&dir.path().join("*.log")], &[]);
    cfg.max_open_files = 5;
    let mut h = Harness::start(vec![cfg], vec![]);
    h.until("every first line", |h| {
        (0..40).all(|i| h.has(&format!("file {i} first")))
    });
    assert!(
        fds_in(dir.path()) <= 5,
        "{} descriptors",
        fds_in(dir.path())
    );
    // Parked files are reopened by identity when they change.
    for i in (0..40).step_by(3) {
        append(
            &dir.path().join(format!("f{i:02}.log")),
            format!("file {i} second\n").as_bytes(),
        );
    }
    h.until("every second line", |h| {
        (0..40)
            .step_by(3)
            .all(|i| h.has(&format!("file {i} second")))
    });
    assert!(fds_in(dir.path()) <= 5);
    h.settle(Duration::from_millis(300));
    for i in 0..40 {
        assert_eq!(h.count(&format!("file {i} first")), 1);
    }
}

fn fds_in(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir) && t != dir)
        .count()
}
