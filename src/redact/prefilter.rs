//! Cheap per-detector gates, so a text only runs the detector regexes that can match it.
//!
//! Each built-in detector declares necessary conditions for its pattern to match at all
//! ([`detectors::Builtin`]: literal hints, a minimum number of ASCII digits, minimum counts
//! of some bytes). One Aho-Corasick pass (ASCII case-insensitive, overlapping, so it only
//! ever over-approximates) finds which hint groups occur and one byte histogram gives the
//! counts; a detector whose gate fails cannot match, so skipping it changes nothing.
//! User rules have no gate: they always run.

use super::detectors::{self, Builtin};
use aho_corasick::{AhoCorasick, MatchKind};

/// The gate of one built-in detector.
#[derive(Clone, Copy)]
pub struct Gate {
    /// Bit of the hint group that must occur, if any.
    hint_bit: u64,
    digits: u32,
    bytes: &'static [(u8, u8)],
}

/// The hint matcher for all built-in detectors.
pub struct Prefilter {
    ac: AhoCorasick,
    /// Hint group bit of each Aho-Corasick pattern.
    pattern_bits: Vec<u64>,
    /// Gate of each built-in detector, in [`detectors::BUILTINS`] order.
    gates: Vec<Gate>,
}

/// What one text holds, as far as the gates are concerned.
pub struct Seen {
    hints: u64,
    hist: [u32; 256],
    digits: u32,
}

impl Default for Prefilter {
    fn default() -> Self {
        Self::new()
    }
}

impl Prefilter {
    pub fn new() -> Prefilter {
        let mut patterns: Vec<&str> = Vec::new();
        let mut pattern_bits = Vec::new();
        let mut gates = Vec::new();
        let mut group = 0u32;
        for b in detectors::BUILTINS {
            let Builtin {
                hints,
                digits,
                bytes,
                ..
            } = b;
            let hint_bit = if hints.is_empty() {
                0
            } else {
                assert!(group < 64, "too many hint groups");
                let bit = 1u64 << group;
                group += 1;
                for h in *hints {
                    patterns.push(h);
                    pattern_bits.push(bit);
                }
                bit
            };
            gates.push(Gate {
                hint_bit,
                digits: u32::from(*digits),
                bytes,
            });
        }
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .expect("hints compile");
        Prefilter {
            ac,
            pattern_bits,
            gates,
        }
    }

    /// The gate of built-in detector `i` (index into [`detectors::BUILTINS`]).
    pub fn gate(&self, i: usize) -> Gate {
        self.gates[i]
    }

    pub fn scan(&self, text: &str) -> Seen {
        let mut hints = 0u64;
        for m in self.ac.find_overlapping_iter(text) {
            hints |= self.pattern_bits[m.pattern().as_usize()];
        }
        let mut hist = [0u32; 256];
        for &b in text.as_bytes() {
            hist[b as usize] += 1;
        }
        let digits = hist[b'0' as usize..=b'9' as usize].iter().sum();
        Seen {
            hints,
            hist,
            digits,
        }
    }
}

impl Seen {
    /// Whether a detector with gate `g` can match the text at all.
    pub fn passes(&self, g: &Gate) -> bool {
        (g.hint_bit == 0 || self.hints & g.hint_bit != 0)
            && self.digits >= g.digits
            && g.bytes
                .iter()
                .all(|&(b, n)| self.hist[b as usize] >= u32::from(n))
    }
}
