//! Redaction: finds PII in a line's text and replaces each finding with `[REDACTED:<type>]`.
//!
//! Runs on the agent before a record is buffered, shipped or logged. The engine is a list
//! of [`Detector`]s — a pattern plus a validator that cuts false positives (Luhn for cards,
//! octet ranges for IPv4, number rules for SSNs) — behind one [`regex::RegexSet`] pass that
//! tells which detectors can match at all, so a clean line costs one scan.
//!
//! Precedence when findings overlap: the one that starts first wins; at the same start the
//! longer one wins; at equal length the detector listed first wins (built-ins in the order
//! of [`BUILTIN`], then `[[redact.rules]]` in file order). Replaced spans never overlap.
//!
//! Every configuration has a policy hash (SHA-256 over the detectors' names and patterns)
//! that goes into each batch header, so an archive shows which rules were in force.

use crate::config::RedactConfig;
use regex::{Regex, RegexSet};
use std::borrow::Cow;

mod validate;

/// A detector: a candidate pattern and a validator for its matches.
struct Detector {
    kind: String,
    regex: Regex,
    validate: validate::Validator,
}

/// The built-in detectors, in precedence order: (type, pattern, validator).
type Builtin = (&'static str, &'static str, validate::Validator);

pub const BUILTIN: &[&str] = &["email", "card", "ssn", "phone", "ipv4"];

