//! Records: one JSON object per line of a batch payload.
//!
//! ```json
//! {"host":"web-1","source":"app","stream":"default","path":"/var/log/app.log","offset":0,
//!  "timestamp":"2026-12-03T18:07:14.123456Z","body":"user [REDACTED:email] logged in",
//!  "redactions":{"email":1}}
//! ```
//! Optional fields: `observed_timestamp` (when `timestamp` is an event time from a container
//! runtime), `attributes` (`{"log.iostream": "stdout"|"stderr"}`), `body_encoding: "escaped"` when the line was not valid UTF-8 (see
//! [`decode_line`]); `part` and `last_part` for a line split at `max_line_bytes`;
//! `json_error: true` for a line of a `json` source that did not parse; `redactions` when
//! anything was redacted.
//!
//! A record on the `legal` stream (fields kept under a legal exception) carries no body:
//!
//! ```json
//! {"host":"web-1","source":"billing","stream":"legal","path":"/var/log/billing.log",
//!  "offset":812,"timestamp":"2026-12-03T18:07:14.123456Z","exception":"tax-invoice",
//!  "legal_basis":"VAT Directive 2006/112/EC art. 244","purpose":"tax invoice",
//!  "retention_days":3650,"key_id":"9f2c41d07a6b3e58","fields":["buyer.tax_id"],
//!  "sealed":"<base64 sealed box>"}
//! ```
//! `fields` names the field paths inside `sealed` (names only, never values); `sealed`
//! opens with the compliance secret key (`logveil reveal`) to `{field path: value}`.

use crate::redact::legal::Exception;
use std::borrow::Cow;

/// What a legal-stream record says besides the chunk's common prefix.
pub struct LegalTags<'a, F> {
    pub offset: u64,
    /// `,"timestamp":"…"` (and `observed_timestamp`), as in the line's default record.
    pub times: &'a [u8],
    pub exception: &'a Exception,
    pub key_id: &'a str,
    /// The field paths the sealed object holds.
    pub fields: F,
    /// Base64 of the sealed box.
    pub sealed: &'a str,
}

/// Appends one legal-stream record (with its newline) to `out`. `prefix` is the chunk's
/// `{"host":…,"source":…,"stream":"legal","path":…,"offset":` prefix.
pub fn push_legal_record<'a>(
    out: &mut Vec<u8>,
    prefix: &[u8],
    tags: &LegalTags<'a, impl Iterator<Item = &'a str> + Clone>,
) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(tags.offset.to_string().as_bytes());
    out.extend_from_slice(tags.times);
    out.extend_from_slice(b",\"exception\":");
    push_json_str(out, &tags.exception.name);
    out.extend_from_slice(b",\"legal_basis\":");
    push_json_str(out, &tags.exception.legal_basis);
    out.extend_from_slice(b",\"purpose\":");
    push_json_str(out, &tags.exception.purpose);
    out.extend_from_slice(b",\"retention_days\":");
    out.extend_from_slice(tags.exception.retention_days.to_string().as_bytes());
    out.extend_from_slice(b",\"key_id\":");
    push_json_str(out, tags.key_id);
    out.extend_from_slice(b",\"fields\":[");
    for (i, f) in tags.fields.clone().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(out, f);
    }
    out.extend_from_slice(b"],\"sealed\":");
    push_json_str(out, tags.sealed);
    out.extend_from_slice(b"}\n");
}

/// Turns a line's bytes into text. Valid UTF-8 is returned as is (borrowed). Otherwise
/// every invalid byte becomes the four characters `\xNN` and every backslash is doubled, so
/// the original bytes can be recovered exactly; the record then says
/// `"body_encoding":"escaped"`.
pub fn decode_line(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Cow::Borrowed(s), false),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 16);
            for chunk in bytes.utf8_chunks() {
                for c in chunk.valid().chars() {
                    if c == '\\' {
                        out.push_str("\\\\");
                    } else {
                        out.push(c);
                    }
                }
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            (Cow::Owned(out), true)
        }
    }
}

/// Decodes and redacts a line. Valid UTF-8 is redacted as one text. Otherwise the whole
/// line is redacted as one text in which each invalid byte stands for itself as a
/// private-use character (one 256-character block the line does not use): that character
/// is no letter or digit, so an escape's hex digits never glue onto a value and hide it,
/// yet a JSON document or a quoted value with a stray Latin-1 byte inside
/// (`{"buyer_name":"Jos\xe9 Garcia"}`) is still read whole. The result is escaped as
/// [`decode_line`] does, so the redacted body still unescapes exactly. Only a line that
/// uses all 25 blocks falls back to redacting each valid stretch on its own.
pub fn redact_line<'a>(
    bytes: &'a [u8],
    mut redact: impl for<'s> FnMut(&'s str) -> Cow<'s, str>,
) -> (Cow<'a, str>, bool) {
    let Err(_) = std::str::from_utf8(bytes) else {
        let text = std::str::from_utf8(bytes).expect("checked");
        return (redact(text), false);
    };
    let mut out = String::with_capacity(bytes.len() + 16);
    let push_escaped = |out: &mut String, c: char| {
        if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    };
    match stand_in_block(bytes) {
        Some(base) => {
            let mut scan = String::with_capacity(bytes.len() * 2);
            for chunk in bytes.utf8_chunks() {
                scan.push_str(chunk.valid());
                for &b in chunk.invalid() {
                    scan.push(char::from_u32(base + u32::from(b)).expect("private use"));
                }
            }
            for c in redact(&scan).chars() {
                match u32::from(c).checked_sub(base) {
                    Some(b) if b < 256 => out.push_str(&format!("\\x{b:02X}")),
                    _ => push_escaped(&mut out, c),
                }
            }
        }
        None => {
            for chunk in bytes.utf8_chunks() {
                for c in redact(chunk.valid()).chars() {
                    push_escaped(&mut out, c);
                }
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
        }
    }
    (Cow::Owned(out), true)
}

/// The first of the private-use blocks U+E000, U+E100, … U+F800 that no character of the
/// line's valid text falls in: its characters stand in for invalid bytes while redacting.
fn stand_in_block(bytes: &[u8]) -> Option<u32> {
    let mut used = [false; 25];
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let cp = u32::from(c);
            if (0xE000..0xF900).contains(&cp) {
                used[((cp - 0xE000) / 256) as usize] = true;
            }
        }
    }
    (0..25u32)
        .find(|&i| !used[i as usize])
        .map(|i| 0xE000 + i * 256)
}

