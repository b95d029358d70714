//! The request plane: validate, publish one event, answer. Reads come from the read
//! path (`feedstream-read`). Nothing here fans out: the only feed data it writes is an
//! author's own accepted posts, for the author's next read (read-your-writes).

pub mod auth;
mod error;
mod health;
pub mod idempotency;
pub mod live;
mod metrics;
pub mod openapi;
pub mod publisher;
pub mod rate_limit;
mod route_table;
mod routes;

/// What `api` and `run` print on stdout once they listen, followed by the base URL:
/// launchers (the test harness, the benchmark) wait for this line, which also tells
/// them the port when `--listen` asked for port 0.
pub const LISTENING_ON: &str = "feedstream API listening on ";

pub use error::{ApiError, ErrorCode};
pub use metrics::ApiMetrics;
pub use routes::{metrics_text, routes, serve, ApiState};
