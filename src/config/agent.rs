//! The agent's config file (`logveil run --config agent.toml`).

use super::{duration, ConfigError, Source, TelemetryConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    pub sink: SinkConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    #[serde(default)]
    pub redact: RedactConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Defaults to the machine's hostname.
    pub host_id: Option<String>,
    pub data_dir: PathBuf,
    pub signing_key: PathBuf,
    /// How long SIGTERM may take to seal, persist and ship before the agent exits.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Threads that redact records (order is kept). Default: the number of CPUs, at most 4.
    pub redact_threads: Option<usize>,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How a source's records are read by the redaction engine (see `redact` module docs).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Free text (key=value pairs in it are still recognised).
    Plain,
    /// Each record is a JSON document; records that do not parse are flagged and scanned
    /// as text.
    Json,
    /// `key=value` / `key="quoted value"` pairs.
    Logfmt,
    /// Per record: JSON when it starts with `{`/`[` or embeds `{"`, else text and pairs.
    #[default]
    Auto,
    /// Kubernetes CRI container log lines: `<rfc3339 time> <stdout|stderr> <P|F> <content>`.
    Cri,
    /// Docker's json-file driver: `{"log":"…\n","stream":"stdout","time":"…"}` per line.
    Docker,
}

/// Where a file found at a source's very first start (no checkpoint of it) begins.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

/// Joins several lines into one record (stack traces, tracebacks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A line matching this regex starts a new record; other lines continue the current one.
    pub start_pattern: Option<String>,
    /// A line matching this regex continues the current record; others start a new one.
    pub continue_pattern: Option<String>,
    /// A record is emitted once no line has been added to it for this long (and the file
    /// has no unfinished line that could continue it).
    #[serde(default = "default_multiline_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// A record that reaches this many lines is emitted; the next line starts a new one.
    #[serde(default = "default_multiline_max_lines")]
    pub max_lines: usize,
    /// A record that would grow past this many bytes is emitted first.
    #[serde(default = "default_multiline_max_bytes")]
    pub max_bytes: usize,
}

fn default_multiline_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_multiline_max_lines() -> usize {
    2000
}
fn default_multiline_max_bytes() -> usize {
    256 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_format")]
    pub format: Format,
    /// Longer lines are split into parts of at most this many bytes.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// A final line without a newline is shipped once its file has been idle this long.
    #[serde(
        default = "default_partial_line_timeout",
        deserialize_with = "duration"
    )]
    pub partial_line_timeout: Duration,
    /// How often files are looked for and checked when no change notification arrives.
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// How long a file that was renamed away or deleted is kept open after its last read.
    #[serde(default = "default_rotate_wait", deserialize_with = "duration")]
    pub rotate_wait: Duration,
    /// Where files found at this source's very first start begin; later files always
    /// begin at their start.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Files without a checkpoint whose last change is older than this are not backfilled:
    /// they begin at their end.
    #[serde(default, deserialize_with = "opt_duration")]
    pub ignore_older: Option<Duration>,
    /// Upper bound of files held open by this source; idle files are closed and reopened
    /// by identity when they change.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// The checkpoint of a file not seen for this long is deleted.
    #[serde(default = "default_checkpoint_expiry", deserialize_with = "duration")]
    pub checkpoint_expiry: Duration,
    /// Files whose first bytes are a gzip, bzip2, xz or zstd header are never read (a
    /// rotated file compressed later is not shipped again). `true` reads them as bytes.
    #[serde(default)]
    pub read_compressed: bool,
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
}

/// The `multiline` rules of a source, compiled.
#[derive(Debug, Clone)]
pub struct MultilineRules {
    /// `true`: the regex marks the first line of a record; `false`: it marks continuations.
    pub is_start: bool,
    pub regex: regex::bytes::Regex,
    pub timeout: Duration,
    pub max_lines: usize,
    pub max_bytes: usize,
}

impl MultilineConfig {
    pub fn compile(&self) -> Result<MultilineRules, String> {
        let (is_start, pattern) = match (&self.start_pattern, &self.continue_pattern) {
            (Some(p), None) => (true, p),
            (None, Some(p)) => (false, p),
            _ => {
                return Err("exactly one of start_pattern and continue_pattern is required".into())
            }
        };
        let regex = regex::bytes::Regex::new(pattern).map_err(|e| format!("bad regex: {e}"))?;
        Ok(MultilineRules {
            is_start,
            regex,
            timeout: self.timeout,
            max_lines: self.max_lines.max(1),
            max_bytes: self.max_bytes.max(1),
        })
    }
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn default_format() -> Format {
    Format::Auto
}
fn default_max_line_bytes() -> usize {
    64 * 1024
}
fn default_partial_line_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_rotate_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_max_open_files() -> usize {
    1024
}
fn default_checkpoint_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub url: String,
    /// Upper bound of a batch's uncompressed payload.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// A batch is sealed at most this long after its first record.
    #[serde(default = "default_batch_max_wait", deserialize_with = "duration")]
    pub batch_max_wait: Duration,
    #[serde(default = "default_compression_level")]
    pub compression_level: i32,
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(default = "default_retry_initial", deserialize_with = "duration")]
    pub retry_initial: Duration,
    #[serde(default = "default_retry_max", deserialize_with = "duration")]
    pub retry_max: Duration,
    /// Cap on a server's Retry-After.
    #[serde(default = "default_retry_after_max", deserialize_with = "duration")]
    pub retry_after_max: Duration,
    /// Wait between tries while the store says the agent is misconfigured (401/403/404).
    #[serde(default = "default_misconfigured_retry", deserialize_with = "duration")]
    pub misconfigured_retry: Duration,
    pub tls: Option<SinkTls>,
}

