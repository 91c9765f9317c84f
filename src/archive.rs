//! The archive on disk: its layout, and reading it back (`logveil archive cat`).
//!
//! The central store (`crate::receive`) writes the archive; this module owns its layout and
//! is the one place that walks it, for `cat`, for `crate::verify` and for the receiver's
//! startup scan. It never writes.
//!
//! ```text
//! <archive_dir>/<host_id>/<stream>/<day YYYY-MM-DD>/<chain_id hex>/<seq, 20 digits>.lvb
//! <archive_dir>/.custody/                       the custody ledger (crate::custody)
//! ```
//! - `host_id` and `stream` are safe identifiers (`crate::envelope::is_safe_identifier`);
//!   `chain_id hex` is 32 lowercase hex digits; `day` is the UTC day, by the store's clock,
//!   on which the store wrote the batch. Retention (per stream) removes whole day
//!   directories; a chain continues across days.
//! - Each `.lvb` file holds the exact bytes of one envelope, as received; its name is the seq
//!   of the envelope it holds, so names sort in chain order. Files are mode 0400, directories
//!   0700 (only the store's user reads them), and a stored file is never rewritten. A seq is stored in exactly one day.
//! - Names starting with [`TEMP_PREFIX`] inside a chain directory are writes in progress (or
//!   interrupted by a crash). They are not part of the archive; the receiver removes them at
//!   startup.
//! - `<seq>.lvb` + [`QUARANTINE_SUFFIX`] (and maybe `.<n>`) inside a chain directory is a
//!   batch the receiver moved aside at startup: it was in the archive but not in the
//!   custody ledger and failed the checks ingest applies (alert `archive_unrecorded_invalid`,
//!   docs/CUSTODY.md). It is not part of its chain; [`list`] reports it as unexpected, so
//!   `logveil verify` names it until an operator removes it.
//! - Anything else is unexpected: [`list`] reports it rather than skipping it silently.
//!
//! Order: hosts, streams and chains by name (bytewise), batches by seq (then day). Every
//! walk of the same archive yields the same sequence.

use crate::envelope::{is_safe_identifier, DecodeError, Envelope, Kind, PayloadError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File extension of an archived envelope.
pub const BATCH_EXT: &str = "lvb";
/// Prefix of temporary files inside a chain directory (never a valid identifier or seq name).
pub const TEMP_PREFIX: &str = ".tmp-";
/// Suffix of a batch file the receiver moved aside at startup (see the module doc).
pub const QUARANTINE_SUFFIX: &str = ".quarantined";
/// The custody directory at the archive root (the ledger, `crate::custody`); never a host id.
pub const CUSTODY_DIR: &str = ".custody";
const SEQ_DIGITS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: envelope does not decode: {source}")]
    Decode { path: PathBuf, source: DecodeError },
    #[error("{path}: {source}")]
    Payload { path: PathBuf, source: PayloadError },
    #[error("cannot write the records of {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<seq>.lvb` with the seq zero-padded to 20 digits, so names sort like seqs.
pub fn batch_file_name(seq: u64) -> String {
    format!("{seq:0width$}.{BATCH_EXT}", width = SEQ_DIGITS)
}

/// The seq a batch file name stands for; `None` for any other name.
pub fn parse_batch_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(BATCH_EXT)?.strip_suffix('.')?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The directory of one chain's batches written on `day` (`YYYY-MM-DD`, UTC).
pub fn chain_dir(root: &Path, host: &str, stream: &str, day: &str, chain_id: &[u8; 16]) -> PathBuf {
    root.join(host)
        .join(stream)
        .join(day)
        .join(hex::encode(chain_id))
}

/// The file holding the batch `seq` of a chain, written on `day`.
pub fn batch_path(
    root: &Path,
    host: &str,
    stream: &str,
    day: &str,
    chain_id: &[u8; 16],
    seq: u64,
) -> PathBuf {
    chain_dir(root, host, stream, day, chain_id).join(batch_file_name(seq))
}

/// The UTC day (`YYYY-MM-DD`) of a Unix time in seconds.
pub fn day_of(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix seconds at the start of a UTC day `YYYY-MM-DD`; `None` for any other name.
pub fn parse_day(name: &str) -> Option<i64> {
    let b = name.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &name[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (the inverse of `day_of`).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let secs = (era * 146_097 + doe - 719_468) * 86_400;
    // Reject names like 2024-02-31 that do not round-trip.
    (day_of(secs) == name).then_some(secs)
}

/// Today's UTC day by the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    day_of(secs)
}

fn parse_chain_dir_name(name: &str) -> Option<[u8; 16]> {
    if name.len() != 32 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(name).ok()?.try_into().ok()
}

/// One archived batch file, by name only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BatchFile {
    /// The seq the file name says.
    pub seq: u64,
    /// The day directory it sits in.
    pub day: String,
    pub path: PathBuf,
}

/// One chain (across all its day directories) and what it holds, without reading any file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainListing {
    pub host: String,
    pub stream: String,
    pub chain_id: [u8; 16],
    /// The chain's directories, one per day it received batches, ascending by day.
    pub dirs: Vec<PathBuf>,
    /// Ascending by (seq, day): a seq present in two days appears twice.
    pub batches: Vec<BatchFile>,
    /// Temporary files of interrupted or in-progress writes.
    pub temp_files: Vec<PathBuf>,
}

