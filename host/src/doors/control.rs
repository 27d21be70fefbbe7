//! The control socket, `control.sock` beside the main socket: how `ferry
//! reload`, `ferry deploy` and `ferry status` talk to a running host. Same
//! framing as the main socket; only the host's own user (or root) may
//! connect: the file is `0600`, and the peer's uid is checked as well.
//!
//! Requests: `{"id": 1, "command": "status" | "reload"}`,
//! `{"id", "command": "webhooks", "dead": bool}` and `{"id", "command":
//! "webhooks_retry", "delivery": ID}`; answers are the main socket's
//! envelopes.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::envelope;
use super::framing::FrameReader;
use crate::config::Config;
use crate::core::{ErrorBody, ErrorCode};

/// What the control socket asks of the running host; the deployer answers.
/// A trait, so the door does not depend on the layer that deploys.
pub trait Operator: Send + Sync + 'static {
    /// The status document.
    fn status(&self) -> Value;
    /// Re-reads and applies the config file; answers what changed, or why
    /// the file was refused.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>>;
    /// Webhook deliveries still owed (or only the dead ones).
    fn webhooks(
        &self,
        dead: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>>;
    /// Makes a dead delivery due again.
    fn retry_webhook(
        &self,
        id: String,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>>;
}

/// Largest control request.
const MAX_FRAME: u32 = 64 * 1024;

/// Where the control socket of the host configured by `config` lives.
pub fn path(config: &Config) -> PathBuf {
    config
        .socket
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join("control.sock")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    id: Value,
    command: String,
    #[serde(default)]
    dead: bool,
    #[serde(default)]
    delivery: Option<String>,
}

/// The bound control socket; removes its file when the host stops.
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Control {
    pub async fn bind(path: PathBuf) -> std::io::Result<Control> {
        let listener = super::unix::bind(&path, 0o600).await?;
        // The socket file belongs to the user the host runs as.
        let owner = std::fs::metadata(&path)?.uid();
        Ok(Control {
            listener,
            path,
            owner,
        })
    }

    /// Answers control requests until shutdown.
    pub async fn serve(self, operator: Arc<dyn Operator>, shutdown: CancellationToken) {
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stop => return,
            };
            let uid = stream.peer_cred().map(|c| c.uid()).ok();
            if uid != Some(self.owner) && uid != Some(0) {
                tracing::warn!(
                    ?uid,
                    "control socket: refused a connection from another user"
                );
                continue;
            }
            tokio::spawn(session(stream, operator.clone()));
        }
    }
}

fn answer(id: &str, outcome: Result<Value, String>) -> Vec<u8> {
    match outcome {
        Ok(result) => envelope::success_frame(id, &result.to_string()),
        Err(message) => envelope::error_frame(id, &ErrorBody::new(ErrorCode::BadRequest, message)),
    }
}

async fn session(stream: UnixStream, operator: Arc<dyn Operator>) {
    let (read, mut write) = stream.into_split();
    let mut frames = FrameReader::new(read, MAX_FRAME, Duration::from_secs(10));
    while let Ok(Some(frame)) = frames.read_frame().await {
        let answer = match serde_json::from_slice::<Command>(&frame) {
            Err(e) => envelope::error_frame(
                envelope::NO_ID,
                &ErrorBody::new(ErrorCode::BadRequest, format!("invalid command: {e}")),
            ),
            Ok(command) => {
                let id = command.id.to_string();
                match command.command.as_str() {
                    "status" => envelope::success_frame(&id, &operator.status().to_string()),
                    "reload" => answer(&id, operator.reload().await),
                    "webhooks" => answer(&id, operator.webhooks(command.dead).await),
                    "webhooks_retry" => match command.delivery {
                        Some(delivery) => answer(&id, operator.retry_webhook(delivery).await),
                        None => envelope::error_frame(
                            &id,
                            &ErrorBody::new(
                                ErrorCode::BadRequest,
                                "`delivery` names the delivery to retry",
                            ),
                        ),
                    },
                    other => envelope::error_frame(
                        &id,
                        &ErrorBody::new(
                            ErrorCode::NotFound,
                            format!(
                                "no command `{other}` (commands: status, reload, webhooks, webhooks_retry)"
                            ),
                        ),
                    ),
                }
            }
        };
        if write.write_all(&answer).await.is_err() {
            return;
        }
    }
}
