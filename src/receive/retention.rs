//! Retention: the store deletes whole day directories of a stream once they are older than
//! the stream's `retention_days` (`[receiver.retention]`), every deletion on record.
//!
//! - A day `D` of a stream with retention `R` days expires when `D` is before the UTC day
//!   `R` days before today (so `R = 30` keeps today and the 30 days before it).
//! - One sweep, for each chain and each expired day it has a directory in: append a
//!   `retention_deleted` entry (`host`, `stream`, `chain`, `day`, `first_seq`, `last_seq`,
//!   `files`, `retention_days`) to the custody ledger and fsync it, *then* remove the
//!   chain's batch files of that day, the chain directory, and the day directory when it is
//!   empty, fsyncing each parent. The entry comes first so that a batch is never gone
//!   without a record; a crash in between leaves files the entry already covers, which the
//!   next sweep removes (recording them again). `logveil verify` accepts batches missing
//!   under a `retention_deleted` entry, and a chain whose first remaining batch follows
//!   deleted ones.
//! - The `legal` stream is the exception: its retention is not configured per stream but
//!   comes from the legal exceptions that produced its records. Each legal record carries
//!   its exception's `retention_days`; a day of a legal chain expires only once the longest
//!   `retention_days` of any record in it has passed. A day whose batches cannot be read, or
//!   that holds a record without a `retention_days`, is kept (and logged): the store never
//!   deletes evidence it cannot prove has expired.
//! - Temp files of writes in progress are never in an expired day (writes go to today).
//! - The sweep runs at start and then every `sweep_interval`, off the async executor; an
//!   error is logged (ERROR: retention is an operator's promise) and the next sweep retries.

use crate::access::LEGAL_STREAM;
use crate::archive::{self, ArchiveError};
use crate::config::ReceiverRetention;
use crate::custody::{ChainRef, Event, Ledger, LedgerError};
use crate::envelope::{Envelope, Kind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The oldest day (`YYYY-MM-DD`) a stream with `days` of retention keeps, on `today_secs`.
pub fn oldest_kept_day(today_secs: i64, days: u64) -> String {
    let days = i64::try_from(days).unwrap_or(i64::MAX / 86_400 - 1);
    archive::day_of(today_secs.saturating_sub(days.saturating_mul(86_400)))
}

/// One sweep of the archive under `root` at `now_secs`. Returns the number of (chain, day)
/// directories removed.
pub fn sweep(
    root: &Path,
    policy: &ReceiverRetention,
    ledger: &Ledger,
    now_secs: i64,
) -> Result<u64, RetentionError> {
    let listing = archive::list(root)?;
    let mut removed = 0;
    for chain in &listing.chains {
        let legal = chain.stream == LEGAL_STREAM;
        // The legal stream's retention comes from its records, never from the config.
        let configured = if legal {
            None
        } else {
            policy.days_for(&chain.stream)
        };
        if !legal && configured.is_none() {
            continue;
        }
        // No record keeps less than a day: younger days are never candidates.
        let youngest_candidate = oldest_kept_day(now_secs, configured.unwrap_or(1));
        for dir in &chain.dirs {
            let Some(day) = dir
                .parent()
                .and_then(|d| d.file_name())
                .map(|d| d.to_string_lossy().into_owned())
            else {
                continue;
            };
            if day >= youngest_candidate {
                continue;
            }
            let files: Vec<&archive::BatchFile> =
                chain.batches.iter().filter(|b| b.day == day).collect();
            let days = if legal {
                match legal_retention(&files) {
                    Ok(days) => days,
                    Err(why) => {
                        tracing::warn!(chain = %chain.label(), day = %day, reason = %why, "legal stream day kept: its retention cannot be read from its records");
                        continue;
                    }
                }
            } else {
                configured.expect("checked above")
            };
            if day >= oldest_kept_day(now_secs, days) {
                continue;
            }
            let (first_seq, last_seq) = match (files.first(), files.last()) {
                (Some(f), Some(l)) => (f.seq, l.seq),
                _ => (0, 0),
            };
            if !files.is_empty() {
                ledger.append(Event::RetentionDeleted {
                    chain: ChainRef {
                        host: chain.host.clone(),
                        stream: chain.stream.clone(),
                        chain: hex::encode(chain.chain_id),
                    },
                    day: day.clone(),
                    first_seq,
                    last_seq,
                    files: files.len() as u64,
                    retention_days: days,
                })?;
            }
            remove_chain_day(dir)?;
            tracing::info!(
                chain = %chain.label(),
                day = %day,
                first_seq,
                last_seq,
                files = files.len(),
                retention_days = days,
                "retention removed a day of a chain"
            );
            removed += 1;
        }
    }
    Ok(removed)
}

/// The retention of one day of a legal chain: the longest `retention_days` of any record
/// in its batches (tombstones hold none). An error names what could not be read.
fn legal_retention(files: &[&archive::BatchFile]) -> Result<u64, String> {
    let mut days = 0u64;
    for file in files {
        let bytes = std::fs::read(&file.path)
            .map_err(|e| format!("cannot read {}: {e}", file.path.display()))?;
        let batch_days =
            records_retention(&bytes).map_err(|e| format!("{}: {e}", file.path.display()))?;
        days = days.max(batch_days.unwrap_or(0));
    }
    Ok(days.max(1))
}

/// The longest `retention_days` of the records of one envelope (a legal batch); `None`
/// for a tombstone. An error when a record has none or the envelope cannot be read.
pub fn records_retention(envelope: &[u8]) -> Result<Option<u64>, String> {
    let env = Envelope::decode(envelope).map_err(|e| e.to_string())?;
    if env.header.kind != Kind::Data {
        return Ok(None);
    }
    let payload = env
        .decompress(env.header.decompressed_len)
        .map_err(|e| e.to_string())?;
    let mut days = 0u64;
    for (n, line) in payload.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let record_days = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|r| r.get("retention_days").and_then(serde_json::Value::as_u64))
            .ok_or_else(|| format!("record {} has no retention_days", n + 1))?;
        days = days.max(record_days);
    }
    Ok(Some(days))
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RetentionError + 'a {
    move |source| RetentionError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Removes one chain's directory of one day (its files only: the listing said what is in
