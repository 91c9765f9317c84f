//! Load: 50 simulated hosts, each with its own key and chain, send concurrently over real
//! connections to the real `logveil receive` process on 127.0.0.1; every record arrives
//! exactly once, and the archive and its custody ledger verify.

mod store_support;

use ed25519_dalek::SigningKey;
use logveil::envelope::{keys, seal, sha256, Envelope, Header, Kind, GENESIS_PREV_HASH};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use store_support::Store;

const HOSTS: usize = 50;
const BATCHES: u64 = 12;
const RECORDS: u64 = 25;

fn envelope(host: &str, key: &SigningKey, seq: u64, prev: [u8; 32]) -> (Vec<u8>, [u8; 32]) {
    let mut raw = Vec::new();
    for i in 0..RECORDS {
        let rec = serde_json::json!({"host": host, "stream": "default", "seq": seq, "i": i,
            "body": format!("load test line {i} of batch {seq} from {host}")});
        raw.extend_from_slice(rec.to_string().as_bytes());
        raw.push(b'\n');
    }
    let payload = zstd::bulk::compress(&raw, 3).unwrap();
    let h = Header {
        kind: Kind::Data,
        host_id: host.into(),
        key_id: keys::key_id(&key.verifying_key()),
        stream: "default".into(),
        chain_id: sha256(host.as_bytes())[..16].try_into().unwrap(),
        seq,
        prev_hash: prev,
        payload_sha256: sha256(&payload),
        payload_len: payload.len() as u64,
        decompressed_len: raw.len() as u64,
        record_count: RECORDS,
        first_ts_ns: 0,
        last_ts_ns: 0,
        policy_hash: [0; 32],
        refused_link: [0; 32],
        refused_payload_sha256: [0; 32],
        reason: String::new(),
    };
    seal(&h, &payload, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hosts_sending_at_once_arrive_exactly_once() {
    // The real `logveil receive --config FILE` (tests/store_support): its config, store key
    // (by `logveil keygen`), trusted keys and archive in a temp dir; it is up once it
    // accepts connections, and answers `GET /v1/limits` (both with a deadline).
    let mut store = tokio::task::block_in_place(|| {
        let mut store = Store::new("");
        store.start();
        store
    });
    let archive = store.archive();
    let trusted = store.path("trusted");
    let base = store.base();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/v1/limits")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "store not ready:\n{}",
            store.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for h in 0..HOSTS {
        let host = format!("sim-{h:02}");
        let key = SigningKey::from_bytes(&sha256(host.as_bytes()));
        std::fs::write(
            trusted.join(format!("{host}.pub")),
            keys::public_key_line(&key.verifying_key()),
        )
        .unwrap();
        let base = base.clone();
        tasks.spawn(async move {
            // One client (connection pool) per host, like an agent.
            let client = reqwest::Client::new();
            let mut prev = GENESIS_PREV_HASH;
            for seq in 1..=BATCHES {
                let (bytes, link) = envelope(&host, &key, seq, prev);
                assert_eq!(Envelope::decode(&bytes).unwrap().next_link(), link);
                // Every third batch is sent twice, as an agent's retry would.
                let sends = if seq % 3 == 0 { 2 } else { 1 };
                for _ in 0..sends {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let r = client
                            .post(format!("{base}/v1/batches"))
                            .body(bytes.clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => break,
                            Ok(r) => panic!("{host} seq {seq}: {}", r.status()),
                            Err(e) => {
                                assert!(Instant::now() < deadline, "{host} seq {seq}: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                prev = link;
            }
        });
    }
    let started = Instant::now();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(300), tasks.join_next())
        .await
        .expect("hosts finish in time")
    {
        r.unwrap();
    }
    eprintln!(
        "{HOSTS} hosts x {BATCHES} batches in {:?}",
        started.elapsed()
    );

    let mut out = Vec::new();
    let n = logveil::archive::cat(&archive, &mut out).unwrap();
    assert_eq!(n, HOSTS as u64 * BATCHES * RECORDS);
    let mut seen: BTreeMap<(String, u64, u64), u32> = BTreeMap::new();
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let k = (
            v["host"].as_str().unwrap().to_string(),
            v["seq"].as_u64().unwrap(),
            v["i"].as_u64().unwrap(),
        );
        *seen.entry(k).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, HOSTS as u64 * BATCHES * RECORDS);
    assert!(seen.values().all(|&c| c == 1), "a record arrived twice");
    let store_pub = keys::load_verifying_key(&store.path("keys/store.pub")).unwrap();
    let report = logveil::verify::verify_with(&archive, &trusted, Some(&store_pub));
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.hosts, HOSTS as u64);
    // started + one accepted entry per batch, none for the resends.
    assert_eq!(
        report.ledger_entries,
        Some(1 + HOSTS as u64 * BATCHES),
        "{report}"
    );
    // The ledger file, read with the store's public key, agrees.
    assert_eq!(store.ledger().len() as u64, 1 + HOSTS as u64 * BATCHES);
    let status = tokio::task::block_in_place(|| store.stop_status());
    assert!(
        status.is_some_and(|s| s.success()),
        "store exit on SIGTERM: {status:?}\n{}",
        store.log()
    );
}
