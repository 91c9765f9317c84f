//! The central store end to end: a real server on 127.0.0.1 (plain, TLS, mTLS), real HTTP
//! clients, real files. Every refusal is checked to leave the archive untouched.
//!
//! Each test runs the real `logveil receive --config FILE` binary (tests/store_support) on a
//! free port, with its config file, store key (so a custody ledger), trusted keys and archive
//! in the test's temp dir; it is waited for with a deadline and stopped with SIGTERM.

mod store_support;

use ed25519_dalek::SigningKey;
use logveil::envelope::{keys, seal, sha256, Envelope, Hash, Header, Kind, GENESIS_PREV_HASH};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_BODY: u64 = 64 * 1024;
const MAX_DECOMPRESSED: u64 = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Envelopes

/// A host producing one chain.
struct Host {
    id: String,
    stream: String,
    chain_id: [u8; 16],
    key: SigningKey,
    seq: u64,
    link: Hash,
}

impl Host {
    fn new(id: &str) -> Self {
        Host {
            id: id.into(),
            stream: "default".into(),
            chain_id: [0x5a; 16],
            key: SigningKey::from_bytes(&sha256(id.as_bytes())),
            seq: 0,
            link: GENESIS_PREV_HASH,
        }
    }

    fn enroll(&self, keys_dir: &Path) {
        std::fs::write(
            keys_dir.join(format!("{}.pub", self.id)),
            keys::public_key_line(&self.key.verifying_key()),
        )
        .unwrap();
    }

    fn records(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let rec = serde_json::json!({
                "host": self.id, "stream": self.stream, "seq_hint": self.seq + 1, "i": i,
                "body": "user logged in",
            });
            out.extend_from_slice(rec.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn header(&self) -> Header {
        Header {
            kind: Kind::Data,
            host_id: self.id.clone(),
            key_id: keys::key_id(&self.key.verifying_key()),
            stream: self.stream.clone(),
            chain_id: self.chain_id,
            seq: self.seq + 1,
            prev_hash: self.link,
            payload_sha256: [0; 32],
            payload_len: 0,
            decompressed_len: 0,
            record_count: 0,
            first_ts_ns: 1_700_000_000_000_000_000,
            last_ts_ns: 1_700_000_000_000_000_001,
            policy_hash: [1; 32],
            refused_link: [0; 32],
            refused_payload_sha256: [0; 32],
            reason: String::new(),
        }
    }

    /// The next data envelope over `raw`, not yet advancing the chain.
    fn envelope_over(&self, raw: &[u8], records: u64, edit: impl FnOnce(&mut Header)) -> Vec<u8> {
        let payload = zstd::bulk::compress(raw, 3).unwrap();
        let mut h = self.header();
        h.payload_sha256 = sha256(&payload);
        h.payload_len = payload.len() as u64;
        h.decompressed_len = raw.len() as u64;
        h.record_count = records;
        edit(&mut h);
        seal(&h, &payload, &self.key).0
    }

    fn peek(&self, n: usize) -> Vec<u8> {
        self.envelope_over(&self.records(n), n as u64, |_| {})
    }

    fn next(&mut self, n: usize) -> Vec<u8> {
        let bytes = self.peek(n);
        self.advance(&bytes);
        bytes
    }

    fn advance(&mut self, bytes: &[u8]) {
        let env = Envelope::decode(bytes).unwrap();
        self.seq = env.header.seq;
        self.link = env.next_link();
    }
}

// ---------------------------------------------------------------------------------------
// The server

#[derive(Default)]
struct Options {
    tls: Option<Tls>,
    request_timeout: Option<&'static str>,
    telemetry: bool,
    max_connections: Option<usize>,
}

struct Tls {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_pem: String,
    mtls: bool,
}

impl Tls {
    /// A private CA, a server certificate for 127.0.0.1 and a client certificate.
    fn generate(mtls: bool) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "logveil test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let leaf = |names: Vec<String>, usage| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec!["web-1".into()], ExtendedKeyUsagePurpose::ClientAuth);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key).unwrap();
        Tls {
            dir,
            ca_pem: ca_cert.pem(),
            client_pem: format!("{client_cert}{client_key}"),
            mtls,
        }
    }

    fn config(&self) -> String {
        let p = |n: &str| self.dir.path().join(n).display().to_string();
        let mut s = format!(
            "\n[receiver.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            p("server.pem"),
            p("server.key")
        );
        if self.mtls {
            s += &format!("client_ca = \"{}\"\n", p("ca.pem"));
        }
        s
    }

    fn client(&self, with_cert: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap());
        if with_cert {
            b = b.identity(reqwest::Identity::from_pem(self.client_pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    }
}

/// The real `logveil receive --config FILE` process (tests/store_support), with the limits,
/// TLS and telemetry these tests configure, and the clients that talk to it.
struct Store {
    /// The store's files (config, keys/store.key, trusted/, archive/, receiver.log) and
    /// its process; SIGTERM then kill when dropped.
    proc: store_support::Store,
    addr: SocketAddr,
    telemetry: Option<SocketAddr>,
    base: String,
    client: reqwest::Client,
    options: Options,
}

fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], store_support::free_port()))
}

