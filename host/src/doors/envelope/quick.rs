//! The socket envelope read without serde, for the requests nearly every
//! frame is: an object of known keys, each once, whose strings have no
//! escapes. Whatever else a frame holds, this reader declines it and
//! serde_json reads the frame (and words what is wrong with it).
//!
//! Written here because serde_json's derived reading of the envelope was
//! the host's largest cost of its own per socket request: some 3,400
//! instructions for the benchmark's 130-byte frame (a field visitor per
//! key, `RawValue` bookkeeping, every string scanned twice). With this,
//! a socket request costs 1,800 fewer (callgrind: 30,740 to 28,930). The
//! fuzz target `envelope` asserts that wherever this reads a request,
//! serde_json reads the same one.

use std::borrow::Cow;

use super::Request;
use crate::core::json::{plain_string_end, value_end, whitespace};

/// The envelope's keys, as bits of the set of those already read.
const ID: u16 = 1 << 0;
const SERVICE: u16 = 1 << 1;
const ACTION: u16 = 1 << 2;
const PARAMS: u16 = 1 << 3;
const TENANT_ID: u16 = 1 << 4;
const TIMEOUT_MS: u16 = 1 << 5;
const TOKEN: u16 = 1 << 6;
const APP: u16 = 1 << 7;
const TRACE: u16 = 1 << 8;
const REPLY_TO: u16 = 1 << 9;

fn field(key: &[u8]) -> Option<u16> {
    Some(match key {
        b"id" => ID,
        b"service" => SERVICE,
        b"action" => ACTION,
        b"params" => PARAMS,
        b"tenant_id" => TENANT_ID,
        b"timeout_ms" => TIMEOUT_MS,
        b"token" => TOKEN,
        b"app" => APP,
        b"trace" => TRACE,
        b"reply_to" => REPLY_TO,
        _ => return None,
    })
}

