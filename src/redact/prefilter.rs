//! Cheap per-detector gates, so a text only runs the detector regexes that can match it.
//!
//! Each built-in detector declares necessary conditions for its pattern to match at all
//! ([`detectors::Builtin`]: literal hints, a minimum number of ASCII digits, minimum counts
//! of some bytes). One Aho-Corasick pass (ASCII case-insensitive, overlapping, so it only
//! ever over-approximates) finds which hint groups occur and one byte pass gives the counts
//! and digit layouts ([`Shape`]); a detector whose gate fails cannot match, so skipping it changes nothing.
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
    shape: Shape,
}

/// A digit layout the pattern needs somewhere in the text (each a necessary condition of
/// the pattern named).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Any,
    /// `card`: 13 digits, each pair separated by at most one of `[ \-+]`.
    Card,
    /// `iban`: two uppercase letters then two digits.
    Iban,
    /// `ipv4`: three `.` each between two digits.
    Ipv4,
    /// `phone_nanp`: `\d{3}[.\-]\d{4}`.
    Nanp,
    /// `ssn`: `\d{3}[\- ]\d{2}[\- ]\d{4}`.
    Ssn,
    /// `abn`: `\d{3} \d{3} \d{3}`.
    Abn,
    /// `order_id`: `\d{3}-\d{7}-\d{7}`.
    Order,
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
    /// Bit `1 << shape as u32` for each [`Shape`] found.
    shapes: u32,
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
                shape,
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
                shape: *shape,
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
        let b = text.as_bytes();
        // Digit runs joined by one separator: the current run and the two before it,
        // with the separator after each.
        let (mut run, mut p1, mut s1, mut p2, mut s2) = (0u32, 0u32, 0u8, 0u32, 0u8);
        // Card chain: digits with at most one `[ \-+]` between neighbours.
        let (mut chain, mut chain_sep) = (0u32, false);
        let mut ipv4_dots = 0u32;
        let mut shapes = 0u32;
        for (i, &c) in b.iter().enumerate() {
            hist[c as usize] += 1;
            if c.is_ascii_digit() {
                run += 1;
                chain += 1;
                chain_sep = false;
                if chain >= 13 {
                    shapes |= 1 << Shape::Card as u32;
                }
                if run == 2
                    && i >= 3
                    && b[i - 2].is_ascii_uppercase()
                    && b[i - 3].is_ascii_uppercase()
                {
                    shapes |= 1 << Shape::Iban as u32;
                }
                if run >= 4 && p1 >= 3 && (s1 == b'.' || s1 == b'-') {
                    shapes |= 1 << Shape::Nanp as u32;
                }
                if run >= 4
                    && p1 == 2
                    && p2 >= 3
                    && (s1 == b'-' || s1 == b' ')
                    && (s2 == b'-' || s2 == b' ')
                {
                    shapes |= 1 << Shape::Ssn as u32;
                }
                if run >= 3 && p1 == 3 && p2 >= 3 && s1 == b' ' && s2 == b' ' {
                    shapes |= 1 << Shape::Abn as u32;
                }
                if run >= 7 && p1 == 7 && p2 >= 3 && s1 == b'-' && s2 == b'-' {
                    shapes |= 1 << Shape::Order as u32;
                }
                if run == 1 && s1 == b'.' && p1 >= 1 {
                    ipv4_dots += 1;
                }
            } else {
                if matches!(c, b'.' | b'-' | b' ' | b'/') {
                    (p2, s2, p1, s1) = (p1, s1, run, c);
                } else {
                    (p2, s2, p1, s1) = (0, 0, 0, 0);
                }
                run = 0;
                if matches!(c, b' ' | b'-' | b'+') && !chain_sep && chain > 0 {
                    chain_sep = true;
                } else {
                    chain = 0;
                    chain_sep = false;
                }
            }
        }
        if ipv4_dots >= 3 {
            shapes |= 1 << Shape::Ipv4 as u32;
        }
        shapes |= 1 << Shape::Any as u32;
        let digits = hist[b'0' as usize..=b'9' as usize].iter().sum();
        Seen {
            hints,
            hist,
            digits,
            shapes,
        }
    }
}

impl Seen {
    /// Whether a detector with gate `g` can match the text at all.
    pub fn passes(&self, g: &Gate) -> bool {
        (g.hint_bit == 0 || self.hints & g.hint_bit != 0)
            && self.shapes & (1 << g.shape as u32) != 0
            && self.digits >= g.digits
            && g.bytes
                .iter()
                .all(|&(b, n)| self.hist[b as usize] >= u32::from(n))
    }
}