fn default_batch_max_bytes() -> usize {
    1024 * 1024
}
fn default_batch_max_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_compression_level() -> i32 {
    1
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_after_max() -> Duration {
    Duration::from_secs(60)
}
fn default_misconfigured_retry() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTls {
    /// PEM bundle of the CA(s) that sign the store's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to check the store's certificate against, when it differs from the URL's host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    #[default]
    Block,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Bytes of sealed envelopes the buffer may hold before sources pause.
    #[serde(default = "default_buffer_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub when_full: WhenFull,
    /// sled's page cache; its own default is 1 GiB.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: default_buffer_max_bytes(),
            when_full: WhenFull::Block,
            cache_capacity: default_cache_capacity(),
        }
    }
}

fn default_buffer_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_cache_capacity() -> u64 {
    8 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Built-in detectors (rule or type names) to run; all of them when absent.
    pub detectors: Option<Vec<String>>,
    /// Extra patterns: each match becomes a finding of its type (highest precedence).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Extra PII field names: a value under one is masked whatever it looks like.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// Field names whose values are SQL statements: their literals are stripped.
    #[serde(default)]
    pub sql_fields: Vec<String>,
    /// Masking mode per type: redact, mask, hash, drop_field, drop_record.
    #[serde(default)]
    pub modes: std::collections::BTreeMap<String, String>,
    /// Mode of every type not in `modes`.
    #[serde(default = "default_mode")]
    pub default_mode: String,
    /// Characters `mask` mode keeps at the end of a value.
    #[serde(default = "default_mask_keep")]
    pub mask_keep: usize,
    /// Pseudonymisation key file for `hash` mode (`logveil keygen --pseudonym`).
    pub hash_key: Option<PathBuf>,
    /// Findings let through when their exact text fully matches `pattern`.
    #[serde(default)]
    pub allow: Vec<AllowConfig>,
    /// A longer record is not scanned but masked whole (fail closed).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// The compliance public key (`logveil keygen --compliance`) that legal-exception
    /// fields are sealed to. Required when any exception is declared.
    pub compliance_key: Option<PathBuf>,
    /// Legal exceptions: fields kept (sealed to the compliance key) where a legal
    /// obligation needs them. See docs/REDACTION.md "Legal exceptions".
    #[serde(default)]
    pub exceptions: Vec<ExceptionConfig>,
}

/// One `[[redact.exceptions]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// Unique name, shipped with every sealed record (`exception`).
    pub name: String,
    /// The legal obligation that requires keeping the fields.
    pub legal_basis: String,
    /// What the kept fields are for.
    pub purpose: String,
    /// Source names the exception applies to; every source when empty.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Field path -> the exact value (or any of a list of values) it must have.
    #[serde(default)]
    pub when: std::collections::BTreeMap<String, toml::Value>,
    /// The exact field paths kept (sealed); nothing else.
    pub fields: Vec<String>,
    /// How long the compliance store must keep the sealed fields.
    pub retention_days: u64,
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            detectors: None,
            rules: Vec::new(),
            fields: Vec::new(),
            sql_fields: Vec::new(),
            modes: Default::default(),
            default_mode: default_mode(),
            mask_keep: default_mask_keep(),
            hash_key: None,
            allow: Vec::new(),
            max_record_bytes: default_max_record_bytes(),
            compliance_key: None,
            exceptions: Vec::new(),
        }
    }
}

