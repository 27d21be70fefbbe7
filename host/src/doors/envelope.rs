//! The socket envelope: a request frame's JSON (parsed and checked), and
//! the success and error envelopes sent back. `/v1/rpc` speaks the same
//! envelope over HTTP.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::framing::{FrameError, seal};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route};

/// A request as it arrives on a socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the client, echoed in the response; a string or a number.
    pub id: Value,
    /// Required on the main socket; optional (and must match) on a
    /// service's own socket.
    #[serde(default)]
    pub service: Option<String>,
    pub action: String,
    /// Any JSON; absent or `null` means `{}`.
    #[serde(default)]
    pub params: Option<Box<RawValue>>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A JWT, checked against the application's keys.
    #[serde(default)]
    pub token: Option<String>,
    /// The application; without it, the listener's default.
    #[serde(default)]
    pub app: Option<String>,
}

/// A frame that is not a valid request, with the id when one could be read.
#[derive(Debug)]
pub struct BadRequest {
    pub id: Value,
    pub message: String,
}

impl Request {
    pub fn parse(frame: &[u8]) -> Result<Request, BadRequest> {
        let request: Request = serde_json::from_slice(frame).map_err(|e| BadRequest {
            id: salvage_id(frame),
            message: format!("invalid request: {e}"),
        })?;
        if !(request.id.is_string() || request.id.is_number()) {
            return Err(BadRequest {
                id: Value::Null,
                message: "invalid request: `id` must be a string or a number".into(),
            });
        }
        Ok(request)
    }

    /// The params as JSON text.
    pub fn params_json(&self) -> &str {
        match &self.params {
            Some(raw) if raw.get() != "null" => raw.get(),
            _ => "{}",
        }
    }

    /// The service the request is for. A door that serves one service
    /// (`own`) implies it, and a request that names another is refused.
    pub fn service<'a>(&'a self, own: Option<&'a str>) -> Result<&'a str, ErrorBody> {
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

    /// The door-neutral form of this request.
    pub fn invocation<'a>(
        &'a self,
        door: DoorKind,
        route: Route<'a>,
        service: &'a str,
        request_id: &'a str,
        trusted: bool,
        received: std::time::Instant,
    ) -> Invocation<'a> {
        Invocation {
            door,
            route,
            service,
            action: &self.action,
            params: self.params_json(),
            request_id,
            token: self.token.as_deref(),
            tenant: self.tenant_id.as_deref(),
            timeout_ms: self.timeout_ms,
            trusted,
            received,
        }
    }
}

/// Reads just the `id` out of a request that failed to parse, so the client
/// can still match the error to what it sent.
fn salvage_id(frame: &[u8]) -> Value {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    match serde_json::from_slice::<IdOnly>(frame) {
        Ok(IdOnly { id: Some(id) }) if id.is_string() || id.is_number() => id,
        _ => Value::Null,
    }
}

/// Encodes a success response frame around `result`, which must already be
/// valid JSON text.
pub fn success_frame(id: &Value, result: &str) -> Vec<u8> {
    let id = serde_json::to_string(id).expect("a JSON value always serializes");
    let mut frame = Vec::with_capacity(4 + 36 + id.len() + result.len());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(b"{\"id\":");
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(b",\"status\":\"success\",\"result\":");
    frame.extend_from_slice(result.as_bytes());
    frame.push(b'}');
    seal(frame)
}

/// Encodes an error response frame.
pub fn error_frame(id: &Value, error: &ErrorBody) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorResponse<'a> {
        id: &'a Value,
        status: &'static str,
        error: &'a ErrorBody,
    }
    let mut frame = vec![0; 4];
    serde_json::to_writer(
        &mut frame,
        &ErrorResponse {
            id,
            status: "error",
            error,
        },
    )
    .expect("an error response always serializes");
    seal(frame)
}

impl FrameError {
    /// The response to send before closing, if any is owed.
    pub fn response(&self) -> Option<Vec<u8>> {
        match self {
            FrameError::TooLarge { .. } => Some(error_frame(
                &Value::Null,
                &ErrorBody::new(ErrorCode::TooLarge, self.to_string()),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvages_the_id_of_a_bad_request() {
        let e = Request::parse(br#"{"id": 7, "action": 3}"#).unwrap_err();
        assert_eq!(e.id, Value::from(7));
        let e = Request::parse(b"{nope").unwrap_err();
        assert_eq!(e.id, Value::Null);
        let e = Request::parse(br#"{"id": "x", "action": "a", "extra": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
    }

    #[test]
    fn success_frames_are_valid_json() {
        let f = success_frame(&Value::from("a\"b"), r#"{"x":[1,2]}"#);
        let v: Value = serde_json::from_slice(&f[4..]).unwrap();
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["result"]["x"][1], 2);
    }
}
