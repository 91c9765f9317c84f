//! The durable buffer: sealed envelopes and file checkpoints in one sled database.
//!
//! Layout (one sled db in `data_dir/buffer`):
//! - `batches`: `stream | 0x00 | seq u64be` → envelope bytes. Iterating the tree in key order
//!   yields each stream's batches oldest first.
//! - `checkpoints`: `dev u64be | ino u64be` → [`Checkpoint`] encoding.
//! - `meta`: `chain_id` → 16 random bytes (made when the buffer is first created);
//!   `next_seq/<stream>` → u64be; `link/<stream>` → the link hash the next batch continues.
//! - `dead_letter`: same key as `batches` → `reason_len u16be | reason | envelope`.
//!
//! Invariants:
//! - [`Buffer::seal_streams`] inserts the envelopes (one per stream: the `default` batch and
//!   the `legal` batch made from the same lines), advances each stream's chain state and
//!   writes the file checkpoints of every line in them in ONE sled transaction, then
//!   flushes; only then do the batches count as durable. The transaction closure has no side effects (sled may run
//!   it more than once); counters are updated after it commits.
//! - A batch is removed only by [`Buffer::ack`] (the store fsynced it) or replaced by its
//!   tombstone in [`Buffer::dead_letter`].
//! - `max_bytes` counts the bytes of stored envelopes (not sled's file size, which never
//!   shrinks). [`Buffer::wait_for_space`] blocks the sealing thread while the buffer is full:
//!   that is what pauses reading (`when_full = "block"`); nothing is ever dropped.

use crate::source::{Checkpoint, FileId};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("buffer database is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, BufferError>;

/// The chain position the next sealed batch of a stream takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    pub next_seq: u64,
    pub link: [u8; 32],
}

/// One stored batch.
#[derive(Debug, Clone)]
pub struct Stored {
    pub stream: String,
    pub seq: u64,
    pub envelope: sled::IVec,
}

/// One envelope to store with [`Buffer::seal_streams`].
#[derive(Debug, Clone, Copy)]
pub struct Sealing<'a> {
    pub stream: &'a str,
    pub seq: u64,
    /// The link hash the stream's next batch continues (this envelope's).
    pub next_link: [u8; 32],
    pub envelope: &'a [u8],
}

/// A batch the central store refused for good, kept for inspection and replay.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stream: String,
    pub seq: u64,
    pub reason: String,
    pub envelope: Vec<u8>,
}

pub struct Buffer {
    db: sled::Db,
    batches: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
    dead: sled::Tree,
    chain_id: [u8; 16],
    max_bytes: u64,
    usage: Mutex<Usage>,
    space: Condvar,
    /// Wakes the shipper when a batch is sealed.
    pub sealed: tokio::sync::Notify,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub bytes: u64,
    pub batches: u64,
}

pub fn batch_key(stream: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 9);
    k.extend_from_slice(stream.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> Result<(String, u64)> {
    let bad = || BufferError::Corrupt("malformed batch key".into());
    if k.len() < 10 || k[k.len() - 9] != 0 {
        return Err(bad());
    }
    let stream = std::str::from_utf8(&k[..k.len() - 9]).map_err(|_| bad())?;
    let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().map_err(|_| bad())?);
    Ok((stream.to_string(), seq))
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

fn tx_err(e: TransactionError<BufferError>) -> BufferError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => BufferError::Sled(e),
    }
}

