//! Legal exceptions end to end: the real agent lifts the declared fields of matching
//! billing records, seals them to the compliance key and ships them on the `legal` stream
//! beside the fully redacted `default` records; `logveil reveal` opens them with the
//! compliance secret key, and only with it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

const FIRST: [&str; 6] = [
    "Hildegard",
    "Rosalind",
    "Evangeline",
    "Bartholomew",
    "Cornelius",
    "Philippa",
];
const LAST: [&str; 5] = [
    "Quennell",
    "Abernathy",
    "Vasquez-Ortiz",
    "Lindqvist",
    "Okonkwo",
];

/// One billing line's PII, unique per line.
struct Pii {
    tax_id: String,
    name: String,
    street: String,
    email: String,
}

fn pii(i: usize) -> Pii {
    Pii {
        tax_id: format!("DE{:09}", 314_159_000 + i),
        name: format!(
            "{} {}",
            FIRST[i % FIRST.len()],
            LAST[(i / FIRST.len()) % LAST.len()]
        ),
        street: format!("{} Kastanienallee", 100 + i),
        email: format!("buyer{i}.mail@example.org"),
    }
}

/// Every third line is an issued invoice (matches the exception); the others are views of
/// an invoice carrying the same kinds of PII, which must not be kept.
fn is_issued(i: usize) -> bool {
    i % 3 == 0
}

fn line(i: usize) -> String {
    let p = pii(i);
    let event = if is_issued(i) {
        "invoice.issued"
    } else {
        "invoice.viewed"
    };
    json!({
        "event": event,
        "invoice": format!("INV-{i:05}"),
        "buyer": {"tax_id": p.tax_id, "name": p.name, "email": p.email},
        "billing_address": {"street": p.street, "city": "Leipzig"},
        "amount": 100 + i,
    })
    .to_string()
}

/// Appends lines `from..to` to the billing log; returns the byte offset of each.
fn write_billing(path: &Path, from: usize, to: usize) -> Vec<(usize, u64)> {
    let mut offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut f = std::io::BufWriter::new(open_append(path));
    let mut out = Vec::new();
    for i in from..to {
        let l = line(i);
        writeln!(f, "{l}").unwrap();
        out.push((i, offset));
        offset += l.len() as u64 + 1;
    }
    f.flush().unwrap();
    out
}

