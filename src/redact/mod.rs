//! Redaction: finds PII in a record's text and masks it, editing only the spans it found,
//! so everything else keeps its bytes (JSON key order, number precision, spacing).
//!
//! Runs on the agent before a record is buffered, shipped or logged, and in
//! `logveil redact`. A record is one text that may hold `\n` (a joined multi-line record).
//!
//! # Passes
//! Every pass reports *findings* (a byte span of the original text, a type, a rule); the
//! findings are merged and masked at the end. In order:
//! 1. **Structured** ([`json`], [`fields`]): a JSON document (the whole record for
//!    `format = "json"`; for `auto` also one embedded after a prefix, as in CRI lines) is
//!    walked without being rebuilt. Every value under a PII field name is a finding whatever
//!    it looks like; objects and arrays under one are masked leaf by leaf. Strings with
//!    escapes are decoded and scanned again as a record of their own (embedded JSON,
//!    `\u00e9`), and the findings mapped back.
//! 2. **Key/value pairs** in any format (logfmt, `k="v"`, `"k"=>"v"`, `k: v`, query
//!    strings): a value under a PII field name is a finding.
//! 3. **SQL** ([`sql`]): in a statement (pgaudit, MariaDB audit, any SQL in a configured
//!    `sql_fields` field) every string and numeric literal becomes `?`.
//! 4. **Detectors** ([`detectors`]): a cheap [`prefilter`] pass (literal hints, digit and
//!    byte counts) tells which built-in detectors can match at all; only those (and every
//!    user rule) run their own regex, and each candidate is checked by its validator
//!    (Luhn, mod-97, SSN rules, …).
//! 5. **Encoded views** ([`view`]): when the text has `%XX` escapes it is URL-decoded (and
//!    again for double encoding), when it has backslash escapes it is unescaped, and each
//!    view is scanned again; findings map back to the encoded bytes.
//! 6. **Base64**: segments of 20+ base64 characters with mixed case are decoded; if the
//!    decoded text holds any finding, the whole segment is masked.
//!
//! # Precedence
//! Overlapping findings are merged into one masked span covering all of them (so a value
//! is never partly left). The merged span's type and masking mode are those of its
//! strongest finding: user rules (`[[redact.rules]]`, in file order) first, then field
//! names (built-in and `[[redact.fields]]`), then built-in detectors in [`detectors::BUILTINS`]
//! order, then base64 segments (typed by what they hold), then SQL literals. A span made
//! only of SQL literals becomes `?`.
//!
//! # Allow-list
//! `[[redact.allow]]` entries (a pattern, optionally a type) let through a *finding* whose
//! exact text fully matches the pattern. They never switch a detector off: every allowed
//! finding is shown by `--explain` (`mode=allowed`), and a value that is also found by
//! another, non-allowed rule is still masked.
//!
//! # Fail closed
//! A record longer than `max_record_bytes`, nested deeper than the JSON or decoding limits,
//! or on which the engine panics is not shipped in the clear: it is replaced whole by
//! `[REDACTED:unscannable]` and counted under `unscannable`. Callers log the count, never
//! the text.
//!
//! # Policy hash
//! SHA-256 over a canonical description of everything that decides the output (detectors
//! and their patterns, field names, modes, allow-list, SQL fields, the pseudonymisation key
//! id, the engine version, the legal exceptions and the compliance key id). It goes into
//! each batch header, so an archive shows which rules were in force.
//!
//! # Legal exceptions
//! [`legal`] lifts the fields a declared legal obligation needs out of a matching raw record
//! and seals them to the compliance key; the record itself is redacted here like any other.

pub mod detectors;
pub mod fields;
pub mod json;
pub mod legal;
pub mod mask;
pub mod prefilter;
pub mod sql;
pub mod validate;
pub mod view;

pub use crate::config::Format;
use crate::config::RedactConfig;
use aho_corasick::AhoCorasick;
use mask::{Mode, PseudonymKey};
use regex::Regex;
use std::borrow::Cow;
use std::collections::HashMap;

