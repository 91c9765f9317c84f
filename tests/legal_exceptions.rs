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
        "[[sources]]\nname = \"billing\"\ninclude = [\"{}/billing.log\"]\nformat = \"json\"\npoll_interval = \"200ms\"\n\n[[sources]]\nname = \"app\"\ninclude = [\"{}/app.log\"]\nformat = \"json\"\npoll_interval = \"200ms\"\n",
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
