//! The feedstream topology: the public event schema, topic layout, the pure feed logic
//! with its reference model, and the Kafka runtime that drives it.

pub mod client_log;
pub mod dead_letter;
pub mod event;
pub mod feed;
pub mod ids;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod processor;
pub mod publisher;
pub mod rebuild;
pub mod retry;
pub mod state;
pub mod stream_time;
pub mod topics;