fn default_mode() -> String {
    "redact".into()
}
fn default_mask_keep() -> usize {
    4
}
fn default_max_record_bytes() -> usize {
    1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub pattern: String,
    /// Overrides the type's mode.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// Only findings of this type; any type when absent.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub pattern: String,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = super::read(path)?;
        Self::from_text(path, &text)
    }

    pub fn from_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let src = Source { path, text };
        let cfg: AgentConfig = src.parse()?;
        cfg.validate(&src)?;
        Ok(cfg)
    }

    pub fn host_id(&self) -> String {
        self.agent.host_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".to_string())
        })
    }

    fn validate(&self, src: &Source) -> Result<(), ConfigError> {
        let host = self.host_id();
        if !crate::envelope::is_safe_identifier(&host) {
            return Err(src.error(
                "agent.host_id",
                format!("`{host}` is not a valid host id: use letters, digits, '.', '_' and '-', not starting with '.'"),
            ));
        }
        if self.agent.redact_threads.is_some_and(|n| n == 0 || n > 64) {
            return Err(src.error("agent.redact_threads", "must be between 1 and 64"));
        }
        if self.sources.is_empty() {
            return Err(src.error("sources", "at least one [[sources]] table is required"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |k: &str| format!("sources.{i}.{k}");
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(src.error(&key("name"), "source names must be non-empty and unique"));
            }
            if s.include.is_empty() {
                return Err(src.error(&key("include"), "at least one glob is required"));
            }
            for (field, globs) in [("include", &s.include), ("exclude", &s.exclude)] {
                for g in globs {
                    if !g.starts_with('/') {
                        return Err(
                            src.error(&key(field), format!("glob `{g}` must be an absolute path"))
                        );
                    }
                    if let Err(e) = globset::Glob::new(g) {
                        return Err(src.error(&key(field), format!("bad glob `{g}`: {e}")));
                    }
                }
            }
            if s.max_line_bytes < 256 {
                return Err(src.error(&key("max_line_bytes"), "must be at least 256"));
            }
            if s.max_line_bytes * 2 > self.sink.batch_max_bytes {
                return Err(src.error(
                    &key("max_line_bytes"),
                    format!(
                        "must be at most half of sink.batch_max_bytes ({}), so a record always fits a batch",
                        self.sink.batch_max_bytes
                    ),
                ));
            }
            if s.poll_interval.is_zero() {
                return Err(src.error(&key("poll_interval"), "must be greater than zero"));
            }
            if s.max_open_files < 1 {
                return Err(src.error(&key("max_open_files"), "must be at least 1"));
            }
            if s.checkpoint_expiry.is_zero() {
                return Err(src.error(&key("checkpoint_expiry"), "must be greater than zero"));
            }
            if let Some(m) = &s.multiline {
                if let Err(e) = m.compile() {
                    return Err(src.error(&key("multiline"), e));
                }
                if m.max_bytes * 2 > self.sink.batch_max_bytes {
                    return Err(src.error(
                        &key("multiline.max_bytes"),
                        "must be at most half of sink.batch_max_bytes, so a record always fits a batch",
                    ));
                }
                if m.timeout.is_zero() {
                    return Err(src.error(&key("multiline.timeout"), "must be greater than zero"));
                }
            }
        }
        match reqwest::Url::parse(&self.sink.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => return Err(src.error("sink.url", "the scheme must be http or https")),
            Err(e) => return Err(src.error("sink.url", format!("not a URL: {e}"))),
        }
        if self.sink.batch_max_bytes < 4096 {
            return Err(src.error("sink.batch_max_bytes", "must be at least 4096"));
        }
        if !(1..=19).contains(&self.sink.compression_level) {
            return Err(src.error("sink.compression_level", "must be between 1 and 19"));
        }
        if self.sink.batch_max_wait.is_zero() {
            return Err(src.error("sink.batch_max_wait", "must be greater than zero"));
        }
        if self.sink.retry_initial.is_zero() || self.sink.retry_max < self.sink.retry_initial {
            return Err(src.error(
                "sink.retry_max",
                "retry_initial must be > 0 and retry_max at least retry_initial",
            ));
        }
        if (self.buffer.max_bytes as usize) < self.sink.batch_max_bytes {
            return Err(src.error(
                "buffer.max_bytes",
                "must be at least sink.batch_max_bytes, so one batch always fits",
            ));
        }
        if let Some(tls) = &self.sink.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(src.error("sink.tls.cert", "cert and key must be given together"));
            }
        }
        if let Err(e) = crate::redact::Redactor::from_config(&self.redact) {
            use crate::redact::RedactError as E;
            let key = match &e {
                E::UnknownDetector(_) => "redact.detectors".to_string(),
                E::BadPattern { index, .. } => format!("redact.rules.{index}"),
                E::BadAllow { index, .. } => format!("redact.allow.{index}"),
                E::BadType { .. } | E::BadMode { .. } => "redact".to_string(),
                E::HashKey(_) => "redact.hash_key".to_string(),
                E::Exception(x) => match x {
                    crate::redact::legal::LegalError::ComplianceKey { .. }
                    | crate::redact::legal::LegalError::NoComplianceKey => {
                        "redact.compliance_key".to_string()
                    }
                    crate::redact::legal::LegalError::Invalid { index, key, .. } => {
                        format!("redact.exceptions.{index}.{key}")
                    }
                },
            };
            return Err(src.error(&key, e.to_string()));
        }
        for (i, x) in self.redact.exceptions.iter().enumerate() {
            if let Some(unknown) = x
                .sources
                .iter()
                .find(|s| !self.sources.iter().any(|d| &d.name == *s))
            {
                return Err(src.error(
                    &format!("redact.exceptions.{i}.sources"),
                    format!("`{unknown}` is not the name of a [[sources]] table"),
                ));
            }
        }
        Ok(())
    }
}