/// Deepest nesting of decoded views (URL in JSON escape in base64 …).
const MAX_VIEW_DEPTH: usize = 4;
/// Engine version in the policy hash: bump when detection changes.
const ENGINE_VERSION: &str = "logveil-redact/4";
/// Marker type of a record that could not be scanned.
pub const UNSCANNABLE: &str = "unscannable";

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("unknown detector `{0}`; built-in detectors are {list}", list = detector_names().join(", "))]
    UnknownDetector(String),
    #[error("rule {index} (type `{kind}`): bad pattern: {error}")]
    BadPattern {
        index: usize,
        kind: String,
        error: String,
    },
    #[error("`{kind}` is not a valid type: use letters, digits and '_'")]
    BadType { kind: String },
    #[error("allow entry {index}: bad pattern: {error}")]
    BadAllow { index: usize, error: String },
    #[error("type `{kind}`: {error}")]
    BadMode { kind: String, error: String },
    #[error("hash mode needs redact.hash_key: {0}")]
    HashKey(String),
    #[error(transparent)]
    Exception(#[from] legal::LegalError),
}

fn detector_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = detectors::BUILTINS.iter().map(|b| b.rule).collect();
    v.dedup();
    v
}

/// Which rule produced a finding (for `--explain` and precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A built-in detector or a user rule (index into the detector list).
    Detector(u16),
    /// A value under a PII field name.
    Field,
    /// A SQL literal.
    SqlLiteral,
    /// A base64 segment that decodes to text holding PII.
    Base64,
    /// The record could not be scanned.
    Unscannable,
}

/// One thing found: a span of the original text.
#[derive(Debug, Clone)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub kind: usize,
    pub rule: Rule,
    prio: u32,
    /// For field findings: the whole `"key": value` member / `key=value` pair.
    member: Option<(usize, usize)>,
    /// Found in a decoded view (URL, escapes, base64) rather than the raw text.
    pub via_view: bool,
}

/// What `--explain` reports per masked span: never the value.
#[derive(Debug, Clone)]
pub struct Explained {
    pub start: usize,
    pub end: usize,
    pub kind: String,
    pub rule: String,
    pub mode: &'static str,
    pub allowed: bool,
}

/// Count of redactions by type, for one record or many.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(pub Vec<(usize, u32)>);

impl Counts {
    fn add(&mut self, kind: usize) {
        match self.0.iter_mut().find(|(d, _)| *d == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind, 1)),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// The result of redacting one record.
#[derive(Debug)]
pub struct Redacted<'a> {
    pub text: Cow<'a, str>,
    /// A finding's mode is `drop_record`: the record must not be shipped at all.
    pub dropped: bool,
    /// The record could not be scanned and was masked whole.
    pub unscannable: bool,
}

struct Detector {
    kind: usize,
    rule: String,
    regex: Regex,
    group: usize,
    validate: validate::Validator,
    prio: u32,
    /// Built-in detectors only: necessary conditions for the pattern to match.
    gate: Option<prefilter::Gate>,
}

struct Allow {
    kind: Option<usize>,
    regex: Regex,
}

/// The configured engine. Cheap to share between threads (`Arc<Redactor>`).
pub struct Redactor {
    kinds: Vec<String>,
    modes: Vec<Mode>,
    detectors: Vec<Detector>,
    kv: Regex,
    key_hints: AhoCorasick,
    sql_hints: AhoCorasick,
    sql_statement: Regex,
    base64: Regex,
    field_names: HashMap<String, usize>,
    /// Index of the pseudo field type "sql" (values are SQL: strip literals).
    sql_field: usize,
    allow: Vec<Allow>,
    prefilter: prefilter::Prefilter,
    max_record_bytes: usize,
    mask_keep: usize,
    key: Option<PseudonymKey>,
    exceptions: legal::Exceptions,
    policy_hash: [u8; 32],
}

/// Matches `key=value`, `key="value"`, `"key": "value"`, `key => 'value'` and the
/// `\"key\":\"value\"` of JSON-in-a-string. Groups: 1 key; value in 2 (`\"…\"`), 3 (`"…"`),
/// 4 (`'…'`) or 5 (bare, up to a delimiter).
const KV_PATTERN: &str = r#"(?:^|[^A-Za-z0-9_.\-\\])(?:\\?["'])?([A-Za-z_][A-Za-z0-9_.\-]{0,63})(?:\\?["'])?[ \t]*(?:=>|=|:)[ \t]*(?:\\"((?:[^"\\]|\\[^"])*)\\"|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^\s,;&"'\\\[\]{}()<>|]+))"#;

