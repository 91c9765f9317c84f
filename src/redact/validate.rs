//! Validators: given a text and a candidate span (from a detector's pattern), return the
//! span to redact (possibly narrowed), or `None` when the candidate is a look-alike.
//!
//! A validator sees the whole text, so it can check what the candidate is glued to (a
//! version string, a longer digit run, an identifier) and the words before it (context).
//! Validators never allocate for the common rejecting case and never panic on any input.

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

fn digits_of(s: &[u8]) -> Vec<u8> {
    s.iter().copied().filter(u8::is_ascii_digit).collect()
}

/// Up to `n` bytes before `start`, lower-cased ASCII (for keyword context checks).
pub fn context_before(text: &str, start: usize, n: usize) -> String {
    let b = text.as_bytes();
    let from = start.saturating_sub(n);
    String::from_utf8_lossy(&b[from..start]).to_ascii_lowercase()
}

/// User rules and already-validated shapes: every match counts.
pub fn any(_: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    Some((start, end))
}

/// Not glued to word characters on either side.
pub fn bounded(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    standalone(text, start, end).then_some((start, end))
}

/// E-mail: a local part and a domain of dot-separated labels ending in an alphabetic TLD.
/// Leading separators that cannot start a local part (`.`, `%`, `+`, `-`, `=`) are trimmed;
/// an encoded `@` (`%40`, `%2540`, `\u0040`, `=40`, `&#64;`) is accepted by the pattern.
pub fn email(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let cand = &text[start..end];
    let trimmed = cand.trim_start_matches(['.', '%', '+', '-', '=']);
    let start = start + (cand.len() - trimmed.len());
    if trimmed.is_empty() || trimmed.starts_with('@') {
        return None;
    }
    // `x@host.local1` or `a@b.c-d`: the domain runs on past what looked like a TLD.
    if byte_at(text, end).is_some_and(|b| is_word(b) || b == b'-') {
        return None;
    }
    Some((start, end))
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

/// 13–19 digits with optional single spaces, dashes or `+` (a form-encoded space),
/// Luhn-valid. The candidate is extended to the whole run of digit groups it began, and every
/// group-aligned window of that run is tried, longest and leftmost first: a number glued
/// before a card (`qty 2 4111 1111 1111 1111`), a second card after it, or a card that ends
/// past the regex's 19 digits is still found. The engine resumes after the span returned.
pub fn card(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut end = end;
    let limit = (start + MAX_CARD_RUN).min(bytes.len());
    while end < limit {
        let b = bytes[end];
        if b.is_ascii_digit() {
            end += 1;
        } else if matches!(b, b' ' | b'-' | b'+')
            && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
        {
            end += 2;
        } else {
            break;
        }
    }
    let mut groups = Vec::new();
    let mut i = start;
    while i < end {
        let g = i;
        while i < end && bytes[i].is_ascii_digit() {
            i += 1;
        }
        groups.push((g, i));
        i += 1;
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
    let digits = digits_of(cand);
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let mut seps = cand.iter().filter(|b| !b.is_ascii_digit());
    let consistent = match seps.next() {
        Some(first) => seps.all(|b| b == first),
        None => true,
    };
    let before = byte_before(text, start);
    let glued_before = before.is_some_and(|b| is_word(b) || b == b'.')
        // A dash after a letter or digit: a range or a longer id (`ref-4111…`).
        || (before == Some(b'-')
            && start >= 2
            && text.as_bytes()[start - 2].is_ascii_alphanumeric());
    let glued = byte_at(text, end).is_some_and(is_word);
    let decimal = byte_at(text, end) == Some(b'.')
        && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit());
    // A dash-joined run going on past the window (`1234-5678-...-99`) is one number.
    let dash_after = byte_at(text, end) == Some(b'-')
        && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit())
        && cand.contains(&b'-');
    consistent && !glued_before && !glued && !decimal && !dash_after && luhn(&digits)
}

