//! Idempotency keys on writes (draft-ietf-httpapi-idempotency-key-header), kept in
//! PostgreSQL so that they hold across API instances and restarts.
//!
//! The first request with a key stores its request and the event it is about to
//! publish, under a lease. Once the broker has acknowledged the event, the answer is
//! stored with it. A retry with the same key then gets that answer and publishes
//! nothing. A retry after a publish that failed, or after a crash, takes over the
//! expired lease and publishes the *stored* event again, with the same event id. So
//! the client never causes two posts, and downstream treats the second copy as a
//! replay, which changes nothing.

use std::time::Duration;

use feedstream_core::event::Envelope;
use feedstream_core::ids::UserId;
use sqlx::PgPool;

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// What a request with a key may do.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is new (or its last use is older than [`RETENTION`]): publish the event.
    Fresh,
    /// The key's request was answered: answer the same, publish nothing.
    Answered {
        status: u16,
        body: serde_json::Value,
    },
    /// The key's request never finished (its publish failed, or its instance died) and
    /// its lease expired: publish this, the event it stored, again.
    Resume(Box<Envelope>),
    /// The key's request is still in progress.
    InFlight,
    /// The key was used for another request.
    Mismatch,
}

/// The idempotency store could not be used: PostgreSQL failed (retriable), or it holds
/// an event that no longer decodes (not retriable: a bug or a manual edit).
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("the idempotency keys in PostgreSQL could not be read or written: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the event stored under an idempotency key does not decode: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl IdempotencyError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// A key as the client sent it: a structured-field string (`"…"`) or the bare text,
/// 1 to 255 visible ASCII characters.
pub fn parse_key(header: &str) -> Option<String> {
    let header = header.trim();
    let key = header
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(header);
    let valid = (1..=MAX_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'"');
    valid.then(|| key.to_string())
}

#[derive(Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
    lease: Duration,
}

impl IdempotencyStore {
    /// Keys in `pool`; a request holds its key for `lease`, which must outlast the
    /// publish timeout, so that no retry takes over a publish still in progress.
    pub fn new(pool: PgPool, lease: Duration) -> Self {
        Self { pool, lease }
    }

    /// Takes `key` for `request` of `user`, which is about to publish `event`.
    pub async fn claim(
        &self,
        user: UserId,
        key: &str,
        request: &serde_json::Value,
        event: &Envelope,
    ) -> Result<Claim, IdempotencyError> {
        let user = user.get() as i64;
        let lease_ms = self.lease.as_millis() as i64;
        let retention_s = RETENTION.as_secs() as i64;
        // New, or older than the retention: ours.
        let fresh = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request, event, lease_until) \
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond') \
             ON CONFLICT (user_id, key) DO UPDATE \
               SET request = EXCLUDED.request, event = EXCLUDED.event, \
                   lease_until = EXCLUDED.lease_until, created_at = now(), \
                   status = NULL, response = NULL \
             WHERE idempotency_keys.created_at < now() - $6 * interval '1 second'",
        )
        .bind(user)
        .bind(key)
        .bind(request)
        .bind(serde_json::to_value(event)?)
        .bind(lease_ms)
        .bind(retention_s)
        .execute(&self.pool)
        .await?;
        if fresh.rows_affected() == 1 {
            return Ok(Claim::Fresh);
        }
        let row: Option<(
            serde_json::Value,
            Option<i32>,
            Option<serde_json::Value>,
            bool,
        )> = sqlx::query_as(
            "SELECT request, status, response, lease_until > now() \
                 FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some((stored, status, response, leased)) = row else {
            // Swept between the two statements, which only a race with the retention
            // sweep does: the client's retry claims it afresh.
            return Ok(Claim::InFlight);
        };
        if stored != *request {
            return Ok(Claim::Mismatch);
        }
        if let (Some(status), Some(body)) = (status, response) {
            return Ok(Claim::Answered {
                status: u16::try_from(status).unwrap_or(500),
                body,
            });
        }
        if leased {
            return Ok(Claim::InFlight);
        }
        // The lease expired: take it over, unless another retry just did.
        let taken: Option<(serde_json::Value,)> = sqlx::query_as(
            "UPDATE idempotency_keys SET lease_until = now() + $3 * interval '1 millisecond' \
             WHERE user_id = $1 AND key = $2 AND status IS NULL AND lease_until <= now() \
             RETURNING event",
        )
        .bind(user)
        .bind(key)
        .bind(lease_ms)
        .fetch_optional(&self.pool)
        .await?;
        match taken {
            Some((event,)) => Ok(Claim::Resume(Box::new(serde_json::from_value(event)?))),
            None => Ok(Claim::InFlight),
        }
    }

    /// Stores the answer to the key's request.
    pub async fn answer(
        &self,
        user: UserId,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), IdempotencyError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, response = $4 \
             WHERE user_id = $1 AND key = $2",
        )
        .bind(user.get() as i64)
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a key whose request was refused before it published anything (a 404), so
    /// that the key stays free for the request the client meant.
    pub async fn forget(&self, user: UserId, key: &str) -> Result<(), IdempotencyError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status IS NULL",
        )
        .bind(user.get() as i64)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends the lease of a request whose publish failed, so that a retry publishes its
    /// event at once.
    pub async fn release(&self, user: UserId, key: &str) -> Result<(), IdempotencyError> {
        sqlx::query(
            "UPDATE idempotency_keys SET lease_until = now() \
             WHERE user_id = $1 AND key = $2 AND status IS NULL",
        )
        .bind(user.get() as i64)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets keys older than [`RETENTION`]; returns how many.
    pub async fn sweep(&self) -> Result<u64, IdempotencyError> {
        let swept = sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second'",
        )
        .bind(RETENTION.as_secs() as i64)
        .execute(&self.pool)
        .await?;
        Ok(swept.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_key;

    #[test]
    fn keys_are_sf_strings_or_bare_visible_ascii() {
        assert_eq!(
            parse_key("\"8e03978e-40d5\"").as_deref(),
            Some("8e03978e-40d5")
        );
        assert_eq!(parse_key(" abc ").as_deref(), Some("abc"));
        for bad in ["", "\"\"", "a b", "é", &"k".repeat(256), "\"unterminated"] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
    }
}
