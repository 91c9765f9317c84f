//! Taking in one batch: validate, apply the chain rules under the chain's lock, store,
//! record in the custody ledger.
//!
//! [`Ingest`] holds the only mutable state of the receiver: the tip of every chain, each
//! behind its own async mutex. The lock is taken after the stateless checks (so a slow
//! signature check or decompression of one batch never holds up its chain) and held until
//! the batch is durable, recorded and the tip advanced, so two copies of a batch in flight at
//! once are written once: the second sees the first's tip and becomes a duplicate.
//!
//! With a custody ledger (`crate::custody`), the order for an accepted batch is: archive
//! write + fsync → ledger `accepted` entry (with the new chain head) + fsync → tip advanced
//! → 2xx. If the ledger write fails the tip stays, the answer is 5xx, and the agent's resend
//! finds the batch already in the archive (an idempotent put) and records it then. Every
//! refusal gets a `rejected` entry; a declared gap (`gap`) a `gap` entry and an alert.
//!
//! At start, chain tips come from the archive and are checked against the ledger's heads:
//! batches the archive holds beyond the ledger's head (a crash between archive fsync and
//! ledger append) are recorded as `accepted` with `recovered` if they pass the checks
//! ingest applies (`validate`, their place, the chain rules from the ledger's head); the
//! first that fails, and everything after it, is not recorded but moved aside
//! (`ArchiveBackend::quarantine`) with the `archive_unrecorded_invalid` alert, and the tip
//! stays at the last good batch (docs/CUSTODY.md); a ledger head beyond the
//! archive's tip (batches removed from the archive, not by retention) raises an alert, and
//! the ledger's head wins so the chain cannot be re-written.
//!
//! On an archive shared by several store instances (S3, `super::s3_archive`) each keeps its
//! own tips, which can fall behind: a batch that looks ahead of the tip (`seq_gap`), or a
//! put that finds its seq already taken by other bytes, makes the instance reload that
//! chain's tip from the archive once (`ArchiveBackend::newer_tip`) and decide again. At
//! start it records as `recovered` only the unrecorded batches it wrote itself
//! (`ArchiveBackend::written_here`); the others are in their writers' ledgers.
//!
//! With mutual TLS, the client certificate must be valid for the batch's host id (its
//! subject alternative names), else 403 `host_mismatch`.
//!
//! Each outcome is counted in `ReceiverMetrics` and each refusal logged at WARN with the
//! host, seq and reason code. Record contents are never logged.

use super::chain::{decide, resolve_stored, Decision, Tip};
use super::gap::SignedGap;
use super::store::{ArchiveBackend, ChainKey, StoreError};
use super::validate::{host_key, validate, InternalError, Refusal, Rejection, Validated};
use crate::custody::{ChainRef, Entry, Event, Ledger};
use crate::envelope::{sha256, Envelope, Hash, Kind};
use crate::telemetry::ReceiverMetrics;
use bytes::Bytes;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A batch the store holds durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Written now.
    Stored { seq: u64 },
    /// Already stored with the same bytes; nothing written.
    Duplicate { seq: u64 },
}

/// Who is on the other end of a request.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The client certificate, when mutual TLS is on.
    pub cert: Option<CertificateDer<'static>>,
}

type ChainLock = Arc<tokio::sync::Mutex<Option<Tip>>>;

pub struct Ingest<A> {
    archive: A,
    keys_dir: PathBuf,
    max_decompressed: u64,
    metrics: ReceiverMetrics,
    chains: Mutex<HashMap<ChainKey, ChainLock>>,
    ledger: Option<Arc<Ledger>>,
    rejections: RejectionBudget,
}

/// How many refusals per peer address go into the custody ledger each minute. Anyone who
/// can reach the store can make it refuse requests; without a bound, each would append
/// and fsync a ledger entry: the attacker would be writing to the store's disk.
struct RejectionBudget {
    per_minute: u32,
    peers: Mutex<HashMap<Option<std::net::IpAddr>, RejectionWindow>>,
}

