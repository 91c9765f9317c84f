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

#[test]
fn a_store_that_stops_answering_times_out_is_retried_and_gets_every_line_once() {
    let mut w = World::new();
    w.agent_extra = "request_timeout = \"1s\"\n".into();
    let store = w.start_receiver();
    let agent = w.start_agent();
    let file = w.logs().join("t.log");
    lines(&file, "t", 0, 50);
    w.wait_records(50, LONG);
    // The store hangs: the kernel still accepts connections, nothing answers.
    store.signal(Signal::SIGSTOP);
    lines(&file, "t", 50, 150);
    wait_until(LONG, "a request timed out and is retried", || {
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("delivery failed, will retry") && l.contains("timeout"))
    });
    store.signal(Signal::SIGCONT);
    let records = w.wait_records(150, LONG);
    assert_file_shipped_exactly_once(&records, &file);
    let (ok, report) = w.verify();
    assert!(ok, "{report}");
}

/// Replaces the oldest batch in the agent's stopped buffer by one whose payload holds the
/// same records in other bytes (recompressed, padded with a zstd skippable frame to the same
/// length): what a damaged buffer that still decodes looks like. Returns its record count.
fn damage_oldest_payload(buffer_dir: &std::path::Path) -> usize {
    let db = sled::open(buffer_dir).unwrap();
    let batches = db.open_tree("batches").unwrap();
    let (key, stored) = batches.iter().next().unwrap().unwrap();
    let env = logveil::envelope::Envelope::decode(&stored).unwrap();
    let raw = env.decompress(env.header.decompressed_len).unwrap();
    let target = env.payload.len();
    let mut payload = zstd::bulk::compress(&raw, 19).unwrap();
    assert!(payload.len() + 8 <= target, "level 19 is not smaller");
    let pad = target - payload.len() - 8;
    payload.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    payload.extend_from_slice(&(pad as u32).to_le_bytes());
    payload.resize(target, 0);
    let mut damaged = stored[..stored.len() - target].to_vec();
    damaged.extend_from_slice(&payload);
    assert_ne!(&damaged[..], &stored[..]);
    let records = env.header.record_count as usize;
    batches.insert(key, damaged).unwrap();
    db.flush().unwrap();
    records
}

#[test]
fn a_batch_the_store_refuses_with_400_is_dead_lettered_counted_shown_redacted_and_replayed() {
    let mut w = World::new();
    let telemetry = free_port();
    w.agent_extra =
        format!("batch_max_bytes = 8192\n[telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n");
    // The store is down: batches wait in the buffer.
    let mut agent = w.start_agent();
    let file = w.logs().join("p.log");
    let line = |i: usize| format!("p {i:05} mail from jane.doe@example.com shipping test line");
    let text: String = (0..300).map(|i| line(i) + "\n").collect();
    append(&file, &text);
    wait_until(
        LONG,
        "every line read and sealed into several batches",
        || {
            metric(telemetry, "logveil_agent_lines_read_total") == Some(300.0)
                && metric(telemetry, "logveil_agent_buffer_batches").is_some_and(|b| b >= 2.0)
        },
    );
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    let lost = damage_oldest_payload(&w.path("data/buffer"));

    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    w.wait_records(300 - lost, LONG);
    wait_until(LONG, "the dead letter is counted", || {
        metric(telemetry, "logveil_agent_batches_dead_lettered_total") == Some(1.0)
    });
    let log = agent.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a batch for good"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains("ERROR") && refused[0].contains("HTTP 400: payload_hash"),
        "{}",
        refused[0]
    );
    assert!(
        !log.contains("jane.doe"),
        "the agent's logs hold no content"
    );
    let (ok, report) = w.verify();
    assert!(ok && report.contains("tombstones: 1,"), "{report}");

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    let cfg = w.path("agent.toml");
    let dead_letter = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("dead-letter")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = dead_letter(&["list"]);
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{listed}");
    let cols: Vec<&str> = rows[0].split('\t').collect();
    assert_eq!(cols[0], "default");
    assert_eq!(cols[2], lost.to_string());
    assert_eq!(cols[4], "HTTP 400: payload_hash", "{listed}");
    let shown = dead_letter(&["show"]);
    let shown: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(shown.len(), lost);
    for r in &shown {
        let body = r["body"].as_str().unwrap();
        assert!(
            body.contains("[REDACTED:email]") && !body.contains("jane.doe"),
            "{body}"
        );
    }
    let replayed = dead_letter(&["replay"]);
    assert!(replayed.contains("replayed default seq"), "{replayed}");
    assert_eq!(
        dead_letter(&["list"]).lines().count(),
        1,
        "only the header is left"
    );

    let _agent = w.start_agent();
    let records = w.wait_records(300, LONG);
    // Every line exactly once, redacted, at its offset; the replayed ones later in the chain.
    let mut got: Vec<(u64, String)> = records
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut offset = 0;
    for (i, (o, body)) in got.iter().enumerate() {
        assert_eq!(*o, offset, "line {i}");
        assert_eq!(
            *body,
            line(i).replace("jane.doe@example.com", "[REDACTED:email]")
        );
        offset += line(i).len() as u64 + 1;
    }
    let (ok, report) = w.verify();
    assert!(ok, "{report}");
}
