//! What the native baseline servers answer: the same shape as
//! `plugins/echo`, so the benchmarks compare like with like.

use serde::Serialize;
use serde_json::Value;

/// The context echo reports having seen.
#[derive(Serialize)]
pub struct Seen<'a> {
    pub request_id: String,
    pub app: &'a str,
    pub service: &'a str,
    pub tenant: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub time_left_ms: u64,
}

/// Echo's result: the params as given, and the context.
#[derive(Serialize)]
pub struct Echoed<'a> {
    pub params: Value,
    pub ctx: Seen<'a>,
}