fn keygen_compliance(w: &World, dir: &str) -> PathBuf {
    let out = Command::new(bin())
        .args(["keygen", "--compliance", "--out"])
        .arg(w.path(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen --compliance: {out:?}");
    w.path(dir)
}

fn exception_config(w: &World) -> String {
    format!(
        r#"
[redact]
compliance_key = "{}"

[[redact.exceptions]]
name = "tax-invoice"
legal_basis = "VAT Directive 2006/112/EC art. 244 (invoice retention)"
purpose = "tax invoice"
sources = ["billing"]
when = {{ event = "invoice.issued" }}
fields = ["buyer.tax_id", "buyer.name", "billing_address"]
retention_days = 3650
"#,
        w.path("compliance/compliance.pub").display()
    )
}

fn world() -> World {
    let mut w = World::new();
    keygen_compliance(&w, "compliance");
    keygen_compliance(&w, "other");
    w.agent_env = vec![("LOGVEIL_LOG".into(), "debug".into())];
    w.sources = format!(
        "[[sources]]\nname = \"billing\"\ninclude = [\"{}/billing.log\"]\nformat = \"json\"\npoll_interval = \"200ms\"\nmax_line_bytes = 2048\n\n[[sources]]\nname = \"app\"\ninclude = [\"{}/app.log\"]\nformat = \"json\"\npoll_interval = \"200ms\"\nmax_line_bytes = 2048\n",
        w.logs().display(),
        w.logs().display()
    );
    w.agent_extra = exception_config(&w);
    w
}

/// Every data envelope's decompressed payload in the archive, and the policy hashes seen.
fn archive_payloads(w: &World) -> (String, Vec<[u8; 32]>, BTreeMap<String, usize>) {
    let mut text = String::new();
    let mut hashes = Vec::new();
    let mut per_stream = BTreeMap::new();
    for e in walkdir::WalkDir::new(w.path("archive")) {
        let e = e.unwrap();
        if e.path().extension().and_then(|x| x.to_str()) != Some("lvb") {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        // The raw (compressed) bytes too, in case anything were stored outside the payload.
        text.push_str(&String::from_utf8_lossy(&bytes));
        let env = logveil::envelope::Envelope::decode(&bytes).unwrap();
        text.push_str(&String::from_utf8(env.decompress(1 << 30).unwrap()).unwrap());
        hashes.push(env.header.policy_hash);
        *per_stream.entry(env.header.stream.clone()).or_insert(0) += 1;
    }
    (text, hashes, per_stream)
}

fn assert_no_pii(haystack: &str, lines: std::ops::Range<usize>, what: &str) {
    for i in lines {
        let p = pii(i);
        for v in [&p.tax_id, &p.name, &p.street, &p.email] {
            assert!(
                !haystack.contains(v.as_str()),
                "{what} holds line {i}'s PII value"
            );
        }
    }
}

fn reveal(key: &Path, input: &Path) -> std::process::Output {
    Command::new(bin())
        .args(["reveal", "--key"])
        .arg(key)
        .arg("--in")
        .arg(input)
        .output()
        .unwrap()
}

fn by_stream<'a>(records: &'a [Value], stream: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["stream"] == stream).collect()
}

#[test]
fn matching_lines_ship_sealed_fields_on_the_legal_stream_and_stay_redacted_on_default() {
    let mut w = world();
    let billing = w.logs().join("billing.log");
    let total = 60;
    let offsets = write_billing(&billing, 0, total);
    // The same kind of line in a source the exception does not name: never kept.
    let app = w.logs().join("app.log");
    std::fs::write(&app, format!("{}\n", line(total))).unwrap();
    let issued: Vec<(usize, u64)> = offsets
        .iter()
        .copied()
        .filter(|(i, _)| is_issued(*i))
        .collect();

    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let records = w.wait_records(total + 1 + issued.len(), LONG);

    // default: every line once, at its offset, with no PII left.
    let default = by_stream(&records, "default");
    assert_eq!(default.len(), total + 1);
    let billing_path = billing.to_str().unwrap();
    let got: Vec<u64> = default
        .iter()
        .filter(|r| r["path"] == billing_path)
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, offsets.iter().map(|(_, o)| *o).collect::<Vec<_>>());
    for r in &default {
        let body = r["body"].as_str().unwrap();
        assert!(
            body.contains("[REDACTED:"),
            "a default record kept PII fields"
        );
        assert!(r.get("sealed").is_none());
    }

    // legal: exactly one record per issued line, tagged, with no plaintext.
    let legal = by_stream(&records, "legal");
    assert_eq!(
        legal
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        issued.iter().map(|(_, o)| *o).collect::<Vec<_>>()
    );
    let key_id = {
        let k = logveil::redact::legal::load_public(&w.path("compliance/compliance.pub")).unwrap();
        logveil::redact::legal::key_id(&k)
    };
    for r in &legal {
        assert_eq!(r["source"], "billing");
        assert_eq!(r["path"], billing_path);
        assert_eq!(r["exception"], "tax-invoice");
        assert_eq!(r["purpose"], "tax invoice");
        assert_eq!(
            r["legal_basis"],
            "VAT Directive 2006/112/EC art. 244 (invoice retention)"
        );
        assert_eq!(r["retention_days"], 3650);
        assert_eq!(r["key_id"], key_id.as_str());
        let mut fields: Vec<&str> = r["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        fields.sort();
        assert_eq!(fields, ["billing_address", "buyer.name", "buyer.tax_id"]);
        assert!(r.get("body").is_none());
        assert!(r["sealed"].as_str().unwrap().len() > 40);
        assert!(r["timestamp"].is_string());
    }

    // No plaintext PII value anywhere: archive cat, archive files and payloads, agent logs.
    let cat: String = records.iter().map(|r| format!("{r}\n")).collect();
    assert_no_pii(&cat, 0..total + 1, "archive cat");
    let (payloads, hashes, per_stream) = archive_payloads(&w);
    assert_no_pii(&payloads, 0..total + 1, "the archive's envelopes");
    assert!(
        per_stream.get("legal").is_some_and(|n| *n >= 1),
        "{per_stream:?}"
    );
    assert!(
        per_stream.get("default").is_some_and(|n| *n >= 1),
        "{per_stream:?}"
    );
    let logs = w.agent_logs();
    assert!(logs.contains("DEBUG"), "the agent ran at debug level");
    assert_no_pii(&logs, 0..total + 1, "the agent's logs");

    // The policy hash in every header covers the exceptions.
    let cfg = logveil::config::AgentConfig::load(&w.path("agent.toml")).unwrap();
    let with = logveil::redact::Redactor::from_config(&cfg.redact)
        .unwrap()
        .policy_hash();
    let mut without_cfg = cfg.redact.clone();
    without_cfg.exceptions.clear();
    let without = logveil::redact::Redactor::from_config(&without_cfg)
        .unwrap()
        .policy_hash();
    assert_ne!(with, without);
    assert!(hashes.iter().all(|h| *h == with));

    // reveal with the compliance key: exactly the listed fields of each issued line.
    let cat_file = w.path("out/cat.jsonl");
    std::fs::write(&cat_file, &cat).unwrap();
    let out = reveal(&w.path("compliance/compliance.key"), &cat_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reveal failed: {stderr}");
    let revealed: Vec<Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(revealed.len(), issued.len(), "non-legal lines are skipped");
    for (r, (i, offset)) in revealed.iter().zip(&issued) {
        let p = pii(*i);
        assert_eq!(r["offset"], *offset);
        assert_eq!(r["stream"], "legal");
        assert!(r.get("sealed").is_none());
        assert_eq!(
            r["revealed"],
            json!({
                "buyer.tax_id": p.tax_id,
                "buyer.name": p.name,
                "billing_address": {"street": p.street, "city": "Leipzig"},
            })
        );
        assert!(
            !r.to_string().contains(&p.email),
            "an unlisted field was kept"
        );
    }

    // Another key opens nothing, and says which record.
    let out = reveal(&w.path("other/compliance.key"), &cat_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "host=test-host path={billing_path} offset={} (exception tax-invoice)",
            issued[0].1
        )),
        "{stderr}"
    );
    assert!(stderr.contains("not sealed to this key"), "{stderr}");

    let (ok, report) = w.verify();
    assert!(ok, "verify failed: {report}");
}

