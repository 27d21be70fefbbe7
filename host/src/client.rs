//! The command-line tools that talk to a running host (`call`, `status`,
//! `reload`, `deploy`, `undeploy`) or inspect a plugin file (`check`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::config::Config;
use crate::protocol::FrameReader;
use crate::runtime::{Runtime, Settings};

/// Largest response `ferry call` accepts.
const MAX_RESPONSE: u32 = 256 << 20;

pub struct CallArgs {
    pub socket: PathBuf,
    pub service: String,
    pub action: String,
    pub params: Option<String>,
    pub timeout_ms: Option<u64>,
    pub tenant: Option<String>,
    pub token: Option<String>,
    pub app: Option<String>,
}

/// `ferry token`: prints a development token for `app`, signed with its
/// HMAC secret; refuses, saying why, for applications without one.
pub fn token(
    config: &crate::config::Config,
    app: &str,
    subject: &str,
    tenant: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<ExitCode> {
    let apps = crate::apps::Apps::build(config, false, None)
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let Some(found) = apps.get(app) else {
        bail!(
            "no application named `{app}` in the config (applications: {})",
            apps.names().join(", ")
        );
    };
    let crate::apps::Auth::Jwt(jwt) = &found.auth else {
        bail!(
            "cannot mint a token for `{app}`: it has no JWT auth (`auth: none`), so it needs no token"
        );
    };
    let token = jwt
        .mint(subject, tenant, ttl)
        .map_err(|e| anyhow::anyhow!("cannot mint a token for `{app}`: {e}"))?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// Sends one request, prints the response as pretty JSON. Exits 0 on
/// `success`, 1 on an `error` response.
pub async fn call(args: CallArgs) -> anyhow::Result<ExitCode> {
    let params: Value = match &args.params {
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("params are not valid JSON: {text}"))?,
        None => json!({}),
    };
    let mut request = json!({
        "id": 1,
        "service": args.service,
        "action": args.action,
        "params": params,
    });
    for (key, value) in [
        ("timeout_ms", args.timeout_ms.map(Value::from)),
        ("tenant_id", args.tenant.map(Value::from)),
        ("token", args.token.map(Value::from)),
        ("app", args.app.map(Value::from)),
    ] {
        if let Some(value) = value {
            request[key] = value;
        }
    }
    let response = exchange(&args.socket, &request, Duration::from_secs(30))
        .await
        .with_context(|| {
            format!(
                "cannot ask the host at {} (is `ferry serve` running there?)",
                args.socket.display()
            )
        })?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(if response["status"] == "success" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Sends one frame to the socket at `path` and reads the one answer,
/// waiting at most `wait` for it.
async fn exchange(path: &Path, request: &Value, wait: Duration) -> anyhow::Result<Value> {
    let payload = serde_json::to_vec(request)?;
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    write.write_all(&payload).await?;
    let mut frames = FrameReader::new(read, MAX_RESPONSE, wait);
    let Some(frame) = frames.read_frame().await? else {
        bail!("the host closed the connection without answering");
    };
    serde_json::from_slice(&frame).context("the host answered something that is not JSON")
}

/// Compiles, links and instantiates `file` exactly as `serve` would, and
/// says what is wrong if any step fails; with `smoke`, then runs the cases
/// in that JSON file against it. Exits 0 when all is well, 1 when not.
pub async fn check(file: &Path, smoke: Option<&Path>) -> anyhow::Result<ExitCode> {
    // A smoke test reads its cases before spending time on compiling.
    let cases: Option<Vec<SmokeCase>> = match smoke {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a list of smoke cases ({{\"action\", \"params\", \"tenant\", \"subject\", \"expect\" or \"expect_error\"}})",
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| crate::router::valid_service_name(s))
        .unwrap_or("check")
        .to_owned();
    // A smoke test may use the database: it gets a throwaway SQLite file,
    // removed however the check ends.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("ferry-smoke-{}", std::process::id())));
    let database = match &cases {
        Some(_) => {
            let config = crate::config::DatabaseConfig {
                url: Some(format!(
                    "sqlite:{}",
                    scratch.0.join("smoke.sqlite").display()
                )),
                ..Default::default()
            };
            Some(Arc::new(
                crate::database::Database::open("smoke", &config, &scratch.0)
                    .map_err(|e| anyhow::anyhow!("cannot open the smoke test's database: {e}"))?,
            ))
        }
        None => None,
    };
    let settings = Settings {
        database: database.is_some(),
        ..Settings::default()
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            println!("invalid: cannot read {}: {e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = Arc::new(Runtime::new(None)?);
    let (plugin, report) = match load_and_start(&runtime, &name, bytes, settings).await? {
        Ok(loaded) => loaded,
        Err(why) => {
            println!("invalid: {}: {why}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "ok: {} is a valid Ferry plugin (world ferry:plugin/service@0.1.0, {} KiB, sha256 {}, compiled in {} ms, health export: {})",
        file.display(),
        report.bytes / 1024,
        plugin.version(),
        report.elapsed.as_millis(),
        if plugin.has_health() { "yes" } else { "no" }
    );
    let Some(cases) = cases else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        match case.run(&plugin, &name, i, database.clone()).await {
            Ok(()) => println!("pass  {}", case.action),
            Err(why) => {
                failed += 1;
                println!("FAIL  {}: {why}", case.action);
            }
        }
    }
    println!(
        "smoke test: {} passed, {failed} failed",
        cases.len() - failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Loads and starts one plugin as `serve` would: compiled (or taken from the
/// runtime's cache) on a blocking thread, linked, and one instance started.
/// The inner error says which step failed.
async fn load_and_start(
    runtime: &Arc<Runtime>,
    name: &str,
    bytes: Vec<u8>,
    settings: Settings,
) -> anyhow::Result<Result<(crate::runtime::Plugin, crate::runtime::LoadReport), String>> {
    let loaded = tokio::task::spawn_blocking({
        let (runtime, name) = (runtime.clone(), name.to_owned());
        move || {
            let digest = crate::runtime::digest(&bytes);
            runtime.load_bytes(&name, &bytes, digest, settings, std::time::Instant::now())
        }
    })
    .await?;
    let (plugin, report) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Err(e) = plugin.warm_up().await {
        return Ok(Err(format!("it links, but instantiating it fails: {e}")));
    }
    Ok(Ok((plugin, report)))
}

/// One request of a smoke test, and what it must answer.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SmokeCase {
    action: String,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    /// The result, exactly.
    #[serde(default)]
    expect: Option<Value>,
    /// The error code.
    #[serde(default)]
    expect_error: Option<String>,
}

impl SmokeCase {
    async fn run(
        &self,
        plugin: &crate::runtime::Plugin,
        service: &str,
        index: usize,
        database: Option<Arc<crate::database::Database>>,
    ) -> Result<(), String> {
        let timeout_ms = plugin.limits().timeout_ms;
        let params = self.params.clone().unwrap_or(json!({})).to_string();
        let claims = match &self.subject {
            Some(subject) => json!({ "sub": subject }).to_string(),
            None => "{}".to_owned(),
        };
        let call = crate::runtime::Call {
            ctx: crate::bindings::Context {
                request_id: format!("\"smoke-{index}\""),
                app: "smoke".into(),
                service: service.to_owned(),
                tenant: self.tenant.clone(),
                subject: self.subject.clone(),
                claims,
                time_left_ms: timeout_ms,
            },
            app: "smoke".into(),
            database,
            action: &self.action,
            params: &params,
            deadline: std::time::Instant::now() + Duration::from_millis(timeout_ms),
            timeout_ms,
        };
        let outcome = plugin.call(call).await;
        match (&self.expect, &self.expect_error, outcome) {
            (Some(expected), None, Ok(text)) => {
                let got: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if &got == expected {
                    Ok(())
                } else {
                    Err(format!("expected {expected}, got {got}"))
                }
            }
            (None, Some(code), Err(e)) => {
                let error = crate::error::ErrorBody::from(e);
                if &error.code == code {
                    Ok(())
                } else {
                    Err(format!(
                        "expected error `{code}`, got `{}`: {}",
                        error.code, error.message
                    ))
                }
            }
            (None, Some(code), Ok(text)) => Err(format!("expected error `{code}`, got {text}")),
            (Some(expected), None, Err(e)) => {
                let error = crate::error::ErrorBody::from(e);
                Err(format!(
                    "expected {expected}, got error `{}`: {}",
                    error.code, error.message
                ))
            }
            _ => Err("a case says exactly one of `expect` and `expect_error`".into()),
        }
    }
}

/// Where `ferry status` reads the status document.
pub enum StatusSource {
    Http(std::net::SocketAddr),
    /// The control socket, when the HTTP gateway is off.
    Control(PathBuf),
}

/// Fetches the status document from a running host and prints it as a
/// table (or as JSON).
pub async fn status(source: StatusSource, raw: bool) -> anyhow::Result<ExitCode> {
    let status = match source {
        StatusSource::Http(addr) => http_status(addr).await?,
        StatusSource::Control(path) => match control(&path, "status").await? {
            Ok(status) => status,
            Err(error) => bail!("the host refused: {}", error["message"]),
        },
    };
    if raw {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status_table(&status));
    Ok(ExitCode::SUCCESS)
}

async fn http_status(addr: std::net::SocketAddr) -> anyhow::Result<Value> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("cannot connect to {addr} (is `ferry serve` running with HTTP there?)")
        })?;
    stream
        .write_all(
            format!("GET /v1/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .context("the host did not answer within 10 s")??;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the host answered: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    serde_json::from_str(body).context("status is not JSON")
}

/// Sends one command over a running host's control socket. Answers the
/// result, or the error object the host sent back.
async fn control(path: &Path, command: &str) -> anyhow::Result<Result<Value, Value>> {
    // A reload may rebuild plugins whose limits changed.
    let mut answer = exchange(
        path,
        &json!({ "id": 1, "command": command }),
        Duration::from_secs(300),
    )
    .await
    .with_context(|| {
        format!(
            "cannot ask the host through its control socket {} (is `ferry serve` running with this config?)",
            path.display()
        )
    })?;
    Ok(if answer["status"] == "success" {
        Ok(answer["result"].take())
    } else {
        Err(answer["error"].take())
    })
}

/// Asks a running host for its status until `settled` finds what it waits
/// for in it, or `limit` passes (an error naming `what`). Answers `None` at
/// once when no host is running.
async fn watch_status<T>(
    path: &Path,
    limit: Duration,
    what: &str,
    mut settled: impl FnMut(&Value) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let status = match control(path, "status").await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => bail!("the host refused: {}", error["message"]),
            Err(_) => return Ok(None),
        };
        if let Some(found) = settled(&status) {
            return Ok(Some(found));
        }
        if std::time::Instant::now() > deadline {
            bail!("{what} did not happen within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One service's entry in a status document.
fn service_entry<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// `ferry reload`: asks the running host to re-read its config file.
pub async fn reload(config: &Config) -> anyhow::Result<ExitCode> {
    match control(&crate::control::path(config), "reload").await? {
        Ok(summary) => {
            let list = |v: &Value| {
                let items: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if items.is_empty() {
                    "none".to_owned()
                } else {
                    items.join(", ")
                }
            };
            println!("reloaded");
            println!("applications: {}", list(&summary["apps"]));
            println!("plugins reloaded: {}", list(&summary["plugins_changed"]));
            if summary["needs_restart"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                println!(
                    "changed, but kept until a restart: {}",
                    list(&summary["needs_restart"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!(
                "reload refused; the running config stays: {}",
                error["message"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// A file written under a hidden name in its destination's folder (which
/// the host ignores), flushed, and not yet renamed into place.
struct Staged {
    temporary: PathBuf,
    dest: PathBuf,
}

impl Staged {
    fn write(dest: &Path, bytes: &[u8]) -> anyhow::Result<Staged> {
        use std::io::Write;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin");
        let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let staged = Staged {
            temporary,
            dest: dest.to_owned(),
        };
        let mut file = std::fs::File::create(&staged.temporary)
            .with_context(|| format!("cannot write {}", staged.temporary.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", staged.temporary.display()))?;
        Ok(staged)
    }

    /// Renames the file into place: the host only ever sees it whole.
    fn commit(self) -> anyhow::Result<()> {
        std::fs::rename(&self.temporary, &self.dest)
            .with_context(|| format!("cannot move the file into place at {}", self.dest.display()))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

/// `ferry deploy`: checks the file (and its manifest) exactly as the host
/// will, compiling into the host's cache so the host loads it at once, then
/// moves it into the plugins folder and waits for the host to serve it.
pub async fn deploy(
    config: &Config,
    file: &Path,
    name: Option<String>,
    manifest: Option<PathBuf>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let name = match name {
        Some(name) => name,
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("cannot take a service name from the file name; pass --name")?
            .to_owned(),
    };
    if !crate::router::valid_service_name(&name) {
        bail!(
            "`{name}` is not a service name: lowercase letters, digits, `-` and `_`; pass --name"
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let manifest = match manifest {
        Some(path) => Some(path),
        None => Some(file.with_extension("yaml")).filter(|p| p.is_file()),
    };
    let manifest_text = match &manifest {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let dest = config.plugins.join(format!("{name}.wasm"));
    // Without a manifest of its own, the service keeps the folder's.
    let effective_manifest = match &manifest_text {
        Some(text) => Some(text.clone()),
        None => std::fs::read_to_string(dest.with_extension("yaml")).ok(),
    };
    let settings = match crate::deploy::settings(
        manifest.as_deref().unwrap_or(&dest.with_extension("yaml")),
        effective_manifest.as_deref(),
        &config.defaults,
    ) {
        Ok(settings) => settings,
        Err(e) => {
            println!("refused: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = Arc::new(Runtime::new(Some(config.cache_dir()))?);
    let digest = crate::runtime::digest(&bytes);
    let plugin = match load_and_start(&runtime, &name, bytes.clone(), settings).await? {
        Ok((plugin, _)) => plugin,
        Err(why) => {
            println!("refused: {}: {why}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let version = plugin.version().to_owned();
    drop(plugin);
    let deployment = crate::deploy::deployment_id(&digest, effective_manifest.as_deref());

    // Both files are written first and renamed one right after the other,
    // the manifest before the code, so the host takes them in together.
    std::fs::create_dir_all(&config.plugins)
        .with_context(|| format!("cannot create {}", config.plugins.display()))?;
    let manifest = match &manifest_text {
        Some(text) => Some(Staged::write(
            &dest.with_extension("yaml"),
            text.as_bytes(),
        )?),
        None => None,
    };
    let code = Staged::write(&dest, &bytes)?;
    let moved = std::time::Instant::now();
    if let Some(manifest) = manifest {
        manifest.commit()?;
    }
    code.commit()?;
    if !wait {
        println!(
            "deployed {name} (version {version}, deployment {deployment}) into {}",
            config.plugins.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = watch_status(
        &crate::control::path(config),
        Duration::from_secs(120),
        "serving the new deployment",
        |status| {
            let entry = service_entry(status, &name)?;
            if entry["deployment"] == deployment.as_str() {
                return Some(Ok(()));
            }
            (entry["rejected"]["deployment"] == deployment.as_str()).then(|| {
                Err(entry["rejected"]["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned())
            })
        },
    )
    .await?;
    match outcome {
        None => {
            println!(
                "deployed {name} (version {version}, deployment {deployment}) into {}; no host is running to serve it",
                config.plugins.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Ok(())) => {
            println!(
                "deployed {name} (version {version}, deployment {deployment}): serving after {} ms",
                moved.elapsed().as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(reason)) => {
            println!("the host refused {name} (version {version}): {reason}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `ferry undeploy`: removes the service's files from the plugins folder and
/// waits until a running host no longer serves it.
pub async fn undeploy(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    if !crate::router::valid_service_name(name) {
        bail!("`{name}` is not a service name");
    }
    let wasm = config.plugins.join(format!("{name}.wasm"));
    match std::fs::remove_file(&wasm) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no service `{name}` in {}", config.plugins.display());
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", wasm.display())),
    }
    let _ = std::fs::remove_file(wasm.with_extension("yaml"));
    watch_status(
        &crate::control::path(config),
        Duration::from_secs(30),
        "unloading the service",
        |status| {
            let gone = service_entry(status, name).is_none_or(|s| s["state"] == "missing");
            gone.then_some(())
        },
    )
    .await?;
    println!("undeployed {name}");
    Ok(ExitCode::SUCCESS)
}

/// Renders the status document as an aligned terminal table.
fn status_table(status: &Value) -> String {
    let headers = [
        "SERVICE",
        "STATE",
        "VERSION",
        "REQUESTS",
        "ERRORS",
        "TRAPS",
        "TIMEOUTS",
        "RESTARTS",
        "IN FLIGHT",
        "REFUSED",
        "P50 MS",
        "P99 MS",
    ];
    let number = |v: &Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
    let millis = |v: &Value| v.as_f64().map_or("-".to_owned(), |ms| format!("{ms:.2}"));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut notes = Vec::new();
    for service in status["services"].as_array().into_iter().flatten() {
        let stats = &service["stats"];
        rows.push(vec![
            service["name"].as_str().unwrap_or("?").to_owned(),
            service["state"].as_str().unwrap_or("?").to_owned(),
            service["version"].as_str().unwrap_or("-").to_owned(),
            number(&stats["requests"]),
            number(&stats["errors"]),
            number(&stats["traps"]),
            number(&stats["timeouts"]),
            number(&stats["restarts"]),
            number(&stats["in_flight"]),
            number(&stats["refused"]),
            millis(&stats["p50_ms"]),
            millis(&stats["p99_ms"]),
        ]);
        let name = service["name"].as_str().unwrap_or("?");
        if let Some(error) = service["error"].as_str() {
            notes.push(format!("{name}: {error}"));
        } else if let Some(reason) = service["rejected"]["reason"].as_str() {
            notes.push(format!(
                "{name}: version {} was refused, version {} keeps serving: {reason}",
                service["rejected"]["version"].as_str().unwrap_or("?"),
                service["version"].as_str().unwrap_or("?"),
            ));
        }
        let circuit = &service["circuit"];
        if circuit["state"] == "open" || circuit["state"] == "half_open" {
            notes.push(format!(
                "{name}: circuit {} (opened {} times, retry in {} ms); last failure: {}",
                circuit["state"].as_str().unwrap_or("?"),
                circuit["opens"],
                circuit["retry_in_ms"],
                circuit["last_failure"].as_str().unwrap_or("?")
            ));
        }
        if service["health"]["last_ok"] == false {
            notes.push(format!(
                "{name}: last health check failed: {}",
                service["health"]["last_error"].as_str().unwrap_or("?")
            ));
        }
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    for note in notes {
        out.push_str(&format!("\n{note}\n"));
    }
    out
}
