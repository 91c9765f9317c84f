//! The command-line tools a user runs: keygen, validate, verify on a real archive.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn keygen_writes_a_private_key_and_a_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = dir.path().join("k/agent.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public = std::fs::read_to_string(dir.path().join("k/agent.pub")).unwrap();
    assert!(public.starts_with("logveil-ed25519 "));
    // A second run must not overwrite the key.
    let again = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    assert!(!again.status.success());
}

fn validate(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(bin())
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).replace(p.to_str().unwrap(), "FILE"),
    )
}

const GOOD_AGENT: &str = r#"[agent]
host_id = "web-1"
data_dir = "/tmp/x"
signing_key = "/tmp/agent.key"

[[sources]]
name = "app"
include = ["/var/log/app/**/*.log"]

[sink]
url = "http://127.0.0.1:9443/v1/batches"
batch_max_wait = "1s"
"#;

#[test]
fn validate_accepts_the_example_configs() {
    for f in ["config.example.toml", "collector.example.toml"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let out = Command::new(bin())
            .args(["validate", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(validate(GOOD_AGENT).0, 0);
}

#[test]
fn validate_names_file_line_and_key_of_each_error() {
    // An unknown key.
    let (code, err) = validate(&GOOD_AGENT.replace("batch_max_wait", "batch_max_wiat"));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("FILE:12"), "{err}");
    assert!(err.contains("batch_max_wiat"), "{err}");
    // A bad duration.
    let (code, err) = validate(&GOOD_AGENT.replace("\"1s\"", "\"soon\""));
    assert_eq!(code, 64);
    assert!(
        err.contains("FILE:12") && err.contains("batch_max_wait"),
        "{err}"
    );
    // A semantic error found after parsing.
    let (code, err) = validate(&GOOD_AGENT.replace("[\"/var/log", "[\"var/log"));
    assert_eq!(code, 64);
    assert!(
        err.contains("FILE:8") && err.contains("sources.0.include"),
        "{err}"
    );
    let (code, err) = validate(&GOOD_AGENT.replace("http://", "ftp://"));
    assert_eq!(code, 64);
    assert!(err.contains("FILE:11") && err.contains("sink.url"), "{err}");
    // A wrong type.
    let (code, err) = validate(&format!("{GOOD_AGENT}[buffer]\nmax_bytes = \"lots\"\n"));
    assert_eq!(code, 64);
    assert!(
        err.contains("FILE:14") && err.contains("max_bytes"),
        "{err}"
    );
    // The central store's config too.
    let (code, err) = validate("[receiver]\nlisten = \"127.0.0.1:1\"\narchive_dir = \"/a\"\ntrusted_keys_dir = \"/k\"\nmax_body = 5\n");
    assert_eq!(code, 64);
    assert!(err.contains("FILE:5") && err.contains("max_body"), "{err}");
}

#[test]
fn verify_passes_a_real_archive_and_fails_on_any_tampering() {
    let mut w = World::new();
    w.agent_extra = "batch_max_bytes = 8192\n".into();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let file = w.logs().join("v.log");
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("verify line {i} for the archive\n"));
    }
    append(&file, &text);
    w.wait_records(2000, Duration::from_secs(120));
    let (ok, report) = w.verify();
    assert!(ok, "{report}");
    assert!(report.contains("problems: 0"), "{report}");

    let mut batches: Vec<std::path::PathBuf> = walkdir::WalkDir::new(w.path("archive"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "lvb"))
        .collect();
    batches.sort();
    assert!(
        batches.len() >= 4,
        "need several batches, got {}",
        batches.len()
    );

    // Any single changed byte, at a few positions of a few files.
    for (i, victim) in batches.iter().enumerate().take(3) {
        let orig = std::fs::read(victim).unwrap();
        for pos in [0, 9, orig.len() / 3, orig.len() / 2, orig.len() - 1] {
            let mut bad = orig.clone();
            bad[pos] ^= 0x20;
            let mut perms = std::fs::metadata(victim).unwrap().permissions();
            perms.set_mode(0o640);
            std::fs::set_permissions(victim, perms).unwrap();
            std::fs::write(victim, &bad).unwrap();
            let (ok, report) = w.verify();
            assert!(
                !ok,
                "file {i}, byte {pos} changed but verify passed: {report}"
            );
            std::fs::write(victim, &orig).unwrap();
        }
    }
    assert!(w.verify().0);

    // A batch deleted from the middle of the chain.
    let middle = &batches[batches.len() / 2];
    let saved = std::fs::read(middle).unwrap();
    std::fs::remove_file(middle).unwrap();
    let (ok, report) = w.verify();
    assert!(!ok, "deleted batch not noticed: {report}");
    std::fs::write(middle, &saved).unwrap();

    // Two batches swapped (reordered), and a batch replayed in place of another.
    let (a, b) = (&batches[1], &batches[2]);
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    std::fs::write(a, &bb).unwrap();
    std::fs::write(b, &ba).unwrap();
    assert!(!w.verify().0, "reordered batches not noticed");
    std::fs::write(b, &ba).unwrap();
    assert!(!w.verify().0, "replayed batch not noticed");
    std::fs::write(a, &ba).unwrap();
    std::fs::write(b, &bb).unwrap();
    assert!(w.verify().0, "{}", w.verify().1);
}

