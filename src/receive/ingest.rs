//! Taking in one batch: validate, apply the chain rules under the chain's lock, store.
//!
//! [`Ingest`] holds the only mutable state of the receiver: the tip of every chain, each
//! behind its own async mutex. The lock is taken after the stateless checks (so a slow
//! signature check or decompression of one batch never holds up its chain) and held until
//! the batch is durable and the tip advanced, so two copies of a batch in flight at once are
//! written once: the second sees the first's tip and becomes a duplicate.
//!
//! Each outcome is counted in `ReceiverMetrics` and each refusal logged at WARN with the
//! host, seq and reason code. Record contents are never logged.

use super::chain::{decide, resolve_stored, Decision, Tip};
use super::store::{ArchiveBackend, ChainKey, StoreError};
use super::validate::{validate, InternalError, Refusal, Rejection, Validated};
use crate::envelope::Envelope;
use crate::telemetry::ReceiverMetrics;
use bytes::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A batch the store holds durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Written now.
    Stored { seq: u64 },
    /// Already stored with the same bytes; nothing written.
    Duplicate { seq: u64 },
}

type ChainLock = Arc<tokio::sync::Mutex<Option<Tip>>>;

pub struct Ingest<A> {
    archive: A,
    keys_dir: PathBuf,
    max_decompressed: u64,
    metrics: ReceiverMetrics,
    chains: Mutex<HashMap<ChainKey, ChainLock>>,
}

/// Who sent a refused batch, as far as its header could be read.
struct Ids {
    host: String,
    stream: String,
    seq: u64,
}

impl<A: ArchiveBackend> Ingest<A> {
    /// Recovers chain state from `archive`.
    pub async fn new(
        archive: A,
        keys_dir: PathBuf,
        max_decompressed: u64,
        metrics: ReceiverMetrics,
    ) -> Result<Self, StoreError> {
        let tips = archive.recover().await?;
        tracing::info!(
            chains = tips.len(),
            "chain state recovered from the archive"
        );
        let chains = tips
            .into_iter()
            .map(|(k, tip)| (k, Arc::new(tokio::sync::Mutex::new(Some(tip)))))
            .collect();
        Ok(Ingest {
            archive,
            keys_dir,
            max_decompressed,
            metrics,
            chains: Mutex::new(chains),
        })
    }

    pub fn metrics(&self) -> &ReceiverMetrics {
        &self.metrics
    }

    /// Takes in one envelope. `Ok` means it is durable in the archive.
    pub async fn ingest(&self, bytes: Bytes) -> Result<Accepted, Refusal> {
        let keys_dir = self.keys_dir.clone();
        let max = self.max_decompressed;
        let checked = tokio::task::spawn_blocking(move || {
            let ids = Envelope::decode(&bytes).ok().map(|e| Ids {
                host: e.header.host_id.clone(),
                stream: e.header.stream.clone(),
                seq: e.header.seq,
            });
            (ids, validate(bytes, &keys_dir, max))
        })
        .await;
        let (ids, result) = match checked {
            Ok(pair) => pair,
            Err(e) => (None, Err(InternalError::Task(e.to_string()).into())),
        };
        let outcome = match result {
            Ok(batch) => self.apply(batch).await,
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(Accepted::Stored { .. }) => {}
            Ok(Accepted::Duplicate { seq }) => {
                self.metrics.batches_duplicate.inc();
                if let Some(ids) = &ids {
                    tracing::debug!(host = %ids.host, stream = %ids.stream, seq, "duplicate batch acknowledged again");
                }
            }
            Err(Refusal::Rejected(r)) => self.note_rejection(
                r,
                ids.as_ref()
                    .map(|i| (i.host.as_str(), i.stream.as_str(), i.seq)),
            ),
            Err(Refusal::Internal(e)) => {
                self.metrics.count_rejection("internal");
                match &ids {
                    Some(i) => {
                        tracing::error!(host = %i.host, stream = %i.stream, seq = i.seq, error = %e, "batch could not be stored")
                    }
                    None => tracing::error!(error = %e, "batch could not be stored"),
                }
            }
        }
        outcome
    }

