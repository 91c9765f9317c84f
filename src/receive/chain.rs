//! Chain rules: whether a validated batch continues its chain, repeats it, or breaks it.
//!
//! A chain is identified by `(host, stream, chain_id)`. Its state is the [`Tip`]: the last
//! stored seq `L` and its link `H` (`Envelope::next_link`; a tombstone's is its
//! `refused_link`). For an incoming batch with `seq` and `prev_hash`:
//!
//! | state           | batch                                 | outcome                               |
//! |-----------------|---------------------------------------|---------------------------------------|
//! | no chain yet    | seq 1, prev_hash = genesis            | store                                 |
//! | no chain yet    | anything else                         | 409 `seq_gap`, expected 1 (or `broken_chain` for seq 1) |
//! | tip (L, H)      | seq L+1, prev_hash = H                | store                                 |
//! | tip (L, H)      | seq L+1, prev_hash ≠ H                | 409 `broken_chain`, expected L+1       |
//! | tip (L, H)      | seq ≤ L, same bytes as stored at seq  | 200 duplicate, nothing written        |
//! | tip (L, H)      | seq ≤ L, different bytes              | 409 `seq_conflict`, expected L+1       |
//! | tip (L, H)      | seq > L+1                             | 409 `seq_gap`, expected L+1            |
//!
//! "Same bytes" compares whole envelopes: an envelope has exactly one encoding and its
//! payload is fixed by the signed payload hash, so equal bytes ⇔ equal header and signature.
//! The caller holds the chain's lock from [`decide`] until the tip is advanced, so concurrent
//! copies of one batch are written once.

use super::validate::Rejection;
use crate::envelope::{Hash, GENESIS_PREV_HASH};

/// The last stored batch of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub seq: u64,
    pub link: Hash,
}

/// What to do with a batch, before looking at stored bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The batch continues the chain: write it.
    Store,
    /// The seq is already taken: compare with the stored envelope ([`resolve_stored`]).
    CompareStored,
    Reject(Rejection),
}

pub fn decide(tip: Option<Tip>, seq: u64, prev_hash: &Hash) -> Decision {
    let (last, link) = match tip {
        Some(t) => (t.seq, t.link),
        None => (0, GENESIS_PREV_HASH),
    };
    let expected_seq = last.saturating_add(1);
    if seq == expected_seq {
        if *prev_hash == link {
            Decision::Store
        } else {
            Decision::Reject(Rejection::BrokenChain { last, expected_seq })
        }
    } else if seq <= last && seq > 0 {
        Decision::CompareStored
    } else {
        Decision::Reject(Rejection::SeqGap { seq, expected_seq })
    }
}

/// For [`Decision::CompareStored`]: `Ok(())` means a duplicate to acknowledge again.
pub fn resolve_stored(
    tip: Tip,
    seq: u64,
    stored: Option<&[u8]>,
    incoming: &[u8],
) -> Result<(), Rejection> {
    let expected_seq = tip.seq + 1;
    match stored {
        Some(stored) if stored == incoming => Ok(()),
        Some(_) => Err(Rejection::SeqConflict { seq, expected_seq }),
        None => Err(Rejection::SeqUnavailable { seq, expected_seq }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Hash = [9; 32];

    fn tip(seq: u64) -> Option<Tip> {
        Some(Tip { seq, link: H })
    }

    #[test]
    fn a_new_chain_starts_at_seq_1_from_genesis() {
        assert_eq!(decide(None, 1, &GENESIS_PREV_HASH), Decision::Store);
        assert_eq!(
            decide(None, 1, &H),
            Decision::Reject(Rejection::BrokenChain {
                last: 0,
                expected_seq: 1
            })
        );
        assert_eq!(
            decide(None, 2, &GENESIS_PREV_HASH),
            Decision::Reject(Rejection::SeqGap {
                seq: 2,
                expected_seq: 1
            })
        );
        assert_eq!(
            decide(None, 0, &GENESIS_PREV_HASH),
            Decision::Reject(Rejection::SeqGap {
                seq: 0,
                expected_seq: 1
            })
        );
    }

    #[test]
    fn the_next_seq_must_link_to_the_tip() {
        assert_eq!(decide(tip(4), 5, &H), Decision::Store);
        let broken = decide(tip(4), 5, &[1; 32]);
        assert_eq!(
            broken,
            Decision::Reject(Rejection::BrokenChain {
                last: 4,
                expected_seq: 5
            })
        );
    }

    #[test]
    fn stored_seqs_are_compared_and_later_ones_are_gaps() {
        for seq in 1..=4 {
            assert_eq!(decide(tip(4), seq, &[1; 32]), Decision::CompareStored);
        }
        let gap = decide(tip(4), 7, &H);
        assert_eq!(
            gap,
            Decision::Reject(Rejection::SeqGap {
                seq: 7,
                expected_seq: 5
            })
        );
        if let Decision::Reject(r) = gap {
            assert_eq!((r.code(), r.expected_seq()), ("seq_gap", Some(5)));
        }
    }

    #[test]
    fn only_identical_bytes_are_duplicates() {
        let t = Tip { seq: 4, link: H };
        assert_eq!(resolve_stored(t, 2, Some(b"abc"), b"abc"), Ok(()));
        let conflict = resolve_stored(t, 2, Some(b"abc"), b"abd").unwrap_err();
        assert_eq!(
            (conflict.code(), conflict.expected_seq()),
            ("seq_conflict", Some(5))
        );
        let gone = resolve_stored(t, 2, None, b"abc").unwrap_err();
        assert_eq!(gone.code(), "seq_conflict");
    }
}
