//! The sink's writes to PostgreSQL, the source of truth of posts and feeds: one
//! transaction per batch.

use chrono::{DateTime, Utc};
use feedstream_core::event::FeedChange;
use feedstream_core::ids::PostId;
use sqlx::{PgPool, Postgres, Transaction};

use feedstream_read::{CacheOp, CachedPost, StorageError};

use crate::SinkError;

/// What the sink writes for one record of `post-events`.
#[derive(Debug, Clone)]
pub(crate) enum PostWrite {
    Created {
        post_id: i64,
        author_id: i64,
        content: String,
        created_at: DateTime<Utc>,
    },
    Deleted {
        post_id: i64,
        author_id: i64,
        deleted_at: DateTime<Utc>,
    },
}

/// Consecutive changes of one kind, written with one statement.
/// Rows are the statement's columns in order.
enum Run {
    /// [user, post, author]
    Added(Vec<[i64; 3]>),
    /// [user, post, author]
    Removed(Vec<[i64; 3]>),
    /// [user, author]
    AuthorsRemoved(Vec<[i64; 2]>),
    /// [user, author, min post id]
    FollowsStarted(Vec<[i64; 3]>),
    /// [author, post]
    Merged(Vec<[i64; 2]>),
}

impl Run {
    fn of(change: &FeedChange) -> Self {
        match change {
            FeedChange::EntryAdded {
                feed_owner_id,
                post_id,
                author_id,
            } => Run::Added(vec![[
                feed_owner_id.as_i64(),
                post_id.as_i64(),
                author_id.as_i64(),
            ]]),
            FeedChange::EntryRemoved {
                feed_owner_id,
                post_id,
                author_id,
            } => Run::Removed(vec![[
                feed_owner_id.as_i64(),
                post_id.as_i64(),
                author_id.as_i64(),
            ]]),
            FeedChange::AuthorRemoved {
                feed_owner_id,
                author_id,
            } => Run::AuthorsRemoved(vec![[feed_owner_id.as_i64(), author_id.as_i64()]]),
            FeedChange::FollowStarted {
                feed_owner_id,
                author_id,
                min_post_id,
            } => Run::FollowsStarted(vec![[
                feed_owner_id.as_i64(),
                author_id.as_i64(),
                min_post_id.map_or(0, PostId::as_i64),
            ]]),
            FeedChange::PostMergedOnRead { author_id, post_id } => {
                Run::Merged(vec![[author_id.as_i64(), post_id.as_i64()]])
            }
        }
    }

    /// Appends `next` if it is of the same kind; otherwise hands it back.
    fn absorb(&mut self, next: Run) -> Option<Run> {
        match (self, next) {
            (Run::Added(rows), Run::Added(more))
            | (Run::Removed(rows), Run::Removed(more))
            | (Run::FollowsStarted(rows), Run::FollowsStarted(more)) => rows.extend(more),
            (Run::AuthorsRemoved(rows), Run::AuthorsRemoved(more))
            | (Run::Merged(rows), Run::Merged(more)) => rows.extend(more),
            (_, next) => return Some(next),
        }
        None
    }
}

/// Writes one batch in one transaction: posts first, then feed changes in their order
/// (consecutive changes of one kind in one statement). Returns the cache operations to
/// mirror.
pub(crate) async fn write_batch(
    pool: &PgPool,
    target: &str,
    posts: &[&PostWrite],
    changes: &[&FeedChange],
) -> Result<Vec<CacheOp>, SinkError> {
    let error = |source| {
        SinkError::from(StorageError::Postgres {
            target: target.to_string(),
            source,
        })
    };
    let mut tx = pool.begin().await.map_err(error)?;
    let mut ops = Vec::with_capacity(posts.len() + changes.len());
    write_posts(&mut tx, posts, &mut ops).await.map_err(error)?;
    let mut runs: Vec<Run> = Vec::new();
    for change in changes {
        let run = Run::of(change);
        match runs.last_mut() {
            Some(last) => {
                if let Some(run) = last.absorb(run) {
                    runs.push(run);
                }
            }
            None => runs.push(run),
        }
    }
    for run in runs {
        write_run(&mut tx, run, &mut ops).await.map_err(error)?;
    }
    tx.commit().await.map_err(error)?;
    Ok(ops)
}

