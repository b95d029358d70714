use crate::{ChangeRecord, StoreError};

/// One key-value pair.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An ordered byte key-value store owned by one task.
///
/// Keys are compared bytewise, so big-endian integer keys iterate in numeric order.
pub trait KeyValueStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Applies the writes in order; a backend that can makes them one atomic write
    /// (RocksDB: one write batch, one WAL record).
    fn write_batch(&mut self, changes: &[ChangeRecord]) -> Result<(), StoreError> {
        changes.iter().try_for_each(|change| change.apply_to(self))
    }
    /// Visits the entries whose key starts with `prefix`, in key order, while `visit`
    /// returns true. The slices are the store's own: nothing is copied for a visit.
    fn visit_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// All entries whose key starts with `prefix`, in key order, copied.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        self.visit_prefix(prefix, &mut |key, value| {
            entries.push((key.to_vec(), value.to_vec()));
            true
        })?;
        Ok(entries)
    }
    /// Visits the entries whose key starts with `prefix` and is below `upper` (itself a
    /// key with that prefix), in
    /// descending key order, while `visit` returns true. Reading newest-first this way
    /// costs what is visited, not the size of the prefix.
    fn scan_prefix_rev(
        &self,
        prefix: &[u8],
        upper: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// Folds every entry, in key order, into a digest (see [`StoreDigest`]).
    fn digest(&self) -> Result<StoreDigest, StoreError> {
        let mut digest = StoreDigest::default();
        self.visit_prefix(&[], &mut |key, value| {
            digest.add(key, value);
            true
        })?;
        Ok(digest)
    }
}

/// Order-sensitive fingerprint of a store's whole content: equal content gives an equal
/// digest, whatever the backend. Used to compare two rebuilds of the same store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDigest {
    pub entries: u64,
    pub hash: u64,
}

impl Default for StoreDigest {
    fn default() -> Self {
        Self {
            entries: 0,
            hash: FNV_OFFSET,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl StoreDigest {
    /// Adds one entry. Lengths are folded in too, so ("ab","c") and ("a","bc") differ.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.entries += 1;
        for part in [key, value] {
            self.fold(&(part.len() as u64).to_be_bytes());
            self.fold(part);
        }
    }

    fn fold(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.hash ^= u64::from(*byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }
}

impl std::fmt::Display for StoreDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} entries, digest {:016x}", self.entries, self.hash)
    }
}
