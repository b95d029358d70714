//! Redis holds what a page of a feed needs, so that a page of a cached feed is one round
//! trip to Redis and no PostgreSQL: the newest entries of each feed, each user's follows,
//! the newest posts of each author merged on read, and post bodies.
//!
//! Layout: see [`crate::layout`].
//!
//! Read-your-writes: the API records each post it accepted, with its body, in its
//! author's `pending:` hash before it answers, and every page of the author's own feed
//! merges it in, taking a pending body where `post:` has none. Every post is in its
//! author's feed, so the merge only shows early what the pipeline will materialize; the
//! hash expires once the pipeline has long caught up. Nothing is fanned out, and no one
//! else sees a pending body: followers see the post once the sink stored it.
//!
//! The sink only updates structures that are cached (their meta hash has `c`), so each
//! is always a complete top slice of PostgreSQL. A reader that misses fills one from
//! PostgreSQL only if the generation it read before its query is unchanged, so a fill
//! never resurrects a removed entry or follow. Post bodies are written by the sink as
//! posts arrive and filled by readers with `SET NX`; a deletion overwrites the body with
//! `""`, so a fill racing with it cannot bring the body back either.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::layout::{self, member};
use crate::live::{LiveFeed, LiveOptions, Opened, LIVE_CAP};
use crate::range::IdRange;
use crate::rate_step::{RateStep, StepAnswer, GCRA_LUA};
use crate::redact::redact;
use crate::StorageError;

/// How many entries of each feed, and posts of each merged author, Redis holds.
pub const FEED_CACHE_CAP: usize = 800;

/// Users following more authors than this have their follows read from PostgreSQL on
/// every page: a page script walks the follows of its reader, and must stay short.
pub const FOLLOWS_CACHE_CAP: usize = 2_000;

/// How long Redis keeps a post's body. Bodies are the one class of keys that expire, so
/// that Redis under `maxmemory-policy volatile-lru` evicts them first and never a feed;
/// an evicted body is read from PostgreSQL and cached again.
pub const POST_CACHE_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

/// How many of an author's newest accepted posts the `pending:` hash keeps: a full page,
/// so the author's first page shows every post the pipeline has not materialized yet.
pub const PENDING_CAP: usize = 100;

/// How long an author's `pending:` hash lives after their last post: far beyond the
/// pipeline's visibility budget (a rebalance or a restart included), so a post leaves it
/// only long after reaching the feed. Past it, a post still unmaterialized (the
/// pipeline down for longer) waits for the pipeline like any other.
pub const PENDING_TTL: Duration = Duration::from_secs(10 * 60);

/// Applies one batch of changes (ARGV[4..]) to a sorted set (a feed, or an author's
/// merged posts) and bumps its generation, if the set is cached: `+member` adds,
/// `-member` removes, then the set is trimmed to the cap (ARGV[1]) and its floor raised.
/// The changes also go to live streams (capped at ARGV[2]) that exist, somebody
/// listening: with ARGV[3] `''`, a feed's to its own (KEYS[3]); otherwise ARGV[3] is the
/// stem of live stream keys and KEYS[3] the author's `livelisteners:` set, whose owners
/// (but the lapsed, pruned here) get a merged author's changes. Those stream keys are
/// built here, so the layout needs one Redis, not a cluster (as the page script does).
const APPLY_SET: &str = r#"
local function append(stream)
  if redis.call('EXISTS', stream) == 0 then return end
  for i = 4, #ARGV do
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*',
      't', string.sub(ARGV[i], 1, 1), 'p', string.sub(ARGV[i], 2))
  end
end
if ARGV[3] == '' then
  append(KEYS[3])
else
  local now = redis.call('TIME')[1]
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)
  for _, owner in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    append(ARGV[3] .. owner)
  end
