//! Reading the archive: operators with tokens and roles through the real `logveil receive`
//! and `logveil archive cat|search` binaries on 127.0.0.1; every read, allowed or denied,
//! is in the custody ledger; local reads are recorded too; files are the store user's only.

mod store_support;

use logveil::custody::Event;
use std::os::unix::fs::PermissionsExt;
use store_support::{run, run_env, Host, Store};

fn token(store: &Store, name: &str, role: &str) -> String {
    let out = run(&[
        "archive",
        "token",
        "--tokens",
        store.path("tokens").to_str().unwrap(),
        "--name",
        name,
        "--role",
        role,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `archive <args> --store URL` with `token`; (success, stdout lines, stderr).
fn remote(store: &Store, token: &str, args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let base = store.base();
    let mut all = vec!["archive"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--store", &base]);
    let out = run_env(&all, &[("LOGVEIL_TOKEN", token)]);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn reads(store: &Store) -> Vec<(String, String, String, String, bool, u64)> {
    store
        .ledger()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Read {
                who,
                role,
                via,
                reason,
                allowed,
                records,
                ..
            } => Some((who, role, via, reason, allowed, records)),
            _ => None,
        })
        .collect()
}

#[test]
fn operators_read_by_role_with_a_reason_and_every_read_is_recorded() {
    let mut store = Store::new("");
    let tokens = store.path("tokens");
    store.extra = format!(
        "[receiver.access]\ntokens_file = \"{}\"\n",
        tokens.display()
    );
    let alice = token(&store, "alice", "reader");
    let bob = token(&store, "bob", "auditor");
    let carol = token(&store, "carol", "compliance");
    assert!(
        !std::fs::read_to_string(&tokens).unwrap().contains(&alice),
        "only hashes are kept"
    );
    store.start();

    let mut default = Host::new("web-1", "default");
    let mut audit = Host::new("web-1", "audit");
    let mut legal = Host::new("web-1", "legal");
    default.enroll(&store.path("trusted"));
    for (h, recs) in [
        (
            &mut default,
            vec![
                ("2025-01-01T10:00:00Z", "u1", "login"),
                ("2025-01-02T10:00:00Z", "u2", "logout"),
            ],
        ),
        (&mut audit, vec![("2025-01-01T11:00:00Z", "root", "sudo")]),
        (&mut legal, vec![("2025-01-01T12:00:00Z", "u1", "hold")]),
    ] {
        assert_eq!(store.post(h.next(&recs)), 200);
    }

    // A reader sees the default stream only.
    let (ok, lines, err) = remote(&store, &alice, &["cat", "--reason", "INC-1 outage"]);
    assert!(ok, "{err}");
    let streams: Vec<_> = lines
        .iter()
        .map(|l| l["stream"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streams, ["default", "default"]);
    // Naming a stream the role may not read: 403, recorded.
    let (ok, lines, err) = remote(
        &store,
        &alice,
        &["search", "--stream", "legal", "--reason", "INC-1"],
    );
    assert!(!ok && lines.is_empty() && err.contains("403"), "{err}");
    let (ok, _, err) = remote(
        &store,
        &bob,
        &["search", "--stream", "legal", "--reason", "AUD-7"],
    );
    assert!(!ok && err.contains("403"), "{err}");
    // An auditor reads the audit stream; compliance reads legal.
    let (ok, lines, err) = remote(
        &store,
        &bob,
        &["search", "--stream", "audit", "--reason", "AUD-7"],
    );
    assert!(
        ok && lines.len() == 1 && lines[0]["user"] == "root",
        "{err}"
    );
    let (ok, lines, err) = remote(
        &store,
        &carol,
        &["search", "--stream", "legal", "--reason", "LEGAL-3"],
    );
    assert!(
        ok && lines.len() == 1 && lines[0]["body"] == "hold",
        "{err}"
    );
    // Filters: host, time window, field.
    let (ok, lines, err) = remote(
        &store,
        &carol,
        &[
            "search",
            "--host",
            "web-1",
            "--since",
            "2025-01-01T00:00:00Z",
            "--until",
            "2025-01-02T00:00:00Z",
            "--field",
            "user=u1",
            "--reason",
            "LEGAL-3",
        ],
    );
    assert!(ok, "{err}");
    let bodies: Vec<_> = lines.iter().map(|l| l["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["login", "hold"]);
    // No reason, no identity, a wrong token: refused.
    let (ok, _, err) = remote(&store, &alice, &["cat"]);
    assert!(!ok && err.contains("--reason"), "{err}");
    let (ok, _, err) = remote(&store, "", &["cat", "--reason", "x"]);
    assert!(!ok && err.contains("identity"), "{err}");
    let (ok, _, err) = remote(&store, "lvt_forged", &["cat", "--reason", "x"]);
    assert!(!ok && err.contains("401"), "{err}");
    // The API itself refuses a read without a reason.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/v1/records", store.base()))
            .bearer_auth(&carol)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 400);

    let r = reads(&store);
    let expect = |who: &str, reason: &str, allowed: bool, records: u64| {
        assert!(
            r.iter().any(|x| x.0 == who
                && x.3 == reason
                && x.4 == allowed
                && x.5 == records
                && x.2 == "api-token"),
            "no read by {who} ({reason}, allowed {allowed}, {records} records) in {r:?}"
        );
    };
    expect("alice", "INC-1 outage", true, 2);
    expect("alice", "INC-1", false, 0);
    expect("bob", "AUD-7", false, 0);
    expect("bob", "AUD-7", true, 1);
    expect("carol", "LEGAL-3", true, 1);
    expect("carol", "LEGAL-3", true, 2);
    assert!(
        r.iter().any(|x| x.0 == "-" && !x.4),
        "the unauthenticated read is recorded: {r:?}"
    );
    assert_eq!(r.len(), 7, "{r:?}");
    store.stop();

    // Local reads of an archive with a ledger need who, why and the store key; recorded.
    let archive = store.archive();
    let a = archive.to_str().unwrap();
    let out = run(&["archive", "cat", "--archive", a, "--reason", "x"]);
    assert!(!out.status.success());
    let key = store.path("keys/store.key");
    let out = run(&[
        "archive",
        "cat",
        "--archive",
        a,
        "--who",
        "ops",
        "--reason",
        "BACKUP-9",
        "--record-with",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        3,
        "auditor: default + audit"
    );
    let out = run(&[
        "archive",
        "search",
        "--archive",
        a,
        "--stream",
        "legal",
        "--who",
        "ops",
        "--reason",
        "BACKUP-9",
        "--record-with",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && out.stdout.is_empty());
    let r = reads(&store);
    assert!(
        r.iter()
            .any(|x| x.0 == "ops" && x.2 == "local" && x.4 && x.5 == 3),
        "{r:?}"
    );
    assert!(
        r.iter().any(|x| x.0 == "ops" && x.2 == "local" && !x.4),
        "{r:?}"
    );

    // Only the store's user can read the archive and the ledger.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&logveil::custody::ledger_path(&archive)), 0o600);
    for entry in walkdir::WalkDir::new(&archive).min_depth(1) {
        let entry = entry.unwrap();
        let m = mode(entry.path());
        assert_eq!(m & 0o077, 0, "{} is mode {m:o}", entry.path().display());
    }

    let (clean, report) = store.verify();
    assert!(clean, "{report}");
}

/// A private CA issuing the store's server certificate and operators' client certificates.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "logveil test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// Writes `<dir>/<file>.pem` and `<dir>/<file>.key` for a certificate valid for `name`.
    fn issue(&self, dir: &std::path::Path, file: &str, name: &str, client: bool) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn an_operator_reads_by_client_certificate_and_the_read_is_on_record() {
    let mut store = Store::new("");
    store.start();
    let mut default = Host::new("web-1", "default");
    let mut audit = Host::new("web-1", "audit");
    default.enroll(&store.path("trusted"));
    assert_eq!(
        store.post(default.next(&[("2025-03-01T10:00:00Z", "u1", "login")])),
        200
    );
    assert_eq!(
        store.post(audit.next(&[("2025-03-01T11:00:00Z", "root", "sudo")])),
        200
    );
    store.stop();

    // The store comes back on HTTPS, requiring client certificates; operators by certificate.
    let pki = Pki::new();
    let dir = store.path("pki");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca.pem()).unwrap();
    pki.issue(&dir, "server", "localhost", false);
    pki.issue(&dir, "alice", "ops.alice", true);
    pki.issue(&dir, "mallory", "ops.mallory", true);
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    store.extra = format!(
        "[receiver.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         [receiver.access]\ncerts = {{ \"ops.alice\" = \"auditor\" }}\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    );
    store.start();
    let url = format!("https://localhost:{}", store.port);
    let read_as = |who: &str, reason: &str| {
        run(&[
            "archive",
            "search",
            "--store",
            &url,
            "--ca",
            &p("ca.pem"),
            "--cert",
            &p(&format!("{who}.pem")),
            "--key",
            &p(&format!("{who}.key")),
            "--stream",
            "audit",
            "--reason",
            reason,
        ])
    };
    let out = read_as("alice", "INC-88 sudo review");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (&lines[0]["user"], &lines[0]["stream"]),
        (&"root".into(), &"audit".into())
    );
    // A certificate of the same CA for a name not in access.certs identifies nobody.
    let out = read_as("mallory", "curious");
    assert!(!out.status.success() && out.stdout.is_empty());

    let read: Vec<(String, String, String, String, String, bool, u64)> = store
        .ledger()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Read {
                who,
                role,
                via,
                reason,
                what,
                allowed,
                records,
            } => Some((who, role, via, reason, what, allowed, records)),
            _ => None,
        })
        .collect();
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(
        read[0],
        (
            "ops.alice".to_string(),
            "auditor".to_string(),
            "api-cert".to_string(),
            "INC-88 sudo review".to_string(),
            "stream=audit".to_string(),
            true,
            1
        )
    );
    assert_eq!((read[1].0.as_str(), read[1].5), ("-", false), "{read:?}");
    store.stop();

    // An auditor's copy verifies offline, with the reads on record.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(store.archive())
        .arg(copy.path().join("archive"))
        .status()
        .unwrap();
    assert!(status.success());
    // Nothing of the original is reachable any more.
    std::fs::rename(store.archive(), store.path("archive.moved")).unwrap();
    let out = run(&[
        "verify",
        "--archive",
        copy.path().join("archive").to_str().unwrap(),
        "--keys",
        store.path("trusted").to_str().unwrap(),
        "--store-key",
        store.path("keys/store.pub").to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.starts_with("hosts: 1, chains: 2, batches: 2, tombstones: 0, records: 2,"),
        "{report}"
    );
}
