//! Where accepted batches go: the [`ArchiveBackend`] interface and its filesystem backend.
//!
//! The receiver talks to storage only through [`ArchiveBackend`], so another backend (S3 with
//! Object Lock, `super::s3_archive`) can replace [`FsArchive`] without touching the chain
//! rules. A backend promises:
//! - [`ArchiveBackend::put`] returns only once the batch is durable, never replaces a stored
//!   batch, and is idempotent: putting the bytes already stored at that seq succeeds without a
//!   second write; putting different bytes there fails with [`StoreError::AlreadyStored`].
//!   It returns where the batch is (for the filesystem: the day directory), which the
//!   custody ledger records.
//! - [`ArchiveBackend::recover`] returns the tip of every stored chain, after discarding
//!   whatever an interrupted write left behind.
//!
//! [`FsArchive`] uses the layout of `crate::archive` (host / stream / day / chain). One write:
//! 1. create missing directories (0700), fsyncing each new directory's parent; when the
//!    chain's directory for today is new, look for the seq in the chain's other days first
//!    (a retry across midnight must not store a seq twice);
//! 2. write the envelope to `.tmp-<seq>-<random>` in the chain directory (0400), fsync it;
//! 3. `hard_link` it to `<seq>.lvb` — which fails if that name exists, so nothing is ever
//!    overwritten — then unlink the temp name and fsync the chain directory.
//!
//! A crash at any step leaves either no `<seq>.lvb` or a complete one, plus at most a temp
//! file that [`ArchiveBackend::recover`] removes.

use super::chain::Tip;
use crate::archive::{self, ArchiveError, TEMP_PREFIX};
use crate::envelope::Envelope;
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FILE_MODE: u32 = 0o400;
const DIR_MODE: u32 = 0o700;

