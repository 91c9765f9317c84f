//! Configuration: TOML files for the agent (`logveil run`) and the central store
//! (`logveil receive`).
//!
//! Raw structs mirror the file (serde, `deny_unknown_fields`, named defaults); `validate`
//! turns them into the settings the program runs on. Every error names the file, the line
//! and the key. Nothing is bound or opened before a config has validated.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod agent;
mod receiver;

pub use agent::*;
pub use receiver::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Which program a config file is for, told by its top-level tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Agent,
    Receiver,
}

pub fn kind_of(text: &str) -> ConfigKind {
    match text.parse::<toml::Table>() {
        Ok(t) if t.contains_key("receiver") => ConfigKind::Receiver,
        _ => ConfigKind::Agent,
    }
}

/// A loaded config file: its text, for locating keys in error messages.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let line = e.span().map(|s| self.line_of(s.start)).unwrap_or(1);
            let key = e
                .span()
                .map(|s| key_at(self.text, s.start))
                .unwrap_or_default();
            ConfigError::Invalid {
                path: self.path.to_path_buf(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// An error for the key at `dotted` (such as `sink.batch_max_bytes` or
    /// `sources.2.include`), with the line it is on.
    pub fn error(&self, dotted: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.locate(dotted).unwrap_or(1),
            key: dotted.to_string(),
            message: message.into(),
        }
    }

    fn locate(&self, dotted: &str) -> Option<usize> {
        let doc = toml_edit::ImDocument::parse(self.text).ok()?;
        let mut table: &dyn toml_edit::TableLike = doc.as_table();
        let mut pending: Option<&toml_edit::ArrayOfTables> = None;
        let mut span = None;
        for part in dotted.split('.') {
            if let Some(array) = pending.take() {
                let entry = array.get(part.parse::<usize>().ok()?)?;
                span = entry.span().or(span);
                table = entry;
                continue;
            }
            // A key that is missing (a required one not given) points at its table.
            let Some((key, value)) = table.get_key_value(part) else {
                break;
            };
            span = key.span().or(span);
            if let Some(array) = value.as_array_of_tables() {
                pending = Some(array);
            } else if let Some(t) = value.as_table_like() {
                table = t;
            }
        }
        span.map(|s| self.line_of(s.start))
    }
}

/// The dotted key around `offset` (`sink.batch_max_wait`, `sources.1.include`), for parse
/// errors that point at a key or a value: the key on that line, prefixed by the table
/// header above it.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[start..].split('\n').next().unwrap_or("");
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    let key = match line.split_once('=') {
        Some((k, _)) => k.trim(),
        None => trimmed,
    };
    // The nearest table header above, and for arrays of tables which entry it is.
    let before = &text[..start];
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    match header {
        Some(h) if h.starts_with("[[") => {
            let name = h.trim_matches(|c| c == '[' || c == ']').trim();
            let index = before
                .lines()
                .filter(|l| l.trim() == h)
                .count()
                .saturating_sub(1);
            format!("{name}.{index}.{key}")
        }
        Some(h) => format!("{}.{key}", h.trim_matches(|c| c == '[' || c == ']').trim()),
        None => key.to_string(),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Deserializes a human duration such as `"250ms"`, `"1s"` or `"5m"`.
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration ({e}); write it like \"500ms\", \"1s\" or \"5m\""
        ))
    })
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address for Prometheus `/metrics` and `/health`; off when absent.
    pub listen: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_finds_the_key_of_a_line() {
        let text = "[sink]\nurl = \"x\"\nbatch_max_wait = \"soon\"\n[[sources]]\nname = 1\n[[sources]]\nname = 2\n";
        let off = text.find("soon").unwrap();
        assert_eq!(key_at(text, off), "sink.batch_max_wait");
        let off = text.find("name = 2").unwrap();
        assert_eq!(key_at(text, off), "sources.1.name");
    }
}
