//! Central store benchmark: `cargo run --release --example store_bench -- [HOSTS] [BATCHES]
//! [RECORDS]` (defaults 50, 40, 500). Starts `target/release/logveil receive` with a custody
//! ledger on 127.0.0.1, pre-builds every host's signed chain, then sends all hosts
//! concurrently (one connection pool per host) and reports batches/s and MB/s ingested
//! (envelope bytes, and uncompressed record bytes), with the store process's CPU time and
//! peak RSS from /proc. Build the binary first: `cargo build --release --bins`.

use ed25519_dalek::SigningKey;
use logveil::envelope::{keys, seal, sha256, Header, Kind, GENESIS_PREV_HASH};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// (utime + stime in seconds, VmHWM in KiB) of a process.
fn proc_stats(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu / ticks, hwm)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hosts = arg(1, 50) as usize;
    let batches = arg(2, 40);
    let records = arg(3, 500);
    let dir = tempfile::tempdir().unwrap();
    let (archive, trusted) = (dir.path().join("archive"), dir.path().join("trusted"));
    std::fs::create_dir_all(&trusted).unwrap();
    keys::write_named_pair(dir.path(), "store", &keys::generate()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "[receiver]\nlisten = \"127.0.0.1:{port}\"\narchive_dir = \"{}\"\ntrusted_keys_dir = \"{}\"\nstore_key = \"{}\"\n",
            archive.display(),
            trusted.display(),
            dir.path().join("store.key").display()
        ),
    )
    .unwrap();

    // Every host's chain, built before the clock starts.
    let mut chains = Vec::new();
    let (mut wire_bytes, mut raw_bytes) = (0u64, 0u64);
    for h in 0..hosts {
        let host = format!("bench-{h:03}");
        let key = SigningKey::from_bytes(&sha256(host.as_bytes()));
        std::fs::write(
            trusted.join(format!("{host}.pub")),
            keys::public_key_line(&key.verifying_key()),
        )
        .unwrap();
        let mut prev = GENESIS_PREV_HASH;
        let mut envs = Vec::new();
        for seq in 1..=batches {
            let mut raw = Vec::new();
            for i in 0..records {
                let rec = serde_json::json!({"host": host, "stream": "default",
                    "path": "/var/log/app.log", "offset": i * 120,
                    "timestamp": "2025-01-01T00:00:00.000000Z",
                    "body": format!("GET /api/v1/orders/{i} 200 user=[REDACTED:email] took {}ms", i % 97)});
                raw.extend_from_slice(rec.to_string().as_bytes());
                raw.push(b'\n');
            }
            let payload = zstd::bulk::compress(&raw, 3).unwrap();
            let header = Header {
                kind: Kind::Data,
                host_id: host.clone(),
                key_id: keys::key_id(&key.verifying_key()),
                stream: "default".into(),
                chain_id: sha256(host.as_bytes())[..16].try_into().unwrap(),
                seq,
                prev_hash: prev,
                payload_sha256: sha256(&payload),
                payload_len: payload.len() as u64,
                decompressed_len: raw.len() as u64,
                record_count: records,
                first_ts_ns: 0,
                last_ts_ns: 0,
                policy_hash: [0; 32],
                refused_link: [0; 32],
                refused_payload_sha256: [0; 32],
                reason: String::new(),
            };
            let (bytes, link) = seal(&header, &payload, &key);
            prev = link;
            wire_bytes += bytes.len() as u64;
            raw_bytes += raw.len() as u64;
            envs.push(bytes);
        }
        chains.push(envs);
    }

    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("../logveil");
    let mut store = Command::new(&bin)
        .args(["receive", "--config"])
        .arg(&cfg)
        .env("LOGVEIL_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release --bins)", bin.display()));
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/v1/limits")).await.is_err() {
        assert!(Instant::now() < deadline, "store did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cpu0, _) = proc_stats(store.id());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for envs in chains {
        let base = base.clone();
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            for bytes in envs {
                let r = client
                    .post(format!("{base}/v1/batches"))
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = proc_stats(store.id());
    let total = hosts as u64 * batches;
    println!(
        "hosts {hosts}, batches {total} ({records} records each), {secs:.2} s: {:.0} batches/s, {:.1} MB/s envelopes, {:.1} MB/s records, {:.0} records/s; store CPU {:.2} s ({:.0}% of one core), peak RSS {:.1} MiB",
        total as f64 / secs,
        wire_bytes as f64 / secs / 1e6,
        raw_bytes as f64 / secs / 1e6,
        (total * records) as f64 / secs,
        cpu1 - cpu0,
        (cpu1 - cpu0) / secs * 100.0,
        hwm as f64 / 1024.0
    );
    let _ = store.kill();
    let _ = store.wait();
}
