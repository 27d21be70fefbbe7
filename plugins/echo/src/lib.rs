//! Example plugin: `echo` answers with its params and the context it saw;
//! `params` answers exactly its params (the benchmarks' action: the native
//! servers they compare against do the same work); `sum` shows typed params; `config` answers the manifest's `config` map;
//! `version` says which build this is (built with `--features v2` it says
//! `2`: the deployment tests swap between the two builds); `publish`
//! publishes `{topic, payload}` on the bus (after `spin_ms` busy, if
//! given: the queue consumers' tests use it as their handler).
//!
//! `context` answers who called and with what identity, trace and time
//! left; `spin` keeps the instance busy for `ms` milliseconds; `relay`
//! calls other services (`calls`, one after the other, or all at once with
//! `many: true`) and answers their outcomes.
//!
//! Events it is subscribed to are published again on `seen.echo`, with
//! what the delivery said (topic, id, seq, attempt, subscription, app), so
//! a consumer can watch them arrive; a payload with `retry_until: N` is
//! answered `retry` until attempt N, `reject: true` is rejected, and
//! `trap: true` panics.
//! The end-to-end tests and the socket benchmark use it.

use std::collections::BTreeMap;

use ferry_sdk::events::{Event, Failure};
use ferry_sdk::services::{self, Request};
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

/// Exactly the params: parsed and written back, nothing else.
fn params(_: &Ctx, params: Value) -> Result<Value, Error> {
    Ok(params)
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

/// The manifest's `config` map, as the plugin reads it.
fn config(_: &Ctx, _: Value) -> Result<BTreeMap<String, String>, Error> {
    Ok(ferry_sdk::config::get_all().into_iter().collect())
}

#[derive(Serialize)]
struct Version {
    version: &'static str,
}

const VERSION: &str = if cfg!(feature = "v2") { "2" } else { "1" };

fn version(_: &Ctx, _: Value) -> Result<Version, Error> {
    Ok(Version { version: VERSION })
}

#[derive(Deserialize)]
struct Publish {
    topic: String,
    payload: Value,
    /// Busy for this long first (the queue tests' slow consumer).
    #[serde(default)]
    spin_ms: Option<u64>,
}

#[derive(Serialize)]
struct Published {
    event_id: String,
}

fn publish(_: &Ctx, p: Publish) -> Result<Published, Error> {
    if let Some(ms) = p.spin_ms {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        while std::time::Instant::now() < until {}
    }
    let event_id = ferry_sdk::events::publish(&p.topic, &p.payload)?;
    Ok(Published { event_id })
}

fn on_event(e: &Event) -> Result<(), Failure> {
    let payload: Value = e.payload()?;
    if payload["trap"] == true {
        panic!("asked to trap on event {}", e.id);
    }
    if payload["reject"] == true {
        return Err(Failure::reject("asked to reject"));
    }
    if let Some(ms) = payload["spin_ms"].as_u64() {
        // Busy, not asleep: the host's epoch deadline still applies.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        while std::time::Instant::now() < until {}
    }
    if let Some(until) = payload["retry_until"].as_u64()
        && u64::from(e.attempt) < until
    {
        return Err(Failure::retry(format!("attempt {} of {until}", e.attempt)));
    }
    let seen = serde_json::json!({
        "app": e.app,
        "topic": e.topic,
        "subscription": e.subscription,
        "id": e.id,
        "seq": e.seq,
        "attempt": e.attempt,
        "source_time_ms": e.source_time_ms,
        "payload": payload,
    });
    ferry_sdk::events::publish("seen.echo", &seen)?;
    Ok(())
}

#[derive(Serialize)]
struct Context<'a> {
    service: &'a str,
    caller: Option<&'a str>,
    trace_id: &'a str,
    app: &'a str,
    tenant: Option<&'a str>,
    subject: Option<&'a str>,
    claims: Value,
    request_id: &'a str,
    time_left_ms: u128,
}

fn context(ctx: &Ctx, _: Value) -> Result<Context<'_>, Error> {
    Ok(Context {
        service: ctx.service(),
        caller: ctx.caller(),
        trace_id: ctx.trace_id(),
        app: ctx.app(),
        tenant: ctx.tenant(),
        subject: ctx.subject(),
        claims: ctx.claims()?,
        request_id: ctx.request_id(),
        time_left_ms: ctx.time_left().as_millis(),
    })
}

#[derive(Deserialize)]
struct Spin {
    ms: u64,
}

fn spin(_: &Ctx, p: Spin) -> Result<Value, Error> {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(p.ms);
    while std::time::Instant::now() < until {}
    Ok(serde_json::json!({"spun_ms": p.ms}))
}

#[derive(Deserialize)]
struct CallSpec {
    service: String,
    action: String,
    #[serde(default)]
    params: Value,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Relay {
    calls: Vec<CallSpec>,
    #[serde(default)]
    many: bool,
}

fn relay(ctx: &Ctx, p: Relay) -> Result<Value, Error> {
    let requests: Vec<Request> = p
        .calls
        .iter()
        .map(|c| {
            let request = Request::json(&c.service, &c.action, c.params.to_string());
            match c.timeout_ms {
                Some(ms) => request.timeout_ms(ms),
                None => request,
            }
        })
        .collect();
    let outcomes = if p.many {
        services::call_many(&requests)
    } else {
        requests.into_iter().map(services::call_json).collect()
    };
    let outcomes: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            Ok(text) => serde_json::json!({"result": serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)}),
            Err(e) => serde_json::json!({"error": {"code": e.code(), "message": e.message()}}),
        })
        .collect();
    Ok(serde_json::json!({"by": ctx.service(), "outcomes": outcomes}))
}

ferry_sdk::service!(events = on_event; echo, params, sum, config, version, publish, context, spin, relay);