impl ChainListing {
    /// `host/stream/chain` for messages.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}",
            self.host,
            self.stream,
            hex::encode(self.chain_id)
        )
    }
}

/// The whole archive, without reading any file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Ascending by (host, stream, chain id).
    pub chains: Vec<ChainListing>,
    /// Entries that are not part of the layout (stray files, bad names, symlinks).
    pub unexpected: Vec<PathBuf>,
}

impl Listing {
    /// Every batch in archive order, reading each file only when the iterator reaches it.
    pub fn batches(&self) -> Batches<'_> {
        Batches {
            listing: self,
            chain: 0,
            batch: 0,
        }
    }
}

/// Lists the archive under `root`. Errors only when a directory cannot be read. The custody
/// directory ([`CUSTODY_DIR`]) at the root is not part of the batch layout and is skipped.
pub fn list(root: &Path) -> Result<Listing, ArchiveError> {
    let mut listing = Listing::default();
    let mut unexpected = Vec::new();
    for (host, host_dir) in subdirs(root, &mut unexpected, |n| {
        is_safe_identifier(n).then_some(())
    })? {
        let host = host.0;
        for (stream, stream_dir) in subdirs(&host_dir, &mut unexpected, |n| {
            is_safe_identifier(n).then_some(())
        })? {
            let stream = stream.0;
            let mut chains: std::collections::BTreeMap<[u8; 16], ChainListing> = Default::default();
            for ((day, _), day_dir) in subdirs(&stream_dir, &mut unexpected, parse_day)? {
                for ((_, chain_id), dir) in
                    subdirs(&day_dir, &mut unexpected, parse_chain_dir_name)?
                {
                    let chain = chains.entry(chain_id).or_insert_with(|| ChainListing {
                        host: host.clone(),
                        stream: stream.clone(),
                        chain_id,
                        dirs: Vec::new(),
                        batches: Vec::new(),
                        temp_files: Vec::new(),
                    });
                    chain.dirs.push(dir.clone());
                    for (name, path, is_file) in entries(&dir)? {
                        match parse_batch_file_name(&name) {
                            Some(seq) if is_file => chain.batches.push(BatchFile {
                                seq,
                                day: day.clone(),
                                path,
                            }),
                            _ if is_file && name.starts_with(TEMP_PREFIX) => {
                                chain.temp_files.push(path)
                            }
                            _ => unexpected.push(path),
                        }
                    }
                }
            }
            for (_, mut chain) in chains {
                chain.batches.sort();
                listing.chains.push(chain);
            }
        }
    }
    let custody = root.join(CUSTODY_DIR);
    listing.unexpected = unexpected.into_iter().filter(|p| *p != custody).collect();
    Ok(listing)
}

/// `(name, path, is a regular file)` of every entry of `dir`, sorted by name. Symlinks count
/// as neither file nor directory.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, ArchiveError> {
    let read_err = |source| ArchiveError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let file_type = entry.file_type().map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, entry.path(), file_type.is_file()));
    }
    out.sort();
    Ok(out)
}

/// Subdirectories of `dir` whose names `parse` accepts, sorted by name; everything else is
/// pushed to `unexpected`.
#[allow(clippy::type_complexity)]
fn subdirs<T>(
    dir: &Path,
    unexpected: &mut Vec<PathBuf>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<((String, T), PathBuf)>, ArchiveError> {
    let mut out = Vec::new();
    for (name, path, _) in entries(dir)? {
        let is_dir = std::fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        match parse(&name) {
            Some(parsed) if is_dir => out.push(((name, parsed), path)),
            _ => unexpected.push(path),
        }
    }
    Ok(out)
}

/// One archived envelope file.
#[derive(Debug, Clone)]
pub struct StoredBatch<'a> {
    pub chain: &'a ChainListing,
    /// The seq the file name says.
    pub seq: u64,
    pub path: &'a Path,
    pub bytes: Vec<u8>,
}

