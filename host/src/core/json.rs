//! Whether a text is one JSON value: the check on what a plugin answers,
//! before the host writes it into an envelope as it is (anything else could
//! end the envelope's object early and forge its fields).
//!
//! Written here rather than taken from serde_json's `IgnoredAny`, which
//! gives the same verdict with a reader's bookkeeping and a nesting stack
//! it allocates, on every request: some 1,350 instructions for the
//! benchmark's 50-byte answer against 700 here (2% of a socket request,
//! for each of its two scans).
//! The fuzz target `json` holds the scan to serde_json's verdict, and a
//! text the scan refuses is looked at by serde_json again, so that a
//! refusal always comes with serde_json's own words for what is wrong.

/// Containers nested deeper than this are left to serde_json.
const MAX_DEPTH: usize = 128;
// The scan keeps its open containers as the bits of a `u128`.
const _: () = assert!(MAX_DEPTH <= u128::BITS as usize);

/// `Ok` when `text` is exactly one JSON value (RFC 8259) with optional
/// whitespace around it, as serde_json reads it; otherwise serde_json's
/// description of the first thing wrong.
pub fn check_value(text: &str) -> Result<(), serde_json::Error> {
    one_value(text).map(drop)
}

/// The JSON value `text` holds, without the whitespace around it, when
/// `text` is exactly one value (as serde_json reads a `RawValue` from it);
/// otherwise serde_json's description of the first thing wrong. For a
/// request body taken as a plugin's params as it is written.
pub fn one_value(text: &str) -> Result<&str, serde_json::Error> {
    let bytes = text.as_bytes();
    let start = whitespace(bytes, 0);
    match value(bytes, start) {
        Ok(end) if whitespace(bytes, end) == bytes.len() => Ok(&text[start..end]),
        // A refusal (or a nesting too deep for the scan) is rare: serde_json
        // says what is wrong (a raw value is read as `IgnoredAny` is, so in
        // the same words), and has the last word.
        _ => serde_json::from_str::<&serde_json::value::RawValue>(text).map(|raw| raw.get()),
    }
}

/// The scan alone: whether `text` (UTF-8 already) is one JSON value, or
/// `None` when it nests containers deeper than [`MAX_DEPTH`]. The host
/// goes through [`one_value`]; this three-way verdict is what the tests and
/// the fuzz target `json` hold to serde_json's.
#[cfg_attr(not(test), allow(dead_code))]
pub fn scan(text: &[u8]) -> Option<bool> {
    match value(text, whitespace(text, 0)) {
        Ok(end) => Some(whitespace(text, end) == text.len()),
        Err(Stop::Invalid) => Some(false),
        Err(Stop::Deep) => None,
    }
}

/// Where the JSON value that starts at `at` ends, when the bytes from there
/// begin with one (what follows it is not looked at); `None` when they do
/// not, or nest deeper than [`MAX_DEPTH`]. For a reader of a larger text
/// that takes a value as it is written, like the socket envelope's params.
pub fn value_end(text: &[u8], at: usize) -> Option<usize> {
    value(text, at).ok()
}

/// Why [`value`] stopped without a value.
enum Stop {
    Invalid,
    Deep,
}

