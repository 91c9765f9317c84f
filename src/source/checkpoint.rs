//! File checkpoints: how far each file has been read *and sealed into the buffer*.
//!
//! A checkpoint is keyed by the file's identity (device + inode) and guarded by a hash of
//! the file's first bytes, so a reused inode is not mistaken for the file that was read.
//! Checkpoints are written only in the sled transaction that seals the batch holding the
//! lines before `offset` (see `buffer`), never on their own: that is what makes a restart
//! resume exactly where the last durable batch ended.
//!
//! Encoding (value, big-endian): `offset u64 | head_len u32 | head_hash [32] | updated_unix
//! u64 | path bytes`. Key: `dev u64 | ino u64`. When some stream's `shipped_to` mark is
//! past `offset`, the top bit of `head_len` is set and `shipped_to` (3 × u64) follows
//! `updated_unix`, before the path; values without the bit (written before the marks
//! existed) decode with no marks.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Bytes at the start of a file that identify its content generation.
pub const HEAD_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub fn key(&self) -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&self.dev.to_be_bytes());
        k[8..].copy_from_slice(&self.ino.to_be_bytes());
        k
    }

    pub fn from_key(k: &[u8]) -> Option<Self> {
        if k.len() != 16 {
            return None;
        }
        Some(FileId {
            dev: u64::from_be_bytes(k[..8].try_into().ok()?),
            ino: u64::from_be_bytes(k[8..].try_into().ok()?),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: FileId,
    /// The path the file was last read under (informational; identity is `id`).
    pub path: PathBuf,
    /// Byte offset just past the last line sealed into the buffer.
    pub offset: u64,
    /// How many leading bytes `head_hash` covers (up to [`HEAD_BYTES`]).
    pub head_len: u32,
    pub head_hash: [u8; 32],
    pub updated_unix: u64,
    /// Per stream (stdout, stderr, lines without one), a mark: the lines of that stream
    /// starting at or after `offset` and before the mark were already sealed (a fragment
    /// of another stream held `offset` back). A mark not past `offset` means nothing.
    pub shipped_to: [u64; 3],
}

/// Top bit of the encoded `head_len` (which is at most [`HEAD_BYTES`]): marks follow.
const MARKS_FLAG: u32 = 1 << 31;

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_bytes();
        let marks = self.shipped_to.iter().any(|&m| m > self.offset);
        let mut v = Vec::with_capacity(76 + path.len());
        v.extend_from_slice(&self.offset.to_be_bytes());
        let head_len = if marks {
            self.head_len | MARKS_FLAG
        } else {
            self.head_len
        };
        v.extend_from_slice(&head_len.to_be_bytes());
        v.extend_from_slice(&self.head_hash);
        v.extend_from_slice(&self.updated_unix.to_be_bytes());
        if marks {
            for m in self.shipped_to {
                v.extend_from_slice(&m.to_be_bytes());
            }
        }
        v.extend_from_slice(path);
        v
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Option<Self> {
        let id = FileId::from_key(key)?;
        if v.len() < 52 {
            return None;
        }
        let head_len = u32::from_be_bytes(v[8..12].try_into().ok()?);
        let mut shipped_to = [0u64; 3];
        let mut path_at = 52;
        if head_len & MARKS_FLAG != 0 {
            for (k, m) in shipped_to.iter_mut().enumerate() {
                let at = 52 + 8 * k;
                *m = u64::from_be_bytes(v.get(at..at + 8)?.try_into().ok()?);
            }
            path_at = 76;
        }
        Some(Checkpoint {
            id,
            offset: u64::from_be_bytes(v[0..8].try_into().ok()?),
            head_len: head_len & !MARKS_FLAG,
            head_hash: v[12..44].try_into().ok()?,
            updated_unix: u64::from_be_bytes(v[44..52].try_into().ok()?),
            shipped_to,
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&v[path_at..])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips() {
        let c = Checkpoint {
            id: FileId { dev: 7, ino: 99 },
            path: PathBuf::from("/var/log/app.log"),
            offset: 12345,
            head_len: 1024,
            head_hash: [5; 32],
            updated_unix: 1_700_000_000,
            shipped_to: [0; 3],
        };
        assert_eq!(
            Checkpoint::decode(&c.id.key(), &c.encode()),
            Some(c.clone())
        );
        let marked = Checkpoint {
            shipped_to: [0, 20_000, 0],
            ..c.clone()
        };
        let v = marked.encode();
        assert_eq!(v.len(), c.encode().len() + 24);
        assert_eq!(Checkpoint::decode(&c.id.key(), &v), Some(marked));
        // Marks not past the offset are not stored.
        let stale = Checkpoint {
            shipped_to: [100, 12345, 0],
            ..c.clone()
        };
        assert_eq!(stale.encode(), c.encode());
    }
}
