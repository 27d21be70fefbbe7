//! `ferry status`: the status document of a running host, as a table or
//! as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::client::control;

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
    let mut out = table(&headers, &rows);
    for note in notes {
        out.push_str(&format!("\n{note}\n"));
    }
    if status["cluster"].is_object() {
        out.push_str(&cluster_tables(&status["cluster"]));
    }
    out
}

/// Aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The cluster as this host sees it: the hosts heard from, and per
/// service where it is served.
fn cluster_tables(cluster: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let pair = |v: &Value| format!("{}/{}", text(&v["app"]), text(&v["service"]));
    let mut out = format!(
        "\ncluster: this host is {} ({}); forwarded {}, failed {}, served for others {}\n\n",
        text(&cluster["name"]),
        if cluster["connected"] == true {
            "connected"
        } else {
            "NOT connected to NATS"
        },
        cluster["forwarded"],
        cluster["forward_failures"],
        cluster["served_for_others"],
    );
    let hosts: Vec<Vec<String>> = cluster["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let serves: Vec<String> = h["serves"]
                .as_array()
                .into_iter()
                .flatten()
                .map(pair)
                .collect();
            let mut name = text(&h["name"]);
            if h["this"] == true {
                name.push_str(" (this)");
            }
            vec![
                name,
                format!(
                    "{:.1} s",
                    h["last_seen_ms"].as_f64().unwrap_or(0.0) / 1000.0
                ),
                if serves.is_empty() {
                    "-".into()
                } else {
                    serves.join(", ")
                },
            ]
        })
        .collect();
    out.push_str(&table(&["HOST", "LAST SEEN", "SERVES"], &hosts));
    let services: Vec<Vec<String>> = cluster["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let others: Vec<String> = s["remote_hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            vec![
                pair(s),
                text(&s["served"]),
                if others.is_empty() {
                    "-".into()
                } else {
                    others.join(", ")
                },
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["SERVICE", "SERVED", "OTHER HOSTS"], &services));
    out
}
