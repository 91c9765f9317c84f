//! SQL literal stripping for database audit lines (pgaudit, MariaDB server_audit) and
//! for SQL held in a configured field: every string and numeric literal of a statement
//! becomes a placeholder, so values in INSERT/UPDATE/WHERE never leave, while the shape
//! (operation, tables, columns) stays.
//!
//! A statement starts at a SQL verb (`INSERT`, `UPDATE`, `DELETE`, `SELECT`, `REPLACE`,
//! `MERGE`, `UPSERT`, `CALL`, `WITH`, `VALUES`) that is followed by the clause that makes it a
//! statement (`INTO`, `SET`, `FROM`, …), and runs to the end of the text. Inside it:
//! - `'…'` (with `''` or `\'` inside), `E'…'`, `$$…$$` / `$tag$…$tag$` are string literals;
//!   when the statement itself sits in a single-quoted field (MariaDB audit:
//!   `'INSERT … VALUES (\'x\')'`), `\'…\'` delimits the literals;
//! - a number not glued to an identifier (`id = 7419`, `76.22`, `-3`) is a numeric literal;
//! - `"…"` and backquoted names are identifiers and are kept.
//!
//! The literal's inside becomes `?` (string quotes are kept, so `'?'`), a number becomes `?`.

/// Literal spans (raw byte ranges to replace by `?`) of every statement in `text`.
pub fn literal_spans(text: &str, re: &regex::Regex, out: &mut Vec<(usize, usize)>) {
    let b = text.as_bytes();
    let Some(m) = re.find(text) else { return };
    let start = m.start();
    // MariaDB audit: the statement is a single-quoted field with backslash escapes.
    let in_quoted_field = start > 0 && b[start - 1] == b'\'';
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        if in_quoted_field && c == b'\\' && i + 1 < b.len() && b[i + 1] == b'\'' {
            // \'…\' literal; inside, \\\' or '' may escape.
            let s = i + 2;
            let mut j = s;
            loop {
                if j + 1 >= b.len() {
                    j = b.len();
                    break;
                }
                if b[j] == b'\\' && b[j + 1] == b'\\' {
                    j += 2;
                    continue;
                }
                if b[j] == b'\\' && b[j + 1] == b'\'' {
                    // `\'` followed by a letter is an apostrophe inside (`O\'Sullivan`).
                    if b.get(j + 2).is_some_and(|x| x.is_ascii_alphabetic()) {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            if j > s {
                out.push((s, j));
            }
            i = j + 2;
            continue;
        }
        if in_quoted_field && c == b'\'' {
            // End of the quoted field: the statement ends here.
            break;
        }
        match c {
            b'\'' => {
                let s = i + 1;
                let mut j = s;
                while j < b.len() {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 2;
                        continue;
                    }
                    if b[j] == b'\'' {
                        if j + 1 < b.len() && b[j + 1] == b'\'' {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                let e = j.min(b.len());
                if e > s {
                    out.push((s, e));
                }
                i = e + 1;
            }
            b'$' => {
                // $tag$ … $tag$
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(te) if b[te] == b'$' => {
                        let tag = &text[i..=te];
                        let s = te + 1;
                        let e = text[s..].find(tag).map(|p| s + p).unwrap_or(b.len());
                        if e > s {
                            out.push((s, e));
                        }
                        i = (e + tag.len()).min(b.len());
                    }
                    _ => i += 1,
                }
            }
            b'"' | b'`' => {
                // Identifier (or, in pgaudit, the CSV quote around the statement: then the
                // next byte starts the statement body, so only skip real identifiers).
                let close = b[i + 1..].iter().position(|&x| x == c).map(|p| i + 1 + p);
                match close {
                    Some(e)
                        if e - i < 64
                            && b[i + 1..e]
                                .iter()
                                .all(|x| x.is_ascii_alphanumeric() || *x == b'_' || *x == b'.') =>
                    {
                        i = e + 1
                    }
                    _ => i += 1,
                }
            }
            b'0'..=b'9' => {
                let glued = i > 0
                    && (b[i - 1].is_ascii_alphanumeric()
                        || b[i - 1] == b'_'
                        || b[i - 1] == b'.'
                        || b[i - 1] == b'$');
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_')
                {
                    j += 1;
                }
                if !glued
                    && b[i..j]
                        .iter()
                        .all(|x| x.is_ascii_digit() || *x == b'.' || *x == b'e' || *x == b'E')
                {
                    out.push((i, j));
                }
                i = j;
            }
            _ => i += 1,
        }
    }
}

/// The pattern that finds where a statement starts.
pub const STATEMENT: &str = r"(?i)\b(?:INSERT\s+(?:IGNORE\s+)?INTO|REPLACE\s+INTO|UPDATE\s+[\w.`\x22]+\s+SET|DELETE\s+FROM|SELECT\s[\s\S]*?\sFROM|MERGE\s+INTO|UPSERT\s+INTO|CALL\s+\w+\s*\(|COPY\s+[\w.]+\s+FROM|WITH\s+\w+\s+AS\s*\()";

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(t: &str) -> String {
        let re = regex::Regex::new(STATEMENT).unwrap();
        let mut spans = Vec::new();
        literal_spans(t, &re, &mut spans);
        let mut out = String::new();
        let mut pos = 0;
        for (s, e) in spans {
            out.push_str(&t[pos..s]);
            out.push('?');
            pos = e;
        }
        out.push_str(&t[pos..]);
        out
    }

    #[test]
    fn pgaudit_literals_become_placeholders() {
        assert_eq!(
            strip(
                r#"AUDIT: SESSION,1,1,WRITE,INSERT,TABLE,t,"INSERT INTO t(a, b) VALUES ('O''Brien', 76.22) RETURNING id",<not logged>"#
            ),
            r#"AUDIT: SESSION,1,1,WRITE,INSERT,TABLE,t,"INSERT INTO t(a, b) VALUES ('?', ?) RETURNING id",<not logged>"#
        );
        assert_eq!(
            strip("SELECT count(*) FROM order_items WHERE id = 86265006096062 AND t2.x = 'a'"),
            "SELECT count(*) FROM order_items WHERE id = ? AND t2.x = '?'"
        );
    }

    #[test]
    fn mariadb_quoted_statements_use_backslash_quotes() {
        assert_eq!(
            strip(
                r"20240511 11:30:40,db,u,1.2.3.4,1,2,QUERY,shop,'UPDATE b SET n = \'Mahnaz O\'Sullivan\' WHERE id = 257972',0"
            ),
            r"20240511 11:30:40,db,u,1.2.3.4,1,2,QUERY,shop,'UPDATE b SET n = \'?\' WHERE id = ?',0"
        );
    }
}
