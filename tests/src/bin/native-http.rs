//! The HTTP benchmark's baseline: a plain axum handler doing the same work
//! as `echo.params` behind `POST /v1/echo/params`: parse the body as JSON
//! and answer it. Usage: `native-http ADDR` (prints the bound address).

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::Value;

async fn params(body: Bytes) -> impl IntoResponse {
    let params: Value = match serde_json::from_slice(&body) {
        Ok(params) => params,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let body = serde_json::to_vec(&params).unwrap();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).expect("usage: native-http ADDR");
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/v1/echo/params", post(params));
    axum::serve(listener, app).await.unwrap();
}