impl Store {
    async fn start(options: Options) -> Store {
        let telemetry = options.telemetry.then(free_port);
        let mut extra = format!(
            "max_body_bytes = {MAX_BODY}\nmax_decompressed_bytes = {MAX_DECOMPRESSED}\n\
             request_timeout = \"{}\"\nmax_connections = {}\n",
            options.request_timeout.unwrap_or("10s"),
            options.max_connections.unwrap_or(1024),
        );
        if let Some(tls) = &options.tls {
            extra += &tls.config();
        }
        if let Some(t) = telemetry {
            extra += &format!("\n[telemetry]\nlisten = \"{t}\"\n");
        }
        // `logveil keygen` makes the store key: blocking, off the async workers.
        let proc = tokio::task::block_in_place(|| store_support::Store::new(&extra));
        let addr = SocketAddr::from(([127, 0, 0, 1], proc.port));
        let (base, client) = match &options.tls {
            Some(tls) => (format!("https://{addr}"), tls.client(true)),
            None => (format!("http://{addr}"), reqwest::Client::new()),
        };
        let mut store = Store {
            proc,
            addr,
            telemetry,
            base,
            client,
            options,
        };
        store.launch().await;
        store
    }

    /// Starts the process on the config file and waits (with a deadline) until it serves.
    async fn launch(&mut self) {
        tokio::task::block_in_place(|| self.proc.start());
        self.wait_ready().await;
    }

    /// Polls `GET /v1/limits` until it answers, with a deadline.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/v1/limits", self.base))
                .send()
                .await
            {
                assert_eq!(r.status(), StatusCode::OK);
                return;
            }
            let child = self.proc.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "receiver exited during startup ({status}):\n{}",
                    self.proc.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "receiver not ready in time:\n{}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM; the process must exit cleanly. Its files stay for a restart.
    async fn stop(&mut self) {
        let status = tokio::task::block_in_place(|| self.proc.stop_status());
        assert!(
            status.is_some_and(|s| s.success()),
            "receiver exit on SIGTERM: {status:?}\n{}",
            self.proc.log()
        );
    }

    fn archive(&self) -> PathBuf {
        self.proc.archive()
    }

    /// The hosts' keys (`trusted_keys_dir`).
    fn trusted(&self) -> PathBuf {
        self.proc.path("trusted")
    }

    async fn post(&self, body: Vec<u8>) -> (StatusCode, Value) {
        post_with(&self.client, &self.base, body).await
    }

