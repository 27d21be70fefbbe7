//! `ferry webhooks list [--dead]` and `ferry webhooks retry ID`: the
//! deliveries a running host's outbox still holds, asked through its
//! control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

use super::client::control_with;
use crate::config::Config;
use crate::doors::control;

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Deliveries pending or dead, newest first (at most 1000).
    List {
        /// Only the dead ones (every attempt failed, or the endpoint
        /// answered 410).
        #[arg(long)]
        dead: bool,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Config file of the host (for its control socket).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Make a dead delivery due again now, with a whole new schedule (and
    /// enable its endpoint again if a 410 had disabled it).
    Retry {
        /// The delivery's id (`webhook-id`), as `list` shows it.
        id: String,
        /// Config file of the host (for its control socket).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub async fn run(
    action: Action,
    load_config: fn(Option<&Path>) -> anyhow::Result<Config>,
) -> anyhow::Result<ExitCode> {
    match action {
        Action::List { dead, json, config } => {
            let path = control::path(&load_config(config.as_deref())?);
            let answer =
                control_with(&path, json!({"id": 1, "command": "webhooks", "dead": dead})).await?;
            let result = match answer {
                Ok(result) => result,
                Err(error) => {
                    println!("the host refused: {}", error["message"]);
                    return Ok(ExitCode::from(1));
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", table(&result["deliveries"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Retry { id, config } => {
            let path = control::path(&load_config(config.as_deref())?);
            let request = json!({"id": 1, "command": "webhooks_retry", "delivery": id});
            match control_with(&path, request).await? {
                Ok(result) => {
                    let d = &result["delivery"];
                    println!(
                        "delivery {} to {}/{} is due again",
                        d["id"].as_str().unwrap_or(""),
                        d["app"].as_str().unwrap_or(""),
                        d["endpoint"].as_str().unwrap_or("")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    println!("{}", error["message"].as_str().unwrap_or("refused"));
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn table(deliveries: &Value) -> String {
    let rows = deliveries.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "no deliveries\n".into();
    }
    let mut out = format!(
        "{:<44} {:<10} {:<14} {:<8} {:>8}  {}\n",
        "ID", "APP", "ENDPOINT", "STATE", "ATTEMPTS", "LAST ERROR"
    );
    for d in rows {
        out.push_str(&format!(
            "{:<44} {:<10} {:<14} {:<8} {:>8}  {}\n",
            d["id"].as_str().unwrap_or(""),
            d["app"].as_str().unwrap_or(""),
            d["endpoint"].as_str().unwrap_or(""),
            d["state"].as_str().unwrap_or(""),
            d["attempts"],
            d["last_error"].as_str().unwrap_or("-"),
        ));
    }
    out
}