struct RejectionWindow {
    start: std::time::Instant,
    recorded: u32,
    unrecorded: u64,
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

impl RejectionBudget {
    fn new(per_minute: u32) -> Self {
        RejectionBudget {
            per_minute,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)`: record this refusal, noting the `n` from this peer left out since its
    /// last recorded one; `None`: over the budget, leave it out.
    fn take(&self, peer: Option<std::net::IpAddr>) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() > 10_000 {
            // Forget idle peers, keeping the counts of those with refusals left out.
            peers.retain(|_, w| now.duration_since(w.start) < MINUTE || w.unrecorded > 0);
        }
        let w = peers.entry(peer).or_insert(RejectionWindow {
            start: now,
            recorded: 0,
            unrecorded: 0,
        });
        if now.duration_since(w.start) >= MINUTE {
            w.start = now;
            w.recorded = 0;
        }
        if w.recorded < self.per_minute {
            w.recorded += 1;
            Some(std::mem::take(&mut w.unrecorded))
        } else {
            w.unrecorded += 1;
            None
        }
    }
}

/// Who sent a refused batch, as far as its header could be read.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    pub host: Option<String>,
    pub stream: Option<String>,
    pub chain: Option<String>,
    pub seq: Option<u64>,
}

impl Ids {
    fn of(env: &Envelope<'_>) -> Ids {
        Ids {
            host: Some(env.header.host_id.clone()),
            stream: Some(env.header.stream.clone()),
            chain: Some(env.header.chain_id_hex()),
            seq: Some(env.header.seq),
        }
    }
}

pub fn chain_ref(key: &ChainKey) -> ChainRef {
    ChainRef {
        host: key.host.clone(),
        stream: key.stream.clone(),
        chain: hex::encode(key.chain_id),
    }
}

fn chain_key(c: &ChainRef) -> Option<ChainKey> {
    Some(ChainKey {
        host: c.host.clone(),
        stream: c.stream.clone(),
        chain_id: hex::decode(&c.chain).ok()?.try_into().ok()?,
    })
}

fn parse_hash(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

/// What the ledger says about a chain: its head, and which seqs retention removed.
#[derive(Debug, Default)]
struct LedgerChain {
    head: Option<Tip>,
    retained_away: Vec<(u64, u64)>,
}

fn ledger_chains(entries: &[Entry]) -> BTreeMap<ChainKey, LedgerChain> {
    let mut out: BTreeMap<ChainKey, LedgerChain> = BTreeMap::new();
    for e in entries {
        let (chain, tip) = match &e.event {
            Event::Accepted {
                chain,
                seq,
                head_link,
                ..
            } => (
                chain,
                parse_hash(head_link).map(|link| Tip { seq: *seq, link }),
            ),
            Event::Gap {
                chain, to, link, ..
            } => (chain, parse_hash(link).map(|link| Tip { seq: *to, link })),
            Event::RetentionDeleted {
                chain,
                first_seq,
                last_seq,
                ..
            } => {
                if let Some(k) = chain_key(chain) {
                    out.entry(k)
                        .or_default()
                        .retained_away
                        .push((*first_seq, *last_seq));
                }
                continue;
            }
            _ => continue,
        };
        if let (Some(k), Some(tip)) = (chain_key(chain), tip) {
            let c = out.entry(k).or_default();
            if c.head.map_or(true, |h| tip.seq > h.seq) {
                c.head = Some(tip);
            }
        }
    }
    out
}

impl<A: ArchiveBackend> Ingest<A> {
    /// Recovers chain state from `archive` (and the ledger's entries, when there is one).
    pub async fn new(
        archive: A,
        keys_dir: PathBuf,
        max_decompressed: u64,
        metrics: ReceiverMetrics,
        ledger: Option<(Arc<Ledger>, Vec<Entry>)>,
    ) -> Result<Self, StoreError> {
        let mut tips = archive.recover().await?;
        tracing::info!(
            chains = tips.len(),
            "chain state recovered from the archive"
        );
        let ledger = match ledger {
            None => None,
            Some((ledger, entries)) => {
                reconcile(
                    &archive,
                    &ledger,
                    &entries,
                    &mut tips,
                    &metrics,
                    &keys_dir,
                    max_decompressed,
                )
                .await?;
                Some(ledger)
            }
        };
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
            ledger,
            rejections: RejectionBudget::new(60),
        })
    }

    /// Sets how many refusals per peer address and minute are recorded in the ledger.
    pub fn with_recorded_rejections_per_minute(mut self, n: u32) -> Self {
        self.rejections = RejectionBudget::new(n.max(1));
        self
    }

    pub fn metrics(&self) -> &ReceiverMetrics {
        &self.metrics
    }

    pub fn archive(&self) -> &A {
        &self.archive
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    /// Takes in one envelope. `Ok` means it is durable in the archive (and the ledger).
    pub async fn ingest(&self, bytes: Bytes, peer: &Peer) -> Result<Accepted, Refusal> {
        let keys_dir = self.keys_dir.clone();
        let max = self.max_decompressed;
        let body_sha = hex::encode(sha256(&bytes));
        let checked = tokio::task::spawn_blocking(move || {
            let ids = Envelope::decode(&bytes).ok().map(|e| Ids::of(&e));
            (ids, validate(bytes, &keys_dir, max))
        })
        .await;
        let (ids, result) = match checked {
            Ok(pair) => pair,
            Err(e) => (None, Err(InternalError::Task(e.to_string()).into())),
        };
        let outcome = match result {
            Ok(batch) => match check_peer(peer, &batch.header.host_id) {
                Ok(()) => self.apply(batch).await,
                Err(r) => Err(r.into()),
            },
            Err(e) => Err(e),
        };
        let ids = ids.unwrap_or_default();
        match &outcome {
            Ok(Accepted::Stored { .. }) => {}
            Ok(Accepted::Duplicate { seq }) => {
                self.metrics.batches_duplicate.inc();
                tracing::debug!(host = ?ids.host, stream = ?ids.stream, seq, "duplicate batch acknowledged again");
            }
            Err(Refusal::Rejected(r)) => self.note_rejection(r, &ids, peer, Some(body_sha)).await,
            Err(Refusal::Internal(e)) => {
                self.metrics.count_rejection("internal");
                tracing::error!(host = ?ids.host, stream = ?ids.stream, seq = ?ids.seq, error = %e, "batch could not be stored");
            }
        }
        outcome
    }

    /// Counts, logs and records (in the ledger) a refusal.
    pub async fn note_rejection(
        &self,
        r: &Rejection,
        ids: &Ids,
        peer: &Peer,
        body_sha256: Option<String>,
    ) {
        self.metrics.count_rejection(r.code());
        tracing::warn!(
            host = ?ids.host,
            stream = ?ids.stream,
            seq = ?ids.seq,
            peer = ?peer.addr,
            reason = r.code(),
            detail = %r,
            "batch rejected"
        );
        let Some(ledger) = &self.ledger else {
            return;
        };
        let Some(unrecorded_before) = self.rejections.take(peer.addr.map(|a| a.ip())) else {
            self.metrics.rejections_unrecorded.inc();
            return;
        };
        let event = Event::Rejected {
            reason: r.code().into(),
            status: r.status().as_u16(),
            message: r.to_string(),
            host: ids.host.clone(),
            stream: ids.stream.clone(),
            chain: ids.chain.clone(),
            seq: ids.seq,
            expected_seq: r.expected_seq(),
            peer: peer.addr.map(|a| a.ip().to_string()),
            body_sha256,
            unrecorded_before,
        };
        if let Err(e) = ledger.record(event).await {
            tracing::error!(error = %e, "a refusal could not be recorded in the custody ledger");
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
        // On a shared backend another instance may have moved the chain on: a batch that
        // looks ahead of our tip, or a seq taken under our feet, is checked against the
        // backend's tip once before it is refused.
        let mut refreshed = false;
        loop {
            let decision = decide(*tip, h.seq, &h.prev_hash);
            let stale = match &decision {
                Decision::Reject(Rejection::SeqGap { seq, expected_seq }) => seq > expected_seq,
                _ => false,
            };
            if stale && !refreshed {
                refreshed = true;
                if self.refresh_tip(&key, &mut tip).await? {
                    continue;
                }
            }
            return match decision {
                Decision::Store => {
                    let day = match self.archive.put(&key, h.seq, batch.bytes.clone()).await {
                        Ok(day) => day,
                        Err(StoreError::AlreadyStored { .. }) if !refreshed => {
                            refreshed = true;
                            self.refresh_tip(&key, &mut tip).await?;
                            continue;
                        }
                        Err(e) => return Err(InternalError::from(e).into()),
                    };
                    if let Some(ledger) = &self.ledger {
                        let event = accepted_event(&key, &batch, day, false);
                        ledger.record(event).await.map_err(InternalError::from)?;
                    }
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
                    resolve_stored(
                        current,
                        h.seq,
                        stored.as_ref().map(|(_, b)| b.as_slice()),
                        &batch.bytes,
                    )?;
                    Ok(Accepted::Duplicate { seq: h.seq })
                }
                Decision::Reject(r) => Err(r.into()),
            };
        }
    }

    /// Moves `tip` to the backend's newer tip, if it has one; `true` when it moved.
    async fn refresh_tip(&self, key: &ChainKey, tip: &mut Option<Tip>) -> Result<bool, Refusal> {
        let known = tip.map(|t| t.seq);
        match self
            .archive
            .newer_tip(key, known)
            .await
            .map_err(InternalError::from)?
        {
            Some(newer) => {
                tracing::debug!(host = %key.host, stream = %key.stream, from = ?known, to = newer.seq, "chain tip refreshed from the shared archive");
                *tip = Some(newer);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Takes a host's signed gap statement (see `gap`). `Ok(true)`: recorded now;
    /// `Ok(false)`: already recorded.
    pub async fn declare_gap(&self, body: Bytes, peer: &Peer) -> Result<bool, Refusal> {
        let body_sha = hex::encode(sha256(&body));
        let keys_dir = self.keys_dir.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<SignedGap, Refusal> {
            let gap = super::gap::decode(&body).map_err(Rejection::BadGap)?;
            let s = &gap.statement;
            let key = host_key(&keys_dir, &s.host, &s.key_id)?;
            if !gap.verify(&key.key) {
                return Err(Rejection::BadSignature.into());
            }
            if key.revoked {
                return Err(Rejection::KeyRevoked {
                    host: s.host.clone(),
                    key_id: key.key_id,
                }
                .into());
            }
            Ok(gap)
        })
        .await
        .map_err(|e| Refusal::from(InternalError::Task(e.to_string())))
        .and_then(|r| r);
        let result = match checked {
            Ok(gap) => match check_peer(peer, &gap.statement.host) {
                Ok(()) => self.apply_gap(&gap).await,
                Err(r) => Err(r.into()),
            },
            Err(e) => Err(e),
        };
        if let Err(Refusal::Rejected(r)) = &result {
            self.note_rejection(r, &Ids::default(), peer, Some(body_sha))
                .await;
        }
        result
    }

    async fn apply_gap(&self, gap: &SignedGap) -> Result<bool, Refusal> {
        let s = &gap.statement;
        let Some(ledger) = &self.ledger else {
            return Err(Rejection::BadGap(
                "this store keeps no custody ledger (no store_key), so it cannot record a gap"
                    .into(),
            )
            .into());
        };
        let key = ChainKey {
            host: s.host.clone(),
            stream: s.stream.clone(),
            chain_id: gap.chain_id,
        };
        let lock = self.chain_lock(&key);
        let mut tip = lock.lock().await;
        if s.from > tip.map_or(0, |t| t.seq) + 1 {
            // Another instance sharing the archive may have moved the chain on.
            self.refresh_tip(&key, &mut tip).await?;
        }
        let (last, _) = tip.map_or((0, [0; 32]), |t| (t.seq, t.link));
        if *tip
            == Some(Tip {
                seq: s.to,
                link: gap.link,
            })
        {
            return Ok(false);
        }
        if s.from != last + 1 {
            return Err(Rejection::SeqGap {
                seq: s.from,
                expected_seq: last + 1,
            }
            .into());
        }
        let event = Event::Gap {
            chain: chain_ref(&key),
            from: s.from,
            to: s.to,
            link: s.link.clone(),
            reason: s.reason.clone(),
            key_id: s.key_id.clone(),
            statement: base64_encode(&gap.raw),
            statement_sig: base64_encode(&gap.sig),
        };
        ledger.record(event).await.map_err(InternalError::from)?;
        *tip = Some(Tip {
            seq: s.to,
            link: gap.link,
        });
        self.metrics.count_alert("gap");
        tracing::error!(
            alert = "custody_gap",
            host = %s.host,
            stream = %s.stream,
            chain = %s.chain,
            from = s.from,
            to = s.to,
            reason = %s.reason,
            "a host declared batches lost for good; the gap is recorded in the custody ledger"
        );
        Ok(true)
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn accepted_event(key: &ChainKey, batch: &Validated, day: String, recovered: bool) -> Event {
    Event::Accepted {
        chain: chain_ref(key),
        seq: batch.header.seq,
        day,
        batch_kind: match batch.header.kind {
            Kind::Data => "data".into(),
            Kind::Tombstone => "tombstone".into(),
        },
        key_id: batch.header.key_id.clone(),
        envelope_sha256: hex::encode(sha256(&batch.bytes)),
        head_link: hex::encode(batch.link),
        records: batch.records,
        bytes: batch.bytes.len() as u64,
        recovered,
    }
}

/// With mutual TLS, the client certificate must name the host.
fn check_peer(peer: &Peer, host: &str) -> Result<(), Rejection> {
    let Some(der) = &peer.cert else {
        return Ok(());
    };
    let mismatch = || Rejection::HostMismatch { host: host.into() };
    let name = ServerName::try_from(host.to_string()).map_err(|_| mismatch())?;
    let cert = rustls::server::ParsedCertificate::try_from(der).map_err(|_| mismatch())?;
    rustls::client::verify_server_name(&cert, &name).map_err(|_| mismatch())
}

/// Brings the ledger up to date with the archive at start (see the module doc) and lets the
/// ledger's heads win over the archive's tips.
async fn reconcile<A: ArchiveBackend>(
    archive: &A,
    ledger: &Arc<Ledger>,
    entries: &[Entry],
    tips: &mut HashMap<ChainKey, Tip>,
    metrics: &ReceiverMetrics,
    keys_dir: &Path,
    max_decompressed: u64,
) -> Result<(), StoreError> {
    let from_ledger = ledger_chains(entries);
    let mut keys: Vec<ChainKey> = tips.keys().cloned().collect();
    keys.extend(from_ledger.keys().cloned());
    keys.sort();
    keys.dedup();
    for key in keys {
        let archive_tip = tips.get(&key).copied();
        let lc = from_ledger.get(&key);
        let head = lc.and_then(|c| c.head);
        let a = archive_tip.map_or(0, |t| t.seq);
        let l = head.map_or(0, |t| t.seq);
        if a > l {
            let ctx = RecoveryCheck {
                keys_dir,
                max_decompressed,
            };
            let stopped = recover_unrecorded(archive, ledger, &key, head, a, &ctx, metrics).await?;
            match stopped {
                None => {}
                Some(Some(t)) => {
                    tips.insert(key.clone(), t);
                }
                Some(None) => {
                    tips.remove(&key);
                }
            }
        } else if l > a {
            let retained = lc.is_some_and(|c| {
                (a + 1..=l).all(|s| c.retained_away.iter().any(|(f, t)| (*f..=*t).contains(&s)))
            });
            if !retained {
                metrics.count_alert("archive_shortened");
                tracing::error!(
                    alert = "custody_archive_shortened",
                    host = %key.host,
                    stream = %key.stream,
                    archive_seq = a,
                    ledger_seq = l,
                    "the archive lacks batches the custody ledger recorded; run logveil verify"
                );
            }
            if let Some(h) = head {
                tips.insert(key.clone(), h);
            }
        } else if let (Some(h), Some(t)) = (head, archive_tip) {
            if h.link != t.link {
                metrics.count_alert("archive_altered");
                tracing::error!(
                    alert = "custody_archive_altered",
                    host = %key.host,
                    stream = %key.stream,
                    seq = t.seq,
                    "the newest batch of a chain is not the one the custody ledger recorded; run logveil verify"
                );
                tips.insert(key.clone(), h);
            }
        }
    }
    Ok(())
}

/// What start-up recovery needs to check an unrecorded batch as ingest would have.
struct RecoveryCheck<'a> {
    keys_dir: &'a Path,
    max_decompressed: u64,
}

/// Checks an unrecorded batch as ingest would have when it arrived: the same stateless
/// checks as a POSTed batch ([`validate`]: decode, enrolled and unrevoked key, signature,
/// payload hash, payload), then its place in the archive and the chain rules against
/// `prev` (`None`: the link before it is unknown, not checked). `Ok(Err(reason))`: it may
/// not be recorded; the reason names no record contents.
fn check_recovered(
    key: &ChainKey,
    seq: u64,
    prev: Option<Option<Tip>>,
    bytes: Vec<u8>,
    keys_dir: &Path,
    max_decompressed: u64,
) -> Result<Result<Validated, String>, StoreError> {
    let batch = match validate(Bytes::from(bytes), keys_dir, max_decompressed) {
        Ok(b) => b,
        Err(Refusal::Rejected(r)) => return Ok(Err(format!("{}: {r}", r.code()))),
        Err(Refusal::Internal(e)) => return Err(StoreError::Task(e.to_string())),
    };
    let h = &batch.header;
    if h.seq != seq || h.host_id != key.host || h.stream != key.stream || h.chain_id != key.chain_id
    {
        return Ok(Err(
            "misplaced: its header does not match its place in the archive".into(),
        ));
    }
    if let Some(prev) = prev {
        if let Decision::Reject(r) = decide(prev, seq, &h.prev_hash) {
            return Ok(Err(format!("{}: {r}", r.code())));
        }
    }
    Ok(Ok(batch))
}

/// Records the batches the archive holds past the ledger's head (`head`, up to
/// `archive_seq`) that pass [`check_recovered`], in order, each chaining onto the one
/// before. Stops at the first that does not: it and everything after it are not recorded,
/// raise the `archive_unrecorded_invalid` alert and are moved aside
/// (`ArchiveBackend::quarantine`) so the host can store its real batches at those seqs
/// (none of them was acknowledged: a 2xx follows the ledger entry). Returns `None` when
/// everything was recorded (the archive's tip stands), else the last good tip.
async fn recover_unrecorded<A: ArchiveBackend>(
    archive: &A,
    ledger: &Arc<Ledger>,
    key: &ChainKey,
    head: Option<Tip>,
    archive_seq: u64,
    ctx: &RecoveryCheck<'_>,
    metrics: &ReceiverMetrics,
) -> Result<Option<Option<Tip>>, StoreError> {
    let ledger_err = |e: crate::custody::LedgerError| StoreError::Task(e.to_string());
    let l = head.map_or(0, |t| t.seq);
    let mut tip = head;
    // Whether seq - 1 is another instance's batch (read only when needed).
    let mut after_other = false;
    for seq in l + 1..=archive_seq {
        // A shared backend holds other instances' batches, recorded in their ledgers; they
        // are not recorded here, but the next batch of this instance chains onto them.
        if !archive.written_here(key, seq).await? {
            after_other = true;
            continue;
        }
        let Some((day, bytes)) = archive.get(key, seq).await? else {
            continue;
        };
        // `None`: the link before this batch is unknown (unreadable), not checked.
        let prev = if after_other {
            after_other = false;
            let stored = archive.get(key, seq - 1).await?;
            match stored.and_then(|(_, b)| Envelope::decode(&b).ok().map(|e| e.next_link())) {
                Some(link) => {
                    tip = Some(Tip { seq: seq - 1, link });
                    Some(tip)
                }
                None => None,
            }
        } else {
            Some(tip)
        };
        let (k, keys_dir, max) = (
            key.clone(),
            ctx.keys_dir.to_path_buf(),
            ctx.max_decompressed,
        );
        let checked = tokio::task::spawn_blocking(move || {
            check_recovered(&k, seq, prev, bytes, &keys_dir, max)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let batch = match checked {
            Ok(batch) => batch,
            Err(reason) => {
                metrics.count_alert("archive_unrecorded_invalid");
                tracing::error!(
                    alert = "custody_archive_unrecorded_invalid",
                    host = %key.host,
                    stream = %key.stream,
                    seq,
                    reason = %reason,
                    "a batch in the archive but not in the custody ledger fails the checks ingest applies; not recorded, nor anything after it; run logveil verify"
                );
                for s in seq..=archive_seq {
                    if !archive.written_here(key, s).await? || archive.get(key, s).await?.is_none()
                    {
                        continue;
                    }
                    match archive.quarantine(key, s).await? {
                        Some(to) => tracing::error!(
                            alert = "custody_archive_unrecorded_invalid",
                            host = %key.host,
                            stream = %key.stream,
                            seq = s,
                            moved_to = %to,
                            "unrecorded batch moved aside; the host can store its real batch at this seq"
                        ),
                        None => tracing::error!(
                            alert = "custody_archive_unrecorded_invalid",
                            host = %key.host,
                            stream = %key.stream,
                            seq = s,
                            "this archive backend cannot move the unrecorded batch aside; the host cannot store this seq until an operator removes it"
                        ),
                    }
                }
                return Ok(Some(tip));
            }
        };
        ledger
            .record(accepted_event(key, &batch, day, true))
            .await
            .map_err(ledger_err)?;
        tip = Some(Tip {
            seq,
            link: batch.link,
        });
        tracing::warn!(host = %key.host, stream = %key.stream, seq, "batch in the archive but not in the custody ledger (crash before recording); recorded now");
    }
    Ok(None)
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
                    None,
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
                ingest.ingest(b.clone(), &Peer::default()).await.unwrap(),
                Accepted::Stored { seq }
            );
        }
        assert_eq!(
            ingest.ingest(b1.clone(), &Peer::default()).await.unwrap(),
            Accepted::Duplicate { seq: 1 }
        );
        assert_eq!(
            ingest.ingest(b3.clone(), &Peer::default()).await.unwrap(),
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
        fx.ingest()
            .await
            .ingest(b1.clone(), &Peer::default())
            .await
            .unwrap();

        let restarted = fx.ingest().await;
        assert_eq!(
            restarted.ingest(b1, &Peer::default()).await.unwrap(),
            Accepted::Duplicate { seq: 1 }
        );
        let b2 = Bytes::from(c.next_data(&["b"]));
        assert_eq!(
            restarted.ingest(b2, &Peer::default()).await.unwrap(),
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
            .ingest(Bytes::from(c.next_data(&["a"])), &Peer::default())
            .await
            .unwrap();
        ingest
            .ingest(Bytes::from(c.next_data(&["b"])), &Peer::default())
            .await
            .unwrap();

        // A different batch claiming seq 1.
        let mut fork = Chain::new("web-1", "default", [1; 16]);
        let other = Bytes::from(fork.next_data(&["other"]));
        let r = rejected(ingest.ingest(other, &Peer::default()).await);
        assert_eq!((r.code(), r.expected_seq()), ("seq_conflict", Some(3)));

        // Seq 4 before 3.
        let mut ahead = Chain::new("web-1", "default", [1; 16]);
        ahead.seq = 3;
        ahead.link = [7; 32];
        let r = rejected(
            ingest
                .ingest(Bytes::from(ahead.next_data(&["x"])), &Peer::default())
                .await,
        );
        assert_eq!((r.code(), r.expected_seq()), ("seq_gap", Some(3)));

        // Seq 3 linking to something else.
        let mut broken = Chain::new("web-1", "default", [1; 16]);
        broken.seq = 2;
        broken.link = [7; 32];
        let r = rejected(
            ingest
                .ingest(Bytes::from(broken.next_data(&["x"])), &Peer::default())
                .await,
        );
        assert_eq!((r.code(), r.expected_seq()), ("broken_chain", Some(3)));

        // A new chain must start at 1.
        let mut late = Chain::new("web-1", "default", [2; 16]);
        late.seq = 1;
        let r = rejected(
            ingest
                .ingest(Bytes::from(late.next_data(&["x"])), &Peer::default())
                .await,
        );
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
            ingest.ingest(b3, &Peer::default()).await.unwrap(),
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
            tasks.spawn(async move { ingest.ingest(b1, &Peer::default()).await.unwrap() });
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

    /// A backend shared by several `Ingest`s, like one bucket behind several stores.
    type Objects = BTreeMap<(ChainKey, u64), Vec<u8>>;

    #[derive(Clone, Default)]
    struct SharedMem(Arc<Mutex<Objects>>);

    impl ArchiveBackend for SharedMem {
        async fn recover(&self) -> Result<HashMap<ChainKey, Tip>, StoreError> {
            Ok(HashMap::new())
        }
        async fn put(
            &self,
            chain: &ChainKey,
            seq: u64,
            bytes: Bytes,
        ) -> Result<String, StoreError> {
            let mut m = self.0.lock().unwrap();
            match m.get(&(chain.clone(), seq)) {
                Some(stored) if *stored == bytes => {}
                Some(_) => return Err(StoreError::AlreadyStored { path: "mem".into() }),
                None => {
                    m.insert((chain.clone(), seq), bytes.to_vec());
                }
            }
            Ok("2026-01-01".into())
        }
        async fn get(
            &self,
            chain: &ChainKey,
            seq: u64,
        ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
            let m = self.0.lock().unwrap();
            Ok(m.get(&(chain.clone(), seq))
                .map(|b| ("2026-01-01".to_string(), b.clone())))
        }
        async fn newer_tip(
            &self,
            chain: &ChainKey,
            known: Option<u64>,
        ) -> Result<Option<Tip>, StoreError> {
            let m = self.0.lock().unwrap();
            let newest = m
                .iter()
                .filter(|((c, s), _)| c == chain && Some(*s) > known)
                .max_by_key(|((_, s), _)| *s);
            Ok(newest.map(|((_, seq), bytes)| Tip {
                seq: *seq,
                link: Envelope::decode(bytes).unwrap().next_link(),
            }))
        }
    }

    #[tokio::test]
    async fn stores_sharing_a_backend_take_turns_on_one_chain_exactly_once() {
        let keys = tempfile::tempdir().unwrap();
        let shared = SharedMem::default();
        let new = || async {
            Ingest::new(
                shared.clone(),
                keys.path().into(),
                1 << 20,
                ReceiverMetrics::default(),
                None,
            )
            .await
            .unwrap()
        };
        let (a, b) = (new().await, new().await);
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(keys.path());
        let batches: Vec<Bytes> = (0..6).map(|_| Bytes::from(c.next_data(&["x"]))).collect();
        let p = Peer::default();
        // 1 → a, 2 → b (b refreshes from the backend), 3 → a (refreshes), …
        for (i, batch) in batches.iter().enumerate() {
            let store = if i % 2 == 0 { &a } else { &b };
            let seq = i as u64 + 1;
            assert_eq!(
                store.ingest(batch.clone(), &p).await.unwrap(),
                Accepted::Stored { seq }
            );
        }
        // A resend of a batch the other store wrote is acknowledged, not written again.
        assert_eq!(
            a.ingest(batches[5].clone(), &p).await.unwrap(),
            Accepted::Stored { seq: 6 }
        );
        assert_eq!(
            b.ingest(batches[0].clone(), &p).await.unwrap(),
            Accepted::Duplicate { seq: 1 }
        );
        assert_eq!(shared.0.lock().unwrap().len(), 6);
        // A fork of a seq the other store holds is refused, even by a store that lags.
        let lagging = new().await;
        let mut fork = Chain::new("web-1", "default", [1; 16]);
        let r = rejected(
            lagging
                .ingest(Bytes::from(fork.next_data(&["forged"])), &p)
                .await,
        );
        assert_eq!((r.code(), r.expected_seq()), ("seq_conflict", Some(7)));
        // A gap past the backend's tip is still a gap.
        let mut ahead = Chain::new("web-1", "default", [1; 16]);
        ahead.seq = 8;
        ahead.link = [7; 32];
        let r = rejected(b.ingest(Bytes::from(ahead.next_data(&["x"])), &p).await);
        assert_eq!((r.code(), r.expected_seq()), ("seq_gap", Some(7)));
    }

    #[tokio::test]
    async fn revoking_a_key_takes_effect_at_once() {
        let fx = Fixture::new();
        let ingest = fx.ingest().await;
        let mut c = Chain::new("web-1", "default", [1; 16]);
        c.enroll(fx.keys.path());
        ingest
            .ingest(Bytes::from(c.next_data(&["a"])), &Peer::default())
            .await
            .unwrap();
        std::fs::remove_file(fx.keys.path().join("web-1.pub")).unwrap();
        let r = rejected(
            ingest
                .ingest(Bytes::from(c.next_data(&["b"])), &Peer::default())
                .await,
        );
        assert_eq!(r.code(), "unknown_host");
    }
}
