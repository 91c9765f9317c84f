//! The S3 archive against a real S3-compatible server (SeaweedFS `weed`, see s3_support):
//! Object Lock is enforced by the server, batches are archived exactly once, `verify --s3`
//! finds a batch hidden behind a delete marker, and several stores share one bucket.

mod common;
mod s3_support;
mod store_support;

use logveil::s3::PutOutcome;
use s3_support::{rt, versions, Weed};
use std::time::{Duration, SystemTime};
use store_support::{Host, Store};

const BUCKET: &str = "logveil-archive";

fn lock_headers(days: u64) -> Vec<(&'static str, String)> {
    let until = SystemTime::now() + Duration::from_secs(days * 86_400);
    vec![
        ("if-none-match", "*".to_string()),
        ("x-amz-object-lock-mode", "COMPLIANCE".to_string()),
        (
            "x-amz-object-lock-retain-until-date",
            humantime::format_rfc3339_seconds(until).to_string(),
        ),
    ]
}

/// A store on `weed`'s bucket, with its own ledger and instance id.
fn s3_store(weed: &Weed, instance: &str) -> Store {
    let mut s = Store::new(&weed.receiver_section(BUCKET, instance));
    s.start();
    s
}

/// A second instance of `first`'s store service: same bucket and store key (so one
/// `--store-key` verifies every ledger), its own ledger and instance id.
fn another_instance(weed: &Weed, first: &Store, instance: &str) -> Store {
    let mut s = Store::new(&weed.receiver_section(BUCKET, instance));
    for f in ["keys/store.key", "keys/store.pub"] {
        std::fs::copy(first.path(f), s.path(f)).unwrap();
    }
    s.start();
    s
}

fn ts(i: usize) -> String {
    format!("2026-01-01T00:00:{:02}Z", i % 60)
}

#[test]
fn the_server_enforces_object_lock_and_conditional_writes() {
    let weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    let rt = rt();
    let key = "probe/locked.bin";
    let put = rt
        .block_on(client.put_object(key, "first".into(), &lock_headers(1)))
        .unwrap();
    let PutOutcome::Created {
        version_id: Some(version),
    } = put
    else {
        panic!("a locked PUT should create a version: {put:?}");
    };
    // A second write of the key is refused by If-None-Match.
    let again = rt
        .block_on(client.put_object(key, "second".into(), &lock_headers(1)))
        .unwrap();
    assert_eq!(again, PutOutcome::PreconditionFailed);
    // Deleting the locked version is refused, and it stays readable.
    let status = rt
        .block_on(client.delete_object(key, Some(&version)))
        .unwrap();
    assert!(
        !status.is_success(),
        "the server deleted a version under COMPLIANCE Object Lock (HTTP {status}): Object Lock is not enforced"
    );
    let obj = rt
        .block_on(client.get_object(key, Some(&version)))
        .unwrap()
        .expect("the locked version is still there");
    assert_eq!(&obj.bytes[..], b"first");
    // A plain delete only hides it behind a delete marker.
    let status = rt.block_on(client.delete_object(key, None)).unwrap();
    assert!(status.is_success(), "{status}");
    assert!(rt.block_on(client.get_object(key, None)).unwrap().is_none());
    assert_eq!(versions(&client, "probe/"), [(key.to_string(), 1, 1)]);
}

