//! Live feeds: a feed somebody listens to has a Redis stream (`live:{owner}`) of its
//! entry changes. A listener creates it; the sink appends to it only while it exists
//! (so feeds nobody listens to cost nothing) and it expires [`LIVE_TTL`] after its last
//! listener went. Entry ids are Redis stream ids, so a listener that comes back with
//! the last id it saw gets every change after it, from any API instance, or learns that
//! some were lost (the stream expired or was trimmed past it) and must read the feed
//! again.
//!
//! Posts merged on read (authors above the celebrity threshold) have no feed entries.
//! A listener registers its owner with each followed author that has such posts
//! (`livelisteners:{author}`), and the sink copies that author's merged changes into
//! the streams of the registered owners: one append per listening follower, never per
//! follower. Registrations outlive the stream they serve, so a resume within
//! [`LIVE_TTL`] misses nothing; a resume from before the owner's registration with an
//! author (`liveauthors:{owner}`) is a gap.
//!
//! Each listener holds a lease in `livestreams:{owner}`, renewed by its reads, so the
//! bound on a user's listeners holds across instances; a listener that went without
//! closing (its instance was killed) holds its place until its lease lapses.
//!
//! Changes arrive at least once: a sink replay appends an entry the feed already had.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Script;

use crate::layout;
use crate::StorageError;

/// Entries a live stream keeps (about: trimming is approximate); a listener further
/// behind gets a gap.
pub const LIVE_CAP: usize = 1_000;

/// How long a live stream outlives its last listener: the window in which a listener
/// resumes without a gap.
pub const LIVE_TTL: Duration = Duration::from_secs(10 * 60);

/// Opens a listener on a live stream. KEYS: the stream. ARGV: the id to resume after
/// (`""`: none), the time to live in seconds, the cap, the Redis millisecond since which
/// the stream has had every followed author's changes. Returns {0 fresh | 1 resumed |
/// 2 gap, the id to read after}. Resuming needs every entry after the id still there:
/// the stream exists, its oldest entry is not newer than the id, and the id is newer
/// than that millisecond. Otherwise an `o` (opened) entry starts the stream, or marks
/// the gap, and reading starts after it.
const OPEN: &str = r#"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local resume = ARGV[1]
if resume ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  local rm, rs = parse(resume)
  local om, os = parse(oldest[1])
  if rm and rm > tonumber(ARGV[4]) and (om < rm or (om == rm and os <= rs)) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return {1, resume}
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 't', 'o')
redis.call('EXPIRE', KEYS[1], ARGV[2])
if resume == '' then return {0, id} end
return {2, id}
"#;

/// Lua that sets `time` (Redis's TIME) and `now`, Redis's clock in milliseconds: the
/// scripts below keep their leases and registrations on it.
macro_rules! redis_now_ms {
    () => {
        "local time = redis.call('TIME')\nlocal now = time[1] * 1000 + math.floor(time[2] / 1000)\n"
    };
}

/// Registers an owner (ARGV[1]) with the followed authors of merged posts (ARGV[4..])
/// until ARGV[2] seconds from now, and drops its registrations with the others. KEYS:
/// the owner's `liveauthors:` hash; ARGV[3]: the stem of `livelisteners:` keys. Returns
/// the latest millisecond since which one of those authors has been registered (0: none).
const REGISTER: &str = concat!(
    redis_now_ms!(),
    r#"
local lapse = time[1] + tonumber(ARGV[2])
local followed = {}
local since = 0
for i = 4, #ARGV do
  local author = ARGV[i]
  followed[author] = true
  redis.call('ZADD', ARGV[3] .. author, lapse, ARGV[1])
  redis.call('EXPIRE', ARGV[3] .. author, ARGV[2])
  redis.call('HSETNX', KEYS[1], author, now)
  local first = tonumber(redis.call('HGET', KEYS[1], author))
  if first > since then since = first end
end
for _, author in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not followed[author] then
    redis.call('HDEL', KEYS[1], author)
    redis.call('ZREM', ARGV[3] .. author, ARGV[1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return since
"#
);

/// Takes a lease for one more listener of a feed unless ARGV[1] hold one. KEYS: the
/// feed's `livestreams:` set, the lease counter; ARGV[2]: the lease in milliseconds.
/// Returns the lease's id, or 0.
const ACQUIRE: &str = concat!(
    redis_now_ms!(),
    r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local id = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return id
"#
);

/// Renews lease ARGV[1] of a feed's `livestreams:` set (KEYS[1]) for ARGV[2] ms.
const RENEW: &str = concat!(
    redis_now_ms!(),
    r#"
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
"#
);

/// How a listener is opened.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The id to resume after (a `Last-Event-ID`).
    pub resume: Option<String>,
    /// The longest a read waits.
    pub wait: Duration,
    /// Listeners of one feed open at once, over every instance.
    pub max_per_user: usize,
    /// How often a listener looks for changes in its followed merged authors; their
    /// registrations outlive the stream by twice this.
    pub follows_refresh: Duration,
}

/// The result of opening a listener.
pub enum Opened {
    Listening(Box<LiveFeed>, Opening),
    /// The feed has [`LiveOptions::max_per_user`] listeners already.
    TooMany,
}

/// How long a listener's place lasts without a read renewing it: reads come at least
/// every wait, and a client may hold one up for a while.
fn lease_of(wait: Duration) -> Duration {
    2 * wait + Duration::from_secs(30)
}

/// How a listener starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A new listener: changes from now on.
    Fresh,
    /// Every change after the resumed id follows.
    Resumed,
    /// Some changes after the resumed id are lost: read the feed again.
    Gap,
}

