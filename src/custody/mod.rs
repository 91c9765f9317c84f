//! The custody ledger: the central store's own hash-chained, signed record of everything
//! that happens to the archive.
//!
//! What it records, one entry each ([`Event`]): every accepted batch (with the chain head
//! it advances to), every refused request (reason, and who as far as known), every declared
//! gap, every read of the archive (who, role, reason, what, allowed or denied), every
//! retention deletion, every verify run, and each start of the store.
//!
//! # File format
//!
//! `<archive_dir>/.custody/ledger.jsonl`, mode 0600 (in a 0700 directory), one line per entry, append-only:
//!
//! ```text
//! line      = '{"entry":' entry ',"sig":"' base64(signature) '"}' '\n'
//! entry     = one JSON object, no newline: {"n":N,"prev":"<hex>","ts_ms":T,"kind":"...",...}
//! signature = Ed25519(store key, "logveil/ledger/v1" 0x00 || entry bytes)
//! hash(e)   = SHA-256(entry bytes)
//! ```
//! - `n` counts from 1 with no hole; `prev` is the hash of entry `n-1` (64 zeros for n = 1),
//!   so removing, reordering or editing any entry breaks the chain at that place.
//! - The signature is over the exact entry bytes as they stand in the file: verification
//!   never re-serializes. The base64 is standard with padding (88 characters).
//! - `ts_ms` is the store's clock, Unix milliseconds.
//!
//! # Writing
//!
//! [`Ledger::append`] takes an exclusive `flock` on the file, catches up with lines another
//! process (a local `logveil` tool) appended since, writes one line and `fdatasync`s before
//! returning. The receiver appends an `accepted` entry after the batch is fsynced in the
//! archive and before it answers 2xx; a crash between the two leaves a batch the ledger does
//! not name, which the next start finds and records as `accepted` with `"recovered": true`.
//! A torn last line (power loss mid-append; never acknowledged) is cut off at open and the
//! cut is recorded in the `started` entry.
//!
//! # Reading
//!
//! [`read`] parses and checks a ledger (format, numbering, hash chain, signatures against the
//! store's public key) and returns every entry with its line number, plus the problems it
//! found, each naming its line. Agreement with the archive is `crate::verify`'s job.

use crate::envelope::{keys, sha256, Hash};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const LEDGER_FILE: &str = "ledger.jsonl";
pub const SIGNATURE_DOMAIN: &[u8] = b"logveil/ledger/v1\0";
const LINE_HEAD: &str = "{\"entry\":";
const LINE_SIG: &str = ",\"sig\":\"";
const SIG_B64_LEN: usize = 88;
/// The longest line a reader accepts; entries are small and bounded.
pub const MAX_LINE: usize = 64 * 1024;

/// Where the ledger of an archive lives.
pub fn ledger_path(archive_dir: &Path) -> PathBuf {
    archive_dir
        .join(crate::archive::CUSTODY_DIR)
        .join(LEDGER_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("custody ledger {path}: cannot {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("custody ledger {path}: line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error(
        "custody ledger {path} is signed by key {found}, not the configured store key {expected}"
    )]
    WrongKey {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("ledger task failed: {0}")]
    Task(String),
}

/// Which chain a batch belongs to, as the ledger names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChainRef {
    pub host: String,
    pub stream: String,
    /// 32 lowercase hex digits.
    pub chain: String,
}

