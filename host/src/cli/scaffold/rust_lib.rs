//! {{name}}: a Ferry plugin in Rust. `./build.sh` builds {{name}}.wasm; see
//! README.md for the smoke test, deploying and calling it.

use ferry_sdk::{Ctx, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Hello {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
    tenant: Option<String>,
}

/// `hello {"name": "Ada"}` answers `{"message": "hello, Ada", "tenant": ...}`.
fn hello(ctx: &Ctx, p: Hello) -> Result<Greeting, Error> {
    if p.name.trim().is_empty() {
        return Err(Error::bad_request("name must not be empty"));
    }
    Ok(Greeting {
        message: format!("hello, {}", p.name),
        tenant: ctx.tenant().map(str::to_owned),
    })
}

ferry_sdk::service!(hello);