fn builtin(kind: &str) -> Option<Builtin> {
    Some(match kind {
        "email" => (
            "email",
            r"(?i-u:[a-z0-9._%+\-]+@(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})",
            validate::email,
        ),
        "card" => ("card", r"(?-u:\d(?:[ \-]?\d){12,18})", validate::card),
        "ssn" => ("ssn", r"(?-u:\d{3}([\- ])\d{2}[\- ]\d{4})", validate::ssn),
        "phone" => ("phone", r"(?-u:\+[1-9]\d{7,14})", validate::phone_e164),
        "ipv4" => (
            "ipv4",
            r"(?-u:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})",
            validate::ipv4,
        ),
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("unknown detector `{0}`; built-in detectors are {list}", list = BUILTIN.join(", "))]
    UnknownDetector(String),
    #[error("rule {index} (type `{kind}`): bad pattern: {error}")]
    BadPattern {
        index: usize,
        kind: String,
        error: String,
    },
    #[error("rule {index}: type `{kind}` must be letters, digits and '_'")]
    BadType { index: usize, kind: String },
}

/// The configured detectors.
pub struct Redactor {
    set: RegexSet,
    detectors: Vec<Detector>,
    policy_hash: [u8; 32],
}

/// Count of redactions by type, for one line or many.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(pub Vec<(usize, u32)>);

impl Counts {
    fn add(&mut self, detector: usize) {
        match self.0.iter_mut().find(|(d, _)| *d == detector) {
            Some((_, n)) => *n += 1,
            None => self.0.push((detector, 1)),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl Redactor {
    /// The built-in defaults: every detector in [`BUILTIN`].
    pub fn defaults() -> Self {
        Self::from_config(&RedactConfig::default()).expect("built-in patterns compile")
    }

    pub fn from_config(cfg: &RedactConfig) -> Result<Self, RedactError> {
        let mut detectors = Vec::new();
        let names: Vec<String> = match &cfg.detectors {
            Some(list) => list.clone(),
            None => BUILTIN.iter().map(|s| s.to_string()).collect(),
        };
        for name in &names {
            let (kind, pattern, validate) =
                builtin(name).ok_or_else(|| RedactError::UnknownDetector(name.clone()))?;
            detectors.push(Detector {
                kind: kind.to_string(),
                regex: Regex::new(pattern).expect("built-in patterns compile"),
                validate,
            });
        }
        for (index, rule) in cfg.rules.iter().enumerate() {
            if rule.kind.is_empty()
                || !rule
                    .kind
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(RedactError::BadType {
                    index,
                    kind: rule.kind.clone(),
                });
            }
            let regex = Regex::new(&rule.pattern).map_err(|e| RedactError::BadPattern {
                index,
                kind: rule.kind.clone(),
                error: e.to_string(),
            })?;
            if regex.is_match("") {
                return Err(RedactError::BadPattern {
                    index,
                    kind: rule.kind.clone(),
                    error: "the pattern matches the empty string".into(),
                });
            }
            detectors.push(Detector {
                kind: rule.kind.clone(),
                regex,
                validate: validate::any,
            });
        }
        let set = RegexSet::new(detectors.iter().map(|d| d.regex.as_str()))
            .expect("each pattern compiled on its own");
        let mut policy = String::from("logveil-redact-policy/v1\n");
        for d in &detectors {
            policy.push_str(&format!("{}\t{}\n", d.kind, d.regex.as_str()));
        }
        Ok(Redactor {
            set,
            detectors,
            policy_hash: crate::envelope::sha256(policy.as_bytes()),
        })
    }

    pub fn policy_hash(&self) -> [u8; 32] {
        self.policy_hash
    }

    /// The type name of detector `index`, as used in markers and counts.
    pub fn kind(&self, index: usize) -> &str {
        &self.detectors[index].kind
    }

    /// Redacts `text`, adding what it replaced to `counts`. Borrows when nothing matched.
    pub fn redact<'a>(&self, text: &'a str, counts: &mut Counts) -> Cow<'a, str> {
        let hits = self.set.matches(text);
        if !hits.matched_any() {
            return Cow::Borrowed(text);
        }
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        for idx in hits.iter() {
            let d = &self.detectors[idx];
            // Resume after an accepted span, not after the candidate: a validator may
            // narrow a candidate, and what it left out may hold another finding.
            let mut pos = 0;
            while let Some(m) = d.regex.find_at(text, pos) {
                match (d.validate)(text, m.start(), m.end()) {
                    Some((s, e)) => {
                        found.push((s, e, idx));
                        pos = e.max(m.start() + 1);
                    }
                    None => pos = m.end().max(m.start() + 1),
                }
                if pos > text.len() {
                    break;
                }
                while !text.is_char_boundary(pos) {
                    pos += 1;
                }
            }
        }
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for (s, e, idx) in found {
            if s < pos {
                continue;
            }
            out.push_str(&text[pos..s]);
            out.push_str("[REDACTED:");
            out.push_str(&self.detectors[idx].kind);
            out.push(']');
            counts.add(idx);
            pos = e;
        }
        out.push_str(&text[pos..]);
        Cow::Owned(out)
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
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        Redactor::defaults()
            .redact(s, &mut Counts::default())
            .into_owned()
    }

    #[test]
    fn each_default_type_is_replaced_by_its_marker() {
        assert_eq!(
            r("mail jane.doe+x@example.co.uk now"),
            "mail [REDACTED:email] now"
        );
        assert_eq!(r("card 4111 1111 1111 1111 ok"), "card [REDACTED:card] ok");
        assert_eq!(r("card 4111-1111-1111-1111"), "card [REDACTED:card]");
        assert_eq!(r("qty 2 4111 1111 1111 1111"), "qty 2 [REDACTED:card]");
        assert_eq!(r("n 12 4111111111111111"), "n 12 [REDACTED:card]");
        assert_eq!(
            r("order 1234 4111-1111-1111-1111 ok"),
            "order 1234 [REDACTED:card] ok"
        );
        assert_eq!(
            r("cards 4111111111111111 5500000000000004"),
            "cards [REDACTED:card] [REDACTED:card]"
        );
        assert_eq!(
            r("cc 4111 1111 1111 1111 5500 0000 0000 0004"),
            "cc [REDACTED:card] [REDACTED:card]"
        );
        assert_eq!(r("tel +14155550123."), "tel [REDACTED:phone].");
        assert_eq!(r("from 10.61.43.43:22"), "from [REDACTED:ipv4]:22");
        assert_eq!(r("ssn 641-31-9853"), "ssn [REDACTED:ssn]");
    }

    #[test]
    fn look_alikes_are_left_alone() {
        for s in [
            "ref 4111111111111112 failed luhn",
            "build 1.2.300.4000",
            "version 10.2.3.4.5",
            "Mozilla/5.0 AppleWebKit/537.36 Chrome/124.0.0.0 Safari/537.36",
            "ssn-like 000-12-3456 and 666-12-3456",
            "id 1234567890123",
            "ts 2024-05-11T03:12:34.501Z",
            "java.lang.Object@6d06d69c",
            "uuid 123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert_eq!(r(s), s);
        }
    }

    #[test]
    fn counts_are_by_type() {
        let red = Redactor::defaults();
        let mut c = Counts::default();
        red.redact("a@b.io c@d.io 1.2.3.4", &mut c);
        let by: Vec<(&str, u32)> = c.0.iter().map(|(i, n)| (red.kind(*i), *n)).collect();
        assert!(by.contains(&("email", 2)));
        assert!(by.contains(&("ipv4", 1)));
    }

    #[test]
    fn custom_rules_apply_and_change_the_policy_hash() {
        let cfg = RedactConfig {
            detectors: None,
            rules: vec![crate::config::RuleConfig {
                kind: "employee_id".into(),
                pattern: r"EMP-\d{6}".into(),
            }],
        };
        let red = Redactor::from_config(&cfg).unwrap();
        assert_eq!(
            red.redact("by EMP-123456", &mut Counts::default()),
            "by [REDACTED:employee_id]"
        );
        assert_ne!(red.policy_hash(), Redactor::defaults().policy_hash());
    }
}