impl Buffer {
    pub fn open(dir: &Path, cache_capacity: u64, max_bytes: u64) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .mode(sled::Mode::LowSpace)
            .open()?;
        let batches = db.open_tree("batches")?;
        let checkpoints = db.open_tree("checkpoints")?;
        let meta = db.open_tree("meta")?;
        let dead = db.open_tree("dead_letter")?;
        let chain_id = match meta.get("chain_id")? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map_err(|_| BufferError::Corrupt("chain_id is not 16 bytes".into()))?,
            None => {
                let id: [u8; 16] = rand::random();
                meta.insert("chain_id", &id[..])?;
                db.flush()?;
                id
            }
        };
        let mut usage = Usage::default();
        for item in batches.iter() {
            let (_, v) = item?;
            usage.bytes += v.len() as u64;
            usage.batches += 1;
        }
        Ok(Buffer {
            db,
            batches,
            checkpoints,
            meta,
            dead,
            chain_id,
            max_bytes,
            usage: Mutex::new(usage),
            space: Condvar::new(),
            sealed: tokio::sync::Notify::new(),
        })
    }

    pub fn chain_id(&self) -> [u8; 16] {
        self.chain_id
    }

    pub fn usage(&self) -> Usage {
        *self.usage.lock().expect("usage lock")
    }

    pub fn chain_state(&self, stream: &str) -> Result<ChainState> {
        let seq = self.meta.get(format!("next_seq/{stream}"))?;
        let link = self.meta.get(format!("link/{stream}"))?;
        Ok(match (seq, link) {
            (Some(s), Some(l)) => ChainState {
                next_seq: u64::from_be_bytes(
                    s.as_ref()
                        .try_into()
                        .map_err(|_| BufferError::Corrupt("next_seq".into()))?,
                ),
                link: l
                    .as_ref()
                    .try_into()
                    .map_err(|_| BufferError::Corrupt("link".into()))?,
            },
            _ => ChainState {
                next_seq: 1,
                link: crate::envelope::GENESIS_PREV_HASH,
            },
        })
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let mut out = Vec::new();
        for item in self.checkpoints.iter() {
            let (k, v) = item?;
            match Checkpoint::decode(&k, &v) {
                Some(c) => out.push(c),
                None => tracing::warn!("skipping a malformed checkpoint entry in the buffer"),
            }
        }
        Ok(out)
    }

    /// Whether `size` more bytes fit now.
    pub fn has_space(&self, size: u64) -> bool {
        let usage = self.usage.lock().expect("usage lock");
        usage.batches == 0 || usage.bytes + size <= self.max_bytes
    }

    /// Blocks while adding `size` bytes would exceed `max_bytes` (and the buffer is not
    /// empty, so one batch always fits). Returns false if `give_up` became true first.
    pub fn wait_for_space(&self, size: u64, give_up: &dyn Fn() -> bool) -> bool {
        let mut usage = self.usage.lock().expect("usage lock");
        while usage.batches > 0 && usage.bytes + size > self.max_bytes {
            if give_up() {
                return false;
            }
            usage = self
                .space
                .wait_timeout(usage, Duration::from_millis(100))
                .expect("usage lock")
                .0;
        }
        true
    }

    /// Stores a sealed envelope, advances the chain and the checkpoints, all in one
    /// transaction, and flushes. On return the batch is durable.
    pub fn seal(
        &self,
        stream: &str,
        seq: u64,
        next_link: [u8; 32],
        envelope: &[u8],
        checkpoints: &[Checkpoint],
    ) -> Result<()> {
        self.seal_streams(
            &[Sealing {
                stream,
                seq,
                next_link,
                envelope,
            }],
            checkpoints,
        )
    }

    /// Stores sealed envelopes of several streams (at most one per stream), advances each
    /// stream's chain, and writes the checkpoints, all in ONE transaction, then flushes:
    /// the lines of one input that went to several streams become durable together or not
    /// at all.
    pub fn seal_streams(&self, sealings: &[Sealing<'_>], checkpoints: &[Checkpoint]) -> Result<()> {
        struct Prepared {
            key: Vec<u8>,
            seq_key: String,
            link_key: String,
            seq: u64,
            stream: String,
            next_link: [u8; 32],
            envelope: sled::IVec,
        }
        let prepared: Vec<Prepared> = sealings
            .iter()
            .map(|s| Prepared {
                key: batch_key(s.stream, s.seq),
                seq_key: format!("next_seq/{}", s.stream),
                link_key: format!("link/{}", s.stream),
                seq: s.seq,
                stream: s.stream.to_string(),
                next_link: s.next_link,
                envelope: sled::IVec::from(s.envelope),
            })
            .collect();
        for (i, p) in prepared.iter().enumerate() {
            if prepared[..i].iter().any(|q| q.stream == p.stream) {
                return Err(BufferError::Corrupt(format!(
                    "sealing two batches of stream {} in one transaction",
                    p.stream
                )));
            }
        }
        let encoded: Vec<([u8; 16], Vec<u8>)> = checkpoints
            .iter()
            .map(|c| (c.id.key(), c.encode()))
            .collect();
        (&self.batches, &self.meta, &self.checkpoints)
            .transaction(|(b, m, c)| {
                for p in &prepared {
                    let seq = p.seq;
                    let expected = m
                        .get(p.seq_key.as_bytes())?
                        .map(|v| v.as_ref() == seq.to_be_bytes())
                        .unwrap_or(seq == 1);
                    if !expected {
                        return Err(abort(BufferError::Corrupt(format!(
                            "sealing seq {seq} of stream {} out of order",
                            p.stream
                        ))));
                    }
                    b.insert(p.key.as_slice(), p.envelope.clone())?;
                    m.insert(p.seq_key.as_bytes(), &(seq + 1).to_be_bytes()[..])?;
                    m.insert(p.link_key.as_bytes(), &p.next_link[..])?;
                }
                for (k, v) in &encoded {
                    c.insert(&k[..], v.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        crate::crash::point("after_seal_before_flush");
        self.db.flush()?;
        crate::crash::point("after_seal_flush");
        {
            let mut u = self.usage.lock().expect("usage lock");
            for p in &prepared {
                u.bytes += p.envelope.len() as u64;
                u.batches += 1;
            }
        }
        self.sealed.notify_one();
        Ok(())
    }

    /// Persists checkpoints that moved without any line to seal (a truncation reset).
    pub fn save_checkpoints(&self, checkpoints: &[Checkpoint]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for c in checkpoints {
            batch.insert(&c.id.key()[..], c.encode());
        }
        self.checkpoints.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Deletes the checkpoints of files gone for longer than their source's
    /// `checkpoint_expiry`. Only ever called for files the source no longer reads.
    pub fn forget_checkpoints(&self, ids: &[FileId]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.key()[..]);
        }
        self.checkpoints.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The oldest stored batch of any stream.
    pub fn oldest(&self) -> Result<Option<Stored>> {
        self.next_batch(None)
    }

    /// The batch to ship next: the oldest batch of the first stream after `after` (by
    /// name, wrapping around), so one stream's backlog never starves another; the oldest
    /// batch of the first stream when `after` is `None`.
    pub fn next_batch(&self, after: Option<&str>) -> Result<Option<Stored>> {
        // Stream names never hold bytes below '-', so `stream 0x01` sorts after every key
        // of `stream` and before every key of any later stream.
        let after_stream = after.and_then(|stream| {
            let mut from = stream.as_bytes().to_vec();
            from.push(1);
            self.batches.range(from..).next()
        });
        match after_stream.or_else(|| self.batches.iter().next()) {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let (stream, seq) = split_key(&k)?;
                Ok(Some(Stored {
                    stream,
                    seq,
                    envelope: v,
                }))
            }
        }
    }

    /// The stored batch `seq` of `stream`, if still held.
    pub fn get(&self, stream: &str, seq: u64) -> Result<Option<sled::IVec>> {
        Ok(self.batches.get(batch_key(stream, seq))?)
    }

    /// The central store has the batch: delete it and wake a paused sealer.
    pub fn ack(&self, stream: &str, seq: u64) -> Result<()> {
        if let Some(old) = self.batches.remove(batch_key(stream, seq))? {
            let mut u = self.usage.lock().expect("usage lock");
            u.bytes = u.bytes.saturating_sub(old.len() as u64);
            u.batches = u.batches.saturating_sub(1);
        }
        self.space.notify_all();
        Ok(())
    }

    /// Moves a refused batch to the dead-letter tree and puts its tombstone in its place,
    /// in one transaction, then flushes.
    pub fn dead_letter(
        &self,
        stream: &str,
        seq: u64,
        reason: &str,
        tombstone: &[u8],
    ) -> Result<()> {
        let key = batch_key(stream, seq);
        let reason_bytes = reason.as_bytes();
        (&self.batches, &self.dead)
            .transaction(|(b, d)| {
                let Some(env) = b.get(&key)? else {
                    return Err(abort(BufferError::Corrupt(format!(
                        "dead-lettering seq {seq} of stream {stream}, which is not in the buffer"
                    ))));
                };
                let mut v = Vec::with_capacity(2 + reason_bytes.len() + env.len());
                v.extend_from_slice(&(reason_bytes.len() as u16).to_be_bytes());
                v.extend_from_slice(reason_bytes);
                v.extend_from_slice(&env);
                d.insert(key.as_slice(), v)?;
                b.insert(key.as_slice(), tombstone)?;
                Ok(())
            })
            .map_err(tx_err)?;
        self.db.flush()?;
        self.recount()?;
        Ok(())
    }

    fn recount(&self) -> Result<()> {
        let mut usage = Usage::default();
        for item in self.batches.iter() {
            let (_, v) = item?;
            usage.bytes += v.len() as u64;
            usage.batches += 1;
        }
        *self.usage.lock().expect("usage lock") = usage;
        self.space.notify_all();
        Ok(())
    }

    /// Dead-lettered batches, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        for item in self.dead.iter() {
            let (k, v) = item?;
            let (stream, seq) = split_key(&k)?;
            if v.len() < 2 {
                return Err(BufferError::Corrupt("dead letter entry".into()));
            }
            let n = u16::from_be_bytes([v[0], v[1]]) as usize;
            let reason = String::from_utf8_lossy(v.get(2..2 + n).unwrap_or_default()).into_owned();
            out.push(DeadLetter {
                stream,
                seq,
                reason,
                envelope: v.get(2 + n..).unwrap_or_default().to_vec(),
            });
        }
        Ok(out)
    }

    pub fn remove_dead_letter(&self, stream: &str, seq: u64) -> Result<bool> {
        let removed = self.dead.remove(batch_key(stream, seq))?.is_some();
        self.db.flush()?;
        Ok(removed)
    }

    /// Age of the oldest stored batch of any stream, from its header's first timestamp.
    pub fn oldest_age(&self) -> Option<Duration> {
        // The first batch of each stream, visiting the streams in turn until back at the
        // start (bounded: the shipper may delete batches meanwhile).
        let mut first: Option<i64> = None;
        let mut at = self.next_batch(None).ok()??;
        let start = at.stream.clone();
        for _ in 0..64 {
            let env = crate::envelope::Envelope::decode(&at.envelope).ok()?;
            let ts = env.header.first_ts_ns;
            first = Some(first.map_or(ts, |f| f.min(ts)));
            at = self.next_batch(Some(&at.stream)).ok()??;
            if at.stream == start {
                break;
            }
        }
        let first = first?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as i64;
        Some(Duration::from_nanos(
            now_ns.saturating_sub(first).max(0) as u64
        ))
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileId;

    fn cp(ino: u64, offset: u64) -> Checkpoint {
        Checkpoint {
            id: FileId { dev: 1, ino },
            path: "/x".into(),
            offset,
            head_len: 0,
            head_hash: [0; 32],
            updated_unix: 0,
            shipped_to: [0; 3],
        }
    }

    #[test]
    fn seal_persists_batch_chain_and_checkpoints_together() {
        let dir = tempfile::tempdir().unwrap();
        let chain_id;
        {
            let b = Buffer::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            chain_id = b.chain_id();
            b.seal("default", 1, [1; 32], b"env-1", &[cp(5, 100)])
                .unwrap();
            b.seal("default", 2, [2; 32], b"env-2", &[cp(5, 200), cp(6, 7)])
                .unwrap();
            assert!(b.seal("default", 5, [2; 32], b"env-5", &[]).is_err());
        }
        let b = Buffer::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(b.chain_id(), chain_id);
        assert_eq!(
            b.chain_state("default").unwrap(),
            ChainState {
                next_seq: 3,
                link: [2; 32]
            }
        );
        let mut cps = b.checkpoints().unwrap();
        cps.sort_by_key(|c| c.id.ino);
        assert_eq!(
            cps.iter().map(|c| c.offset).collect::<Vec<_>>(),
            vec![200, 7]
        );
        assert_eq!(b.usage().batches, 2);
        let oldest = b.oldest().unwrap().unwrap();
        assert_eq!((oldest.seq, &oldest.envelope[..]), (1, &b"env-1"[..]));
        b.ack("default", 1).unwrap();
        assert_eq!(b.oldest().unwrap().unwrap().seq, 2);
        assert_eq!(b.usage().bytes, 5);
    }

    #[test]
    fn two_streams_seal_together_and_keep_their_own_chains() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Buffer::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            b.seal("default", 1, [1; 32], b"d-1", &[cp(5, 100)])
                .unwrap();
            let both = [
                Sealing {
                    stream: "default",
                    seq: 2,
                    next_link: [2; 32],
                    envelope: b"d-2",
                },
                Sealing {
                    stream: "legal",
                    seq: 1,
                    next_link: [9; 32],
                    envelope: b"l-1",
                },
            ];
            b.seal_streams(&both, &[cp(5, 300)]).unwrap();
            // One stream out of order aborts the whole transaction: nothing is written.
            let bad = [
                Sealing {
                    stream: "default",
                    seq: 3,
                    next_link: [3; 32],
                    envelope: b"d-3",
                },
                Sealing {
                    stream: "legal",
                    seq: 5,
                    next_link: [8; 32],
                    envelope: b"l-5",
                },
            ];
            assert!(b.seal_streams(&bad, &[cp(5, 999)]).is_err());
            assert!(b.get("default", 3).unwrap().is_none());
        }
        let b = Buffer::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(b.chain_state("default").unwrap().next_seq, 3);
        assert_eq!(
            b.chain_state("legal").unwrap(),
            ChainState {
                next_seq: 2,
                link: [9; 32]
            }
        );
        assert_eq!(b.checkpoints().unwrap()[0].offset, 300);
        assert_eq!(b.usage().batches, 3);
        // Shipping order alternates between streams, oldest first within each.
        let first = b.next_batch(None).unwrap().unwrap();
        assert_eq!((first.stream.as_str(), first.seq), ("default", 1));
        let next = b.next_batch(Some("default")).unwrap().unwrap();
        assert_eq!((next.stream.as_str(), next.seq), ("legal", 1));
        let wrap = b.next_batch(Some("legal")).unwrap().unwrap();
        assert_eq!((wrap.stream.as_str(), wrap.seq), ("default", 1));
        b.ack("legal", 1).unwrap();
        let only = b.next_batch(Some("default")).unwrap().unwrap();
        assert_eq!((only.stream.as_str(), only.seq), ("default", 1));
    }

    #[test]
    fn a_full_buffer_blocks_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let b = std::sync::Arc::new(Buffer::open(dir.path(), 1 << 20, 10).unwrap());
        b.seal("default", 1, [1; 32], b"0123456789", &[]).unwrap();
        assert!(
            !b.wait_for_space(5, &|| true),
            "full buffer must not admit more"
        );
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || b2.wait_for_space(5, &|| false));
        b.ack("default", 1).unwrap();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn dead_letter_swaps_in_the_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        b.seal("default", 1, [1; 32], b"refused", &[]).unwrap();
        b.dead_letter("default", 1, "413 body_too_large", b"tomb")
            .unwrap();
        assert_eq!(&b.get("default", 1).unwrap().unwrap()[..], b"tomb");
        let dl = b.dead_letters().unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].reason, "413 body_too_large");
        assert_eq!(dl[0].envelope, b"refused");
    }
}
