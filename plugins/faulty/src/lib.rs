//! Example plugin that misbehaves on request. The tests use it to prove that a
//! failing plugin costs only the request that made it fail.

use std::time::Duration;

use ferry_sdk::{Ctx, Error, params, sql};
use serde::Deserialize;
use serde_json::{Value, json};

/// Succeeds, so tests can see the plugin is healthy again after a failure.
fn ok(_: &Ctx, _: Value) -> Result<Value, Error> {
    Ok(json!({ "ok": true }))
}

/// Executes `unreachable`, the rawest kind of trap.
fn trap(_: &Ctx, _: Value) -> Result<Value, Error> {
    core::arch::wasm32::unreachable()
}

fn panic(_: &Ctx, _: Value) -> Result<Value, Error> {
    panic!("faulty plugin panicked on purpose")
}

/// Spins forever without calling the host; only epoch interruption stops it.
fn r#loop(_: &Ctx, _: Value) -> Result<Value, Error> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates and touches memory until the allocator gives up.
fn alloc(_: &Ctx, _: Value) -> Result<Value, Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// Sleeps (a host wait, not a busy loop) for longer than it has.
fn slow(ctx: &Ctx, _: Value) -> Result<Value, Error> {
    std::thread::sleep(ctx.time_left() + Duration::from_secs(1));
    Ok(json!({ "slept": true }))
}

#[derive(Deserialize)]
struct Nap {
    ms: u64,
}

/// Sleeps `ms` milliseconds, then answers: keeps an instance busy.
fn nap(_: &Ctx, p: Nap) -> Result<Value, Error> {
    std::thread::sleep(Duration::from_millis(p.ms));
    Ok(json!({ "napped": p.ms }))
}

/// What the instance was last told, kept in a global on purpose: answers
/// the previous value and keeps the new one. Shows what one instance's
/// memory carries from one request to the next.
fn remember(_: &Ctx, value: Value) -> Result<Value, Error> {
    static KEPT: std::sync::Mutex<Option<Value>> = std::sync::Mutex::new(None);
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    Ok(json!({ "previous": kept.replace(value) }))
}

/// Keeps a handle of the request it handles past the request, on purpose,
/// and answers the request id read through the one kept the time before.
/// The host discards an instance that keeps a handle, so no request ever
/// finds one: `previous` is always none.
fn stash_call(_: &Ctx, _: Value) -> Result<Value, Error> {
    use ferry_sdk::__bindings::ferry::plugin::invocation::{Call, current};
    thread_local! {
        static KEPT: std::cell::RefCell<Option<Call>> = const { std::cell::RefCell::new(None) };
    }
    let previous = KEPT.with(|kept| kept.borrow().as_ref().map(Call::request_id));
    let call = current().ok_or_else(|| Error::internal("no current call"))?;
    KEPT.with(|kept| kept.replace(Some(call)));
    Ok(json!({ "previous": previous }))
}

#[derive(Deserialize)]
struct Chatter {
    lines: usize,
    text: String,
    #[serde(default)]
    stdout: bool,
}

/// Writes `text` `lines` times, to the log or to stdout.
fn chatter(_: &Ctx, p: Chatter) -> Result<Value, Error> {
    for _ in 0..p.lines {
        if p.stdout {
            println!("{}", p.text);
        } else {
            ferry_sdk::warn!("{}", p.text);
        }
    }
    Ok(json!({ "wrote": p.lines }))
}

/// Returns an error with a code of the plugin's own.
fn refuse(_: &Ctx, _: Value) -> Result<Value, Error> {
    Err(Error::new("out_of_stock", "nothing left to sell"))
}