/// it), then the day directory if that is now empty.
fn remove_chain_day(dir: &Path) -> Result<(), RetentionError> {
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
    }
    std::fs::remove_dir(dir).map_err(io("remove", dir))?;
    let day_dir = dir.parent().expect("a chain directory has a day directory");
    fsync_dir(day_dir)?;
    let empty = std::fs::read_dir(day_dir)
        .map_err(io("read", day_dir))?
        .next()
        .is_none();
    // Other chains may still have batches of that day.
    if empty {
        std::fs::remove_dir(day_dir).map_err(io("remove", day_dir))?;
        let stream_dir = day_dir
            .parent()
            .expect("a day directory has a stream directory");
        fsync_dir(stream_dir)?;
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), RetentionError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sweeps at start and every `policy.sweep_interval` until `shutdown`.
pub async fn run(
    root: PathBuf,
    policy: ReceiverRetention,
    ledger: Arc<Ledger>,
    shutdown: CancellationToken,
) {
    let interval = policy.sweep_interval;
    let policy = Arc::new(policy);
    loop {
        let (root, policy, ledger) = (root.clone(), policy.clone(), ledger.clone());
        let result =
            tokio::task::spawn_blocking(move || sweep(&root, &policy, &ledger, now_secs())).await;
        match result {
            Ok(Ok(n)) => tracing::debug!(removed = n, "retention sweep done"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "retention sweep failed; retrying at the next sweep")
            }
            Err(e) => tracing::error!(error = %e, "retention sweep task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::test_support::{write_archive_file, Chain};

    #[test]
    fn oldest_kept_day_counts_back_from_today() {
        let today = archive::parse_day("2025-03-10").unwrap() + 3600;
        assert_eq!(oldest_kept_day(today, 1), "2025-03-09");
        assert_eq!(oldest_kept_day(today, 30), "2025-02-08");
        // Absurd retention keeps everything rather than overflowing.
        assert!(oldest_kept_day(today, u64::MAX).as_str() < "1970-01-01");
    }

    #[test]
    fn sweep_removes_expired_days_and_records_each() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let key = crate::envelope::keys::generate();
        let (ledger, _) = Ledger::open(root, key.clone()).unwrap();
        let mut c = Chain::new("web-1", "default", [1; 16]);
        let mut keep = Chain::new("web-1", "audit", [2; 16]);
        let b1 = write_archive_file(root, &c.next_data(&["a"]));
        let b2 = write_archive_file(root, &c.next_data(&["b"]));
        write_archive_file(root, &keep.next_data(&["x"]));
        let policy = ReceiverRetention {
            sweep_interval: std::time::Duration::from_secs(60),
            retention_days: [("default".to_string(), 2)].into_iter().collect(),
        };
        let now = archive::parse_day(&archive::today()).unwrap();
        assert_eq!(sweep(root, &policy, &ledger, now).unwrap(), 0);
        assert!(b1.exists());
        // Three days later today's directory has expired for `default` only.
        assert_eq!(sweep(root, &policy, &ledger, now + 3 * 86_400).unwrap(), 1);
        assert!(!b1.exists() && !b2.exists());
        assert!(keep.dir(root).exists());
        let report = crate::custody::read(
            &crate::custody::ledger_path(root),
            Some(&key.verifying_key()),
        )
        .unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let deleted: Vec<_> = report
            .entries
            .iter()
            .filter_map(|(_, e)| match &e.event {
                Event::RetentionDeleted {
                    first_seq,
                    last_seq,
                    files,
                    retention_days,
                    ..
                } => Some((*first_seq, *last_seq, *files, *retention_days)),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, [(1, 2, 2, 2)]);
    }

    /// Seals the next batch of `chain` over the given JSON records and writes it.
    fn write_records(root: &Path, chain: &mut Chain, records: &[serde_json::Value]) -> PathBuf {
        let mut raw = Vec::new();
        for r in records {
            raw.extend_from_slice(r.to_string().as_bytes());
            raw.push(b'\n');
        }
        let bytes = chain.data_over(&raw, records.len() as u64);
        chain.advance(&bytes);
        write_archive_file(root, &bytes)
    }

    #[test]
    fn the_legal_stream_keeps_each_day_for_its_longest_exception_retention() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let key = crate::envelope::keys::generate();
        let (ledger, _) = Ledger::open(root, key.clone()).unwrap();
        let mut legal = Chain::new("web-1", "legal", [1; 16]);
        let invoice = serde_json::json!({"exception": "tax-invoice", "retention_days": 10});
        let evidence = serde_json::json!({"exception": "evidence", "retention_days": 5});
        let b1 = write_records(root, &mut legal, std::slice::from_ref(&evidence));
        let b2 = write_records(root, &mut legal, &[invoice, evidence]);
        // A legal chain of another host whose record has lost its tag: never deleted.
        let mut untagged = Chain::new("web-2", "legal", [2; 16]);
        let kept = write_records(
            root,
            &mut untagged,
            &[serde_json::json!({"exception": "x"})],
        );
        // A configured "*" does not reach the legal stream.
        let policy = ReceiverRetention {
            sweep_interval: std::time::Duration::from_secs(60),
            retention_days: [("*".to_string(), 1)].into_iter().collect(),
        };
        let now = archive::parse_day(&archive::today()).unwrap();
        // Past the 5 days of one record but not the 10 of the other in the same day: kept.
        assert_eq!(sweep(root, &policy, &ledger, now + 7 * 86_400).unwrap(), 0);
        assert!(b1.exists() && b2.exists());
        assert_eq!(sweep(root, &policy, &ledger, now + 12 * 86_400).unwrap(), 1);
        assert!(!b1.exists() && !b2.exists());
        assert!(kept.exists());
        let report = crate::custody::read(
            &crate::custody::ledger_path(root),
            Some(&key.verifying_key()),
        )
        .unwrap();
        let applied: Vec<_> = report
            .entries
            .iter()
            .filter_map(|(_, e)| match &e.event {
                Event::RetentionDeleted {
                    chain,
                    retention_days,
                    files,
                    ..
                } => Some((chain.stream.clone(), *retention_days, *files)),
                _ => None,
            })
            .collect();
        assert_eq!(applied, [("legal".to_string(), 10, 2)]);
    }
}
