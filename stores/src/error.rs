use thiserror::Error;

/// Failures of a state store. None of them is retriable in place: a store that fails is
/// closed and rebuilt from its changelog rather than written to again.
#[derive(Debug, Error)]
pub enum StoreError {
    #[cfg(feature = "rocksdb")]
    #[error("RocksDB error in store at {path}: {source}")]
    RocksDb {
        path: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("could not create the state directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored value has format version {found}, this build reads version {expected}")]
    UnsupportedVersion { found: u8, expected: u8 },
    #[error("stored value is empty (no format version byte)")]
    EmptyValue,
    #[error("stored value could not be decoded: {0}")]
    Decode(#[from] postcard::Error),
    #[error("malformed key of {len} bytes in store {store}")]
    MalformedKey { store: crate::StoreName, len: usize },
}

impl StoreError {
    /// Whether retrying the same operation may succeed. Store failures mean local state is
    /// unusable; the remedy is a restore, not a retry.
    pub fn is_retriable(&self) -> bool {
        false
    }
}
