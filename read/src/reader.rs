//! The read side of feeds: Redis first, PostgreSQL behind it, posts hydrated from
//! PostgreSQL.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use feedstream_core::ids::{PostId, UserId};
use serde::Serialize;
use sqlx::PgPool;

use crate::cache::{CachedPage, FeedCache};
use crate::range::IdRange;
use crate::redact::redact;
use crate::{ReadMetrics, StorageError};

/// A post as a feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedPost {
    pub id: PostId,
    pub author_id: UserId,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// Which part of a feed to read, with Mastodon's cursors. Pages are newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Only posts older than this (exclusive): the next page.
    pub max_id: Option<PostId>,
    /// Only posts newer than this (exclusive), the newest of them.
    pub since_id: Option<PostId>,
    /// Only posts newer than this (exclusive), the oldest of them: the page just newer
    /// than the cursor (the previous page).
    pub min_id: Option<PostId>,
    pub limit: usize,
}

/// A page of a feed and its cursors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub posts: Vec<FeedPost>,
    /// Newest and oldest id the page covered, for its `prev` and `next` links. They can
    /// be set while `posts` is shorter than the limit (or empty): an entry whose post
    /// was deleted, or has not reached PostgreSQL yet, is skipped but still passed.
    pub newest: Option<PostId>,
    pub oldest: Option<PostId>,
}

/// Reads pages of feeds.
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
            pg_target: redact(database_url),
            cache,
            metrics,
        }
    }

    /// A page of `user`'s feed: the user's entries (Redis, or PostgreSQL behind it)
    /// merged with the posts merged on read of the authors the user follows.
    pub async fn page(
        &self,
        user: UserId,
        request: &PageRequest,
    ) -> Result<FeedPage, StorageError> {
        let range = IdRange::of(request);
        let owner = user.as_i64();
        let (entries, merged) = tokio::try_join!(
            self.entry_ids(owner, &range),
            self.merged_ids(owner, &range)
        )?;
        let ids = range.merge([entries, merged]);
        let posts = self.hydrate(&ids).await?;
        let id =
            |value: Option<&i64>| value.and_then(|v| PostId::new(u64::try_from(*v).ok()?).ok());
        Ok(FeedPage {
            posts,
            newest: id(ids.first()),
            oldest: id(ids.last()),
        })
    }

    /// The author of `post_id` unless it is unknown or deleted.
    pub async fn live_post_author(&self, post_id: PostId) -> Result<Option<UserId>, StorageError> {
        let author: Option<i64> = sqlx::query_scalar(
            "SELECT author_id FROM posts WHERE post_id = $1 AND deleted_at IS NULL",
        )
        .bind(post_id.as_i64())
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| self.pg_error(source))?;
        Ok(author.and_then(|id| UserId::new(u64::try_from(id).ok()?).ok()))
    }

    /// Whether PostgreSQL answers, for health checks.
    pub async fn ping_postgres(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|source| self.pg_error(source))
    }

    pub async fn ping_redis(&self) -> Result<(), StorageError> {
        self.cache.ping().await
    }

    fn pg_error(&self, source: sqlx::Error) -> StorageError {
        StorageError::Postgres {
            target: self.pg_target.clone(),
            source,
        }
    }

    /// The user's own entries in the range: from Redis when the cached slice covers
    /// it, else from PostgreSQL (filling Redis on a miss).
    async fn entry_ids(&self, owner: i64, range: &IdRange) -> Result<Vec<i64>, StorageError> {
        match self.cache.page(owner, range).await {
            Ok(CachedPage::Hit {
                post_ids,
                complete: true,
            }) => {
                self.metrics.cache_hits.inc();
                Ok(post_ids)
            }
            Ok(CachedPage::Hit {
                complete: false, ..
            }) => {
                // Beyond the cached slice: the older pages of long feeds.
                self.metrics.cache_misses.inc();
                self.stored_entry_ids(owner, range).await
            }
            Ok(CachedPage::Miss { generation }) => {
                self.metrics.cache_misses.inc();
                let newest_slice = IdRange {
                    upper: None,
                    lower: None,
                    oldest_first: false,
                    limit: self.cache.cap(),
                };
                let newest = self.stored_entry_ids(owner, &newest_slice).await?;
                if let Err(error) = self.cache.fill(owner, &generation, &newest).await {
                    self.metrics.cache_errors.inc();
                    tracing::warn!(%error, user = owner, "could not fill the feed cache");
                }
                // The newest slice answers the first page only if it holds the whole
                // page: a cap below the limit leaves entries under the slice that a
                // merged-on-read post older than them would otherwise let the page
                // (and its `next` link) skip.
                let slice_holds_page =
                    newest.len() >= range.limit || newest.len() < self.cache.cap();
                if range.is_first_page() && slice_holds_page {
                    Ok(newest.into_iter().take(range.limit).collect())
                } else {
                    self.stored_entry_ids(owner, range).await
                }
            }
            Err(error) => {
                self.metrics.cache_errors.inc();
                tracing::warn!(%error, "Redis unavailable; reading the feed from PostgreSQL");
                self.stored_entry_ids(owner, range).await
            }
        }
    }

    async fn stored_entry_ids(
        &self,
        owner: i64,
        range: &IdRange,
    ) -> Result<Vec<i64>, StorageError> {
        self.ids_in_range(
            "SELECT post_id FROM feeds WHERE user_id = $1 AND post_id < $2 AND post_id > $3 \
             ORDER BY post_id",
            owner,
            range,
        )
        .await
    }

    /// Posts merged on read of the authors `owner` follows, at or above each follow's
    /// floor.
    async fn merged_ids(&self, owner: i64, range: &IdRange) -> Result<Vec<i64>, StorageError> {
        self.ids_in_range(
            "SELECT m.post_id FROM follows f \
             JOIN merged_posts m ON m.author_id = f.author_id AND m.post_id >= f.min_post_id \
             WHERE f.user_id = $1 AND m.post_id < $2 AND m.post_id > $3 \
             ORDER BY m.post_id",
            owner,
            range,
        )
        .await
    }

    /// Runs `select` (binding `$1` owner, `$2`/`$3` the exclusive upper/lower bounds,
    /// ending in `ORDER BY` an id column) in the range's direction, up to its limit.
    async fn ids_in_range(
        &self,
        select: &str,
        owner: i64,
        range: &IdRange,
    ) -> Result<Vec<i64>, StorageError> {
        let direction = if range.oldest_first { "ASC" } else { "DESC" };
        sqlx::query_scalar(&format!("{select} {direction} LIMIT $4"))
            .bind(owner)
            .bind(range.upper.unwrap_or(i64::MAX))
            .bind(range.lower.unwrap_or(0))
            .bind(range.limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| self.pg_error(source))
    }

    /// The posts of `ids`, in that order, leaving out deleted ones and those whose
    /// row has not reached PostgreSQL yet (the sink writes posts and feed entries from
    /// different partitions).
    async fn hydrate(&self, ids: &[i64]) -> Result<Vec<FeedPost>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i64, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT post_id, author_id, content, created_at FROM posts \
             WHERE post_id = ANY($1) AND deleted_at IS NULL",
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
