use crate::{encode_value, KeyValueStore, StoreError};

/// author → that author's newest live post ids, at most `capacity` of them.
///
/// Layout: one entry per post, key `author(8, big-endian) ++ post_id(8)`, so recording a
/// post writes (and changelogs) one small entry and at most one eviction, and the ids of
/// an author come back in order from one prefix scan.
pub struct RecentPostsStore<S> {
    kv: S,
    capacity: usize,
}

impl<S: KeyValueStore> RecentPostsStore<S> {
    pub fn new(kv: S, capacity: usize) -> Self {
        Self { kv, capacity }
    }

    /// Records `post_id` as a post of `author`, evicting the oldest beyond capacity.
    /// Recording it twice leaves the same content, but writes again: after a crash the
    /// local store can be ahead of its changelog, and a replay must re-send the record.
    pub fn push(&mut self, author: u64, post_id: u64) -> Result<(), StoreError> {
        if self.capacity == 0 {
            return Ok(());
        }
        let mut ascending = self.ascending(author)?;
        let Err(position) = ascending.binary_search(&post_id) else {
            return self.kv.put(&post_key(author, post_id), &encode_value(&())?);
        };
        if ascending.len() >= self.capacity && position == 0 {
            return Ok(());
        }
        self.kv
            .put(&post_key(author, post_id), &encode_value(&())?)?;
        ascending.insert(position, post_id);
        let evicted = ascending.len().saturating_sub(self.capacity);
        for old in ascending.into_iter().take(evicted) {
            self.kv.delete(&post_key(author, old))?;
        }
        Ok(())
    }

    /// Up to `n` of the author's newest post ids that are below `bound`, newest first.
    pub fn newest_below(&self, author: u64, bound: u64, n: usize) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .ascending(author)?
            .into_iter()
            .rev()
            .filter(|id| *id < bound)
            .take(n)
            .collect())
    }

    pub fn kv_mut(&mut self) -> &mut S {
        &mut self.kv
    }

    pub fn into_kv(self) -> S {
        self.kv
    }

    fn ascending(&self, author: u64) -> Result<Vec<u64>, StoreError> {
        self.kv
            .scan_prefix(&author.to_be_bytes())?
            .into_iter()
            .map(|(key, _)| {
                key.get(8..)
                    .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
                    .map(u64::from_be_bytes)
                    .ok_or(StoreError::MalformedKey {
                        store: crate::RECENT_POSTS_STORE,
                        len: key.len(),
                    })
            })
            .collect()
    }
}

fn post_key(author: u64, post_id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&author.to_be_bytes());
    key[8..].copy_from_slice(&post_id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::InMemoryStore;

    proptest! {
        /// Whatever the arrival order and duplicates, the store holds exactly the
        /// `capacity` largest ids pushed, and other authors' posts never mix in.
        #[test]
        fn keeps_the_newest_ids(ids in proptest::collection::vec(0u64..50, 0..100), capacity in 0usize..8, bound in 0u64..60) {
            let mut store = RecentPostsStore::new(InMemoryStore::default(), capacity);
            for id in &ids {
                store.push(7, *id).unwrap();
                store.push(8, *id + 1000).unwrap();
            }
            let kept: Vec<u64> = ids.iter().copied().collect::<BTreeSet<_>>().into_iter().rev().take(capacity).collect();
            prop_assert_eq!(store.newest_below(7, u64::MAX, usize::MAX).unwrap(), kept.clone());
            let below: Vec<u64> = kept.into_iter().filter(|id| *id < bound).take(2).collect();
            prop_assert_eq!(store.newest_below(7, bound, 2).unwrap(), below);
        }
    }
}
