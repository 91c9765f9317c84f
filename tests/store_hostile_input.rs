//! The envelope decoder and the store's stateless checks against hostile bytes, on stable
//! Rust (the cargo-fuzz target in fuzz/ explores further): random bytes and single-byte
//! mutations, truncations and extensions of a valid envelope never panic, and nothing but
//! the original passes validation.

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use logveil::envelope::{keys, seal, sha256, Envelope, Header, Kind, GENESIS_PREV_HASH};
use logveil::receive::validate::validate;
use proptest::prelude::*;

fn valid(keys_dir: &std::path::Path) -> Vec<u8> {
    let key = SigningKey::from_bytes(&sha256(b"fuzz host"));
    std::fs::write(
        keys_dir.join("web-1.pub"),
        keys::public_key_line(&key.verifying_key()),
    )
    .unwrap();
    let raw = b"{\"host\":\"web-1\",\"stream\":\"default\",\"body\":\"x\"}\n".to_vec();
    let payload = zstd::bulk::compress(&raw, 3).unwrap();
    let h = Header {
        kind: Kind::Data,
        host_id: "web-1".into(),
        key_id: keys::key_id(&key.verifying_key()),
        stream: "default".into(),
        chain_id: [7; 16],
        seq: 1,
        prev_hash: GENESIS_PREV_HASH,
        payload_sha256: sha256(&payload),
        payload_len: payload.len() as u64,
        decompressed_len: raw.len() as u64,
        record_count: 1,
        first_ts_ns: 0,
        last_ts_ns: 0,
        policy_hash: [0; 32],
        refused_link: [0; 32],
        refused_payload_sha256: [0; 32],
        reason: String::new(),
    };
    seal(&h, &payload, &key).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(env) = Envelope::decode(&data) {
            prop_assert_eq!(env.header.encode(), env.header_bytes.to_vec());
        }
        let _ = logveil::receive::gap::decode(&data);
    }

    #[test]
    fn no_mutation_of_a_valid_envelope_validates(
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let good = valid(dir.path());
        prop_assert!(validate(Bytes::from(good.clone()), dir.path(), 1 << 20).is_ok());
        let mut flipped = good.clone();
        let i = pos.index(flipped.len());
        flipped[i] ^= flip;
        prop_assert!(validate(Bytes::from(flipped), dir.path(), 1 << 20).is_err());
        let truncated = good[..cut.index(good.len())].to_vec();
        prop_assert!(validate(Bytes::from(truncated), dir.path(), 1 << 20).is_err());
        let mut longer = good.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(validate(Bytes::from(longer), dir.path(), 1 << 20).is_err());
    }
}
