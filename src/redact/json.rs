//! A span-preserving JSON walker: finds every string and number of a JSON document
//! inside a larger text, with the byte span of its raw text and the PII field type it
//! sits under, without building a tree and without changing a byte.
//!
//! The walker is strict about structure (so that a span is only reported for what really
//! is a JSON value) but stops at the first syntax error and reports what it saw so far;
//! the caller scans the rest as free text. Nesting deeper than [`MAX_DEPTH`] is an error
//! of its own, which the engine treats as "cannot scan" (fail closed).
//!
//! Under a PII field (`"shipping_address": {...}`) every leaf inherits the field's type,
//! unless its own key names another PII type (`"Phone"` inside an address is a phone).

pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    Str,
    Num,
}

/// A string (span without the quotes) or a number found in the document.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub start: usize,
    pub end: usize,
    pub kind: LeafKind,
    /// The string contains backslash escapes.
    pub escaped: bool,
    /// The PII field type this value sits under, if any.
    pub field: Option<FieldHit>,
}

#[derive(Debug, Clone, Copy)]
pub struct FieldHit {
    /// Index into the engine's field-type table.
    pub ty: usize,
    /// Span of the whole member (`"key": value`) of the outermost PII field.
    pub member: (usize, usize),
}

#[derive(Debug, PartialEq, Eq)]
pub enum JsonError {
    Syntax(usize),
    TooDeep,
}

/// Resolves a raw key to a field type index.
pub trait FieldTypes {
    fn field_type(&self, raw_key: &str) -> Option<usize>;
}

pub struct Walker<'a, F: FieldTypes> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
    fields: &'a F,
    pub leaves: Vec<Leaf>,
    /// Where the walked value ended.
    pub end: usize,
}

impl<'a, F: FieldTypes> Walker<'a, F> {
    pub fn new(text: &'a str, start: usize, fields: &'a F) -> Self {
        Walker {
            text,
            b: text.as_bytes(),
            pos: start,
            fields,
            leaves: Vec::new(),
            end: start,
        }
    }

    /// Walks one JSON value starting at the walker's position (whitespace skipped).
    pub fn walk(&mut self) -> Result<(), JsonError> {
        self.ws();
        self.value(None, 0)?;
        self.end = self.pos;
        Ok(())
    }

    fn ws(&mut self) {
        while self.pos < self.b.len() && matches!(self.b[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn err<T>(&self) -> Result<T, JsonError> {
        Err(JsonError::Syntax(self.pos))
    }

    fn value(&mut self, field: Option<FieldHit>, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        match self.b.get(self.pos) {
            Some(b'{') => self.object(field, depth),
            Some(b'[') => self.array(field, depth),
            Some(b'"') => {
                let (s, e, escaped) = self.string()?;
                self.leaves.push(Leaf {
                    start: s,
                    end: e,
                    kind: LeafKind::Str,
                    escaped,
                    field,
                });
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => {
                let s = self.pos;
                while self.pos < self.b.len()
                    && matches!(
                        self.b[self.pos],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.pos += 1;
                }
                self.leaves.push(Leaf {
                    start: s,
                    end: self.pos,
                    kind: LeafKind::Num,
                    escaped: false,
                    field,
                });
                Ok(())
            }
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'n') => self.lit(b"null"),
            _ => self.err(),
        }
    }

    fn lit(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.err()
        }
    }

    /// Returns the span inside the quotes and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        self.pos += 1;
        let s = self.pos;
        let mut escaped = false;
        loop {
            match memchr::memchr2(b'"', b'\\', &self.b[self.pos..]) {
                None => {
                    self.pos = self.b.len();
                    return self.err();
                }
                Some(i) => {
                    self.pos += i;
                    if self.b[self.pos] == b'\\' {
                        escaped = true;
                        self.pos += 2;
                        if self.pos > self.b.len() {
                            self.pos = self.b.len();
                            return self.err();
                        }
                    } else {
                        let e = self.pos;
                        self.pos += 1;
                        return Ok((s, e, escaped));
                    }
                }
            }
        }
    }

    fn object(&mut self, field: Option<FieldHit>, depth: usize) -> Result<(), JsonError> {
        self.pos += 1;
        self.ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.pos) != Some(&b'"') {
                return self.err();
            }
            let member_start = self.pos;
            let (ks, ke, _) = self.string()?;
            self.ws();
            if self.b.get(self.pos) != Some(&b':') {
                return self.err();
            }
            self.pos += 1;
            self.ws();
            // A key is read as JSON reads it: `"em\u0061il"` is the key `email`.
            let raw_key = &self.text[ks..ke];
            let own = if raw_key.contains('\\') {
                self.fields.field_type(&super::view::unescape(raw_key).text)
            } else {
                self.fields.field_type(raw_key)
            };
            let child = match (own, field) {
                (Some(ty), Some(outer)) => Some(FieldHit {
                    ty,
                    member: outer.member,
                }),
                (Some(ty), None) => Some(FieldHit {
                    ty,
                    member: (member_start, 0),
                }),
                (None, f) => f,
            };
            let leaves_before = self.leaves.len();
            self.value(child, depth + 1)?;
            if own.is_some() && field.is_none() {
                let end = self.pos;
                for l in &mut self.leaves[leaves_before..] {
                    if let Some(f) = &mut l.field {
                        if f.member.0 == member_start {
                            f.member.1 = end;
                        }
                    }
                }
            }
            self.ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.err(),
            }
        }
    }

    fn array(&mut self, field: Option<FieldHit>, depth: usize) -> Result<(), JsonError> {
        self.pos += 1;
        self.ws();
        if self.b.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(field, depth + 1)?;
            self.ws();
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.err(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fields;
    use super::*;

    struct Names;
    impl FieldTypes for Names {
        fn field_type(&self, raw: &str) -> Option<usize> {
            fields::builtin_field_type(&fields::normalize(raw)).map(|t| t.len())
        }
    }

    #[test]
    fn leaves_under_pii_fields_inherit_the_field() {
        let t = r#"{"a":1,"addr":{"shipping_address":{"city":"X","n":[2,"y"]}},"e":"z\"q"}"#;
        let mut w = Walker::new(t, 0, &Names);
        w.walk().unwrap();
        let under: Vec<&str> = w
            .leaves
            .iter()
            .filter(|l| l.field.is_some())
            .map(|l| &t[l.start..l.end])
            .collect();
        assert_eq!(under, vec!["X", "2", "y"]);
        assert!(w
            .leaves
            .iter()
            .any(|l| l.escaped && &t[l.start..l.end] == r#"z\"q"#));
        let m = w.leaves.iter().find_map(|l| l.field).unwrap().member;
        assert_eq!(
            &t[m.0..m.1],
            r#""shipping_address":{"city":"X","n":[2,"y"]}"#
        );
    }

    #[test]
    fn syntax_errors_and_depth_are_reported() {
        let mut w = Walker::new(r#"{"a":"#, 0, &Names);
        assert!(matches!(w.walk(), Err(JsonError::Syntax(_))));
        let deep = "[".repeat(100);
        let mut w = Walker::new(&deep, 0, &Names);
        assert_eq!(w.walk(), Err(JsonError::TooDeep));
    }
}