/// One value from `at` (no whitespace before it): where it ends.
fn value(text: &[u8], mut at: usize) -> Result<usize, Stop> {
    // The open containers, innermost in the lowest bit: set for an object.
    let mut objects: u128 = 0;
    let mut depth = 0;
    'value: loop {
        // A value starts at `at`.
        at = match text.get(at) {
            Some(&bracket @ (b'[' | b'{')) => {
                if depth == MAX_DEPTH {
                    return Err(Stop::Deep);
                }
                objects = objects << 1 | u128::from(bracket == b'{');
                depth += 1;
                let inside = whitespace(text, at + 1);
                match (bracket, text.get(inside)) {
                    (b'[', Some(b']')) | (b'{', Some(b'}')) => {
                        depth -= 1;
                        objects >>= 1;
                        inside + 1
                    }
                    (b'[', _) => {
                        at = inside;
                        continue 'value;
                    }
                    _ => {
                        let Some(value) = key(text, inside) else {
                            return Err(Stop::Invalid);
                        };
                        at = value;
                        continue 'value;
                    }
                }
            }
            Some(b'"') => match string(text, at + 1) {
                Some(end) => end,
                None => return Err(Stop::Invalid),
            },
            Some(b'-' | b'0'..=b'9') => match number(text, at) {
                Some(end) => end,
                None => return Err(Stop::Invalid),
            },
            Some(b't') if text[at..].starts_with(b"true") => at + 4,
            Some(b'f') if text[at..].starts_with(b"false") => at + 5,
            Some(b'n') if text[at..].starts_with(b"null") => at + 4,
            _ => return Err(Stop::Invalid),
        };
        // After a value: close containers until a comma leads to the next.
        loop {
            if depth == 0 {
                return Ok(at);
            }
            at = whitespace(text, at);
            let bracket = if objects & 1 == 1 { b'{' } else { b'[' };
            match (bracket, text.get(at)) {
                (b'[', Some(b',')) => {
                    at = whitespace(text, at + 1);
                    continue 'value;
                }
                (b'{', Some(b',')) => {
                    let Some(value) = key(text, whitespace(text, at + 1)) else {
                        return Err(Stop::Invalid);
                    };
                    at = value;
                    continue 'value;
                }
                (b'[', Some(b']')) | (b'{', Some(b'}')) => {
                    depth -= 1;
                    objects >>= 1;
                    at += 1;
                }
                _ => return Err(Stop::Invalid),
            }
        }
    }
}

/// Past the whitespace JSON allows from `at`.
#[inline(always)]
pub fn whitespace(text: &[u8], mut at: usize) -> usize {
    // Mostly there is none: one comparison says so for any byte above a
    // space.
    while let Some(&byte) = text.get(at) {
        if byte > b' ' || !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
            break;
        }
        at += 1;
    }
    at
}

/// Where a string without escapes ends, from `at` just past its opening
/// quote: past its closing quote. `None` for a string with an escape or a
/// control character in it (or no end): the text between the quotes is
/// then not the string's value as it is.
pub fn plain_string_end(text: &[u8], at: usize) -> Option<usize> {
    let end = plain(text, at);
    (text.get(end) == Some(&b'"')).then_some(end + 1)
}

/// An object's key and its colon from `at`: where the value starts.
#[inline(always)]
fn key(text: &[u8], at: usize) -> Option<usize> {
    if text.get(at) != Some(&b'"') {
        return None;
    }
    let end = whitespace(text, string(text, at + 1)?);
    (text.get(end) == Some(&b':')).then(|| whitespace(text, end + 1))
}

/// A string's rest from `at` (just past its opening quote): where it ends.
/// The text is UTF-8 already; what is checked is escapes and that no
/// control character appears unescaped.
// This and the scan's other small steps are inlined: for the short strings
// and numbers of most answers, a call cost as much as the work (880
// instructions for the benchmark's params, 700 inlined).
#[inline(always)]
fn string(text: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = plain(text, at);
        match *text.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => match *text.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                // Any four hex digits: a lone surrogate is still JSON text
                // to serde_json when it only checks.
                b'u' => {
                    let digits = text.get(at + 2..at + 6)?;
                    if !digits.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    at += 6;
                }
                _ => return None,
            },
            // A control character: `plain` stops only at these three.
            _ => return None,
        }
    }
}

