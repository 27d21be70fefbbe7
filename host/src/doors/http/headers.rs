//! The request headers the gateway reads (`Host`, `Authorization`,
//! `Content-Length`, `traceparent` and its own `X-` headers), picked out
//! of the request in one pass before a handler looks at any of them.

use axum::http::{HeaderMap, HeaderValue};

use super::HttpError;
use crate::core::{ErrorCode, TraceId};

/// One request's headers of interest. Found in one walk over the map: a
/// lookup by name parses and hashes that name every time, and a call reads
/// seven of them, which cost more than the walk. The first value of a name
/// wins, as with `HeaderMap::get`.
#[derive(Default)]
pub(super) struct Headers<'a> {
    host: Option<&'a HeaderValue>,
    authorization: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
    traceparent: Option<&'a HeaderValue>,
    request_id: Option<&'a HeaderValue>,
    timeout_ms: Option<&'a HeaderValue>,
    tenant_id: Option<&'a HeaderValue>,
}

impl<'a> Headers<'a> {
    pub(super) fn of(map: &'a HeaderMap) -> Headers<'a> {
        let mut headers = Headers::default();
        for (name, value) in map {
            // Names arrive lowercased from hyper.
            let slot = match name.as_str() {
                "host" => &mut headers.host,
                "authorization" => &mut headers.authorization,
                "content-length" => &mut headers.content_length,
                "traceparent" => &mut headers.traceparent,
                "x-request-id" => &mut headers.request_id,
                "x-timeout-ms" => &mut headers.timeout_ms,
                "x-tenant-id" => &mut headers.tenant_id,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        headers
    }

    /// The `Host` header, if it is text.
    pub(super) fn host(&self) -> Option<&'a str> {
        self.host.and_then(|v| v.to_str().ok())
    }

    /// The declared body length, if there is a readable one.
    pub(super) fn content_length(&self) -> Option<u64> {
        self.content_length
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// The trace id of the `traceparent` header, or a new one.
    pub(super) fn trace(&self) -> TraceId {
        self.traceparent
            .and_then(|v| v.to_str().ok())
            .and_then(TraceId::of_traceparent)
            .unwrap_or_else(TraceId::new)
    }

    /// The bearer token of the `Authorization` header, if there is one. A
    /// header that is there but not `Bearer <token>` is refused, never
    /// ignored.
    pub(super) fn bearer_token(&self) -> Result<Option<&'a str>, HttpError> {
        let Some(value) = self.authorization else {
            return Ok(None);
        };
        let malformed = || {
            HttpError::new(
                ErrorCode::Unauthorized,
                "malformed Authorization header: expected `Bearer <token>`",
            )
        };
        let value = value.to_str().map_err(|_| malformed())?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(malformed());
        }
        Ok(Some(token))
    }

    /// `X-Request-Id`.
    pub(super) fn request_id(&self) -> Result<Option<&'a str>, HttpError> {
        text(self.request_id, "x-request-id")
    }

    /// `X-Timeout-Ms`.
    pub(super) fn timeout_ms(&self) -> Result<Option<&'a str>, HttpError> {
        text(self.timeout_ms, "x-timeout-ms")
    }

    /// `X-Tenant-Id`.
    pub(super) fn tenant_id(&self) -> Result<Option<&'a str>, HttpError> {
        text(self.tenant_id, "x-tenant-id")
    }
}

/// A header the gateway needs as text: one that is not is refused.
fn text<'a>(value: Option<&'a HeaderValue>, name: &str) -> Result<Option<&'a str>, HttpError> {
    value
        .map(|v| {
            v.to_str().map_err(|_| {
                HttpError::new(
                    ErrorCode::BadRequest,
                    format!("header `{name}` is not visible ASCII"),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::Headers;

    #[test]
    fn the_first_value_of_a_header_wins_and_other_headers_are_passed_over() {
        let mut map = HeaderMap::new();
        map.insert("x-other", HeaderValue::from_static("1"));
        map.append("x-tenant-id", HeaderValue::from_static("acme"));
        map.append("x-tenant-id", HeaderValue::from_static("other"));
        map.insert("host", HeaderValue::from_static("api.example"));
        map.insert("authorization", HeaderValue::from_static("Bearer abc"));
        map.insert("content-length", HeaderValue::from_static("12"));
        let headers = Headers::of(&map);
        assert_eq!(headers.tenant_id().ok().flatten(), Some("acme"));
        assert_eq!(headers.host(), Some("api.example"));
        assert_eq!(headers.bearer_token().ok().flatten(), Some("abc"));
        assert_eq!(headers.content_length(), Some(12));
        assert_eq!(headers.request_id().ok().flatten(), None);
    }

    #[test]
    fn a_malformed_authorization_or_a_header_that_is_not_text_is_refused() {
        let mut map = HeaderMap::new();
        map.insert("authorization", HeaderValue::from_static("Basic abc"));
        map.insert("x-request-id", HeaderValue::from_bytes(b"\xff").unwrap());
        let headers = Headers::of(&map);
        assert_eq!(headers.bearer_token().err().unwrap().0.code, "unauthorized");
        assert_eq!(headers.request_id().err().unwrap().0.code, "bad_request");
    }
}
