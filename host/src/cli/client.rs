//! Talking to a running host from the command line: one frame over a
//! socket and its answer, control-socket commands, and polling status until
//! something has happened.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::doors::framing::FrameReader;

/// Largest response `ferry call` accepts.
const MAX_RESPONSE: u32 = 256 << 20;

/// Sends one frame to the socket at `path` and reads the one answer,
/// waiting at most `wait` for it.
pub(super) async fn exchange(
    path: &Path,
    request: &Value,
    wait: Duration,
) -> anyhow::Result<Value> {
    let payload = serde_json::to_vec(request)?;
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    write.write_all(&payload).await?;
    let mut frames = FrameReader::new(read, MAX_RESPONSE, wait);
    let Some(frame) = frames.read_frame().await? else {
        bail!("the host closed the connection without answering");
    };
    serde_json::from_slice(&frame).context("the host answered something that is not JSON")
}

/// Sends one command over a running host's control socket. Answers the
/// result, or the error object the host sent back.
pub(super) async fn control(path: &Path, command: &str) -> anyhow::Result<Result<Value, Value>> {
    control_with(path, json!({ "id": 1, "command": command })).await
}

/// [`control`] with a whole request (a command and its fields).
pub(super) async fn control_with(
    path: &Path,
    request: Value,
) -> anyhow::Result<Result<Value, Value>> {
    // A reload may rebuild plugins whose limits changed.
    let mut answer = exchange(path, &request, Duration::from_secs(300))
    .await
    .with_context(|| {
        format!(
            "cannot ask the host through its control socket {} (is `ferry serve` running with this config?)",
            path.display()
        )
    })?;
    Ok(if answer["status"] == "success" {
        Ok(answer["result"].take())
    } else {
        Err(answer["error"].take())
    })
}

/// Asks a running host for its status until `settled` finds what it waits
/// for in it, or `limit` passes (an error naming `what`). Answers `None` at
/// once when no host is running.
pub(super) async fn watch_status<T>(
    path: &Path,
    limit: Duration,
    what: &str,
    mut settled: impl FnMut(&Value) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let status = match control(path, "status").await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => bail!("the host refused: {}", error["message"]),
            Err(_) => return Ok(None),
        };
        if let Some(found) = settled(&status) {
            return Ok(Some(found));
        }
        if std::time::Instant::now() > deadline {
            bail!("{what} did not happen within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One service's entry in a status document.
pub(super) fn service_entry<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}
