//! What the host owns and shares between capabilities: today the database
//! pools and the event bus; the outbox and broker connections join them.

pub mod bus;
pub mod database;
pub mod hooks;
