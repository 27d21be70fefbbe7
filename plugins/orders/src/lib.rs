//! Example plugin composing two others through `ferry:plugin/services`:
//! `place` files an order as a `todo` item, then asks `todo` for the
//! tenant's open items and `echo` for a receipt at once (`call_many`);
//! `summary` asks both at once. The callees act for the same caller and
//! tenant, within what is left of this request's deadline.

use ferry_sdk::services::{self, Request};
use ferry_sdk::{Ctx, Error};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Place {
    title: String,
}

#[derive(Serialize)]
struct Placed {
    item: Value,
    open_items: usize,
    receipt: Value,
}

fn parse(text: String) -> Result<Value, Error> {
    serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("a callee answered bad JSON: {e}")))
}

fn place(ctx: &Ctx, p: Place) -> Result<Placed, Error> {
    let item: Value = services::call("todo", "create", &json!({"title": p.title}))?;
    let mut answers = services::call_many(&[
        Request::new("todo", "list", &json!({}))?,
        Request::new(
            "echo",
            "params",
            &json!({"order": item["id"], "for": ctx.tenant()}),
        )?
        .timeout_ms(500),
    ])
    .into_iter();
    let list = parse(answers.next().expect("two answers")?)?;
    let receipt = parse(answers.next().expect("two answers")?)?;
    Ok(Placed {
        open_items: list["items"].as_array().map_or(0, Vec::len),
        item,
        receipt,
    })
}

fn summary(_: &Ctx, _: Value) -> Result<Value, Error> {
    let answers = services::call_many(&[
        Request::new("todo", "list", &json!({}))?,
        Request::new("echo", "context", &json!({}))?,
    ]);
    let outcomes: Vec<Value> = answers
        .into_iter()
        .map(|a| match a {
            Ok(text) => json!({"result": parse(text).unwrap_or(Value::Null)}),
            Err(e) => json!({"error": {"code": e.code(), "message": e.message()}}),
        })
        .collect();
    Ok(json!({"todo": outcomes[0], "echo": outcomes[1]}))
}

ferry_sdk::service!(place, summary);