    /// Every file under the archive, temp files included (not the custody ledger).
    fn files(&self) -> BTreeSet<PathBuf> {
        let archive = self.archive();
        let custody = archive.join(".custody");
        walkdir::WalkDir::new(&archive)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_type().is_dir() && !e.path().starts_with(&custody))
            .map(|e| e.into_path())
            .collect()
    }

    /// The custody ledger's entries (the file), checked against the store's public key.
    fn ledger(&self) -> Vec<Value> {
        self.proc
            .ledger()
            .into_iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    /// `verify` of the archive's files, the ledger checked against the store's public key.
    fn verify(&self) -> logveil::verify::Report {
        let store_pub = keys::load_verifying_key(&self.proc.path("keys/store.pub")).unwrap();
        logveil::verify::verify_with(&self.archive(), &self.trusted(), Some(&store_pub))
    }

    fn batch_path(&self, host: &Host, seq: u64) -> PathBuf {
        self.archive()
            .join(&host.id)
            .join(&host.stream)
            .join(logveil::archive::today())
            .join(hex::encode(host.chain_id))
            .join(format!("{seq:020}.lvb"))
    }

    /// Posts `body`, expects a refusal with `status` and `code`, and no change to the archive.
    async fn expect_refused(&self, body: Vec<u8>, status: StatusCode, code: &str) -> Value {
        let before = self.files();
        let (got, json) = self.post(body).await;
        assert_eq!(
            (got, json["error"].as_str()),
            (status, Some(code)),
            "{json}"
        );
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        assert_eq!(self.files(), before, "a refused batch changed the archive");
        json
    }

    /// Sends raw bytes on a new TCP connection and reads until the server closes it.
    async fn raw(&self, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("the server answers and closes")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }
}

async fn post_with(client: &reqwest::Client, base: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = client
        .post(format!("{base}/v1/batches"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let json = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    (status, json)
}

fn stored(seq: u64) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        serde_json::json!({"status": "stored", "seq": seq}),
    )
}

fn duplicate(seq: u64) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        serde_json::json!({"status": "duplicate", "seq": seq}),
    )
}

async fn enrolled_store(hosts: &[&Host]) -> Store {
    let store = Store::start(Options::default()).await;
    for h in hosts {
        h.enroll(&store.trusted());
    }
    store
}