/// Creations before deletions: within a partition a post is created before it is
/// deleted, and a batch may hold both.
///
/// Returns the bodies to cache: every created post still live, and every deleted one
/// (a replay too: Redis may have missed it before a crash).
async fn write_posts(
    tx: &mut Transaction<'_, Postgres>,
    posts: &[&PostWrite],
    ops: &mut Vec<CacheOp>,
) -> Result<(), sqlx::Error> {
    let mut created_ids = Vec::new();
    let mut created_authors = Vec::new();
    let mut contents: Vec<&str> = Vec::new();
    let mut created_at = Vec::new();
    let mut deleted_ids = Vec::new();
    let mut deleted_authors = Vec::new();
    let mut deleted_at = Vec::new();
    for post in posts {
        match post {
            PostWrite::Created {
                post_id,
                author_id,
                content,
                created_at: at,
            } => {
                created_ids.push(*post_id);
                created_authors.push(*author_id);
                contents.push(content);
                created_at.push(*at);
            }
            PostWrite::Deleted {
                post_id,
                author_id,
                deleted_at: at,
            } => {
                deleted_ids.push(*post_id);
                deleted_authors.push(*author_id);
                deleted_at.push(*at);
            }
        }
    }
    if !created_ids.is_empty() {
        sqlx::query(
            "INSERT INTO posts (post_id, author_id, content, created_at) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[]) \
             ON CONFLICT (post_id) DO NOTHING",
        )
        .bind(&created_ids)
        .bind(created_authors)
        .bind(contents)
        .bind(created_at)
        .execute(&mut **tx)
        .await?;
        let live: Vec<(i64, i64, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT post_id, author_id, content, created_at FROM posts \
             WHERE post_id = ANY($1) AND deleted_at IS NULL",
        )
        .bind(&created_ids)
        .fetch_all(&mut **tx)
        .await?;
        ops.extend(
            live.into_iter()
                .map(|(post_id, author, content, created_at)| {
                    CacheOp::Post(CachedPost {
                        post_id,
                        author,
                        created_ms: created_at.timestamp_millis(),
                        content,
                    })
                }),
        );
    }
    if !deleted_ids.is_empty() {
        // Only the author's own post; its content goes with it.
        sqlx::query(
            "UPDATE posts SET deleted_at = d.deleted_at, content = '' \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::timestamptz[]) AS d(post_id, author_id, deleted_at) \
             WHERE posts.post_id = d.post_id AND posts.author_id = d.author_id \
               AND posts.deleted_at IS NULL",
        )
        .bind(&deleted_ids)
        .bind(deleted_authors)
        .bind(deleted_at)
        .execute(&mut **tx)
        .await?;
        let deleted: Vec<i64> = sqlx::query_scalar(
            "SELECT post_id FROM posts WHERE post_id = ANY($1) AND deleted_at IS NOT NULL",
        )
        .bind(&deleted_ids)
        .fetch_all(&mut **tx)
        .await?;
        ops.extend(
            deleted
                .into_iter()
                .map(|post_id| CacheOp::PostDeleted { post_id }),
        );
    }
    Ok(())
}

fn columns<const N: usize>(rows: &[[i64; N]]) -> [Vec<i64>; N] {
    std::array::from_fn(|column| rows.iter().map(|row| row[column]).collect())
}

