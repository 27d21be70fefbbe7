//! What the host owns and shares between capabilities: the database pools,
//! the event bus, the response hooks, the outbox of webhooks and bridges,
//! the RabbitMQ brokers, TLS for outgoing HTTPS, and (cluster mode) the
//! JetStream work queues.

pub mod bus;
pub mod database;
pub mod hooks;
pub mod outbox;
pub mod rabbitmq;
pub mod tls;
pub mod work_queue;
