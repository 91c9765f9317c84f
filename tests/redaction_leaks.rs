//! PII never leaves the host: the labelled corpus through `logveil redact` (scored with the
//! shared scorer), and through the whole agent, checking the decompressed buffer, the
//! archive and the agent's own debug logs for every default-type value.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn corpus(name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(shared().join("corpus/pii").join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The labelled values in the forms the default detectors cover: plain e-mails, cards,
/// IPv4 addresses, dashed or spaced SSNs, and E.164 phone numbers.
fn default_type_values(entries: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in entries {
        for p in e["pii"].as_array().unwrap() {
            if p.get("encoding").is_some() {
                continue;
            }
            let kind = p["type"].as_str().unwrap();
            let value = p["value"].as_str().unwrap();
            let covered = match kind {
                "email" | "marketplace_email" | "card" | "ipv4" => true,
                "ssn" => value.len() == 11,
                "phone" => {
                    value.starts_with('+')
                        && value[1..].bytes().all(|b| b.is_ascii_digit())
                        && (9..=16).contains(&value.len())
                }
                _ => false,
            };
            if covered {
                out.push((kind.to_string(), value.to_string()));
            }
        }
    }
    assert!(
        out.len() > 4000,
        "expected thousands of default-type values"
    );
    out
}

fn assert_no_value_in(haystack: &str, values: &[(String, String)], what: &str) {
    let finder = aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(values.iter().map(|(_, v)| v))
        .unwrap();
    if let Some(m) = finder.find(haystack) {
        panic!(
            "a {} value was found in {what}",
            values[m.pattern().as_usize()].0
        );
    }
}

