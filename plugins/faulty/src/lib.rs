//! Example plugin that misbehaves on request. The tests use it to prove that a
//! failing plugin costs only the request that made it fail.

use std::time::Duration;

use ferry_sdk::{Ctx, Error};
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

ferry_sdk::service!(ok, trap, panic, "loop" => r#loop, alloc, slow, refuse, escape);
