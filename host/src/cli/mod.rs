//! The command line: parses arguments, sets up logging and the async
//! runtime, and hands off to one file per subcommand.

mod call;
mod check;
mod client;
mod deploy;
mod new;
mod reload;
mod serve;
mod status;
mod token;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::doors::control;

/// Ferry: IPC services whose handlers are WebAssembly components.
#[derive(Parser)]
#[command(name = "ferry", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the plugins folder over the Unix sockets.
    Serve {
        /// YAML config file; without one, embedded defaults are used.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Send one request and print the response.
    Call {
        /// Service to call.
        service: String,
        /// Action of the service.
        action: String,
        /// Params as JSON (default `{}`).
        params: Option<String>,
        /// Socket to connect to (default: the config's, else run/ferry.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Config file to read the socket path from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Lower the deadline for this request.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Tenant to act for.
        #[arg(long)]
        tenant: Option<String>,
        /// Bearer token to send.
        #[arg(long)]
        token: Option<String>,
        /// Application to call (default: the socket's).
        #[arg(long)]
        app: Option<String>,
    },
    /// Mint a development token with an application's HMAC secret.
    Token {
        /// The application whose key signs the token.
        #[arg(long)]
        app: String,
        /// The token's subject (`sub`).
        #[arg(long)]
        sub: String,
        /// The tenant, written to the application's `tenant_claim`.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// Config file that defines the application.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print every service's state and counters from a running host.
    Status {
        /// Read it from the host's admin endpoints at this address instead
        /// of its control socket.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Config file of the host (for its control socket).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Say whether a file is a valid Ferry plugin and, if not, why.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Then run the requests in this JSON file against it and compare
        /// the answers (see the skeleton `ferry new` writes).
        #[arg(long)]
        smoke: Option<PathBuf>,
    },
    /// Write a new plugin skeleton that builds with `./build.sh` and comes
    /// with a smoke test.
    New {
        /// Service name: lowercase letters, digits, `-` and `_`.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: new::Lang,
        /// Folder to write it into (default: ./NAME); must be new or empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Ferry SDK a Rust plugin depends on (default: the one this
        /// binary was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// The webhook deliveries a running host still owes, and retrying a
    /// dead one.
    Webhooks {
        #[command(subcommand)]
        action: webhooks::Action,
    },
    /// Re-read the config file of a running host and apply it.
    Reload {
        /// The config file the host runs with.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a plugin, then move it into the plugins folder the safe way and
    /// wait until the running host serves it (or says why it will not).
    Deploy {
        /// The `.wasm` file.
        file: PathBuf,
        /// Service name (default: the file name without `.wasm`).
        #[arg(long)]
        name: Option<String>,
        /// Manifest to deploy with it (default: FILE.yaml beside the file,
        /// if there is one; otherwise the folder's current manifest stays).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The host's config file (for the plugins folder and limits).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not wait for a running host to serve it.
        #[arg(long)]
        no_wait: bool,
        /// Put it in the cluster's object store bucket (the config's
        /// `cluster` block), from which every host takes it.
        #[arg(long)]
        cluster: bool,
    },
    /// Remove a service from the plugins folder; a running host unloads it
    /// once its requests in flight are done.
    Undeploy {
        /// Service name.
        name: String,
        /// The host's config file (for the plugins folder).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs the command line; what `main` returns.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end: dropping it flushes the lines still queued.
    let _log_writer = init_logging();
    // A worker polls for I/O every `event_interval` task polls. A busy
    // plugin's poll lasts up to an epoch tick, so tokio's default (61)
    // could let spinning plugins delay every socket; 8 polled so often that
    // it cost 13% of the socket benchmark's throughput. 31 measured the same
    // throughput as 61, and the abuse test's good client saw the same worst
    // case (115-165 ms under 60 spinning plugins) with 8, 31 and 61.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(31)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config: path } => {
                let config = load_config(path.as_deref())?;
                serve::serve(config, path).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Call {
                service,
                action,
                params,
                socket,
                config,
                timeout_ms,
                tenant,
                token,
                app,
            } => {
                let socket = match socket {
                    Some(socket) => socket,
                    None => load_config(config.as_deref())?.socket.path,
                };
                call::call(call::CallArgs {
                    socket,
                    service,
                    action,
                    params,
                    timeout_ms,
                    tenant,
                    token,
                    app,
                })
                .await
            }
            Command::Token {
                app,
                sub,
                tenant,
                ttl,
                config,
            } => {
                let config = load_config(config.as_deref())?;
                token::token(&config, &app, &sub, tenant.as_deref(), ttl)
            }
            Command::Status {
                admin,
                config,
                json,
            } => {
                let config = load_config(config.as_deref())?;
                let source = match admin {
                    Some(addr) => status::StatusSource::Http(addr),
                    None => status::StatusSource::Control(control::path(&config)),
                };
                status::status(source, json).await
            }
            Command::Check { file, smoke } => check::check(&file, smoke.as_deref()).await,
            Command::New {
                name,
                lang,
                dir,
                sdk,
            } => new::new(&name, lang, dir, sdk),
            Command::Webhooks { action } => webhooks::run(action, load_config).await,
            Command::Reload { config } => match load_config(config.as_deref()) {
                Ok(config) => reload::reload(&config).await,
                // The host would refuse it the same way; no need to ask.
                Err(e) => {
                    println!("reload refused; the running config stays: {e:#}");
                    Ok(ExitCode::from(1))
                }
            },
            Command::Deploy {
                file,
                name,
                manifest,
                config,
                no_wait,
                cluster,
            } => {
                let config = load_config(config.as_deref())?;
                let to = if cluster {
                    deploy::To::Cluster
                } else {
                    deploy::To::Folder
                };
                deploy::deploy(&config, &file, name, manifest, to, !no_wait).await
            }
            Command::Undeploy { name, config } => {
                deploy::undeploy(&load_config(config.as_deref())?, &name).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the lifetime must be longer than zero".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

/// Logs go to stderr. `FERRY_LOG` picks levels per target, for example
/// `FERRY_LOG=debug` or `FERRY_LOG=info,plugin=warn`.
///
/// Lines are written by a thread of their own through a bounded queue: a
/// reader of stderr that is slow (or gone) loses lines, and never stalls
/// the threads that serve requests.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("FERRY_LOG")
        .ok()
        .and_then(|spec| match spec.parse::<Targets>() {
            Ok(targets) => Some(targets),
            Err(e) => {
                eprintln!("ferry: ignoring FERRY_LOG={spec:?}: {e}");
                None
            }
        })
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::stderr());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi),
        )
        .with(filter)
        .init();
    guard
}
