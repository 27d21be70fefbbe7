//! `cluster`: joining other hosts through NATS. Without it, one host and
//! no NATS.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://host:port` (or `tls://host:port`), several separated by
    /// commas.
    pub nats: String,
    /// This host's name in status; unique in the cluster.
    pub name: String,
    /// A file of NATS credentials (a `.creds` file: JWT and nkey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Or the variable holding a token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A PEM file of the certificate authorities to trust for `tls://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The JetStream object store bucket `ferry deploy --cluster` puts
    /// components in, and every host takes them from.
    #[serde(default = "default_bucket")]
    pub bucket: String,
}

fn default_bucket() -> String {
    "ferry-plugins".into()
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.nats.split(',').any(|u| {
            let u = u.trim();
            !(u.starts_with("nats://") || u.starts_with("tls://"))
        }) {
            return Err(format!(
                "cluster.nats: `{}` is not a list of nats:// or tls:// URLs",
                self.nats
            ));
        }
        if !crate::core::names::valid_service_name(&self.name) {
            return Err(format!(
                "cluster.name: `{}` is not a host name for the cluster (lowercase letters, digits, `-` and `_`)",
                self.name
            ));
        }
        if self.bucket.is_empty()
            || self.bucket.len() > 64
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "cluster.bucket: `{}` is not a bucket name (letters, digits, `-` and `_`, up to 64)",
                self.bucket
            ));
        }
        if self.credentials_file.is_some() && self.token_env.is_some() {
            return Err("cluster: give credentials_file or token_env, not both".into());
        }
        Ok(())
    }
}
