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

/// Runs `logveil redact` with `args` on `input`; returns (stdout, stderr).
fn redact(args: &[&str], input: &[u8]) -> (Vec<u8>, String) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .arg("redact")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "redact {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, String::from_utf8(out.stderr).unwrap())
}

/// Input for the `redact` tests: PII of several types, an empty line, a CRLF line, a line
/// that is not valid UTF-8 (Latin-1 `é` inside a JSON name field), a last line without `\n`.
const PII_VALUES: [&str; 6] = [
    "jane.doe@example.com",
    "10.61.43.43",
    "4111 1111 1111 1111",
    "Jane Roe",
    "Garcia",
    "+14155550123",
];

fn redact_input() -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"sent to jane.doe@example.com from 10.61.43.43\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"{\"buyer_name\":\"Jane Roe\",\"card\":\"4111 1111 1111 1111\"}\n");
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(b"{\"buyer_name\":\"Jos\xe9 Garcia\",\"n\":1}\n");
    input.extend_from_slice(b"tel +14155550123 ok\r\n");
    input.extend_from_slice(b"no newline at the end");
    input
}

#[test]
fn redact_keeps_one_output_line_per_input_line() {
    let input = redact_input();
    let (out, _) = redact(&[], &input);
    let out_lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
    // 7 input lines, each ended by `\n` on output (the last split is the empty tail).
    assert_eq!(out_lines.len(), 8, "{}", String::from_utf8_lossy(&out));
    assert_eq!(out_lines[7], b"");
    assert_eq!(out_lines[1], b"", "an empty line stays empty");
    assert_eq!(out_lines[3], b"", "a CRLF empty line stays one empty line");
    assert_eq!(out_lines[6], b"no newline at the end");
    let text = String::from_utf8(out.clone()).unwrap();
    for v in PII_VALUES {
        assert!(!text.contains(v), "{v} survived: {text}");
    }
    // The invalid UTF-8 line is escaped, and its name field is still masked whole.
    assert_eq!(out_lines[4], br#"{"buyer_name":"[REDACTED:name]","n":1}"#);
    assert!(text.contains("[REDACTED:email]") && text.contains("[REDACTED:ipv4]"));
    assert!(text.contains("[REDACTED:card]") && text.contains("[REDACTED:phone]"));
}

/// Parses `line=N start=S end=E type=T rule=R mode=M` lines.
fn explain_lines(text: &str) -> Vec<(usize, usize, usize, String, String, String)> {
    text.lines()
        .map(|l| {
            let f: std::collections::HashMap<&str, &str> = l
                .split(' ')
                .map(|kv| kv.split_once('=').unwrap_or_else(|| panic!("bad line {l}")))
                .collect();
            (
                f["line"].parse().unwrap(),
                f["start"].parse().unwrap(),
                f["end"].parse().unwrap(),
                f["type"].to_string(),
                f["rule"].to_string(),
                f["mode"].to_string(),
            )
        })
        .collect()
}

#[test]
fn redact_explain_goes_to_stderr_or_a_file_never_to_stdout_and_holds_no_value() {
    let input = redact_input();
    let (plain_out, plain_err) = redact(&[], &input);
    assert_eq!(plain_err, "", "nothing on stderr without --explain");
    let (out, err) = redact(&["--explain"], &input);
    assert_eq!(out, plain_out, "--explain does not change stdout");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("explain.txt");
    let (out, file_err) = redact(&["--explain", file.to_str().unwrap()], &input);
    assert_eq!(out, plain_out, "--explain FILE does not change stdout");
    assert_eq!(file_err, "", "with a file, nothing on stderr");
    let from_file = std::fs::read_to_string(&file).unwrap();
    assert_eq!(from_file, err, "the file holds what stderr held");

    for v in PII_VALUES {
        assert!(!err.contains(v), "{v} is in the explanation: {err}");
    }
    let ex = explain_lines(&err);
    let lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    // Every span named is, in the input line, exactly the value it masked.
    let expect = [
        (1, "jane.doe@example.com", "email", "email"),
        (1, "10.61.43.43", "ipv4", "ipv4"),
        (3, "Jane Roe", "name", "field"),
        (3, "4111 1111 1111 1111", "card", "card"),
        (5, "Jos\u{FFFD} Garcia", "name", "field"),
        (6, "+14155550123", "phone", "phone_international"),
    ];
    assert_eq!(ex.len(), expect.len(), "{err}");
    for ((line, start, end, kind, rule, mode), (el, value, ek, er)) in ex.iter().zip(expect) {
        assert_eq!((*line, kind.as_str(), rule.as_str()), (el, ek, er), "{err}");
        assert_eq!(mode, "redact");
        let span = String::from_utf8_lossy(&lines[line - 1][*start..*end]);
        assert_eq!(span, value, "line {line} span {start}..{end}");
    }
}

#[test]
fn redact_format_selects_structured_handling_and_auto_detects_per_line() {
    // Under the PII field `shipping_address` an object's parts are masked leaf by leaf:
    // only a JSON walk sees them. Plain text still masks `"buyer_name":"…"` (key/value
    // pairs are read in every format) and the e-mail.
    let json =
        r#"{"buyer_name":"Jane Roe","shipping_address":{"line":"1 Main St","town":"Springfield"}}"#;
    let text = "sent to jane.doe@example.com";
    let input = format!("{json}\n{text}\n");
    let run = |format: &str| {
        let (out, _) = redact(&["--format", format], input.as_bytes());
        String::from_utf8(out).unwrap()
    };
    let walked = r#"{"buyer_name":"[REDACTED:name]","shipping_address":{"line":"[REDACTED:address]","town":"[REDACTED:address]"}}"#;
    let flat = r#"{"buyer_name":"[REDACTED:name]","shipping_address":{"line":"1 Main St","town":"Springfield"}}"#;
    let text_out = "sent to [REDACTED:email]";
    assert_eq!(run("json"), format!("{walked}\n{text_out}\n"));
    assert_eq!(run("plain"), format!("{flat}\n{text_out}\n"));
    assert_eq!(run("logfmt"), format!("{flat}\n{text_out}\n"));
    assert_eq!(run("auto"), format!("{walked}\n{text_out}\n"));
    assert_eq!(redact(&[], input.as_bytes()).0, run("auto").into_bytes());
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = || {
        Command::new(bin())
            .args(["keygen", "--out"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    assert!(keygen().status.success());
    // The key pair exists: refused, and the OS error is given once, not once per cause.
    let out = keygen();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.key"), "{err}");
    assert_eq!(err.matches("os error 17").count(), 1, "{err}");
}
