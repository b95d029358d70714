use std::collections::HashMap;

use crate::{KeyValueStore, StoreDigest, StoreError};

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

/// Wraps a store and records its writes until the runtime drains them into the store's
/// changelog topic. A key written several times before a drain is recorded once, with
/// its last value, where it was first written (Kafka Streams' record cache): a
/// changelog is read back key by key, last write winning, so the writes in between
/// would only cost the broker, the changelog and every restore. (Replaying 161,714
/// follows wrote 323,428 changelog records before, an edge and a count per follow,
/// though a batch of follows of one author rewrites that author's count each time.)
pub struct ChangeCapture<S> {
    inner: S,
    pending: Vec<ChangeRecord>,
    /// Where each key of `pending` is.
    positions: HashMap<Vec<u8>, usize>,
}

impl<S: KeyValueStore> ChangeCapture<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            positions: HashMap::new(),
        }
    }

    /// The keys written since the last call, each with its last value, in the order of
    /// their first write.
    pub fn drain_changes(&mut self) -> Vec<ChangeRecord> {
        self.positions.clear();
        std::mem::take(&mut self.pending)
    }

    fn record(&mut self, key: &[u8], value: Option<&[u8]>) {
        let value = value.map(<[u8]>::to_vec);
        match self.positions.get(key) {
            Some(&at) => self.pending[at].value = value,
            None => {
                self.positions.insert(key.to_vec(), self.pending.len());
                self.pending.push(ChangeRecord {
                    key: key.to_vec(),
                    value,
                });
            }
        }
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
        self.record(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.inner.delete(key)?;
        self.record(key, None);
        Ok(())
    }

    fn visit_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.visit_prefix(prefix, visit)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::InMemoryStore;

    #[test]
    fn a_key_written_twice_is_recorded_once_with_its_last_value_at_its_first_place() {
        let mut store = ChangeCapture::new(InMemoryStore::default());
        store.put(b"count", b"1").unwrap();
        store.put(b"edge", b"x").unwrap();
        store.put(b"count", b"2").unwrap();
        store.delete(b"edge").unwrap();
        let record = |key: &[u8], value: Option<&[u8]>| ChangeRecord {
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        };
        assert_eq!(
            store.drain_changes(),
            vec![record(b"count", Some(b"2")), record(b"edge", None)]
        );
        store.put(b"count", b"3").unwrap();
        assert_eq!(store.drain_changes(), vec![record(b"count", Some(b"3"))]);
        assert!(store.drain_changes().is_empty());
    }

    proptest! {
        /// What a changelog holds after any writes, coalesced per drain, rebuilds the
        /// store exactly.
        #[test]
        fn the_drained_changes_rebuild_the_store(
            drains in prop::collection::vec(
                prop::collection::vec((0u8..6, prop::option::of(0u8..4)), 0..20),
                1..6,
            )
        ) {
            let mut store = ChangeCapture::new(InMemoryStore::default());
            let mut changelog = InMemoryStore::default();
            for writes in drains {
                for (key, value) in writes {
                    match value {
                        Some(value) => store.put(&[key], &[value]).unwrap(),
                        None => store.delete(&[key]).unwrap(),
                    }
                }
                for change in store.drain_changes() {
                    change.apply_to(&mut changelog).unwrap();
                }
            }
            prop_assert_eq!(
                changelog.scan_prefix(&[]).unwrap(),
                store.inner_mut().scan_prefix(&[]).unwrap()
            );
        }
    }
}
