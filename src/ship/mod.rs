//! The shipper: sends buffered envelopes to the central store one at a time, oldest first
//! within each stream and taking the streams in turn (so a `default` backlog never holds
//! back the `legal` stream), and deletes each only after the store acknowledged it (the store answers 2xx only after
//! fsync). A batch is never dropped: transient failures retry forever (see [`retry`]); a
//! misconfiguration keeps the batch and retries slowly; a batch the store refuses for good
//! moves to the dead-letter tree and a signed tombstone takes its seq, so the chain goes on
//! and the loss is on record.

pub mod client;
pub mod retry;

use crate::buffer::{Buffer, Stored};
use crate::config::SinkConfig;
use crate::envelope::{self, Envelope, Header, Kind};
use crate::telemetry::AgentMetrics;
use ed25519_dalek::SigningKey;
use retry::Verdict;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

pub use client::{fetch_limits, Limits};

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
    #[error("a stored envelope does not decode: {0}")]
    Corrupt(#[from] envelope::DecodeError),
}

pub struct Shipper {
    client: reqwest::Client,
    url: reqwest::Url,
    sink: SinkConfig,
    buffer: Arc<Buffer>,
    key: SigningKey,
    metrics: AgentMetrics,
}

/// How one delivery attempt ended.
struct Attempt {
    verdict: Verdict,
    status: Option<u16>,
    detail: String,
    /// The store's reason code (`seq_gap`, `unknown_host`, ...), when it sent one.
    code: Option<String>,
    /// For 409: the seq the store expects next.
    expected_seq: Option<u64>,
}

impl Shipper {
    pub fn new(
        sink: SinkConfig,
        buffer: Arc<Buffer>,
        key: SigningKey,
        metrics: AgentMetrics,
    ) -> anyhow::Result<Self> {
        let (client, url) = client::build(&sink)?;
        Ok(Shipper {
            client,
            url,
            sink,
            buffer,
            key,
            metrics,
        })
    }

    /// Ships until `hard_stop` is cancelled, or until `drained` is cancelled and the buffer
    /// is empty.
    pub async fn run(
        self,
        drained: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), ShipError> {
        let mut attempt: u32 = 0;
        // The stream of the last acknowledged batch: the next pick starts after it.
        let mut last: Option<String> = None;
        loop {
            self.update_gauges();
            let Some(stored) = self.buffer.next_batch(last.as_deref())? else {
                if drained.is_cancelled() {
                    return Ok(());
                }
                tokio::select! {
                    _ = hard_stop.cancelled() => return Ok(()),
                    _ = drained.cancelled() => {}
                    _ = self.buffer.sealed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            crate::crash::point("before_ship");
            let outcome = tokio::select! {
                _ = hard_stop.cancelled() => return Ok(()),
                outcome = self.send(&stored.envelope) => outcome,
            };
            let wait = match outcome.verdict {
                Verdict::Ack => {
                    crate::crash::point("after_ack_before_delete");
                    self.buffer.ack(&stored.stream, stored.seq)?;
                    crate::crash::point("after_delete");
                    self.metrics.batches_shipped.inc();
                    tracing::debug!(seq = stored.seq, stream = %stored.stream, "batch acknowledged");
                    attempt = 0;
                    last = Some(stored.stream);
                    continue;
                }
                Verdict::Retry { after } => {
                    self.metrics.batches_retried.inc();
                    let wait = after.unwrap_or_else(|| {
                        retry::backoff(attempt, self.sink.retry_initial, self.sink.retry_max)
                    });
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        seq = stored.seq,
                        status = outcome.status,
                        error = %outcome.detail,
                        retry_in_ms = wait.as_millis() as u64,
                        "delivery failed, will retry"
                    );
                    wait
                }
                Verdict::Conflict
                    if outcome.code.as_deref() == Some("seq_gap")
                        && outcome.expected_seq.is_some_and(|e| e < stored.seq)
                        && self
                            .declare_gap(&stored, outcome.expected_seq.unwrap_or(1))
                            .await =>
                {
                    continue;
                }
                Verdict::Misconfigured | Verdict::Conflict => {
                    self.metrics.batches_retried.inc();
                    tracing::error!(
                        seq = stored.seq,
                        status = outcome.status,
                        reason = %outcome.detail,
                        retry_in_s = self.sink.misconfigured_retry.as_secs(),
                        "the central store refuses this agent's batches; check enrollment, key and sink.url — the batch is kept"
                    );
                    self.sink.misconfigured_retry
                }
                Verdict::Refused => {
                    self.dead_letter(&stored, &outcome)?;
                    attempt = 0;
                    continue;
                }
            };
            tokio::select! {
                _ = hard_stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send(&self, envelope: &[u8]) -> Attempt {
        let request = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/octet-stream")
            .body(envelope.to_vec());
        match request.send().await {
            Err(e) => Attempt {
                verdict: Verdict::Retry { after: None },
                status: None,
                detail: client::describe(&e),
                code: None,
                expected_seq: None,
            },
            Ok(resp) => {
                let status = resp.status();
                let after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        retry::retry_after(v, SystemTime::now(), self.sink.retry_after_max)
                    });
                // The store's JSON error names a reason code; keep it short for logs.
                let body = resp.text().await.unwrap_or_default();
                let json = serde_json::from_str::<serde_json::Value>(&body).ok();
                let code = json
                    .as_ref()
                    .and_then(|v| Some(v.get("error")?.as_str()?.to_string()));
                let expected_seq = json.as_ref().and_then(|v| v.get("expected_seq")?.as_u64());
                let detail = match (&code, expected_seq) {
                    (Some(c), Some(e)) => format!("{c} (expected seq {e})"),
                    (Some(c), None) => c.clone(),
                    _ => format!("HTTP {}", status.as_u16()),
                };
                Attempt {
                    verdict: retry::classify(status, after),
                    status: Some(status.as_u16()),
                    detail,
                    code,
                    expected_seq,
                }
            }
        }
    }

    /// The store lacks seqs `expected..stored.seq` and this agent no longer holds them (it
    /// ships oldest first, so anything older than `stored` is gone): declare the gap with a
    /// signed statement (`POST /v1/gaps`), so the store records it in its custody ledger,
    /// raises an alert and lets the chain continue. Returns whether the store accepted it.
    async fn declare_gap(&self, stored: &Stored, expected: u64) -> bool {
        let Ok(env) = Envelope::decode(&stored.envelope) else {
            return false;
        };
        let h = &env.header;
        let statement = crate::receive::gap::GapStatement {
            host: h.host_id.clone(),
            stream: h.stream.clone(),
            chain: h.chain_id_hex(),
            key_id: h.key_id.clone(),
            from: expected,
            to: h.seq - 1,
            link: hex::encode(h.prev_hash),
            reason: "the agent's buffer no longer holds these batches".into(),
        };
        tracing::error!(
            stream = %h.stream,
            from = expected,
            to = h.seq - 1,
            "batches the central store never received are gone from this agent's buffer; declaring the gap to the store"
        );
        let Ok(url) = self.url.join("gaps") else {
            return false;
        };
        let body = serde_json::to_vec(&statement.sign(&self.key)).unwrap_or_default();
        match self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::error!(
                    status = r.status().as_u16(),
                    "the central store refused the gap declaration"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %client::describe(&e), "could not declare the gap; will retry");
                false
            }
        }
    }

