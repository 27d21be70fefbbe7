//! The `websocket` section: the WebSocket door on the HTTP gateway.

use serde::Deserialize;

/// Limits of `GET /v1/ws`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Connections open at once; past it the upgrade answers 503.
    pub max_connections: usize,
    /// How long a client of an application with keys has to authenticate.
    pub handshake_timeout_ms: u64,
    /// Requests one connection may have running; past it the host reads
    /// no more of its messages until one is answered.
    pub max_in_flight: usize,
    /// Messages waiting to be sent to one client; a client whose pushed
    /// events overflow it is disconnected (close code 4002).
    pub send_queue: usize,
    /// Bytes of pushed events waiting to be sent to one client, the other
    /// bound of the same queue (an event alone may be larger: it waits
    /// for an empty queue).
    pub send_queue_bytes: usize,
    /// How often the host pings; a client that has not answered the
    /// previous ping by the next is disconnected (close code 4003).
    pub ping_interval_ms: u64,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_connections: 10_000,
            handshake_timeout_ms: 15_000,
            max_in_flight: 64,
            send_queue: 1_024,
            send_queue_bytes: 4 << 20,
            ping_interval_ms: 20_000,
        }
    }
}

impl WebSocketConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("max_in_flight", self.max_in_flight as u64),
            ("send_queue", self.send_queue as u64),
            ("send_queue_bytes", self.send_queue_bytes as u64),
            ("ping_interval_ms", self.ping_interval_ms),
        ] {
            if value == 0 {
                return Err(format!("websocket.{key} must be at least 1"));
            }
        }
        Ok(())
    }
}