/// One change of a live feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveChange {
    Added(i64),
    Removed(i64),
}

/// What one read of a live stream gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveRead {
    /// Changes, each with its stream id, oldest first.
    Changes(Vec<(String, LiveChange)>),
    /// Nothing within the wait.
    Idle,
    /// Changes were lost since the last read: the stream expired or was trimmed past it.
    Gap,
}

/// A listener of one feed's live stream, on a connection of its own (its reads block).
pub struct LiveFeed {
    redis: MultiplexedConnection,
    prefix: String,
    owner: i64,
    key: String,
    target: String,
    /// The id of the last entry read.
    position: String,
    options: LiveOptions,
    lease: i64,
    /// The followed authors of merged posts the owner is registered with, sorted.
    authors: Vec<i64>,
}

type ReadReply = (
    (),
    i64,
    Vec<(String, Vec<String>)>,
    Option<Vec<StreamReply>>,
);
type StreamReply = (String, Vec<(String, Vec<String>)>);

impl LiveFeed {
    /// Opens a listener of `owner`'s feed, which follows `authors` with posts merged on
    /// read, within the bound on the feed's listeners.
    pub(crate) async fn open(
        client: &redis::Client,
        target: &str,
        prefix: &str,
        owner: i64,
        authors: Vec<i64>,
        options: LiveOptions,
    ) -> Result<Opened, StorageError> {
        let error = |source| StorageError::Redis {
            target: target.to_string(),
            source,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(options.wait + Duration::from_secs(5)));
        let mut redis = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(error)?;
        let lease: i64 = Script::new(ACQUIRE)
            .key(layout::live_leases_key(prefix, owner))
            .key(layout::live_lease_counter_key(prefix))
            .arg(options.max_per_user)
            .arg(lease_of(options.wait).as_millis() as u64)
            .invoke_async(&mut redis)
            .await
            .map_err(error)?;
        if lease == 0 {
            return Ok(Opened::TooMany);
        }
        let mut feed = Self {
            redis,
            prefix: prefix.to_string(),
            owner,
            key: layout::live_key(prefix, owner),
            target: target.to_string(),
            position: String::new(),
            options,
            lease,
            authors: Vec::new(),
        };
        let since = match feed.register(authors).await {
            Ok(since) => since,
            Err(error) => {
                feed.close().await;
                return Err(error);
            }
        };
        let opened: Result<(i64, String), _> = Script::new(OPEN)
            .key(&feed.key)
            .arg(feed.options.resume.as_deref().unwrap_or_default())
            .arg(LIVE_TTL.as_secs())
            .arg(LIVE_CAP)
            .arg(since)
            .invoke_async(&mut feed.redis)
            .await;
        let (outcome, position) = match opened {
            Ok(opened) => opened,
            Err(source) => {
                let error = feed.error(source);
                feed.close().await;
                return Err(error);
            }
        };
        feed.position = position;
        let opening = match outcome {
            0 => Opening::Fresh,
            1 => Opening::Resumed,
            _ => Opening::Gap,
        };
        Ok(Opened::Listening(Box::new(feed), opening))
    }

    fn error(&self, source: redis::RedisError) -> StorageError {
        StorageError::Redis {
            target: self.target.clone(),
            source,
        }
    }