/// One chain: `(host, stream, chain_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainKey {
    pub host: String,
    pub stream: String,
    pub chain_id: [u8; 16],
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already holds a different batch")]
    AlreadyStored { path: PathBuf },
    #[error("archived batch {path} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("storage task failed: {0}")]
    Task(String),
    #[error(transparent)]
    S3(#[from] crate::s3::S3Error),
    #[error("{0}")]
    Unprotected(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Durable, append-only storage of envelopes by chain and seq.
pub trait ArchiveBackend: Send + Sync + 'static {
    /// Tips of every stored chain, after removing leftovers of interrupted writes.
    fn recover(&self) -> impl Future<Output = Result<HashMap<ChainKey, Tip>, StoreError>> + Send;

    /// Stores `bytes` as batch `seq` of `chain`; returns once durable, with its location.
    fn put(
        &self,
        chain: &ChainKey,
        seq: u64,
        bytes: Bytes,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// The bytes stored as batch `seq` of `chain` and their location, if any.
    fn get(
        &self,
        chain: &ChainKey,
        seq: u64,
    ) -> impl Future<Output = Result<Option<(String, Vec<u8>)>, StoreError>> + Send;

    /// For a backend shared by several store instances (which each keep their own view of
    /// the tips): the chain's stored tip when it is past `known` (the caller's tip seq), else
    /// `None`. A backend only this process writes has nothing newer to tell.
    fn newer_tip(
        &self,
        _chain: &ChainKey,
        _known: Option<u64>,
    ) -> impl Future<Output = Result<Option<Tip>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Whether this store instance wrote batch `seq` of `chain` (on a shared backend, start-up
    /// reconciliation records only its own unrecorded batches in its own ledger).
    fn written_here(
        &self,
        _chain: &ChainKey,
        _seq: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async { Ok(true) }
    }

    /// Moves batch `seq` of `chain` aside, out of the chain, so that seq can be stored again:
    /// for an unrecorded batch that start-up recovery found invalid (`super::ingest`). Returns
    /// where it went, or `None` when this backend cannot move a stored batch (S3 with Object
    /// Lock: an operator must deal with it).
    fn quarantine(
        &self,
        _chain: &ChainKey,
        _seq: u64,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        async { Ok(None) }
    }
}

/// The archive as files under one directory.
#[derive(Debug, Clone)]
pub struct FsArchive {
    root: PathBuf,
}

impl FsArchive {
    /// Opens the archive under `root`, creating it (0700) if needed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(root)
            .map_err(io_err("create", root))?;
        Ok(FsArchive {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, chain: &ChainKey, day: &str, seq: u64) -> PathBuf {
        archive::batch_path(
            &self.root,
            &chain.host,
            &chain.stream,
            day,
            &chain.chain_id,
            seq,
        )
    }

    /// Creates the chain's directory for `day` and any missing parents, making each new
    /// entry durable. Returns the directory and whether it was new.
    fn ensure_chain_dir(&self, chain: &ChainKey, day: &str) -> Result<(PathBuf, bool), StoreError> {
        let mut dir = self.root.clone();
        let mut created = false;
        for part in [
            chain.host.as_str(),
            chain.stream.as_str(),
            day,
            &hex::encode(chain.chain_id),
        ] {
            let parent = dir.clone();
            dir.push(part);
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
                Ok(()) => {
                    // The umask may have narrowed the mode; say it exactly.
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))
                        .map_err(io_err("set permissions of", &dir))?;
                    fsync_dir(&parent)?;
                    created = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create directory", &dir)(e)),
            }
        }
        Ok((dir, created))
    }

    /// The days (ascending) in which `chain` has a directory.
    fn chain_days(&self, chain: &ChainKey) -> Result<Vec<String>, StoreError> {
        let stream_dir = self.root.join(&chain.host).join(&chain.stream);
        let mut days = Vec::new();
        let entries = match std::fs::read_dir(&stream_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(days),
            Err(e) => return Err(io_err("read", &stream_dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read", &stream_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if archive::parse_day(&name).is_some() {
                days.push(name);
            }
        }
        days.sort();
        Ok(days)
    }

    fn put_blocking(&self, chain: &ChainKey, seq: u64, bytes: &[u8]) -> Result<String, StoreError> {
        let day = archive::today();
        let (dir, new_dir) = self.ensure_chain_dir(chain, &day)?;
        if new_dir {
            if let Some((other_day, stored)) = self.get_blocking(chain, seq)? {
                if other_day != day {
                    if stored != bytes {
                        return Err(StoreError::AlreadyStored {
                            path: self.path(chain, &other_day, seq),
                        });
                    }
                    return Ok(other_day);
                }
            }
        }
        let final_path = self.path(chain, &day, seq);
        let tmp = dir.join(format!("{TEMP_PREFIX}{seq}-{:016x}", rand::random::<u64>()));
        let written = write_temp(&tmp, bytes);
        let linked = written.and_then(|()| {
            std::fs::hard_link(&tmp, &final_path).map_err(io_err("link", &final_path))
        });
        // The temp name goes whatever happened; the final name, if linked, keeps the data.
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                let stored = std::fs::read(&final_path).map_err(io_err("read", &final_path))?;
                if stored != bytes {
                    return Err(StoreError::AlreadyStored { path: final_path });
                }
                // Same bytes: an earlier put got this far; make sure its entry is durable.
            }
            Err(e) => return Err(e),
        }
        fsync_dir(&dir)?;
        Ok(day)
    }

    fn get_blocking(
        &self,
        chain: &ChainKey,
        seq: u64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        for day in self.chain_days(chain)?.into_iter().rev() {
            let path = self.path(chain, &day, seq);
            match std::fs::read(&path) {
                Ok(bytes) => return Ok(Some((day, bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        }
        Ok(None)
    }

    fn quarantine_blocking(
        &self,
        chain: &ChainKey,
        seq: u64,
    ) -> Result<Option<String>, StoreError> {
        for day in self.chain_days(chain)?.into_iter().rev() {
            let path = self.path(chain, &day, seq);
            if !path.exists() {
                continue;
            }
            let dir = path.parent().expect("a batch path has a chain directory");
            let name = archive::batch_file_name(seq);
            let mut n = 0u32;
            let to = loop {
                let candidate = if n == 0 {
                    dir.join(format!("{name}{}", archive::QUARANTINE_SUFFIX))
                } else {
                    dir.join(format!("{name}{}.{n}", archive::QUARANTINE_SUFFIX))
                };
                if !candidate.exists() {
                    break candidate;
                }
                n += 1;
            };
            // A hard link never replaces an existing name; then the batch name goes.
            std::fs::hard_link(&path, &to).map_err(io_err("link", &to))?;
            std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
            fsync_dir(dir)?;
            return Ok(Some(to.display().to_string()));
        }
        Ok(None)
    }

    fn recover_blocking(&self) -> Result<HashMap<ChainKey, Tip>, StoreError> {
        let listing = archive::list(&self.root)?;
        for path in &listing.unexpected {
            tracing::warn!(path = %path.display(), "unexpected entry in the archive, ignored");
        }
        let mut tips = HashMap::new();
        for chain in &listing.chains {
            if !chain.temp_files.is_empty() {
                for tmp in &chain.temp_files {
                    std::fs::remove_file(tmp).map_err(io_err("remove", tmp))?;
                }
                for dir in &chain.dirs {
                    fsync_dir(dir)?;
                }
                tracing::info!(
                    chain = %chain.label(),
                    count = chain.temp_files.len(),
                    "removed temporary files of interrupted writes"
                );
            }
            let Some(archive::BatchFile { seq, path, .. }) = chain.batches.last() else {
                continue;
            };
            if chain.batches.windows(2).any(|w| w[0].seq == w[1].seq) {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    message: format!("chain {} holds a seq in two days", chain.label()),
                });
            }
            let bytes = std::fs::read(path).map_err(io_err("read", path))?;
            let corrupt = |message: String| StoreError::Corrupt {
                path: path.clone(),
                message,
            };
            let env = Envelope::decode(&bytes).map_err(|e| corrupt(e.to_string()))?;
            let h = &env.header;
            if h.seq != *seq
                || h.host_id != chain.host
                || h.stream != chain.stream
                || h.chain_id != chain.chain_id
            {
                return Err(corrupt(
                    "its header does not match its place in the archive".into(),
                ));
            }
            let key = ChainKey {
                host: chain.host.clone(),
                stream: chain.stream.clone(),
                chain_id: chain.chain_id,
            };
            tips.insert(
                key,
                Tip {
                    seq: *seq,
                    link: env.next_link(),
                },
            );
        }
        Ok(tips)
    }
}

fn write_temp(tmp: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    f.write_all(bytes).map_err(io_err("write", tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_err("set permissions of", tmp))?;
    f.sync_all().map_err(io_err("fsync", tmp))
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl ArchiveBackend for FsArchive {
    async fn recover(&self) -> Result<HashMap<ChainKey, Tip>, StoreError> {
        let this = self.clone();
        blocking(move || this.recover_blocking()).await
    }

    async fn put(&self, chain: &ChainKey, seq: u64, bytes: Bytes) -> Result<String, StoreError> {
        let (this, chain) = (self.clone(), chain.clone());
        blocking(move || this.put_blocking(&chain, seq, &bytes)).await
    }

    async fn get(
        &self,
        chain: &ChainKey,
        seq: u64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let (this, chain) = (self.clone(), chain.clone());
        blocking(move || this.get_blocking(&chain, seq)).await
    }

    async fn quarantine(&self, chain: &ChainKey, seq: u64) -> Result<Option<String>, StoreError> {
        let (this, chain) = (self.clone(), chain.clone());
        blocking(move || this.quarantine_blocking(&chain, seq)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::test_support::Chain;

    fn key_of(c: &Chain) -> ChainKey {
        ChainKey {
            host: c.host.clone(),
            stream: c.stream.clone(),
            chain_id: c.chain_id,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn put_follows_the_layout_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsArchive::open(dir.path()).unwrap();
        let mut c = Chain::new("web-1", "audit", [0xab; 16]);
        let bytes = c.next_data(&["a"]);
        store
            .put(&key_of(&c), 1, Bytes::from(bytes.clone()))
            .await
            .unwrap();

        let today = archive::today();
        let expected = dir.path().join(format!(
            "web-1/audit/{today}/abababababababababababababababab/00000000000000000001.lvb"
        ));
        assert_eq!(std::fs::read(&expected).unwrap(), bytes);
        assert_eq!(mode(&expected), 0o400);
        for d in [
            "web-1".to_string(),
            "web-1/audit".to_string(),
            format!("web-1/audit/{today}"),
            format!("web-1/audit/{today}/abababababababababababababababab"),
        ] {
            assert_eq!(mode(&dir.path().join(&d)), 0o700, "{d}");
        }
        let names: Vec<_> = std::fs::read_dir(expected.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        assert_eq!(
            store.get(&key_of(&c), 1).await.unwrap(),
            Some((today, bytes))
        );
        assert_eq!(store.get(&key_of(&c), 2).await.unwrap(), None);
    }

    #[tokio::test]
    async fn put_never_overwrites_but_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsArchive::open(dir.path()).unwrap();
        let mut c = Chain::new("web-1", "default", [1; 16]);
        let first = c.next_data(&["a"]);
        let key = key_of(&c);
        store
            .put(&key, 1, Bytes::from(first.clone()))
            .await
            .unwrap();
        store
            .put(&key, 1, Bytes::from(first.clone()))
            .await
            .unwrap();
        let other = Bytes::from(c.next_data(&["b"]));
        let err = store.put(&key, 1, other).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyStored { .. }), "{err}");
        assert_eq!(store.get(&key, 1).await.unwrap().unwrap().1, first);
    }

    #[tokio::test]
    async fn a_seq_stored_on_an_earlier_day_is_not_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsArchive::open(dir.path()).unwrap();
        let mut c = Chain::new("web-1", "default", [1; 16]);
        let bytes = c.next_data(&["a"]);
        let yesterday =
            archive::batch_path(dir.path(), "web-1", "default", "2020-01-01", &c.chain_id, 1);
        std::fs::create_dir_all(yesterday.parent().unwrap()).unwrap();
        std::fs::write(&yesterday, &bytes).unwrap();
        let day = store
            .put(&key_of(&c), 1, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(day, "2020-01-01");
        assert!(!c.dir(dir.path()).join(archive::batch_file_name(1)).exists());
        let other = Bytes::from(c.next_data(&["b"]));
        // Same seq 1 with different bytes (a fork) is refused.
        let mut fork = Chain::new("web-1", "default", [1; 16]);
        let forked = Bytes::from(fork.next_data(&["zzz"]));
        std::fs::remove_dir(c.dir(dir.path())).unwrap();
        let err = store.put(&key_of(&c), 1, forked).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyStored { .. }), "{err}");
        store.put(&key_of(&c), 2, other).await.unwrap();
    }

    #[tokio::test]
    async fn recover_finds_tips_and_removes_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsArchive::open(dir.path()).unwrap();
        let mut a = Chain::new("web-1", "default", [1; 16]);
        let mut b = Chain::new("web-2", "default", [2; 16]);
        for i in 1..=3 {
            let bytes = a.next_data(&["a"]);
            store.put(&key_of(&a), i, Bytes::from(bytes)).await.unwrap();
        }
        let tomb = b.next_tombstone();
        store.put(&key_of(&b), 1, Bytes::from(tomb)).await.unwrap();
        let leftover = a.dir(dir.path()).join(".tmp-4-0123456789abcdef");
        std::fs::write(&leftover, b"half a batch").unwrap();

        let tips = store.recover().await.unwrap();
        assert_eq!(tips.len(), 2);
        assert_eq!(
            tips[&key_of(&a)],
            Tip {
                seq: 3,
                link: a.link
            }
        );
        assert_eq!(
            tips[&key_of(&b)],
            Tip {
                seq: 1,
                link: b.link
            }
        );
        assert!(!leftover.exists());
    }

    #[tokio::test]
    async fn recover_refuses_a_misplaced_tip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsArchive::open(dir.path()).unwrap();
        let mut a = Chain::new("web-1", "default", [1; 16]);
        let bytes = a.next_data(&["a"]);
        // Batch 1 renamed to seq 2.
        std::fs::create_dir_all(a.dir(dir.path())).unwrap();
        // (the file is written into today's chain directory)
        std::fs::write(a.dir(dir.path()).join(archive::batch_file_name(2)), bytes).unwrap();
        let err = store.recover().await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