#[test]
fn kill9_and_restart_leave_each_line_once_on_each_stream() {
    let mut w = world();
    let _store = w.start_receiver();
    let billing = w.logs().join("billing.log");
    let mut offsets = Vec::new();
    let mut next = 0;
    for _round in 0..4 {
        let mut agent = w.start_agent();
        // Kill while the agent is busy: after it has shipped part of a burst, with more
        // lines just written.
        let before = w.records().len();
        offsets.extend(write_billing(&billing, next, next + 300));
        next += 300;
        wait_until(LONG, "the agent ships part of the burst", || {
            w.records().len() > before
        });
        offsets.extend(write_billing(&billing, next, next + 300));
        next += 300;
        agent.kill9();
    }
    let _agent = w.start_agent();
    let issued: Vec<u64> = offsets
        .iter()
        .filter(|(i, _)| is_issued(*i))
        .map(|(_, o)| *o)
        .collect();
    let records = w.wait_records(next + issued.len(), LONG);
    let offsets_of = |stream: &str| -> Vec<u64> {
        by_stream(&records, stream)
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        offsets_of("default"),
        offsets.iter().map(|(_, o)| *o).collect::<Vec<_>>()
    );
    assert_eq!(offsets_of("legal"), issued);
    let (ok, report) = w.verify();
    assert!(ok, "verify failed: {report}");
}

