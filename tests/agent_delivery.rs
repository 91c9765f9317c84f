//! End to end: the real agent tails real files and ships to the real central store on
//! 127.0.0.1; the archive is read back with `logveil archive cat` and checked line by line.

mod common;

use common::*;
use nix::sys::signal::Signal;
use rand::Rng;
use std::io::Write;
use std::time::{Duration, SystemTime};

const LONG: Duration = Duration::from_secs(120);

fn write_lines(path: &std::path::Path, tag: &str, from: usize, to: usize) {
    let mut f = std::io::BufWriter::new(open_append(path));
    for i in from..to {
        writeln!(f, "{tag} line {i:06} some payload text for the test").unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn hundred_thousand_lines_in_three_files_arrive_once_in_order() {
    let started = std::time::SystemTime::now();
    let mut w = World::new();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let files: Vec<_> = (0..3).map(|i| w.logs().join(format!("f{i}.log"))).collect();
    // Appended while the agent runs, in interleaved bursts.
    let total = 100_000;
    let per_file = total / 3 + 1;
    let mut written = 0;
    let mut next = [0usize; 3];
    let mut rng = rand::thread_rng();
    while written < total {
        let i = rng.gen_range(0..3);
        let n = rng
            .gen_range(1..2000)
            .min(per_file - next[i])
            .min(total - written);
        if n == 0 {
            continue;
        }
        write_lines(&files[i], &format!("f{i}"), next[i], next[i] + n);
        next[i] += n;
        written += n;
    }
    let records = w.wait_records(total, LONG);
    let mut checked = 0;
    for f in &files {
        checked += assert_file_shipped_exactly_once(&records, f);
    }
    assert_eq!(checked, total);
    for r in &records {
        assert_record_fields(r, "test-host", "app", started);
    }
    let (ok, report) = w.verify();
    assert!(ok, "verify failed: {report}");
}

/// Every field a record of a plain line has (docs/FORMAT.md), with its value checked: the
/// host, the source's name, the `default` stream, a path and offset, a body, and an RFC 3339
/// UTC timestamp of when the agent read the line (after `since`, not in the future).
fn assert_record_fields(r: &serde_json::Value, host: &str, source: &str, since: SystemTime) {
    assert_eq!(r["host"], host, "{r}");
    assert_eq!(r["source"], source, "{r}");
    assert_eq!(r["stream"], "default", "{r}");
    assert!(
        r["path"].as_str().is_some_and(|p| p.starts_with('/')),
        "{r}"
    );
    assert!(r["offset"].is_u64(), "{r}");
    assert!(r["body"].is_string(), "{r}");
    let ts = r["timestamp"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(ts.ends_with('Z'), "timestamp in UTC: {r}");
    let at = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}"));
    // RFC 3339 keeps whole seconds; the agent reads lines after `since`.
    let floor = since - Duration::from_secs(1);
    assert!(at >= floor && at <= SystemTime::now(), "{ts}");
}

#[test]
fn records_carry_the_machine_hostname_when_host_id_is_unset() {
    let started = SystemTime::now();
    let mut w = World::new();
    let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
    w.host_id.clear();
    std::fs::copy(
        w.path("keys/agent.pub"),
        w.path(&format!("trusted/{hostname}.pub")),
    )
    .unwrap();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let file = w.logs().join("h.log");
    write_lines(&file, "h", 0, 20);
    let records = w.wait_records(20, LONG);
    assert_file_shipped_exactly_once(&records, &file);
    for r in &records {
        assert_record_fields(r, &hostname, "app", started);
        assert_eq!(r["path"], file.to_str().unwrap());
    }
    let (ok, report) = w.verify();
    assert!(ok, "{report}");
    assert!(
        w.path("archive").join(&hostname).is_dir(),
        "archived under the hostname"
    );
}

#[test]
fn kill9_at_random_moments_loses_and_duplicates_nothing() {
    let mut w = World::new();
    let _store = w.start_receiver();
    let files: Vec<_> = (0..2).map(|i| w.logs().join(format!("k{i}.log"))).collect();
    let mut rng = rand::thread_rng();
    let mut next = [0usize; 2];
    for _round in 0..5 {
        let mut agent = w.start_agent();
        for _ in 0..rng.gen_range(3..8) {
            let i = rng.gen_range(0..2);
            let n = rng.gen_range(100..3000);
            write_lines(&files[i], &format!("k{i}"), next[i], next[i] + n);
            next[i] += n;
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        }
        agent.kill9();
    }
    let _agent = w.start_agent();
    let total: usize = next.iter().sum();
    let records = w.wait_records(total, LONG);
    for f in &files {
        assert_file_shipped_exactly_once(&records, f);
    }
    assert!(w.verify().0, "{}", w.verify().1);
}

#[test]
fn store_outage_and_full_buffer_pause_reading_and_lose_nothing() {
    let mut w = World::new();
    let telemetry_port = free_port();
    // A tiny buffer: a few batches fill it while the store is down.
    w.agent_extra = format!(
        "batch_max_bytes = 8192\n[buffer]\nmax_bytes = 40000\n[telemetry]\nlisten = \"127.0.0.1:{telemetry_port}\"\n"
    );
    let mut agent = w.start_agent();
    let file = w.logs().join("outage.log");
    let total = 80_000; // ~4 MB: far more than the buffer and the in-flight chunks hold
    append(&w.logs().join("pii.log"), "contact jane.doe@example.com\n");
    write_lines(&file, "o", 0, total);
    let metric = |name: &str| metric(telemetry_port, name);
    wait_until(LONG, "the buffer fills while the store is down", || {
        metric("logveil_agent_buffer_full_pauses_total").is_some_and(|n| n >= 1.0)
    });
    let read_then = metric("logveil_agent_lines_read_total").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let read_now = metric("logveil_agent_lines_read_total").unwrap();
    assert_eq!(
        read_then, read_now,
        "reading must pause while the buffer is full"
    );
    assert!(
        read_now < total as f64,
        "all lines were read despite a full buffer"
    );
    let buffered = metric("logveil_agent_buffer_bytes").unwrap();
    assert!(
        buffered <= 40000.0,
        "buffer holds {buffered} bytes, above max_bytes"
    );
    assert!(agent.is_running());
    let _store = w.start_receiver();
    let records = w.wait_records(total + 1, LONG);
    assert_file_shipped_exactly_once(&records, &file);
    // Every counter a user watches is exposed.
    let body = http_get(telemetry_port, "/metrics").unwrap();
    for name in [
        "logveil_agent_lines_read_total",
        "logveil_agent_bytes_read_total",
        "logveil_agent_redactions_total{type=\"email\"} 1",
        "logveil_agent_batches_sealed_total",
        "logveil_agent_batches_shipped_total",
        "logveil_agent_batches_retried_total",
        "logveil_agent_batches_dead_lettered_total",
        "logveil_agent_buffer_bytes",
        "logveil_agent_oldest_unshipped_batch_age_seconds",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert!(metric("logveil_agent_batches_retried_total").unwrap() > 0.0);
    assert_eq!(http_get(telemetry_port, "/health").unwrap(), "ok\n");
}

#[test]
fn sigterm_seals_and_exits_zero_and_a_partial_line_ships_whole_later() {
    let mut w = World::new();
    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    let file = w.logs().join("term.log");
    write_lines(&file, "t", 0, 1000);
    append(&file, "the final line is still being writ");
    w.wait_records(1000, LONG);
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status:?}"
    );
    assert_eq!(
        w.records().len(),
        1000,
        "the partial line must not ship at shutdown"
    );
    // The writer finishes the line while the agent is down; it ships whole once.
    append(&file, "ten\n");
    let _agent = w.start_agent();
    let records = w.wait_records(1001, LONG);
    assert_file_shipped_exactly_once(&records, &file);
    assert_eq!(
        records.last().unwrap()["body"],
        "the final line is still being written"
    );
}

#[test]
fn a_final_line_without_newline_ships_whole_after_idle_once() {
    let mut w = World::new();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let file = w.logs().join("idle.log");
    append(&file, "complete\nno newline at the end");
    let records = w.wait_records(2, LONG);
    assert_eq!(records[1]["body"], "no newline at the end");
    assert_eq!(records[1]["offset"], 9);
    // More time passes: it is not shipped again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.records().len(), 2);
}

#[test]
fn crash_points_between_seal_flush_ship_and_delete_lose_and_duplicate_nothing() {
    for point in [
        "after_seal_before_flush",
        "after_seal_flush",
        "before_ship",
        "after_ack_before_delete",
        "after_delete",
    ] {
        let mut w = World::new();
        let _store = w.start_receiver();
        let file = w.logs().join("crash.log");
        write_lines(&file, "c", 0, 3000);
        w.agent_extra = "batch_max_bytes = 8192\n".into();
        w.agent_env = vec![
            ("LOGVEIL_CRASH_AT".into(), point.into()),
            ("LOGVEIL_CRASH_AFTER".into(), "1".into()),
        ];
        let mut agent = w.start_agent();
        let status = agent.wait_exit(LONG);
        assert!(!status.success(), "{point}: the agent should have crashed");
        write_lines(&file, "c", 3000, 4000);
        w.agent_env.clear();
        let _agent = w.start_agent();
        let records = w.wait_records(4000, LONG);
        assert_file_shipped_exactly_once(&records, &file);
        assert!(w.verify().0, "{point}: {}", w.verify().1);
    }
}

#[test]
fn sigterm_with_the_store_down_exits_zero_within_the_drain_deadline_and_keeps_batches() {
    let mut w = World::new();
    // shutdown_timeout is 5s in the test config; the store is not running.
    let mut agent = w.start_agent();
    let file = w.logs().join("down.log");
    write_lines(&file, "s", 0, 2000);
    wait_until(LONG, "a batch sealed", || {
        agent.log_text().contains("delivery failed, will retry")
    });
    let started = std::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}, past the 5s drain deadline",
        started.elapsed()
    );
    // The batches wait in the buffer and ship on the next start.
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let records = w.wait_records(2000, LONG);
    assert_file_shipped_exactly_once(&records, &file);
}

