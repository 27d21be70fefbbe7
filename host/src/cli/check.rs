//! `ferry check`: compile, link and instantiate a file exactly as `serve`
//! would, say what is wrong, and optionally run a smoke test against it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::runtime::{Runtime, Settings};

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
        .filter(|s| crate::core::names::valid_service_name(s))
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
                crate::resources::database::Database::open("smoke", &config, &scratch.0)
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
    let runtime = Arc::new(Runtime::new(
        None,
        crate::config::MAX_INSTANCES,
        Default::default(),
    )?);
    let (plugin, report) = match load_and_start(&runtime, &name, bytes, settings).await? {
        Ok(loaded) => loaded,
        Err(why) => {
            println!("invalid: {}: {why}", file.display());
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "ok: {} is a valid Ferry plugin (world ferry:plugin/{}, {} KiB, sha256 {}, compiled in {} ms, health export: {})",
        file.display(),
        plugin.world(),
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
pub(super) async fn load_and_start(
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
        database: Option<Arc<crate::resources::database::Database>>,
    ) -> Result<(), String> {
        let timeout_ms = plugin.limits().timeout_ms;
        let params = self.params.clone().unwrap_or(json!({})).to_string();
        let claims = match &self.subject {
            Some(subject) => json!({ "sub": subject }).to_string(),
            None => "{}".to_owned(),
        };
        let now = std::time::Instant::now();
        let call = crate::runtime::Call {
            ctx: crate::runtime::Context {
                request_id: format!("\"smoke-{index}\"").into(),
                app: "smoke".into(),
                service: service.into(),
                tenant: self.tenant.as_deref().map(Into::into),
                subject: self.subject.clone(),
                claims: claims.into(),
            },
            app: "smoke".into(),
            database,
            work: crate::runtime::Work::Request {
                action: &self.action,
                params: &params,
            },
            received: now,
            deadline: now + Duration::from_millis(timeout_ms),
            timeout_ms,
            origin: crate::core::Origin::outside(None),
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
                let error = crate::core::ErrorBody::from(e);
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
                let error = crate::core::ErrorBody::from(e);
                Err(format!(
                    "expected {expected}, got error `{}`: {}",
                    error.code, error.message
                ))
            }
            _ => Err("a case says exactly one of `expect` and `expect_error`".into()),
        }
    }
}
