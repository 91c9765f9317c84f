//! Decoded views of a text: URL-decoding, JSON/backslash unescaping and base64, each with
//! a map from every decoded byte back to the raw bytes it came from, so a finding in the
//! decoded text becomes a span of the original text (which is what gets masked).

use base64::Engine;

/// A decoded text and, for each of its bytes, the raw span that produced it.
pub struct View {
    pub text: String,
    map: Vec<(u32, u32)>,
}

impl View {
    /// The raw span of decoded bytes `start..end` (`end > start`).
    pub fn raw_span(&self, start: usize, end: usize) -> (usize, usize) {
        let s = self.map[start.min(self.map.len() - 1)].0 as usize;
        let e = self.map[(end - 1).min(self.map.len() - 1)].1 as usize;
        (s, e.max(s))
    }

    fn push(&mut self, c: char, raw: (usize, usize)) {
        let n = c.len_utf8();
        self.text.push(c);
        for _ in 0..n {
            self.map.push((raw.0 as u32, raw.1 as u32));
        }
    }

    fn push_bytes(&mut self, bytes: &[u8], raw: (usize, usize)) -> bool {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                for c in s.chars() {
                    self.push(c, raw);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn new(cap: usize) -> View {
        View {
            text: String::with_capacity(cap),
            map: Vec::with_capacity(cap),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `text` has a `%XX` escape.
pub fn has_percent_escape(text: &str) -> bool {
    let b = text.as_bytes();
    memchr::memchr_iter(b'%', b)
        .any(|i| i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some())
}

/// Percent-decodes `%XX` (a `+` stays a `+`: it is a space only in form values, and a
/// phone number's `+` must survive). Multi-byte UTF-8 sequences are decoded together;
/// invalid sequences are kept raw.
pub fn percent_decode(text: &str) -> View {
    let b = text.as_bytes();
    let mut v = View::new(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Gather a run of escapes to decode UTF-8 sequences whole.
                let start = i;
                let mut bytes = vec![h * 16 + l];
                let mut j = i + 3;
                while bytes[0] >= 0x80 && j + 2 < b.len() && b[j] == b'%' && bytes.len() < 4 {
                    match (hex(b[j + 1]), hex(b[j + 2])) {
                        (Some(h), Some(l)) if (h * 16 + l) & 0xC0 == 0x80 => {
                            bytes.push(h * 16 + l);
                            j += 3;
                        }
                        _ => break,
                    }
                }
                if v.push_bytes(&bytes, (start, j)) {
                    i = j;
                    continue;
                }
            }
        }
        let c = text[i..].chars().next().expect("in bounds");
        v.push(c, (i, i + c.len_utf8()));
        i += c.len_utf8();
    }
    v
}

/// Like [`percent_decode`] but `+` becomes a space (query-string values).
pub fn form_decode(text: &str) -> View {
    let mut v = percent_decode(text);
    // SAFETY of indices: replacing an ASCII byte by another keeps UTF-8 valid.
    v.text = v.text.replace('+', " ");
    v
}

/// Decodes backslash escapes: JSON's `\"`, `\\`, `\/`, `\n`, `\t`, `\uXXXX` (with
/// surrogate pairs), and `\xNN`, `\'`. Other backslashes are kept.
pub fn unescape(text: &str) -> View {
    let b = text.as_bytes();
    let mut v = View::new(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let start = i;
            match b[i + 1] {
                b'"' | b'\\' | b'/' | b'\'' => {
                    v.push(b[i + 1] as char, (start, i + 2));
                    i += 2;
                    continue;
                }
                b'n' | b't' | b'r' => {
                    v.push(' ', (start, i + 2));
                    i += 2;
                    continue;
                }
                b'u' if i + 6 <= b.len() => {
                    if let Ok(cp) = u32::from_str_radix(&text[i + 2..i + 6], 16) {
                        let mut end = i + 6;
                        let mut ch = char::from_u32(cp);
                        if (0xD800..0xDC00).contains(&cp)
                            && end + 6 <= b.len()
                            && &b[end..end + 2] == b"\\u"
                        {
                            if let Ok(lo) = u32::from_str_radix(&text[end + 2..end + 6], 16) {
                                if (0xDC00..0xE000).contains(&lo) {
                                    ch = char::from_u32(
                                        0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00),
                                    );
                                    end += 6;
                                }
                            }
                        }
                        if let Some(c) = ch {
                            v.push(c, (start, end));
                            i = end;
                            continue;
                        }
                    }
                }
                b'x' if i + 4 <= b.len() => {
                    if let (Some(h), Some(l)) = (hex(b[i + 2]), hex(b[i + 3])) {
                        let byte = h * 16 + l;
                        if byte < 0x80 {
                            v.push(byte as char, (start, i + 4));
                            i += 4;
                            continue;
                        }
                    }
                }
                _ => {}
            }
        }
        let c = text[i..].chars().next().expect("in bounds");
        v.push(c, (i, i + c.len_utf8()));
        i += c.len_utf8();
    }
    v
}

/// Decodes a base64 or base64url segment (padding optional). `None` when it does not
/// decode or the result is not mostly printable UTF-8 text (binary data is not scanned).
pub fn base64_text(segment: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let trimmed = segment.trim_end_matches('=');
    let bytes = if segment.contains(['-', '_']) {
        URL_SAFE_NO_PAD
            .decode(trimmed)
            .or_else(|_| URL_SAFE.decode(segment))
    } else {
        STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| STANDARD.decode(segment))
    }
    .ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let printable = s
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .count();
    (printable * 10 >= s.chars().count() * 9 && !s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_views_map_back_to_raw_spans() {
        let raw = "e=jane%40example.com&n=Jos%C3%A9";
        let v = percent_decode(raw);
        assert_eq!(v.text, "e=jane@example.com&n=José");
        let s = v.text.find("jane").unwrap();
        let e = v.text.find(".com").unwrap() + 4;
        let (rs, re) = v.raw_span(s, e);
        assert_eq!(&raw[rs..re], "jane%40example.com");
        let s = v.text.find("José").unwrap();
        let (rs, re) = v.raw_span(s, v.text.len());
        assert_eq!(&raw[rs..re], "Jos%C3%A9");
    }

    #[test]
    fn unescape_handles_unicode_and_quotes() {
        let raw = r#"{\"name\":\"Asunci\u00f3n R\"}"#;
        let v = unescape(raw);
        assert_eq!(v.text, r#"{"name":"Asunción R"}"#);
        let s = v.text.find("Asun").unwrap();
        let (rs, re) = v.raw_span(s, s + "Asunción R".len());
        assert_eq!(&raw[rs..re], r"Asunci\u00f3n R");
    }

    #[test]
    fn base64_decodes_text_only() {
        assert_eq!(
            base64_text("aGVsbG8gd29ybGQ=").as_deref(),
            Some("hello world")
        );
        assert_eq!(
            base64_text("aGVsbG8gd29ybGQ").as_deref(),
            Some("hello world")
        );
        assert!(base64_text("////////////").is_none());
    }
}
