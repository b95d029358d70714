//! Sinks and the read side: feed-events and post-events materialized into PostgreSQL
//! (the truth) and Redis (a cache of each feed's newest entries), and feeds read back.

mod cache;
mod error;
mod metrics;
mod postgres;
mod reader;
mod sink;

pub use cache::{FeedCache, FEED_CACHE_CAP};
pub use error::SinkError;
pub use metrics::{ReadMetrics, SinkMetrics};
pub use postgres::{connect_postgres, migrate};
pub use reader::{FeedPage, FeedPost, FeedReader, PageRequest};
pub use sink::{run, SinkSettings};
