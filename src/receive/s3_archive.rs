//! The archive in S3-compatible object storage with Object Lock: [`S3Archive`].
//!
//! Layout, one object per batch, holding exactly the envelope's bytes:
//!
//! ```text
//! <prefix>/<host_id>/<stream>/<chain_id hex>/<seq, 20 digits>.lvb
//!     x-amz-meta-logveil-day:      the UTC day (store's clock) of the write, as in the ledger
//!     x-amz-meta-logveil-instance: the store instance that wrote it
//!     Object Lock: COMPLIANCE until the write + the stream's retain_days (for the legal
//!     stream: or the longest `retention_days` of its records, whichever is longer)
//! ```
//!
//! Unlike the filesystem layout the day is not part of the key: the key is the chain's seq
//! alone, so the conditional write below makes a seq writable exactly once, whichever
//! instance writes it and on whatever day. The day still goes into the ledger (from the
//! object's metadata) and `verify` checks it.
//!
//! The bucket must have Object Lock enabled (so versioning is on): checked at start
//! ([`S3Archive::open`]), the store refuses to run otherwise. Every batch is written with
//! `If-None-Match: *` and its retention set in the same request, so there is no moment it
//! is unprotected; in compliance mode no one, the bucket's owner included, can delete the
//! version or shorten its retention. A `DELETE` without version id only adds a delete
//! marker, which `verify` finds (it lists versions).
//!
//! Reading: a stored batch is the oldest version of its key (the one the conditional write
//! made), whatever delete markers or later versions came after; tips are found by listing
//! versions, so a batch hidden behind a delete marker still holds its seq.
//!
//! Put: `412 Precondition Failed` means the seq is already stored (by this or another
//! instance): the stored batch is fetched and compared — the same bytes are an idempotent
//! success (returning the stored day), other bytes [`StoreError::AlreadyStored`]. `409` (a
//! concurrent conditional write in flight) is retried a few times.
//!
//! Several `logveil receive` instances may share one bucket and prefix, each with its own
//! ledger; each keeps its own tips, and refreshes a chain's tip from the bucket
//! ([`ArchiveBackend::newer_tip`]) when a batch seems ahead of it.

use super::chain::Tip;
use super::store::{ArchiveBackend, ChainKey, StoreError};
use crate::archive;
use crate::config::ReceiverS3;
use crate::envelope::Envelope;
use crate::s3::{Object, PutOutcome, S3Client};
use base64::Engine;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Metadata names (after `x-amz-meta-`).
pub const META_DAY: &str = "logveil-day";
pub const META_INSTANCE: &str = "logveil-instance";
/// Attempts of a put answered 409 (concurrent conditional write).
const CONFLICT_ATTEMPTS: u32 = 5;
const DAY_SECS: u64 = 86_400;

/// Where a key sits in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub chain: ChainKey,
    pub seq: u64,
}

/// The layout of keys under a prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_matches('/');
        Layout {
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    /// The prefix every archive key starts with (empty or ending in `/`).
    pub fn root(&self) -> &str {
        &self.prefix
    }

    pub fn chain_prefix(&self, chain: &ChainKey) -> String {
        format!(
            "{}{}/{}/{}/",
            self.prefix,
            chain.host,
            chain.stream,
            hex::encode(chain.chain_id)
        )
    }

    pub fn key(&self, chain: &ChainKey, seq: u64) -> String {
        format!(
            "{}{}",
            self.chain_prefix(chain),
            archive::batch_file_name(seq)
        )
    }

    /// The chain and seq of `key`, if it is a batch key of this layout.
    pub fn parse(&self, key: &str) -> Option<ParsedKey> {
        let rest = key.strip_prefix(&self.prefix)?;
        let mut parts = rest.split('/');
        let (host, stream, chain, file) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || !crate::envelope::is_safe_identifier(host)
            || !crate::envelope::is_safe_identifier(stream)
            || chain.len() != 32
            || chain
                .bytes()
                .any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let chain_id: [u8; 16] = hex::decode(chain).ok()?.try_into().ok()?;
        let seq = archive::parse_batch_file_name(file)?;
        Some(ParsedKey {
            chain: ChainKey {
                host: host.into(),
                stream: stream.into(),
                chain_id,
            },
            seq,
        })
    }
}

/// The archive as objects in one bucket (see the module doc).
#[derive(Clone)]
pub struct S3Archive {
    client: Arc<S3Client>,
    layout: Layout,
    config: Arc<ReceiverS3>,
    instance: String,
}

