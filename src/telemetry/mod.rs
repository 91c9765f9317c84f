//! Telemetry: the counters both processes expose, and the `/metrics` + `/health` server.
//!
//! Core code records into [`AgentMetrics`] / [`ReceiverMetrics`]; what becomes a metric is
//! decided here, not in the stages. Metric names are stable: dashboards and tests use them.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

pub mod server;

type Labels = Vec<(String, String)>;

/// Everything the agent counts.
#[derive(Clone, Default)]
pub struct AgentMetrics {
    pub lines_read: Counter,
    pub bytes_read: Counter,
    pub lines_split: Counter,
    pub truncations: Counter,
    pub files_open: Gauge,
    pub redactions: Family<Labels, Counter>,
    pub batches_sealed: Counter,
    pub batches_shipped: Counter,
    pub batches_retried: Counter,
    pub batches_dead_lettered: Counter,
    pub buffer_bytes: Gauge,
    pub buffer_batches: Gauge,
    pub oldest_unshipped_age_seconds: Gauge,
    pub buffer_full_pauses: Counter,
    pub json_parse_errors: Counter,
    pub source_errors: Counter,
    pub legal_records: Counter,
    pub legal_records_too_large: Counter,
}

impl AgentMetrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("logveil_agent");
        r.register(
            "lines_read",
            "Lines read from files",
            self.lines_read.clone(),
        );
        r.register(
            "bytes_read",
            "Bytes read from files",
            self.bytes_read.clone(),
        );
        r.register(
            "lines_split",
            "Lines longer than max_line_bytes, split into parts",
            self.lines_split.clone(),
        );
        r.register(
            "truncations",
            "Files found truncated and read again from the start",
            self.truncations.clone(),
        );
        r.register("files_open", "Files held open", self.files_open.clone());
        r.register(
            "redactions",
            "Values redacted, by type",
            self.redactions.clone(),
        );
        r.register(
            "batches_sealed",
            "Batches sealed into the buffer",
            self.batches_sealed.clone(),
        );
        r.register(
            "batches_shipped",
            "Batches acknowledged by the central store",
            self.batches_shipped.clone(),
        );
        r.register(
            "batches_retried",
            "Delivery attempts that will be retried",
            self.batches_retried.clone(),
        );
        r.register(
            "batches_dead_lettered",
            "Batches the central store refused for good",
            self.batches_dead_lettered.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes of sealed envelopes in the buffer",
            self.buffer_bytes.clone(),
        );
        r.register(
            "buffer_batches",
            "Sealed batches waiting in the buffer",
            self.buffer_batches.clone(),
        );
        r.register(
            "oldest_unshipped_batch_age_seconds",
            "Age of the oldest batch not yet acknowledged",
            self.oldest_unshipped_age_seconds.clone(),
        );
        r.register(
            "buffer_full_pauses",
            "Times reading paused because the buffer was full",
            self.buffer_full_pauses.clone(),
        );
        r.register(
            "json_parse_errors",
            "Lines of json sources that did not parse",
            self.json_parse_errors.clone(),
        );
        r.register(
            "legal_records",
            "Records of fields kept under a legal exception, sealed to the compliance key",
            self.legal_records.clone(),
        );
        r.register(
            "legal_records_too_large",
            "Legal-exception records not shipped because they exceed sink.batch_max_bytes",
            self.legal_records_too_large.clone(),
        );
        r.register(
            "source_errors",
            "Errors opening or reading files",
            self.source_errors.clone(),
        );
        r
    }

    pub fn count_redaction(&self, kind: &str, n: u64) {
        self.redactions
            .get_or_create(&vec![("type".to_string(), kind.to_string())])
            .inc_by(n);
    }
}

/// Everything the central store counts.
#[derive(Clone, Default)]
pub struct ReceiverMetrics {
    pub batches_accepted: Counter,
    pub batches_duplicate: Counter,
    pub batches_rejected: Family<Labels, Counter>,
    pub records_accepted: Counter,
    pub bytes_accepted: Counter,
    /// Custody alerts raised (the ERROR lines with `alert = ...`), by kind: `gap`,
    /// `archive_shortened`, `archive_altered`.
    pub custody_alerts: Family<Labels, Counter>,
    /// Refusals past a peer's `recorded_rejections_per_minute`: counted, not recorded.
    pub rejections_unrecorded: Counter,
}

impl ReceiverMetrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("logveil_receiver");
        r.register(
            "batches_accepted",
            "Batches written to the archive",
            self.batches_accepted.clone(),
        );
        r.register(
            "batches_duplicate",
            "Batches already stored, acknowledged again",
            self.batches_duplicate.clone(),
        );
        r.register(
            "batches_rejected",
            "Batches refused, by reason",
            self.batches_rejected.clone(),
        );
        r.register(
            "records_accepted",
            "Records in accepted batches",
            self.records_accepted.clone(),
        );
        r.register(
            "bytes_accepted",
            "Envelope bytes written to the archive",
            self.bytes_accepted.clone(),
        );
        r.register(
            "rejections_unrecorded",
            "Refusals not written to the custody ledger (past a peer's recorded_rejections_per_minute)",
            self.rejections_unrecorded.clone(),
        );
        r.register(
            "custody_alerts",
            "Custody alerts raised, by kind (gap, archive_shortened, archive_altered, archive_unrecorded_invalid)",
            self.custody_alerts.clone(),
        );
        r
    }

    pub fn count_alert(&self, kind: &str) {
        self.custody_alerts
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    pub fn count_rejection(&self, reason: &str) {
        self.batches_rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// Serves `/metrics` and `/health` on `listen` until `shutdown` is cancelled.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    server::serve(listen, registry, shutdown).await
}
