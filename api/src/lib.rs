//! The request plane: validate, publish one event, answer. Reads come from the sinks'
//! read side. Nothing here fans out or writes feed data.

mod error;
mod health;
mod metrics;
mod routes;

pub use error::ApiError;
pub use metrics::ApiMetrics;
pub use routes::{metrics_text, routes, serve, ApiState};
