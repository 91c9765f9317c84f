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
//! - Temp files of writes in progress are never in an expired day (writes go to today).
//! - The sweep runs at start and then every `sweep_interval`, off the async executor; an
//!   error is logged (ERROR: retention is an operator's promise) and the next sweep retries.

use crate::archive::{self, ArchiveError};
use crate::config::ReceiverRetention;
use crate::custody::{ChainRef, Event, Ledger, LedgerError};
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
        let Some(days) = policy.days_for(&chain.stream) else {
            continue;
        };
        let keep_from = oldest_kept_day(now_secs, days);
        for dir in &chain.dirs {
            let Some(day) = dir
                .parent()
                .and_then(|d| d.file_name())
                .map(|d| d.to_string_lossy().into_owned())
            else {
                continue;
            };
            if day >= keep_from {
                continue;
            }
            let files: Vec<&archive::BatchFile> =
                chain.batches.iter().filter(|b| b.day == day).collect();
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
}
