//! `ferry call` and `ferry check`: the command-line tools that talk to a
//! running host or inspect a plugin file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::config::Limits;
use crate::protocol::FrameReader;
use crate::runtime::Runtime;

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
    let apps = crate::apps::Apps::build(config, false)
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
    let payload = serde_json::to_vec(&request)?;

    let stream = UnixStream::connect(&args.socket).await.with_context(|| {
        format!(
            "cannot connect to {} (is `ferry serve` running there?)",
            args.socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    write.write_all(&payload).await?;
    let mut frames = FrameReader::new(read, MAX_RESPONSE, Duration::from_secs(30));
    let Some(frame) = frames.read_frame().await? else {
        bail!("the host closed the connection without answering");
    };
    let response: Value =
        serde_json::from_slice(&frame).context("the host answered something that is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(if response["status"] == "success" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Compiles, links and instantiates `file` exactly as `serve` would, and
/// says what is wrong if any step fails. Exits 0 when valid, 1 when not.
pub async fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let runtime = Arc::new(Runtime::new(None)?);
    let path = file.to_owned();
    let loaded = tokio::task::spawn_blocking({
        let runtime = runtime.clone();
        move || runtime.load("check", &path, Limits::default())
    })
    .await?;
    let (plugin, report) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            println!("invalid: {}: {e}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    if let Err(e) = plugin.warm_up().await {
        println!(
            "invalid: {}: it links, but instantiating it fails: {e}",
            file.display()
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "ok: {} is a valid Ferry plugin (world ferry:plugin/service@0.1.0, {} KiB, sha256 {}, compiled in {} ms)",
        file.display(),
        report.bytes / 1024,
        &plugin.digest()[..12],
        report.elapsed.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

/// Fetches `/v1/status` from a running host and prints it as a table.
pub async fn status(addr: std::net::SocketAddr, raw: bool) -> anyhow::Result<ExitCode> {
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
    let status: Value = serde_json::from_str(body).context("status is not JSON")?;
    if raw {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status_table(&status));
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
            millis(&stats["p50_ms"]),
            millis(&stats["p99_ms"]),
        ]);
        if let Some(error) = service["error"].as_str() {
            notes.push(format!(
                "{}: {error}",
                service["name"].as_str().unwrap_or("?")
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
