//! The Redis layout of the read cache, defined here only: the sink, the reader and the
//! tests name keys and members through these functions, and the scripts of
//! [`crate::FeedCache`] spell the same names (`feed:`, `merged:`, `post:`, the fields).
//!
//! Behind an optional key prefix:
//! - `feed:{user}`: sorted set, every score 0, members the post ids zero-padded to 20
//!   digits, so lexicographic order is id order. (A double score cannot hold a 63-bit id
//!   exactly; `ZREVRANGEBYLEX` over padded ids is exact.)
//! - `feedmeta:{user}`: hash with `c` (present once the set was filled: the set is then
//!   cached, even when empty), `g`, a generation the sink bumps on every change of the
//!   feed, and `f`, the floor: every PostgreSQL entry ≥ `f` is in the set (`""`: all).
//! - `follows:{user}`: hash, followed author → the follow's floor (a member: the
//!   author's merged posts at or above it belong in the feed); `followsmeta:{user}` with
//!   `c` and `g` as above.
//! - `merged:{author}`: sorted set of the author's posts merged on read (celebrities),
//!   as `feed:`; `mergedmeta:{author}` with `c`, `g` and `f` as above.
//! - `mergedauthors`: set of every author with posts merged on read, so that a page
//!   looks only at those its reader follows; `mergedauthorsmeta` with `c` and `g`.
//! - `pending:{author}`: hash, member → body ([`encode_post`]), of the author's newest
//!   posts the API accepted, so that the author's own feed shows them before the
//!   pipeline has materialized them (read-your-writes); the API writes it, every page of
//!   the author's feed merges it, and it expires [`crate::PENDING_TTL`] after the
//!   author's last post.
//! - `live:{owner}`: a stream of the feed's entry changes (`t` `+`/`-`, `p` the member;
//!   `t` `o` marks where a listener opened), while somebody listens ([`crate::live`]).
//! - `livelisteners:{author}`: sorted set of the owners listening to a feed that follows
//!   the author (one with posts merged on read), scored by the Unix second their
//!   registration lapses; the sink copies the author's merged changes into those owners'
//!   `live:` streams and prunes lapsed owners.
//! - `liveauthors:{owner}`: hash, merged author → the Redis millisecond since which the
//!   owner's `live:` stream has been getting that author's changes, so that a resume from
//!   before it is a gap.
//! - `livestreams:{owner}`: sorted set of the listeners of a feed open on any instance,
//!   scored by the Redis millisecond their lease lapses: the bound per user; its members
//!   come from the counter `livestreamseq`.
//! - `post:{id}`: a post's body ([`encode_post`]), or `""` once it is deleted; with the
//!   `pending:` sets and the `live` keys (but `livestreamseq`) the only keys with a time
//!   to live ([`crate::POST_CACHE_TTL`]).

/// The sorted set of a feed's newest entries.
pub fn feed_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}feed:{owner}")
}

/// The hash with the feed's generation and floor.
pub fn meta_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}feedmeta:{owner}")
}

/// The hash of a user's follows and their floors.
pub fn follows_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}follows:{owner}")
}

/// The hash with the generation of a user's follows.
pub fn follows_meta_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}followsmeta:{owner}")
}

/// The sorted set of an author's newest posts merged on read.
pub fn merged_key(prefix: &str, author: i64) -> String {
    format!("{prefix}merged:{author}")
}

/// The hash with the generation and floor of an author's merged posts.
pub fn merged_meta_key(prefix: &str, author: i64) -> String {
    format!("{prefix}mergedmeta:{author}")
}

/// The set of every author with posts merged on read.
pub fn merged_authors_key(prefix: &str) -> String {
    format!("{prefix}mergedauthors")
}

/// The hash with the generation of the set of authors with merged posts.
pub fn merged_authors_meta_key(prefix: &str) -> String {
    format!("{prefix}mergedauthorsmeta")
}

/// The hash of an author's posts accepted but perhaps not yet materialized.
pub fn pending_key(prefix: &str, author: i64) -> String {
    format!("{prefix}pending:{author}")
}

