//! The read side of feeds: Redis first, PostgreSQL behind it, posts hydrated from
//! PostgreSQL.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use feedstream_topology::ids::{PostId, UserId};
use serde::Serialize;
use sqlx::PgPool;

use crate::cache::{CachedPage, FeedCache};
use crate::{ReadMetrics, SinkError};

/// A post as a feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedPost {
    pub id: PostId,
    pub author_id: UserId,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct FeedReader {
    pool: PgPool,
    pg_target: String,
    cache: FeedCache,
    metrics: ReadMetrics,
}

impl FeedReader {
    pub fn new(pool: PgPool, database_url: &str, cache: FeedCache, metrics: ReadMetrics) -> Self {
        Self {
            pool,
            pg_target: crate::postgres::redact(database_url),
            cache,
            metrics,
        }
    }

    /// Up to `limit` posts of `user`'s feed with ids below `max_id`, newest first.
    ///
    /// Entries whose post row has not reached PostgreSQL yet (the sink writes posts and
    /// feed entries from different partitions) are left out until it has.
    pub async fn page(
        &self,
        user: UserId,
        max_id: Option<PostId>,
        limit: usize,
    ) -> Result<Vec<FeedPost>, SinkError> {
        let owner = user.as_i64();
        let max_id = max_id.map(PostId::as_i64);
        let ids = match self.cache.page(owner, max_id, limit).await {
            Ok(CachedPage::Hit {
                post_ids,
                complete: true,
            }) => {
                self.metrics.cache_hits.inc();
                post_ids
            }
            Ok(CachedPage::Hit {
                complete: false, ..
            }) => {
                self.metrics.cache_misses.inc();
                self.entry_ids(owner, max_id, limit).await?
            }
            Ok(CachedPage::Miss { generation }) => {
                self.metrics.cache_misses.inc();
                let newest = self.entry_ids(owner, None, self.cache.cap()).await?;
                if let Err(error) = self.cache.fill(owner, &generation, &newest).await {
                    self.metrics.cache_errors.inc();
                    tracing::warn!(%error, user = %user, "could not fill the feed cache");
                }
                match max_id {
                    None => newest.into_iter().take(limit).collect(),
                    Some(_) => self.entry_ids(owner, max_id, limit).await?,
                }
            }
            Err(error) => {
                self.metrics.cache_errors.inc();
                tracing::warn!(%error, "Redis unavailable; reading the feed from PostgreSQL");
                self.entry_ids(owner, max_id, limit).await?
            }
        };
        self.hydrate(&ids).await
    }

    /// Whether PostgreSQL answers, for health checks.
    pub async fn ping_postgres(&self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| self.pg_error(source))
    }

    pub async fn ping_redis(&self) -> Result<(), SinkError> {
        self.cache.ping().await
    }

    fn pg_error(&self, source: sqlx::Error) -> SinkError {
        SinkError::Postgres {
            target: self.pg_target.clone(),
            source,
        }
    }

    async fn entry_ids(
        &self,
        owner: i64,
        max_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, SinkError> {
        sqlx::query_scalar(
            "SELECT post_id FROM feeds WHERE user_id = $1 AND post_id < $2 ORDER BY post_id DESC LIMIT $3",
        )
        .bind(owner)
        .bind(max_id.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| self.pg_error(source))
    }

    async fn hydrate(&self, ids: &[i64]) -> Result<Vec<FeedPost>, SinkError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i64, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT post_id, author_id, content, created_at FROM posts WHERE post_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| self.pg_error(source))?;
        let mut by_id: HashMap<i64, (i64, String, DateTime<Utc>)> = rows
            .into_iter()
            .map(|(id, author, content, created)| (id, (author, content, created)))
            .collect();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let (author, content, created_at) = by_id.remove(id)?;
                Some(FeedPost {
                    id: PostId::new(u64::try_from(*id).ok()?).ok()?,
                    author_id: UserId::new(u64::try_from(author).ok()?).ok()?,
                    content,
                    created_at,
                })
            })
            .collect())
    }
}
