//! Ed25519 key files.
//!
//! - `agent.key`: one line `logveil-ed25519-secret <base64 of the 32-byte seed>`, mode 0600.
//! - `agent.pub`: one line `logveil-ed25519 <base64 of the 32-byte public key>`.
//!
//! A key id is the first 8 bytes of SHA-256 over the public key, in hex. It goes into every
//! envelope header so a verifier can tell which enrolled key a batch claims.

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
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let secret = dir.join("agent.key");
    let public = dir.join("agent.pub");
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
}
