//! Retention through the real `logveil receive`: days of a stream older than its
//! `retention_days` are swept away, each deletion is a ledger entry, other streams and
//! recent days stay, the chain continues, and `logveil verify` stays clean.

mod store_support;

use logveil::custody::{encode_line, parse_line, Event};
use logveil::envelope::keys;
use std::time::Duration;
use store_support::{wait_until, Host, Store};

/// Moves `stream`'s day directories of today to `old_day`, re-signing the ledger so the
/// archive looks as if the store had written them then (the store's own key, as a store
/// running on that day would have).
fn backdate(store: &Store, host: &str, stream: &str, old_day: &str) {
    let today = logveil::archive::today();
    let stream_dir = store.archive().join(host).join(stream);
    std::fs::rename(stream_dir.join(&today), stream_dir.join(old_day)).unwrap();
    let key = keys::load_signing_key(&store.path("keys/store.key")).unwrap();
    let path = logveil::custody::ledger_path(&store.archive());
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let mut prev = [0u8; 32];
    for line in text.lines() {
        let (mut entry, _) = parse_line(line, Some(&key.verifying_key())).unwrap();
        if let Event::Accepted { chain, day, .. } = &mut entry.event {
            if chain.stream == stream {
                *day = old_day.to_string();
            }
        }
        entry.prev = hex::encode(prev);
        let (l, hash) = encode_line(&entry, &key);
        out.push_str(&l);
        prev = hash;
    }
    std::fs::write(&path, out).unwrap();
}

#[test]
fn expired_days_are_deleted_on_record_and_the_archive_still_verifies() {
    let mut store = Store::new("");
    let mut default = Host::new("web-1", "default");
    let mut audit = Host::new("web-1", "audit");
    default.enroll(&store.path("trusted"));
    store.start();
    for i in 0..3 {
        let ts = format!("2025-01-01T10:00:0{i}Z");
        assert_eq!(store.post(default.next(&[(&ts, "u", "old")])), 200);
    }
    assert_eq!(
        store.post(audit.next(&[("2025-01-01T10:00:00Z", "root", "old")])),
        200
    );
    store.stop();
    let now = logveil::archive::parse_day(&logveil::archive::today()).unwrap();
    let old_day = logveil::archive::day_of(now - 10 * 86_400);
    backdate(&store, "web-1", "default", &old_day);
    backdate(&store, "web-1", "audit", &old_day);
    assert!(
        store.verify().0,
        "the backdated archive verifies: {}",
        store.verify().1
    );

    store.extra =
        "[receiver.retention]\nsweep_interval = \"1s\"\nretention_days = { default = 7 }\n".into();
    store.start();
    let expired = store.archive().join("web-1/default").join(&old_day);
    wait_until(Duration::from_secs(20), "the expired day is swept", || {
        !expired.exists()
    });
    // The audit stream has no retention: kept.
    assert!(store.archive().join("web-1/audit").join(&old_day).exists());
    // The chain continues after the deleted batches.
    assert_eq!(
        store.post(default.next(&[("2025-02-01T10:00:00Z", "u", "new")])),
        200
    );
    store.stop();

    let deleted: Vec<_> = store
        .ledger()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::RetentionDeleted {
                chain,
                day,
                first_seq,
                last_seq,
                files,
                retention_days,
            } => Some((
                chain.stream,
                day,
                first_seq,
                last_seq,
                files,
                retention_days,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        [("default".to_string(), old_day.clone(), 1, 3, 3, 7)]
    );
    let (clean, report) = store.verify();
    assert!(clean, "{report}");

    // Removing a batch by hand (no ledger entry) is still found.
    let today = logveil::archive::today();
    let chain_dir = store.archive().join("web-1/default").join(&today);
    let chain_dir = std::fs::read_dir(chain_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&chain_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(file).unwrap();
    let (clean, report) = store.verify();
    assert!(!clean, "{report}");
}
