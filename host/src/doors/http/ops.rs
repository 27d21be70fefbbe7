//! The operations endpoints: liveness, readiness, the status document and
//! the metrics, all read from `ops` and the pipeline's table.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::{Counted, HttpState, json_response};

pub async fn healthz(State(state): State<HttpState>) -> Response {
    let _counted = Counted::new(&state.tally);
    json_response(StatusCode::OK, r#"{"status":"alive"}"#)
}

/// Ready when every plugin file in the folder loaded and every service an
/// application lists is there.
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let _counted = Counted::new(&state.tally);
    let failed = state.pipeline.table().failed();
    let missing = state.pipeline.missing();
    let loading = state.pipeline.table().loading();
    if failed.is_empty() && missing.is_empty() && loading.is_empty() {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
        let status = if loading.is_empty() {
            "not_ready"
        } else {
            "loading"
        };
        let body =
            json!({ "status": status, "failed": names, "missing": missing, "loading": loading });
        json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
    }
}

pub async fn status(State(state): State<HttpState>) -> Response {
    let _counted = Counted::new(&state.tally);
    let mut body = crate::ops::status::document(&state.pipeline, state.started);
    if let Some(hub) = &state.websocket {
        body["websocket"] = json!(hub.counts());
    }
    json_response(StatusCode::OK, body.to_string())
}

/// The counters and histograms in the OpenMetrics text format.
pub async fn metrics(State(state): State<HttpState>) -> Response {
    let _counted = Counted::new(&state.tally);
    let doors = state
        .websocket
        .as_ref()
        .map(|hub| hub.readings())
        .unwrap_or_default();
    let body = crate::ops::metrics::render(&state.pipeline, &doors);
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::ops::metrics::CONTENT_TYPE),
    );
    response
}
