//! State stores of the feedstream topology.
//!
//! A task owns one instance of each store. The raw layer is [`KeyValueStore`] (RocksDB in
//! production, an ordered in-memory map in pure tests); the typed layer ([`FollowerStore`],
//! [`RecentPostsStore`]) gives the topology a vocabulary and owns the key and value layout.
//! [`ChangeCapture`] records every write so the runtime can send it to the store's changelog.

mod capture;
mod codec;
mod error;
mod followers;
mod kv;
mod memory;
mod recent_posts;
mod rocks;

pub use capture::{ChangeCapture, ChangeRecord};
pub use codec::{decode_value, encode_value, VALUE_FORMAT_VERSION};
pub use error::StoreError;
pub use followers::{Follower, FollowerStore};
pub use kv::{Entry, KeyValueStore, StoreDigest};
pub use memory::InMemoryStore;
pub use recent_posts::RecentPostsStore;
pub use rocks::RocksDbStore;

/// Name of the follower store (followee → followers, with a count).
pub const FOLLOWERS_STORE: &str = "followers";
/// Name of the recent-posts store (author → newest post ids).
pub const RECENT_POSTS_STORE: &str = "recent-posts";
