//! Declared gaps: a host's signed statement that seqs `from..=to` of one of its chains will
//! never arrive (its buffer lost them), so the chain may continue at `to + 1`.
//!
//! The store never skips a seq on its own: a batch past the tip is refused with 409
//! `seq_gap` and `expected_seq`, and the agent resends from there. Only when the agent cannot
//! (the batches are gone) does it sign a statement and `POST /v1/gaps`:
//!
//! ```text
//! body      = {"statement": base64(statement), "sig": base64(Ed25519 signature)}
//! statement = JSON {"host","stream","chain" (32 hex),"key_id","from","to",
//!                   "link" (64 hex: the prev_hash batch to+1 carries),"reason"}
//! signature = Ed25519(host key, "logveil/gap/v1" 0x00 || statement bytes)
//! ```
//! The store accepts it only if the key is one of the host's unrevoked keys, the signature
//! holds, and `from` is exactly the chain's next expected seq. It then writes a `gap` entry
//! (with the statement and signature, so an auditor can check who declared it) to the
//! custody ledger, raises an alert (an ERROR log line with `alert = "custody_gap"`), and
//! moves the chain's tip to `(to, link)`. `logveil verify` accepts the hole only with that
//! ledger entry and a valid host signature.

use crate::envelope::{is_safe_identifier, Hash};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

pub const GAPS_PATH: &str = "/v1/gaps";
pub const SIGNATURE_DOMAIN: &[u8] = b"logveil/gap/v1\0";
/// Largest gap one statement may declare.
pub const MAX_GAP: u64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapStatement {
    pub host: String,
    pub stream: String,
    pub chain: String,
    pub key_id: String,
    pub from: u64,
    pub to: u64,
    pub link: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapRequest {
    pub statement: String,
    pub sig: String,
}

/// A decoded statement with its raw bytes and signature.
#[derive(Debug, Clone)]
pub struct SignedGap {
    pub statement: GapStatement,
    pub chain_id: [u8; 16],
    pub link: Hash,
    pub raw: Vec<u8>,
    pub sig: [u8; 64],
}

impl GapStatement {
    /// Signs the statement (the agent's side).
    pub fn sign(&self, key: &SigningKey) -> GapRequest {
        let raw = serde_json::to_vec(self).expect("statements serialize");
        let mut msg = SIGNATURE_DOMAIN.to_vec();
        msg.extend_from_slice(&raw);
        GapRequest {
            statement: B64.encode(&raw),
            sig: B64.encode(key.sign(&msg).to_bytes()),
        }
    }
}

/// Decodes a request body and checks its shape (not the signature).
pub fn decode(body: &[u8]) -> Result<SignedGap, String> {
    let req: GapRequest =
        serde_json::from_slice(body).map_err(|e| format!("body is not a gap request: {e}"))?;
    decode_parts(&req.statement, &req.sig)
}

/// Decodes the base64 statement and signature as stored in a request or ledger entry.
pub fn decode_parts(statement_b64: &str, sig_b64: &str) -> Result<SignedGap, String> {
    let raw = B64
        .decode(statement_b64)
        .map_err(|_| "statement is not base64")?;
    let sig: [u8; 64] = B64
        .decode(sig_b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("sig is not base64 of 64 bytes")?;
    let statement: GapStatement =
        serde_json::from_slice(&raw).map_err(|e| format!("statement does not parse: {e}"))?;
    if !is_safe_identifier(&statement.host) || !is_safe_identifier(&statement.stream) {
        return Err("host or stream is not a safe identifier".into());
    }
    let chain_id: [u8; 16] = hex::decode(&statement.chain)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("chain is not 32 hex digits")?;
    let link: Hash = hex::decode(&statement.link)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("link is not 64 hex digits")?;
    if statement.from == 0
        || statement.to < statement.from
        || statement.to - statement.from >= MAX_GAP
    {
        return Err("from..=to is not a valid range".into());
    }
    if statement.reason.len() > 1024 {
        return Err("reason is longer than 1024 bytes".into());
    }
    Ok(SignedGap {
        statement,
        chain_id,
        link,
        raw,
        sig,
    })
}

impl SignedGap {
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let mut msg = SIGNATURE_DOMAIN.to_vec();
        msg.extend_from_slice(&self.raw);
        key.verify(&msg, &Signature::from_bytes(&self.sig)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> GapStatement {
        GapStatement {
            host: "web-1".into(),
            stream: "default".into(),
            chain: "01".repeat(16),
            key_id: "k".into(),
            from: 3,
            to: 5,
            link: "ab".repeat(32),
            reason: "buffer wiped".into(),
        }
    }

    #[test]
    fn a_signed_statement_decodes_and_verifies_only_with_its_key() {
        let key = crate::envelope::keys::generate();
        let req = statement().sign(&key);
        let body = serde_json::to_vec(&req).unwrap();
        let gap = decode(&body).unwrap();
        assert_eq!(gap.statement, statement());
        assert_eq!(gap.chain_id, [1; 16]);
        assert!(gap.verify(&key.verifying_key()));
        assert!(!gap.verify(&crate::envelope::keys::generate().verifying_key()));
    }

    #[test]
    fn bad_ranges_and_names_are_refused() {
        let key = crate::envelope::keys::generate();
        for edit in [
            |s: &mut GapStatement| s.from = 0,
            |s: &mut GapStatement| s.to = 2,
            |s: &mut GapStatement| s.host = "../../etc".into(),
            |s: &mut GapStatement| s.chain = "zz".into(),
        ] {
            let mut s = statement();
            edit(&mut s);
            let body = serde_json::to_vec(&s.sign(&key)).unwrap();
            assert!(decode(&body).is_err(), "{s:?}");
        }
        assert!(decode(b"{}").is_err());
    }
}
