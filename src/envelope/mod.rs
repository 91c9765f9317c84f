//! The batch envelope: logveil's wire and archive format.
//!
//! One envelope is one sealed batch of records from one host and one stream. It is
//! self-contained: with only the host's Ed25519 public key, anyone can check that the
//! header was signed by that host, that the payload is the one the header names, and
//! how the envelope links to the previous one of its chain. docs/FORMAT.md is the
//! byte-for-byte specification; this module is its only implementation.
//!
//! ```text
//! envelope  = magic "LVB1" | header_len u32be | header | signature [64] | payload
//! signature = Ed25519(key, "logveil/batch/v1\0" | header)
//! link      = SHA-256(header | signature)      (a tombstone links as `refused_link`)
//! ```
//!
//! Invariants the decoder enforces, so nothing downstream has to:
//! - every length is explicit and checked against the bytes present; trailing bytes
//!   are an error, so one envelope has exactly one encoding;
//! - host ids and streams are safe path components (`[A-Za-z0-9._-]`, no leading dot);
//! - the header is at most [`MAX_HEADER_LEN`] bytes.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

pub mod keys;

pub const MAGIC: &[u8; 4] = b"LVB1";
pub const FORMAT_VERSION: u8 = 1;
pub const SIGNATURE_DOMAIN: &[u8] = b"logveil/batch/v1\0";
pub const MAX_HEADER_LEN: usize = 64 * 1024;
/// `prev_hash` of the first envelope (seq 1) of every chain.
pub const GENESIS_PREV_HASH: [u8; 32] = [0; 32];

pub type Hash = [u8; 32];

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A batch of records.
    Data,
    /// Takes the seq of a batch the central store refused for good; records the loss.
    Tombstone,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Tombstone => 2,
        }
    }
    fn from_code(code: u8) -> Result<Self, DecodeError> {
        match code {
            1 => Ok(Kind::Data),
            2 => Ok(Kind::Tombstone),
            other => Err(DecodeError::BadKind(other)),
        }
    }
}

/// The signed part of an envelope. Field order here is the encoding order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub host_id: String,
    pub key_id: String,
    pub stream: String,
    pub chain_id: [u8; 16],
    pub seq: u64,
    pub prev_hash: Hash,
    pub payload_sha256: Hash,
    pub payload_len: u64,
    pub decompressed_len: u64,
    pub record_count: u64,
    /// Unix time in nanoseconds of the first and last record (0 when empty).
    pub first_ts_ns: i64,
    pub last_ts_ns: i64,
    pub policy_hash: Hash,
    /// Tombstones: the link hash of the refused envelope (zero for data).
    pub refused_link: Hash,
    /// Tombstones: the payload hash of the refused envelope (zero for data).
    pub refused_payload_sha256: Hash,
    /// Tombstones: why the store refused the batch (empty for data).
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("envelope is truncated: {0}")]
    Truncated(&'static str),
    #[error("envelope does not start with the logveil magic bytes")]
    BadMagic,
    #[error("unsupported envelope format version {0}")]
    BadVersion(u8),
    #[error("unknown envelope kind {0}")]
    BadKind(u8),
    #[error("header length {0} exceeds the limit")]
    HeaderTooLong(usize),
    #[error("header field {0} is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("header field {field} is not a safe identifier")]
    BadIdentifier { field: &'static str },
    #[error("{0} trailing bytes after the header fields")]
    TrailingHeaderBytes(usize),
    #[error("payload length is {actual} bytes, the header says {declared}")]
    PayloadLength { declared: u64, actual: u64 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("key id {actual} does not match the host's enrolled key {expected}")]
    KeyId { expected: String, actual: String },
    #[error("signature does not verify")]
    Signature,
    #[error("payload SHA-256 does not match the header")]
    PayloadHash,
}

/// Whether `s` can name a host or stream: it becomes a directory name in the archive.
pub fn is_safe_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Header {
    /// The canonical encoding that is signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320 + self.host_id.len() + self.reason.len());
        out.push(FORMAT_VERSION);
        out.push(self.kind.code());
        put_str(&mut out, &self.host_id);
        put_str(&mut out, &self.key_id);
        put_str(&mut out, &self.stream);
        out.extend_from_slice(&self.chain_id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.payload_sha256);
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.extend_from_slice(&self.decompressed_len.to_be_bytes());
        out.extend_from_slice(&self.record_count.to_be_bytes());
        out.extend_from_slice(&self.first_ts_ns.to_be_bytes());
        out.extend_from_slice(&self.last_ts_ns.to_be_bytes());
        out.extend_from_slice(&self.policy_hash);
        out.extend_from_slice(&self.refused_link);
        out.extend_from_slice(&self.refused_payload_sha256);
        put_str(&mut out, &self.reason);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes };
        let version = r.u8("version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let kind = Kind::from_code(r.u8("kind")?)?;
        let host_id = r.ident("host_id")?;
        let key_id = r.string("key_id")?;
        let stream = r.ident("stream")?;
        let header = Header {
            kind,
            host_id,
            key_id,
            stream,
            chain_id: r.array("chain_id")?,
            seq: r.u64("seq")?,
            prev_hash: r.array("prev_hash")?,
            payload_sha256: r.array("payload_sha256")?,
            payload_len: r.u64("payload_len")?,
            decompressed_len: r.u64("decompressed_len")?,
            record_count: r.u64("record_count")?,
            first_ts_ns: r.u64("first_ts")? as i64,
            last_ts_ns: r.u64("last_ts")? as i64,
            policy_hash: r.array("policy_hash")?,
            refused_link: r.array("refused_link")?,
            refused_payload_sha256: r.array("refused_payload_sha256")?,
            reason: r.string("reason")?,
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingHeaderBytes(r.buf.len()));
        }
        Ok(header)
    }

    /// The hash the next envelope of this chain must carry as `prev_hash`.
    pub fn next_link(&self, signature: &[u8; 64]) -> Hash {
        match self.kind {
            Kind::Data => link_hash(&self.encode(), signature),
            Kind::Tombstone => self.refused_link,
        }
    }

    pub fn chain_id_hex(&self) -> String {
        hex::encode(self.chain_id)
    }
}