const BASE64_PATTERN: &str = r"(?-u)[A-Za-z0-9+/_\-]{20,}={0,2}";

impl Redactor {
    /// The built-in defaults: every built-in detector, `redact` mode.
    pub fn defaults() -> Self {
        Self::from_config(&RedactConfig::default()).expect("built-in patterns compile")
    }

    pub fn from_config(cfg: &RedactConfig) -> Result<Self, RedactError> {
        let mut kinds: Vec<String> = detectors::TYPES.iter().map(|s| s.to_string()).collect();
        kinds.push(UNSCANNABLE.to_string());
        let kind_of = |kinds: &mut Vec<String>, k: &str| -> Result<usize, RedactError> {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(RedactError::BadType {
                    kind: k.to_string(),
                });
            }
            Ok(match kinds.iter().position(|x| x == k) {
                Some(i) => i,
                None => {
                    kinds.push(k.to_string());
                    kinds.len() - 1
                }
            })
        };
        let mut policy = format!("{ENGINE_VERSION}\n");

        // User rules first: they take precedence over everything built in.
        let mut detectors = Vec::new();
        let mut rule_modes: Vec<(usize, Mode)> = Vec::new();
        for (index, rule) in cfg.rules.iter().enumerate() {
            let kind = kind_of(&mut kinds, &rule.kind)?;
            let regex = Regex::new(&rule.pattern).map_err(|e| RedactError::BadPattern {
                index,
                kind: rule.kind.clone(),
                error: e.to_string(),
            })?;
            if let Some(m) = &rule.mode {
                let mode = Mode::parse(m).map_err(|error| RedactError::BadMode {
                    kind: rule.kind.clone(),
                    error,
                })?;
                rule_modes.push((kind, mode));
            }
            policy.push_str(&format!(
                "rule\t{}\t{}\t{:?}\n",
                rule.kind, rule.pattern, rule.mode
            ));
            detectors.push(Detector {
                kind,
                rule: format!("rule[{index}]"),
                regex,
                group: 0,
                validate: validate::any,
                prio: index as u32,
                gate: None,
            });
        }
        let enabled: Option<&Vec<String>> = cfg.detectors.as_ref();
        if let Some(list) = enabled {
            for name in list {
                if !detectors::BUILTINS
                    .iter()
                    .any(|b| b.rule == name || b.kind == name)
                {
                    return Err(RedactError::UnknownDetector(name.clone()));
                }
            }
        }
        let prefilter = prefilter::Prefilter::new();
        for (i, b) in detectors::BUILTINS.iter().enumerate() {
            if let Some(list) = enabled {
                if !list.iter().any(|n| n == b.rule || n == b.kind) {
                    continue;
                }
            }
            policy.push_str(&format!("builtin\t{}\t{}\t{}\n", b.kind, b.rule, b.pattern));
            detectors.push(Detector {
                kind: kind_of(&mut kinds, b.kind)?,
                rule: b.rule.to_string(),
                regex: Regex::new(b.pattern).expect("built-in patterns compile"),
                group: b.group,
                validate: b.validate,
                prio: 200 + i as u32,
                gate: Some(prefilter.gate(i)),
            });
        }