    fn dead_letter(&self, stored: &Stored, outcome: &Attempt) -> Result<(), ShipError> {
        let refused = Envelope::decode(&stored.envelope)?;
        let reason = format!("HTTP {}: {}", outcome.status.unwrap_or(0), outcome.detail);
        let tombstone = tombstone_for(&refused, &reason, &self.key);
        self.buffer
            .dead_letter(&stored.stream, stored.seq, &reason, &tombstone)?;
        self.metrics.batches_dead_lettered.inc();
        tracing::error!(
            seq = stored.seq,
            stream = %stored.stream,
            records = refused.header.record_count,
            reason = %reason,
            "the central store refused a batch for good: moved to the dead-letter tree, a tombstone takes its seq (inspect with `logveil dead-letter list`)"
        );
        Ok(())
    }

    fn update_gauges(&self) {
        let usage = self.buffer.usage();
        self.metrics.buffer_bytes.set(usage.bytes as i64);
        self.metrics.buffer_batches.set(usage.batches as i64);
        let age = self.buffer.oldest_age().unwrap_or_default();
        self.metrics
            .oldest_unshipped_age_seconds
            .set(age.as_secs() as i64);
    }
}

/// A signed tombstone that takes the refused envelope's seq and records its hashes.
pub fn tombstone_for(refused: &Envelope, reason: &str, key: &SigningKey) -> Vec<u8> {
    let h = &refused.header;
    let mut reason = reason.to_string();
    reason.truncate(1024);
    let header = Header {
        kind: Kind::Tombstone,
        host_id: h.host_id.clone(),
        key_id: envelope::keys::key_id(&key.verifying_key()),
        stream: h.stream.clone(),
        chain_id: h.chain_id,
        seq: h.seq,
        prev_hash: h.prev_hash,
        payload_sha256: envelope::sha256(&[]),
        payload_len: 0,
        decompressed_len: 0,
        record_count: 0,
        first_ts_ns: h.first_ts_ns,
        last_ts_ns: h.last_ts_ns,
        policy_hash: h.policy_hash,
        refused_link: envelope::link_hash(refused.header_bytes, &refused.signature),
        refused_payload_sha256: h.payload_sha256,
        reason,
    };
    envelope::seal(&header, &[], key).0
}
