//! The HTTP door: `POST /v1/{service}/{action}` and `POST /v1/rpc` become
//! invocations for the same pipeline, limits and error codes as the
//! sockets; plus the operations endpoints (`/healthz`, `/readyz`,
//! `/v1/status`, `/metrics`), which read `ops`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::Tally;
use super::envelope::{self, Request};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route};
use crate::pipeline::Pipeline;

/// `WWW-Authenticate` on every 401 (RFC 6750).
const BEARER_CHALLENGE: &str = "Bearer";

/// What every handler shares.
#[derive(Clone)]
pub struct HttpState {
    pub pipeline: Arc<Pipeline>,
    pub started: Instant,
    pub max_body: usize,
    pub tally: Arc<Tally>,
}

/// The HTTP application. Tests can drive it without a socket.
pub fn app(state: HttpState) -> axum::Router {
    let max_body = state.max_body;
    axum::Router::new()
        .route("/v1/rpc", post(rpc))
        .route("/v1/{service}/{action}", post(call))
        .route("/v1/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// The HTTP status for an error code: one table for every endpoint.
/// Codes a plugin invents map to 422: understood, and refused by the service.
pub fn status_for(code: &str) -> StatusCode {
    match code {
        "bad_request" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "overloaded" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "plugin_trap" | "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// Seconds a client should wait after `overloaded` or `unavailable`, when
/// the error does not say.
const RETRY_AFTER_SECS: u64 = 1;

/// An error answer: `{"error": {"code", "message"}}` with its status.
pub struct HttpError(pub ErrorBody);

impl HttpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError(ErrorBody::new(code, message))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = status_for(&self.0.code);
        let body =
            serde_json::to_vec(&json!({ "error": self.0 })).expect("an error body serializes");
        with_retry_after(status, self.0.retry_after_ms, json_response(status, body))
    }
}

/// The bearer token of an `Authorization` header, if there is one. A header
/// that is there but not `Bearer <token>` is refused, never ignored.
fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
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
    Ok(Some(token.to_owned()))
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Adds the headers some statuses call for: `Retry-After` on 429 and 503
/// (whole seconds, rounded up), a bearer challenge on 401.
fn with_retry_after(
    status: StatusCode,
    retry_after_ms: Option<u64>,
    mut response: Response,
) -> Response {
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let seconds = retry_after_ms.map_or(RETRY_AFTER_SECS, |ms| ms.div_ceil(1000).max(1));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    } else if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BEARER_CHALLENGE),
        );
    }
    response
}

/// Counts requests in and responses out (for the shutdown summary) and
/// logs failed requests; error responses themselves never log.
async fn track(State(state): State<HttpState>, request: HttpRequest, next: Next) -> Response {
    state.tally.http_accepted.fetch_add(1, Ordering::Relaxed);
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    state.tally.http_answered.fetch_add(1, Ordering::Relaxed);
    let status = response.status();
    if status.is_server_error() {
        tracing::warn!(%method, path, status = status.as_u16(), "http request failed");
    } else if status.is_client_error() {
        tracing::debug!(%method, path, status = status.as_u16(), "http request refused");
    }
    response
}