/// One event in the ledger. Serialized with `"kind"` as the tag, fields flat beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The store started with this ledger (the first entry of a new ledger, and each start).
    Started {
        store_key_id: String,
        version: String,
        /// Bytes of a torn last line cut off at open (never acknowledged), with their hash.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        torn_tail: Option<TornTail>,
    },
    /// A batch is durable in the archive; `head_seq` / `head_link` is the chain head now.
    Accepted {
        #[serde(flatten)]
        chain: ChainRef,
        seq: u64,
        day: String,
        batch_kind: String,
        key_id: String,
        envelope_sha256: String,
        head_link: String,
        records: u64,
        bytes: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recovered: bool,
    },
    /// A request refused with a 4xx; nothing went into the archive.
    Rejected {
        reason: String,
        status: u16,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chain: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_sha256: Option<String>,
        /// Refusals from the same peer left out of the ledger since its last recorded
        /// one (past `recorded_rejections_per_minute`).
        #[serde(default, skip_serializing_if = "is_zero")]
        unrecorded_before: u64,
    },
    /// Seqs `from..=to` of a chain will never come (signed by the host, see
    /// `crate::receive::gap`); the chain continues at `to + 1` from `link`.
    Gap {
        #[serde(flatten)]
        chain: ChainRef,
        from: u64,
        to: u64,
        link: String,
        reason: String,
        key_id: String,
        /// The host's signed statement, as sent (base64), and its signature.
        statement: String,
        statement_sig: String,
    },
    /// A read of the archive, allowed or denied.
    Read {
        who: String,
        role: String,
        via: String,
        reason: String,
        what: String,
        allowed: bool,
        #[serde(default)]
        records: u64,
    },
    /// Retention removed one chain's batches of one day.
    RetentionDeleted {
        #[serde(flatten)]
        chain: ChainRef,
        day: String,
        first_seq: u64,
        last_seq: u64,
        files: u64,
        retention_days: u64,
    },
    /// `logveil verify` ran against this archive.
    Verified {
        who: String,
        problems: u64,
        batches: u64,
        ledger_entries: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TornTail {
    pub bytes: u64,
    pub sha256: String,
}

/// The fields every entry has, then the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub n: u64,
    pub prev: String,
    pub ts_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Encodes one signed line (with its newline) and returns it with the entry's hash.
pub fn encode_line(entry: &Entry, key: &SigningKey) -> (String, Hash) {
    let body = serde_json::to_string(entry).expect("entries always serialize");
    let mut msg = SIGNATURE_DOMAIN.to_vec();
    msg.extend_from_slice(body.as_bytes());
    let sig = key.sign(&msg);
    let line = format!(
        "{LINE_HEAD}{body}{LINE_SIG}{}\"}}\n",
        B64.encode(sig.to_bytes())
    );
    (line, sha256(body.as_bytes()))
}

/// Splits a line (without its newline) into entry bytes and signature, strictly.
fn split_line(line: &str) -> Result<(&str, [u8; 64]), String> {
    let tail_len = LINE_SIG.len() + SIG_B64_LEN + 2;
    if !line.starts_with(LINE_HEAD) || line.len() < LINE_HEAD.len() + tail_len {
        return Err("not a ledger line".into());
    }
    let (body_end, tail) = line.split_at(line.len() - tail_len);
    if !tail.starts_with(LINE_SIG) || !tail.ends_with("\"}") {
        return Err("not a ledger line".into());
    }
    let b64 = &tail[LINE_SIG.len()..LINE_SIG.len() + SIG_B64_LEN];
    let sig: [u8; 64] = B64
        .decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("signature is not base64 of 64 bytes")?;
    Ok((&body_end[LINE_HEAD.len()..], sig))
}

/// Parses one line: the entry and its hash. Checks the signature when `key` is given.
pub fn parse_line(line: &str, key: Option<&VerifyingKey>) -> Result<(Entry, Hash), String> {
    let (body, sig) = split_line(line)?;
    if let Some(key) = key {
        let mut msg = SIGNATURE_DOMAIN.to_vec();
        msg.extend_from_slice(body.as_bytes());
        key.verify(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| "signature does not verify against the store key".to_string())?;
    }
    let entry: Entry =
        serde_json::from_str(body).map_err(|e| format!("entry does not parse: {e}"))?;
    Ok((entry, sha256(body.as_bytes())))
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct LedgerReport {
    /// `(line number from 1, entry)` of every line that parsed.
    pub entries: Vec<(u64, Entry)>,
    /// One line each, naming the ledger line.
    pub problems: Vec<String>,
    /// The store key id the first `started` entry names.
    pub store_key_id: Option<String>,
    /// Hash of the last entry (what an auditor can write down and compare later).
    pub head: Option<(u64, Hash)>,
}

/// Reads and checks the ledger at `path` (see the module doc). `key` = the store's public
/// key; without it, signatures are not checked and that is a problem.
pub fn read(path: &Path, key: Option<&VerifyingKey>) -> Result<LedgerReport, LedgerError> {
    let text = std::fs::read(path).map_err(|source| LedgerError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let mut report = LedgerReport::default();
    let p = path.display();
    if key.is_none() {
        report.problems.push(format!(
            "{p}: no store public key given (--store-key): ledger signatures not checked"
        ));
    }
    let mut prev: Hash = [0; 32];
    let mut expected_n = 1u64;
    let complete = text.ends_with(b"\n") || text.is_empty();
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    lines.pop(); // after the last newline (or the torn tail)
    if !complete {
        report.problems.push(format!(
            "{p}: the last line is incomplete (torn write or truncation)"
        ));
    }
    for (i, raw) in lines.iter().enumerate() {
        let line_no = i as u64 + 1;
        let Ok(line) = std::str::from_utf8(raw) else {
            report
                .problems
                .push(format!("{p}: line {line_no}: not UTF-8"));
            continue;
        };
        let parsed = parse_line(line, None).map(|(entry, hash)| {
            // A bad signature is a problem at this line, but the entry still chains: an
            // edit shows here and at the next line's `prev`.
            if let Some(key) = key {
                if let Err(msg) = parse_line(line, Some(key)) {
                    report.problems.push(format!("{p}: line {line_no}: {msg}"));
                }
            }
            (entry, hash)
        });
        match parsed {
            Err(msg) => {
                report.problems.push(format!("{p}: line {line_no}: {msg}"));
                // Unknown hash: the next line's `prev` cannot be checked.
                prev = [0xff; 32];
                expected_n += 1;
            }
            Ok((entry, hash)) => {
                if entry.n != expected_n {
                    report.problems.push(format!(
                        "{p}: line {line_no}: entry number {} where {expected_n} was expected (entries removed or reordered)",
                        entry.n
                    ));
                }
                if prev != [0xff; 32] && entry.prev != hex::encode(prev) {
                    report.problems.push(format!(
                        "{p}: line {line_no}: prev does not match the hash of the entry before it (an entry was edited, removed or inserted)"
                    ));
                }
                if let Event::Started { store_key_id, .. } = &entry.event {
                    report
                        .store_key_id
                        .get_or_insert_with(|| store_key_id.clone());
                }
                prev = hash;
                expected_n = entry.n + 1;
                report.head = Some((entry.n, hash));
                report.entries.push((line_no, entry));
            }
        }
    }
    if let (Some(k), Some(named)) = (key, &report.store_key_id) {
        if keys::key_id(k) != *named {
            report.problems.push(format!(
                "{p}: the ledger names store key {named}, the given key is {}",
                keys::key_id(k)
            ));
        }
    }
    Ok(report)
}

struct WriterState {
    file: std::fs::File,
    /// Bytes of the file this writer has accounted for.
    len: u64,
    next_n: u64,
    prev: Hash,
}

/// The appending side of a ledger. One per process; other processes coordinate via `flock`.
pub struct Ledger {
    path: PathBuf,
    key: SigningKey,
    state: Mutex<WriterState>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger of `archive_dir`, signing with `key`, and
    /// appends a `started` entry. Refuses a ledger started by another store key. Returns the
    /// ledger and the entries already in it (for recovery).
    pub fn open(archive_dir: &Path, key: SigningKey) -> Result<(Ledger, Vec<Entry>), LedgerError> {
        let path = ledger_path(archive_dir);
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| LedgerError::Io {
                op,
                path: p,
                source,
            }
        };
        let dir = path.parent().expect("ledger path has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create directory", dir))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        let locked = lock(
            file.try_clone().map_err(io("duplicate handle of", &path))?,
            &path,
        )?;
        let mut text = Vec::new();
        (&*locked)
            .read_to_end(&mut text)
            .map_err(io("read", &path))?;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn_tail = (complete < text.len()).then(|| TornTail {
            bytes: (text.len() - complete) as u64,
            sha256: hex::encode(sha256(&text[complete..])),
        });
        if let Some(t) = &torn_tail {
            tracing::warn!(path = %path.display(), bytes = t.bytes, "custody ledger ends in a torn line (never acknowledged); cutting it off and recording the cut");
            file.set_len(complete as u64)
                .map_err(io("truncate", &path))?;
        }
        let mut entries = Vec::new();
        let mut prev = [0u8; 32];
        let mut next_n = 1;
        let vk = key.verifying_key();
        for (i, raw) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            let corrupt = |message: String| LedgerError::Corrupt {
                path: path.clone(),
                line: i as u64 + 1,
                message,
            };
            let line = std::str::from_utf8(raw).map_err(|_| corrupt("not UTF-8".into()))?;
            let (entry, hash) = parse_line(line, None).map_err(corrupt)?;
            if let Event::Started { store_key_id, .. } = &entry.event {
                if entries.is_empty() && *store_key_id != keys::key_id(&vk) {
                    return Err(LedgerError::WrongKey {
                        path,
                        found: store_key_id.clone(),
                        expected: keys::key_id(&vk),
                    });
                }
            }
            prev = hash;
            next_n = entry.n + 1;
            entries.push(entry);
        }
        drop(locked);
        let ledger = Ledger {
            path: path.clone(),
            key,
            state: Mutex::new(WriterState {
                len: complete as u64,
                file,
                next_n,
                prev,
            }),
        };
        ledger.append(Event::Started {
            store_key_id: keys::key_id(&vk),
            version: env!("CARGO_PKG_VERSION").into(),
            torn_tail,
        })?;
        Ok((ledger, entries))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and makes it durable. Blocking: call off the async executor.
    /// Returns the entry's number.
    pub fn append(&self, event: Event) -> Result<u64, LedgerError> {
        let io = |op: &'static str| {
            let p = self.path.clone();
            move |source| LedgerError::Io {
                op,
                path: p,
                source,
            }
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let file = st.file.try_clone().map_err(io("duplicate handle of"))?;
        let file = lock(file, &self.path)?;
        // Catch up with entries another process appended since our last write.
        let len = file.metadata().map_err(io("stat"))?.len();
        if len != st.len {
            let mut f = &*file;
            f.seek(SeekFrom::Start(st.len)).map_err(io("seek"))?;
            let mut more = Vec::new();
            f.read_to_end(&mut more).map_err(io("read"))?;
            for (i, raw) in more.split(|&b| b == b'\n').enumerate() {
                if raw.is_empty() {
                    continue;
                }
                let line = std::str::from_utf8(raw).unwrap_or("");
                let (entry, hash) =
                    parse_line(line, Some(&self.key.verifying_key())).map_err(|message| {
                        LedgerError::Corrupt {
                            path: self.path.clone(),
                            line: i as u64,
                            message: format!("appended by another process: {message}"),
                        }
                    })?;
                st.prev = hash;
                st.next_n = entry.n + 1;
            }
            st.len = len;
        }
        let entry = Entry {
            n: st.next_n,
            prev: hex::encode(st.prev),
            ts_ms: now_ms(),
            event,
        };
        let (line, hash) = encode_line(&entry, &self.key);
        (&*file)
            .write_all(line.as_bytes())
            .map_err(io("append to"))?;
        file.sync_data().map_err(io("fsync"))?;
        st.len += line.len() as u64;
        st.prev = hash;
        st.next_n += 1;
        Ok(entry.n)
    }

    /// [`Ledger::append`] from async code.
    pub async fn record(self: &std::sync::Arc<Self>, event: Event) -> Result<u64, LedgerError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append(event))
            .await
            .map_err(|e| LedgerError::Task(e.to_string()))?
    }
}

/// Opens the ledger of an archive for a one-off append by a local tool (`archive cat`,
/// `verify --record`), using the store key at `key_path`.
pub fn append_local(archive_dir: &Path, key_path: &Path, event: Event) -> Result<u64, LedgerError> {
    let key = keys::load_signing_key(key_path)?;
    let path = ledger_path(archive_dir);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .map_err(|source| LedgerError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
    let ledger = Ledger {
        path,
        key,
        state: Mutex::new(WriterState {
            file,
            len: 0,
            next_n: 1,
            prev: [0; 32],
        }),
    };
    ledger.append(event)
}

type Locked = nix::fcntl::Flock<std::fs::File>;

fn lock(file: std::fs::File, path: &Path) -> Result<Locked, LedgerError> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        LedgerError::Io {
            op: "lock",
            path: path.to_path_buf(),
            source: errno.into(),
        }
    })
}

#[cfg(test)]
mod tests;

fn is_zero(n: &u64) -> bool {
    *n == 0
}
