//! Masking modes, chosen per type (`[redact.modes]`) or per rule (`mode = …`):
//!
//! | mode          | what replaces the span                                          |
//! |---------------|-----------------------------------------------------------------|
//! | `redact`      | `[REDACTED:<type>]` (the default)                               |
//! | `mask`        | `*` for every character but the last `mask_keep` (default 4)    |
//! | `hash`        | `[HASH:<type>:<key id>:<32 hex>]`: HMAC-SHA-256 keyed with the   |
//! |               | fleet's pseudonymisation key over `<type>\0<value>`, truncated  |
//! |               | to 128 bits. Same value, same key → same token on every host.   |
//! | `drop_field`  | the whole field (`"key": value` with its comma, `key=value`);    |
//! |               | a value found outside a field falls back to `redact`            |
//! | `drop_record` | the record is not shipped at all (counted)                      |
//!
//! The pseudonymisation key file is one line `logveil-hmac-secret <base64 of 32 bytes>`
//! (mode 0600), made by `logveil keygen --pseudonym` and distributed to the fleet like the
//! signing keys. Its id is the first 8 bytes of SHA-256 over `logveil-hmac-key-id\0<key>`,
//! in hex: it names the key without helping anyone guess it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

const TAG: &str = "logveil-hmac-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Redact,
    Mask,
    Hash,
    DropField,
    DropRecord,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "redact" => Mode::Redact,
            "mask" => Mode::Mask,
            "hash" => Mode::Hash,
            "drop_field" => Mode::DropField,
            "drop_record" => Mode::DropRecord,
            other => {
                return Err(format!(
                    "unknown mode `{other}`: use redact, mask, hash, drop_field or drop_record"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Redact => "redact",
            Mode::Mask => "mask",
            Mode::Hash => "hash",
            Mode::DropField => "drop_field",
            Mode::DropRecord => "drop_record",
        }
    }
}

/// `*` for every character except the last `keep`.
pub fn keep_last(value: &str, keep: usize) -> String {
    let n = value.chars().count();
    let keep = keep.min(n / 2);
    let mut out: String = "*".repeat(n - keep);
    out.extend(value.chars().skip(n - keep));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read pseudonymisation key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pseudonymisation key {path} is malformed: expected one line `{TAG} <base64 of 32 bytes>`"
    )]
    Malformed { path: PathBuf },
    #[error("cannot write pseudonymisation key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The fleet's HMAC key for `hash` mode.
pub struct PseudonymKey {
    key: [u8; 32],
    id: String,
}

impl PseudonymKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let mut idsrc = b"logveil-hmac-key-id\0".to_vec();
        idsrc.extend_from_slice(&key);
        let id = hex::encode(&crate::envelope::sha256(&idsrc)[..8]);
        PseudonymKey { key, id }
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = || KeyFileError::Malformed {
            path: path.to_path_buf(),
        };
        let b64 = text.trim().strip_prefix(TAG).ok_or_else(bad)?.trim();
        let bytes = B64.decode(b64).map_err(|_| bad())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self::from_bytes(key))
    }

    /// Writes a new random key to `path` (0600, refusing to overwrite).
    pub fn generate(path: &Path) -> Result<Self, KeyFileError> {
        use rand::RngCore;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let err = |source| KeyFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        writeln!(f, "{TAG} {}", B64.encode(key)).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(Self::from_bytes(key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `[HASH:<type>:<key id>:<hex>]`.
    pub fn token(&self, kind: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("[HASH:{kind}:{}:{}]", self.id, hex::encode(&tag[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tokens_are_stable_per_key_and_differ_across_keys() {
        let a = PseudonymKey::from_bytes([1; 32]);
        let b = PseudonymKey::from_bytes([2; 32]);
        assert_eq!(a.token("email", "x@y.io"), a.token("email", "x@y.io"));
        assert_ne!(a.token("email", "x@y.io"), b.token("email", "x@y.io"));
        assert_ne!(a.token("email", "x@y.io"), a.token("email", "z@y.io"));
        assert!(a
            .token("email", "x@y.io")
            .starts_with(&format!("[HASH:email:{}:", a.id())));
    }

    #[test]
    fn mask_keeps_only_the_tail() {
        assert_eq!(keep_last("4111111111111111", 4), "************1111");
        assert_eq!(keep_last("abc", 4), "**c");
    }
}