/// US SSN, dashed or spaced (`641-31-9853`, `415 09 4760`): area not 000/666/9xx, group
/// not 00, serial not 0000; both separators the same; not part of a longer number.
pub fn ssn(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !standalone(text, start, end)
        || byte_before(text, start).is_some_and(|b| b == b'-' || b == b'.' || b == b'/')
        || byte_at(text, end).is_some_and(|b| b == b'-' || b == b'/')
        || (byte_at(text, end) == Some(b'.')
            && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let b = &text.as_bytes()[start..end];
    if b.len() == 11 && b[3] != b[6] {
        return None;
    }
    let d = digits_of(b);
    if d.len() != 9 {
        return None;
    }
    ssn_digits_valid(&d).then_some((start, end))
}

fn ssn_digits_valid(d: &[u8]) -> bool {
    let num = |s: &[u8]| s.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
    let (area, group, serial) = (num(&d[0..3]), num(&d[3..5]), num(&d[5..9]));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Nine plain digits found after an SSN keyword: same number rules as [`ssn`].
pub fn ssn_plain(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let d = digits_of(&text.as_bytes()[start..end]);
    (d.len() == 9 && standalone(text, start, end) && ssn_digits_valid(&d)).then_some((start, end))
}

/// Expected IBAN length per country (ISO 13616 registry).
fn iban_length(cc: &[u8]) -> Option<usize> {
    Some(match cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"ST" => 25,
        b"SV" => 28,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    })
}

fn iban_mod97(compact: &[u8]) -> bool {
    let mut rem: u32 = 0;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            b'a'..=b'z' => u32::from(c - b'a') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// IBAN, compact or in groups of four: the country's length and the mod-97 check. A
/// greedy candidate is shortened to the country's length (`…5025 25 EUR`).
pub fn iban(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if byte_before(text, start).is_some_and(is_word) {
        return None;
    }
    let b = text.as_bytes();
    let cc = [
        b[start].to_ascii_uppercase(),
        b[start + 1].to_ascii_uppercase(),
    ];
    let want = iban_length(&cc)?;
    let mut compact = Vec::with_capacity(34);
    let mut i = start;
    while i < end && compact.len() < want {
        if b[i] != b' ' {
            compact.push(b[i].to_ascii_uppercase());
        }
        i += 1;
    }
    if compact.len() != want || byte_at(text, i).is_some_and(is_word) {
        return None;
    }
    iban_mod97(&compact).then_some((start, i))
}

/// IPv4 dotted quad, octets 0–255 without leading zeros, not part of a longer dotted
/// number or a product version (`Chrome/124.0.0.0`).
pub fn ipv4(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !standalone(text, start, end) {
        return None;
    }
    let dotted_before = byte_before(text, start) == Some(b'.')
        && start >= 2
        && text.as_bytes()[start - 2].is_ascii_digit();
    let dotted_after = byte_at(text, end) == Some(b'.')
        && byte_at(text, end + 1).is_some_and(|b| b.is_ascii_digit());
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

/// IPv6: parses as an address, has at least three groups (so `a::b`-like code paths and
/// clock times are not addresses), not glued to other hex or `:`.
pub fn ipv6(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let glued = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if glued(byte_before(text, start)) || glued(byte_at(text, end)) {
        return None;
    }
    // Trim a trailing `:` (`addr:port` is rare for v6; `ip: x` lists are common).
    let mut e = end;
    let mut cand = &text[start..e];
    if cand.ends_with(':') && !cand.ends_with("::") {
        e -= 1;
        cand = &text[start..e];
    }
    let groups = cand.split(':').filter(|g| !g.is_empty()).count();
    let hex_only = cand
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    if !hex_only {
        return None;
    }
    let ok = cand.parse::<std::net::Ipv6Addr>().is_ok() && (groups >= 3 || cand == "::1");
    // `::` between two words (`Foo::bar`) never has only hex; `dead::beef` does: need 3 groups.
    ok.then_some((start, e))
}

/// A JWT: three base64url parts, the first two decode to JSON objects (`eyJ…`).
pub fn jwt(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    bounded(text, start, end)
}

/// Phone numbers written internationally: `+` and 8–15 digits, separators allowed,
/// not glued to a longer token, not a date or a number range.
pub fn phone_intl(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if byte_before(text, start).is_some_and(|b| is_word(b) || b == b'+') {
        return None;
    }
    let end = trim_phone_end(text, start, end);
    let d = digits_of(&text.as_bytes()[start..end]);
    if !(8..=15).contains(&d.len()) || byte_at(text, end).is_some_and(is_word) {
        return None;
    }
    Some((start, end))
}

fn trim_phone_end(text: &str, start: usize, mut end: usize) -> usize {
    let b = text.as_bytes();
    while end > start && !b[end - 1].is_ascii_digit() {
        end -= 1;
    }
    end
}

/// Keywords that say a nearby number is a phone number, in the corpus locales' languages.
const PHONE_WORDS: &[&str] = &[
    "phone",
    "tel",
    "mobile",
    "mobil",
    "cell",
    "call",
    "sms",
    "whatsapp",
    "fax",
    "contact",
    "handy",
    "telefon",
    "téléphone",
    "portable",
    "teléfono",
    "telefono",
    "celular",
    "cellulare",
    "電話",
    "携帯",
    "sent to",
    "text ",
    "dial",
    "ring",
    "numero",
    "número",
    "nummer",
];

/// National phone formats (`(720)783-9908`, `06 12 34 56 78`, `090-1234-5678`,
/// `97576 30315`): accepted when a phone keyword precedes them closely, or when the
/// number fills a whole delimited field (CSV/SQL-like rows) and has the shape of a
/// written phone number (separators, or a leading 0 and 10–11 digits).
pub fn phone_national(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    if byte_before(text, start)
        .is_some_and(|c| is_word(c) || c == b'.' || c == b'-' || c == b'/' || c == b':')
    {
        return None;
    }
    let end = trim_phone_end(text, start, end);
    if byte_at(text, end).is_some_and(|c| is_word(c) || c == b'/' || c == b':')
        || (byte_at(text, end).is_some_and(|c| c == b'.' || c == b'-')
            && byte_at(text, end + 1).is_some_and(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let cand = &b[start..end];
    let d = digits_of(cand);
    if !(9..=13).contains(&d.len()) {
        return None;
    }
    let seps = cand.len() - d.len();
    let first_digit = cand.iter().find(|c| c.is_ascii_digit()).copied();
    // Dates, times and decimals are not phone numbers.
    if looks_like_date(cand) {
        return None;
    }
    let ctx = context_before(text, start, 28);
    let keyword = PHONE_WORDS.iter().any(|w| ctx.contains(w));
    if keyword {
        return Some((start, end));
    }
    let open = byte_before(text, start);
    let close = byte_at(text, end);
    let delim = |c: Option<u8>| {
        c.map_or(true, |c| {
            matches!(
                c,
                b';' | b',' | b'"' | b'\'' | b'\t' | b'|' | b'(' | b')' | b'>' | b'<'
            )
        })
    };
    // A parenthesised number followed by words (`(07 04 14 89 77 on file)`) is a field too.
    let field = delim(open) && (delim(close) || (open == Some(b'(') && close == Some(b' ')));
    let shaped = (seps > 0 && seps <= 4) || (first_digit == Some(b'0') && d.len() >= 10);
    (field && shaped).then_some((start, end))
}

fn looks_like_date(cand: &[u8]) -> bool {
    // 2024-05-11, 11.05.2024, 05/11/2024 and times 12:30:45 have their own shapes: one
    // year-like part of four digits, the others of one or two.
    let s = std::str::from_utf8(cand).unwrap_or("");
    let parts: Vec<&str> = s.split(['-', '.', '/', ':']).collect();
    let year = |p: &str| p.len() == 4 && (p.starts_with("19") || p.starts_with("20"));
    parts.len() == 3
        && parts.iter().all(|p| p.bytes().all(|c| c.is_ascii_digit()))
        && ((year(parts[0]) && parts[1].len() <= 2 && parts[2].len() <= 2)
            || (year(parts[2]) && parts[0].len() <= 2 && parts[1].len() <= 2))
}

/// NANP numbers written with their usual punctuation (`(720) 783-9908`, `720-783-9908`,
/// `720.783.9908`, with an optional extension). The 3-3-4 grouping is what identifies
/// them (generated data does not respect area-code rules), so no keyword is needed.
pub fn phone_nanp(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if byte_before(text, start).is_some_and(|c| is_word(c) || c == b'.' || c == b'-' || c == b'/') {
        return None;
    }
    let end = trim_phone_end(text, start, end);
    if byte_at(text, end).is_some_and(|c| is_word(c) || c == b'/')
        || (byte_at(text, end).is_some_and(|c| c == b'.' || c == b'-')
            && byte_at(text, end + 1).is_some_and(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let d = digits_of(&text.as_bytes()[start..end]);
    (d.len() >= 10).then_some((start, end))
}

/// Dates found after a birth keyword: the date part of the match must be a plausible
/// calendar date (month 1–12 or a month name, day 1–31).
pub fn dob(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let s = &text[start..end];
    let nums: Vec<u32> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    if nums.is_empty()
        || nums.iter().all(|&n| n < 1000)
            && nums.len() >= 3
            && !nums.iter().any(|&n| n > 31)
            && s.contains('年')
    {
        return None;
    }
    let year_ok = nums.iter().any(|&n| (1900..=2030).contains(&n)) || nums.len() >= 3;
    year_ok.then_some((start, end))
}

/// VAT / tax ids with a country prefix or a distinctive shape (`DE123456789`,
/// `NL504435807B86`, GSTIN, `T` + 13 digits, MX RFC, BR CPF, CA BN): standalone tokens
/// that contain at least 8 digits, and checksums where the scheme has one that every
/// issued id satisfies (CPF).
pub fn vat(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !standalone(text, start, end)
        || byte_before(text, start).is_some_and(|b| b == b'-' || b == b'/' || b == b'.')
        || byte_at(text, end).is_some_and(|b| b == b'-')
    {
        return None;
    }
    let cand = &text.as_bytes()[start..end];
    let d = digits_of(cand);
    if d.len() < 6 {
        return None;
    }
    // Brazilian CPF: 000.000.000-00 with two mod-11 check digits.
    if cand.len() == 14 && cand[3] == b'.' && cand[7] == b'.' && cand[11] == b'-' {
        return cpf_valid(&d).then_some((start, end));
    }
    // An IBAN is not a VAT id (its own detector reports it).
    if cand.len() >= 15
        && cand[..2].iter().all(u8::is_ascii_uppercase)
        && iban_length(&cand[..2]).is_some_and(|l| l == cand.iter().filter(|b| **b != b' ').count())
    {
        return None;
    }
    Some((start, end))
}

fn cpf_valid(d: &[u8]) -> bool {
    if d.len() != 11 || d.iter().all(|&c| c == d[0]) {
        return false;
    }
    let v: Vec<u32> = d.iter().map(|c| u32::from(c - b'0')).collect();
    let check = |n: usize| {
        let s: u32 = (0..n).map(|i| v[i] * (n as u32 + 1 - i as u32)).sum();
        let r = (s * 10) % 11;
        if r == 10 {
            0
        } else {
            r
        }
    };
    check(9) == v[9] && check(10) == v[10]
}

/// A tax id found after a tax keyword (`EIN 12-3456789`, `ABN 51 824 753 556`): any
/// standalone token of 8–15 digits with at most single separators.
pub fn tax_in_context(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let end = trim_phone_end(text, start, end);
    let d = digits_of(&text.as_bytes()[start..end]);
    ((8..=15).contains(&d.len()) && standalone(text, start, end)).then_some((start, end))
}

/// An HTTP credential after `Basic`/`Bearer`/`Token`: Basic must decode to `user:secret`;
/// others must look like a token (a digit, or mixed case, and no plain word).
pub fn auth_credential(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    use base64::Engine;
    let cand = &text[start..end];
    let ctx = context_before(text, start, 8);
    if ctx.trim_end().ends_with("basic") {
        let ok = base64::engine::general_purpose::STANDARD
            .decode(cand)
            .ok()
            .is_some_and(|d| d.contains(&b':'));
        return ok.then_some((start, end));
    }
    let has_digit = cand.bytes().any(|b| b.is_ascii_digit());
    let mixed = cand.bytes().any(|b| b.is_ascii_uppercase())
        && cand.bytes().any(|b| b.is_ascii_lowercase());
    (cand.len() >= 16 && (has_digit || mixed)).then_some((start, end))
}

/// Australian Business Number: 11 digits in the written `51 824 753 556` grouping with the
/// ABN weighted mod-89 check.
pub fn abn(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let d = digits_of(&text.as_bytes()[start..end]);
    if d.len() != 11 || !standalone(text, start, end) {
        return None;
    }
    const W: [u32; 11] = [10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19];
    let mut sum = 0;
    for (i, c) in d.iter().enumerate() {
        let mut v = u32::from(c - b'0');
        if i == 0 {
            v = v.checked_sub(1)?;
        }
        sum += v * W[i];
    }
    (sum % 89 == 0).then_some((start, end))
}

/// A 40-character secret that does not run on into more base64 characters.
pub fn secret40(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let more = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
    (!byte_at(text, end).is_some_and(more)).then_some((start, end))
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

    #[test]
    fn iban_checks_country_length_and_mod97() {
        let t = "x DE89370400440532013000 y";
        assert_eq!(iban(t, 2, 24), Some((2, 24)));
        let t = "GB90 GBID 8887 6908 0501 24";
        assert_eq!(iban(t, 0, t.len()), Some((0, t.len())));
        assert_eq!(iban("DE89370400440532013001", 0, 22), None);
        assert_eq!(iban("DE8937040044053201300", 0, 21), None);
    }

    #[test]
    fn ipv6_needs_a_real_address() {
        let ok = |s: &str| ipv6(s, 0, s.len()).is_some();
        assert!(ok("2a02:0:2f98:eb4a:d4ed::fcc9"));
        assert!(ok("2001:DB8:8DB5:3F20:3642:BFDF:65F4:E9D9"));
        assert!(!ok("12:30:45"));
        assert!(!ok("de::ad"));
    }

    #[test]
    fn cpf_check_digits() {
        assert!(cpf_valid(b"11144477735"));
        assert!(!cpf_valid(b"11144477736"));
    }
}

#[cfg(test)]
mod card_tests {
    use crate::redact::{Counts, Redactor};

    #[test]
    fn cards_next_to_numbers_and_other_cards_are_all_found() {
        let red = Redactor::defaults();
        for (input, want) in [
            ("n 12 4111111111111111", "n 12 [REDACTED:card]"),
            ("qty 2 4111 1111 1111 1111", "qty 2 [REDACTED:card]"),
            (
                "order 1234 4111-1111-1111-1111 ok",
                "order 1234 [REDACTED:card] ok",
            ),
            (
                "cards 4111111111111111 5500000000000004",
                "cards [REDACTED:card] [REDACTED:card]",
            ),
            (
                "cc 4111 1111 1111 1111 5500 0000 0000 0004",
                "cc [REDACTED:card] [REDACTED:card]",
            ),
        ] {
            assert_eq!(red.redact(input, &mut Counts::default()), want);
        }
    }
}
