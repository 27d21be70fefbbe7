//! `ferry:plugin/events`: publishing on the bus of the application the
//! request came through. A plugin reaches only its own application's
//! topics, and only those its manifest grants; the checks happen here, so
//! the bus takes only valid topics and JSON payloads. A publish returns to
//! the plugin once the event is durable where it must be (webhooks,
//! bridges).

use std::sync::Arc;

use super::bindings::{EventsHost, WitError};
use crate::core::names::{topic_matches, valid_topic};
use crate::resources::bus::{Bus, MAX_PAYLOAD};

/// Per-store state of the events interface.
pub struct EventsState {
    bus: Arc<Bus>,
    /// Topic patterns the manifest grants for publishing.
    grants: Arc<Vec<String>>,
    plugin: Arc<str>,
    /// The application of the call being handled.
    app: Option<Arc<str>>,
}

impl EventsState {
    pub fn new(plugin: Arc<str>, bus: Arc<Bus>, grants: Arc<Vec<String>>) -> Self {
        EventsState {
            bus,
            grants,
            plugin,
            app: None,
        }
    }

    /// Binds the instance to the application of the call it is about to
    /// handle.
    pub fn begin_call(&mut self, app: Arc<str>) {
        self.app = Some(app);
    }

    /// Publishes as the plugin; answers the event id and what resolves
    /// once the event is kept by the webhooks and bridges that want it, or
    /// the typed error the guest receives.
    pub fn publish(&self, topic: &str, payload: &str) -> Result<(String, Kept), WitError> {
        let error = |code: &str, message: String| WitError {
            code: code.to_owned(),
            message,
        };
        if !valid_topic(topic) {
            return Err(error(
                "bad_request",
                format!(
                    "`{}` is not a topic: dot-separated tokens of letters, digits, `-` and `_`, at most 256 bytes, no wildcards",
                    crate::capabilities::log::truncate(topic, 300)
                ),
            ));
        }
        if !self.grants.iter().any(|p| topic_matches(p, topic)) {
            return Err(error(
                "forbidden",
                format!(
                    "plugin `{}` may not publish to `{topic}`: grant it in its manifest under `permissions: {{events: {{publish: [...]}}}}`",
                    self.plugin
                ),
            ));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(error(
                "too_large",
                format!(
                    "the payload is {} bytes; an event carries at most {MAX_PAYLOAD}",
                    payload.len()
                ),
            ));
        }
        if let Err(e) = crate::core::json::check_value(payload) {
            return Err(error(
                "bad_request",
                format!("the payload is not JSON: {e}"),
            ));
        }
        let Some(app) = &self.app else {
            return Err(error(
                "bad_request",
                "events can be published only while handling a call".into(),
            ));
        };
        Ok(self.bus.publish_kept(app, topic, payload))
    }
}

type Kept = Option<tokio::sync::oneshot::Receiver<()>>;

impl EventsHost for EventsState {
    /// The plugin goes on once the event's webhook deliveries and bridged
    /// copies are in their outbox, as an outside publisher's ack waits, so
    /// an answer the plugin gives after publishing is never followed by
    /// the loss of what it published.
    async fn publish(&mut self, topic: String, payload: String) -> Result<String, WitError> {
        let (id, kept) = EventsState::publish(self, &topic, &payload)?;
        if let Some(done) = kept
            && done.await.is_err()
        {
            return Err(WitError {
                code: "unavailable".into(),
                message: "the host is stopping; the event may not reach its webhooks".into(),
            });
        }
        Ok(id)
    }
}