/// SHA-256 over an encoded header and its signature.
pub fn link_hash(header_bytes: &[u8], signature: &[u8; 64]) -> Hash {
    let mut h = Sha256::new();
    h.update(header_bytes);
    h.update(signature);
    h.finalize().into()
}

pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// A decoded envelope that borrows its bytes.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub header: Header,
    pub header_bytes: &'a [u8],
    pub signature: [u8; 64],
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the framing and header. Checks no signature: call [`Envelope::verify`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < 8 {
            return Err(DecodeError::Truncated("magic and header length"));
        }
        if &bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let header_len = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        if header_len > MAX_HEADER_LEN {
            return Err(DecodeError::HeaderTooLong(header_len));
        }
        let rest = &bytes[8..];
        if rest.len() < header_len + 64 {
            return Err(DecodeError::Truncated("header and signature"));
        }
        let header_bytes = &rest[..header_len];
        let header = Header::decode(header_bytes)?;
        let signature: [u8; 64] = rest[header_len..header_len + 64]
            .try_into()
            .expect("64 bytes");
        let payload = &rest[header_len + 64..];
        if payload.len() as u64 != header.payload_len {
            return Err(DecodeError::PayloadLength {
                declared: header.payload_len,
                actual: payload.len() as u64,
            });
        }
        Ok(Envelope {
            header,
            header_bytes,
            signature,
            payload,
        })
    }

    /// Checks the key id, the signature and the payload hash against `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), VerifyError> {
        let expected = keys::key_id(key);
        if self.header.key_id != expected {
            return Err(VerifyError::KeyId {
                expected,
                actual: self.header.key_id.clone(),
            });
        }
        let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + self.header_bytes.len());
        msg.extend_from_slice(SIGNATURE_DOMAIN);
        msg.extend_from_slice(self.header_bytes);
        key.verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| VerifyError::Signature)?;
        if sha256(self.payload) != self.header.payload_sha256 {
            return Err(VerifyError::PayloadHash);
        }
        Ok(())
    }

    pub fn next_link(&self) -> Hash {
        match self.header.kind {
            Kind::Data => link_hash(self.header_bytes, &self.signature),
            Kind::Tombstone => self.header.refused_link,
        }
    }

    /// Decompresses the payload, refusing to produce more than `limit` bytes.
    pub fn decompress(&self, limit: u64) -> Result<Vec<u8>, PayloadError> {
        decompress_limited(self.payload, limit)
    }
}

