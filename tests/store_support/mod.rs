//! Shared by the store_* tests: hosts that sign chains, and the real `logveil receive`
//! binary on 127.0.0.1 with a store key. Waiting is always on a condition with a deadline.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use logveil::envelope::{keys, seal, sha256, Envelope, Hash, Header, Kind, GENESIS_PREV_HASH};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logveil"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One host's chain on one stream.
pub struct Host {
    pub id: String,
    pub stream: String,
    pub chain_id: [u8; 16],
    pub key: SigningKey,
    pub seq: u64,
    pub link: Hash,
}

impl Host {
    pub fn new(id: &str, stream: &str) -> Host {
        Host {
            id: id.into(),
            stream: stream.into(),
            chain_id: sha256(format!("{id}/{stream}").as_bytes())[..16]
                .try_into()
                .unwrap(),
            key: SigningKey::from_bytes(&sha256(id.as_bytes())),
            seq: 0,
            link: GENESIS_PREV_HASH,
        }
    }

    pub fn enroll(&self, trusted: &Path) {
        std::fs::write(
            trusted.join(format!("{}.pub", self.id)),
            keys::public_key_line(&self.key.verifying_key()),
        )
        .unwrap();
    }

    /// The next batch: one record per `(timestamp, user, msg)`.
    pub fn next(&mut self, records: &[(&str, &str, &str)]) -> Vec<u8> {
        let records: Vec<serde_json::Value> = records
            .iter()
            .map(|(ts, user, msg)| {
                serde_json::json!({"host": self.id, "stream": self.stream,
                    "timestamp": ts, "user": user, "body": msg})
            })
            .collect();
        self.next_json(&records)
    }

    /// The next batch over these records, as they are.
    pub fn next_json(&mut self, records: &[serde_json::Value]) -> Vec<u8> {
        let mut raw = Vec::new();
        for rec in records {
            raw.extend_from_slice(rec.to_string().as_bytes());
            raw.push(b'\n');
        }
        let payload = zstd::bulk::compress(&raw, 3).unwrap();
        let h = Header {
            kind: Kind::Data,
            host_id: self.id.clone(),
            key_id: keys::key_id(&self.key.verifying_key()),
            stream: self.stream.clone(),
            chain_id: self.chain_id,
            seq: self.seq + 1,
            prev_hash: self.link,
            payload_sha256: sha256(&payload),
            payload_len: payload.len() as u64,
            decompressed_len: raw.len() as u64,
            record_count: records.len() as u64,
            first_ts_ns: 0,
            last_ts_ns: 0,
            policy_hash: [0; 32],
            refused_link: [0; 32],
            refused_payload_sha256: [0; 32],
            reason: String::new(),
        };
        let (bytes, _) = seal(&h, &payload, &self.key);
        let env = Envelope::decode(&bytes).unwrap();
        self.seq = env.header.seq;
        self.link = env.next_link();
        bytes
    }
}

/// A store's files and its running process.
pub struct Store {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub extra: String,
    pub child: Option<Child>,
}

impl Store {
    /// Keys (the store's by `logveil keygen`), directories; not started.
    pub fn new(extra: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("trusted")).unwrap();
        let out = run(&[
            "keygen",
            "--out",
            dir.path().join("keys").to_str().unwrap(),
            "--name",
            "store",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Store {
            dir,
            port: free_port(),
            extra: extra.into(),
            child: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn archive(&self) -> PathBuf {
        self.path("archive")
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let cfg = self.path("collector.toml");
        std::fs::write(
            &cfg,
            format!(
                "[receiver]\nlisten = \"127.0.0.1:{}\"\narchive_dir = \"{}\"\ntrusted_keys_dir = \"{}\"\nstore_key = \"{}\"\n{}\n",
                self.port,
                self.archive().display(),
                self.path("trusted").display(),
                self.path("keys/store.key").display(),
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("receiver.log"))
            .unwrap();
        self.child = Some(
            Command::new(bin())
                .args(["receive", "--config"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let port = self.port;
        let log = self.path("receiver.log");
        let child = self.child.as_mut().unwrap();
        wait_until(Duration::from_secs(20), "store listening", || {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("store exited during startup ({status}):\n{log}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM and wait for exit.
    pub fn stop(&mut self) {
        self.stop_status();
    }

    /// SIGTERM and wait for exit; the exit status (None if it was not running).
    pub fn stop_status(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("store did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("receiver.log")).unwrap_or_default()
    }

    /// POSTs a batch; returns the HTTP status.
    pub fn post(&self, bytes: Vec<u8>) -> u16 {
        let url = format!("{}/v1/batches", self.base());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            reqwest::Client::new()
                .post(url)
                .body(bytes)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    }

    /// The ledger's entries, checked against the store's public key.
    pub fn ledger(&self) -> Vec<logveil::custody::Entry> {
        let key = keys::load_verifying_key(&self.path("keys/store.pub")).unwrap();
        let report =
            logveil::custody::read(&logveil::custody::ledger_path(&self.archive()), Some(&key))
                .unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        report.entries.into_iter().map(|(_, e)| e).collect()
    }

    /// `logveil verify` with the store key: (clean, output).
    pub fn verify(&self) -> (bool, String) {
        let out = run(&[
            "verify",
            "--archive",
            self.archive().to_str().unwrap(),
            "--keys",
            self.path("trusted").to_str().unwrap(),
            "--store-key",
            self.path("keys/store.pub").to_str().unwrap(),
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Store {
    /// SIGTERM, a short grace period, then kill.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).env_remove("LOGVEIL_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}
