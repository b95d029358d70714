//! Redis holds the newest entries of each feed.
//!
//! Layout: see [`crate::layout`].
//!
//! The sink only updates sets that exist, so a set is always a complete top slice of
//! PostgreSQL. A reader that misses fills the set from PostgreSQL only if the generation
//! it read before its query is unchanged, so a fill never resurrects a removed entry.

use redis::aio::ConnectionManager;
use redis::Script;

use crate::layout::{self, member};
use crate::range::IdRange;
use crate::redact::redact;
use crate::StorageError;

/// How many entries of each feed Redis holds.
pub const FEED_CACHE_CAP: usize = 800;

const APPLY: &str = r#"
redis.call('HINCRBY', KEYS[2], 'g', 1)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local floor = redis.call('HGET', KEYS[2], 'f') or ''
for i = 2, #ARGV do
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

const FILL: &str = r#"
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
redis.call('HSET', KEYS[2], 'f', ARGV[2])
return 1
"#;

/// One Redis operation a PostgreSQL write implies, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOp {
    Add { owner: i64, post_id: i64 },
    Remove { owner: i64, post_id: i64 },
}

/// What Redis knows of one feed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CachedPage {
    /// No set for this feed: fill it, using `generation` as the guard.
    Miss { generation: String },
    /// Entries of the range, in its order. `complete` when no entry of the range is
    /// missing from the set, i.e. the page needs no PostgreSQL.
    Hit { post_ids: Vec<i64>, complete: bool },
}

/// The feed cache in Redis: its writes (the sink), page reads and fills (the reader).
#[derive(Clone)]
pub struct FeedCache {
    redis: ConnectionManager,
    prefix: String,
    target: String,
    cap: usize,
    fill_script: Script,
}

impl FeedCache {
    /// Connects lazily: the process starts without Redis, and every call fails fast (and
    /// is retried or served from PostgreSQL) until Redis answers.
    pub fn connect(url: &str, prefix: &str, cap: usize) -> Result<Self, StorageError> {
        let client = redis::Client::open(url).map_err(StorageError::RedisUrl)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(StorageError::RedisUrl)?;
        Ok(Self {
            redis,
            prefix: prefix.to_string(),
            target: redact(url),
            cap,
            fill_script: Script::new(FILL),
        })
    }

    fn keys(&self, owner: i64) -> (String, String) {
        (
            layout::feed_key(&self.prefix, owner),
            layout::meta_key(&self.prefix, owner),
        )
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

    /// Mirrors a committed batch's operations, one atomic script per feed, pipelined.
    pub async fn apply(&self, ops: &[CacheOp]) -> Result<(), StorageError> {
        let mut per_feed: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for op in ops {
            let (owner, encoded) = match op {
                CacheOp::Add { owner, post_id } => (owner, format!("+{}", member(*post_id))),
                CacheOp::Remove { owner, post_id } => (owner, format!("-{}", member(*post_id))),
            };
            per_feed.entry(*owner).or_default().push(encoded);
        }
        if per_feed.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (owner, encoded) in &per_feed {
            let (feed, meta) = self.keys(*owner);
            pipe.cmd("EVAL")
                .arg(APPLY)
                .arg(2)
                .arg(feed)
                .arg(meta)
                .arg(self.cap)
                .arg(encoded)
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|source| self.error(source))
    }

    /// Reads the entries of `range` that the set holds, in the range's order.
    pub(crate) async fn page(
        &self,
        owner: i64,
        range: &IdRange,
    ) -> Result<CachedPage, StorageError> {
        let (feed, meta) = self.keys(owner);
        let upper = range
            .upper
            .map_or_else(|| "+".to_string(), |id| format!("({}", member(id)));
        let lower = range
            .lower
            .map_or_else(|| "-".to_string(), |id| format!("({}", member(id)));
        let (command, from, to) = if range.oldest_first {
            ("ZRANGEBYLEX", lower, upper)
        } else {
            ("ZREVRANGEBYLEX", upper, lower)
        };
        let mut redis = self.redis.clone();
        let (exists, members, floor, generation): (
            bool,
            Vec<String>,
            Option<String>,
            Option<String>,
        ) = redis::pipe()
            .atomic()
            .exists(&feed)
            .cmd(command)
            .arg(&feed)
            .arg(from)
            .arg(to)
            .arg("LIMIT")
            .arg(0)
            .arg(range.limit)
            .hget(&meta, layout::FLOOR)
            .hget(&meta, layout::GENERATION)
            .query_async(&mut redis)
            .await
            .map_err(|source| self.error(source))?;
        if !exists {
            return Ok(CachedPage::Miss {
                generation: generation.unwrap_or_default(),
            });
        }
        let post_ids: Vec<i64> = members
            .iter()
            .filter_map(|m| layout::post_id_of(m))
            .collect();
        let floor = floor.unwrap_or_default();
        // The set holds every entry ≥ floor. A full newest-first page is therefore
        // exact; otherwise the range must lie above the floor.
        let complete = floor.is_empty()
            || (!range.oldest_first && post_ids.len() == range.limit)
            || range.lower.is_some_and(|lower| member(lower) >= floor);
        Ok(CachedPage::Hit { post_ids, complete })
    }

    /// Loads the newest entries of a feed (`newest` is newest first, at most the cap),
    /// unless the feed changed since `generation` was read.
    pub(crate) async fn fill(
        &self,
        owner: i64,
        generation: &str,
        newest: &[i64],
    ) -> Result<bool, StorageError> {
        if newest.is_empty() {
            return Ok(false);
        }
        let (feed, meta) = self.keys(owner);
        let floor = if newest.len() >= self.cap {
            newest.last().map(|id| member(*id)).unwrap_or_default()
        } else {
            String::new()
        };
        let mut invocation = self.fill_script.prepare_invoke();
        invocation.key(feed).key(meta).arg(generation).arg(floor);
        for id in newest {
            invocation.arg(member(*id));
        }
        let mut redis = self.redis.clone();
        let filled: i64 = invocation
            .invoke_async(&mut redis)
            .await
            .map_err(|source| self.error(source))?;
        Ok(filled == 1)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}