    /// Counts and logs a refusal; `ids` is `(host, stream, seq)` when the header decoded.
    pub fn note_rejection(&self, r: &Rejection, ids: Option<(&str, &str, u64)>) {
        self.metrics.count_rejection(r.code());
        match ids {
            Some((host, stream, seq)) => tracing::warn!(
                host,
                stream,
                seq,
                reason = r.code(),
                detail = %r,
                "batch rejected"
            ),
            None => tracing::warn!(reason = r.code(), detail = %r, "batch rejected"),
        }
    }

    fn chain_lock(&self, key: &ChainKey) -> ChainLock {
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        chains.entry(key.clone()).or_default().clone()
    }

    async fn apply(&self, batch: Validated) -> Result<Accepted, Refusal> {
        let h = &batch.header;
        let key = ChainKey {
            host: h.host_id.clone(),
            stream: h.stream.clone(),
            chain_id: h.chain_id,
        };
        let lock = self.chain_lock(&key);
        let mut tip = lock.lock().await;
        match decide(*tip, h.seq, &h.prev_hash) {
            Decision::Store => {
                self.archive
                    .put(&key, h.seq, batch.bytes.clone())
                    .await
                    .map_err(InternalError::from)?;
                *tip = Some(Tip {
                    seq: h.seq,
                    link: batch.link,
                });
                self.metrics.batches_accepted.inc();
                self.metrics.records_accepted.inc_by(batch.records);
                self.metrics.bytes_accepted.inc_by(batch.bytes.len() as u64);
                tracing::debug!(host = %h.host_id, stream = %h.stream, seq = h.seq, records = batch.records, "batch stored");
                Ok(Accepted::Stored { seq: h.seq })
            }
            Decision::CompareStored => {
                let current = tip.expect("CompareStored implies a tip");
                let stored = self
                    .archive
                    .get(&key, h.seq)
                    .await
                    .map_err(InternalError::from)?;
                resolve_stored(current, h.seq, stored.as_deref(), &batch.bytes)?;
                Ok(Accepted::Duplicate { seq: h.seq })
            }
            Decision::Reject(r) => Err(r.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::store::FsArchive;
    use crate::receive::test_support::Chain;

    struct Fixture {
        archive: tempfile::TempDir,
        keys: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                archive: tempfile::tempdir().unwrap(),
                keys: tempfile::tempdir().unwrap(),
            }
        }
        async fn ingest(&self) -> Arc<Ingest<FsArchive>> {
            let store = FsArchive::open(self.archive.path()).unwrap();
            Arc::new(
                Ingest::new(
                    store,
                    self.keys.path().into(),
                    1 << 20,
                    ReceiverMetrics::default(),
                )
                .await
                .unwrap(),
            )
        }
        fn files(&self) -> usize {
            walkdir::WalkDir::new(self.archive.path())
                .into_iter()
                .filter(|e| e.as_ref().unwrap().file_type().is_file())
                .count()
        }
    }

    fn rejected(r: Result<Accepted, Refusal>) -> Rejection {
        match r {
            Err(Refusal::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_chain_is_stored_in_order_and_resends_are_duplicates() {
        let fx = Fixture::new();
        let ingest = fx.ingest().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(fx.keys.path());
        let b1 = Bytes::from(c.next_data(&["a"]));
        let b2 = Bytes::from(c.next_tombstone());
        let b3 = Bytes::from(c.next_data(&["b", "c"]));
        for (i, b) in [&b1, &b2, &b3].into_iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(
                ingest.ingest(b.clone()).await.unwrap(),
                Accepted::Stored { seq }
            );
        }
        assert_eq!(
            ingest.ingest(b1.clone()).await.unwrap(),
            Accepted::Duplicate { seq: 1 }
        );
        assert_eq!(
            ingest.ingest(b3.clone()).await.unwrap(),
            Accepted::Duplicate { seq: 3 }
        );
        assert_eq!(fx.files(), 3);
        let m = ingest.metrics();
        assert_eq!(m.batches_accepted.get(), 3);
        assert_eq!(m.batches_duplicate.get(), 2);
        assert_eq!(m.records_accepted.get(), 3);
    }

    #[tokio::test]
    async fn chain_state_survives_a_restart() {
        let fx = Fixture::new();
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(fx.keys.path());
        let b1 = Bytes::from(c.next_data(&["a"]));
        fx.ingest().await.ingest(b1.clone()).await.unwrap();

        let restarted = fx.ingest().await;
        assert_eq!(
            restarted.ingest(b1).await.unwrap(),
            Accepted::Duplicate { seq: 1 }
        );
        let b2 = Bytes::from(c.next_data(&["b"]));
        assert_eq!(
            restarted.ingest(b2).await.unwrap(),
            Accepted::Stored { seq: 2 }
        );
    }

    #[tokio::test]
    async fn conflicts_gaps_and_broken_links_are_refused_and_not_written() {
        let fx = Fixture::new();
        let ingest = fx.ingest().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(fx.keys.path());
        ingest
            .ingest(Bytes::from(c.next_data(&["a"])))
            .await
            .unwrap();
        ingest
            .ingest(Bytes::from(c.next_data(&["b"])))
            .await
            .unwrap();

        // A different batch claiming seq 1.
        let mut fork = Chain::new("web-1", "default", [1; 16]);
        let other = Bytes::from(fork.next_data(&["other"]));
        let r = rejected(ingest.ingest(other).await);
        assert_eq!((r.code(), r.expected_seq()), ("seq_conflict", Some(3)));

        // Seq 4 before 3.
        let mut ahead = Chain::new("web-1", "default", [1; 16]);
        ahead.seq = 3;
        ahead.link = [7; 32];
        let r = rejected(ingest.ingest(Bytes::from(ahead.next_data(&["x"]))).await);
        assert_eq!((r.code(), r.expected_seq()), ("seq_gap", Some(3)));

        // Seq 3 linking to something else.
        let mut broken = Chain::new("web-1", "default", [1; 16]);
        broken.seq = 2;
        broken.link = [7; 32];
        let r = rejected(ingest.ingest(Bytes::from(broken.next_data(&["x"]))).await);
        assert_eq!((r.code(), r.expected_seq()), ("broken_chain", Some(3)));

        // A new chain must start at 1.
        let mut late = Chain::new("web-1", "default", [2; 16]);
        late.seq = 1;
        let r = rejected(ingest.ingest(Bytes::from(late.next_data(&["x"]))).await);
        assert_eq!((r.code(), r.expected_seq()), ("seq_gap", Some(1)));

        assert_eq!(fx.files(), 2);
        let rejected_total: u64 = ["seq_conflict", "seq_gap", "broken_chain"]
            .iter()
            .map(|r| {
                ingest
                    .metrics()
                    .batches_rejected
                    .get_or_create(&vec![("reason".to_string(), r.to_string())])
                    .get()
            })
            .sum();
        assert_eq!(rejected_total, 4);
        // The chain goes on.
        let b3 = Bytes::from(c.next_data(&["c"]));
        assert_eq!(
            ingest.ingest(b3).await.unwrap(),
            Accepted::Stored { seq: 3 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_copies_of_a_batch_are_written_once() {
        let fx = Fixture::new();
        let ingest = fx.ingest().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(fx.keys.path());
        let b1 = Bytes::from(c.next_data(&["a"]));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (ingest, b1) = (ingest.clone(), b1.clone());
            tasks.spawn(async move { ingest.ingest(b1).await.unwrap() });
        }
        let mut stored = 0;
        while let Some(r) = tasks.join_next().await {
            if let Accepted::Stored { .. } = r.unwrap() {
                stored += 1;
            }
        }
        assert_eq!(stored, 1);
        assert_eq!(fx.files(), 1);
        assert_eq!(ingest.metrics().batches_duplicate.get(), 19);
    }

    #[tokio::test]
    async fn revoking_a_key_takes_effect_at_once() {
        let fx = Fixture::new();
        let ingest = fx.ingest().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(fx.keys.path());
        ingest
            .ingest(Bytes::from(c.next_data(&["a"])))
            .await
            .unwrap();
        std::fs::remove_file(fx.keys.path().join("web-1.pub")).unwrap();
        let r = rejected(ingest.ingest(Bytes::from(c.next_data(&["b"]))).await);
        assert_eq!(r.code(), "unknown_host");
    }
}