/// Reads the body, turning the body-limit refusal into `too_large`.
fn body_or_error(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, HttpError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::new(
                ErrorCode::TooLarge,
                format!("request body is over the limit of {max} bytes"),
            )
        } else {
            HttpError::new(
                ErrorCode::BadRequest,
                format!("cannot read the request body: {rejection}"),
            )
        }
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, HttpError> {
    headers
        .get(name)
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

/// Ids for HTTP requests that do not bring an `X-Request-Id`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `POST /v1/{service}/{action}`: the body is the params, the answer is the
/// plugin's result. Optional headers: `X-Request-Id`, `X-Tenant-Id`,
/// `X-Timeout-Ms`.
async fn call(
    State(state): State<HttpState>,
    Path((service, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let received = Instant::now();
    let body = body_or_error(body, state.max_body)?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let text = std::str::from_utf8(&body)
            .map_err(|_| HttpError::new(ErrorCode::BadRequest, "request body is not UTF-8"))?;
        Some(RawValue::from_string(text.to_owned()).map_err(|e| {
            HttpError::new(
                ErrorCode::BadRequest,
                format!("request body is not JSON: {e}"),
            )
        })?)
    };
    let id = match header_str(&headers, "x-request-id")? {
        Some(id) => Value::from(id),
        None => Value::from(format!("http-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed))),
    };
    let timeout_ms = header_str(&headers, "x-timeout-ms")?
        .map(|t| {
            t.parse::<u64>().map_err(|_| {
                HttpError::new(
                    ErrorCode::BadRequest,
                    "header `x-timeout-ms` must be a whole number",
                )
            })
        })
        .transpose()?;
    let tenant = header_str(&headers, "x-tenant-id")?;
    let token = bearer_token(&headers)?;
    let request_id = serde_json::to_string(&id).expect("a JSON value always serializes");
    let invocation = Invocation {
        door: DoorKind::Http,
        route: Route::Host {
            host: host(&headers),
            named: None,
        },
        service: &service,
        action: &action,
        params: params
            .as_deref()
            .map(RawValue::get)
            .filter(|p| *p != "null")
            .unwrap_or("{}"),
        request_id: &request_id,
        token: token.as_deref(),
        tenant,
        timeout_ms,
        trusted: false,
        received,
    };
    let result = state
        .pipeline
        .invoke(&invocation)
        .await
        .map_err(HttpError)?;
    Ok(json_response(StatusCode::OK, result))
}

/// `POST /v1/rpc`: the socket envelope over HTTP, answered with the socket's
/// response envelope (and the status of its error code, if any).
async fn rpc(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let received = Instant::now();
    let body = body_or_error(body, state.max_body)?;
    let bearer = bearer_token(&headers)?;
    let parsed = Request::parse(&body).and_then(|mut request| match (&request.token, bearer) {
        (Some(_), Some(_)) => Err(envelope::BadRequest {
            id: request.id(),
            message: "a token in both the Authorization header and the envelope; send one".into(),
        }),
        (_, Some(bearer)) => {
            request.token = Some(bearer.into());
            Ok(request)
        }
        (_, None) => Ok(request),
    });
    let (status, retry_after_ms, frame) = match parsed {
        Err(bad) => {
            let error = ErrorBody::new(ErrorCode::BadRequest, bad.message);
            (
                status_for(&error.code),
                None,
                envelope::error_frame(bad.id, &error),
            )
        }
        Ok(request) => match run_envelope(&state, &request, host(&headers), received).await {
            Ok(result) => (
                StatusCode::OK,
                None,
                envelope::success_frame(request.id(), &result),
            ),
            Err(error) => (
                status_for(&error.code),
                error.retry_after_ms,
                envelope::error_frame(request.id(), &error),
            ),
        },
    };
    // The same bytes as on a socket, without the length prefix.
    Ok(with_retry_after(
        status,
        retry_after_ms,
        json_response(status, Bytes::from(frame).slice(4..)),
    ))
}

/// Runs a parsed envelope that came over HTTP: the `Host` header picks the
/// application, and an `app` the envelope names must agree.
async fn run_envelope(
    state: &HttpState,
    request: &Request<'_>,
    host: Option<&str>,
    received: Instant,
) -> Result<String, ErrorBody> {
    let service = request.service(None)?;
    let route = Route::Host {
        host,
        named: request.app.as_deref(),
    };
    let invocation = request.invocation(DoorKind::Http, route, service, false, received);
    state.pipeline.invoke(&invocation).await
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"alive"}"#)
}

/// Ready when every plugin file in the folder loaded and every service an
/// application lists is there.
async fn readyz(State(state): State<HttpState>) -> Response {
    let failed = state.pipeline.table().failed();
    let missing = state.pipeline.missing();
    if failed.is_empty() && missing.is_empty() {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
        let body = json!({ "status": "not_ready", "failed": names, "missing": missing });
        json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
    }
}

async fn status(State(state): State<HttpState>) -> Response {
    let body = crate::ops::status::document(&state.pipeline, state.started).to_string();
    json_response(StatusCode::OK, body)
}

/// The counters and histograms in the OpenMetrics text format.
async fn metrics(State(state): State<HttpState>) -> Response {
    let body = crate::ops::metrics::render(&state.pipeline);
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::ops::metrics::CONTENT_TYPE),
    );
    response
}

async fn no_route() -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        "no such endpoint: use POST /v1/{service}/{action}, POST /v1/rpc, GET /v1/status, /healthz, /readyz or /metrics",
    )
}

async fn wrong_method() -> Response {
    let mut response = HttpError::new(ErrorCode::BadRequest, "method not allowed on this endpoint")
        .into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
