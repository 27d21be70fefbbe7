//! `ferry call`: one request to a running host, printed as pretty JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::client::exchange;

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