        let mut field_names = HashMap::new();
        for f in &cfg.fields {
            let kind = kind_of(&mut kinds, &f.kind)?;
            field_names.insert(fields::normalize(&f.name), kind);
            policy.push_str(&format!("field\t{}\t{}\n", f.name, f.kind));
        }
        let sql_field = usize::MAX;
        for f in &cfg.sql_fields {
            field_names.insert(fields::normalize(f), sql_field);
            policy.push_str(&format!("sql_field\t{f}\n"));
        }
        // A field a legal exception keeps is PII by declaration: the `default` record must
        // never hold it in clear, even where no other rule would mask it. Its last path
        // segment names it in JSON, its whole dotted path as a key=value key.
        let mut legal_hints = Vec::new();
        for path in cfg.exceptions.iter().flat_map(|x| &x.fields) {
            let last = path
                .rsplit('.')
                .find(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()));
            for name in [Some(path.as_str()), last].into_iter().flatten() {
                let norm = fields::normalize(name);
                if norm.is_empty()
                    || field_names.contains_key(&norm)
                    || fields::builtin_field_type(&norm).is_some()
                {
                    continue;
                }
                let kind = kind_of(&mut kinds, legal::FIELD_TYPE)?;
                field_names.insert(norm, kind);
                legal_hints.push(name.to_string());
            }
        }

        let mut allow = Vec::new();
        for (index, a) in cfg.allow.iter().enumerate() {
            let kind = match &a.kind {
                Some(k) => Some(kind_of(&mut kinds, k)?),
                None => None,
            };
            let regex =
                Regex::new(&format!("^(?:{})$", a.pattern)).map_err(|e| RedactError::BadAllow {
                    index,
                    error: e.to_string(),
                })?;
            policy.push_str(&format!("allow\t{:?}\t{}\n", a.kind, a.pattern));
            allow.push(Allow { kind, regex });
        }

        let default_mode =
            Mode::parse(&cfg.default_mode).map_err(|error| RedactError::BadMode {
                kind: "default_mode".into(),
                error,
            })?;
        let mut modes = vec![default_mode; kinds.len()];
        for (k, m) in &cfg.modes {
            let kind = kind_of(&mut kinds, k)?;
            modes.resize(kinds.len(), default_mode);
            modes[kind] = Mode::parse(m).map_err(|error| RedactError::BadMode {
                kind: k.clone(),
                error,
            })?;
        }
        modes.resize(kinds.len(), default_mode);
        for (kind, mode) in rule_modes {
            modes[kind] = mode;
        }
        let unscannable = kinds
            .iter()
            .position(|k| k == UNSCANNABLE)
            .expect("built in");
        modes[unscannable] = Mode::Redact;
        let mut sorted_modes: Vec<(String, &str)> = kinds
            .iter()
            .zip(&modes)
            .map(|(k, m)| (k.clone(), m.name()))
            .collect();
        sorted_modes.sort();
        for (k, m) in sorted_modes {
            policy.push_str(&format!("mode\t{k}\t{m}\n"));
        }

        let key = match &cfg.hash_key {
            Some(path) => {
                Some(PseudonymKey::load(path).map_err(|e| RedactError::HashKey(e.to_string()))?)
            }
            None => None,
        };
        if modes.contains(&Mode::Hash) && key.is_none() {
            return Err(RedactError::HashKey(
                "a type uses mode \"hash\" but no key is configured".into(),
            ));
        }
        if let Some(k) = &key {
            policy.push_str(&format!("hash_key\t{}\n", k.id()));
        }
        policy.push_str(&format!(
            "mask_keep\t{}\nmax_record_bytes\t{}\n",
            cfg.mask_keep, cfg.max_record_bytes
        ));
        // Legal exceptions are part of the policy: an archive shows which were in force.
        let exceptions = legal::Exceptions::from_config(cfg)?;
        policy.push_str(&exceptions.policy());

        Ok(Redactor {
            kinds,
            modes,
            detectors,
            prefilter,
            kv: Regex::new(KV_PATTERN).expect("kv pattern compiles"),
            key_hints: AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(
                    fields::KEY_HINTS
                        .iter()
                        .copied()
                        .chain(cfg.fields.iter().map(|f| f.name.as_str()))
                        .chain(cfg.sql_fields.iter().map(String::as_str))
                        .chain(legal_hints.iter().map(String::as_str)),
                )
                .expect("hints compile"),
            sql_hints: AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build([
                    "insert", "update", "delete", "select", "replace", "merge", "upsert", "call",
                    "copy", "with",
                ])
                .expect("hints compile"),
            sql_statement: Regex::new(sql::STATEMENT).expect("sql pattern compiles"),
            base64: Regex::new(BASE64_PATTERN).expect("base64 pattern compiles"),
            field_names,
            sql_field,
            allow,
            max_record_bytes: cfg.max_record_bytes,
            mask_keep: cfg.mask_keep,
            key,
            exceptions,
            policy_hash: crate::envelope::sha256(policy.as_bytes()),
        })
    }

    pub fn policy_hash(&self) -> [u8; 32] {
        self.policy_hash
    }

    /// The declared legal exceptions (see [`legal`]).
    pub fn exceptions(&self) -> &legal::Exceptions {
        &self.exceptions
    }

    /// The type name of type index `index`, as used in markers and counts.
    pub fn kind(&self, index: usize) -> &str {
        &self.kinds[index]
    }

    /// Redacts free text (`format = "plain"`), adding what it replaced to `counts`.
    /// Borrows when nothing matched.
    pub fn redact<'a>(&self, text: &'a str, counts: &mut Counts) -> Cow<'a, str> {
        self.redact_record(text, Format::Plain, counts, None).text
    }

    /// Redacts one record. `explain`, when given, receives one entry per masked (or
    /// allowed) span: positions, types and rules, never values.
    pub fn redact_record<'a>(
        &self,
        text: &'a str,
        format: Format,
        counts: &mut Counts,
        explain: Option<&mut Vec<Explained>>,
    ) -> Redacted<'a> {
        let scanned = if text.len() > self.max_record_bytes {
            Err(ScanLimit)
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut found = Vec::new();
                let mut numbers = Vec::new();
                self.scan(text, format, 0, &mut found, &mut numbers)
                    .map(|_| (found, numbers))
            }))
            .unwrap_or(Err(ScanLimit))
        };
        match scanned {
            Ok((found, numbers)) => self.apply(text, found, &numbers, counts, explain),
            Err(ScanLimit) => {
                let kind = self
                    .kinds
                    .iter()
                    .position(|k| k == UNSCANNABLE)
                    .expect("built in");
                counts.add(kind);
                if let Some(ex) = explain {
                    ex.push(Explained {
                        start: 0,
                        end: text.len(),
                        kind: UNSCANNABLE.into(),
                        rule: "limit".into(),
                        mode: "redact",
                        allowed: false,
                    });
                }
                Redacted {
                    text: Cow::Owned(format!("[REDACTED:{UNSCANNABLE}]")),
                    dropped: false,
                    unscannable: true,
                }
            }
        }
    }

    fn field_type(&self, raw_key: &str) -> Option<usize> {
        let norm = fields::normalize(raw_key);
        if let Some(&k) = self.field_names.get(&norm) {
            return Some(k);
        }
        fields::builtin_field_type(&norm).and_then(|t| self.kinds.iter().position(|k| k == t))
    }

    /// Finds everything in `text` (coordinates of `text`).
    fn scan(
        &self,
        text: &str,
        format: Format,
        depth: usize,
        out: &mut Vec<Finding>,
        numbers: &mut Vec<(usize, usize)>,
    ) -> Result<(), ScanLimit> {
        if depth > MAX_VIEW_DEPTH {
            return Err(ScanLimit);
        }
        let mut json_whole = false;
        // 1. Structured JSON.
        let json_at = match format {
            // Container logs reach the engine unwrapped: their content is read like `auto`.
            Format::Json | Format::Auto | Format::Cri | Format::Docker => {
                let t = text.trim_start();
                if t.starts_with('{') || t.starts_with('[') {
                    Some(text.len() - t.len())
                } else if format != Format::Json {
                    text.find("{\"").or_else(|| text.find("{ \""))
                } else {
                    None
                }
            }
            Format::Plain | Format::Logfmt => None,
        };
        if let Some(at) = json_at {
            let types = FieldLookup(self);
            let mut w = json::Walker::new(text, at, &types);
            let res = w.walk();
            if res == Err(json::JsonError::TooDeep) {
                return Err(ScanLimit);
            }
            json_whole = res.is_ok() && at == 0;
            for leaf in &w.leaves {
                if leaf.kind == json::LeafKind::Num && depth == 0 {
                    numbers.push((leaf.start, leaf.end));
                }
                let value = &text[leaf.start..leaf.end];
                match leaf.field {
                    Some(f) if f.ty == self.sql_field => {
                        self.sql_spans(value, leaf.start, out, true);
                    }
                    Some(f) if !fields::is_empty_value(value) && !fields::already_masked(value) => {
                        out.push(Finding {
                            start: leaf.start,
                            end: leaf.end,
                            kind: f.ty,
                            rule: Rule::Field,
                            prio: 100,
                            member: Some(f.member),
                            via_view: false,
                        });
                    }
                    _ => {}
                }
                if leaf.escaped {
                    self.scan_view(&view::unescape(value), leaf.start, depth, out)?;
                }
            }
        }
        // 2. Key/value pairs.
        if self.key_hints.is_match(text) {
            let mut pos = 0;
            while let Some(c) = self.kv.captures_at(text, pos) {
                pos = c.get(0).expect("group 0 always matches").end();
                let key = c.get(1).expect("group 1 always matches");
                let Some(ty) = self.field_type(key.as_str()) else {
                    // A value may be the next pair's key (`received: name="Jane Roe"`,
                    // `msg: "name"=>"Jane Roe"`): a bare one holding `=` or ending in `:`, a
                    // quoted one followed by `=`/`:`. Look again from the byte before it
                    // (ASCII: a delimiter, space or quote).
                    if let Some(v) = c.get(5) {
                        if v.as_str().contains('=') || v.as_str().ends_with(':') {
                            pos = v.start() - 1;
                        }
                    } else if text[pos..]
                        .trim_start_matches([' ', '\t'])
                        .starts_with(['=', ':'])
                    {
                        let v = c.get(2).or(c.get(3)).or(c.get(4)).expect("one value group");
                        pos = v.start() - 1;
                    }
                    continue;
                };
                let Some(v) = c.get(2).or(c.get(3)).or(c.get(4)).or(c.get(5)) else {
                    continue;
                };
                let value = v.as_str();
                if ty == self.sql_field {
                    self.sql_spans(value, v.start(), out, true);
                    continue;
                }
                if fields::is_empty_value(value) || fields::already_masked(value) {
                    continue;
                }
                if c.get(5).is_some() && fields::code_object_attribute(text, key.start(), value) {
                    continue;
                }
                out.push(Finding {
                    start: v.start(),
                    end: v.end(),
                    kind: ty,
                    rule: Rule::Field,
                    prio: 100,
                    member: Some((
                        key.start(),
                        v.end()
                            + usize::from(
                                text.as_bytes()
                                    .get(v.end())
                                    .is_some_and(|&b| b == b'"' || b == b'\''),
                            ),
                    )),
                    via_view: false,
                });
            }
        }
        // 3. SQL statements.
        self.sql_spans(text, 0, out, false);
        // 4. Detectors.
        self.detect(text, out);
        // 5. Encoded views.
        if view::has_percent_escape(text) {
            self.scan_view(&view::percent_decode(text), 0, depth, out)?;
        }
        if !json_whole && memchr::memchr(b'\\', text.as_bytes()).is_some() {
            let v = view::unescape(text);
            if v.text.len() != text.len() {
                self.scan_view(&v, 0, depth, out)?;
            }
        }
        // 6. Base64 segments.
        for m in self.base64.find_iter(text) {
            let seg = m.as_str();
            let b = seg.as_bytes();
            if !(b.iter().any(u8::is_ascii_uppercase) && b.iter().any(u8::is_ascii_lowercase)) {
                continue;
            }
            let Some(decoded) = view::base64_text(seg) else {
                continue;
            };
            let mut inner = Vec::new();
            let mut nums = Vec::new();
            self.scan(&decoded, Format::Auto, depth + 1, &mut inner, &mut nums)?;
            let inner: Vec<Finding> = inner
                .into_iter()
                .filter(|f| !self.allowed(&decoded, f))
                .collect();
            if let Some(best) = inner.iter().min_by_key(|f| f.prio) {
                out.push(Finding {
                    start: m.start(),
                    end: m.end(),
                    kind: best.kind,
                    rule: Rule::Base64,
                    prio: 400,
                    member: None,
                    via_view: true,
                });
            }
        }
        Ok(())
    }

    fn scan_view(
        &self,
        v: &view::View,
        offset: usize,
        depth: usize,
        out: &mut Vec<Finding>,
    ) -> Result<(), ScanLimit> {
        let mut inner = Vec::new();
        let mut nums = Vec::new();
        self.scan(&v.text, Format::Auto, depth + 1, &mut inner, &mut nums)?;
        for mut f in inner {
            if f.end <= f.start {
                continue;
            }
            let (s, e) = v.raw_span(f.start, f.end);
            f.start = s + offset;
            f.end = e + offset;
            f.member = None;
            f.via_view = true;
            out.push(f);
        }
        Ok(())
    }

    fn sql_spans(&self, text: &str, offset: usize, out: &mut Vec<Finding>, whole_is_sql: bool) {
        if !self.sql_hints.is_match(text) && !whole_is_sql {
            return;
        }
        let mut spans = Vec::new();
        sql::literal_spans(text, &self.sql_statement, &mut spans);
        let kind = self
            .kinds
            .iter()
            .position(|k| k == UNSCANNABLE)
            .expect("built in");
        for (s, e) in spans {
            out.push(Finding {
                start: s + offset,
                end: e + offset,
                kind,
                rule: Rule::SqlLiteral,
                prio: 500,
                member: None,
                via_view: false,
            });
        }
    }

    fn detect(&self, text: &str, out: &mut Vec<Finding>) {
        let seen = self.prefilter.scan(text);
        for (idx, d) in self.detectors.iter().enumerate() {
            if d.gate.is_some_and(|g| !seen.passes(&g)) {
                continue;
            }
            if d.group == 0 {
                // Resume after an accepted span, not after the candidate: a validator may
                // narrow a candidate, and what it left out may hold another finding.
                let mut pos = 0;
                while pos <= text.len() {
                    let Some(m) = d.regex.find_at(text, pos) else {
                        break;
                    };
                    match (d.validate)(text, m.start(), m.end()) {
                        Some((s, e)) => {
                            self.push_detected(out, d, idx, s, e);
                            pos = e.max(m.start() + 1);
                        }
                        None => pos = m.end().max(m.start() + 1),
                    }
                    while pos < text.len() && !text.is_char_boundary(pos) {
                        pos += 1;
                    }
                }
            } else {
                for c in d.regex.captures_iter(text) {
                    if let Some(m) = c.get(d.group) {
                        if let Some((s, e)) = (d.validate)(text, m.start(), m.end()) {
                            self.push_detected(out, d, idx, s, e);
                        }
                    }
                }
            }
        }
    }

    fn push_detected(&self, out: &mut Vec<Finding>, d: &Detector, idx: usize, s: usize, e: usize) {
        if e > s {
            out.push(Finding {
                start: s,
                end: e,
                kind: d.kind,
                rule: Rule::Detector(idx as u16),
                prio: d.prio,
                member: None,
                via_view: false,
            });
        }
    }

    fn allowed(&self, text: &str, f: &Finding) -> bool {
        if self.allow.is_empty() || f.rule == Rule::SqlLiteral {
            return false;
        }
        let value = &text[f.start..f.end];
        self.allow
            .iter()
            .any(|a| a.kind.map_or(true, |k| k == f.kind) && a.regex.is_match(value))
    }

    fn rule_name(&self, f: &Finding) -> String {
        let base = match f.rule {
            Rule::Detector(i) => self.detectors[i as usize].rule.clone(),
            Rule::Field => "field".into(),
            Rule::SqlLiteral => "sql_literal".into(),
            Rule::Base64 => "base64".into(),
            Rule::Unscannable => "limit".into(),
        };
        if f.via_view && f.rule != Rule::Base64 {
            format!("{base}(decoded)")
        } else {
            base
        }
    }

    fn apply<'a>(
        &self,
        text: &'a str,
        mut found: Vec<Finding>,
        numbers: &[(usize, usize)],
        counts: &mut Counts,
        mut explain: Option<&mut Vec<Explained>>,
    ) -> Redacted<'a> {
        if found.is_empty() {
            return Redacted {
                text: Cow::Borrowed(text),
                dropped: false,
                unscannable: false,
            };
        }
        // Clamp spans to char boundaries (views map to whole escapes; be safe anyway).
        for f in &mut found {
            while f.start > 0 && !text.is_char_boundary(f.start) {
                f.start -= 1;
            }
            while f.end < text.len() && !text.is_char_boundary(f.end) {
                f.end += 1;
            }
            f.end = f.end.min(text.len());
        }
        if !self.allow.is_empty() {
            let mut kept = Vec::with_capacity(found.len());
            for f in found {
                if self.allowed(text, &f) {
                    if let Some(ex) = explain.as_deref_mut() {
                        ex.push(Explained {
                            start: f.start,
                            end: f.end,
                            kind: self.kinds[f.kind].clone(),
                            rule: self.rule_name(&f),
                            mode: "allowed",
                            allowed: true,
                        });
                    }
                    continue;
                }
                kept.push(f);
            }
            found = kept;
            if found.is_empty() {
                return Redacted {
                    text: Cow::Borrowed(text),
                    dropped: false,
                    unscannable: false,
                };
            }
        }
        found.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.end.cmp(&a.end))
                .then(a.prio.cmp(&b.prio))
        });
        // Merge overlapping findings into groups.
        struct Group {
            start: usize,
            end: usize,
            best: usize,
            only_sql: bool,
        }
        let mut groups: Vec<Group> = Vec::new();
        for (i, f) in found.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if f.start < g.end => {
                    g.end = g.end.max(f.end);
                    if f.prio < found[g.best].prio {
                        g.best = i;
                    }
                    g.only_sql &= f.rule == Rule::SqlLiteral;
                }
                _ => groups.push(Group {
                    start: f.start,
                    end: f.end,
                    best: i,
                    only_sql: f.rule == Rule::SqlLiteral,
                }),
            }
        }
        let mut edits: Vec<(usize, usize, String)> = Vec::with_capacity(groups.len());
        let mut dropped = false;
        for g in &groups {
            let best = &found[g.best];
            let (mut s, mut e) = (g.start, g.end);
            let mode = if g.only_sql {
                Mode::Redact
            } else {
                self.modes[best.kind]
            };
            if let Some(ex) = explain.as_deref_mut() {
                ex.push(Explained {
                    start: s,
                    end: e,
                    kind: if g.only_sql {
                        "sql_literal".into()
                    } else {
                        self.kinds[best.kind].clone()
                    },
                    rule: self.rule_name(best),
                    mode: mode.name(),
                    allowed: false,
                });
            }
            if !g.only_sql {
                counts.add(best.kind);
            }
            let kind = &self.kinds[best.kind];
            let mut repl = if g.only_sql {
                "?".to_string()
            } else {
                match mode {
                    Mode::Redact => format!("[REDACTED:{kind}]"),
                    Mode::Mask => mask::keep_last(&text[s..e], self.mask_keep),
                    Mode::Hash => self
                        .key
                        .as_ref()
                        .expect("checked at config")
                        .token(kind, &text[s..e]),
                    Mode::DropRecord => {
                        dropped = true;
                        format!("[REDACTED:{kind}]")
                    }
                    Mode::DropField => match best.member {
                        Some((ms, me)) if me > ms => {
                            let (ms, me) = widen_member(text, ms, me);
                            s = ms;
                            e = me;
                            String::new()
                        }
                        _ => format!("[REDACTED:{kind}]"),
                    },
                }
            };
            // A JSON number replaced whole by text must become a string.
            if !repl.is_empty() && !g.only_sql {
                if let Some(&(ns, ne)) = numbers.iter().find(|(ns, ne)| s < *ne && e > *ns) {
                    s = s.min(ns);
                    e = e.max(ne);
                    repl = format!("\"{repl}\"");
                }
            }
            edits.push((s, e, repl));
        }
        if dropped {
            return Redacted {
                text: Cow::Borrowed(""),
                dropped: true,
                unscannable: false,
            };
        }
        edits.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for (s, e, repl) in edits {
            if s < pos {
                // Inside a dropped member already removed, or overlapping after widening.
                if e > pos {
                    pos = e;
                }
                continue;
            }
            out.push_str(&text[pos..s]);
            out.push_str(&repl);
            pos = e;
        }
        out.push_str(&text[pos..]);
        Redacted {
            text: Cow::Owned(out),
            dropped: false,
            unscannable: false,
        }
    }
}

