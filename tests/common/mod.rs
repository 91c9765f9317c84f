//! Test harness: runs the real `logveil` binary (agent and central store) on 127.0.0.1 with
//! real files in a temp dir. Waiting is always on a condition with a deadline.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_logveil"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }
    /// Waits for exit with a deadline.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("process did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One test world: keys, a central store, an agent, log files.
pub struct World {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub agent_extra: String,
    pub receiver_extra: String,
    pub sources: String,
    pub agent_env: Vec<(String, String)>,
    /// A command line the agent is started under (its last argument execs the agent).
    pub agent_wrapper: Vec<String>,
    /// `agent.host_id`; empty leaves it unset (the agent takes the machine's hostname).
    pub host_id: String,
    starts: u32,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        for d in ["keys", "trusted", "archive", "data", "logs", "out"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let w = World {
            port: free_port(),
            agent_extra: String::new(),
            receiver_extra: String::new(),
            sources: String::new(),
            agent_env: Vec::new(),
            agent_wrapper: Vec::new(),
            host_id: "test-host".into(),
            starts: 0,
            dir,
        };
        let out = Command::new(bin())
            .args(["keygen", "--out"])
            .arg(w.path("keys"))
            .output()
            .unwrap();
        assert!(out.status.success(), "keygen failed: {out:?}");
        w.enroll();
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    pub fn enroll(&self) {
        std::fs::copy(
            self.path("keys/agent.pub"),
            self.path("trusted/test-host.pub"),
        )
        .unwrap();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/batches", self.port)
    }

    pub fn write_receiver_config(&self) -> PathBuf {
        let p = self.path("collector.toml");
        let text = format!(
            "[receiver]\nlisten = \"127.0.0.1:{}\"\narchive_dir = \"{}\"\ntrusted_keys_dir = \"{}\"\n{}\n",
            self.port,
            self.path("archive").display(),
            self.path("trusted").display(),
            self.receiver_extra
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The default source: every `*.log` under logs/.
    pub fn default_sources(&self) -> String {
        format!(
            "[[sources]]\nname = \"app\"\ninclude = [\"{}/**/*.log\"]\npoll_interval = \"200ms\"\npartial_line_timeout = \"1s\"\nmax_line_bytes = 2048\n",
            self.logs().display()
        )
    }

    pub fn write_agent_config(&self) -> PathBuf {
        let p = self.path("agent.toml");
        let sources = if self.sources.is_empty() {
            self.default_sources()
        } else {
            self.sources.clone()
        };
        let text = format!(
            "[agent]\n{}data_dir = \"{}\"\nsigning_key = \"{}\"\nshutdown_timeout = \"5s\"\n\n{}\n[sink]\nurl = \"{}\"\nbatch_max_wait = \"200ms\"\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\nmisconfigured_retry = \"500ms\"\n{}\n",
            if self.host_id.is_empty() {
                String::new()
            } else {
                format!("host_id = \"{}\"\n", self.host_id)
            },
            self.path("data").display(),
            self.path("keys/agent.key").display(),
            sources,
            self.url(),
            self.agent_extra
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn start_receiver(&mut self) -> Proc {
        let cfg = self.write_receiver_config();
        let log = self.path("out/receiver.log");
        let child = Command::new(bin())
            .args(["receive", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_append(&log))
            .spawn()
            .unwrap();
        let proc = Proc {
            child: Some(child),
            log,
        };
        let port = self.port;
        wait_until(Duration::from_secs(20), "central store listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        proc
    }

    pub fn start_agent(&mut self) -> Proc {
        let cfg = self.write_agent_config();
        self.starts += 1;
        let log = self.path(&format!("out/agent-{}.log", self.starts));
        let mut cmd = match self.agent_wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(open_append(&log));
        for (k, v) in &self.agent_env {
            cmd.env(k, v);
        }
        Proc {
            child: Some(cmd.spawn().unwrap()),
            log,
        }
    }

    /// All agent logs so far, concatenated.
    pub fn agent_logs(&self) -> String {
        let mut s = String::new();
        for i in 1..=self.starts {
            s.push_str(
                &std::fs::read_to_string(self.path(&format!("out/agent-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        s
    }

    /// `logveil archive cat` parsed into records.
    pub fn records(&self) -> Vec<serde_json::Value> {
        let mut cmd = Command::new(bin());
        cmd.args(["archive", "cat", "--archive"])
            .arg(self.path("archive"));
        // An archive with a custody ledger is read only on record (docs/CUSTODY.md).
        if self.path("archive/.custody/ledger.jsonl").exists() {
            cmd.args([
                "--who",
                "test-harness",
                "--reason",
                "test assertions",
                "--record-with",
            ])
            .arg(self.path("keys/store.key"));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "archive cat failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("archive cat prints JSON lines"))
            .collect()
    }

    pub fn verify(&self) -> (bool, String) {
        let out = Command::new(bin())
            .args(["verify", "--archive"])
            .arg(self.path("archive"))
            .arg("--keys")
            .arg(self.path("trusted"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Makes the store's key pair (`keys/store.key`, `keys/store.pub`) and has the store keep
    /// a custody ledger with it (appends to `receiver_extra`).
    pub fn use_store_key(&mut self) {
        let out = Command::new(bin())
            .args(["keygen", "--name", "store", "--out"])
            .arg(self.path("keys"))
            .output()
            .unwrap();
        assert!(out.status.success(), "keygen --name store failed: {out:?}");
        self.receiver_extra = format!(
            "store_key = \"{}\"\n{}",
            self.path("keys/store.key").display(),
            self.receiver_extra
        );
    }

    /// `logveil verify` of `archive` with the store's public key and `extra` arguments:
    /// (exit status 0, stdout and stderr).
    pub fn verify_archive(&self, archive: &Path, extra: &[&str]) -> (bool, String) {
        let out = Command::new(bin())
            .args(["verify", "--archive"])
            .arg(archive)
            .arg("--keys")
            .arg(self.path("trusted"))
            .arg("--store-key")
            .arg(self.path("keys/store.pub"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Waits until the archive holds `n` records (fails fast if it holds more).
    pub fn wait_records(&self, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let mut last = Vec::new();
        wait_until(limit, &format!("{n} records in the archive"), || {
            last = self.records();
            assert!(
                last.len() <= n,
                "archive holds {} records, more than the {n} written",
                last.len()
            );
            last.len() == n
        });
        last
    }
}

pub fn open_append(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap()
}

/// Appends lines to a file (creating it), flushing each call.
pub fn append(path: &Path, text: &str) {
    let mut f = open_append(path);
    f.write_all(text.as_bytes()).unwrap();
}

/// Checks that `records` hold each line of `file` exactly once, in order, at its offset.
/// Returns the number of lines checked.
pub fn assert_file_shipped_exactly_once(records: &[serde_json::Value], file: &Path) -> usize {
    let content = std::fs::read(file).unwrap();
    let mut expected = Vec::new();
    let mut offset = 0u64;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.ends_with(b"\n") {
            let body = &line[..line.len() - 1];
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            expected.push((offset, String::from_utf8_lossy(body).into_owned()));
        }
        offset += line.len() as u64;
    }
    let path = file.to_str().unwrap();
    let got: Vec<(u64, String)> = records
        .iter()
        .filter(|r| r["path"] == path)
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{path}: record count differs from line count"
    );
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "{path}: line {i} differs (offset, body)");
    }
    expected.len()
}

/// A tiny HTTP GET, for the telemetry endpoint.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// The value of a metric (the first sample whose name starts with `name`).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// Runs `logveil` with `args` to completion.
pub fn run_logveil(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// Starts `logveil` with `args` (stderr to `log`); for a `receive`, waits until it listens
/// on the port of its `--config`'s `listen`.
pub fn spawn_logveil(args: &[&str], log: &Path) -> Proc {
    let child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(open_append(log))
        .spawn()
        .unwrap();
    let proc = Proc {
        child: Some(child),
        log: log.to_path_buf(),
    };
    if args.first() == Some(&"receive") {
        let cfg = std::fs::read_to_string(args[2]).unwrap();
        let port: u16 = cfg
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|p| p.trim_end_matches('"').parse().ok())
            .expect("a listen line");
        wait_until(Duration::from_secs(20), "central store listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    proc
}
