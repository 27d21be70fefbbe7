//! The host's parsers, compiled from the very source files the `ferry`
//! binary is built from (by path, in the same module layout, so their
//! `crate::` and `super::` paths resolve), without the runtime, the
//! databases or the doors' sockets: what reads untrusted bytes is fuzzed,
//! and the build stays small enough to run in CI.

#![allow(dead_code, unused_imports)]

#[path = "../../src/core/mod.rs"]
pub mod core;

#[path = "../../src/config/mod.rs"]
pub mod config;

#[path = "../../src/doors"]
pub mod doors {
    pub mod envelope;
    pub mod framing;
}

#[path = "../../src/pipeline"]
pub mod pipeline {
    pub mod auth;
    pub mod verified;
}

#[path = "../../src/resources"]
pub mod resources {
    pub mod database {
        pub mod dialect;
    }
}