fn redact_cli(input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(bin())
        .arg("redact")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn raw_corpus(name: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(shared().join("tools/score_redaction.py"))
        .arg("--emit-raw")
        .arg(shared().join("corpus/pii").join(name))
        .output()
        .expect("python3 runs the shared scorer");
    assert!(out.status.success());
    out.stdout
}

fn score(name: &str, redacted: &[u8]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let red = dir.path().join("redacted.txt");
    let json = dir.path().join("score.json");
    std::fs::write(&red, redacted).unwrap();
    let out = Command::new("python3")
        .arg(shared().join("tools/score_redaction.py"))
        .arg(shared().join("corpus/pii").join(name))
        .arg(&red)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[test]
fn redact_cli_keeps_lines_and_scores_on_the_corpus() {
    let raw = raw_corpus("dev.jsonl");
    let redacted = redact_cli(&raw);
    let count = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
    assert_eq!(
        count(&raw),
        count(&redacted),
        "one output line per input line"
    );
    let s = score("dev.jsonl", &redacted);
    let recall = |t: &str| {
        let c = &s["by_type"][t];
        let (n, leaked) = (c["count"].as_f64().unwrap(), c["leaked"].as_f64().unwrap());
        1.0 - leaked / n
    };
    // Targets of the redaction engine (figures in BENCHMARKS.md): every machine-detectable
    // type at 99.5% or better.
    for t in [
        "email",
        "marketplace_email",
        "phone",
        "card",
        "iban",
        "ssn",
        "vat",
        "ipv4",
        "ipv6",
        "jwt",
        "aws_key",
        "api_key",
        "order_id",
    ] {
        assert!(recall(t) >= 0.995, "{t} recall {}", recall(t));
    }
    // Names and addresses are caught under field names, not in free text (docs/REDACTION.md).
    assert!(recall("dob") >= 0.85, "dob recall {}", recall("dob"));
    assert!(recall("name") >= 0.80, "name recall {}", recall("name"));
    assert!(
        recall("address") >= 0.75,
        "address recall {}",
        recall("address")
    );

    let clean_raw = raw_corpus("clean-dev.jsonl");
    let clean = score("clean-dev.jsonl", &redact_cli(&clean_raw));
    let entries = clean["clean_entries"].as_u64().unwrap();
    // SQL statements lose their literals by design; everything else must stay as it was.
    let mut fp_non_sql = 0;
    for (family, f) in clean["by_family"].as_object().unwrap() {
        let fp = f["fp"].as_u64().unwrap();
        if !(family.starts_with("pgaudit") || family.starts_with("mariadb")) {
            fp_non_sql += fp;
        }
    }
    assert!(
        fp_non_sql * 100 <= entries,
        "{fp_non_sql} of {entries} clean non-SQL entries changed"
    );
}

/// No name or address under a PII field name of a JSON or logfmt record survives.
#[test]
fn no_name_or_address_under_a_field_name_survives() {
    let entries = corpus("dev.jsonl");
    let structured: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| matches!(e["format"].as_str(), Some("json" | "logfmt" | "cri")))
        .collect();
    let mut raw = Vec::new();
    for e in &structured {
        raw.extend_from_slice(e["line"].as_str().unwrap().as_bytes());
        raw.push(b'\n');
    }
    let redacted = String::from_utf8(redact_cli(&raw)).unwrap();
    let out: Vec<&str> = redacted.lines().collect();
    let mut i = 0;
    let mut checked = 0;
    for e in structured {
        let line = e["line"].as_str().unwrap();
        let n = line.lines().count();
        let red = out[i..i + n].join("\n").to_lowercase();
        i += n;
        for p in e["pii"].as_array().unwrap() {
            let kind = p["type"].as_str().unwrap();
            if kind != "name" && kind != "address" {
                continue;
            }
            let value = p["value"].as_str().unwrap();
            // Only values that sit under a key (`"key": "value"`, `key="value"`, `key=value`).
            let at = match line.find(value) {
                Some(at) => at,
                None => continue,
            };
            let before = line[..at].trim_end_matches(['"', '\\']).trim_end();
            if !(before.ends_with(':') || before.ends_with('=')) {
                continue;
            }
            checked += 1;
            assert!(
                !red.contains(&value.to_lowercase()),
                "a {kind} under a field name survived in a {} record",
                e["format"]
            );
        }
    }
    assert!(checked > 1000, "only {checked} field values checked");
}

#[test]
fn no_default_type_pii_in_buffer_archive_or_agent_logs() {
    let entries = corpus("dev.jsonl");
    let values = default_type_values(&entries);
    let mut w = World::new();
    w.agent_env = vec![("LOGVEIL_LOG".into(), "debug".into())];
    w.sources = format!(
        "[[sources]]\nname = \"app\"\ninclude = [\"{}/*.log\"]\npoll_interval = \"200ms\"\npartial_line_timeout = \"500ms\"\n",
        w.logs().display()
    );
    let file = w.logs().join("pii.log");
    std::fs::write(&file, raw_corpus("dev.jsonl")).unwrap();
    let lines = std::fs::read(&file)
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count();

    // Store down: everything stays in the buffer. Stop the agent and look inside sled.
    let mut agent = w.start_agent();
    wait_until(
        Duration::from_secs(120),
        "all lines sealed into the buffer",
        || buffered_records(&w) == Some(lines),
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(30));
    let buffer = logveil::buffer::Buffer::open(&w.path("data/buffer"), 1 << 20, 1 << 40).unwrap();
    let mut decompressed = String::new();
    let mut stored = 0;
    while let Some(b) = buffer.oldest().unwrap() {
        let env = logveil::envelope::Envelope::decode(&b.envelope).unwrap();
        decompressed.push_str(&String::from_utf8(env.decompress(1 << 30).unwrap()).unwrap());
        buffer.ack(&b.stream, b.seq).unwrap();
        stored += 1;
    }
    drop(buffer);
    assert!(stored > 0);
    assert_no_value_in(&decompressed, &values, "the decompressed sled buffer");
    let mut sled_files = Vec::new();
    for e in walkdir::WalkDir::new(w.path("data")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            sled_files.extend(std::fs::read(e.path()).unwrap());
        }
    }
    assert_no_value_in(
        &String::from_utf8_lossy(&sled_files),
        &values,
        "sled's files",
    );

    // Ship a fresh copy through the store and check the archive.
    std::fs::remove_dir_all(w.path("data")).unwrap();
    std::fs::create_dir_all(w.path("data")).unwrap();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let records = w.wait_records(lines, Duration::from_secs(120));
    let archive: String = records.iter().map(|r| r.to_string()).collect();
    assert_no_value_in(&archive, &values, "the archive");
    let mut raw_archive = Vec::new();
    for e in walkdir::WalkDir::new(w.path("archive")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            raw_archive.extend(std::fs::read(e.path()).unwrap());
        }
    }
    assert_no_value_in(
        &String::from_utf8_lossy(&raw_archive),
        &values,
        "archive files",
    );
    let logs = w.agent_logs();
    assert!(logs.contains("DEBUG"), "the agent ran at debug level");
    assert_no_value_in(&logs, &values, "the agent's debug logs");
}

/// Records held in the buffer, read through `batches sealed` log lines of the agent.
fn buffered_records(w: &World) -> Option<usize> {
    let logs = w.agent_logs();
    let mut n = 0;
    for line in logs.lines().filter(|l| l.contains("batch sealed")) {
        let rec = line.split("records=").nth(1)?.split_whitespace().next()?;
        n += rec.parse::<usize>().ok()?;
    }
    Some(n)
}
