//! What the host owns and shares between capabilities: the database pools,
//! the event bus, the response hooks and the webhooks' outbox.

pub mod bus;
pub mod database;
pub mod hooks;
pub mod outbox;
