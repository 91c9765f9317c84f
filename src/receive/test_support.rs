//! Builders of signed chains for the unit tests of the receiver, the archive and verify.

use crate::envelope::{keys, seal, sha256, Hash, Header, Kind, GENESIS_PREV_HASH};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

/// A host's chain being produced: the next seq and the link it must carry.
pub struct Chain {
    pub host: String,
    pub stream: String,
    pub chain_id: [u8; 16],
    pub key: SigningKey,
    pub seq: u64,
    pub link: Hash,
}

impl Chain {
    pub fn new(host: &str, stream: &str, chain_id: [u8; 16]) -> Self {
        let seed = sha256(host.as_bytes());
        Chain {
            host: host.into(),
            stream: stream.into(),
            chain_id,
            key: SigningKey::from_bytes(&seed),
            seq: 0,
            link: GENESIS_PREV_HASH,
        }
    }

    /// The chain's directory for batches written today.
    pub fn dir(&self, root: &Path) -> PathBuf {
        crate::archive::chain_dir(
            root,
            &self.host,
            &self.stream,
            &crate::archive::today(),
            &self.chain_id,
        )
    }

    /// Writes `<host>.pub` into `keys_dir`.
    pub fn enroll(&self, keys_dir: &Path) {
        std::fs::create_dir_all(keys_dir).unwrap();
        std::fs::write(
            keys_dir.join(format!("{}.pub", self.host)),
            keys::public_key_line(&self.key.verifying_key()),
        )
        .unwrap();
    }

    /// The header of the next envelope, before payload fields are filled in.
    pub fn header(&self, kind: Kind) -> Header {
        Header {
            kind,
            host_id: self.host.clone(),
            key_id: keys::key_id(&self.key.verifying_key()),
            stream: self.stream.clone(),
            chain_id: self.chain_id,
            seq: self.seq + 1,
            prev_hash: self.link,
            payload_sha256: sha256(b""),
            payload_len: 0,
            decompressed_len: 0,
            record_count: 0,
            first_ts_ns: 0,
            last_ts_ns: 0,
            policy_hash: [3; 32],
            refused_link: [0; 32],
            refused_payload_sha256: [0; 32],
            reason: String::new(),
        }
    }

    /// Records `{"host":..,"stream":..,"msg":m}`, newline-terminated.
    pub fn records(&self, msgs: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let rec = serde_json::json!({"host": self.host, "stream": self.stream, "msg": m});
            out.extend_from_slice(rec.to_string().as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Seals a data envelope over `raw` (uncompressed) claiming `count` records, without
    /// advancing the chain.
    pub fn data_over(&self, raw: &[u8], count: u64) -> Vec<u8> {
        let payload = if raw.is_empty() {
            Vec::new()
        } else {
            zstd::bulk::compress(raw, 3).unwrap()
        };
        let mut h = self.header(Kind::Data);
        h.payload_sha256 = sha256(&payload);
        h.payload_len = payload.len() as u64;
        h.decompressed_len = raw.len() as u64;
        h.record_count = count;
        self.seal(&h, &payload).0
    }

    pub fn seal(&self, header: &Header, payload: &[u8]) -> (Vec<u8>, Hash) {
        seal(header, payload, &self.key)
    }

    /// Seals the next data envelope and advances the chain.
    pub fn next_data(&mut self, msgs: &[&str]) -> Vec<u8> {
        let bytes = self.data_over(&self.records(msgs), msgs.len() as u64);
        self.advance(&bytes);
        bytes
    }

    /// Seals the next tombstone and advances the chain.
    pub fn next_tombstone(&mut self) -> Vec<u8> {
        let mut h = self.header(Kind::Tombstone);
        h.refused_link = sha256(format!("refused {}", h.seq).as_bytes());
        h.refused_payload_sha256 = [5; 32];
        h.reason = "bad_records".into();
        let (bytes, _) = self.seal(&h, b"");
        self.advance(&bytes);
        bytes
    }

    pub fn advance(&mut self, bytes: &[u8]) {
        let env = crate::envelope::Envelope::decode(bytes).unwrap();
        self.seq = env.header.seq;
        self.link = env.next_link();
    }
}

/// Writes an envelope where the archive layout puts it (today's day); returns the path.
pub fn write_archive_file(root: &Path, bytes: &[u8]) -> PathBuf {
    let env = crate::envelope::Envelope::decode(bytes).unwrap();
    let h = &env.header;
    let day = crate::archive::today();
    let path = crate::archive::batch_path(root, &h.host_id, &h.stream, &day, &h.chain_id, h.seq);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}
