//! `ferry`: the host binary. The command line lives in `cli`; the layers
//! below it, from the top: `deploy`, `doors`, `ops`, `pipeline`, `runtime`,
//! `capabilities`, `resources`; `config` and `core` depend on none of them.

mod capabilities;
mod cli;
mod config;
mod core;
mod deploy;
mod doors;
mod ops;
mod pipeline;
mod resources;
mod runtime;

// Every request allocates a little (frames, strings, task state); mimalloc's
// per-thread free lists make that markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