async fn write_run(
    tx: &mut Transaction<'_, Postgres>,
    run: Run,
    ops: &mut Vec<CacheOp>,
) -> Result<(), sqlx::Error> {
    match run {
        Run::Added(rows) => {
            let [owners, posts, authors] = columns(&rows);
            // Entries of deleted posts are not written (a replay or a late backfill can
            // carry them); every entry that passes is mirrored, even one PostgreSQL
            // already had, because Redis may have missed it before a crash.
            let kept: Vec<(i64, i64)> = sqlx::query_as(
                "WITH e AS ( \
                   SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS e(user_id, post_id, author_id) \
                   WHERE NOT EXISTS (SELECT 1 FROM posts p WHERE p.post_id = e.post_id AND p.deleted_at IS NOT NULL)), \
                 written AS ( \
                   INSERT INTO feeds (user_id, post_id, author_id) SELECT * FROM e \
                   ON CONFLICT (user_id, post_id) DO NOTHING) \
                 SELECT user_id, post_id FROM e",
            )
            .bind(owners)
            .bind(posts)
            .bind(authors)
            .fetch_all(&mut **tx)
            .await?;
            ops.extend(
                kept.into_iter()
                    .map(|(owner, post_id)| CacheOp::Add { owner, post_id }),
            );
        }
        Run::Removed(rows) => {
            let [owners, posts, authors] = columns(&rows);
            sqlx::query(
                "DELETE FROM feeds USING UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS r(user_id, post_id, author_id) \
                 WHERE feeds.user_id = r.user_id AND feeds.post_id = r.post_id AND feeds.author_id = r.author_id",
            )
            .bind(&owners)
            .bind(&posts)
            .bind(&authors)
            .execute(&mut **tx)
            .await?;
            // The author's own removal is the deletion: the post stops being merged.
            let own: Vec<[i64; 2]> = rows
                .iter()
                .filter(|[owner, _, author]| owner == author)
                .map(|[_, post, author]| [*author, *post])
                .collect();
            if !own.is_empty() {
                let [authors, posts] = columns(&own);
                sqlx::query(
                    "DELETE FROM merged_posts USING UNNEST($1::bigint[], $2::bigint[]) AS r(author_id, post_id) \
                     WHERE merged_posts.author_id = r.author_id AND merged_posts.post_id = r.post_id",
                )
                .bind(authors)
                .bind(posts)
                .execute(&mut **tx)
                .await?;
                ops.extend(own.iter().map(|[author, post_id]| CacheOp::MergedRemoved {
                    author: *author,
                    post_id: *post_id,
                }));
            }
            ops.extend(
                rows.into_iter()
                    .map(|[owner, post_id, _]| CacheOp::Remove { owner, post_id }),
            );
        }
        Run::AuthorsRemoved(rows) => {
            let [owners, authors] = columns(&rows);
            sqlx::query(
                "DELETE FROM follows USING UNNEST($1::bigint[], $2::bigint[]) AS r(user_id, author_id) \
                 WHERE follows.user_id = r.user_id AND follows.author_id = r.author_id",
            )
            .bind(&owners)
            .bind(&authors)
            .execute(&mut **tx)
            .await?;
            ops.extend(rows.iter().map(|[owner, author]| CacheOp::Unfollowed {
                owner: *owner,
                author: *author,
            }));
            let removed: Vec<(i64, i64)> = sqlx::query_as(
                "DELETE FROM feeds USING UNNEST($1::bigint[], $2::bigint[]) AS r(user_id, author_id) \
                 WHERE feeds.user_id = r.user_id AND feeds.author_id = r.author_id \
                 RETURNING feeds.user_id, feeds.post_id",
            )
            .bind(owners)
            .bind(authors)
            .fetch_all(&mut **tx)
            .await?;
            ops.extend(
                removed
                    .into_iter()
                    .map(|(owner, post_id)| CacheOp::Remove { owner, post_id }),
            );
        }
        Run::FollowsStarted(rows) => {
            // A later record for the same follow wins (a re-follow sets a new floor);
            // within one statement that is the last row.
            let mut latest: std::collections::BTreeMap<(i64, i64), i64> = Default::default();
            for [owner, author, min] in rows {
                latest.insert((owner, author), min);
            }
            let rows: Vec<[i64; 3]> = latest.into_iter().map(|((o, a), m)| [o, a, m]).collect();
            let [owners, authors, mins] = columns(&rows);
            sqlx::query(
                "INSERT INTO follows (user_id, author_id, min_post_id) \
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (user_id, author_id) DO UPDATE SET min_post_id = excluded.min_post_id",
            )
            .bind(&owners)
            .bind(&authors)
            .bind(&mins)
            .execute(&mut **tx)
            .await?;
            ops.extend(
                rows.iter()
                    .map(|[owner, author, min_post_id]| CacheOp::Followed {
                        owner: *owner,
                        author: *author,
                        min_post_id: *min_post_id,
                    }),
            );
        }
        Run::Merged(rows) => {
            let [authors, posts] = columns(&rows);
            // As entries: every merged post that passes is mirrored.
            let kept: Vec<(i64, i64)> = sqlx::query_as(
                "WITH m AS ( \
                   SELECT * FROM UNNEST($1::bigint[], $2::bigint[]) AS m(author_id, post_id) \
                   WHERE NOT EXISTS (SELECT 1 FROM posts p WHERE p.post_id = m.post_id AND p.deleted_at IS NOT NULL)), \
                 written AS ( \
                   INSERT INTO merged_posts (author_id, post_id) SELECT * FROM m \
                   ON CONFLICT DO NOTHING) \
                 SELECT author_id, post_id FROM m",
            )
            .bind(authors)
            .bind(posts)
            .fetch_all(&mut **tx)
            .await?;
            ops.extend(
                kept.into_iter()
                    .map(|(author, post_id)| CacheOp::Merged { author, post_id }),
            );
        }
    }
    Ok(())
}