/// Signs `header` and frames it with `payload`. Returns the envelope and its link hash.
pub fn seal(header: &Header, payload: &[u8], key: &SigningKey) -> (Vec<u8>, Hash) {
    debug_assert_eq!(header.payload_len, payload.len() as u64);
    let header_bytes = header.encode();
    let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + header_bytes.len());
    msg.extend_from_slice(SIGNATURE_DOMAIN);
    msg.extend_from_slice(&header_bytes);
    let signature = key.sign(&msg).to_bytes();
    let mut out = Vec::with_capacity(8 + header_bytes.len() + 64 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&signature);
    out.extend_from_slice(payload);
    let link = match header.kind {
        Kind::Data => link_hash(&header_bytes, &signature),
        Kind::Tombstone => header.refused_link,
    };
    (out, link)
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not valid zstd: {0}")]
    Zstd(std::io::Error),
    #[error("payload decompresses past the limit of {0} bytes")]
    TooLarge(u64),
}

/// Streams a zstd frame through a bounded reader, so a bomb costs at most `limit` bytes.
pub fn decompress_limited(payload: &[u8], limit: u64) -> Result<Vec<u8>, PayloadError> {
    use std::io::Read;
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let decoder = zstd::stream::read::Decoder::new(payload).map_err(PayloadError::Zstd)?;
    let mut out = Vec::new();
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(PayloadError::Zstd)?;
    if out.len() as u64 > limit {
        return Err(PayloadError::TooLarge(limit));
    }
    Ok(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("header strings are validated to fit u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = u16::from_be_bytes(self.take(2, what)?.try_into().expect("2 bytes")) as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadUtf8(what))
    }
    fn ident(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let s = self.string(what)?;
        if !is_safe_identifier(&s) {
            return Err(DecodeError::BadIdentifier { field: what });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, prev: Hash, payload: &[u8], key: &SigningKey) -> Header {
        Header {
            kind: Kind::Data,
            host_id: "web-1".into(),
            key_id: keys::key_id(&key.verifying_key()),
            stream: "default".into(),
            chain_id: [7; 16],
            seq,
            prev_hash: prev,
            payload_sha256: sha256(payload),
            payload_len: payload.len() as u64,
            decompressed_len: 0,
            record_count: 0,
            first_ts_ns: 1,
            last_ts_ns: 2,
            policy_hash: [3; 32],
            refused_link: [0; 32],
            refused_payload_sha256: [0; 32],
            reason: String::new(),
        }
    }

    #[test]
    fn sealed_envelope_round_trips_and_verifies() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let h = header(1, GENESIS_PREV_HASH, b"payload", &key);
        let (bytes, link) = seal(&h, b"payload", &key);
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.header, h);
        env.verify(&key.verifying_key()).unwrap();
        assert_eq!(env.next_link(), link);
    }

    #[test]
    fn any_flipped_byte_fails_decode_or_verify() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let h = header(4, [1; 32], b"some payload bytes", &key);
        let (bytes, _) = seal(&h, b"some payload bytes", &key);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = Envelope::decode(&bad)
                .map(|e| e.verify(&key.verifying_key()).is_ok())
                .unwrap_or(false);
            assert!(!ok, "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn path_like_host_ids_are_rejected() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut h = header(1, GENESIS_PREV_HASH, b"", &key);
        h.host_id = "../../etc".into();
        let (bytes, _) = seal(&h, b"", &key);
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::BadIdentifier { field: "host_id" })
        ));
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let big = vec![b'a'; 1 << 20];
        let z = zstd::bulk::compress(&big, 3).unwrap();
        assert!(matches!(
            decompress_limited(&z, 1000),
            Err(PayloadError::TooLarge(1000))
        ));
        assert_eq!(decompress_limited(&z, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn truncated_envelopes_are_errors_not_panics() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let h = header(1, GENESIS_PREV_HASH, b"xyz", &key);
        let (bytes, _) = seal(&h, b"xyz", &key);
        for n in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..n]).is_err());
        }
    }
}
