//! Bearer tokens for the API the harness launches: one fixed key, which every launched
//! `feedstream` gets in its environment, and tokens signed with it.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use feedstream_api::auth::TokenKeys;
use feedstream_core::ids::UserId;

/// `FEEDSTREAM_TOKEN_KEYS` of every API the tests and the benchmark start.
pub const TOKEN_KEYS: &str = "harness:a-fixed-test-secret-never-used-in-production";
/// `FEEDSTREAM_WRITE_RATE_LIMIT` and `FEEDSTREAM_READ_RATE_LIMIT` of every API the tests
/// and the benchmark start: the limiter runs (its cost is measured) but never refuses
/// their synthetic users, who write and read far faster than people; the tests of
/// the limits set their own.
pub const RATE_LIMIT: &str = "1000000/60s";
/// Longer than any test or benchmark run.
const TTL: Duration = Duration::from_secs(24 * 3600);

static KEYS: LazyLock<Result<TokenKeys, String>> =
    LazyLock::new(|| TokenKeys::parse(TOKEN_KEYS).map_err(|error| error.to_string()));

/// The keys of [`TOKEN_KEYS`], to mint tokens with.
pub fn token_keys() -> anyhow::Result<&'static TokenKeys> {
    KEYS.as_ref()
        .map_err(|error| anyhow::anyhow!("the harness's token keys: {error}"))
}

/// A bearer token for `user`, valid for a day.
pub fn token(user: u64) -> anyhow::Result<String> {
    let user = UserId::new(user).with_context(|| format!("user {user}"))?;
    Ok(token_keys()?.mint(user, SystemTime::now(), TTL)?)
}