end
redis.call('HINCRBY', KEYS[2], 'g', 1)
if not redis.call('HGET', KEYS[2], 'c') then return 0 end
local floor = redis.call('HGET', KEYS[2], 'f') or ''
for i = 4, #ARGV do
  local member = string.sub(ARGV[i], 2)
  if string.sub(ARGV[i], 1, 1) == '+' then
    if member >= floor then redis.call('ZADD', KEYS[1], 0, member) end
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
  redis.call('HSET', KEYS[2], 'f', redis.call('ZRANGE', KEYS[1], 0, 0)[1])
end
return 1
"#;

/// Records an accepted post in its author's pending hash (KEYS[1]): ARGV member, body,
/// cap, time to live in seconds. Beyond the cap the oldest posts go.
const NOTE_PENDING: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local excess = redis.call('HLEN', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local members = redis.call('HKEYS', KEYS[1])
  table.sort(members)
  for i = 1, excess do redis.call('HDEL', KEYS[1], members[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
"#;

/// Applies follows (`author`, `floor`) and unfollows (`author`, `""`) to a user's cached
/// follows, bumping their generation.
const APPLY_FOLLOWS: &str = r#"
redis.call('HINCRBY', KEYS[2], 'g', 1)
if not redis.call('HGET', KEYS[2], 'c') then return 0 end
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"#;

/// Replaces a sorted set by members read from PostgreSQL (ARGV[3..]) and marks it
/// cached with floor ARGV[2], unless its generation moved from ARGV[1].
const FILL_SET: &str = r#"
if (redis.call('HGET', KEYS[2], 'g') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ARGV) do
    chunk[#chunk + 1] = 0
    chunk[#chunk + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], unpack(chunk))
end
redis.call('HSET', KEYS[2], 'f', ARGV[2], 'c', '1')
return 1
"#;

/// Replaces a user's follows by pairs read from PostgreSQL (ARGV[2..]: author, floor)
/// and marks them cached, unless their generation moved from ARGV[1].
const FILL_FOLLOWS: &str = r#"
if (redis.call('HGET', KEYS[2], 'g') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[2], 'c', '1')
return 1
"#;

/// Records every author with posts merged on read in the set of such authors (if it
/// is cached), bumping its generation. ARGV: the authors.
const APPLY_AUTHORS: &str = r#"
redis.call('HINCRBY', KEYS[2], 'g', 1)
if not redis.call('HGET', KEYS[2], 'c') then return 0 end
redis.call('SADD', KEYS[1], unpack(ARGV))
return 1
"#;

/// Replaces the set of authors with merged posts by those read from PostgreSQL
/// (ARGV[2..]) and marks it cached, unless its generation moved from ARGV[1].
const FILL_AUTHORS: &str = r#"
if (redis.call('HGET', KEYS[2], 'g') or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[2], 'c', '1')
return 1
"#;

/// Everything Redis knows of one page, in one round trip. KEYS: the feed and its meta,
/// the reader's follows and their meta, the set of authors with merged posts and its
/// meta, the reader's own pending posts, and, to count the read against the reader's
/// rate limit first, the limit's key. ARGV: key prefix, limit, oldest first (`1`),
/// exclusive lower and upper bounds as members (`""`: none), and with the limit's key
/// its interval and window (appended to [`GCRA_LUA`], which defines `gcra`).
///
/// Only followed authors with merged posts are looked at: the script walks the smaller
/// of the reader's follows and the set of such authors. It builds the page as it goes
/// (entries, pending posts, then each author's slice, merged in page order), and once
/// the page is full an author's slice stops at its last id: the cost of a page grows
/// with what can still be on it, not with the limit times the authors.
///
/// Returns: {feed cached, generation, floor, entries}; {follows cached, generation};
/// {authors cached, generation}; whether the merged posts are complete; the merged
/// posts the slices read (every one that can be on the page); authors whose merged
/// posts are not cached, each followed by its generation;
/// the page the cached parts give and the bodies of its posts (nil where not cached);
/// the pending posts of the range (their bodies stand in the page's where `post:` has
/// none); the limit step's answer ({} without one). A refused read returns at once,
/// every part empty and not cached.
const PAGE: &str = r#"
local counted = {}
if KEYS[8] then
  counted = gcra(KEYS[8], ARGV[6], ARGV[7])
  if counted[1] == 0 then
    return {{0, '', '', {}}, {0, ''}, {0, ''}, 0, {}, {}, {}, {}, {}, counted}
  end
end
local prefix, limit, oldest = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local lower, upper = ARGV[4], ARGV[5]
local function slice(key, low, inclusive, high)
  local lo, hi = '-', '+'
  if low ~= '' then lo = (inclusive and '[' or '(') .. low end
  if high ~= '' then hi = '(' .. high end
  if oldest then return redis.call('ZRANGEBYLEX', key, lo, hi, 'LIMIT', 0, limit) end
  return redis.call('ZREVRANGEBYLEX', key, hi, lo, 'LIMIT', 0, limit)
end
-- Ids in page order: newest first unless oldest.
local function before(a, b)
  if oldest then return a < b end
  return a > b
end
-- The first `limit` distinct ids of two lists in page order, in page order.
local function merge(xs, ys)
  local out, i, j = {}, 1, 1
  while #out < limit and (xs[i] or ys[j]) do
    local x, y = xs[i], ys[j]
    if y == nil or (x ~= nil and not before(y, x)) then
      out[#out + 1] = x
      i = i + 1
      if x == y then j = j + 1 end
    else
      out[#out + 1] = y
      j = j + 1
    end
  end
  return out
end
local feed = redis.call('HMGET', KEYS[2], 'c', 'g', 'f')
local entries = {}
if feed[1] then entries = slice(KEYS[1], lower, false, upper) end
local pending, pending_bodies = {}, {}
local own = redis.call('HGETALL', KEYS[7])
for i = 1, #own, 2 do
  if (lower == '' or own[i] > lower) and (upper == '' or own[i] < upper) then
    pending[#pending + 1] = own[i]
    pending_bodies[own[i]] = own[i + 1]
  end
end
table.sort(pending, before)
-- The page so far. Every id in it is in the feed, so once it is full no id after its
-- last can be on the page: the merged slices below stop there.
local page = merge(entries, pending)
local follows = redis.call('HMGET', KEYS[4], 'c', 'g')
local authors = redis.call('HMGET', KEYS[6], 'c', 'g')
local merged, unknown, complete = {}, {}, 0
local function take(author, floor)
  local meta = redis.call('HMGET', prefix .. 'mergedmeta:' .. author, 'c', 'g', 'f')
  if not meta[1] then
    complete = 0
    unknown[#unknown + 1] = author
    unknown[#unknown + 1] = meta[2] or ''
    return
  end
  local low, inclusive, high = lower, false, upper
  if floor > lower then low, inclusive = floor, true end
  if #page == limit then
    local cut = page[limit]
    if oldest then high = cut elseif cut >= low then low, inclusive = cut, false end
  end
  local ids = slice(prefix .. 'merged:' .. author, low, inclusive, high)
  local f = meta[3] or ''
  if not (f == '' or (not oldest and #ids == limit) or (low ~= '' and low >= f)) then
    complete = 0
  end
  for _, id in ipairs(ids) do merged[#merged + 1] = id end
  page = merge(page, ids)
end
if follows[1] and authors[1] then
  complete = 1
  if redis.call('SCARD', KEYS[5]) <= redis.call('HLEN', KEYS[3]) then
    local merging = redis.call('SMEMBERS', KEYS[5])
    for i = 1, #merging, 1000 do
      local last = math.min(i + 999, #merging)
      local floors = redis.call('HMGET', KEYS[3], unpack(merging, i, last))
      for j = i, last do
        if floors[j - i + 1] then take(merging[j], floors[j - i + 1]) end
      end
    end
  else
    local list = redis.call('HGETALL', KEYS[3])
    for i = 1, #list, 2 do
      if redis.call('SISMEMBER', KEYS[5], list[i]) == 1 then take(list[i], list[i + 1]) end
    end
  end
end
local bodies = {}
if #page > 0 then
  local keys = {}
  for i, id in ipairs(page) do keys[i] = prefix .. 'post:' .. id end
  bodies = redis.call('MGET', unpack(keys))
  for i, id in ipairs(page) do
    if not bodies[i] and pending_bodies[id] then bodies[i] = pending_bodies[id] end
  end
end
return {{feed[1] and 1 or 0, feed[2] or '', feed[3] or '', entries},
  {follows[1] and 1 or 0, follows[2] or ''}, {authors[1] and 1 or 0, authors[2] or ''},
  complete, merged, unknown, page, bodies, pending, counted}
"#;

/// One Redis operation a PostgreSQL write implies, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOp {
    /// An entry of `owner`'s feed.
    Add {
        owner: i64,
        post_id: i64,
    },
    Remove {
        owner: i64,
        post_id: i64,
    },
    /// `owner` follows `author`, whose merged posts reach the feed from `min_post_id`.
    Followed {
        owner: i64,
        author: i64,
        min_post_id: i64,
    },
    Unfollowed {
        owner: i64,
        author: i64,
    },
    /// A post of `author` merged on read.
    Merged {
        author: i64,
        post_id: i64,
    },
    MergedRemoved {
        author: i64,
        post_id: i64,
    },
    /// A live post's body.
    Post(CachedPost),
    /// A deleted post: its body goes.
    PostDeleted {
        post_id: i64,
    },
}

impl CacheOp {
    /// Whether the operation changes a feed's entries (what the sink counts as feed
    /// changes applied to Redis).
    pub fn is_entry(&self) -> bool {
        matches!(self, CacheOp::Add { .. } | CacheOp::Remove { .. })
    }
}

/// A post's body as Redis keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPost {
    pub post_id: i64,
    pub author: i64,
    pub created_ms: i64,
    pub content: String,
}

/// Where a feed's entries stand in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CachedEntries {
    /// Not cached: fill it, using `generation` as the guard.
    Miss { generation: String },
    /// Entries of the range, in its order. `complete` when no entry of the range is
    /// missing from the set, i.e. the page needs no PostgreSQL for them.
    Hit { post_ids: Vec<i64>, complete: bool },
}

/// Where the posts merged on read into a feed stand in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CachedMerged {
    /// The reader's follows, or the set of authors with merged posts, are not cached:
    /// fill those with a generation here (it guards the fill).
    Uncached {
        follows: Option<String>,
        authors: Option<String>,
    },
    /// Every followed author's merged posts of the range (unsorted, possibly repeated).
    Complete { post_ids: Vec<i64> },
    /// Some authors' merged posts are not cached (those in `unknown`, with their
    /// generations) or the range reaches below a cached slice.
    Incomplete { unknown: Vec<(i64, String)> },
}

/// A post body as Redis answered for it: `None` for a deleted post.
pub(crate) type Body = Option<CachedPost>;

/// What Redis knows of one page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedPage {
    pub entries: CachedEntries,
    pub merged: CachedMerged,
    /// Bodies Redis holds of the page its cached parts give.
    pub bodies: HashMap<i64, Body>,
    /// The owner's own posts of the range that the API accepted lately, unordered: part
    /// of the feed whether or not the pipeline has materialized them.
    pub pending: Vec<i64>,
}

/// Whether a part is cached, and its generation.
type PartReply = (i64, String);

type PageReply = (
    (i64, String, String, Vec<String>),
    PartReply,
    PartReply,
    i64,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<Option<String>>,
    Vec<String>,
    Vec<i64>,
);

/// The read cache in Redis: its writes (the sink), page reads and fills (the reader).
#[derive(Clone)]
pub struct FeedCache {
    redis: ConnectionManager,
    /// For connections of their own: live feeds block on theirs.
    client: redis::Client,
    prefix: String,
    target: String,
    cap: usize,
    page_script: Script,
    fill_set_script: Script,
    fill_follows_script: Script,
    fill_authors_script: Script,
    note_pending_script: Script,
}

impl FeedCache {
    /// Connects lazily: the process starts without Redis, and every call fails fast (and
    /// is retried or served from PostgreSQL) until Redis answers.
    pub fn connect(url: &str, prefix: &str, cap: usize) -> Result<Self, StorageError> {
        let client = redis::Client::open(url).map_err(StorageError::RedisUrl)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(StorageError::RedisUrl)?;
        Ok(Self {
            redis,
            client,
            prefix: prefix.to_string(),
            target: redact(url),
            cap,
            page_script: Script::new(&format!("{GCRA_LUA}{PAGE}")),
            fill_set_script: Script::new(FILL_SET),
            fill_follows_script: Script::new(FILL_FOLLOWS),
            fill_authors_script: Script::new(FILL_AUTHORS),
            note_pending_script: Script::new(NOTE_PENDING),
        })
    }

    fn error(&self, source: redis::RedisError) -> StorageError {
        StorageError::Redis {
            target: self.target.clone(),
            source,
        }
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        let mut redis = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .map(|_| ())
            .map_err(|source| self.error(source))
    }

    /// Mirrors a committed batch's operations, pipelined: one atomic script per feed,
    /// per merged author and per follower, then the post bodies.
    pub async fn apply(&self, ops: &[CacheOp]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut feeds: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let mut merged: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let mut follows: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let mut pipe = redis::pipe();
        for op in ops {
            match op {
                CacheOp::Add { owner, post_id } => feeds
                    .entry(*owner)
                    .or_default()
                    .push(format!("+{}", member(*post_id))),
                CacheOp::Remove { owner, post_id } => feeds
                    .entry(*owner)
                    .or_default()
                    .push(format!("-{}", member(*post_id))),
                CacheOp::Merged { author, post_id } => merged
                    .entry(*author)
                    .or_default()
                    .push(format!("+{}", member(*post_id))),
                CacheOp::MergedRemoved { author, post_id } => merged
                    .entry(*author)
                    .or_default()
                    .push(format!("-{}", member(*post_id))),
                CacheOp::Followed {
                    owner,
                    author,
                    min_post_id,
                } => follows
                    .entry(*owner)
                    .or_default()
                    .extend([author.to_string(), member(*min_post_id)]),
                CacheOp::Unfollowed { owner, author } => follows
                    .entry(*owner)
                    .or_default()
                    .extend([author.to_string(), String::new()]),
                CacheOp::Post(post) => self.write_body(&mut pipe, post.post_id, Some(post)),
                CacheOp::PostDeleted { post_id } => self.write_body(&mut pipe, *post_id, None),
            }
        }
        let live_stem = layout::live_key_stem(&self.prefix);
        let sets = feeds
            .iter()
            .map(|(owner, changes)| {
                (
                    [
                        layout::feed_key(&self.prefix, *owner),
                        layout::meta_key(&self.prefix, *owner),
                        layout::live_key(&self.prefix, *owner),
                    ],
                    "",
                    changes,
                )
            })
            .chain(merged.iter().map(|(author, changes)| {
                (
                    [
                        layout::merged_key(&self.prefix, *author),
                        layout::merged_meta_key(&self.prefix, *author),
                        layout::live_listeners_key(&self.prefix, *author),
                    ],
                    live_stem.as_str(),
                    changes,
                )
            }));
        for (keys, streams, changes) in sets {
            pipe.cmd("EVAL")
                .arg(APPLY_SET)
                .arg(keys.len())
                .arg(&keys)
                .arg(self.cap)
                .arg(LIVE_CAP)
                .arg(streams)
                .arg(changes)
                .ignore();
        }
        let authors: BTreeSet<i64> = ops
            .iter()
            .filter_map(|op| match op {
                CacheOp::Merged { author, .. } => Some(*author),
                _ => None,
            })
            .collect();
        if !authors.is_empty() {
            pipe.cmd("EVAL")
                .arg(APPLY_AUTHORS)
                .arg(2)
                .arg(layout::merged_authors_key(&self.prefix))
                .arg(layout::merged_authors_meta_key(&self.prefix))
                .arg(authors.iter().collect::<Vec<_>>())
                .ignore();
        }
        for (owner, changes) in &follows {
            pipe.cmd("EVAL")
                .arg(APPLY_FOLLOWS)
                .arg(2)
                .arg(layout::follows_key(&self.prefix, *owner))
                .arg(layout::follows_meta_key(&self.prefix, *owner))
                .arg(changes)
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|source| self.error(source))
    }

    /// Reads what Redis holds of a page of `owner`'s feed, in one round trip, after
    /// counting the read against `step`'s limit if given: a refused read reads nothing.
    pub(crate) async fn page(
        &self,
        owner: i64,
        range: &IdRange,
        step: Option<&RateStep>,
    ) -> Result<(CachedPage, Option<StepAnswer>), StorageError> {
        let bound = |id: Option<i64>| id.map(member).unwrap_or_default();
        let lower = bound(range.lower);
        let mut invocation = self.page_script.prepare_invoke();
        invocation
            .key(layout::feed_key(&self.prefix, owner))
            .key(layout::meta_key(&self.prefix, owner))
            .key(layout::follows_key(&self.prefix, owner))
            .key(layout::follows_meta_key(&self.prefix, owner))
            .key(layout::merged_authors_key(&self.prefix))
            .key(layout::merged_authors_meta_key(&self.prefix))
            .key(layout::pending_key(&self.prefix, owner))
            .arg(&self.prefix)
            .arg(range.limit)
            .arg(if range.oldest_first { "1" } else { "0" })
            .arg(&lower)
            .arg(bound(range.upper));
        if let Some(step) = step {
            invocation
                .key(&step.key)
                .arg(step.interval_micros)
                .arg(step.window_micros);
        }
        let mut redis = self.redis.clone();
        let (
            (feed_cached, feed_generation, floor, entries),
            (follows_cached, follows_generation),
            (authors_cached, authors_generation),
            merged_complete,
            merged,
            unknown,
            page,
            bodies,
            pending,
            counted,
        ): PageReply = invocation
            .invoke_async(&mut redis)
            .await
            .map_err(|source| self.error(source))?;
        let ids = |members: &[String]| -> Vec<i64> {
            members
                .iter()
                .filter_map(|m| layout::post_id_of(m))
                .collect()
        };
        let entries = if feed_cached == 1 {
            let post_ids = ids(&entries);
            // The set holds every entry ≥ floor. A full newest-first page is therefore
            // exact; otherwise the range must lie above the floor.
            let complete = floor.is_empty()
                || (!range.oldest_first && post_ids.len() == range.limit)
                || (range.lower.is_some() && lower >= floor);
            CachedEntries::Hit { post_ids, complete }
        } else {
            CachedEntries::Miss {
                generation: feed_generation,
            }
        };
        let merged = if follows_cached == 0 || authors_cached == 0 {
            CachedMerged::Uncached {
                follows: (follows_cached == 0).then_some(follows_generation),
                authors: (authors_cached == 0).then_some(authors_generation),
            }
        } else if merged_complete == 1 {
            CachedMerged::Complete {
                post_ids: ids(&merged),
            }
        } else {
            CachedMerged::Incomplete {
                unknown: unknown
                    .chunks(2)
                    .filter_map(|pair| match pair {
                        [author, generation] => Some((author.parse().ok()?, generation.clone())),
                        _ => None,
                    })
                    .collect(),
            }
        };
        let bodies = page
            .iter()
            .zip(bodies)
            .filter_map(|(member, body)| {
                let post_id = layout::post_id_of(member)?;
                let body = decode_body(post_id, &body?)?;
                Some((post_id, body))
            })
            .collect();
        Ok((
            CachedPage {
                entries,
                merged,
                bodies,
                pending: ids(&pending),
            },
            StepAnswer::of(&counted),
        ))
    }

    /// Records a post the API accepted, with its body, in its author's pending hash, so
    /// that the author's next page shows it (read-your-writes).
    pub async fn note_accepted(&self, post: &CachedPost) -> Result<(), StorageError> {
        let mut redis = self.redis.clone();
        self.note_pending_script
            .key(layout::pending_key(&self.prefix, post.author))
            .arg(member(post.post_id))
            .arg(layout::encode_post(
                post.author,
                post.created_ms,
                &post.content,
            ))
            .arg(PENDING_CAP)
            .arg(PENDING_TTL.as_secs())
            .invoke_async::<()>(&mut redis)
            .await
            .map_err(|source| self.error(source))
    }

    /// Hides a post whose deletion the API accepted from every feed at once, as the
    /// sink will when the deletion reaches it: its body becomes the deleted mark, which
    /// no later write or fill overwrites, and it leaves its author's pending hash.
    pub async fn note_deleted(&self, author: i64, post_id: i64) -> Result<(), StorageError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.write_body(&mut pipe, post_id, None);
        pipe.cmd("HDEL")
            .arg(layout::pending_key(&self.prefix, author))
            .arg(member(post_id))
            .ignore();
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|source| self.error(source))
    }

    /// Listens to `owner`'s live feed, after `resume` if given; reads wait at most
    /// `wait`.
    pub async fn open_live(
        &self,
        owner: i64,
        authors: Vec<i64>,
        options: LiveOptions,
    ) -> Result<Opened, StorageError> {
        LiveFeed::open(
            &self.client,
            &self.target,
            &self.prefix,
            owner,
            authors,
            options,
        )
        .await
    }

    /// The bodies Redis holds of `ids`.
    pub(crate) async fn bodies(&self, ids: &[i64]) -> Result<HashMap<i64, Body>, StorageError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| layout::post_key(&self.prefix, *id))
            .collect();
        let mut redis = self.redis.clone();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .map_err(|source| self.error(source))?;
        Ok(ids
            .iter()
            .zip(values)
            .filter_map(|(id, value)| Some((*id, decode_body(*id, &value?)?)))
            .collect())
    }

    /// Whether `post_id` is among `author`'s pending posts and not deleted.
    pub(crate) async fn is_pending(&self, author: i64, post_id: i64) -> Result<bool, StorageError> {
        let mut redis = self.redis.clone();
        let (pending, body): (bool, Option<String>) = redis::pipe()
            .cmd("HEXISTS")
            .arg(layout::pending_key(&self.prefix, author))
            .arg(member(post_id))
            .cmd("GET")
            .arg(layout::post_key(&self.prefix, post_id))
            .query_async(&mut redis)
            .await
            .map_err(|source| self.error(source))?;
        // The deleted mark: its deletion was accepted already.
        Ok(pending && body.is_none_or(|body| !body.is_empty()))
    }

    /// Loads the newest entries of a feed (`newest` is newest first, at most the cap),
    /// unless the feed changed since `generation` was read.
    pub(crate) async fn fill_feed(
        &self,
        owner: i64,
        generation: &str,
        newest: &[i64],
    ) -> Result<bool, StorageError> {
        self.fill_set(
            layout::feed_key(&self.prefix, owner),
            layout::meta_key(&self.prefix, owner),
            generation,
            newest,
        )
        .await
    }

    /// Loads the newest posts merged on read of an author, as [`FeedCache::fill_feed`].
    pub(crate) async fn fill_merged(
        &self,
        author: i64,
        generation: &str,
        newest: &[i64],
    ) -> Result<bool, StorageError> {
        self.fill_set(
            layout::merged_key(&self.prefix, author),
            layout::merged_meta_key(&self.prefix, author),
            generation,
            newest,
        )
        .await
    }

    async fn fill_set(
        &self,
        set: String,
        meta: String,
        generation: &str,
        newest: &[i64],
    ) -> Result<bool, StorageError> {
        let floor = if newest.len() >= self.cap {
            newest.last().map(|id| member(*id)).unwrap_or_default()
        } else {
            String::new()
        };
        let mut invocation = self.fill_set_script.prepare_invoke();
        invocation.key(set).key(meta).arg(generation).arg(floor);
        for id in newest {
            invocation.arg(member(*id));
        }
        self.fill(invocation).await
    }

    /// Loads a user's follows (author, floor), unless they changed since `generation`
    /// was read or there are more than [`FOLLOWS_CACHE_CAP`].
    pub(crate) async fn fill_follows(
        &self,
        owner: i64,
        generation: &str,
        follows: &[(i64, i64)],
    ) -> Result<bool, StorageError> {
        if follows.len() > FOLLOWS_CACHE_CAP {
            return Ok(false);
        }
        let mut invocation = self.fill_follows_script.prepare_invoke();
        invocation
            .key(layout::follows_key(&self.prefix, owner))
            .key(layout::follows_meta_key(&self.prefix, owner))
            .arg(generation);
        for (author, floor) in follows {
            invocation.arg(author).arg(member(*floor));
        }
        self.fill(invocation).await
    }

    /// Loads the set of authors with posts merged on read, unless it changed since
    /// `generation` was read.
    pub(crate) async fn fill_merged_authors(
        &self,
        generation: &str,
        authors: &[i64],
    ) -> Result<bool, StorageError> {
        let mut invocation = self.fill_authors_script.prepare_invoke();
        invocation
            .key(layout::merged_authors_key(&self.prefix))
            .key(layout::merged_authors_meta_key(&self.prefix))
            .arg(generation);
        for author in authors {
            invocation.arg(author);
        }
        self.fill(invocation).await
    }

    /// Runs a fill script: whether it filled (its guard held).
    async fn fill(&self, invocation: redis::ScriptInvocation<'_>) -> Result<bool, StorageError> {
        let mut redis = self.redis.clone();
        let filled: i64 = invocation
            .invoke_async(&mut redis)
            .await
            .map_err(|source| self.error(source))?;
        Ok(filled == 1)
    }

    /// Appends the write of a post's body, or of its deleted mark `""` (`None`), to
    /// `pipe`. A deleted mark wins over a body written before or after it: a body never
    /// overwrites, a mark always does.
    fn write_body(&self, pipe: &mut redis::Pipeline, post_id: i64, body: Option<&CachedPost>) {
        let key = layout::post_key(&self.prefix, post_id);
        match body {
            Some(post) => pipe
                .cmd("SET")
                .arg(key)
                .arg(layout::encode_post(
                    post.author,
                    post.created_ms,
                    &post.content,
                ))
                .arg("NX"),
            None => pipe.cmd("SET").arg(key).arg(""),
        }
        .arg("EX")
        .arg(POST_CACHE_TTL.as_secs())
        .ignore();
    }

    /// Caches bodies read from PostgreSQL (`None`: the post is deleted). Never
    /// overwrites: a body or deletion the sink wrote meanwhile is newer.
    pub(crate) async fn fill_posts(&self, posts: &[(i64, Body)]) -> Result<(), StorageError> {
        if posts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (post_id, body) in posts {
            let value = body.as_ref().map_or_else(String::new, |post| {
                layout::encode_post(post.author, post.created_ms, &post.content)
            });
            pipe.cmd("SET")
                .arg(layout::post_key(&self.prefix, *post_id))
                .arg(value)
                .arg("NX")
                .arg("EX")
                .arg(POST_CACHE_TTL.as_secs())
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|source| self.error(source))
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// A cached body; `None` for a value that is not one of ours (read as not cached).
fn decode_body(post_id: i64, value: &str) -> Option<Body> {
    let decoded = layout::decode_post(value)?;
    Some(decoded.map(|(author, created_ms, content)| CachedPost {
        post_id,
        author,
        created_ms,
        content: content.to_string(),
    }))
}
