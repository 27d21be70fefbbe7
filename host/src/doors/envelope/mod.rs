//! The socket envelope: a request frame's JSON (parsed and checked, its
//! strings and params borrowed from the frame), and the success and error
//! envelopes sent back, written straight into a connection's output.
//! `/v1/rpc` speaks the same envelope over HTTP.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::framing::{FrameError, seal};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route};

pub mod quick;

/// The id of a response that answers no request, or one whose id could
/// not be read.
pub const NO_ID: &str = "null";

/// A request as it arrives on a socket, borrowing from its frame.
#[derive(Debug, PartialEq)]
pub struct Request<'a> {
    /// Chosen by the client, echoed in the response byte for byte: its
    /// JSON text, a string or a number.
    pub id: &'a str,
    /// Required on the main socket; optional (and must match) on a
    /// service's own socket.
    pub service: Option<Cow<'a, str>>,
    pub action: Cow<'a, str>,
    /// Any JSON, as text; absent or `null` means `{}`.
    pub params: Option<&'a str>,
    pub tenant_id: Option<Cow<'a, str>>,
    pub timeout_ms: Option<u64>,
    /// A JWT, checked against the application's keys.
    pub token: Option<Cow<'a, str>>,
    /// The application; without it, the listener's default.
    pub app: Option<Cow<'a, str>>,
    /// A W3C trace id (32 lowercase hex digits) to carry through every
    /// call the request leads to; without it (or when it is not one), the
    /// host makes one.
    pub trace: Option<Cow<'a, str>>,
    /// Answer at once with `accepted`, and send the response here later:
    /// `unix:/path/to.sock` or `http://host:port/path`.
    pub reply_to: Option<Cow<'a, str>>,
}

/// The envelope as serde_json reads it: the definition of what a request
/// is, and the reader of every frame [`quick::read`] leaves alone (which
/// is where bad requests get their messages).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(default, borrow)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tenant_id: Option<Cow<'a, str>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default, borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    app: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    trace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reply_to: Option<Cow<'a, str>>,
}

impl<'a> From<Wire<'a>> for Request<'a> {
    fn from(wire: Wire<'a>) -> Self {
        Request {
            id: wire.id.get(),
            service: wire.service,
            action: wire.action,
            params: wire.params.map(RawValue::get),
            tenant_id: wire.tenant_id,
            timeout_ms: wire.timeout_ms,
            token: wire.token,
            app: wire.app,
            trace: wire.trace,
            reply_to: wire.reply_to,
        }
    }
}

/// A frame that is not a valid request, with the id (as JSON text) when
/// one could be read.
#[derive(Debug)]
pub struct BadRequest<'a> {
    pub id: &'a str,
    pub message: String,
}

/// Whether raw JSON is a string or a number: what an id may be.
fn string_or_number(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

impl<'a> Request<'a> {
    pub fn parse(frame: &'a [u8]) -> Result<Request<'a>, BadRequest<'a>> {
        if !is_object(frame) {
            return Err(BadRequest {
                id: NO_ID,
                message: "invalid request: a request is a JSON object".into(),
            });
        }
        // Checked as UTF-8 once, whole: parsed from bytes, serde_json would
        // check every string and raw value again on its own. A frame that
        // is not UTF-8 is parsed from bytes, for serde_json's own message.
        let parsed = match std::str::from_utf8(frame) {
            Ok(text) => match quick::read(text) {
                Some(request) => Ok(request),
                None => Self::parse_with_serde(text),
            },
            Err(_) => serde_json::from_slice::<Wire>(frame).map(Request::from),
        };
        let request = parsed.map_err(|e| BadRequest {
            id: salvage_id(frame),
            message: format!("invalid request: {e}"),
        })?;
        if !string_or_number(request.id) {
            return Err(BadRequest {
                id: NO_ID,
                message: "invalid request: `id` must be a string or a number".into(),
            });
        }
        Ok(request)
    }

    /// serde_json's reading of a request: what [`quick::read`] must agree
    /// with wherever it reads one (the fuzz target `envelope` holds it to
    /// that).
    pub fn parse_with_serde(text: &'a str) -> Result<Request<'a>, serde_json::Error> {
        serde_json::from_str::<Wire>(text).map(Request::from)
    }

    /// The id as JSON text, exactly as the client wrote it.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// The params as JSON text.
    pub fn params_json(&self) -> &'a str {
        match self.params {
            Some(raw) if raw != "null" => raw,
            _ => "{}",
        }
    }

    /// The service the request is for. A door that serves one service
    /// (`own`) implies it, and a request that names another is refused.
    pub fn service<'s>(&'s self, own: Option<&'s str>) -> Result<&'s str, ErrorBody> {
        match (own, self.service.as_deref()) {
            (Some(own), Some(named)) if own != named => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("this socket serves `{own}`, but the request names service `{named}`"),
            )),
            (Some(own), _) => Ok(own),
            (None, Some(named)) => Ok(named),
            (None, None) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "invalid request: missing field `service`",
            )),
        }
    }

    /// The door-neutral form of this request; its id is its request id.
    pub fn invocation<'s>(
        &'s self,
        door: DoorKind,
        route: Route<'s>,
        service: &'s str,
        trusted: bool,
        received: std::time::Instant,
    ) -> Invocation<'s> {
        Invocation {
            door,
            route,
            service,
            action: &self.action,
            params: self.params_json(),
            request_id: self.id(),
            token: self.token.as_deref(),
            tenant: self.tenant_id.as_deref(),
            timeout_ms: self.timeout_ms,
            trusted,
            received,
            trace: self.trace.as_deref().and_then(crate::core::TraceId::parse),
            caller: None,
        }
    }
}

