//! What differs between engines in a statement's text: PostgreSQL numbers
//! its placeholders. Plugins write `?` on every engine; for PostgreSQL the
//! host rewrites each `?` that is a placeholder as `$1, $2, ...`, so it has
//! to know where PostgreSQL's lexer would see a string, an identifier or a
//! comment. Written by hand: no crate does only this, and a full SQL parser
//! would refuse statements PostgreSQL accepts.
//!
//! What is left alone: `'...'` strings (`''` inside), `E'...'` strings
//! (backslash escapes as well), `"..."` identifiers, dollar-quoted strings
//! (`$$...$$`, `$tag$...$tag$`), `-- ...` line comments and `/* ... */`
//! comments, which nest. The jsonb operators `?|` and `?&` stay operators;
//! the bare `?` operator is written `??` (as with JDBC), which becomes `?`.

/// Rewrites `?` placeholders as `$1, $2, ...` for PostgreSQL.
pub fn number_placeholders(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0u32;
    // Start of the text not yet copied to `out`: everything is copied as
    // is except placeholders, so only those splice.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && (i < 2 || !is_ident_byte(bytes[i - 2]));
                i = skip_quoted(bytes, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = match bytes[i..].iter().position(|&b| b == b'\n') {
                    Some(end) => i + end + 1,
                    None => bytes.len(),
                };
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'$' if i == 0 || !is_ident_byte(bytes[i - 1]) => {
                i = match dollar_tag(bytes, i) {
                    Some(tag) => skip_dollar_quoted(bytes, i, tag),
                    None => i + 1,
                };
            }
            b'?' => {
                let next = bytes.get(i + 1).copied();
                let after = bytes.get(i + 2).copied();
                match next {
                    // `??` is the operator `?`: one of the two goes.
                    Some(b'?') => {
                        out.push_str(&sql[copied..=i]);
                        i += 2;
                        copied = i;
                    }
                    // `?|` and `?&` are jsonb operators, unless doubled
                    // (`?||` is a placeholder followed by `||`).
                    Some(op @ (b'|' | b'&')) if after != Some(op) => i += 2,
                    _ => {
                        n += 1;
                        out.push_str(&sql[copied..i]);
                        out.push('$');
                        out.push_str(&n.to_string());
                        i += 1;
                        copied = i;
                    }
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    out
}

/// Whether `b` may be part of an identifier or keyword (`$` included:
/// PostgreSQL allows it after the first character). Bytes of multi-byte
/// characters count, as PostgreSQL's lexer counts them.
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The end of a quoted run that starts at `start` with `quote`; a doubled
/// quote stays inside, and so does an escaped one where backslashes escape.
/// Unterminated, it runs to the end.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8, escapes: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The end of a block comment at `start`; comments nest.
fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// The dollar-quote tag opening at `start` (`$$` or `$name$`, the name an
/// identifier that does not start with a digit), or `None` where the `$`
/// starts something else, such as `$1`.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<&[u8]> {
    let rest = &bytes[start + 1..];
    let len = rest.iter().position(|&b| b == b'$')?;
    let name = &rest[..len];
    let valid = match name.first() {
        None => true,
        Some(first) => {
            !first.is_ascii_digit()
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
        }
    };
    valid.then(|| &bytes[start..start + len + 2])
}

/// The end of a dollar-quoted string opened by `tag` at `start`;
/// unterminated, it runs to the end.
fn skip_dollar_quoted(bytes: &[u8], start: usize, tag: &[u8]) -> usize {
    let body = start + tag.len();
    bytes[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(bytes.len(), |end| body + end + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes_and_comments() {
        assert_eq!(
            number_placeholders(
                "SELECT * FROM t WHERE a = ? AND b = '?' AND \"c?\" = ? -- ?\n AND d = ? /* ? */"
            ),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND \"c?\" = $2 -- ?\n AND d = $3 /* ? */"
        );
    }

    #[test]
    fn what_postgres_reads_as_strings_and_comments_keeps_its_question_marks() {
        for (sql, numbered) in [
            // Dollar quotes, plain and tagged, with `$` and `?` inside.
            ("SELECT $$ ? $$, ?", "SELECT $$ ? $$, $1"),
            (
                "SELECT $fn$ it's ? $x$ ? $fn$, ?",
                "SELECT $fn$ it's ? $x$ ? $fn$, $1",
            ),
            ("SELECT $1, ?", "SELECT $1, $1"),
            (
                "SELECT a$b$ FROM t WHERE x = ?",
                "SELECT a$b$ FROM t WHERE x = $1",
            ),
            // E'' strings take backslash escapes; plain strings do not.
            (r"SELECT E'\' ?', ?", r"SELECT E'\' ?', $1"),
            (r"SELECT e'\\', ?", r"SELECT e'\\', $1"),
            (r"SELECT '\', ?", r"SELECT '\', $1"),
            (r"SELECT NOTE'x', ?", r"SELECT NOTE'x', $1"),
            ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1"),
            // Block comments nest.
            ("/* a /* ? */ ? */ SELECT ?", "/* a /* ? */ ? */ SELECT $1"),
            // jsonb operators.
            ("SELECT d ?| ?, d ?& ?", "SELECT d ?| $1, d ?& $2"),
            ("SELECT d ?? 'k', ?", "SELECT d ? 'k', $1"),
            ("SELECT ?||'x', ?&&?", "SELECT $1||'x', $2&&$3"),
            // Unterminated runs end the text.
            ("SELECT '?", "SELECT '?"),
            ("SELECT $$ ?", "SELECT $$ ?"),
            ("/* ? /* */ ?", "/* ? /* */ ?"),
            ("?", "$1"),
            ("", ""),
            ("é = ? -- ?", "é = $1 -- ?"),
        ] {
            assert_eq!(number_placeholders(sql), numbered, "{sql}");
        }
    }
}
