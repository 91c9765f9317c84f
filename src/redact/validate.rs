//! Validators: given a line and a candidate span, return the span to redact (possibly
//! narrowed), or `None` when the candidate is a look-alike.

/// `(text, start, end) -> span to redact`.
pub type Validator = fn(&str, usize, usize) -> Option<(usize, usize)>;

fn byte_before(text: &str, start: usize) -> Option<u8> {
    start.checked_sub(1).map(|i| text.as_bytes()[i])
}

fn byte_at(text: &str, i: usize) -> Option<u8> {
    text.as_bytes().get(i).copied()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The candidate is not glued to letters or digits on either side.
fn standalone(text: &str, start: usize, end: usize) -> bool {
    !byte_before(text, start).is_some_and(is_word) && !byte_at(text, end).is_some_and(is_word)
}

/// User rules: every match counts.
pub fn any(_: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    Some((start, end))
}

pub fn email(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let cand = &text[start..end];
    let at = cand.rfind('@')?;
    let local = &cand[..at];
    let trimmed = local.trim_start_matches(['.', '%', '+', '-']);
    if trimmed.is_empty() || cand[at + 1..].starts_with('-') {
        return None;
    }
    // `x@host.local1` or `a@b.c-d`: the domain runs on past what looked like a TLD.
    if byte_at(text, end).is_some_and(|b| is_word(b) || b == b'-') {
        return None;
    }
    Some((start + (local.len() - trimmed.len()), end))
}

pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// 13–19 digits with optional single spaces or dashes, Luhn-valid. The candidate is a
/// run of digit groups; every group-aligned window of it is tried, longest and leftmost
/// first, so a number glued before a card (`qty 2 4111 1111 1111 1111`) or a second card
/// after it does not hide it. The engine resumes scanning at the end of the span returned.
pub fn card(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    // The regex stops at 19 digits; take the whole run of digit groups it began, so a card
    // that ends past that point is seen whole. Bounded, so a huge digit run stays cheap.
    let mut end = end;
    let limit = (start + MAX_CARD_RUN).min(bytes.len());
    while end < limit {
        let b = bytes[end];
        let sep_then_digit =
            (b == b' ' || b == b'-') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit);
        if b.is_ascii_digit() {
            end += 1;
        } else if sep_then_digit {
            end += 2;
        } else {
            break;
        }
    }
    // Group boundaries: (start, end) of each digit group in the candidate.
    let mut groups = Vec::new();
    let mut i = start;
    while i < end {
        let g = i;
        while i < end && bytes[i].is_ascii_digit() {
            i += 1;
        }
        groups.push((g, i));
        i += 1; // the separator
    }
    let n = groups.len();
    for len in (1..=n).rev() {
        for first in 0..=n - len {
            let (s, e) = (groups[first].0, groups[first + len - 1].1);
            if card_window(text, s, e) {
                return Some((s, e));
            }
        }
    }
    None
}

/// Longest run of digit groups examined for cards at once.
const MAX_CARD_RUN: usize = 256;

fn card_window(text: &str, start: usize, end: usize) -> bool {
    let cand = &text.as_bytes()[start..end];
    let digits: Vec<u8> = cand.iter().copied().filter(u8::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let mut seps = cand.iter().filter(|b| !b.is_ascii_digit());
    let consistent = match seps.next() {
        Some(first) => seps.all(|b| b == first),
        None => true,
    };
    let glued_before = byte_before(text, start)
        .is_some_and(|b| is_word(b) || b == b'.' || (b == b'-' && digit_before(text, start - 1)));
    let glued = byte_at(text, end).is_some_and(is_word);
    let decimal = byte_at(text, end) == Some(b'.')
        && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit());
    // A dash-joined run continuing past the window (`1234-5678-...-99`) is one number.
    let dash_after = byte_at(text, end) == Some(b'-')
        && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit())
        && cand.contains(&b'-');
    consistent && !glued_before && !glued && !decimal && !dash_after && luhn(&digits)
}

/// Whether the byte before `i` is an ASCII digit.
fn digit_before(text: &str, i: usize) -> bool {
    byte_before(text, i).is_some_and(|b| b.is_ascii_digit())
}

pub fn ssn(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !standalone(text, start, end)
        || byte_before(text, start).is_some_and(|b| b == b'-' || b == b'.')
        || byte_at(text, end).is_some_and(|b| b == b'-')
    {
        return None;
    }
    let b = &text.as_bytes()[start..end];
    if b[3] != b[6] {
        return None;
    }
    let num = |s: &[u8]| s.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
    let (area, group, serial) = (num(&b[0..3]), num(&b[4..6]), num(&b[7..11]));
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    valid.then_some((start, end))
}

pub fn phone_e164(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let glued_before = byte_before(text, start).is_some_and(is_word);
    let glued_after = byte_at(text, end).is_some_and(is_word);
    (!glued_before && !glued_after).then_some((start, end))
}

pub fn ipv4(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !standalone(text, start, end) {
        return None;
    }
    // Part of a longer dotted number (`1.2.3.4.5`, `v10.1.2.3`): not an address.
    let dotted_before = byte_before(text, start) == Some(b'.')
        && start >= 2
        && text.as_bytes()[start - 2].is_ascii_digit();
    let dotted_after = byte_at(text, end) == Some(b'.')
        && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit());
    // A product version token such as `Chrome/124.0.0.0`.
    let product_version = byte_before(text, start) == Some(b'/')
        && start >= 2
        && text.as_bytes()[start - 2].is_ascii_alphabetic();
    if dotted_before || dotted_after || product_version {
        return None;
    }
    let ok = text[start..end]
        .split('.')
        .all(|o| o.parse::<u16>().is_ok_and(|v| v <= 255) && !(o.len() > 1 && o.starts_with('0')));
    ok.then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_neighbours() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
    }
}
