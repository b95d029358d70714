//! What the end-to-end tests and the benchmark share to drive `feedstream` from outside:
//! child processes (started, found listening, stopped), free ports, polling with a
//! deadline, `/metrics` scrapes, and bearer tokens. Dev-only: no product crate depends on it.

mod poll;
mod process;
mod scrape;
mod tokens;

pub use poll::{eventually, poll_until};
pub use process::{free_port, kill, serve, terminate};
pub use scrape::{metric, Scrape};
pub use tokens::{token, token_keys, RATE_LIMIT, TOKEN_KEYS};
