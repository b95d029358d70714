//! What the end-to-end tests and the benchmark share to drive `feedstream` from outside:
//! child processes (started, found listening, stopped), free ports, polling with a
//! deadline, and `/metrics` scrapes. Dev-only: no product crate depends on it.

mod poll;
mod process;
mod scrape;

pub use poll::{eventually, poll_until};
pub use process::{free_port, kill, serve, terminate};
pub use scrape::{metric, Scrape};