/// Extends a member span to take one separating comma (JSON) or the spaces before a
/// `key=value` pair, so removing it leaves a well-formed document.
fn widen_member(text: &str, s: usize, e: usize) -> (usize, usize) {
    let b = text.as_bytes();
    let mut j = e;
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    if j < b.len() && b[j] == b',' {
        j += 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        return (s, j);
    }
    let mut i = s;
    while i > 0 && b[i - 1] == b' ' {
        i -= 1;
    }
    if i > 0 && b[i - 1] == b',' {
        return (i - 1, e);
    }
    (i, e)
}

/// A record could not be scanned within the limits.
#[derive(Debug)]
struct ScanLimit;

struct FieldLookup<'a>(&'a Redactor);

impl json::FieldTypes for FieldLookup<'_> {
    fn field_type(&self, raw_key: &str) -> Option<usize> {
        self.0.field_type(raw_key)
    }
}

/// A path for the agent's own log lines, with the built-in detectors applied: file names
/// can hold PII (per-customer exports), and the agent's logs must not.
pub fn safe_path(path: &std::path::Path) -> String {
    static DEFAULTS: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    let red = DEFAULTS.get_or_init(Redactor::defaults);
    red.redact(&path.to_string_lossy(), &mut Counts::default())
        .into_owned()
}

#[cfg(test)]
mod tests;
