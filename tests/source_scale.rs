//! The file source at scale, end to end: thousands of files under a descriptor bound, one
//! inotify instance, and a quiet file not starved by a hot one.

mod common;

use common::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Descriptors of the agent pointing into `dir`, and its inotify instances.
fn fds(pid: i32, dir: &str) -> (usize, usize) {
    let mut files = 0;
    let mut inotify = 0;
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy();
                if t.starts_with(dir) && t.len() > dir.len() {
                    files += 1;
                }
                if t.contains("inotify") {
                    inotify += 1;
                }
            }
        }
    }
    (files, inotify)
}

fn count_records(w: &World) -> usize {
    let out = std::process::Command::new(bin())
        .args(["archive", "cat", "--archive"])
        .arg(w.path("archive"))
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

fn write_file(path: &std::path::Path, tag: &str, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("{tag} line {i}\n"));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn five_thousand_files_then_500_more_arrive_whole_under_the_descriptor_bound() {
    const BOUND: usize = 256;
    let mut w = World::new();
    w.sources = format!(
        "[[sources]]\nname = \"many\"\ninclude = [\"{}/*.log\"]\npoll_interval = \"500ms\"\nmax_open_files = {BOUND}\n",
        w.logs().display()
    );
    w.agent_extra = "batch_max_bytes = 1048576".into();
    for i in 0..5000 {
        write_file(&w.logs().join(format!("f{i:05}.log")), &format!("f{i}"), 10);
    }
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let pid = agent.pid();
    let logs = w.logs().to_string_lossy().into_owned();
    let max_seen = Arc::new(AtomicU64::new(0));
    let max_inotify = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_seen, max_inotify, done, logs) = (
            max_seen.clone(),
            max_inotify.clone(),
            done.clone(),
            logs.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let (f, i) = fds(pid, &logs);
                max_seen.fetch_max(f as u64, Ordering::Relaxed);
                max_inotify.fetch_max(i as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // 500 more appear while the first ones are being read.
    wait_until(Duration::from_secs(120), "the first lines", || {
        std::thread::sleep(Duration::from_millis(250));
        count_records(&w) > 0
    });
    for i in 0..500 {
        write_file(&w.logs().join(format!("g{i:05}.log")), &format!("g{i}"), 10);
    }
    let t0 = Instant::now();
    wait_until(Duration::from_secs(240), "55,000 records", || {
        std::thread::sleep(Duration::from_millis(500));
        let n = count_records(&w);
        assert!(n <= 55_000, "{n} records: duplicates");
        n == 55_000
    });
    eprintln!(
        "all 55,000 lines arrived {:?} after the 500 new files",
        t0.elapsed()
    );
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let records = w.records();
    for i in (0..5000).step_by(499).chain([4999]) {
        assert_file_shipped_exactly_once(&records, &w.logs().join(format!("f{i:05}.log")));
    }
    for i in (0..500).step_by(49).chain([499]) {
        assert_file_shipped_exactly_once(&records, &w.logs().join(format!("g{i:05}.log")));
    }
    let max = max_seen.load(Ordering::Relaxed) as usize;
    assert!(max <= BOUND, "{max} descriptors open, bound {BOUND}");
    assert!(max > 0, "the sampler saw the agent's files");
    let inotify = max_inotify.load(Ordering::Relaxed);
    assert!(inotify <= 1, "{inotify} inotify instances");
}

#[test]
fn a_quiet_files_line_arrives_while_a_hot_file_is_being_written() {
    let mut w = World::new();
    w.sources = format!(
        "[[sources]]\nname = \"app\"\ninclude = [\"{}/*.log\"]\npoll_interval = \"200ms\"\n",
        w.logs().display()
    );
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let quiet = w.logs().join("quiet.log");
    append(&quiet, "quiet first\n");
    w.wait_records(1, Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let hot = w.logs().join("hot.log");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut f = std::io::BufWriter::with_capacity(1 << 16, open_append(&hot));
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                writeln!(f, "hot line {i:010} with some padding to look like a log").unwrap();
                i += 1;
            }
            f.flush().unwrap();
            stop.load(Ordering::Relaxed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let written = Instant::now();
    append(&quiet, "quiet second\n");
    let out = w.path("out/quiet-check");
    wait_until(Duration::from_secs(60), "the quiet line", || {
        let o = std::process::Command::new(bin())
            .args(["archive", "cat", "--archive"])
            .arg(w.path("archive"))
            .output()
            .unwrap();
        std::fs::write(&out, &o.stdout).unwrap();
        o.stdout.windows(13).any(|x| x == b"quiet second\"")
    });
    let latency = written.elapsed();
    stop.store(true, Ordering::Relaxed);
    let stopped_by_us = writer.join().unwrap();
    assert!(
        stopped_by_us,
        "the hot writer ran out of time before the quiet line arrived"
    );
    eprintln!("quiet-file latency under a hot writer: {latency:?}");
}
