//! Unsigned batches against the real `logveil receive` binary on 127.0.0.1: a zeroed
//! signature and a missing one are refused with a 4xx and a reason, nothing reaches the
//! archive, each refusal is a `rejected` entry in the custody ledger, and the archive still
//! verifies.

mod store_support;

use logveil::custody::Event;
use store_support::{Host, Store};

/// POSTs `body` to the store: (status, `error` code of the JSON answer, `message`).
fn post(store: &Store, body: Vec<u8>) -> (u16, String, String) {
    let url = format!("{}/v1/batches", store.base());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(url)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let json: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        let field = |k: &str| json[k].as_str().unwrap_or_default().to_string();
        (status, field("error"), field("message"))
    })
}

fn archived_files(store: &Store) -> usize {
    walkdir::WalkDir::new(store.archive())
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "lvb"))
        .count()
}

#[test]
fn unsigned_batches_are_refused_with_a_reason_and_nothing_is_written() {
    let mut store = Store::new("");
    store.start();
    let mut host = Host::new("web-1", "default");
    host.enroll(&store.path("trusted"));
    let signed = host.next(&[("2025-04-01T09:00:00Z", "u1", "login")]);
    let header_len = u32::from_be_bytes(signed[4..8].try_into().unwrap()) as usize;
    let sig = 8 + header_len..8 + header_len + 64;

    let mut zeroed = signed.clone();
    zeroed[sig.clone()].fill(0);
    let (status, code, message) = post(&store, zeroed);
    assert_eq!((status, code.as_str()), (401, "bad_signature"), "{message}");
    assert!(!message.is_empty());

    let mut missing = signed[..sig.start].to_vec();
    missing.extend_from_slice(&signed[sig.end..]);
    let (status, code, message) = post(&store, missing);
    assert_eq!((status, code.as_str()), (400, "malformed"), "{message}");
    assert!(!message.is_empty());

    assert_eq!(
        archived_files(&store),
        0,
        "a refused batch reached the archive"
    );
    let rejected: Vec<(String, u16)> = store
        .ledger()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Rejected { reason, status, .. } => Some((reason, status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        [
            ("bad_signature".to_string(), 401),
            ("malformed".to_string(), 400)
        ]
    );

    // The signed batch is what the chain starts with.
    assert_eq!(post(&store, signed).0, 200);
    assert_eq!(archived_files(&store), 1);
    let (clean, report) = store.verify();
    assert!(clean, "{report}");
    assert!(
        report.starts_with("hosts: 1, chains: 1, batches: 1, tombstones: 0, records: 1,"),
        "{report}"
    );
}

/// A client that sends junk as fast as it can cannot make the store write a ledger entry
/// (and an fsync) for each request: past `recorded_rejections_per_minute` refusals are only
/// counted, and the store keeps serving honest hosts.
#[test]
fn a_flood_of_refusals_is_bounded_in_the_ledger_and_counted() {
    let telemetry = store_support::free_port();
    let mut store = Store::new(&format!(
        "recorded_rejections_per_minute = 5\n[telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n"
    ));
    store.start();
    for i in 0..40u8 {
        let (status, code, _) = post(&store, vec![i; 64]);
        assert_eq!((status, code.as_str()), (400, "malformed"));
    }
    let rejected = |store: &Store| {
        store
            .ledger()
            .iter()
            .filter(|e| matches!(e.event, Event::Rejected { .. }))
            .count()
    };
    assert_eq!(
        rejected(&store),
        5,
        "one peer, five recorded refusals a minute"
    );
    let metrics = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::get(format!("http://127.0.0.1:{telemetry}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
    assert!(
        metrics.contains("logveil_receiver_rejections_unrecorded_total 35"),
        "{metrics}"
    );
    // An honest host is still served and its batch recorded.
    let mut host = Host::new("web-1", "default");
    host.enroll(&store.path("trusted"));
    let (status, _, message) = post(&store, host.next(&[("2025-04-01T09:00:00Z", "u1", "x")]));
    assert_eq!(status, 200, "{message}");
    assert!(store
        .ledger()
        .iter()
        .any(|e| matches!(e.event, Event::Accepted { .. })));
}
