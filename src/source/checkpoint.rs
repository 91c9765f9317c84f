//! File checkpoints: how far each file has been read *and sealed into the buffer*.
//!
//! A checkpoint is keyed by the file's identity (device + inode) and guarded by a hash of
//! the file's first bytes, so a reused inode is not mistaken for the file that was read.
//! Checkpoints are written only in the sled transaction that seals the batch holding the
//! lines before `offset` (see `buffer`), never on their own: that is what makes a restart
//! resume exactly where the last durable batch ended.
//!
//! Encoding (value, big-endian): `offset u64 | head_len u32 | head_hash [32] | updated_unix
//! u64 | path bytes`. Key: `dev u64 | ino u64`.

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
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let path = self.path.as_os_str().as_bytes();
        let mut v = Vec::with_capacity(52 + path.len());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.head_len.to_be_bytes());
        v.extend_from_slice(&self.head_hash);
        v.extend_from_slice(&self.updated_unix.to_be_bytes());
        v.extend_from_slice(path);
        v
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Option<Self> {
        let id = FileId::from_key(key)?;
        if v.len() < 52 {
            return None;
        }
        Some(Checkpoint {
            id,
            offset: u64::from_be_bytes(v[0..8].try_into().ok()?),
            head_len: u32::from_be_bytes(v[8..12].try_into().ok()?),
            head_hash: v[12..44].try_into().ok()?,
            updated_unix: u64::from_be_bytes(v[44..52].try_into().ok()?),
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&v[52..])),
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
        };
        assert_eq!(Checkpoint::decode(&c.id.key(), &c.encode()), Some(c));
    }
}