#[test]
fn verify_summarises_each_chain_with_its_policy_hashes_and_records_its_run() {
    let mut w = World::new();
    w.use_store_key();
    w.agent_extra = "batch_max_bytes = 8192\n".into();
    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    let file = w.logs().join("s.log");
    let lines = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| format!("summary line {i} card 4111 1111 1111 1111\n"))
            .collect()
    };
    append(&file, &lines(0, 1000));
    w.wait_records(1000, Duration::from_secs(120));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    // The redaction rules change: later batches carry another policy hash, same chain.
    w.agent_extra += "[redact]\ndefault_mode = \"mask\"\n";
    let _agent = w.start_agent();
    append(&file, &lines(1000, 1500));
    w.wait_records(1500, Duration::from_secs(120));

    // What the archive holds, read from the batch files themselves.
    let mut files = 0;
    let mut policies = std::collections::BTreeSet::new();
    for e in walkdir::WalkDir::new(w.path("archive")) {
        let p = e.unwrap().into_path();
        if p.extension().is_some_and(|e| e == "lvb") {
            let bytes = std::fs::read(&p).unwrap();
            let env = logveil::envelope::Envelope::decode(&bytes).unwrap();
            policies.insert(hex::encode(env.header.policy_hash));
            files += 1;
        }
    }
    assert_eq!(policies.len(), 2);

    let ledger = w.path("archive/.custody/ledger.jsonl");
    let entries_before = std::fs::read_to_string(&ledger).unwrap().lines().count();
    let (ok, report) = w.verify_archive(
        &w.path("archive"),
        &[
            "--record-with",
            w.path("keys/store.key").to_str().unwrap(),
            "--who",
            "auditor-7",
        ],
    );
    assert!(ok, "{report}");
    assert!(
        report.starts_with(&format!(
            "hosts: 1, chains: 1, batches: {files}, tombstones: 0, records: 1500, ledger entries: {entries_before}, problems: 0\n"
        )),
        "{report}"
    );
    let chain: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("chain test-host/default/"))
        .collect();
    assert_eq!(chain.len(), 1, "{report}");
    let listed: std::collections::BTreeSet<String> = chain[0]
        .split("policy hashes: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect();
    assert_eq!(listed, policies, "{report}");
    assert!(
        chain[0].contains(&format!("batches: {files}, tombstones: 0, records: 1500,")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "recorded as custody ledger entry {}",
            entries_before + 1
        )),
        "{report}"
    );

    // The run is the ledger's newest entry, and a later run still verifies the ledger.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let e = &last["entry"];
    assert_eq!(e["kind"], "verified", "{e}");
    assert_eq!(e["who"], "auditor-7");
    assert_eq!(e["problems"], 0);
    assert_eq!(e["batches"], files);
    assert_eq!(e["ledger_entries"], entries_before as u64);
    let (ok, again) = w.verify_archive(&w.path("archive"), &[]);
    assert!(ok, "{again}");
    assert!(
        again.contains(&format!(
            "ledger entries: {}, problems: 0",
            entries_before + 1
        )),
        "{again}"
    );
}
