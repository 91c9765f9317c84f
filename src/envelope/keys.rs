//! Ed25519 key files.
//!
//! - `agent.key`: one line `logveil-ed25519-secret <base64 of the 32-byte seed>`, mode 0600.
//! - `agent.pub`: one line `logveil-ed25519 <base64 of the 32-byte public key>`.
//!
//! A key id is the first 8 bytes of SHA-256 over the public key, in hex. It goes into every
//! envelope header so a verifier can tell which enrolled key a batch claims.
//!
//! The central store's trusted keys directory ([`trusted_keys`]) may hold several keys per
//! host, for rotation, and keeps revoked keys so what they signed stays verifiable:
//!
//! ```text
//! <trusted_keys_dir>/<host_id>.pub                 a key of the host (the simple case)
//! <trusted_keys_dir>/<host_id>/<any name>.pub      more keys of the host (rotation)
//! ... .pub.revoked                                 the same, revoked: new batches signed
//!                                                  with it are refused, old ones verify
//! ```
//! The store's own ledger key is an ordinary pair made by `logveil keygen`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const SECRET_TAG: &str = "logveil-ed25519-secret";
const PUBLIC_TAG: &str = "logveil-ed25519";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is malformed: expected one line `{tag} <base64 of 32 bytes>`")]
    Malformed { path: PathBuf, tag: &'static str },
    #[error("key file {path} is not a valid Ed25519 public key")]
    BadPoint { path: PathBuf },
}

pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&super::sha256(key.as_bytes())[..8])
}

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Writes `agent.key` (0600, refusing to overwrite) and `agent.pub` into `dir`.
pub fn write_pair(dir: &Path, key: &SigningKey) -> Result<(PathBuf, PathBuf), KeyError> {
    write_named_pair(dir, "agent", key)
}

/// Writes `<name>.key` (0600, refusing to overwrite) and `<name>.pub` into `dir`.
pub fn write_named_pair(
    dir: &Path,
    name: &str,
    key: &SigningKey,
) -> Result<(PathBuf, PathBuf), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let write = |path: &Path, text: String, mode: u32| -> Result<(), KeyError> {
        let err = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    };
    write(
        &secret,
        format!("{SECRET_TAG} {}\n", B64.encode(key.to_bytes())),
        0o600,
    )?;
    write(&public, public_key_line(&key.verifying_key()), 0o644)?;
    Ok((secret, public))
}

pub fn public_key_line(key: &VerifyingKey) -> String {
    format!("{PUBLIC_TAG} {}\n", B64.encode(key.as_bytes()))
}

fn read_tagged(path: &Path, tag: &'static str) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let malformed = || KeyError::Malformed {
        path: path.to_path_buf(),
        tag,
    };
    let mut parts = text.split_whitespace();
    if parts.next() != Some(tag) {
        return Err(malformed());
    }
    let b64 = parts.next().ok_or_else(malformed)?;
    if parts.next().is_some() {
        return Err(malformed());
    }
    let bytes = B64.decode(b64).map_err(|_| malformed())?;
    bytes.try_into().map_err(|_| malformed())
}

/// One key enrolled for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub key: VerifyingKey,
    pub key_id: String,
    pub revoked: bool,
    pub path: PathBuf,
}

const REVOKED_SUFFIX: &str = ".pub.revoked";

/// Every key enrolled for `host` under `dir` (see the module doc), sorted by path. An absent
/// file or directory is no key; an unreadable or malformed key file is an error. `host` must
/// be a safe identifier (envelope decoding guarantees it).
pub fn trusted_keys(dir: &Path, host: &str) -> Result<Vec<TrustedKey>, KeyError> {
    let mut candidates = vec![
        (dir.join(format!("{host}.pub")), false),
        (dir.join(format!("{host}{REVOKED_SUFFIX}")), true),
    ];
    let host_dir = dir.join(host);
    match std::fs::read_dir(&host_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|source| KeyError::Read {
                    path: host_dir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(REVOKED_SUFFIX) {
                    candidates.push((entry.path(), true));
                } else if name.ends_with(".pub") {
                    candidates.push((entry.path(), false));
                }
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) => {}
        Err(source) => {
            return Err(KeyError::Read {
                path: host_dir,
                source,
            })
        }
    }
    let mut out = Vec::new();
    for (path, revoked) in candidates {
        match load_verifying_key(&path) {
            Ok(key) => out.push(TrustedKey {
                key_id: key_id(&key),
                key,
                revoked,
                path,
            }),
            Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_tagged(path, SECRET_TAG)?))
}

pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_tagged(path, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPoint {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_pair_loads_back_and_secret_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate();
        let (secret, public) = write_pair(dir.path(), &key).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_signing_key(&secret).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(load_verifying_key(&public).unwrap(), key.verifying_key());
        assert!(write_pair(dir.path(), &key).is_err(), "must not overwrite");
    }

    #[test]
    fn a_host_may_hold_several_keys_and_revoked_ones_stay_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new, other) = (generate(), generate(), generate());
        let line = |k: &SigningKey| public_key_line(&k.verifying_key());
        std::fs::write(dir.path().join("web-1.pub.revoked"), line(&old)).unwrap();
        std::fs::create_dir(dir.path().join("web-1")).unwrap();
        std::fs::write(dir.path().join("web-1/2025.pub"), line(&new)).unwrap();
        std::fs::write(dir.path().join("web-1/notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join("web-10.pub"), line(&other)).unwrap();
        let keys = trusted_keys(dir.path(), "web-1").unwrap();
        let summary: Vec<_> = keys.iter().map(|k| (k.key, k.revoked)).collect();
        assert_eq!(
            summary,
            [(new.verifying_key(), false), (old.verifying_key(), true)]
        );
        assert_eq!(keys[0].key_id, key_id(&new.verifying_key()));
        assert!(trusted_keys(dir.path(), "web-2").unwrap().is_empty());
        std::fs::write(dir.path().join("web-1/bad.pub"), "nope").unwrap();
        assert!(trusted_keys(dir.path(), "web-1").is_err());
    }
}
