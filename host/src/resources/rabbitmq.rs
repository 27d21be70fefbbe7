//! RabbitMQ brokers: one connection per broker URL, shared by the
//! consumers and bridges of every application that names it, opened on
//! first use and opened again after it is lost (a broker restart, a
//! network cut). Nothing here retries on its own: a consumer or bridge
//! that loses its channel asks for a new one after a back-off, so each
//! decides what it does with the work it holds meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

/// How long connecting may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One broker and its connection.
pub struct Broker {
    url: String,
    /// The URL without its password, for logs and status.
    shown: String,
    connection: tokio::sync::Mutex<Option<Connection>>,
    state: Mutex<BrokerState>,
    connects: AtomicU64,
}

#[derive(Default)]
struct BrokerState {
    connected: bool,
    last_error: Option<String>,
}

/// `amqp://user:secret@host/` as `amqp://user:***@host/`.
fn without_password(url: &str) -> String {
    let Some(rest) = url.strip_prefix("amqp://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            format!("amqp://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl Broker {
    fn new(url: &str) -> Broker {
        Broker {
            url: url.to_owned(),
            shown: without_password(url),
            connection: tokio::sync::Mutex::new(None),
            state: Mutex::default(),
            connects: AtomicU64::new(0),
        }
    }

    /// The URL as status shows it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A new channel on the broker's connection, connecting first when
    /// there is none or it was lost.
    pub async fn channel(&self) -> Result<Channel, String> {
        let mut connection = self.connection.lock().await;
        if let Some(c) = connection.as_ref()
            && c.status().connected()
        {
            match c.create_channel().await {
                Ok(channel) => return Ok(channel),
                Err(e) => self.failed(&e.to_string()),
            }
        }
        *connection = None;
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await;
        let c = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let e = format!("cannot connect to {}: {e}", self.shown);
                self.failed(&e);
                return Err(e);
            }
            Err(_) => {
                let e = format!(
                    "cannot connect to {}: no answer in {CONNECT_TIMEOUT:?}",
                    self.shown
                );
                self.failed(&e);
                return Err(e);
            }
        };
        let channel = c.create_channel().await.map_err(|e| {
            let e = format!("{}: cannot open a channel: {e}", self.shown);
            self.failed(&e);
            e
        })?;
        if self.connects.fetch_add(1, Ordering::Relaxed) > 0 {
            tracing::info!(broker = self.shown, "connected to RabbitMQ again");
        } else {
            tracing::info!(broker = self.shown, "connected to RabbitMQ");
        }
        self.state.lock().expect("broker state").connected = true;
        *connection = Some(c);
        Ok(channel)
    }

    /// Records that the broker could not be used: status shows it down
    /// until a connection succeeds again.
    pub fn failed(&self, error: &str) {
        let mut state = self.state.lock().expect("broker state");
        if state.connected {
            tracing::warn!(broker = self.shown, "RabbitMQ connection lost: {error}");
        }
        state.connected = false;
        state.last_error = Some(error.to_owned());
    }

    pub fn status(&self) -> Value {
        let state = self.state.lock().expect("broker state");
        json!({
            "url": self.shown,
            "connected": state.connected,
            "connections": self.connects.load(Ordering::Relaxed),
            "last_error": state.last_error,
        })
    }

    /// Closes the connection (the host is stopping); unacknowledged
    /// messages go back to their queues at once.
    pub async fn close(&self) {
        if let Some(c) = self.connection.lock().await.take() {
            let _ = c.close(200, "the host is stopping".into()).await;
        }
    }
}

/// The brokers by URL, so that applications naming the same broker share
/// one connection.
#[derive(Default)]
pub struct Brokers {
    by_url: Mutex<HashMap<String, Arc<Broker>>>,
}

impl Brokers {
    pub fn get(&self, url: &str) -> Arc<Broker> {
        self.by_url
            .lock()
            .expect("brokers lock")
            .entry(url.to_owned())
            .or_insert_with(|| Arc::new(Broker::new(url)))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<Broker>> {
        let mut all: Vec<Arc<Broker>> = self
            .by_url
            .lock()
            .expect("brokers lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.shown.cmp(&b.shown));
        all
    }
}

/// Waits between attempts to reach a broker: 100 ms doubling to 5 s.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    pub fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        wait
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            without_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(without_password("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