#[test]
fn a_wiped_agent_starts_a_new_chain_and_both_chains_verify() {
    let mut w = World::new();
    w.use_store_key();
    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    let first = w.logs().join("before.log");
    write_lines(&first, "b", 0, 300);
    w.wait_records(300, LONG);
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());

    // The host is rebuilt: the agent's data_dir is gone (buffer, checkpoints, chain state),
    // and the old log was rotated away; the new agent ships new lines under the same host id.
    std::fs::remove_dir_all(w.path("data")).unwrap();
    std::fs::create_dir_all(w.path("data")).unwrap();
    std::fs::rename(&first, w.path("out/before.log.archived")).unwrap();
    let second = w.logs().join("after.log");
    write_lines(&second, "a", 0, 200);
    let agent = w.start_agent();
    let records = w.wait_records(500, LONG);

    // A new chain starts at seq 1: the store never saw a conflict with the old seqs.
    let log = agent.log_text();
    assert!(
        !log.contains("seq_conflict") && !log.contains("broken_chain") && !log.contains("409"),
        "{log}"
    );
    let old: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == first.to_str().unwrap())
        .collect();
    assert_eq!(old.len(), 300);
    assert_file_shipped_exactly_once(&records, &second);
    for (i, r) in old.iter().enumerate() {
        assert_eq!(
            r["body"],
            format!("b line {i:06} some payload text for the test")
        );
    }

    let (ok, report) = w.verify_archive(&w.path("archive"), &[]);
    assert!(ok, "{report}");
    assert!(
        report.contains("hosts: 1, chains: 2, ") && report.contains("records: 500,"),
        "{report}"
    );
    let chains: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("chain test-host/default/"))
        .collect();
    assert_eq!(chains.len(), 2, "{report}");
    let mut per_chain: Vec<&str> = chains
        .iter()
        .map(|l| {
            l.split("records: ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
        })
        .collect();
    per_chain.sort();
    assert_eq!(per_chain, ["200", "300"], "{report}");
    // Same rules before and after: one policy hash, the same on both chains.
    let policies: Vec<&str> = chains
        .iter()
        .map(|l| l.split("policy hashes: ").nth(1).unwrap())
        .collect();
    assert_eq!(policies[0].split(' ').count(), 1, "{report}");
    assert_eq!(policies[0].len(), 64, "{report}");
    assert_eq!(policies[0], policies[1], "{report}");
}
