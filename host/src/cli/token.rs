//! `ferry token`: a development token signed with an application's HMAC
//! secret.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

/// `ferry token`: prints a development token for `app`, signed with its
/// HMAC secret; refuses, saying why, for applications without one.
pub fn token(
    config: &crate::config::Config,
    app: &str,
    subject: &str,
    tenant: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<ExitCode> {
    let apps = crate::pipeline::Apps::build(config, false, None)
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let Some(found) = apps.get(app) else {
        bail!(
            "no application named `{app}` in the config (applications: {})",
            apps.names().join(", ")
        );
    };
    let crate::pipeline::Auth::Jwt(jwt) = &found.auth else {
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
