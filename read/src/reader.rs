//! The read side of feeds: Redis first (one round trip for a cached page), PostgreSQL
//! behind it for what Redis lacks.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use feedstream_core::event::{Envelope, EventBody};
use feedstream_core::ids::{PostId, UserId};
use serde::Serialize;
use sqlx::PgPool;

use crate::cache::{Body, CachedEntries, CachedMerged, CachedPost, FeedCache};
use crate::live::{LiveFeed, LiveOptions, Opened};
use crate::range::IdRange;
use crate::rate_step::{RateStep, StepAnswer};
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedPage {
    pub posts: Vec<FeedPost>,
    /// Newest and oldest id the page covered, for its `prev` and `next` links. They can
    /// be set while `posts` is shorter than the limit (or empty): an entry whose post
    /// was deleted, or has not reached PostgreSQL yet, is skipped but still passed.
    pub newest: Option<PostId>,
    pub oldest: Option<PostId>,
}

/// A page read with its rate limit step: no page when the limit refused the read; no
/// answer when there was no step or Redis did not answer.
#[derive(Debug, Clone)]
pub struct CountedPage {
    pub page: Option<FeedPage>,
    pub answer: Option<StepAnswer>,
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

    /// A page of `user`'s feed: the user's entries merged with the posts merged on read
    /// of the authors the user follows and with the user's own posts accepted lately
    /// (read-your-writes), hydrated. A page whose parts Redis holds is one round trip to
    /// Redis; PostgreSQL serves what Redis lacks, and fills it.
    pub async fn page(
        &self,
        user: UserId,
        request: &PageRequest,
    ) -> Result<FeedPage, StorageError> {
        let counted = self.counted_page(user, request, None).await?;
        Ok(counted.page.unwrap_or_default())
    }

    /// A page as [`Self::page`] reads it, its read counted against `step`'s rate limit
    /// in the same Redis call: no page if the limit refuses it. Without Redis the page
    /// comes from PostgreSQL and the step is not taken (the limiter fails open).
    pub async fn counted_page(
        &self,
        user: UserId,
        request: &PageRequest,
        step: Option<&RateStep>,
    ) -> Result<CountedPage, StorageError> {
        let range = IdRange::of(request);
        let owner = user.as_i64();
        let (cached, answer) = match self.cache.page(owner, &range, step).await {
            Ok((_, Some(answer))) if !answer.allowed => {
                return Ok(CountedPage {
                    page: None,
                    answer: Some(answer),
                })
            }
            Ok((cached, answer)) => (Some(cached), answer),
            Err(error) => {
                self.metrics.cache_errors.inc();
                tracing::warn!(%error, "Redis unavailable; reading the feed from PostgreSQL");
                (None, None)
            }
        };
        let mut from_redis = false;
        let (ids, posts) = match cached {
            Some(cached) => {
                let parts_cached =
                    matches!(cached.entries, CachedEntries::Hit { complete: true, .. })
                        && matches!(cached.merged, CachedMerged::Complete { .. });
                let (entries, merged) = tokio::try_join!(
                    self.entry_ids(owner, &range, cached.entries),
                    self.merged_ids(owner, &range, cached.merged)
                )?;
                let ids = range.merge([entries, merged, cached.pending]);
                from_redis = parts_cached && ids.iter().all(|id| cached.bodies.contains_key(id));
                let posts = self.hydrate(&ids, cached.bodies).await?;
                (ids, posts)
            }
            None => {
                let (entries, merged) = tokio::try_join!(
                    self.stored_entry_ids(owner, &range),
                    self.stored_merged_ids(owner, &range)
                )?;
                let ids = range.merge([entries, merged, Vec::new()]);
                let stored = self.stored_posts(&ids).await?;
                let posts = in_order(&ids, stored.into_iter().collect());
                (ids, posts)
            }
        };
        if from_redis {
            self.metrics.cache_hits.inc();
        } else {
            self.metrics.cache_misses.inc();
        }
        let id =
            |value: Option<&i64>| value.and_then(|v| PostId::new(u64::try_from(*v).ok()?).ok());
        Ok(CountedPage {
            page: Some(FeedPage {
                posts,
                newest: id(ids.first()),
                oldest: id(ids.last()),
            }),
            answer,
        })
    }

    /// Remembers what an event the API accepted means for its author's reads before
    /// the pipeline has materialized it: a new post shows in the author's feed, a
    /// deleted one in no feed. Follows wait for the pipeline (their backfill is
    /// fan-out).
    pub async fn note_accepted(&self, event: &Envelope) -> Result<(), StorageError> {
        match &event.body {
            EventBody::PostCreated { post_id, content } => {
                self.cache
                    .note_accepted(&CachedPost {
                        post_id: post_id.as_i64(),
                        author: event.actor_id.as_i64(),
                        created_ms: event.timestamp,
                        content: content.clone(),
                    })
                    .await
            }
            EventBody::PostDeleted { post_id } => {
                self.cache
                    .note_deleted(event.actor_id.as_i64(), post_id.as_i64())
                    .await
            }
            EventBody::Followed { .. } | EventBody::Unfollowed { .. } => Ok(()),
        }
    }

