//! Response hooks: where the answer of an asynchronous request goes once it
//! is ready (a Unix socket, sent as one framed envelope, or an HTTP URL,
//! sent as a POST of the same JSON), and the tracker that knows how many
//! accepted requests are still owed an answer. A delivery that fails is
//! tried again after a back-off, a few times, then counted and logged.
//!
//! Response hooks take only `http://` URLs: they are meant for services
//! beside the host. Webhooks may also be `https://` (`resources::tls`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// Waits before the second, third... attempt of a delivery.
pub const RETRY_AFTER: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1_600),
    Duration::from_millis(3_200),
];

/// How long one attempt may take, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Unix(std::path::PathBuf),
    Http {
        authority: String,
        path_and_query: String,
    },
}

impl Hook {
    /// Reads `unix:/path/to.sock` or `http://host:port/path`.
    pub fn parse(text: &str) -> Result<Hook, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("`{text}`: a socket hook names an absolute path"));
            }
            return Ok(Hook::Unix(path.into()));
        }
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() || authority.contains('@') {
                return Err(format!("`{text}`: not a usable http:// URL"));
            }
            return Ok(Hook::Http {
                authority: authority.to_owned(),
                path_and_query: path.to_owned(),
            });
        }
        Err(format!(
            "`{text}` is not a response hook: write `unix:/path/to.sock` or `http://host:port/path`"
        ))
    }

    /// Sends one framed envelope (`frame`: 4-byte length, then JSON), with
    /// retries; answers the attempts it took, or the last error.
    pub async fn deliver(&self, frame: &[u8], tracker: &Tracker) -> Result<u32, String> {
        let mut last = String::new();
        for attempt in 0..=RETRY_AFTER.len() {
            if attempt > 0 {
                tokio::time::sleep(RETRY_AFTER[attempt - 1]).await;
                tracker.retried.fetch_add(1, Ordering::Relaxed);
            }
            match self.try_once(frame).await {
                Ok(()) => return Ok(attempt as u32 + 1),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One attempt, within `ATTEMPT_TIMEOUT`.
    pub async fn try_once(&self, frame: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(frame)).await {
            Ok(done) => done,
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        }
    }

    /// Whether the hook is on the host's own machine (a socket, or HTTP on
    /// a loopback address): only a host there can deliver to it.
    pub fn is_local(&self) -> bool {
        match self {
            Hook::Unix(_) => true,
            Hook::Http { authority, .. } => {
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// The hook as `parse` reads it.
    pub fn text(&self) -> String {
        match self {
            Hook::Unix(path) => format!("unix:{}", path.display()),
            Hook::Http {
                authority,
                path_and_query,
            } => format!("http://{authority}{path_and_query}"),
        }
    }

    async fn attempt(&self, frame: &[u8]) -> Result<(), String> {
        match self {
            Hook::Unix(path) => {
                let mut stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
                stream
                    .write_all(frame)
                    .await
                    .map_err(|e| format!("cannot write to {}: {e}", path.display()))?;
                stream.shutdown().await.map_err(|e| e.to_string())
            }
            Hook::Http {
                authority,
                path_and_query,
            } => post(authority, path_and_query, &frame[4..]).await,
        }
    }
}

/// POSTs `body` as JSON over a fresh HTTP/1.1 connection; a 2xx is a
/// delivery, anything else (redirects included) a failure.
async fn post(authority: &str, path: &str, body: &[u8]) -> Result<(), String> {
    let (status, _) = post_signed(authority, None, path, &[], body).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("http://{authority}{path} answered {status}"))
    }
}

/// POSTs `body` as JSON with `headers` over a fresh HTTP/1.1 connection,
/// in TLS when `tls` says how; answers the status (redirects are not
/// followed) and a `Retry-After` in seconds, when the receiver gave one.
pub async fn post_signed(
    authority: &str,
    tls: Option<&crate::resources::tls::Tls>,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Option<u64>), String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    match tls {
        None => exchange(stream, authority, path, headers, body).await,
        Some(tls) => {
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.server_name.clone(), stream)
                .await
                .map_err(|e| format!("{authority}: TLS: {e}"))?;
            exchange(stream, authority, path, headers, body).await
        }
    }
}

/// One request and its answer's head on a connection.
async fn exchange<S>(
    stream: S,
    authority: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Option<u64>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "ferry");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{authority}: {e}"));
    driver.abort();
    let response = response?;
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    Ok((response.status().as_u16(), retry_after))
}

/// Asynchronous requests over the host's life, and those still owed an
/// answer.
#[derive(Default)]
pub struct Tracker {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub timed_out: AtomicU64,
    /// Attempts after the first.
    pub retried: AtomicU64,
    /// Answers no attempt could deliver.
    pub failed: AtomicU64,
    /// Answers handed to the cluster's stream (cluster mode), which any
    /// host delivers.
    pub to_cluster: AtomicU64,
    open: AtomicU64,
    idle: Notify,
}

/// The tracker's counters, for status and metrics.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TrackerStatus {
    pub accepted: u64,
    pub delivered: u64,
    pub timed_out: u64,
    pub retried: u64,
    pub failed_deliveries: u64,
    pub to_cluster: u64,
    pub tracked: u64,
}

/// One accepted request, until its answer is delivered or given up on.
pub struct Tracked(std::sync::Arc<Tracker>);

impl Tracked {
    pub fn tracker(&self) -> &Tracker {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    /// Counts one accepted request as owed an answer until the guard goes.
    pub fn begin(self: &std::sync::Arc<Self>) -> Tracked {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    pub fn status(&self) -> TrackerStatus {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrackerStatus {
            accepted: n(&self.accepted),
            delivered: n(&self.delivered),
            timed_out: n(&self.timed_out),
            retried: n(&self.retried),
            failed_deliveries: n(&self.failed),
            to_cluster: n(&self.to_cluster),
            tracked: n(&self.open),
        }
    }

    /// Resolves once every accepted request has been answered (or its
    /// delivery given up on).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (none included). Written by hand: hooks need nothing more
/// than this, and a glob crate would bring file-system semantics.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse_and_patterns_match() {
        assert_eq!(
            Hook::parse("unix:/run/a.sock").unwrap(),
            Hook::Unix("/run/a.sock".into())
        );
        assert!(Hook::parse("unix:relative.sock").is_err());
        assert!(Hook::parse("https://x/").is_err());
        assert!(Hook::parse("http://user@x/").is_err());
        assert_eq!(
            Hook::parse("http://127.0.0.1:9/h?x=1").unwrap(),
            Hook::Http {
                authority: "127.0.0.1:9".into(),
                path_and_query: "/h?x=1".into()
            }
        );
        assert!(glob_matches("unix:/run/*.sock", "unix:/run/a.sock"));
        assert!(glob_matches(
            "http://127.0.0.1:*/hooks/*",
            "http://127.0.0.1:80/hooks/x"
        ));
        assert!(!glob_matches(
            "http://127.0.0.1:*/hooks/*",
            "http://127.0.0.2:80/hooks/x"
        ));
        assert!(!glob_matches("unix:/run/*.sock", "unix:/run/a.sockx"));
        assert!(glob_matches("*", ""));
    }
}