#[test]
fn batches_are_archived_once_and_verify_finds_a_delete_marker_or_a_second_version() {
    let weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    let mut store = s3_store(&weed, "store-a");
    let mut host = Host::new("web-1", "default");
    host.enroll(&store.path("trusted"));
    let mut batches = Vec::new();
    for i in 0..5 {
        let b = host.next(&[(&ts(i), "u1", "hello"), (&ts(i), "u2", "world")]);
        assert_eq!(store.post(b.clone()), 200, "{}", store.log());
        batches.push(b);
    }
    // Resends are duplicates, not new writes.
    assert_eq!(store.post(batches[1].clone()), 200);
    assert_eq!(store.post(batches[4].clone()), 200);
    // A different batch at a stored seq is refused.
    let mut fork = Host::new("web-1", "default");
    assert_eq!(store.post(fork.next(&[(&ts(0), "u9", "forged")])), 409);

    let objects = versions(&client, "archive/");
    assert_eq!(objects.len(), 5, "{objects:?}");
    assert!(
        objects.iter().all(|(_, v, m)| (*v, *m) == (1, 0)),
        "{objects:?}"
    );
    assert_eq!(s3_support::records(&client, "archive").len(), 10);

    let cfg = store.path("collector.toml");
    let (keys, store_pub) = (store.path("trusted"), store.path("keys/store.pub"));
    let bin = store_support::bin();
    let (clean, out) = s3_support::verify(&bin, &cfg, &keys, &store_pub, &[]);
    assert!(clean, "{out}");
    assert!(out.contains("batches: 5"), "{out}");
    assert!(out.contains("records: 10"), "{out}");

    // The store's own objects are locked: their versions cannot be deleted.
    let third = &objects[2].0;
    let rtm = rt();
    let listed = rtm.block_on(client.list_versions(third)).unwrap();
    let status = rtm
        .block_on(client.delete_object(third, Some(&listed[0].version_id)))
        .unwrap();
    assert!(
        !status.is_success(),
        "a stored batch's version was deleted: {status}"
    );

    // Hiding seq 3 behind a delete marker is found, naming the batch.
    let status = rtm.block_on(client.delete_object(third, None)).unwrap();
    assert!(status.is_success());
    let (clean, out) = s3_support::verify(&bin, &cfg, &keys, &store_pub, &[]);
    assert!(!clean, "{out}");
    assert!(
        out.contains(&format!("s3://{BUCKET}/{third}: deleted (delete marker")),
        "{out}"
    );
    // So is a second version written over a batch without the store's condition.
    let first = &objects[0].0;
    let put = rtm
        .block_on(client.put_object(first, "forged".into(), &[]))
        .unwrap();
    assert!(matches!(put, PutOutcome::Created { .. }), "{put:?}");
    let (clean, out) = s3_support::verify(&bin, &cfg, &keys, &store_pub, &[]);
    assert!(!clean, "{out}");
    assert!(
        out.contains(&format!("s3://{BUCKET}/{first}: 2 versions")),
        "{out}"
    );
    // Neither hides a batch from the store: after a restart, with the newest batch behind
    // a delete marker too, resends are duplicates of the batches it accepted, and the chain
    // goes on after the hidden tip.
    let last = &objects[4].0;
    assert!(rtm
        .block_on(client.delete_object(last, None))
        .unwrap()
        .is_success());
    store.stop();
    store.start();
    assert_eq!(store.post(batches[0].clone()), 200, "{}", store.log());
    assert_eq!(store.post(batches[4].clone()), 200, "{}", store.log());
    assert_eq!(store.post(host.next(&[(&ts(5), "u1", "after")])), 200);
    let objects = versions(&client, "archive/");
    assert_eq!(objects.len(), 6, "{objects:?}");
    assert_eq!((objects[4].1, objects[4].2), (1, 1), "{objects:?}");
    assert_eq!((objects[5].1, objects[5].2), (1, 0), "{objects:?}");
    store.stop();
    assert!(
        !store.log().contains("hello"),
        "record content in the store's log"
    );
}

#[test]
fn two_stores_on_one_bucket_keep_each_chain_whole_and_exactly_once() {
    let weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    let mut a = s3_store(&weed, "store-a");
    let mut b = another_instance(&weed, &a, "store-b");
    let mut host = Host::new("web-1", "default");
    host.enroll(&a.path("trusted"));
    host.enroll(&b.path("trusted"));
    // The host's batches alternate between the stores, as behind a load balancer; some
    // resends go to the other store.
    let mut sent = Vec::new();
    for i in 0..12 {
        let batch = host.next(&[(&ts(i), "u1", "line")]);
        let store = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            store.post(batch.clone()),
            200,
            "batch {}: {}{}",
            i + 1,
            a.log(),
            b.log()
        );
        sent.push(batch);
        if i % 3 == 2 {
            let other = if i % 2 == 0 { &b } else { &a };
            assert_eq!(other.post(sent[i].clone()), 200, "resend of {}", i + 1);
        }
    }
    // A store that fell behind and gets a batch far ahead catches up from the bucket.
    for i in 12..16 {
        assert_eq!(b.post(host.next(&[(&ts(i), "u1", "line")])), 200);
    }
    assert_eq!(a.post(host.next(&[(&ts(16), "u1", "line")])), 200);

    let objects = versions(&client, "archive/");
    assert_eq!(objects.len(), 17, "{objects:?}");
    assert!(
        objects.iter().all(|(_, v, m)| (*v, *m) == (1, 0)),
        "{objects:?}"
    );
    assert_eq!(s3_support::records(&client, "archive").len(), 17);

    let ledgers = [
        logveil::custody::ledger_path(&a.archive()),
        logveil::custody::ledger_path(&b.archive()),
    ];
    let bin = store_support::bin();
    let (clean, out) = s3_support::verify(
        &bin,
        &a.path("collector.toml"),
        &a.path("trusted"),
        &a.path("keys/store.pub"),
        &ledgers,
    );
    assert!(clean, "{out}");
    assert!(out.contains("batches: 17"), "{out}");
    // Each store recorded what it wrote; together the ledgers cover the chain.
    let (in_a, in_b) = (accepted(&a), accepted(&b));
    assert!(!in_a.is_empty() && !in_b.is_empty(), "{in_a:?} {in_b:?}");
    let mut all: Vec<u64> = in_a.iter().chain(&in_b).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all, (1..=17).collect::<Vec<_>>());
    // One ledger alone does not cover the chain: verify says which batches lack a record.
    let (clean, out) = s3_support::verify(
        &bin,
        &a.path("collector.toml"),
        &a.path("trusted"),
        &a.path("keys/store.pub"),
        &ledgers[..1],
    );
    assert!(!clean, "{out}");
    assert!(out.contains("not recorded in the custody ledger"), "{out}");
    a.stop();
    b.stop();
}

