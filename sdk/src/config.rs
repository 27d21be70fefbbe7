//! The plugin's own settings: the `config` map of its manifest
//! (`NAME.yaml` beside `NAME.wasm`).
//!
//! ```ignore
//! // deploy/greeter.yaml:  config: {greeting: "hello", retries: 3}
//! let greeting = ferry_sdk::config::get("greeting").unwrap_or_else(|| "hi".into());
//! let retries: u32 = ferry_sdk::config::parse("retries")?.unwrap_or(1);
//! ```
//!
//! Values are text; numbers and booleans arrive as written in the manifest.
//! Changing the manifest deploys a new version, so a value never changes
//! under a running instance.

use std::str::FromStr;

use crate::__bindings::ferry::plugin::config as wit;
use crate::Error;

/// The value of `key`, if the manifest sets it.
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// Every key and value, sorted by key.
pub fn get_all() -> Vec<(String, String)> {
    wit::get_all()
}

/// The value of `key` parsed as `T`; `None` when it is not set. A value
/// that does not parse is an `internal` error naming the key: the manifest
/// is wrong, not the caller.
pub fn parse<T: FromStr>(key: &str) -> Result<Option<T>, Error>
where
    T::Err: std::fmt::Display,
{
    get(key)
        .map(|text| {
            text.parse().map_err(|e| {
                Error::internal(format!("config value `{key}` = `{text}` is not valid: {e}"))
            })
        })
        .transpose()
}