/// Tries every way out of the sandbox and reports what happened.
fn escape(_: &Ctx, _: Value) -> Result<Value, Error> {
    let outcome = |r: std::io::Result<String>| match r {
        Ok(got) => json!({ "ok": got }),
        Err(e) => json!({ "denied": e.to_string() }),
    };
    Ok(json!({
        "env": std::env::vars().count(),
        "args": std::env::args().count(),
        "read_file": outcome(std::fs::read_to_string("/etc/hostname")),
        "list_root": outcome(std::fs::read_dir("/").map(|d| format!("{} entries", d.count()))),
        "write_file": outcome(std::fs::write("escape.txt", b"x").map(|()| "written".into())),
        "tcp": outcome(std::net::TcpStream::connect("127.0.0.1:22").map(|_| "connected".into())),
    }))
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

fn rows_table() -> Result<(), Error> {
    sql::execute(
        "CREATE TABLE IF NOT EXISTS faulty_rows (name VARCHAR(64) NOT NULL PRIMARY KEY)",
        &[],
    )?;
    Ok(())
}

/// A transaction that has inserted `name` and is still open.
fn insert_in_transaction(name: &str) -> Result<sql::Transaction, Error> {
    rows_table()?;
    let tx = sql::begin()?;
    tx.execute("INSERT INTO faulty_rows (name) VALUES (?)", params![name])?;
    Ok(tx)
}

/// Inserts `name` in a transaction, then panics before committing.
fn write_then_panic(_: &Ctx, p: Named) -> Result<Value, Error> {
    let _tx = insert_in_transaction(&p.name)?;
    panic!(
        "wrote {} in a transaction, and panicked before commit",
        p.name
    )
}

/// Inserts `name` in a transaction, then outlives its deadline.
fn write_then_hang(ctx: &Ctx, p: Named) -> Result<Value, Error> {
    let tx = insert_in_transaction(&p.name)?;
    std::thread::sleep(ctx.time_left() + Duration::from_secs(1));
    tx.commit()?;
    Ok(json!({ "committed": true }))
}

/// Inserts `name` in a transaction and returns without committing or
/// dropping it (the handle is leaked on purpose).
fn write_then_forget(_: &Ctx, p: Named) -> Result<Value, Error> {
    let tx = insert_in_transaction(&p.name)?;
    std::mem::forget(tx);
    Ok(json!({ "forgot": true }))
}

/// Inserts `name` and commits: the control for the cases above.
fn write(_: &Ctx, p: Named) -> Result<Value, Error> {
    let tx = insert_in_transaction(&p.name)?;
    tx.commit()?;
    Ok(json!({ "committed": true }))
}

#[derive(Deserialize)]
struct Many {
    count: usize,
}

/// Begins `count` transactions and holds them all until it returns: how a
/// careless plugin would take every connection of the pool.
fn hold_transactions(_: &Ctx, p: Many) -> Result<Value, Error> {
    let mut held = Vec::new();
    for _ in 0..p.count {
        held.push(sql::begin()?);
    }
    Ok(json!({ "held": held.len() }))
}

#[derive(Deserialize)]
struct Count {
    n: i64,
}

/// How many rows named `name` exist.
fn count(_: &Ctx, p: Named) -> Result<Value, Error> {
    rows_table()?;
    let found: Vec<Count> = sql::query(
        "SELECT COUNT(*) AS n FROM faulty_rows WHERE name = ?",
        params![&p.name],
    )?;
    Ok(json!({ "count": found.first().map_or(0, |c| c.n) }))
}

#[derive(Deserialize)]
struct Statement {
    statement: String,
}

/// Runs the caller's statement and answers its rows as arrays: for tests
/// of deadlines, outages and value types.
fn run_sql(_: &Ctx, p: Statement) -> Result<Value, Error> {
    let rows = sql::query_rows(&p.statement, &[])?;
    let values: Vec<Value> = rows
        .rows
        .into_iter()
        .map(|row| {
            Value::Array(
                row.into_iter()
                    .map(|v| match v {
                        sql::Value::Null => Value::Null,
                        sql::Value::Boolean(b) => json!(b),
                        sql::Value::Int(i) => json!(i),
                        sql::Value::Float(f) => json!(f),
                        sql::Value::Text(t) => json!(t),
                        sql::Value::Blob(b) => json!({ "blob": b }),
                    })
                    .collect(),
            )
        })
        .collect();
    Ok(json!({ "columns": rows.columns, "rows": values }))
}

/// The health check answers what the manifest's `config.health` says:
/// `fail` (an error), `panic` (a trap), `hang` (past its deadline);
/// anything else, or nothing, passes.
fn health() -> Result<(), Error> {
    match ferry_sdk::config::get("health").as_deref() {
        Some("fail") => Err(Error::unavailable("configured to fail its health check")),
        Some("panic") => panic!("configured to panic in its health check"),
        Some("hang") => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        _ => Ok(()),
    }
}

ferry_sdk::service!(
    health = health;
    ok,
    trap,
    panic,
    "loop" => r#loop,
    alloc,
    slow,
    nap,
    remember,
    stash_call,
    chatter,
    refuse,
    escape,
    write_then_panic,
    write_then_hang,
    write_then_forget,
    write,
    count,
    run_sql,
    hold_transactions,
);