    /// Listens to `owner`'s live feed (see [`crate::live`]), unless it has as many
    /// listeners as it may.
    pub async fn open_live(
        &self,
        owner: UserId,
        options: LiveOptions,
    ) -> Result<Opened, StorageError> {
        let authors = self.followed_merged_authors(owner).await?;
        self.cache.open_live(owner.as_i64(), authors, options).await
    }

    /// Brings a listener's registrations up to its owner's current follows; true if
    /// the followed authors of merged posts changed.
    pub async fn follow_live_authors(
        &self,
        owner: UserId,
        feed: &mut LiveFeed,
    ) -> Result<bool, StorageError> {
        let authors = self.followed_merged_authors(owner).await?;
        feed.follow_authors(authors).await
    }

    /// The authors `owner` follows that have posts merged on read.
    async fn followed_merged_authors(&self, owner: UserId) -> Result<Vec<i64>, StorageError> {
        sqlx::query_scalar(
            "SELECT f.author_id FROM follows f WHERE f.user_id = $1 \
               AND EXISTS (SELECT 1 FROM merged_posts m WHERE m.author_id = f.author_id)",
        )
        .bind(owner.as_i64())
        .fetch_all(&self.pool)
        .await
        .map_err(|source| self.pg_error(source))
    }

    /// The live posts of `ids`, in that order: Redis's bodies, PostgreSQL's for the
    /// others.
    pub async fn posts(&self, ids: &[i64]) -> Result<Vec<FeedPost>, StorageError> {
        let cached = match self.cache.bodies(ids).await {
            Ok(cached) => cached,
            Err(error) => {
                self.metrics.cache_errors.inc();
                tracing::warn!(%error, "Redis unavailable; reading post bodies from PostgreSQL");
                HashMap::new()
            }
        };
        self.hydrate(ids, cached).await
    }

    /// Whether `author` may delete `post_id`: it is theirs and live, in PostgreSQL or
    /// among the posts they wrote lately that the pipeline has not stored yet (their
    /// feed shows those already).
    pub async fn deletable(&self, author: UserId, post_id: PostId) -> Result<bool, StorageError> {
        if self.live_post_author(post_id).await? == Some(author) {
            return Ok(true);
        }
        match self
            .cache
            .is_pending(author.as_i64(), post_id.as_i64())
            .await
        {
            Ok(pending) => Ok(pending),
            Err(error) => {
                self.metrics.cache_errors.inc();
                tracing::warn!(%error, "Redis unavailable; only stored posts can be deleted");
                Ok(false)
            }
        }
    }

