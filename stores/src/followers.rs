use crate::{decode_value, encode_value, KeyValueStore, StoreError};

/// followee → set of followers (each with the id of the follow that began it), plus the
/// follower count.
///
/// Layout: one entry per edge, key `followee(8, big-endian) ++ follower(8)`, value the
/// `since` event id, so a follow or unfollow writes (and changelogs) a few bytes however
/// large the set is, and a fan-out is one prefix scan. The count lives under the bare
/// 8-byte `followee` key, which sorts before that followee's edges.
pub struct FollowerStore<S> {
    kv: S,
}

const EDGE_KEY_LEN: usize = 16;

/// One follower of a followee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    pub id: u64,
    /// Event id of the follow that began this edge.
    pub since: u64,
}

impl<S: KeyValueStore> FollowerStore<S> {
    pub fn new(kv: S) -> Self {
        Self { kv }
    }

    /// Adds `follower` to `followee`'s followers, since the follow event `since`. An
    /// existing edge keeps its original `since`. Returns the edge's `since`.
    ///
    /// Writes happen even when nothing changes: after a crash the local store can be
    /// ahead of its changelog, and a replayed event must re-send what the changelog lacks.
    pub fn add(&mut self, followee: u64, follower: u64, since: u64) -> Result<u64, StoreError> {
        let key = edge_key(followee, follower);
        let existing = self.get(followee, follower)?;
        let since = existing.map_or(since, |edge| edge.since);
        self.kv.put(&key, &encode_value(&since)?)?;
        let count = self.count(followee)? + u64::from(existing.is_none());
        self.set_count(followee, count)?;
        Ok(since)
    }

    /// Removes `follower` from `followee`'s followers. Returns whether it was there.
    /// Like [`add`](Self::add), it writes even when nothing changes.
    pub fn remove(&mut self, followee: u64, follower: u64) -> Result<bool, StoreError> {
        let key = edge_key(followee, follower);
        let existed = self.kv.get(&key)?.is_some();
        self.kv.delete(&key)?;
        let count = self.count(followee)?.saturating_sub(u64::from(existed));
        self.set_count(followee, count)?;
        Ok(existed)
    }

    /// The edge `follower → followee`, if any.
    pub fn get(&self, followee: u64, follower: u64) -> Result<Option<Follower>, StoreError> {
        self.kv
            .get(&edge_key(followee, follower))?
            .map(|bytes| {
                Ok(Follower {
                    id: follower,
                    since: decode_value(&bytes)?,
                })
            })
            .transpose()
    }

    /// Visits every follower of `followee`, in id order, straight from the store's
    /// entries: a post's fan-out reads thousands of edges, none of them copied.
    pub fn visit_followers(
        &self,
        followee: u64,
        visit: &mut dyn FnMut(Follower),
    ) -> Result<(), StoreError> {
        let mut failure = None;
        self.kv
            .visit_prefix(&followee.to_be_bytes(), &mut |key, value| {
                // The bare followee key is the count, not an edge.
                if key.len() == 8 {
                    return true;
                }
                let follower = follower_of(key).and_then(|id| {
                    Ok(Follower {
                        id,
                        since: decode_value(value)?,
                    })
                });
                match follower {
                    Ok(follower) => visit(follower),
                    Err(error) => failure = Some(error),
                }
                failure.is_none()
            })?;
        failure.map_or(Ok(()), Err)
    }

    pub fn count(&self, followee: u64) -> Result<u64, StoreError> {
        match self.kv.get(&followee.to_be_bytes())? {
            Some(bytes) => decode_value(&bytes),
            None => Ok(0),
        }
    }

    pub fn kv_mut(&mut self) -> &mut S {
        &mut self.kv
    }

    pub fn into_kv(self) -> S {
        self.kv
    }

    fn set_count(&mut self, followee: u64, count: u64) -> Result<(), StoreError> {
        let key = followee.to_be_bytes();
        if count == 0 {
            self.kv.delete(&key)
        } else {
            self.kv.put(&key, &encode_value(&count)?)
        }
    }
}

fn edge_key(followee: u64, follower: u64) -> [u8; EDGE_KEY_LEN] {
    let mut key = [0u8; EDGE_KEY_LEN];
    key[..8].copy_from_slice(&followee.to_be_bytes());
    key[8..].copy_from_slice(&follower.to_be_bytes());
    key
}

fn follower_of(key: &[u8]) -> Result<u64, StoreError> {
    key.get(8..)
        .filter(|tail| tail.len() == 8)
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::MalformedKey {
            store: crate::StoreName::Followers,
            len: key.len(),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::InMemoryStore;

    proptest! {
        /// The store behaves like a map of maps (follower → since), whatever the order of
        /// operations; a repeated add keeps the first `since`; adjacent followee ids never
        /// leak into each other's prefix scans.
        #[test]
        fn behaves_like_a_map_of_maps(ops in proptest::collection::vec((any::<bool>(), 0u64..4, 0u64..6), 0..200)) {
            let mut store = FollowerStore::new(InMemoryStore::default());
            let mut model: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
            for (step, (add, followee, follower)) in ops.into_iter().enumerate() {
                let followee = followee * 255; // 0 and 255 share leading bytes
                let edges = model.entry(followee).or_default();
                if add {
                    let since = *edges.entry(follower).or_insert(step as u64);
                    prop_assert_eq!(store.add(followee, follower, step as u64).unwrap(), since);
                } else {
                    prop_assert_eq!(store.remove(followee, follower).unwrap(), edges.remove(&follower).is_some());
                }
            }
            for (followee, edges) in model {
                let expected: Vec<Follower> = edges.iter().map(|(id, since)| Follower { id: *id, since: *since }).collect();
                let mut visited = Vec::new();
                store.visit_followers(followee, &mut |follower| visited.push(follower)).unwrap();
                prop_assert_eq!(visited, expected);
                prop_assert_eq!(store.count(followee).unwrap(), edges.len() as u64);
            }
        }
    }
}
