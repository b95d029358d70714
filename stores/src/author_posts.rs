use serde::{Deserialize, Serialize};

use crate::{decode_value, encode_value, KeyValueStore, StoreError};

/// author → every post id of that author, each with the id of the event that deleted
/// it, if any.
///
/// Layout: one entry per post, key `author(8, big-endian) ++ post_id(8)`, so recording a
/// post writes (and changelogs) one small entry, and an author's newest posts come back
/// from one reverse seek, costing what is read rather than how much the author wrote.
///
/// Deletions are kept as marks rather than removed: whether a post counts for a follow
/// depends on whether it was live *at that follow* (in event-id order), and a replay can
/// meet a store that already holds a later deletion.
pub struct AuthorPostsStore<S> {
    kv: S,
}

/// One post of an author as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthoredPost {
    pub id: u64,
    /// Event id of the POST_DELETED that removed it.
    pub deleted_by: Option<u64>,
}

impl AuthoredPost {
    /// Whether the post existed and was not yet deleted just before event `at`.
    pub fn live_at(&self, at: u64) -> bool {
        self.id < at && self.deleted_by.is_none_or(|deleted| deleted > at)
    }
}

#[derive(Serialize, Deserialize)]
struct PostValue {
    deleted_by: Option<u64>,
}

impl<S: KeyValueStore> AuthorPostsStore<S> {
    pub fn new(kv: S) -> Self {
        Self { kv }
    }

    /// Records `post_id` as a post of `author`. Recording it again keeps what is known
    /// (a deletion stays), but writes again: after a crash the local store can be ahead
    /// of its changelog, and a replay must re-send the record.
    pub fn record(&mut self, author: u64, post_id: u64) -> Result<(), StoreError> {
        let deleted_by = self.get(author, post_id)?.and_then(|post| post.deleted_by);
        self.write(author, post_id, deleted_by)
    }

    /// Marks the post deleted by event `deleted_by`. Returns false (and writes nothing)
    /// when `author` has no such post.
    pub fn mark_deleted(
        &mut self,
        author: u64,
        post_id: u64,
        deleted_by: u64,
    ) -> Result<bool, StoreError> {
        let Some(post) = self.get(author, post_id)? else {
            return Ok(false);
        };
        let first = post.deleted_by.map_or(deleted_by, |d| d.min(deleted_by));
        self.write(author, post_id, Some(first))?;
        Ok(true)
    }

    pub fn get(&self, author: u64, post_id: u64) -> Result<Option<AuthoredPost>, StoreError> {
        let key = post_key(author, post_id);
        self.kv
            .get(&key)?
            .map(|bytes| decode_post(&key, &bytes))
            .transpose()
    }

    /// The author's `n` newest posts that were live just before event `at`, newest first.
    pub fn newest_live_at(
        &self,
        author: u64,
        at: u64,
        n: usize,
    ) -> Result<Vec<AuthoredPost>, StoreError> {
        let mut found = Vec::new();
        if n == 0 {
            return Ok(found);
        }
        let mut failure = None;
        self.kv.scan_prefix_rev(
            &author.to_be_bytes(),
            &post_key(author, at),
            &mut |key, value| match decode_post(key, value) {
                Ok(post) => {
                    if post.live_at(at) {
                        found.push(post);
                    }
                    found.len() < n
                }
                Err(error) => {
                    failure = Some(error);
                    false
                }
            },
        )?;
        match failure {
            Some(error) => Err(error),
            None => Ok(found),
        }
    }

    pub fn kv_mut(&mut self) -> &mut S {
        &mut self.kv
    }

    pub fn into_kv(self) -> S {
        self.kv
    }

    fn write(
        &mut self,
        author: u64,
        post_id: u64,
        deleted_by: Option<u64>,
    ) -> Result<(), StoreError> {
        self.kv.put(
            &post_key(author, post_id),
            &encode_value(&PostValue { deleted_by })?,
        )
    }
}

fn decode_post(key: &[u8], value: &[u8]) -> Result<AuthoredPost, StoreError> {
    let id = key
        .get(8..)
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::MalformedKey {
            store: crate::StoreName::AuthorPosts,
            len: key.len(),
        })?;
    let value: PostValue = decode_value(value)?;
    Ok(AuthoredPost {
        id,
        deleted_by: value.deleted_by,
    })
}

fn post_key(author: u64, post_id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&author.to_be_bytes());
    key[8..].copy_from_slice(&post_id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::InMemoryStore;

    #[derive(Debug, Clone)]
    enum Op {
        Post(u64),
        Delete(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..40).prop_map(Op::Post),
            1 => (1u64..40).prop_map(Op::Delete),
        ]
    }

    proptest! {
        /// Against a plain map of post → deleting event: the newest posts live at any
        /// moment, whatever the order of posts and deletions, and other authors' posts
        /// never mix in.
        #[test]
        fn newest_live_posts_match_a_plain_map(ops in proptest::collection::vec(op(), 0..60), at in 0u64..200, n in 0usize..6) {
            let mut store = AuthorPostsStore::new(InMemoryStore::default());
            let mut reference: BTreeMap<u64, Option<u64>> = BTreeMap::new();
            for (index, op) in ops.iter().enumerate() {
                let event = 100 + index as u64;
                match *op {
                    Op::Post(id) => {
                        store.record(7, id).unwrap();
                        store.record(8, id).unwrap();
                        reference.entry(id).or_insert(None);
                    }
                    Op::Delete(id) => {
                        let known = store.mark_deleted(7, id, event).unwrap();
                        prop_assert_eq!(known, reference.contains_key(&id));
                        if let Some(deleted) = reference.get_mut(&id) {
                            deleted.get_or_insert(event);
                        }
                    }
                }
            }
            let expected: Vec<u64> = reference
                .iter()
                .rev()
                .filter(|(id, deleted)| **id < at && deleted.is_none_or(|d| d > at))
                .map(|(id, _)| *id)
                .take(n)
                .collect();
            let found: Vec<u64> = store.newest_live_at(7, at, n).unwrap().iter().map(|p| p.id).collect();
            prop_assert_eq!(found, expected);
            let others = store.newest_live_at(8, u64::MAX, usize::MAX).unwrap().len();
            prop_assert_eq!(others, reference.len());
        }
    }
}
