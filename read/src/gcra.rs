//! One step of a GCRA rate limit, as a Lua function that Redis scripts include: the
//! API's own limiter script and the read path's PAGE script, which runs it first, so
//! that a cached page and its limit check are one script call.

/// `gcra(key, interval, window)`: the user's theoretical arrival time is in `key`;
/// `interval` (window / quota) and `window` are microseconds. Returns {1 allowed or 0
/// refused, microseconds until a refused request may pass, microseconds of quota in
/// use}. It reads the time from Redis, so instances need not share a clock.
pub const GCRA_FUNCTION: &str = r#"
local function gcra(key, interval, window)
  local now_parts = redis.call('TIME')
  local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
  interval, window = tonumber(interval), tonumber(window)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local next_tat = tat + interval
  if next_tat - window > now then
    return {0, next_tat - window - now, tat - now}
  end
  redis.call('SET', key, next_tat, 'PX', math.ceil((next_tat - now) / 1000))
  return {1, 0, next_tat - now}
end
"#;

/// A limit to check along with a request: the user's key and the policy's timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcraStep {
    pub key: String,
    pub interval_micros: u64,
    pub window_micros: u64,
}

/// What a GCRA step answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraAnswer {
    pub allowed: bool,
    /// Microseconds until a refused request may pass.
    pub wait_micros: i64,
    /// Microseconds of the quota in use after this request.
    pub used_micros: i64,
}

impl GcraAnswer {
    pub fn of(reply: (i64, i64, i64)) -> Self {
        let (allowed, wait_micros, used_micros) = reply;
        Self {
            allowed: allowed == 1,
            wait_micros,
            used_micros,
        }
    }
}