/// The stream of a feed's entry changes, while somebody listens.
pub fn live_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}live:{owner}")
}

/// What every live stream's key starts with: the sink's script appends the owner.
pub fn live_key_stem(prefix: &str) -> String {
    format!("{prefix}live:")
}

/// The owners listening to feeds that follow `author`'s merged posts.
pub fn live_listeners_key(prefix: &str, author: i64) -> String {
    format!("{}{author}", live_listeners_key_stem(prefix))
}

/// What every `livelisteners:` key starts with: the registering script appends the
/// author.
pub fn live_listeners_key_stem(prefix: &str) -> String {
    format!("{prefix}livelisteners:")
}

/// Since when `owner`'s live stream gets each followed merged author's changes.
pub fn live_authors_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}liveauthors:{owner}")
}

/// The leases of `owner`'s open listeners, on every instance.
pub fn live_leases_key(prefix: &str, owner: i64) -> String {
    format!("{prefix}livestreams:{owner}")
}

/// The counter naming listeners' leases.
pub fn live_lease_counter_key(prefix: &str) -> String {
    format!("{prefix}livestreamseq")
}

/// A post's cached body, named by its member (the page script has members at hand).
pub fn post_key(prefix: &str, post_id: i64) -> String {
    format!("{prefix}post:{}", member(post_id))
}

/// A pattern (for `SCAN`/`KEYS`) matching every feed set behind `prefix`, and no
/// other key.
pub fn feed_key_pattern(prefix: &str) -> String {
    format!("{prefix}feed:*")
}

/// Patterns (for `SCAN`/`KEYS`) matching every key of the read cache behind `prefix`:
/// deleting them all is a cold cache, as after a Redis restart.
pub fn cache_key_patterns(prefix: &str) -> Vec<String> {
    [
        "feed",
        "feedmeta",
        "follows",
        "followsmeta",
        "merged",
        "mergedmeta",
        "pending",
        "live",
        "livelisteners",
        "liveauthors",
        "livestreams",
        "post",
    ]
    .iter()
    .map(|class| format!("{prefix}{class}:*"))
    .chain([
        merged_authors_key(prefix),
        merged_authors_meta_key(prefix),
        live_lease_counter_key(prefix),
    ])
    .collect()
}

/// A pattern matching every cached post body behind `prefix`.
pub fn post_key_pattern(prefix: &str) -> String {
    format!("{prefix}post:*")
}

/// The owner of a feed set, from its key.
pub fn owner_of_feed_key(prefix: &str, key: &str) -> Option<i64> {
    key.strip_prefix(prefix)?
        .strip_prefix("feed:")?
        .parse()
        .ok()
}

/// The field of a meta hash present once its structure is cached (the scripts spell
/// it too).
pub const CACHED: &str = "c";
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

/// A post as its `post:` key holds it: `author:created-ms:content`.
pub fn encode_post(author: i64, created_ms: i64, content: &str) -> String {
    format!("{author}:{created_ms}:{content}")
}

/// What a `post:` key holds: `Some(None)` for a deleted post, `None` if the value is
/// not one of ours.
pub fn decode_post(value: &str) -> Option<Option<(i64, i64, &str)>> {
    if value.is_empty() {
        return Some(None);
    }
    let mut parts = value.splitn(3, ':');
    let author = parts.next()?.parse().ok()?;
    let created_ms = parts.next()?.parse().ok()?;
    let content = parts.next()?;
    Some(Some((author, created_ms, content)))
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
        assert!(!follows_key(prefix, 7).starts_with(literal));
    }

    #[test]
    fn post_bodies_decode_as_encoded_whatever_their_content() {
        for content in ["", "plain", "a:b:c", "line\nbreak", "ünïcode ✓"] {
            let encoded = encode_post(42, 1_700_000_000_000, content);
            assert_eq!(
                decode_post(&encoded),
                Some(Some((42, 1_700_000_000_000, content)))
            );
        }
        assert_eq!(decode_post(""), Some(None));
        assert_eq!(decode_post("not a post"), None);
    }
}
