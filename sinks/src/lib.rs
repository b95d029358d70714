//! The sink: feed-events and post-events materialized into PostgreSQL (the truth) and
//! the Redis feed cache of `feedstream-read`.

mod error;
mod metrics;
mod postgres;
mod sink;

pub use error::SinkError;
pub use metrics::SinkMetrics;
pub use sink::{run, SinkSettings};