// ---------------------------------------------------------------------------------------
// Accepting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_advertised() {
    let store = Store::start(Options::default()).await;
    let r = store
        .client
        .get(format!("{}/v1/limits", store.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"max_body_bytes": MAX_BODY, "max_decompressed_bytes": MAX_DECOMPRESSED})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_chain_is_stored_as_exact_bytes_in_the_layout() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let mut sent = Vec::new();
    for seq in 1..=3 {
        let bytes = host.next(seq as usize);
        assert_eq!(store.post(bytes.clone()).await, stored(seq));
        sent.push(bytes);
    }
    let expected: BTreeSet<_> = (1..=3).map(|s| store.batch_path(&host, s)).collect();
    assert_eq!(
        store.files(),
        expected,
        "exactly the batch files, no temp files"
    );
    for (i, bytes) in sent.iter().enumerate() {
        let path = store.batch_path(&host, i as u64 + 1);
        assert_eq!(&std::fs::read(&path).unwrap(), bytes);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
    }
    let chain_dir = store.batch_path(&host, 1).parent().unwrap().to_path_buf();
    let mode = std::fs::metadata(chain_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // What was stored verifies offline and reads back.
    let report = store.verify();
    assert!(report.problems.is_empty(), "{report}");
    assert_eq!((report.batches, report.records), (3, 6));
    let mut out = Vec::new();
    assert_eq!(
        logveil::archive::cat(&store.archive(), &mut out).unwrap(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_resend_is_a_duplicate_written_once() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let b1 = host.next(2);
    let b2 = host.next(1);
    assert_eq!(store.post(b1.clone()).await, stored(1));
    assert_eq!(store.post(b1.clone()).await, duplicate(1));
    assert_eq!(store.post(b2.clone()).await, stored(2));
    assert_eq!(store.post(b1).await, duplicate(1));
    assert_eq!(store.post(b2).await, duplicate(2));
    assert_eq!(store.files().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_copies_of_a_batch_are_written_once() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let b1 = host.next(5);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, base, body) = (store.client.clone(), store.base.clone(), b1.clone());
        tasks.spawn(async move { post_with(&client, &base, body).await });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| **o == stored(1)).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == duplicate(1)).count(),
        19,
        "{outcomes:?}"
    );
    assert_eq!(store.files(), BTreeSet::from([store.batch_path(&host, 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_state_survives_a_restart() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let b1 = host.next(1);
    assert_eq!(store.post(b1.clone()).await, stored(1));
    let mut store = store;
    store.stop().await;

    // A leftover of a write interrupted by a crash.
    let leftover = store
        .archive()
        .join("web-1/default")
        .join(logveil::archive::today())
        .join(hex::encode(host.chain_id))
        .join(".tmp-2-00000000deadbeef");
    std::fs::write(&leftover, b"half a batch").unwrap();

    // The same config file, archive and keys: the same store, a new process.
    store.launch().await;
    assert!(!leftover.exists(), "temp files are removed at startup");
    assert_eq!(store.post(b1).await, duplicate(1));
    let mut fork = Host::new("web-1");
    let json = store
        .expect_refused(fork.next(3), StatusCode::CONFLICT, "seq_conflict")
        .await;
    assert_eq!(json["expected_seq"], 2);
    assert_eq!(store.post(host.next(1)).await, stored(2));
}

// ---------------------------------------------------------------------------------------
// Chain refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_batch_at_a_stored_seq_is_a_conflict() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let b1 = host.next(1);
    assert_eq!(store.post(b1).await, stored(1));
    // Same seq and prev_hash, different records.
    let mut other = Host::new("web-1");
    let json = store
        .expect_refused(other.next(4), StatusCode::CONFLICT, "seq_conflict")
        .await;
    assert_eq!(json["expected_seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_is_refused_with_the_expected_seq() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    assert_eq!(store.post(host.next(1)).await, stored(1));
    host.next(1); // seq 2 never sent
    let json = store
        .expect_refused(host.next(1), StatusCode::CONFLICT, "seq_gap")
        .await;
    assert_eq!(json["expected_seq"], 2);

    // A chain the store has never seen must start at seq 1.
    let mut fresh = Host::new("web-2");
    fresh.enroll(&store.trusted());
    fresh.seq = 6;
    let json = store
        .expect_refused(fresh.next(1), StatusCode::CONFLICT, "seq_gap")
        .await;
    assert_eq!(json["expected_seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_prev_hash_is_refused() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    assert_eq!(store.post(host.next(1)).await, stored(1));
    host.link = [0xee; 32];
    let json = store
        .expect_refused(host.peek(1), StatusCode::CONFLICT, "broken_chain")
        .await;
    assert_eq!(json["expected_seq"], 2);
}

// ---------------------------------------------------------------------------------------
// Authenticity and format refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_envelopes_are_malformed() {
    let host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    store
        .expect_refused(
            b"not an envelope at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed",
        )
        .await;
    store
        .expect_refused(Vec::new(), StatusCode::BAD_REQUEST, "malformed")
        .await;
    let good = host.peek(3);
    for cut in [4, 9, 40, good.len() - 1] {
        store
            .expect_refused(good[..cut].to_vec(), StatusCode::BAD_REQUEST, "malformed")
            .await;
    }
    let mut long = good.clone();
    long.push(0);
    store
        .expect_refused(long, StatusCode::BAD_REQUEST, "malformed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused() {
    let host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let mut bytes = host.peek(1);
    let header_len = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    bytes[8 + header_len + 10] ^= 0x40;
    store
        .expect_refused(bytes, StatusCode::UNAUTHORIZED, "bad_signature")
        .await;
    // Signed by a key that is not the enrolled one, under the enrolled key id.
    let mut forger = Host::new("web-1");
    forger.key = SigningKey::from_bytes(&[7; 32]);
    let enrolled_id = keys::key_id(&host.key.verifying_key());
    let forged = forger.envelope_over(&forger.records(1), 1, |h| h.key_id = enrolled_id);
    store
        .expect_refused(forged, StatusCode::UNAUTHORIZED, "bad_signature")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_batch_is_refused_and_nothing_is_written() {
    let host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let signed = host.peek(2);
    let header_len = u32::from_be_bytes(signed[4..8].try_into().unwrap()) as usize;
    let sig = 8 + header_len..8 + header_len + 64;
    // The signature's 64 bytes are all zero: an envelope nobody signed.
    let mut zeroed = signed.clone();
    zeroed[sig.clone()].fill(0);
    let json = store
        .expect_refused(zeroed, StatusCode::UNAUTHORIZED, "bad_signature")
        .await;
    assert!(!json["message"].as_str().unwrap().is_empty());
    // No signature at all: the payload follows the header directly.
    let mut missing = signed[..sig.start].to_vec();
    missing.extend_from_slice(&signed[sig.end..]);
    store
        .expect_refused(missing, StatusCode::BAD_REQUEST, "malformed")
        .await;
    // Both refusals are on record; the chain still starts at seq 1 with the signed batch.
    let rejected: Vec<String> = store
        .ledger()
        .iter()
        .filter(|e| e["kind"] == "rejected")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(rejected, ["bad_signature", "malformed"], "{rejected:?}");
    assert_eq!(store.post(signed).await, stored(1));
    assert!(store.files().contains(&store.batch_path(&host, 1)));
    let report = store.verify();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.batches, report.records), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_forbidden() {
    let store = Store::start(Options::default()).await;
    let stranger = Host::new("web-9");
    store
        .expect_refused(stranger.peek(1), StatusCode::FORBIDDEN, "unknown_host")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_a_signing_as_host_b_is_a_key_mismatch() {
    let a = Host::new("web-a");
    let b = Host::new("web-b");
    let store = enrolled_store(&[&a, &b]).await;
    let mut impostor = Host::new("web-b");
    impostor.key = a.key.clone();
    store
        .expect_refused(impostor.peek(1), StatusCode::UNAUTHORIZED, "key_mismatch")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_hash_mismatch_is_refused() {
    let host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let mut bytes = host.peek(2);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    store
        .expect_refused(bytes, StatusCode::BAD_REQUEST, "payload_hash")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_do_not_match_the_header_are_unprocessable() {
    let host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let raw = host.records(2);
    store
        .expect_refused(
            host.envelope_over(&raw, 3, |_| {}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_records",
        )
        .await;
    let other = Host::new("web-2").records(1);
    store
        .expect_refused(
            host.envelope_over(&other, 1, |_| {}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_records",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_like_host_id_is_malformed() {
    let store = Store::start(Options::default()).await;
    let evil = Host::new("web-1");
    let bytes = evil.envelope_over(&evil.records(1), 1, |h| h.host_id = "../../etc".into());
    store
        .expect_refused(bytes, StatusCode::BAD_REQUEST, "malformed")
        .await;
    assert!(store.files().is_empty());
}

// ---------------------------------------------------------------------------------------
// Limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_over_the_limit_is_refused_without_reading_the_body() {
    let store = Store::start(Options::default()).await;
    // Headers only: the server must answer without waiting for 100 MB that never come.
    let response = store
        .raw(
            b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
              Content-Length: 100000000\r\n\r\n",
        )
        .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"body_too_large\""), "{response}");
    assert!(store.files().is_empty());

    let before = store.files();
    let (status, json) = store.post(vec![b'x'; MAX_BODY as usize + 1]).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    assert_eq!(store.files(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_refused_while_streaming() {
    let store = Store::start(Options::default()).await;
    let chunk = vec![b'x'; 4096];
    let mut request =
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut sent = 0;
    while sent <= MAX_BODY {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
        sent += chunk.len() as u64;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = store.raw(&request).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(store.files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_bomb_is_refused() {
    let host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let zeros = vec![0u8; 100 * 1024 * 1024];
    let bytes = host.envelope_over(&zeros, 1, |_| {});
    drop(zeros);
    assert!(
        bytes.len() < MAX_BODY as usize,
        "the bomb is small: {}",
        bytes.len()
    );
    store
        .expect_refused(
            bytes,
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed_too_large",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_request_timeout_gets_408() {
    let store = Store::start(Options {
        request_timeout: Some("500ms"),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let response = store
        .raw(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"request_timeout\""), "{response}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(store.files().is_empty());
}

// ---------------------------------------------------------------------------------------
// TLS, telemetry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_stores_batches() {
    let mut host = Host::new("web-1");
    let store = Store::start(Options {
        tls: Some(Tls::generate(false)),
        ..Options::default()
    })
    .await;
    host.enroll(&store.trusted());
    assert!(store.base.starts_with("https://"));
    assert_eq!(store.post(host.next(2)).await, stored(1));
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v1/limits", store.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate() {
    let mut host = Host::new("web-1");
    let store = Store::start(Options {
        tls: Some(Tls::generate(true)),
        ..Options::default()
    })
    .await;
    host.enroll(&store.trusted());
    let anonymous = store.options.tls.as_ref().unwrap().client(false);
    let refused = anonymous
        .post(format!("{}/v1/batches", store.base))
        .body(host.peek(1))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    assert!(store.files().is_empty());
    // The client with a certificate from the CA is served.
    assert_eq!(store.post(host.next(1)).await, stored(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_counts_outcomes() {
    let mut host = Host::new("web-1");
    let store = Store::start(Options {
        telemetry: true,
        ..Options::default()
    })
    .await;
    host.enroll(&store.trusted());
    let b1 = host.next(3);
    assert_eq!(store.post(b1.clone()).await, stored(1));
    assert_eq!(store.post(b1).await, duplicate(1));
    store
        .expect_refused(b"junk".to_vec(), StatusCode::BAD_REQUEST, "malformed")
        .await;
    let url = format!("http://{}/metrics", store.telemetry.unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    for line in [
        "logveil_receiver_batches_accepted_total 1",
        "logveil_receiver_batches_duplicate_total 1",
        "logveil_receiver_records_accepted_total 3",
        "logveil_receiver_batches_rejected_total{reason=\"malformed\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Custody: the ledger, keys, identities

/// The ledger entries of one kind.
fn entries_of(ledger: &[Value], kind: &str) -> Vec<Value> {
    ledger
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accept_and_refusal_is_in_the_signed_ledger() {
    let mut host = Host::new("web-1");
    let store = enrolled_store(&[&host]).await;
    let b1 = host.next(2);
    assert_eq!(store.post(b1.clone()).await, stored(1));
    assert_eq!(store.post(b1).await, duplicate(1));
    assert_eq!(store.post(host.next(1)).await, stored(2));
    store
        .expect_refused(b"junk".to_vec(), StatusCode::BAD_REQUEST, "malformed")
        .await;
    let mut ahead = Host::new("web-1");
    ahead.seq = 5;
    store
        .expect_refused(ahead.next(1), StatusCode::CONFLICT, "seq_gap")
        .await;

    let ledger = store.ledger();
    assert_eq!(ledger[0]["kind"], "started");
    let accepted = entries_of(&ledger, "accepted");
    assert_eq!(accepted.len(), 2, "a duplicate is not accepted twice");
    assert_eq!(accepted[1]["seq"], 2);
    assert_eq!(accepted[1]["host"], "web-1");
    assert_eq!(accepted[1]["head_link"], hex::encode(host.link));
    let rejected = entries_of(&ledger, "rejected");
    let reasons: Vec<_> = rejected.iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons, ["malformed", "seq_gap"]);
    assert_eq!(rejected[1]["expected_seq"], 3);
    assert_eq!(rejected[1]["seq"], 6);
    assert_eq!(rejected[0]["peer"], "127.0.0.1");
    let report = store.verify();
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_accepted_a_revoked_one_refused_and_its_batches_still_verify() {
    let mut old = Host::new("web-1");
    let store = Store::start(Options::default()).await;
    let dir = store.trusted().join("web-1");
    std::fs::create_dir(&dir).unwrap();
    let line = |h: &Host| keys::public_key_line(&h.key.verifying_key());
    std::fs::write(dir.join("2024.pub"), line(&old)).unwrap();
    assert_eq!(store.post(old.next(1)).await, stored(1));

    // Rotation: the new key is enrolled beside the old one and continues the chain.
    let mut new = Host::new("web-1");
    new.key = SigningKey::from_bytes(&sha256(b"web-1 new key"));
    std::fs::write(dir.join("2025.pub"), line(&new)).unwrap();
    (new.seq, new.link) = (old.seq, old.link);
    assert_eq!(store.post(new.next(1)).await, stored(2));

    // Revocation: the old key's new batches are refused, nothing is written.
    std::fs::rename(dir.join("2024.pub"), dir.join("2024.pub.revoked")).unwrap();
    (old.seq, old.link) = (new.seq, new.link);
    store
        .expect_refused(old.peek(1), StatusCode::UNAUTHORIZED, "key_revoked")
        .await;
    assert_eq!(store.post(new.next(1)).await, stored(3));
    // What the old key signed before stays verifiable.
    let report = store.verify();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.batches, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_certificate_that_names_another_host() {
    // The client certificate names web-1.
    let mut web1 = Host::new("web-1");
    let mut web2 = Host::new("web-2");
    let store = Store::start(Options {
        tls: Some(Tls::generate(true)),
        ..Options::default()
    })
    .await;
    web1.enroll(&store.trusted());
    web2.enroll(&store.trusted());
    store
        .expect_refused(web2.next(1), StatusCode::FORBIDDEN, "host_mismatch")
        .await;
    assert_eq!(store.post(web1.next(1)).await, stored(1));
    let ledger = store.ledger();
    let rejected = entries_of(&ledger, "rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["host"], "web-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_of_another_chain_is_refused() {
    let mut a = Host::new("web-1");
    let store = enrolled_store(&[&a]).await;
    let b1 = a.next(1);
    assert_eq!(store.post(b1.clone()).await, stored(1));
    assert_eq!(store.post(a.next(1)).await, stored(2));
    // Replaying seq 1 later is a duplicate, never a second copy.
    assert_eq!(store.post(b1).await, duplicate(1));
    // The same records re-signed as seq 3 but linking to seq 1: broken chain.
    let mut replay = Host::new("web-1");
    replay.seq = 2;
    replay.link = GENESIS_PREV_HASH;
    store
        .expect_refused(replay.next(1), StatusCode::CONFLICT, "broken_chain")
        .await;
    assert_eq!(store.files().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_thousands_of_idle_connections_do_not_stop_the_store() {
    let mut host = Host::new("web-1");
    let store = Store::start(Options {
        request_timeout: Some("1s"),
        max_connections: Some(256),
        ..Options::default()
    })
    .await;
    host.enroll(&store.trusted());
    // 2000 connections that never send a full request, some dribbling header bytes.
    let mut idle = Vec::new();
    for i in 0..2000 {
        let mut s = match tokio::net::TcpStream::connect(store.addr).await {
            Ok(s) => s,
            Err(e) => panic!("connection {i}: {e}"),
        };
        if i % 10 == 0 {
            let _ = s.write_all(b"POST /v1/batches HTTP/1.1\r\nHo").await;
        }
        idle.push(s);
    }
    // A real client is still served once the idle ones time out (bounded, not forever).
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(60), store.post(host.next(1)))
        .await
        .expect("the store serves a real client despite idle connections");
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(60));
    // The idle connections were closed by the store, not left hanging.
    let mut closed = 0;
    for s in idle.iter_mut().take(50) {
        let mut buf = [0u8; 256];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 50);
    drop(idle);
    assert_eq!(store.files().len(), 1);
    assert!(store.verify().is_clean());
}