/// Maps a byte offset in the text [`redact_line`] redacted back to the line's bytes: for a
/// line that is not valid UTF-8, each invalid byte is three bytes long in that text.
pub fn input_offset(bytes: &[u8], scan_offset: usize) -> usize {
    if std::str::from_utf8(bytes).is_ok() || stand_in_block(bytes).is_none() {
        return scan_offset;
    }
    let (mut scan, mut input) = (0, 0);
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().len();
        if scan_offset <= scan + valid {
            return input + (scan_offset - scan);
        }
        scan += valid;
        input += valid;
        for _ in chunk.invalid() {
            if scan_offset < scan + 3 {
                return input;
            }
            scan += 3;
            input += 1;
        }
    }
    input
}

/// Reverses [`decode_line`] for an escaped body.
pub fn unescape_body(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if b[i + 1] == b'\\' {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b[i + 1] == b'x' && i + 3 < b.len() {
                if let Ok(v) = u8::from_str_radix(&text[i + 2..i + 4], 16) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_is_untouched() {
        let (s, esc) = decode_line("héllo \\ world".as_bytes());
        assert_eq!((s.as_ref(), esc), ("héllo \\ world", false));
    }

    #[test]
    fn a_field_value_holding_an_invalid_byte_is_masked_whole() {
        let red = crate::redact::Redactor::defaults();
        let mut counts = crate::redact::Counts::default();
        // Latin-1 `é` inside a JSON name field, and a private-use character of the first
        // stand-in block in the text: the next block stands in, the text comes back intact.
        let raw = "{\"buyer_name\":\"Jos\u{FFFD} Garcia\",\"note\":\"\u{E0E9}\\\"}"
            .replace('\u{FFFD}', "\u{1}");
        let mut raw = raw.into_bytes();
        let at = raw.iter().position(|&b| b == 1).unwrap();
        raw[at] = 0xe9;
        let (body, escaped) = redact_line(&raw, |t| red.redact(t, &mut counts));
        assert!(escaped);
        assert_eq!(
            body,
            "{\"buyer_name\":\"[REDACTED:name]\",\"note\":\"\u{E0E9}\\\\\"}"
        );
        assert_eq!(
            unescape_body(&body),
            "{\"buyer_name\":\"[REDACTED:name]\",\"note\":\"\u{E0E9}\\\"}".as_bytes()
        );
    }

    #[test]
    fn offsets_in_the_redacted_text_map_back_to_the_line() {
        let raw = b"a\xffb jane@x.io";
        // In the redacted text the invalid byte is three bytes long.
        assert_eq!(input_offset(raw, 0), 0);
        assert_eq!(input_offset(raw, 1), 1);
        assert_eq!(input_offset(raw, 4), 2);
        assert_eq!(input_offset(raw, 7), 5);
        assert_eq!(input_offset(raw, 15), 13);
        assert_eq!(input_offset(b"valid", 3), 3);
    }

    #[test]
    fn values_next_to_invalid_bytes_are_redacted_and_the_body_still_unescapes() {
        let red = crate::redact::Redactor::defaults();
        let mut counts = crate::redact::Counts::default();
        let raw = b"N\xb04111111111111111 mail\xa0jane@example.com IP\xa0192.168.1.20 \\ end";
        let (body, escaped) = redact_line(raw, |t| red.redact(t, &mut counts));
        assert!(escaped);
        assert_eq!(
            body,
            "N\\xB0[REDACTED:card] mail\\xA0[REDACTED:email] IP\\xA0[REDACTED:ipv4] \\\\ end"
        );
        let back = unescape_body(&body);
        assert!(back.starts_with(b"N\xb0[REDACTED:card]"));
        assert!(back.ends_with(b" \\ end"));
    }

    #[test]
    fn invalid_bytes_are_escaped_losslessly() {
        let raw = b"a\xff\\x41b\xc3";
        let (s, esc) = decode_line(raw);
        assert!(esc);
        assert_eq!(s, "a\\xFF\\\\x41b\\xC3");
        assert_eq!(unescape_body(&s), raw);
    }
}
