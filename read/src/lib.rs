//! The read side of feeds, and the storage layout it shares with the sink: PostgreSQL's
//! pool and schema, the Redis read cache (its layout, the scripts that keep each part a
//! complete top slice of PostgreSQL), and pages read Redis first, PostgreSQL behind it.
//! The API reads through [`FeedReader`]; the sink writes the cache through
//! [`FeedCache::apply`].

mod cache;
mod database;
mod error;
pub mod layout;
pub mod live;
mod metrics;
mod range;
pub mod rate_step;
mod reader;
mod redact;

pub use cache::{
    CacheOp, CachedPost, FeedCache, FEED_CACHE_CAP, FOLLOWS_CACHE_CAP, PENDING_CAP, PENDING_TTL,
    POST_CACHE_TTL,
};
pub use database::{connect_postgres, migrate};
pub use error::StorageError;
pub use metrics::ReadMetrics;
pub use reader::{CountedPage, FeedPage, FeedPost, FeedReader, PageRequest};
pub use redact::redact;