impl S3Archive {
    /// Connects and checks that the bucket enforces Object Lock with versioning.
    pub async fn open(config: &ReceiverS3) -> Result<Self, StoreError> {
        let settings = config.settings().map_err(StoreError::Task)?;
        let client = S3Client::new(settings)?;
        let (locked, versioned) = client.bucket_is_locked().await?;
        if !locked || !versioned {
            return Err(StoreError::Unprotected(format!(
                "bucket {} must have Object Lock enabled and versioning on (object lock: {locked}, versioning: {versioned})",
                client.bucket()
            )));
        }
        Ok(S3Archive {
            client: Arc::new(client),
            layout: Layout::new(config.prefix()),
            instance: config.instance(),
            config: Arc::new(config.clone()),
        })
    }

    pub fn client(&self) -> &S3Client {
        &self.client
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn where_is(&self, key: &str) -> PathBuf {
        PathBuf::from(self.client.display(key))
    }

    /// The batches stored under `prefix` after the key `after`, by chain and seq, each with
    /// its oldest version. Versions, not current objects: a batch hidden behind a delete
    /// marker is still stored (and locked), so its seq is taken.
    async fn stored(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<BTreeMap<(ChainKey, u64), String>, StoreError> {
        let mut entries = self.client.list_versions_after(prefix, after).await?;
        entries.retain(|e| !e.delete_marker);
        crate::s3::oldest_first(&mut entries);
        let mut out = BTreeMap::new();
        for e in entries {
            match self.layout.parse(&e.key) {
                Some(p) => {
                    out.entry((p.chain, p.seq)).or_insert(e.version_id);
                }
                None => {
                    tracing::warn!(key = %e.key, "unexpected object in the archive's prefix, ignored")
                }
            }
        }
        Ok(out)
    }

    /// The stored batch `seq` of `chain`: the key's oldest version, the one the conditional
    /// write made. Not the current object: a delete marker may hide it, and a later version
    /// (written around the store) is not what the store accepted.
    async fn read(&self, chain: &ChainKey, seq: u64) -> Result<Option<Object>, StoreError> {
        let key = self.layout.key(chain, seq);
        let mut versions = self.client.list_versions(&key).await?;
        versions.retain(|e| e.key == key && !e.delete_marker);
        crate::s3::oldest_first(&mut versions);
        match versions.first() {
            Some(v) => Ok(self.client.get_object(&key, Some(&v.version_id)).await?),
            None => Ok(None),
        }
    }

    /// Batch `seq` of `chain` (version `version`) decoded into a tip, after checking its place.
    async fn tip_at(
        &self,
        chain: &ChainKey,
        seq: u64,
        version: &str,
    ) -> Result<Option<Tip>, StoreError> {
        let key = self.layout.key(chain, seq);
        let Some(obj) = self.client.get_object(&key, Some(version)).await? else {
            return Ok(None);
        };
        let corrupt = |message: String| StoreError::Corrupt {
            path: self.where_is(&key),
            message,
        };
        let env = Envelope::decode(&obj.bytes).map_err(|e| corrupt(e.to_string()))?;
        let h = &env.header;
        if h.seq != seq
            || h.host_id != chain.host
            || h.stream != chain.stream
            || h.chain_id != chain.chain_id
        {
            return Err(corrupt(
                "its header does not match its place in the archive".into(),
            ));
        }
        Ok(Some(Tip {
            seq,
            link: env.next_link(),
        }))
    }
}

fn day_of(obj_meta: &std::collections::BTreeMap<String, String>) -> String {
    obj_meta
        .get(META_DAY)
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

impl ArchiveBackend for S3Archive {
    async fn recover(&self) -> Result<HashMap<ChainKey, Tip>, StoreError> {
        let stored = self.stored(self.layout.root(), None).await?;
        // The map is ordered by chain then seq: the last entry of each chain is its tip.
        let mut newest: HashMap<ChainKey, (u64, String)> = HashMap::new();
        for ((chain, seq), version) in stored {
            newest.insert(chain, (seq, version));
        }
        let mut tips = HashMap::new();
        for (chain, (seq, version)) in newest {
            if let Some(tip) = self.tip_at(&chain, seq, &version).await? {
                tips.insert(chain, tip);
            }
        }
        Ok(tips)
    }

    async fn put(&self, chain: &ChainKey, seq: u64, bytes: Bytes) -> Result<String, StoreError> {
        let key = self.layout.key(chain, seq);
        let day = archive::today();
        let mut days = self.config.retain_days_for(&chain.stream);
        if chain.stream == crate::access::LEGAL_STREAM {
            // Legal records carry their exception's retention: lock for the longest.
            match super::retention::records_retention(&bytes) {
                Ok(from_records) => days = days.max(from_records.unwrap_or(0)),
                Err(why) => {
                    tracing::warn!(chain = %hex::encode(chain.chain_id), seq, reason = %why, "legal batch without a readable retention: locked for the configured retain_days")
                }
            }
        }
        let until = SystemTime::now() + Duration::from_secs(days.saturating_mul(DAY_SECS));
        let headers = [
            ("if-none-match", "*".to_string()),
            ("x-amz-object-lock-mode", "COMPLIANCE".to_string()),
            (
                "x-amz-object-lock-retain-until-date",
                humantime::format_rfc3339_seconds(until).to_string(),
            ),
            ("x-amz-meta-logveil-day", day.clone()),
            ("x-amz-meta-logveil-instance", self.instance.clone()),
            ("content-type", "application/octet-stream".to_string()),
            // AWS requires a checksum on a PUT with Object Lock; a server that checks it
            // refuses an upload corrupted on the way.
            (
                "x-amz-checksum-sha256",
                base64::engine::general_purpose::STANDARD.encode(crate::envelope::sha256(&bytes)),
            ),
        ];
        for _ in 0..CONFLICT_ATTEMPTS {
            match self
                .client
                .put_object(&key, bytes.clone(), &headers)
                .await?
            {
                PutOutcome::Created { .. } => return Ok(day),
                PutOutcome::PreconditionFailed => {
                    return match self.read(chain, seq).await? {
                        Some(obj) if obj.bytes == bytes => Ok(day_of(&obj.metadata)),
                        Some(_) => Err(StoreError::AlreadyStored {
                            path: self.where_is(&key),
                        }),
                        None => Err(StoreError::Corrupt {
                            path: self.where_is(&key),
                            message: "the key exists but its current version cannot be read".into(),
                        }),
                    };
                }
                PutOutcome::Conflict => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(StoreError::Task(format!(
            "{}: conditional write kept conflicting",
            self.where_is(&key).display()
        )))
    }

    async fn get(
        &self,
        chain: &ChainKey,
        seq: u64,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .read(chain, seq)
            .await?
            .map(|obj| (day_of(&obj.metadata), obj.bytes.to_vec())))
    }

    async fn newer_tip(
        &self,
        chain: &ChainKey,
        known: Option<u64>,
    ) -> Result<Option<Tip>, StoreError> {
        let prefix = self.layout.chain_prefix(chain);
        let after = known.map(|s| self.layout.key(chain, s));
        let stored = self.stored(&prefix, after.as_deref()).await?;
        match stored.into_iter().rfind(|((c, _), _)| c == chain) {
            Some(((_, seq), version)) if Some(seq) > known => {
                self.tip_at(chain, seq, &version).await
            }
            _ => Ok(None),
        }
    }

    async fn written_here(&self, chain: &ChainKey, seq: u64) -> Result<bool, StoreError> {
        let key = self.layout.key(chain, seq);
        Ok(self
            .client
            .head_object(&key)
            .await?
            .is_some_and(|m| m.get(META_INSTANCE) == Some(&self.instance)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_not_batches() {
        let l = Layout::new("/logs/");
        let chain = ChainKey {
            host: "web-1".into(),
            stream: "audit".into(),
            chain_id: [0xab; 16],
        };
        let key = l.key(&chain, 7);
        assert_eq!(
            key,
            "logs/web-1/audit/abababababababababababababababab/00000000000000000007.lvb"
        );
        assert_eq!(l.parse(&key), Some(ParsedKey { chain, seq: 7 }));
        for stranger in [
            "logs/web-1/audit/abababababababababababababababab/7.lvb",
            "logs/web-1/audit/ABABABABABABABABABABABABABABABAB/00000000000000000007.lvb",
            "logs/../audit/abababababababababababababababab/00000000000000000007.lvb",
            "other/web-1/audit/abababababababababababababababab/00000000000000000007.lvb",
            "logs/web-1/audit/x/abababababababababababababababab/00000000000000000007.lvb",
        ] {
            assert_eq!(l.parse(stranger), None, "{stranger}");
        }
        assert_eq!(Layout::new("").root(), "");
    }
}