    /// The author of `post_id` unless it is unknown or deleted.
    async fn live_post_author(&self, post_id: PostId) -> Result<Option<UserId>, StorageError> {
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
    async fn entry_ids(
        &self,
        owner: i64,
        range: &IdRange,
        cached: CachedEntries,
    ) -> Result<Vec<i64>, StorageError> {
        match cached {
            CachedEntries::Hit {
                post_ids,
                complete: true,
            } => Ok(post_ids),
            // Beyond the cached slice: the older pages of long feeds.
            CachedEntries::Hit {
                complete: false, ..
            } => self.stored_entry_ids(owner, range).await,
            CachedEntries::Miss { generation } => {
                let newest_slice = IdRange {
                    upper: None,
                    lower: None,
                    oldest_first: false,
                    limit: self.cache.cap(),
                };
                let newest = self.stored_entry_ids(owner, &newest_slice).await?;
                if let Err(error) = self.cache.fill_feed(owner, &generation, &newest).await {
                    self.cache_error(&error, owner, "feed");
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
        }
    }

    /// Posts merged on read into the range: from Redis when it holds the follows and
    /// every followed author's merged posts of the range, else from PostgreSQL, filling
    /// what Redis lacks.
    async fn merged_ids(
        &self,
        owner: i64,
        range: &IdRange,
        cached: CachedMerged,
    ) -> Result<Vec<i64>, StorageError> {
        match cached {
            CachedMerged::Complete { mut post_ids } => {
                post_ids.sort_unstable();
                post_ids.dedup();
                if !range.oldest_first {
                    post_ids.reverse();
                }
                Ok(post_ids)
            }
            CachedMerged::Incomplete { unknown } => {
                if !unknown.is_empty() {
                    self.fill_merged(&unknown).await?;
                }
                self.stored_merged_ids(owner, range).await
            }
            CachedMerged::Uncached { follows, authors } => {
                if let Some(generation) = follows {
                    self.fill_follows(owner, &generation).await?;
                }
                if let Some(generation) = authors {
                    self.fill_merged_authors(&generation).await?;
                }
                self.stored_merged_ids(owner, range).await
            }
        }
    }

    async fn fill_follows(&self, owner: i64, generation: &str) -> Result<(), StorageError> {
        self.metrics.postgres_queries.inc();
        let follows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT author_id, min_post_id FROM follows WHERE user_id = $1")
                .bind(owner)
                .fetch_all(&self.pool)
                .await
                .map_err(|source| self.pg_error(source))?;
        if let Err(error) = self.cache.fill_follows(owner, generation, &follows).await {
            self.cache_error(&error, owner, "follows");
        }
        Ok(())
    }

    /// Caches the set of authors with merged posts: rare (after Redis lost it), and a
    /// scan of `merged_posts`' key.
    async fn fill_merged_authors(&self, generation: &str) -> Result<(), StorageError> {
        self.metrics.postgres_queries.inc();
        let authors: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT author_id FROM merged_posts")
            .fetch_all(&self.pool)
            .await
            .map_err(|source| self.pg_error(source))?;
        if let Err(error) = self.cache.fill_merged_authors(generation, &authors).await {
            self.metrics.cache_errors.inc();
            tracing::warn!(%error, "could not fill the cache of authors with merged posts");
        }
        Ok(())
    }

    /// Caches the newest merged posts of `authors` (each with the generation read).
    async fn fill_merged(&self, authors: &[(i64, String)]) -> Result<(), StorageError> {
        let ids: Vec<i64> = authors.iter().map(|(author, _)| *author).collect();
        self.metrics.postgres_queries.inc();
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT author_id, post_id FROM ( \
               SELECT author_id, post_id, \
                 row_number() OVER (PARTITION BY author_id ORDER BY post_id DESC) AS n \
               FROM merged_posts WHERE author_id = ANY($1)) newest \
             WHERE n <= $2 ORDER BY author_id, post_id DESC",
        )
        .bind(&ids)
        .bind(self.cache.cap() as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| self.pg_error(source))?;
        let mut newest: HashMap<i64, Vec<i64>> = HashMap::new();
        for (author, post_id) in rows {
            newest.entry(author).or_default().push(post_id);
        }
        for (author, generation) in authors {
            let posts = newest.remove(author).unwrap_or_default();
            if let Err(error) = self.cache.fill_merged(*author, generation, &posts).await {
                self.cache_error(&error, *author, "merged posts");
                break;
            }
        }
        Ok(())
    }

    fn cache_error(&self, error: &StorageError, user: i64, what: &str) {
        self.metrics.cache_errors.inc();
        tracing::warn!(%error, user, "could not fill the cache of {what}");
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
    async fn stored_merged_ids(
        &self,
        owner: i64,
        range: &IdRange,
    ) -> Result<Vec<i64>, StorageError> {
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
        self.metrics.postgres_queries.inc();
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
    /// different partitions). Bodies Redis gave are used; the others are read from
    /// PostgreSQL and cached.
    async fn hydrate(
        &self,
        ids: &[i64],
        mut cached: HashMap<i64, Body>,
    ) -> Result<Vec<FeedPost>, StorageError> {
        let missing: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !cached.contains_key(id))
            .collect();
        if !missing.is_empty() {
            let stored = self.stored_posts(&missing).await?;
            if let Err(error) = self.cache.fill_posts(&stored).await {
                self.metrics.cache_errors.inc();
                tracing::warn!(%error, "could not cache post bodies");
            }
            cached.extend(stored);
        }
        Ok(in_order(ids, cached))
    }

    /// The posts of `ids` PostgreSQL has, deleted ones as `None`.
    async fn stored_posts(&self, ids: &[i64]) -> Result<Vec<(i64, Body)>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.metrics.postgres_queries.inc();
        let rows: Vec<(i64, i64, String, DateTime<Utc>, bool)> = sqlx::query_as(
            "SELECT post_id, author_id, content, created_at, deleted_at IS NOT NULL FROM posts \
             WHERE post_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| self.pg_error(source))?;
        Ok(rows
            .into_iter()
            .map(|(post_id, author, content, created_at, deleted)| {
                let body = (!deleted).then(|| CachedPost {
                    post_id,
                    author,
                    created_ms: created_at.timestamp_millis(),
                    content,
                });
                (post_id, body)
            })
            .collect())
    }
}

/// The live posts of `ids` among `bodies`, in the order of `ids`.
fn in_order(ids: &[i64], mut bodies: HashMap<i64, Body>) -> Vec<FeedPost> {
    ids.iter()
        .filter_map(|id| {
            let post = bodies.remove(id)??;
            Some(FeedPost {
                id: PostId::new(u64::try_from(post.post_id).ok()?).ok()?,
                author_id: UserId::new(u64::try_from(post.author).ok()?).ok()?,
                content: post.content,
                created_at: Utc.timestamp_millis_opt(post.created_ms).single()?,
            })
        })
        .collect()
}
