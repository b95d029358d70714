//! The Redis layout of the feed cache, defined here only: the sink, the reader and the
//! tests name keys and members through these functions.
//!
//! Per user, behind an optional key prefix:
//! - `feed:{user}`: sorted set, every score 0, members the post ids zero-padded to 20
//!   digits, so lexicographic order is id order. (A double score cannot hold a 63-bit id
//!   exactly; `ZREVRANGEBYLEX` over padded ids is exact.)
//! - `feedmeta:{user}`: hash with `g`, a generation the sink bumps on every change of the
//!   feed, and `f`, the floor: every PostgreSQL entry ≥ `f` is in the set (`""`: all).

/// The sorted set of a feed's newest entries.
pub fn feed_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}feed:{owner}")
}

/// The hash with the feed's generation and floor.
pub fn meta_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}feedmeta:{owner}")
}

/// A pattern (for `SCAN`/`KEYS`) matching every feed set behind `prefix`, and no
/// other key.
pub fn feed_key_pattern(prefix: &str) -> String {
    format!("{prefix}feed:*")
}

/// The owner of a feed set, from its key.
pub fn owner_of_feed_key(prefix: &str, key: &str) -> Option<i64> {
    key.strip_prefix(prefix)?
        .strip_prefix("feed:")?
        .parse()
        .ok()
}

/// The field of a feed's hash holding its generation (the scripts of
/// [`crate::FeedCache`] spell it too).
pub const GENERATION: &str = "g";
/// The field of a feed's hash holding its floor, a member or `""` (the scripts spell it
/// too).
pub const FLOOR: &str = "f";

/// A post id as a member of a feed's set.
pub fn member(post_id: i64) -> String {
    format!("{post_id:020}")
}

/// The post id of a member, if it is one.
pub fn post_id_of(member: &str) -> Option<i64> {
    member.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_as_their_ids() {
        let ids = [0_i64, 7, 10, 99, 1 << 40, i64::MAX];
        let members: Vec<String> = ids.iter().map(|id| member(*id)).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        for id in ids {
            assert_eq!(post_id_of(&member(id)), Some(id));
        }
    }

    #[test]
    fn feed_keys_name_their_owner_and_the_pattern_takes_no_hash() {
        let prefix = "test-1:";
        assert_eq!(owner_of_feed_key(prefix, &feed_key(prefix, 42)), Some(42));
        assert_eq!(owner_of_feed_key(prefix, &meta_key(prefix, 42)), None);
        assert_eq!(owner_of_feed_key("other:", &feed_key(prefix, 42)), None);
        let pattern = feed_key_pattern(prefix);
        let literal = pattern.trim_end_matches('*');
        assert!(feed_key(prefix, 7).starts_with(literal));
        assert!(!meta_key(prefix, 7).starts_with(literal));
    }
}
