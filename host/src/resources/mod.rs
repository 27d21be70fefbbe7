//! What the host owns and shares between capabilities: the database pools,
//! the event bus, the response hooks, the outbox of webhooks and bridges,
//! and the RabbitMQ brokers.

pub mod bus;
pub mod database;
pub mod hooks;
pub mod outbox;
pub mod rabbitmq;