#[test]
fn validate_names_the_file_line_and_key_of_bad_exception_config() {
    let w = world();
    let cfg = w.write_agent_config();
    let good = std::fs::read_to_string(&cfg).unwrap();
    let validate = || {
        Command::new(bin())
            .args(["validate", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = validate();
    assert!(out.status.success(), "{out:?}");

    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (from, to, key) in [
        (
            "retention_days = 3650",
            "retention_days = 0",
            "redact.exceptions.0.retention_days",
        ),
        (
            "fields = [\"buyer.tax_id\", \"buyer.name\", \"billing_address\"]",
            "fields = []",
            "redact.exceptions.0.fields",
        ),
        (
            "sources = [\"billing\"]",
            "sources = [\"biling\"]",
            "redact.exceptions.0.sources",
        ),
        (
            "purpose = \"tax invoice\"",
            "purpose = \"tax invoice\"\nkeep = true",
            "redact.exceptions.0.keep",
        ),
    ] {
        let text = good.replace(from, to);
        std::fs::write(&cfg, &text).unwrap();
        let out = validate();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{key}: {stderr}");
        let needle = to.lines().last().unwrap();
        let expected = format!("{}:{}: {key}:", cfg.display(), line_of(&text, needle));
        assert!(
            stderr.contains(&expected),
            "{key}: expected `{expected}` in {stderr}"
        );
    }

    // A second exception with the same name.
    let start = good.find("[[redact.exceptions]]").unwrap();
    let text = format!("{good}\n{}", &good[start..]);
    std::fs::write(&cfg, &text).unwrap();
    let out = validate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("redact.exceptions.1.name"), "{stderr}");

    // The compliance key must be readable.
    std::fs::write(
        &cfg,
        good.replace("compliance/compliance.pub", "compliance/missing.pub"),
    )
    .unwrap();
    let out = validate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("redact.compliance_key"), "{stderr}");
}

/// `archive cat` of an archive with a custody ledger, read (and recorded) as compliance.
fn records_as_compliance(w: &World) -> Vec<Value> {
    let out = Command::new(bin())
        .args(["archive", "cat", "--archive"])
        .arg(w.path("archive"))
        .args([
            "--who",
            "dpo",
            "--role",
            "compliance",
            "--reason",
            "TAX-1",
            "--record-with",
        ])
        .arg(w.path("keys/store.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[test]
fn legal_batches_lost_from_the_buffer_are_declared_as_a_gap_of_the_legal_stream_only() {
    let mut w = world();
    let out = Command::new(bin())
        .args(["keygen", "--name", "store", "--out"])
        .arg(w.path("keys"))
        .output()
        .unwrap();
    assert!(out.status.success());
    w.receiver_extra = format!("store_key = \"{}\"\n", w.path("keys/store.key").display());
    let telemetry = free_port();
    w.agent_extra = format!(
        "batch_max_bytes = 8192\n[telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n{}",
        exception_config(&w)
    );
    // The store is down: batches of both streams pile up in the buffer.
    let mut agent = w.start_agent();
    let billing = w.logs().join("billing.log");
    let total = 600;
    let offsets = write_billing(&billing, 0, total);
    let issued = offsets.iter().filter(|(i, _)| is_issued(*i)).count();
    wait_until(LONG, "all lines read and sealed", || {
        metric(telemetry, "logveil_agent_lines_read_total") == Some(total as f64)
            && metric(telemetry, "logveil_agent_legal_records_total") == Some(issued as f64)
    });
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    // The buffer loses the legal stream's two oldest batches.
    let lost = {
        let buffer =
            logveil::buffer::Buffer::open(&w.path("data/buffer"), 1 << 20, 1 << 40).unwrap();
        assert!(
            buffer.chain_state("legal").unwrap().next_seq > 3,
            "several legal batches"
        );
        let mut lost = 0;
        for seq in 1..=2 {
            let b = buffer.get("legal", seq).unwrap().unwrap();
            let env = logveil::envelope::Envelope::decode(&b).unwrap();
            assert_eq!(env.header.stream, "legal");
            lost += env.header.record_count as usize;
            buffer.ack("legal", seq).unwrap();
        }
        buffer.flush().unwrap();
        lost
    };
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let mut records = Vec::new();
    wait_until(LONG, "every remaining record archived", || {
        records = records_as_compliance(&w);
        records.len() == total + issued - lost
    });
    assert_eq!(by_stream(&records, "default").len(), total);
    assert_eq!(by_stream(&records, "legal").len(), issued - lost);
    assert!(agent.log_text().contains("declaring the gap"));
    let ledger = std::fs::read_to_string(w.path("archive/.custody/ledger.jsonl")).unwrap();
    let gaps: Vec<&str> = ledger.lines().filter(|l| l.contains("\"gap\"")).collect();
    assert!(!gaps.is_empty(), "the custody ledger records the gap");
    assert!(
        gaps.iter().all(|g| g.contains("\"stream\":\"legal\"")),
        "{gaps:?}"
    );
    // An auditor does not see the legal stream at all.
    let out = Command::new(bin())
        .args(["archive", "cat", "--archive"])
        .arg(w.path("archive"))
        .args(["--who", "ops", "--reason", "AUDIT-1", "--record-with"])
        .arg(w.path("keys/store.key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"legal\""));
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
