//! Example plugin: `echo` answers with its params and the context it saw;
//! `sum` shows typed params.
//! The end-to-end tests and the socket benchmark use it.

use ferry_sdk::{Ctx, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize)]
struct Seen<'a> {
    request_id: &'a str,
    app: &'a str,
    service: &'a str,
    tenant: Option<&'a str>,
    subject: Option<&'a str>,
    claims: Value,
    time_left_ms: u128,
}

#[derive(Serialize)]
struct Echoed<'a> {
    params: Value,
    ctx: Seen<'a>,
}

fn echo(ctx: &Ctx, params: Value) -> Result<Echoed<'_>, Error> {
    Ok(Echoed {
        params,
        ctx: Seen {
            request_id: ctx.request_id(),
            app: ctx.app(),
            service: ctx.service(),
            tenant: ctx.tenant(),
            subject: ctx.subject(),
            claims: ctx.claims()?,
            time_left_ms: ctx.time_left().as_millis(),
        },
    })
}

#[derive(Deserialize)]
struct Numbers {
    numbers: Vec<i64>,
}

#[derive(Serialize)]
struct Sum {
    sum: i64,
}

/// Typed params and result: adds up a list of integers.
fn sum(_: &Ctx, p: Numbers) -> Result<Sum, Error> {
    p.numbers
        .iter()
        .try_fold(0i64, |acc, n| acc.checked_add(*n))
        .map(|sum| Sum { sum })
        .ok_or_else(|| Error::bad_request("the sum does not fit in 64 bits"))
}

ferry_sdk::service!(echo, sum);
