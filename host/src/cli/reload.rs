//! `ferry reload`: the running host re-reads its config file.

use std::process::ExitCode;

use serde_json::Value;

use super::client::control;
use crate::config::Config;

/// `ferry reload`: asks the running host to re-read its config file.
pub async fn reload(config: &Config) -> anyhow::Result<ExitCode> {
    match control(&crate::doors::control::path(config), "reload").await? {
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
