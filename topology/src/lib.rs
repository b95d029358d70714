//! The processor runtime: tasks that run the pure feed rules of `feedstream-core` over
//! RocksDB stores restored from their changelogs, driven by the Kafka plumbing of
//! `feedstream-kafka`; and `rebuild-state`.

pub mod metrics;
pub mod processor;
pub mod rebuild;
pub mod state;
