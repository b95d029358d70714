use crate::{Entry, KeyValueStore, StoreDigest, StoreError};

/// One store write as it goes to the changelog: `value: None` is a delete (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl ChangeRecord {
    /// Replays this write onto `store` (restoration from a changelog).
    pub fn apply_to<S: KeyValueStore>(&self, store: &mut S) -> Result<(), StoreError> {
        match &self.value {
            Some(value) => store.put(&self.key, value),
            None => store.delete(&self.key),
        }
    }
}

/// Wraps a store and records every write, in order, until the runtime drains them into
/// the store's changelog topic.
pub struct ChangeCapture<S> {
    inner: S,
    pending: Vec<ChangeRecord>,
}

impl<S: KeyValueStore> ChangeCapture<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    /// The writes made since the last call, oldest first.
    pub fn drain_changes(&mut self) -> Vec<ChangeRecord> {
        std::mem::take(&mut self.pending)
    }

    /// The wrapped store, for writes that must not be changelogged (restoration).
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: KeyValueStore> KeyValueStore for ChangeCapture<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(key, value)?;
        self.pending.push(ChangeRecord {
            key: key.to_vec(),
            value: Some(value.to_vec()),
        });
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(key)?;
        self.pending.push(ChangeRecord {
            key: key.to_vec(),
            value: None,
        });
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_prefix(prefix)
    }

    fn scan_prefix_rev(
        &self,
        prefix: &[u8],
        upper: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.scan_prefix_rev(prefix, upper, visit)
    }

    fn digest(&self) -> Result<StoreDigest, StoreError> {
        self.inner.digest()
    }
}
