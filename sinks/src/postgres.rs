//! PostgreSQL: the source of truth of posts and feeds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use feedstream_topology::event::FeedChange;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::SinkError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that connects lazily, so a process starts (and reports PostgreSQL as down in
/// its health) while the database is unreachable.
pub fn connect_postgres(url: &str) -> Result<PgPool, SinkError> {
    let options: PgConnectOptions = url.parse().map_err(|source| SinkError::Postgres {
        target: redact(url),
        source,
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

/// Applies the migrations in `migrations/` (idempotent; concurrent runs serialize on
/// sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), SinkError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A post as the sink stores it.
#[derive(Debug, Clone)]
pub(crate) struct PostRow {
    pub post_id: i64,
    pub author_id: i64,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// One Redis operation a PostgreSQL write implies, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheOp {
    Add { owner: i64, post_id: i64 },
    Remove { owner: i64, post_id: i64 },
}

/// Writes one batch in one transaction: posts first, then feed changes in their order
/// (consecutive additions in one statement). Returns the cache operations to mirror.
pub(crate) async fn write_batch(
    pool: &PgPool,
    target: &str,
    posts: &[PostRow],
    changes: &[FeedChange],
) -> Result<Vec<CacheOp>, SinkError> {
    let error = |source| SinkError::Postgres {
        target: target.to_string(),
        source,
    };
    let mut tx = pool.begin().await.map_err(error)?;
    if !posts.is_empty() {
        insert_posts(&mut tx, posts).await.map_err(error)?;
    }
    let mut ops = Vec::with_capacity(changes.len());
    let mut additions: Vec<(i64, i64, i64)> = Vec::new();
    for change in changes {
        match change {
            FeedChange::EntryAdded {
                feed_owner_id,
                post_id,
                author_id,
            } => {
                additions.push((feed_owner_id.as_i64(), post_id.as_i64(), author_id.as_i64()));
                ops.push(CacheOp::Add {
                    owner: feed_owner_id.as_i64(),
                    post_id: post_id.as_i64(),
                });
            }
            FeedChange::AuthorRemoved {
                feed_owner_id,
                author_id,
            } => {
                insert_entries(&mut tx, &std::mem::take(&mut additions))
                    .await
                    .map_err(error)?;
                let removed: Vec<i64> = sqlx::query_scalar(
                    "DELETE FROM feeds WHERE user_id = $1 AND author_id = $2 RETURNING post_id",
                )
                .bind(feed_owner_id.as_i64())
                .bind(author_id.as_i64())
                .fetch_all(&mut *tx)
                .await
                .map_err(error)?;
                ops.extend(removed.into_iter().map(|post_id| CacheOp::Remove {
                    owner: feed_owner_id.as_i64(),
                    post_id,
                }));
            }
        }
    }
    insert_entries(&mut tx, &additions).await.map_err(error)?;
    tx.commit().await.map_err(error)?;
    Ok(ops)
}

async fn insert_posts(
    tx: &mut Transaction<'_, Postgres>,
    posts: &[PostRow],
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = posts.iter().map(|p| p.post_id).collect();
    let authors: Vec<i64> = posts.iter().map(|p| p.author_id).collect();
    let contents: Vec<&str> = posts.iter().map(|p| p.content.as_str()).collect();
    let created: Vec<DateTime<Utc>> = posts.iter().map(|p| p.created_at).collect();
    sqlx::query(
        "INSERT INTO posts (post_id, author_id, content, created_at) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[]) \
         ON CONFLICT (post_id) DO NOTHING",
    )
    .bind(ids)
    .bind(authors)
    .bind(contents)
    .bind(created)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

async fn insert_entries(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[(i64, i64, i64)],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let owners: Vec<i64> = entries.iter().map(|e| e.0).collect();
    let posts: Vec<i64> = entries.iter().map(|e| e.1).collect();
    let authors: Vec<i64> = entries.iter().map(|e| e.2).collect();
    sqlx::query(
        "INSERT INTO feeds (user_id, post_id, author_id) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) \
         ON CONFLICT (user_id, post_id) DO NOTHING",
    )
    .bind(owners)
    .bind(posts)
    .bind(authors)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
