//! TLS for the connections the host makes to HTTPS webhook receivers:
//! rustls on ring, trusting the Mozilla roots built into the binary (so a
//! fresh machine without a CA bundle still verifies), or only the
//! authorities of an endpoint's `ca_file`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How to reach one HTTPS receiver.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl Tls {
    /// For `host` (a name or an IP address), trusting the public roots, or
    /// only those in `ca_file`.
    pub fn new(host: &str, ca_file: Option<&Path>) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(file) => {
                let certs = CertificateDer::pem_file_iter(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
                    roots.add(cert).map_err(|e| {
                        format!("{}: not a usable certificate: {e}", file.display())
                    })?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no certificate in it", file.display()));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("`{host}` is not a host name for TLS"))?;
        Ok(Tls {
            config: Arc::new(config),
            server_name,
        })
    }
}