    /// Registers the owner with `authors` (and with no other), returning since when the
    /// stream has had all their changes.
    async fn register(&mut self, mut authors: Vec<i64>) -> Result<i64, StorageError> {
        authors.sort_unstable();
        authors.dedup();
        // The registrations outlive the stream, which lives LIVE_TTL after its last read,
        // by one refresh at least.
        let lapse = LIVE_TTL + 2 * self.options.follows_refresh;
        let since: i64 = Script::new(REGISTER)
            .key(layout::live_authors_key(&self.prefix, self.owner))
            .arg(self.owner)
            .arg(lapse.as_secs().max(1))
            .arg(layout::live_listeners_key_stem(&self.prefix))
            .arg(&authors)
            .invoke_async(&mut self.redis)
            .await
            .map_err(|source| self.error(source))?;
        self.authors = authors;
        Ok(since)
    }

    /// Follows the owner's current authors of merged posts, renewing the registrations;
    /// true if they changed, so that the listener's view misses their changes before now
    /// (or still holds an unfollowed author's posts).
    pub async fn follow_authors(&mut self, authors: Vec<i64>) -> Result<bool, StorageError> {
        let before = self.authors.clone();
        self.register(authors).await?;
        Ok(before != self.authors)
    }

    /// Gives the listener's place back.
    pub async fn close(mut self) {
        let removed: Result<i64, _> = redis::cmd("ZREM")
            .arg(layout::live_leases_key(&self.prefix, self.owner))
            .arg(self.lease)
            .query_async(&mut self.redis)
            .await;
        if let Err(error) = removed {
            tracing::debug!(%error, "a live feed's lease lapses by itself");
        }
    }

    /// The id of the last entry read: what a client resumes after.
    pub fn position(&self) -> &str {
        &self.position
    }

    /// The next changes, waiting for them at most the listener's wait. Keeps the stream
    /// and the listener's lease alive while it listens.
    pub async fn read(&mut self) -> Result<LiveRead, StorageError> {
        let ((), alive, oldest, streams): ReadReply = redis::pipe()
            .cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(layout::live_leases_key(&self.prefix, self.owner))
            .arg(self.lease)
            .arg(lease_of(self.options.wait).as_millis() as u64)
            .cmd("EXPIRE")
            .arg(&self.key)
            .arg(LIVE_TTL.as_secs())
            .cmd("XRANGE")
            .arg(&self.key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(self.options.wait.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(&self.position)
            .query_async(&mut self.redis)
            .await
            .map_err(|source| StorageError::Redis {
                target: self.target.clone(),
                source,
            })?;
        let behind = oldest
            .first()
            .is_some_and(|(id, _)| precedes(&self.position, id));
        if alive == 0 || behind {
            return Ok(LiveRead::Gap);
        }
        let entries = streams
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries);
        let mut changes = Vec::new();
        for (id, fields) in entries {
            if let Some(change) = change_of(&fields) {
                changes.push((id.clone(), change));
            }
            self.position = id;
        }
        Ok(if changes.is_empty() {
            LiveRead::Idle
        } else {
            LiveRead::Changes(changes)
        })
    }
}

/// Whether stream id `a` comes before `b`, both `ms-seq`.
fn precedes(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> Option<(u64, u64)> {
        let (ms, seq) = id.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    };
    matches!((parse(a), parse(b)), (Some(a), Some(b)) if a < b)
}

/// The change an entry's fields (`t`, `p`) hold; `None` for an opening mark.
fn change_of(fields: &[String]) -> Option<LiveChange> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1))
    };
    let post_id = layout::post_id_of(field("p")?)?;
    match field("t")?.as_str() {
        "+" => Some(LiveChange::Added(post_id)),
        "-" => Some(LiveChange::Removed(post_id)),
        _ => None,
    }
}

/// Whether `id` is a stream id a client may resume after.
pub fn is_stream_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq].iter().all(|part| {
            !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_by_millisecond_then_sequence() {
        assert!(precedes("1-0", "2-0"));
        assert!(precedes("5-1", "5-2"));
        assert!(precedes("9-9", "10-0"));
        assert!(!precedes("5-2", "5-2"));
        assert!(!precedes("garbage", "5-2"));
        assert!(is_stream_id("1700000000000-3"));
        for bad in ["", "1", "-1", "1-", "a-1", "1-2-3"] {
            assert!(!is_stream_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn entries_hold_additions_and_removals_and_marks_hold_nothing() {
        let fields = |t: &str, p: i64| {
            vec![
                "t".to_string(),
                t.to_string(),
                "p".to_string(),
                layout::member(p),
            ]
        };
        assert_eq!(change_of(&fields("+", 42)), Some(LiveChange::Added(42)));
        assert_eq!(change_of(&fields("-", 42)), Some(LiveChange::Removed(42)));
        assert_eq!(change_of(&["t".to_string(), "o".to_string()]), None);
    }
}
