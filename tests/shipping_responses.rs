//! How the agent reacts to what the real central store answers: misconfiguration (403),
//! refusal for good (413 → dead letter + tombstone), server errors (5xx → retry), and limits
//! it cannot meet (refuses to start).

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn lines(path: &std::path::Path, tag: &str, from: usize, to: usize) {
    let text: String = (from..to)
        .map(|i| format!("{tag} {i:05} shipping test line\n"))
        .collect();
    append(path, &text);
}

#[test]
fn an_unenrolled_agent_keeps_its_batches_logs_an_error_and_ships_once_enrolled() {
    let mut w = World::new();
    std::fs::remove_file(w.path("trusted/test-host.pub")).unwrap();
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let file = w.logs().join("a.log");
    lines(&file, "a", 0, 500);
    wait_until(LONG, "an ERROR about the refusal", || {
        let log = agent.log_text();
        log.contains("ERROR") && log.contains("unknown_host")
    });
    assert!(w.records().is_empty());
    w.enroll();
    let records = w.wait_records(500, LONG);
    assert_file_shipped_exactly_once(&records, &file);
}

#[test]
fn refused_batches_are_dead_lettered_tombstoned_and_replayable() {
    let mut w = World::new();
    w.agent_extra = "batch_max_bytes = 8192\n".into();
    let mut store = w.start_receiver();
    let mut agent = w.start_agent();
    let file = w.logs().join("d.log");
    lines(&file, "d", 0, 100);
    w.wait_records(100, LONG);

    // The store comes back with a decompressed-size limit below the agent's batches.
    store.kill9();
    w.receiver_extra = "max_decompressed_bytes = 1024\n".into();
    let mut store = w.start_receiver();
    lines(&file, "d", 100, 400);
    wait_until(LONG, "batches dead-lettered", || {
        agent.log_text().contains("refused a batch for good")
    });
    // Later batches keep flowing once the store accepts them again.
    store.kill9();
    w.receiver_extra.clear();
    let _store = w.start_receiver();
    lines(&file, "d", 400, 500);
    wait_until(LONG, "lines written after the refusals arrive", || {
        w.records()
            .iter()
            .any(|r| r["body"] == "d 00499 shipping test line")
    });
    let (ok, report) = w.verify();
    assert!(ok, "tombstones keep the chain verifiable: {report}");
    assert!(
        report.contains("tombstones: ") && !report.contains("tombstones: 0"),
        "{report}"
    );

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    let cfg = w.path("agent.toml");
    let list = Command::new(bin())
        .args(["dead-letter", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(list.status.success());
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.lines().count() >= 2, "{listed}");
    assert!(listed.contains("413"), "{listed}");
    let replay = Command::new(bin())
        .args(["dead-letter", "replay", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let _agent = w.start_agent();
    let records = w.wait_records(500, LONG);
    // Every line arrived exactly once; the replayed ones later than their neighbours.
    let mut bodies: Vec<&str> = records
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 500);
    assert!(w.verify().0, "{}", w.verify().1);
}

#[test]
fn server_errors_are_retried_after_retry_after_until_the_store_recovers() {
    let mut w = World::new();
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let file = w.logs().join("r.log");
    lines(&file, "r", 0, 10);
    w.wait_records(10, LONG);
    // Break the store's storage under it: the chain directory becomes a file.
    let chain_dir = walkdir::WalkDir::new(w.path("archive"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .find(|p| p.extension().is_some_and(|e| e == "lvb"))
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let aside = chain_dir.with_extension("aside");
    std::fs::rename(&chain_dir, &aside).unwrap();
    std::fs::write(&chain_dir, b"not a directory").unwrap();
    lines(&file, "r", 10, 20);
    // The store answers 503 with Retry-After: 2; the agent waits that long, not its own
    // (much shorter, 50-500 ms in this config) backoff.
    wait_until(LONG, "the agent retries after a server error", || {
        agent.log_text().contains("delivery failed, will retry")
    });
    let log = agent.log_text();
    let retry = log
        .lines()
        .find(|l| l.contains("delivery failed, will retry"))
        .unwrap();
    assert!(retry.contains("status=503"), "{retry}");
    assert!(
        retry.contains("retry_in_ms=2000"),
        "Retry-After not honoured: {retry}"
    );
    std::fs::remove_file(&chain_dir).unwrap();
    std::fs::rename(&aside, &chain_dir).unwrap();
    let records = w.wait_records(20, LONG);
    assert_file_shipped_exactly_once(&records, &file);
}

#[test]
fn the_agent_refuses_to_start_with_batches_above_the_store_limits() {
    let mut w = World::new();
    w.receiver_extra = "max_decompressed_bytes = 65536\n".into();
    let _store = w.start_receiver();
    let mut agent = w.start_agent(); // batch_max_bytes defaults to 1 MiB
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        agent.log_text().contains("batch_max_bytes"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn batches_lost_from_the_agent_buffer_are_declared_as_a_gap_in_the_custody_ledger() {
    let mut w = World::new();
    let out = Command::new(bin())
        .args(["keygen", "--name", "store", "--out"])
        .arg(w.path("keys"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let store_telemetry = free_port();
    w.receiver_extra = format!(
        "store_key = \"{}\"\n[telemetry]\nlisten = \"127.0.0.1:{store_telemetry}\"\n",
        w.path("keys/store.key").display()
    );
    let telemetry = free_port();
    w.agent_extra =
        format!("batch_max_bytes = 8192\n[telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n");
    // The store is down: batches pile up in the buffer.
    let mut agent = w.start_agent();
    let file = w.logs().join("g.log");
    lines(&file, "g", 0, 1000);
    wait_until(LONG, "all lines read and several batches sealed", || {
        metric(telemetry, "logveil_agent_lines_read_total") == Some(1000.0)
            && metric(telemetry, "logveil_agent_buffer_batches").is_some_and(|b| b >= 4.0)
    });
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    // The buffer loses its two oldest batches (a restored backup, a disk fault).
    let lost_records = {
        let buffer =
            logveil::buffer::Buffer::open(&w.path("data/buffer"), 1 << 20, 1 << 40).unwrap();
        let mut lost = 0;
        for _ in 0..2 {
            let b = buffer.oldest().unwrap().unwrap();
            let env = logveil::envelope::Envelope::decode(&b.envelope).unwrap();
            lost += env.header.record_count as usize;
            buffer.ack(&b.stream, b.seq).unwrap();
        }
        buffer.flush().unwrap();
        lost
    };
    let store = w.start_receiver();
    let gap_alerts = "logveil_receiver_custody_alerts_total{kind=\"gap\"}";
    assert_eq!(metric(store_telemetry, gap_alerts), None, "no gap yet");
    let agent = w.start_agent();
    w.wait_records(1000 - lost_records, LONG);
    assert!(agent.log_text().contains("declaring the gap"));
    // The store raised the alert: one ERROR line naming it, and the counter.
    let alerts: Vec<String> = store
        .log_text()
        .lines()
        .filter(|l| l.contains("custody_gap"))
        .map(str::to_string)
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].contains("ERROR") && alerts[0].contains("from=1") && alerts[0].contains("to=2"),
        "{}",
        alerts[0]
    );
    assert_eq!(metric(store_telemetry, gap_alerts), Some(1.0));
    let ledger = std::fs::read_to_string(w.path("archive/.custody/ledger.jsonl")).unwrap();
    assert!(ledger.contains("gap"), "the custody ledger records the gap");
    let verify = Command::new(bin())
        .args(["verify", "--archive"])
        .arg(w.path("archive"))
        .arg("--keys")
        .arg(w.path("trusted"))
        .arg("--store-key")
        .arg(w.path("keys/store.pub"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "a declared gap verifies: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
