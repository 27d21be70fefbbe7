//! `POST /v1/{service}/{action}` and `POST /v1/rpc`: the request's path,
//! headers and body become one `Invocation`, borrowed from the request
//! wherever it can be.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::future::poll_immediate;
use http_body_util::BodyExt;

use super::headers::Headers;
use super::{Counted, Gateway, HttpError, HttpState, json_response, status_for, with_retry_after};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route, TraceId};
use crate::doors::envelope::{self, Request};

/// Ids for HTTP requests that do not bring an `X-Request-Id`.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Reads the whole body, refusing one over `max` bytes as `too_large`
/// (at once when its declared length says so).
async fn read_body(
    headers: &Headers<'_>,
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
    let declared = headers.content_length();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut collecting = std::pin::pin!(collect(body, max));
    // Mostly the body is in with the head: its timer (and the clock read
    // that sets it) is armed only for a body that is not.
    let collected = match poll_immediate(collecting.as_mut()).await {
        Some(collected) => collected,
        None => tokio::time::timeout(within, collecting)
            .await
            .map_err(|_| {
                HttpError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the request body did not arrive within {} ms",
                        within.as_millis()
                    ),
                )
            })?,
    };
    match collected {
        Ok(body) => Ok(body),
        Err(Unread::TooLarge) => Err(too_large()),
        Err(Unread::Failed(e)) => Err(HttpError::new(
            ErrorCode::BadRequest,
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// Why a body was not read whole.
enum Unread {
    TooLarge,
    Failed(axum::Error),
}

/// The body's data, at most `max` bytes of it: the one chunk nearly every
/// body is, handed on as it is, or the chunks joined. Written here rather
/// than with http_body_util's `Limited` and `collect`, whose queue of
/// chunks and bookkeeping per frame cost some 400 instructions a request
/// (1% of an HTTP call) for that one chunk.
async fn collect(mut body: Body, max: usize) -> Result<Bytes, Unread> {
    let mut whole = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        // Trailers carry no data.
        let Ok(data) = frame.map_err(Unread::Failed)?.into_data() else {
            continue;
        };
        let len = joined.as_ref().map_or(whole.len(), |j| j.len());
        if data.len() > max - len {
            return Err(Unread::TooLarge);
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut both = bytes::BytesMut::with_capacity(whole.len() + data.len());
                both.extend_from_slice(&whole);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map_or(whole, bytes::BytesMut::freeze))
}

/// An envelope request's body and its `Authorization: Bearer` token, or
/// the response that refuses it (logged).
async fn body_and_bearer<'h>(
    gateway: &Gateway,
    parts: &axum::http::request::Parts,
    headers: &Headers<'h>,
    body: Body,
) -> Result<(Bytes, Option<&'h str>), Response> {
    let read = async {
        let body = read_body(headers, body, gateway.state.max_body, gateway.body_timeout).await?;
        Ok::<_, HttpError>((body, headers.bearer_token()?))
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
    // Nearly every path has nothing to decode: it is taken as it is then,
    // without the decoder's walk and a UTF-8 check of text that is a
    // `str` already.
    if !part.contains('%') {
        return Ok(Cow::Borrowed(part));
    }
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map_err(|_| HttpError::new(ErrorCode::BadRequest, "the path is not UTF-8"))
}

/// `POST /v1/{service}/{action}`: the body is the params, the answer is the
/// plugin's result. Optional headers: `X-Request-Id`, `X-Tenant-Id`,
/// `X-Timeout-Ms`.
pub async fn call(State(gateway): State<Gateway>, request: HttpRequest) -> Response {
    answer_call(&gateway, request).await
}

/// Whether `path` is one the router would give to `call`: `/v1/A/B` with
/// neither part empty, `B` without a `/`, and `A` not `events` (the
/// publishing route's). Matched on the raw path, as the router does.
pub(super) fn is_call_path(path: &str) -> bool {
    path.strip_prefix("/v1/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, action)| {
            !service.is_empty()
                && service != "events"
                && !action.is_empty()
                && !action.contains('/')
        })
}

/// `call`'s work, for the router's route and the door's own look at the
/// path alike.
pub(super) async fn answer_call(gateway: &Gateway, request: HttpRequest) -> Response {
    let state = &gateway.state;
    let _counted = Counted::new(&state.tally);
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = Headers::of(&parts.headers);
    let trace = headers.trace();
    let outcome = async {
        let (service, action) = service_and_action(parts.uri.path())?;
        let body = read_body(&headers, body, state.max_body, gateway.body_timeout).await?;
        let params = if body.iter().all(u8::is_ascii_whitespace) {
            "{}"
        } else {
            let text = std::str::from_utf8(&body)
                .map_err(|_| HttpError::new(ErrorCode::BadRequest, "request body is not UTF-8"))?;
            let raw = crate::core::json::one_value(text).map_err(|e| {
                HttpError::new(
                    ErrorCode::BadRequest,
                    format!("request body is not JSON: {e}"),
                )
            })?;
            match raw {
                "null" => "{}",
                json => json,
            }
        };
        let request_id = match headers.request_id()? {
            Some(id) => serde_json::to_string(id).expect("a string always serializes"),
            None => generated_id(),
        };
        let timeout_ms = headers
            .timeout_ms()?
            .map(|t| {
                t.parse::<u64>().map_err(|_| {
                    HttpError::new(
                        ErrorCode::BadRequest,
                        "header `x-timeout-ms` must be a whole number",
                    )
                })
            })
            .transpose()?;
        let tenant = headers.tenant_id()?;
        let token = headers.bearer_token()?;
        let invocation = Invocation {
            door: DoorKind::Http,
            route: Route::Host {
                host: headers.host(),
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

/// `"http-N"` (as JSON text) for a request that brings no `X-Request-Id`.
fn generated_id() -> String {
    let mut number = itoa::Buffer::new();
    let number = number.format(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let mut id = String::with_capacity(number.len() + 7);
    id.push_str("\"http-");
    id.push_str(number);
    id.push('"');
    id
}

/// Answers the request's trace in a `traceparent` header of its own span.
fn with_traceparent(mut response: Response, trace: TraceId) -> Response {
    static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    let value =
        HeaderValue::from_bytes(&trace.traceparent()).expect("a traceparent is visible ASCII");
    response.headers_mut().insert(TRACEPARENT.clone(), value);
    response
}

/// `POST /v1/rpc`: the socket envelope over HTTP, answered with the socket's
/// response envelope (and the status of its error code, if any).
pub async fn rpc(State(gateway): State<Gateway>, request: HttpRequest) -> Response {
    let state = &gateway.state;
    let _counted = Counted::new(&state.tally);
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = Headers::of(&parts.headers);
    let header_trace = headers.trace();
    let (body, bearer) = match body_and_bearer(&gateway, &parts, &headers, body).await {
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
            let arrival = arrival(&headers, received);
            match crate::doors::replies::accept(&state.pipeline, &request, &body, arrival) {
                Ok(frame) => (StatusCode::ACCEPTED, None, frame),
                Err(error) => (
                    status_for(&error.code),
                    error.retry_after_ms,
                    envelope::error_frame(request.id(), &error),
                ),
            }
        }
        Ok(request) => match run_envelope(state, &request, headers.host(), received, trace).await {
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
fn arrival(headers: &Headers<'_>, received: Instant) -> crate::doors::replies::Arrival {
    crate::doors::replies::Arrival {
        door: DoorKind::Http,
        service: None,
        default_app: None,
        host: headers.host().map(str::to_owned),
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
    let headers = Headers::of(&parts.headers);
    let (body, bearer) = match body_and_bearer(&gateway, &parts, &headers, body).await {
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
        &arrival(&headers, received),
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
    let headers = Headers::of(&parts.headers);
    let outcome = async {
        let topic = parts
            .uri
            .path()
            .strip_prefix("/v1/events/")
            .ok_or_else(|| HttpError::new(ErrorCode::NotFound, "no such endpoint"))?;
        let topic = decode(topic)?;
        let body = read_body(&headers, body, state.max_body, gateway.body_timeout).await?;
        let payload = if body.iter().all(u8::is_ascii_whitespace) {
            "{}"
        } else {
            std::str::from_utf8(&body)
                .map_err(|_| HttpError::new(ErrorCode::BadRequest, "request body is not UTF-8"))?
        };
        let route = Route::Host {
            host: headers.host(),
            named: None,
        };
        let app = state
            .pipeline
            .events_app(route, headers.bearer_token()?, false)
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

#[cfg(test)]
mod tests {
    use super::is_call_path;

    #[test]
    fn the_call_route_is_two_parts_under_v1_and_not_the_publishing_route() {
        for path in [
            "/v1/echo/params",
            "/v1/rpc/x",
            "/v1/ev%65nts/x",
            "/v1/a/b%2Fc",
        ] {
            assert!(is_call_path(path), "{path}");
        }
        for path in [
            "/v1/events/news",
            "/v1/echo",
            "/v1/echo/",
            "/v1//params",
            "/v1/echo/params/",
            "/v1/a/b/c",
            "/v2/echo/params",
            "/healthz",
        ] {
            assert!(!is_call_path(path), "{path}");
        }
    }
}