/// Iterator over every batch of a [`Listing`], in archive order.
pub struct Batches<'a> {
    listing: &'a Listing,
    chain: usize,
    batch: usize,
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<StoredBatch<'a>, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let chain = self.listing.chains.get(self.chain)?;
            let Some(BatchFile { seq, path, .. }) = chain.batches.get(self.batch) else {
                self.chain += 1;
                self.batch = 0;
                continue;
            };
            self.batch += 1;
            return Some(
                std::fs::read(path)
                    .map(|bytes| StoredBatch {
                        chain,
                        seq: *seq,
                        path,
                        bytes,
                    })
                    .map_err(|source| ArchiveError::Read {
                        path: path.clone(),
                        source,
                    }),
            );
        }
    }
}

/// Writes every archived record (the decompressed payload lines) to `out`, one per line, in
/// archive order; tombstones have none. Returns the number of records written. Checks no
/// signature: that is `logveil verify`.
pub fn cat(dir: &Path, out: &mut dyn Write) -> anyhow::Result<u64> {
    let listing = list(dir)?;
    let mut records = 0u64;
    for batch in listing.batches() {
        let batch = batch?;
        records += cat_batch(&batch, out)?;
    }
    out.flush().map_err(|source| ArchiveError::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(records)
}

fn cat_batch(batch: &StoredBatch<'_>, out: &mut dyn Write) -> Result<u64, ArchiveError> {
    let path = batch.path.to_path_buf();
    let env = Envelope::decode(&batch.bytes).map_err(|source| ArchiveError::Decode {
        path: path.clone(),
        source,
    })?;
    if env.header.kind == Kind::Tombstone {
        return Ok(0);
    }
    // The header's own claim bounds the output, so a tampered payload cannot balloon.
    let payload = env
        .decompress(env.header.decompressed_len)
        .map_err(|source| ArchiveError::Payload {
            path: path.clone(),
            source,
        })?;
    let mut records = 0;
    for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        out.write_all(line)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|source| ArchiveError::Output {
                path: path.clone(),
                source,
            })?;
        records += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::test_support::{write_archive_file, Chain};

    #[test]
    fn batch_file_names_sort_like_seqs_and_parse_back() {
        assert_eq!(batch_file_name(7), "00000000000000000007.lvb");
        assert_eq!(parse_batch_file_name(&batch_file_name(7)), Some(7));
        assert_eq!(
            parse_batch_file_name(&batch_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(batch_file_name(9) < batch_file_name(10));
        for bad in [
            "7.lvb",
            "0000000000000000000a.lvb",
            "00000000000000000007.lvbx",
            ".tmp-1",
        ] {
            assert_eq!(parse_batch_file_name(bad), None, "{bad}");
        }
        assert_eq!(parse_batch_file_name("99999999999999999999.lvb"), None);
    }

    #[test]
    fn listing_is_ordered_and_reports_stray_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut b = Chain::new("web-2", "default", [2; 16]);
        let mut a = Chain::new("web-1", "default", [1; 16]);
        for chain in [&mut b, &mut a] {
            for _ in 0..11 {
                let env = chain.next_data(&["x"]);
                write_archive_file(root, &env);
            }
        }
        std::fs::write(root.join("README"), b"stray").unwrap();
        std::fs::write(a.dir(root).join("notes.txt"), b"stray").unwrap();
        std::fs::write(a.dir(root).join(".tmp-3-abc"), b"partial").unwrap();
        std::fs::create_dir(root.join("web-1").join("default").join("not-hex")).unwrap();

        let listing = list(root).unwrap();
        let hosts: Vec<_> = listing.chains.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(hosts, ["web-1", "web-2"]);
        let seqs: Vec<u64> = listing.chains[0].batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
        assert_eq!(listing.chains[0].temp_files.len(), 1);
        let mut stray: Vec<_> = listing
            .unexpected
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        stray.sort();
        assert_eq!(stray, ["README", "not-hex", "notes.txt"]);
        let order: Vec<_> = listing
            .batches()
            .map(|b| {
                let b = b.unwrap();
                (b.chain.host.clone(), b.seq)
            })
            .collect();
        assert_eq!(order.len(), 22);
        assert!(order.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn cat_prints_records_in_order_and_skips_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new("web-1", "default", [1; 16]);
        write_archive_file(dir.path(), &chain.next_data(&["a", "b"]));
        write_archive_file(dir.path(), &chain.next_tombstone());
        write_archive_file(dir.path(), &chain.next_data(&["c"]));
        let mut out = Vec::new();
        assert_eq!(cat(dir.path(), &mut out).unwrap(), 3);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let msgs: Vec<_> = lines.iter().map(|v| v["msg"].as_str().unwrap()).collect();
        assert_eq!(msgs, ["a", "b", "c"]);
    }

    #[test]
    fn cat_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::new("web-1", "default", [1; 16]);
        let path = write_archive_file(dir.path(), &chain.next_data(&["a"]));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
        let err = cat(dir.path(), &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
