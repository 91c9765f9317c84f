//! Start-up recovery through the real `logveil receive`: a batch in the archive but not in
//! the custody ledger is recorded only if it passes the checks ingest applies. A forged
//! one (unenrolled key, or the host's key with a wrong prev_hash) is not recorded, raises
//! the `archive_unrecorded_invalid` alert, is moved aside to `<seq>.lvb.quarantined`, and
//! the host's real batch at that seq is then accepted; `logveil verify` names the
//! quarantined file.

mod store_support;

use ed25519_dalek::SigningKey;
use logveil::custody::Event;
use store_support::{free_port, Host, Store};

fn metrics(port: u16) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

fn accepted_seqs(store: &Store) -> Vec<(u64, bool)> {
    store
        .ledger()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Accepted { seq, recovered, .. } => Some((seq, recovered)),
            _ => None,
        })
        .collect()
}

/// A copy of `host`'s chain state that signs with `key`.
fn forger(host: &Host, key: SigningKey, link: [u8; 32]) -> Host {
    let mut f = Host::new(&host.id, &host.stream);
    f.key = key;
    f.seq = host.seq;
    f.link = link;
    f
}

fn check_forgery_is_quarantined(forge: impl FnOnce(&Host) -> Vec<u8>) {
    let telemetry = free_port();
    let mut store = Store::new(&format!(
        "[telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n"
    ));
    let mut host = Host::new("web-1", "default");
    host.enroll(&store.path("trusted"));
    store.start();
    for i in 0..3 {
        let b = host.next(&[("2026-01-01T00:00:00Z", "u", &format!("m{i}"))]);
        assert_eq!(store.post(b), 200);
    }
    store.stop();

    let chain_dir = logveil::archive::chain_dir(
        &store.archive(),
        &host.id,
        &host.stream,
        &logveil::archive::today(),
        &host.chain_id,
    );
    let seq4 = chain_dir.join(logveil::archive::batch_file_name(4));
    std::fs::write(&seq4, forge(&host)).unwrap();

    store.start();
    assert_eq!(
        accepted_seqs(&store),
        vec![(1, false), (2, false), (3, false)],
        "the forgery must not be recorded"
    );
    let log = store.log();
    let alert = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("custody_archive_unrecorded_invalid"))
        .unwrap_or_else(|| panic!("no alert in\n{log}"));
    assert!(alert.contains("seq=4"), "{alert}");
    assert!(
        !log.contains("forged"),
        "no record contents in the log:\n{log}"
    );
    let m = metrics(telemetry);
    assert!(
        m.lines()
            .any(|l| l
                == "logveil_receiver_custody_alerts_total{kind=\"archive_unrecorded_invalid\"} 1"),
        "{m}"
    );
    assert!(!seq4.exists(), "the forgery is moved aside");
    let quarantined = chain_dir.join(format!(
        "{}{}",
        logveil::archive::batch_file_name(4),
        logveil::archive::QUARANTINE_SUFFIX
    ));
    assert!(quarantined.exists());

    // The host's real seq 4 (and its chain on) is accepted.
    let b4 = host.next(&[("2026-01-01T00:00:01Z", "u", "four")]);
    assert_eq!(store.post(b4), 200);
    let b5 = host.next(&[("2026-01-01T00:00:02Z", "u", "five")]);
    assert_eq!(store.post(b5), 200);
    assert_eq!(
        accepted_seqs(&store),
        vec![(1, false), (2, false), (3, false), (4, false), (5, false)]
    );

    // verify: the chain is whole; the quarantined file is reported, nothing else.
    let (clean, out) = store.verify();
    assert!(!clean, "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.contains("quarantined")).collect();
    assert_eq!(problems.len(), 1, "{out}");
    assert!(out.contains("batches: 5"), "{out}");
    assert!(!out.contains("not recorded"), "{out}");

    // Removing the quarantined file (the operator's call) leaves a clean archive, and a
    // restart keeps the chain.
    store.stop();
    std::fs::remove_file(&quarantined).unwrap();
    let (clean, out) = store.verify();
    assert!(clean, "{out}");
    store.start();
    let b6 = host.next(&[("2026-01-01T00:00:03Z", "u", "six")]);
    assert_eq!(store.post(b6), 200);
}

#[test]
fn an_unrecorded_batch_signed_by_an_unenrolled_key_is_quarantined() {
    check_forgery_is_quarantined(|host| {
        let mut f = forger(host, SigningKey::from_bytes(&[7; 32]), [3; 32]);
        f.next(&[("2026-01-01T00:00:09Z", "mallory", "forged")])
    });
}

#[test]
fn an_unrecorded_batch_with_a_wrong_prev_hash_is_quarantined() {
    check_forgery_is_quarantined(|host| {
        let mut f = forger(host, host.key.clone(), [3; 32]);
        f.next(&[("2026-01-01T00:00:09Z", "mallory", "forged")])
    });
}

#[test]
fn a_genuine_unrecorded_batch_is_still_recovered() {
    let mut store = Store::new("");
    let mut host = Host::new("web-1", "default");
    host.enroll(&store.path("trusted"));
    store.start();
    let b1 = host.next(&[("2026-01-01T00:00:00Z", "u", "one")]);
    assert_eq!(store.post(b1), 200);
    store.stop();
    // As if the store died between the archive write and the ledger entry.
    let b2 = host.next(&[("2026-01-01T00:00:01Z", "u", "two")]);
    let dir = logveil::archive::chain_dir(
        &store.archive(),
        &host.id,
        &host.stream,
        &logveil::archive::today(),
        &host.chain_id,
    );
    std::fs::write(dir.join(logveil::archive::batch_file_name(2)), &b2).unwrap();
    store.start();
    assert_eq!(accepted_seqs(&store), vec![(1, false), (2, true)]);
    assert!(!store.log().contains("archive_unrecorded_invalid"));
    assert_eq!(store.post(b2), 200, "a resend is a duplicate");
    let b3 = host.next(&[("2026-01-01T00:00:02Z", "u", "three")]);
    assert_eq!(store.post(b3), 200);
    let (clean, out) = store.verify();
    assert!(clean, "{out}");
}
