//! One step of a rate limit's GCRA (generic cell rate algorithm) on Redis's clock, as a
//! Lua function that both the API's limiter script and the page script run: a cached
//! page counts its read against the reader's limit within the same script call, so
//! the limit costs a page one key's read and write, not a call of its own.

/// Defines `gcra(key, interval, window)`: the step for the key holding a user's
/// theoretical arrival time, with the emission interval and the window in
/// microseconds. Returns {allowed, microseconds until a refused request may pass,
/// microseconds of quota in use after this request}.
pub const GCRA_LUA: &str = r#"
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

/// A request to count against a limit: the user's key for the class, the policy's
/// emission interval and window in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateStep {
    pub key: String,
    pub interval_micros: u64,
    pub window_micros: u64,
}

/// What a step answered, as [`GCRA_LUA`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepAnswer {
    pub allowed: bool,
    /// Microseconds until a refused request may pass.
    pub wait_micros: i64,
    /// Microseconds of the quota in use after this request.
    pub used_micros: i64,
}

impl StepAnswer {
    /// The answer of the script's triple, if it is one.
    pub fn of(triple: &[i64]) -> Option<Self> {
        match triple {
            [allowed, wait, used] => Some(Self {
                allowed: *allowed == 1,
                wait_micros: *wait,
                used_micros: *used,
            }),
            _ => None,
        }
    }
}
