//! `POST /v1/{service}/{action}` and `POST /v1/rpc`: the request's path,
//! headers and body become one `Invocation`, borrowed from the request
//! wherever it can be.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::value::RawValue;

use super::{
    Counted, Gateway, HttpError, HttpState, bearer_token, header_str, host, json_response,
    status_for, with_retry_after,
};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route, TraceId};
use crate::doors::envelope::{self, Request};

/// Ids for HTTP requests that do not bring an `X-Request-Id`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Reads the whole body, refusing one over `max` bytes as `too_large`
/// (at once when its declared length says so).
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: Body,
    max: usize,
    within: std::time::Duration,
) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            ErrorCode::TooLarge,
            format!("request body is over the limit of {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(within, http_body_util::Limited::new(body, max).collect())
        .await
        .map_err(|_| {
            HttpError::new(
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {} ms",
                    within.as_millis()
                ),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// An envelope request's body and its `Authorization: Bearer` token, or
/// the response that refuses it (logged).
async fn body_and_bearer<'h>(
    gateway: &Gateway,
    parts: &'h axum::http::request::Parts,
    body: Body,
) -> Result<(Bytes, Option<&'h str>), Response> {
    let read = async {
        let body = read_body(
            &parts.headers,
            body,
            gateway.state.max_body,
            gateway.body_timeout,
        )
        .await?;
        Ok::<_, HttpError>((body, bearer_token(&parts.headers)?))
    }
    .await;
    read.map_err(|error| {
        log_failure(parts.uri.path(), &error.0);
        axum::response::IntoResponse::into_response(error)
    })
}

/// The service and action of `/v1/{service}/{action}`, percent-decoded
/// only when there is something to decode.
fn service_and_action(path: &str) -> Result<(Cow<'_, str>, Cow<'_, str>), HttpError> {
    let not_found = || HttpError::new(ErrorCode::NotFound, "no such endpoint");
    let rest = path.strip_prefix("/v1/").ok_or_else(not_found)?;
    let (service, action) = rest.split_once('/').ok_or_else(not_found)?;
    Ok((decode(service)?, decode(action)?))
}

fn decode(part: &str) -> Result<Cow<'_, str>, HttpError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map_err(|_| HttpError::new(ErrorCode::BadRequest, "the path is not UTF-8"))
}

/// `POST /v1/{service}/{action}`: the body is the params, the answer is the
/// plugin's result. Optional headers: `X-Request-Id`, `X-Tenant-Id`,
/// `X-Timeout-Ms`.
pub async fn call(State(gateway): State<Gateway>, request: HttpRequest) -> Response {
    let state = &gateway.state;
    let _counted = Counted::new(&state.tally);
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let trace = trace_for(&parts.headers);
    let outcome = async {
        let (service, action) = service_and_action(parts.uri.path())?;
        let body = read_body(&parts.headers, body, state.max_body, gateway.body_timeout).await?;
        let headers = &parts.headers;
        let params = if body.iter().all(u8::is_ascii_whitespace) {
            "{}"
        } else {
            let text = std::str::from_utf8(&body)
                .map_err(|_| HttpError::new(ErrorCode::BadRequest, "request body is not UTF-8"))?;
            let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
                HttpError::new(
                    ErrorCode::BadRequest,
                    format!("request body is not JSON: {e}"),
                )
            })?;
            match raw.get() {
                "null" => "{}",
                json => json,
            }
        };
        let request_id = match header_str(headers, "x-request-id")? {
            Some(id) => serde_json::to_string(id).expect("a string always serializes"),
            None => format!("\"http-{}\"", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        };
        let timeout_ms = header_str(headers, "x-timeout-ms")?
            .map(|t| {
                t.parse::<u64>().map_err(|_| {
                    HttpError::new(
                        ErrorCode::BadRequest,
                        "header `x-timeout-ms` must be a whole number",
                    )
                })
            })
            .transpose()?;
        let tenant = header_str(headers, "x-tenant-id")?;
        let token = bearer_token(headers)?;
        let invocation = Invocation {
            door: DoorKind::Http,
            route: Route::Host {
                host: host(headers),
                named: None,
            },
            service: &service,
            action: &action,
            params,
            request_id: &request_id,
            token,
            tenant,
            timeout_ms,
            trusted: false,
            received,
            trace: Some(trace),
            caller: None,
        };
        state.pipeline.invoke(&invocation).await.map_err(HttpError)
    }
    .await;
    let response = match outcome {
        Ok(result) => json_response(StatusCode::OK, result),
        Err(error) => {
            log_failure(parts.uri.path(), &error.0);
            axum::response::IntoResponse::into_response(error)
        }
    };
    with_traceparent(response, trace)
}

/// The trace id of the request's `traceparent` header, or a new one.
fn trace_for(headers: &axum::http::HeaderMap) -> TraceId {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceId::of_traceparent)
        .unwrap_or_else(TraceId::new)
}

/// Answers the request's trace in a `traceparent` header of its own span.
fn with_traceparent(mut response: Response, trace: TraceId) -> Response {
    let span = trace.span();
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("00-{trace}-{span:016x}-01")) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