/// Whether the frame's JSON is an object. Checked first because serde's
/// derived structs also accept an array of their fields in order, which
/// would make `[1, ...]` a request.
fn is_object(frame: &[u8]) -> bool {
    frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Reads just the `id` out of a request that failed to parse, so the client
/// can still match the error to what it sent.
fn salvage_id(frame: &[u8]) -> &str {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    if !is_object(frame) {
        return NO_ID;
    }
    match serde_json::from_slice::<IdOnly>(frame) {
        Ok(IdOnly { id: Some(id) }) if string_or_number(id.get()) => id.get(),
        _ => NO_ID,
    }
}

/// Appends a success response frame to `out`: `result` must already be
/// valid JSON text, and `id` the request's id as JSON text.
pub fn write_success(out: &mut Vec<u8>, id: &str, result: &str) {
    let start = out.len();
    out.reserve(4 + 36 + id.len() + result.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"status\":\"success\",\"result\":");
    out.extend_from_slice(result.as_bytes());
    out.push(b'}');
    seal_at(out, start);
}

/// Appends an error response frame to `out`.
pub fn write_error(out: &mut Vec<u8>, id: &str, error: &ErrorBody) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"status\":\"error\",\"error\":");
    serde_json::to_writer(&mut *out, error).expect("an error body always serializes");
    out.push(b'}');
    seal_at(out, start);
}

/// Fills in the length prefix of the frame that begins at `start`.
fn seal_at(out: &mut [u8], start: usize) {
    seal(&mut out[start..]);
}

/// A success response frame on its own.
pub fn success_frame(id: &str, result: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    write_success(&mut frame, id, result);
    frame
}

/// An error response frame on its own.
pub fn error_frame(id: &str, error: &ErrorBody) -> Vec<u8> {
    let mut frame = Vec::new();
    write_error(&mut frame, id, error);
    frame
}

impl FrameError {
    /// The error to answer before closing, if any is owed.
    pub fn response(&self) -> Option<ErrorBody> {
        match self {
            FrameError::TooLarge { .. } => {
                Some(ErrorBody::new(ErrorCode::TooLarge, self.to_string()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn salvages_the_id_of_a_bad_request() {
        let e = Request::parse(br#"{"id": 7, "action": 3}"#).unwrap_err();
        assert_eq!(e.id, "7");
        let e = Request::parse(b"{nope").unwrap_err();
        assert_eq!(e.id, NO_ID);
        let e = Request::parse(br#"{"id": "x", "action": "a", "extra": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
        let e = Request::parse(br#"{"id": [1], "action": "a"}"#).unwrap_err();
        assert_eq!(e.id, NO_ID);
        // Found by fuzzing: serde's structs read arrays of their fields.
        let e = Request::parse(br#"[7, "echo", "echo"]"#).unwrap_err();
        assert_eq!(e.id, NO_ID);
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = Request::parse(br#" [7]"#).unwrap_err();
        assert_eq!(e.id, NO_ID);
    }

    #[test]
    fn strings_with_escapes_are_read_whole() {
        let r = Request::parse(br#"{"id":"a\"b","service":"e\u0063ho","action":"x"}"#).unwrap();
        assert_eq!(r.id(), r#""a\"b""#);
        assert_eq!(r.service(None).unwrap(), "echo");
    }

    #[test]
    fn frames_are_valid_json_with_the_id_as_sent() {
        let mut out = Vec::new();
        write_success(&mut out, r#""a\"b""#, r#"{"x":[1,2]}"#);
        let first = out.len();
        write_error(
            &mut out,
            "12",
            &ErrorBody::new(ErrorCode::NotFound, "no \"such\" thing"),
        );
        let len = |at: usize| u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(len(0), first - 4);
        assert_eq!(len(first), out.len() - first - 4);
        let ok: Value = serde_json::from_slice(&out[4..first]).unwrap();
        assert_eq!(ok["id"], "a\"b");
        assert_eq!(ok["result"]["x"][1], 2);
        let err: Value = serde_json::from_slice(&out[first + 4..]).unwrap();
        assert_eq!(err["id"], 12);
        assert_eq!(err["status"], "error");
        assert_eq!(err["error"]["code"], "not_found");
    }
}
