//! The socket wire protocol: a frame is a 4-byte big-endian length and that
//! many bytes of UTF-8 JSON. This module turns bytes into frames and frames
//! into requests, and responses back into frames. See `host/PROTOCOL.md`.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{ErrorBody, ErrorCode};

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

/// Fills in the length prefix of a frame built after 4 placeholder bytes.
fn seal(mut frame: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(frame.len() - 4).expect("a response frame is under 4 GiB");
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {declared} bytes is over the limit of {max} bytes")]
    TooLarge { declared: u32, max: u32 },
    #[error("connection stalled for {0:?} in the middle of a frame")]
    Stalled(Duration),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
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

/// Turns a byte stream into frames.
pub struct FrameReader<R> {
    inner: R,
    buffer: BytesMut,
    max_frame: u32,
    stall_timeout: Duration,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: u32, stall_timeout: Duration) -> Self {
        FrameReader {
            inner,
            buffer: BytesMut::with_capacity(8 * 1024),
            max_frame,
            stall_timeout,
        }
    }

    /// The next frame's payload; `None` on a clean end of stream (between
    /// frames). A declared length over the limit is refused before any of
    /// its payload is awaited. Between frames a connection may idle for as
    /// long as it likes; once a frame has begun, each read must make progress
    /// within the stall timeout.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(Some(frame));
            }
            let read = if self.buffer.is_empty() {
                self.inner.read_buf(&mut self.buffer).await?
            } else {
                tokio::time::timeout(self.stall_timeout, self.inner.read_buf(&mut self.buffer))
                    .await
                    .map_err(|_| FrameError::Stalled(self.stall_timeout))??
            };
            if read == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    fn parse_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes(header.try_into().expect("four bytes"));
        if declared > self.max_frame {
            return Err(FrameError::TooLarge {
                declared,
                max: self.max_frame,
            });
        }
        let total = 4 + declared as usize;
        if self.buffer.len() < total {
            // Grow in steps, so a header that promises a large frame and then
            // stalls does not pin a large buffer.
            self.buffer
                .reserve((total - self.buffer.len()).min(64 * 1024));
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(declared as usize).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere() {
        let mut bytes = frame(b"{\"a\":1}");
        bytes.extend(frame(b"[]"));
        let (mut tx, rx) = tokio::io::duplex(3);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(2) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx, 1024, Duration::from_secs(5));
        assert_eq!(
            &reader.read_frame().await.unwrap().unwrap()[..],
            b"{\"a\":1}"
        );
        assert_eq!(&reader.read_frame().await.unwrap().unwrap()[..], b"[]");
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_oversized_frames_from_the_header() {
        let mut reader = FrameReader::new(&[0u8, 0, 4, 1][..], 1024, Duration::from_secs(5));
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::TooLarge {
                declared: 1025,
                max: 1024
            })
        ));
    }

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