/// `POST /v1/rpc`: the socket envelope over HTTP, answered with the socket's
/// response envelope (and the status of its error code, if any).
pub async fn rpc(State(gateway): State<Gateway>, request: HttpRequest) -> Response {
    let state = &gateway.state;
    let _counted = Counted::new(&state.tally);
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let header_trace = trace_for(headers);
    let (body, bearer) = match body_and_bearer(&gateway, &parts, body).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
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
    // The envelope's own `trace` wins over the header's, in the answer too.
    let trace = parsed
        .as_ref()
        .ok()
        .and_then(|r| r.trace.as_deref())
        .and_then(TraceId::parse)
        .unwrap_or(header_trace);
    let (status, retry_after_ms, frame) = match parsed {
        Err(bad) => {
            let error = ErrorBody::new(ErrorCode::BadRequest, bad.message);
            (
                status_for(&error.code),
                None,
                envelope::error_frame(bad.id, &error),
            )
        }
        Ok(request) if request.reply_to.is_some() => {
            let arrival = arrival(headers, received);
            match crate::doors::replies::accept(&state.pipeline, &request, &body, arrival) {
                Ok(frame) => (StatusCode::ACCEPTED, None, frame),
                Err(error) => (
                    status_for(&error.code),
                    error.retry_after_ms,
                    envelope::error_frame(request.id(), &error),
                ),
            }
        }
        Ok(request) => match run_envelope(state, &request, host(headers), received, trace).await {
            Ok(result) => (
                StatusCode::OK,
                None,
                envelope::success_frame(request.id(), &result),
            ),
            Err(error) => {
                log_failure(parts.uri.path(), &error);
                (
                    status_for(&error.code),
                    error.retry_after_ms,
                    envelope::error_frame(request.id(), &error),
                )
            }
        },
    };
    // The same bytes as on a socket, without the length prefix.
    let response = with_retry_after(
        status,
        retry_after_ms,
        json_response(status, Bytes::from(frame).slice(4..)),
    );
    with_traceparent(response, trace)
}

/// Where an HTTP request came from, for asynchronous requests and batches.
fn arrival(headers: &axum::http::HeaderMap, received: Instant) -> crate::doors::replies::Arrival {
    crate::doors::replies::Arrival {
        door: DoorKind::Http,
        service: None,
        default_app: None,
        host: host(headers).map(str::to_owned),
        trusted: false,
        received,
    }
}

/// `POST /v1/batch`: `{"batch": {NAME: request envelope without id},
/// "timeout_ms"?}`, run at once and answered by name in one envelope. A
/// token in `Authorization: Bearer` applies to every request that has
/// none of its own.
pub async fn batch(State(gateway): State<Gateway>, request: HttpRequest) -> Response {
    let state = &gateway.state;
    let _counted = Counted::new(&state.tally);
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (body, bearer) = match body_and_bearer(&gateway, &parts, body).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let frame = match bearer {
        Some(token) => crate::doors::replies::with_token(&body, token),
        None => body.to_vec(),
    };
    let (status, frame) = match crate::doors::replies::run_batch(
        &state.pipeline,
        &frame,
        &arrival(headers, received),
    )
    .await
    {
        Ok(frame) => (StatusCode::OK, frame),
        Err((id, error)) => (status_for(&error.code), envelope::error_frame(&id, &error)),
    };
    json_response(status, Bytes::from(frame).slice(4..))
}

/// Runs a parsed envelope that came over HTTP: the `Host` header picks the
/// application, and an `app` the envelope names must agree.
async fn run_envelope(
    state: &HttpState,
    request: &Request<'_>,
    host: Option<&str>,
    received: Instant,
    trace: TraceId,
) -> Result<String, ErrorBody> {
    let service = request.service(None)?;
    let route = Route::Host {
        host,
        named: request.app.as_deref(),
    };
    let mut invocation = request.invocation(DoorKind::Http, route, service, false, received);
    invocation.trace = Some(trace);
    state.pipeline.invoke(&invocation).await
}

/// Failures the host answers for are worth a log line; refusals of the
/// client's request only at debug level. Error responses never log
/// anything else.
fn log_failure(path: &str, error: &ErrorBody) {
    let status = status_for(&error.code);
    if status.is_server_error() {
        tracing::warn!(
            path,
            status = status.as_u16(),
            code = error.code,
            "http request failed"
        );
    } else {
        tracing::debug!(
            path,
            status = status.as_u16(),
            code = error.code,
            "http request refused"
        );
    }
}

/// `POST /v1/events/{topic}`: the body is the event's payload (empty means
/// `{}`), published to the topic of the application the `Host` header
/// picks; the answer is `{"event_id"}`. Protected like any action that is
/// not public: an application with keys needs `Authorization: Bearer`.
pub async fn publish(State(gateway): State<Gateway>, request: HttpRequest) -> Response {
    let state = &gateway.state;
    let _counted = Counted::new(&state.tally);
    let (parts, body) = request.into_parts();
    let outcome = async {
        let topic = parts
            .uri
            .path()
            .strip_prefix("/v1/events/")
            .ok_or_else(|| HttpError::new(ErrorCode::NotFound, "no such endpoint"))?;
        let topic = decode(topic)?;
        let body = read_body(&parts.headers, body, state.max_body, gateway.body_timeout).await?;
        let payload = if body.iter().all(u8::is_ascii_whitespace) {
            "{}"
        } else {
            std::str::from_utf8(&body)
                .map_err(|_| HttpError::new(ErrorCode::BadRequest, "request body is not UTF-8"))?
        };
        let route = Route::Host {
            host: host(&parts.headers),
            named: None,
        };
        let app = state
            .pipeline
            .events_app(route, bearer_token(&parts.headers)?, false)
            .map_err(HttpError)?;
        crate::doors::events::publish(&state.pipeline, &app, &topic, payload)
            .await
            .map_err(HttpError)
    }
    .await;
    match outcome {
        Ok(id) => json_response(
            StatusCode::OK,
            serde_json::json!({ "event_id": id }).to_string(),
        ),
        Err(error) => {
            log_failure(parts.uri.path(), &error.0);
            axum::response::IntoResponse::into_response(error)
        }
    }
}
