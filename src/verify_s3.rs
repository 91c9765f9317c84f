//! Verifying an archive kept in S3 (`logveil verify --s3 collector.toml --keys DIR
//! [--store-key store.pub] [--ledger FILE]...`).
//!
//! It lists every object **version** and delete marker under the archive's prefix (layout in
//! `crate::receive::s3_archive`), so a batch cannot be hidden by deleting it: under Object
//! Lock a `DELETE` only adds a delete marker, and the batch's version stays listed. Per key:
//! - a delete marker is a problem naming the key (the batch is still checked, from its
//!   version);
//! - more than one version is a problem (a seq written twice, which `If-None-Match` should
//!   have stopped); the oldest version is the one checked;
//! - a key outside the layout is a problem;
//! - a batch whose version is not under COMPLIANCE Object Lock is a problem, and so is a
//!   bucket without Object Lock and versioning.
//!
//! The chosen version of each batch is fetched by version id into a private temporary
//! directory laid out like the filesystem archive (day from the object's
//! `x-amz-meta-logveil-day`), and that copy is checked by `crate::verify` exactly as a
//! filesystem archive is — signatures, payloads, chains — against the ledgers of all store
//! instances that share the bucket (one per instance, each checked on its own, together
//! covering every batch). Problems name the S3 keys, not the temporary copy, which is removed
//! at the end.

use crate::archive;
use crate::config::ReceiverS3;
use crate::receive::s3_archive::{Layout, META_DAY};
use crate::s3::{S3Client, VersionEntry};
use crate::verify::{verify_with_ledgers, Report};
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A private directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "logveil-verify-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Verifies the S3 archive described by `cfg` against the hosts' keys and the `ledgers`.
pub async fn verify_s3(
    cfg: &ReceiverS3,
    keys: &Path,
    store_key: Option<&VerifyingKey>,
    ledgers: &[PathBuf],
) -> Report {
    let mut report = Report::default();
    let mut problems = Vec::new();
    let mirror = match TempDir::new() {
        Ok(d) => d,
        Err(e) => {
            report
                .problems
                .push(format!("cannot make a temporary directory: {e}"));
            return report;
        }
    };
    let names = match fetch(cfg, &mirror.0, &mut problems).await {
        Ok(n) => n,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    let root = mirror.0.clone();
    let (keys, ledgers, store_key) = (keys.to_path_buf(), ledgers.to_vec(), store_key.copied());
    let checked = tokio::task::spawn_blocking(move || {
        verify_with_ledgers(&root, &keys, store_key.as_ref(), &ledgers)
    })
    .await;
    let mut report = match checked {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(format!("verification failed: {e}"));
            return report;
        }
    };
    let root = mirror.0.display().to_string();
    for p in &mut report.problems {
        *p = rename_paths(p, &root, &names);
    }
    problems.append(&mut report.problems);
    report.problems = problems;
    report
}

/// Replaces paths of the temporary copy in `problem` with the S3 names they stand for.
fn rename_paths(problem: &str, root: &str, names: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = problem;
    while let Some(i) = rest.find(root) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c == ':' || c.is_whitespace())
            .unwrap_or(tail.len());
        let path = &tail[..end];
        match names.get(path) {
            Some(name) => out.push_str(name),
            None => out.push_str(&format!("(copy of the bucket){}", &path[root.len()..])),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Lists every version, notes delete markers and rewrites, and copies one version of each
/// batch into `mirror`. Returns the S3 name of each copied file.
async fn fetch(
    cfg: &ReceiverS3,
    mirror: &Path,
    problems: &mut Vec<String>,
) -> Result<HashMap<String, String>, String> {
    let settings = cfg.settings()?;
    let client = S3Client::new(settings).map_err(|e| e.to_string())?;
    let layout = Layout::new(cfg.prefix());
    match client.bucket_is_locked().await {
        Ok((true, true)) => {}
        Ok((lock, versioning)) => problems.push(format!(
            "bucket {}: Object Lock {}, versioning {}: batches can be removed or rewritten",
            client.bucket(),
            if lock { "enabled" } else { "not enabled" },
            if versioning { "on" } else { "off" },
        )),
        Err(e) => problems.push(format!(
            "bucket {}: cannot check its Object Lock configuration: {e}",
            client.bucket()
        )),
    }
    let entries = client
        .list_versions(layout.root())
        .await
        .map_err(|e| e.to_string())?;
    let mut by_key: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
    for e in entries {
        by_key.entry(e.key.clone()).or_default().push(e);
    }
    let mut names = HashMap::new();
    for (key, entries) in by_key {
        let name = client.display(&key);
        let Some(parsed) = layout.parse(&key) else {
            problems.push(format!("{name}: not part of the archive layout"));
            continue;
        };
        let mut versions: Vec<VersionEntry> = entries
            .iter()
            .filter(|e| !e.delete_marker)
            .cloned()
            .collect();
        crate::s3::oldest_first(&mut versions);
        for m in entries.iter().filter(|e| e.delete_marker) {
            problems.push(format!(
                "{name}: deleted (delete marker {}{}); {}",
                m.version_id,
                if m.is_latest { ", current" } else { "" },
                if versions.is_empty() {
                    "no version of the batch is left"
                } else {
                    "the batch is still held as an earlier version and checked from it"
                }
            ));
        }
        if versions.len() > 1 {
            problems.push(format!(
                "{name}: {} versions: the batch was written more than once; the oldest is checked",
                versions.len()
            ));
        }
        let Some(v) = versions.first() else {
            continue;
        };
        let obj = match client.get_object(&key, Some(&v.version_id)).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                problems.push(format!("{name}: version {} cannot be read", v.version_id));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        if obj.lock_mode.as_deref() != Some("COMPLIANCE") {
            problems.push(format!(
                "{name}: not under COMPLIANCE Object Lock (mode {})",
                obj.lock_mode.as_deref().unwrap_or("none")
            ));
        }
        let day = match obj.metadata.get(META_DAY) {
            Some(d) if archive::parse_day(d).is_some() => d.clone(),
            _ => {
                problems.push(format!(
                    "{name}: no valid x-amz-meta-{META_DAY}; dated by its last modification"
                ));
                v.last_modified.chars().take(10).collect()
            }
        };
        let c = &parsed.chain;
        let path = archive::batch_path(mirror, &c.host, &c.stream, &day, &c.chain_id, parsed.seq);
        let dir = path.parent().expect("a batch path has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::write(&path, &obj.bytes))
            .map_err(|e| format!("cannot copy {name} to {}: {e}", path.display()))?;
        names.insert(path.display().to_string(), name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_paths_in_problems_become_s3_names() {
        let names = HashMap::from([(
            "/tmp/m/h/s/2026-01-01/c/1.lvb".to_string(),
            "s3://b/h/s/c/1.lvb".to_string(),
        )]);
        assert_eq!(
            rename_paths("/tmp/m/h/s/2026-01-01/c/1.lvb: bad", "/tmp/m", &names),
            "s3://b/h/s/c/1.lvb: bad"
        );
        assert_eq!(
            rename_paths(
                "h/s/c: seq 2 is missing before /tmp/m/h/s/2026-01-01/c/1.lvb",
                "/tmp/m",
                &names
            ),
            "h/s/c: seq 2 is missing before s3://b/h/s/c/1.lvb"
        );
        assert_eq!(rename_paths("nothing", "/tmp/m", &names), "nothing");
    }
}
