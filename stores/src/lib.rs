//! State stores of the feedstream topology.
//!
//! A task owns one instance of each store. The raw layer is [`KeyValueStore`] (RocksDB in
//! production, an ordered in-memory map in pure tests); the typed layer ([`FollowerStore`],
//! [`AuthorPostsStore`]) gives the topology a vocabulary and owns the key and value layout.
//! [`ChangeCapture`] records every write so the runtime can send it to the store's changelog.

mod author_posts;
mod capture;
mod codec;
mod error;
mod followers;
mod kv;
mod memory;
mod name;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use author_posts::{AuthorPostsStore, AuthoredPost};
pub use capture::{ChangeCapture, ChangeRecord};
pub use codec::{decode_value, encode_value, VALUE_FORMAT_VERSION};
pub use error::StoreError;
pub use followers::{Follower, FollowerStore};
pub use kv::{Entry, KeyValueStore, StoreDigest};
pub use memory::InMemoryStore;
pub use name::{StoreName, UnknownStore};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksDbStore;
