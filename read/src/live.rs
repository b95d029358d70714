//! Live feeds: a feed somebody listens to has a Redis stream (`live:{owner}`) of its
//! entry changes. A listener creates it; the sink appends to it only while it exists
//! (so feeds nobody listens to cost nothing) and it expires [`LIVE_TTL`] after its last
//! listener went. Entry ids are Redis stream ids, so a listener that comes back with
//! the last id it saw gets every change after it, from any API instance, or learns that
//! some were lost (the stream expired or was trimmed past it) and must read the feed
//! again.
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
/// (`""`: none), the time to live in seconds, the cap. Returns {0 fresh | 1 resumed |
/// 2 gap, the id to read after}. Resuming needs every entry after the id still there:
/// the stream exists and its oldest entry is not newer than the id. Otherwise an `o`
/// (opened) entry starts the stream, or marks the gap, and reading starts after it.
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
  if rm and (om < rm or (om == rm and os <= rs)) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return {1, resume}
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 't', 'o')
redis.call('EXPIRE', KEYS[1], ARGV[2])
if resume == '' then return {0, id} end
return {2, id}
"#;

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
    key: String,
    target: String,
    /// The id of the last entry read.
    position: String,
    wait: Duration,
}

type ReadReply = (i64, Vec<(String, Vec<String>)>, Option<Vec<StreamReply>>);
type StreamReply = (String, Vec<(String, Vec<String>)>);

impl LiveFeed {
    /// Opens a listener of `owner`'s feed, resuming after `resume` (a `Last-Event-ID`) if
    /// given; each read waits at most `wait`.
    pub(crate) async fn open(
        client: &redis::Client,
        target: &str,
        prefix: &str,
        owner: i64,
        resume: Option<&str>,
        wait: Duration,
    ) -> Result<(Self, Opening), StorageError> {
        let error = |source| StorageError::Redis {
            target: target.to_string(),
            source,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(wait + Duration::from_secs(5)));
        let mut redis = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(error)?;
        let key = layout::live_key(prefix, owner);
        let (outcome, position): (i64, String) = Script::new(OPEN)
            .key(&key)
            .arg(resume.unwrap_or_default())
            .arg(LIVE_TTL.as_secs())
            .arg(LIVE_CAP)
            .invoke_async(&mut redis)
            .await
            .map_err(error)?;
        let opening = match outcome {
            0 => Opening::Fresh,
            1 => Opening::Resumed,
            _ => Opening::Gap,
        };
        Ok((
            Self {
                redis,
                key,
                target: target.to_string(),
                position,
                wait,
            },
            opening,
        ))
    }

    /// The id of the last entry read: what a client resumes after.
    pub fn position(&self) -> &str {
        &self.position
    }

    /// The next changes, waiting for them at most the listener's wait. Keeps the stream
    /// alive while it listens.
    pub async fn read(&mut self) -> Result<LiveRead, StorageError> {
        let (alive, oldest, streams): ReadReply = redis::pipe()
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
            .arg(self.wait.as_millis() as u64)
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