/// The request in `text`, or `None` when it is not of the plain shape this
/// reads: then serde_json decides, as if this had not looked.
pub fn read(text: &str) -> Option<Request<'_>> {
    let bytes = text.as_bytes();
    let mut request = Request {
        id: "",
        service: None,
        action: Cow::Borrowed(""),
        params: None,
        tenant_id: None,
        timeout_ms: None,
        token: None,
        app: None,
        trace: None,
        reply_to: None,
    };
    let mut seen = 0u16;
    let mut at = whitespace(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = whitespace(bytes, at + 1);
    loop {
        // A key, its colon, and where its value starts.
        let key_end = string(bytes, at)?;
        let field = field(&bytes[at + 1..key_end - 1])?;
        if seen & field != 0 {
            return None;
        }
        seen |= field;
        at = whitespace(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = whitespace(bytes, at + 1);

        let end = match field {
            ID | PARAMS => {
                let end = value_end(bytes, at)?;
                let raw = &text[at..end];
                if field == ID {
                    request.id = raw;
                } else if raw != "null" {
                    request.params = Some(raw);
                }
                end
            }
            TIMEOUT_MS if null(bytes, at) => at + 4,
            TIMEOUT_MS => {
                let (ms, end) = integer(bytes, at)?;
                request.timeout_ms = Some(ms);
                end
            }
            ACTION => {
                let end = string(bytes, at)?;
                request.action = Cow::Borrowed(&text[at + 1..end - 1]);
                end
            }
            _ if null(bytes, at) => at + 4,
            _ => {
                let end = string(bytes, at)?;
                *match field {
                    SERVICE => &mut request.service,
                    TENANT_ID => &mut request.tenant_id,
                    TOKEN => &mut request.token,
                    APP => &mut request.app,
                    TRACE => &mut request.trace,
                    _ => &mut request.reply_to,
                } = Some(Cow::Borrowed(&text[at + 1..end - 1]));
                end
            }
        };

        at = whitespace(bytes, end);
        match bytes.get(at) {
            Some(b',') => at = whitespace(bytes, at + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    // `id` and `action` are required; nothing may follow the object.
    let done = seen & (ID | ACTION) == ID | ACTION && whitespace(bytes, at + 1) == bytes.len();
    done.then_some(request)
}

/// Whether the value at `at` is `null` (an optional field left out); what
/// follows it is checked as after any value.
fn null(bytes: &[u8], at: usize) -> bool {
    bytes[at..].starts_with(b"null")
}

/// A string without escapes from its opening quote at `at`: past its end.
fn string(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    plain_string_end(bytes, at + 1)
}

/// A `u64` written as plain digits (no sign, fraction, exponent or leading
/// zero, which serde_json reads otherwise or not at all), and its end.
fn integer(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut end = at;
    let mut n: u64 = 0;
    while let Some(&digit @ b'0'..=b'9') = bytes.get(end) {
        n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
        end += 1;
    }
    let leading_zero = end - at > 1 && bytes[at] == b'0';
    if end == at || leading_zero || matches!(bytes.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((n, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json reads from `text`, for comparison.
    fn serde(text: &str) -> Option<Request<'_>> {
        Request::parse_with_serde(text).ok()
    }

    #[test]
    fn reads_plain_requests_as_serde_json_does() {
        for text in [
            r#"{"id":1,"service":"echo","action":"params","params":{"user":"ada","items":[1,2,3]},"tenant_id":"acme"}"#,
            r#" { "id" : "a-1" , "action" : "x" } "#,
            "{\n\t\"action\":\"x\",\r\n\"id\":-2.5e3}",
            r#"{"id":7,"action":"a","params":null,"service":null,"timeout_ms":0}"#,
            r#"{"id":7,"action":"a","timeout_ms":18446744073709551615,"token":"t.k.n","app":"shop","trace":"0af7651916cd43dd8448eb211c80319c","reply_to":"unix:/tmp/r.sock"}"#,
            r#"{"id":[1],"action":"ä ü","params":[{"a":"\n"}]}"#,
            r#"{"id":null,"action":""}"#,
        ] {
            let quick = read(text).unwrap_or_else(|| panic!("declined {text}"));
            assert_eq!(Some(&quick), serde(text).as_ref(), "{text}");
        }
    }

    #[test]
    fn declines_what_is_not_plain_and_serde_json_decides() {
        for text in [
            // Escapes in a key or a string value: serde_json unescapes.
            r#"{"\u0069d":1,"action":"a"}"#,
            r#"{"id":1,"action":"a\"b"}"#,
            // Unknown, repeated or missing keys; trailing commas or text.
            r#"{"id":1,"action":"a","extra":1}"#,
            r#"{"id":1,"action":"a","id":2}"#,
            r#"{"id":1}"#,
            r#"{"action":"a"}"#,
            r#"{}"#,
            r#"{"id":1,"action":"a",}"#,
            r#"{"id":1,"action":"a"} x"#,
            r#"{"id":1,"action":"a"}}"#,
            // Values of another type, or numbers serde_json reads otherwise.
            r#"{"id":1,"action":null}"#,
            r#"{"id":1,"action":7}"#,
            r#"{"id":1,"action":"a","service":true}"#,
            r#"{"id":1,"action":"a","timeout_ms":-1}"#,
            r#"{"id":1,"action":"a","timeout_ms":01}"#,
            r#"{"id":1,"action":"a","timeout_ms":1.0}"#,
            r#"{"id":1,"action":"a","timeout_ms":1e3}"#,
            r#"{"id":1,"action":"a","timeout_ms":18446744073709551616}"#,
            r#"{"id":1,"action":"a","timeout_ms":"5"}"#,
            // Not JSON at all.
            r#"{"id":01,"action":"a"}"#,
            r#"{"id":1,"action":"a","params":{"a":}}"#,
            "{\"id\":1,\"action\":\"a\u{1}\"}",
            r#"{"id":1 "action":"a"}"#,
            r#"{"id":1,"action""a"}"#,
            r#"[1,"echo","a"]"#,
            r#"{"id":1,"action":"a""#,
        ] {
            assert_eq!(read(text), None, "{text}");
        }
    }

    #[test]
    fn nesting_past_the_scan_is_left_to_serde_json() {
        let deep = format!(
            r#"{{"id":1,"action":"a","params":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(read(&deep), None);
    }
}
