//! The HTTP benchmark's baseline: a plain axum handler doing the same JSON
//! echo as `plugins/echo` behind `POST /v1/echo/echo`. Usage:
//! `native-http ADDR` (prints the bound address).

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use ferry_tests::baseline::{Echoed, Seen};
use serde_json::Value;

async fn echo(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let params: Value = match serde_json::from_slice(&body) {
        Ok(params) => params,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let tenant = headers.get("x-tenant-id").and_then(|v| v.to_str().ok());
    let body = serde_json::to_vec(&Echoed {
        params,
        ctx: Seen {
            request_id: "\"http-1\"".to_owned(),
            app: "default",
            service: "echo",
            tenant,
            subject: None,
            time_left_ms: 5000,
        },
    })
    .unwrap();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).expect("usage: native-http ADDR");
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/v1/echo/echo", post(echo));
    axum::serve(listener, app).await.unwrap();
}