/// Past the bytes from `at` that need no second look: not `"`, `\` or a
/// control character. Eight at a time while eight remain, as serde_json
/// does too (strings are most of what an answer's bytes are).
fn plain(text: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    while let Some(chunk) = text.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set in `found` where the byte is `"`, `\` or
        // below 0x20; a borrow can also set it further up, but never below
        // the first such byte, which is all that is looked at.
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH;
        if found != 0 {
            return at + found.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    while let Some(&byte) = text.get(at) {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// A number from `at`: `-`, then `0` or digits not starting with `0`, then
/// optionally a fraction and an exponent, each with at least one digit.
#[inline(always)]
fn number(text: &[u8], mut at: usize) -> Option<usize> {
    if text.get(at) == Some(&b'-') {
        at += 1;
    }
    match text.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits(text, at + 1),
        _ => return None,
    }
    if text.get(at) == Some(&b'.') {
        let end = digits(text, at + 1);
        if end == at + 1 {
            return None;
        }
        at = end;
    }
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = text.get(at) {
            at += 1;
        }
        let end = digits(text, at);
        if end == at {
            return None;
        }
        at = end;
    }
    Some(at)
}

fn digits(text: &[u8], mut at: usize) -> usize {
    while text.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use serde::de::IgnoredAny;

    use super::*;

    fn serde_says(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    #[test]
    fn takes_what_serde_json_takes_and_refuses_the_rest() {
        let valid = [
            "{}",
            "[]",
            " \t\r\n{ \"a\" : [ 1 , -0.5e+7 , true , false , null , \"x\" ] } \n",
            r#"{"items":[1,2,3],"note":"hello ferry","user":"ada"}"#,
            r#""\"\\\/\b\f\n\r\t\u00e9\uD800""#,
            "0",
            "-0",
            "1E400",
            "12.0e-3",
            "\"é ∑ 😀\"",
            "[[[[{}]]],{\"\":{\"\":[]}}]",
        ];
        let invalid = [
            "",
            "   ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "truex",
            "[true false]",
            "\"unterminated",
            "\"tab\there\"",
            r#""\x""#,
            r#""\u12G4""#,
            r#""\u12""#,
            "{} {}",
            "1 2",
            "[1]]",
            "{\"a\":1}}",
            "[}",
            "{]",
            "\u{feff}{}",
            "NaN",
            "1}, \"status\": \"success\"",
        ];
        let raw = |text| serde_json::from_str::<&serde_json::value::RawValue>(text);
        for text in valid {
            assert_eq!(scan(text.as_bytes()), Some(true), "{text:?}");
            assert!(serde_says(text), "{text:?}");
            assert!(check_value(text).is_ok(), "{text:?}");
            assert_eq!(one_value(text).ok(), Some(raw(text).unwrap().get()));
        }
        for text in invalid {
            assert_eq!(scan(text.as_bytes()), Some(false), "{text:?}");
            assert!(!serde_says(text), "{text:?}");
            assert!(check_value(text).is_err(), "{text:?}");
            assert!(one_value(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_quote_backslash_or_control_is_found_wherever_it_sits() {
        // Past the eight-byte steps and at every place inside one, beside
        // bytes that differ from the special ones by their high bit only.
        let filler: Vec<char> = "ab\u{a2}c\u{700}d\u{7f}éfghijklmnopqrstuvwxyz"
            .chars()
            .collect();
        for len in 1..24 {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
                    let mut inner = filler[..len].to_vec();
                    inner[at] = special;
                    let text = format!("\"{}\"", inner.iter().collect::<String>());
                    assert_eq!(scan(text.as_bytes()), Some(serde_says(&text)), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn a_value_ends_where_it_ends_whatever_follows() {
        let end = |text: &str, at| value_end(text.as_bytes(), at);
        assert_eq!(end(r#"[1, {"a": "b"}] , x"#, 0), Some(15));
        assert_eq!(end(r#"x:"a\"b" }"#, 2), Some(8));
        assert_eq!(end("-1.5e3,", 0), Some(6));
        assert_eq!(end("null}", 0), Some(4));
        assert_eq!(end("[1,]", 0), None);
        assert_eq!(end("tru", 0), None);
        assert_eq!(end(" 1", 0), None, "no whitespace before the value");
        assert_eq!(end(&"[".repeat(MAX_DEPTH + 1), 0), None);
    }

    #[test]
    fn nesting_past_its_stack_is_left_to_serde_json() {
        let fits = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(scan(fits.as_bytes()), Some(true));
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(scan(deep.as_bytes()), None);
        assert!(check_value(&deep).is_ok());
        let broken = format!("{}{}", "[".repeat(1000), "]".repeat(999));
        assert!(check_value(&broken).is_err());
    }

    #[test]
    fn a_refusal_says_what_serde_json_says() {
        let message = check_value("[1,]").unwrap_err().to_string();
        assert_eq!(
            message,
            serde_json::from_str::<IgnoredAny>("[1,]")
                .unwrap_err()
                .to_string()
        );
    }
}