#[test]
fn concurrent_copies_of_one_seq_sent_to_two_stores_are_written_once() {
    let weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    let a = s3_store(&weed, "store-a");
    let b = another_instance(&weed, &a, "store-b");
    let mut host = Host::new("web-1", "default");
    host.enroll(&a.path("trusted"));
    host.enroll(&b.path("trusted"));
    for round in 0..3 {
        let batch = host.next(&[(&ts(round), "u1", "line")]);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let store = if i % 2 == 0 { &a } else { &b };
                    let batch = batch.clone();
                    s.spawn(move || store.post(batch))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            statuses.iter().all(|s| *s == 200),
            "round {round}: {statuses:?}"
        );
    }
    let objects = versions(&client, "archive/");
    assert_eq!(objects.len(), 3, "{objects:?}");
    assert!(
        objects.iter().all(|(_, v, m)| (*v, *m) == (1, 0)),
        "{objects:?}"
    );
}

/// The seqs a store's ledger recorded as accepted.
fn accepted(store: &Store) -> Vec<u64> {
    store
        .ledger()
        .into_iter()
        .filter_map(|e| match e.event {
            logveil::custody::Event::Accepted { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

/// Waits until the bucket holds `n` records (fails fast on more).
fn wait_s3_records(
    client: &logveil::s3::S3Client,
    n: usize,
    limit: Duration,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let state = match s3_support::try_records(client, "archive") {
            Ok(got) => {
                assert!(
                    got.len() <= n,
                    "{} records archived, more than {n}",
                    got.len()
                );
                if got.len() == n {
                    return got;
                }
                format!("{} of {n} records archived", got.len())
            }
            // A server just restarted may answer 5xx for a while.
            Err(e) => e,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?}: {state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_lines(path: &std::path::Path, from: usize, to: usize) {
    let mut text = String::new();
    for i in from..to {
        text.push_str(&format!("line {i} of the s3 test\n"));
    }
    common::append(path, &text);
}

#[test]
fn an_agent_shipping_through_two_store_instances_in_turn_gets_every_line_archived_once() {
    let weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    let mut w = common::World::new();
    let out = common::run_logveil(&[
        "keygen",
        "--out",
        w.path("keys").to_str().unwrap(),
        "--name",
        "store",
    ]);
    assert!(out.status.success(), "{out:?}");
    let store_key = format!("store_key = \"{}\"\n", w.path("keys/store.key").display());
    w.receiver_extra = format!("{store_key}{}", weed.receiver_section(BUCKET, "store-a"));
    let mut a = w.start_receiver();
    let mut agent = w.start_agent();
    let file = w.logs().join("app.log");
    write_lines(&file, 0, 2000);
    wait_s3_records(&client, 2000, Duration::from_secs(60));

    // Instance a goes away; instance b (own ledger) answers at the same address, as behind
    // a load balancer. The agent's chain continues through b.
    a.signal(nix::sys::signal::Signal::SIGTERM);
    a.wait_exit(Duration::from_secs(20));
    let b_cfg = w.path("collector-b.toml");
    std::fs::write(
        &b_cfg,
        format!(
            "[receiver]\nlisten = \"127.0.0.1:{}\"\narchive_dir = \"{}\"\ntrusted_keys_dir = \"{}\"\n{store_key}{}",
            w.port,
            w.path("archive-b").display(),
            w.path("trusted").display(),
            weed.receiver_section(BUCKET, "store-b")
        ),
    )
    .unwrap();
    let _b = common::spawn_logveil(
        &["receive", "--config", b_cfg.to_str().unwrap()],
        &w.path("out/receiver-b.log"),
    );
    write_lines(&file, 2000, 5000);
    let records = wait_s3_records(&client, 5000, Duration::from_secs(90));
    assert_eq!(
        common::assert_file_shipped_exactly_once(&records, &file),
        5000
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let objects = versions(&client, "archive/");
    assert!(
        objects.iter().all(|(_, v, m)| (*v, *m) == (1, 0)),
        "{objects:?}"
    );
    let ledgers = [
        logveil::custody::ledger_path(&w.path("archive")),
        logveil::custody::ledger_path(&w.path("archive-b")),
    ];
    let (clean, out) = s3_support::verify(
        &common::bin(),
        &w.path("collector.toml"),
        &w.path("trusted"),
        &w.path("keys/store.pub"),
        &ledgers,
    );
    assert!(clean, "{out}");
    assert!(out.contains("records: 5000"), "{out}");
    let logs = format!(
        "{}{}{}",
        w.agent_logs(),
        std::fs::read_to_string(w.path("out/receiver.log")).unwrap_or_default(),
        std::fs::read_to_string(w.path("out/receiver-b.log")).unwrap_or_default()
    );
    assert!(
        !logs.contains("of the s3 test"),
        "log line content in the agent's or store's logs"
    );
}

#[test]
fn an_object_storage_outage_is_a_retry_for_the_agent_and_loses_nothing() {
    let mut weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    let mut w = common::World::new();
    let out = common::run_logveil(&[
        "keygen",
        "--out",
        w.path("keys").to_str().unwrap(),
        "--name",
        "store",
    ]);
    assert!(out.status.success(), "{out:?}");
    w.receiver_extra = format!(
        "store_key = \"{}\"\n{}",
        w.path("keys/store.key").display(),
        weed.receiver_section(BUCKET, "store-a")
    );
    let store = w.start_receiver();
    let mut agent = w.start_agent();
    let file = w.logs().join("app.log");
    write_lines(&file, 0, 500);
    wait_s3_records(&client, 500, Duration::from_secs(60));

    weed.stop();
    write_lines(&file, 500, 1500);
    common::wait_until(
        Duration::from_secs(30),
        "the store failing to archive while S3 is down",
        || store.log_text().contains("batch could not be stored"),
    );
    weed.restart(BUCKET);
    let records = wait_s3_records(&client, 1500, Duration::from_secs(90));
    assert_eq!(
        common::assert_file_shipped_exactly_once(&records, &file),
        1500
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));

    let objects = versions(&client, "archive/");
    assert!(
        objects.iter().all(|(_, v, m)| (*v, *m) == (1, 0)),
        "{objects:?}"
    );
    let (clean, out) = s3_support::verify(
        &common::bin(),
        &w.path("collector.toml"),
        &w.path("trusted"),
        &w.path("keys/store.pub"),
        &[],
    );
    assert!(clean, "{out}");
    assert!(out.contains("records: 1500"), "{out}");
}

#[test]
fn a_legal_batch_is_locked_for_its_longest_exception_retention() {
    let weed = Weed::start();
    let client = weed.locked_bucket(BUCKET);
    // The stores's retain_days is 1 for every stream (s3_support).
    let store = s3_store(&weed, "store-a");
    let mut host = Host::new("web-1", "legal");
    host.enroll(&store.path("trusted"));
    let record = |exception: &str, days: u64| {
        serde_json::json!({"host": "web-1", "stream": "legal", "timestamp": ts(0),
            "exception": exception, "retention_days": days, "sealed": "AAAA"})
    };
    let batch = host.next_json(&[record("evidence", 400), record("tax-invoice", 3650)]);
    assert_eq!(store.post(batch), 200, "{}", store.log());
    let objects = versions(&client, "archive/web-1/legal/");
    assert_eq!(objects.len(), 1, "{objects:?}");
    let obj = rt()
        .block_on(client.get_object(&objects[0].0, None))
        .unwrap()
        .expect("stored");
    assert_eq!(obj.lock_mode.as_deref(), Some("COMPLIANCE"));
    let until = obj.lock_until.expect("a retain-until date");
    let until = humantime::parse_rfc3339_weak(until.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(&until))
        .unwrap_or_else(|e| panic!("retain-until {until}: {e}"));
    let at_least = SystemTime::now() + Duration::from_secs(3649 * 86_400);
    assert!(until > at_least, "locked only until {until:?}");
}
