//! The application's event bus: publish from any action, and handle the
//! events of the topics the manifest subscribes to.
//!
//! ```ignore
//! // deploy/shop.yaml:
//! //   permissions:
//! //     events: {publish: ["orders.*"], subscribe: ["payments.>"]}
//! use ferry_sdk::events::{self, Event, Failure};
//!
//! fn order(_: &Ctx, o: Order) -> Result<Placed, Error> {
//!     let id = events::publish("orders.created", &o)?;
//!     Ok(Placed { event: id })
//! }
//!
//! fn on_event(e: &Event) -> Result<(), Failure> {
//!     let paid: Payment = e.payload()?;          // a bad payload is rejected
//!     settle(&paid).map_err(Failure::retry)      // try again later
//! }
//!
//! ferry_sdk::service!(events = on_event; order);
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::exports::ferry::plugin::event_handler as wit_handler;
use crate::__bindings::ferry::plugin::events as wit;
use crate::Error;

/// Publishes `payload` as JSON on `topic`; answers the event's id. The
/// host answers `forbidden` for a topic the manifest does not grant,
/// `bad_request` for a topic that is not one, `too_large` past 256 KiB.
pub fn publish<T: Serialize + ?Sized>(topic: &str, payload: &T) -> Result<String, Error> {
    let json = serde_json::to_string(payload)
        .map_err(|e| Error::internal(format!("cannot encode the event: {e}")))?;
    publish_json(topic, &json)
}

/// Publishes a payload that is JSON text already.
pub fn publish_json(topic: &str, json: &str) -> Result<String, Error> {
    wit::publish(topic, json).map_err(|e| Error::new(e.code, e.message))
}

/// One delivery of one event to this plugin.
#[derive(Debug, Clone)]
pub struct Event {
    /// The application whose bus carried it.
    pub app: String,
    /// The topic it was published on.
    pub topic: String,
    /// The subscription pattern (from the manifest) that matched.
    pub subscription: String,
    /// The same for every subscriber and every attempt: use it to notice a
    /// redelivery.
    pub id: String,
    /// This subscription's sequence number; a gap means dropped events.
    pub seq: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub source_time_ms: u64,
    /// 1 for the first delivery, then 2, 3... on retries.
    pub attempt: u32,
    payload: String,
}

impl Event {
    /// The payload as JSON text.
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// The payload deserialized into `T`. A payload of another shape will
    /// never deserialize, so the error is a [`Failure::Reject`].
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_str(&self.payload).map_err(|e| {
            Failure::reject(format!("the payload does not have the expected shape: {e}"))
        })
    }
}

/// Why a handler did not take an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Deliver it again later (the host backs off, up to the subscription's
    /// `max_attempts`).
    Retry(String),
    /// Never deliver it again (it goes to the `dead_letter` topic, if the
    /// subscription names one).
    Reject(String),
}

impl Failure {
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        Failure::Retry(reason.to_string())
    }

    pub fn reject(reason: impl std::fmt::Display) -> Self {
        Failure::Reject(reason.to_string())
    }
}

/// An action's [`Error`] inside a handler (a failed `publish`, a failed
/// SQL statement): worth another try when the host says the cause may
/// pass, rejected otherwise.
impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e.code() {
            "timeout" | "unavailable" | "overloaded" | "internal" => Failure::Retry(e.to_string()),
            _ => Failure::Reject(e.to_string()),
        }
    }
}

/// The handler of a plugin that names none: it takes no events (the host
/// delivers only what the manifest subscribes to).
#[doc(hidden)]
pub fn __no_events(e: &Event) -> Result<(), Failure> {
    Err(Failure::reject(format!(
        "this plugin handles no events (got `{}`)",
        e.topic
    )))
}

/// Runs an event handler for the code `service!` generates.
#[doc(hidden)]
pub fn __handle_event(
    event: wit_handler::Event,
    handler: fn(&Event) -> Result<(), Failure>,
) -> Result<(), wit_handler::Failure> {
    crate::install_panic_hook();
    let event = Event {
        app: event.app,
        topic: event.topic,
        subscription: event.subscription,
        id: event.id,
        seq: event.seq,
        source_time_ms: event.source_time_ms,
        attempt: event.attempt,
        payload: event.payload,
    };
    handler(&event).map_err(|f| match f {
        Failure::Retry(m) => wit_handler::Failure::Retry(m),
        Failure::Reject(m) => wit_handler::Failure::Reject(m),
    })
}
