//! Fuzz target: the envelope decoder and the receiver's stateless checks on outside bytes.
//! Run: `cargo +nightly fuzz run envelope_decode` (from the repository root).
//! Must never panic, never allocate past the limits, and anything that decodes must
//! re-encode to the same header bytes (one encoding per envelope).
#![no_main]

use libfuzzer_sys::fuzz_target;
use logveil::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        assert_eq!(env.header.encode(), env.header_bytes);
        let _ = logveil::receive::validate::check_payload(&env, 1 << 20);
        let _ = env.next_link();
    }
    let _ = logveil::receive::gap::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = logveil::custody::parse_line(text, None);
    }
});
