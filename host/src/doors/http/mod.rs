//! The HTTP door: `POST /v1/{service}/{action}` and `POST /v1/rpc` become
//! invocations for the same pipeline, limits and error codes as the sockets
//! (`invoke.rs`); the operations endpoints `/healthz`, `/readyz`,
//! `/v1/status` and `/metrics` read `ops` (`ops.rs`). One error type turns
//! every refusal into `{"error": {"code", "message"}}` with its status.

mod headers;
mod invoke;
mod ops;
mod serve;
mod timer;

pub use serve::{HttpLimits, serve};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::Tally;
use crate::core::{ErrorBody, ErrorCode};
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
    /// The WebSocket door, when it is on.
    pub websocket: Option<Arc<crate::doors::websocket::Hub>>,
}

/// What the gateway's handlers share.
#[derive(Clone)]
pub(super) struct Gateway {
    pub(super) state: HttpState,
    /// How long a request body may take to arrive.
    pub(super) body_timeout: Duration,
}

/// The HTTP gateway. Tests can drive it without a socket.
///
/// No middleware layers: each would box and clone a service per request.
/// Handlers count themselves (`Counted`) and read the body under the limit
/// themselves.
pub fn app(state: HttpState, body_timeout: Duration) -> axum::Router {
    axum::Router::new()
        .route("/v1/ws", get(crate::doors::websocket::upgrade))
        .route("/v1/rpc", post(invoke::rpc))
        .route("/v1/batch", post(invoke::batch))
        .route("/v1/events/{topic}", post(invoke::publish))
        .route("/v1/{service}/{action}", post(invoke::call))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(Gateway {
            state,
            body_timeout,
        })
}

/// What one HTTP listener serves: its router, and on the gateway the
/// route nearly every request takes, `POST /v1/{service}/{action}`, tried
/// first by a look at the path. The router's own way to it (a table
/// match, two percent-decoded path params put in the request's
/// extensions, a boxed clone of the route and of the handler's future)
/// cost about 3,400 instructions a request, 7% of a whole echo; the
/// router still has the route, for `app`'s users and every other request.
#[derive(Clone)]
pub struct Door {
    router: axum::Router,
    calls: Option<Gateway>,
}

impl Door {
    /// The gateway: `app`, with its call route tried first.
    pub fn gateway(state: HttpState, body_timeout: Duration) -> Door {
        Door {
            router: app(state.clone(), body_timeout),
            calls: Some(Gateway {
                state,
                body_timeout,
            }),
        }
    }

    /// The admin listener: `admin_app`.
    pub fn admin(state: HttpState) -> Door {
        Door {
            router: admin_app(state),
            calls: None,
        }
    }

    /// Answers one request.
    pub(super) async fn answer(&self, request: axum::extract::Request) -> Response {
        if let Some(gateway) = &self.calls
            && request.method() == axum::http::Method::POST
            && invoke::is_call_path(request.uri().path())
        {
            return invoke::answer_call(gateway, request).await;
        }
        match tower::ServiceExt::oneshot(self.router.clone(), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The admin endpoints: every application's status and the metrics, on a
/// listener of their own (loopback by default).
pub fn admin_app(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/v1/status", get(ops::status))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

impl axum::extract::FromRef<Gateway> for HttpState {
    fn from_ref(gateway: &Gateway) -> HttpState {
        gateway.state.clone()
    }
}

/// Counts a request in (for the shutdown summary) when a handler starts,
/// and its response out when the handler is done with it.
struct Counted<'a>(&'a Tally);

impl<'a> Counted<'a> {
    fn new(tally: &'a Tally) -> Self {
        tally.http_accepted.fetch_add(1, Ordering::Relaxed);
        Counted(tally)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.http_answered.fetch_add(1, Ordering::Relaxed);
    }
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
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
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

async fn no_route(State(state): State<HttpState>) -> HttpError {
    let _counted = Counted::new(&state.tally);
    HttpError::new(
        ErrorCode::NotFound,
        "no such endpoint: use POST /v1/{service}/{action}, POST /v1/rpc, GET /healthz or /readyz (status and metrics are on the admin listener)",
    )
}

async fn wrong_method(State(state): State<HttpState>) -> Response {
    let _counted = Counted::new(&state.tally);
    let mut response = HttpError::new(ErrorCode::BadRequest, "method not allowed on this endpoint")
        .into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
