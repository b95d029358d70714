//! The read path on real PostgreSQL and Redis, without the pipeline: feeds are written
//! straight into the tables the sink fills, then read page by page as a client scrolls,
//! from a cold cache (never read, or its keys gone after a Redis restart) and from the
//! cache those reads filled. Every page sequence must be exactly the feed: the user's
//! entries ∪ the posts merged on read of followed authors at or above each floor ∪ the
//! user's own posts the API accepted lately (read-your-writes), newest first, deleted
//! posts left out. Caps run below and above the page size, and merged posts lie on both
//! sides of the cap's floor.

mod common;

use std::collections::BTreeSet;

use common::{Deployment, Engines};
use feedstream_core::ids::{PostId, UserId};
use feedstream_read::{
    connect_postgres, migrate, CacheOp, CachedPost, FeedCache, FeedReader, PageRequest, ReadMetrics,
};
use sqlx::PgPool;

/// One feed as the sink would have stored it.
#[derive(Debug, Default)]
struct StoredFeed {
    owner: i64,
    /// (post id, author) of the owner's entries.
    entries: Vec<(i64, i64)>,
    /// (follower floor, author) of followed authors whose posts are merged on read.
    merged_authors: Vec<(i64, i64)>,
    /// (post id, author) of merged posts.
    merged_posts: Vec<(i64, i64)>,
    deleted: BTreeSet<i64>,
    /// The owner's own posts the API accepted lately (read-your-writes): some already
    /// among the entries, some not yet stored anywhere.
    pending: Vec<i64>,
}

impl StoredFeed {
    /// What a reader must see, newest first.
    fn expected(&self) -> Vec<i64> {
        let mut ids: BTreeSet<i64> = self.entries.iter().map(|(id, _)| *id).collect();
        for (floor, author) in &self.merged_authors {
            ids.extend(
                self.merged_posts
                    .iter()
                    .filter(|(id, by)| by == author && id >= floor)
                    .map(|(id, _)| *id),
            );
        }
        ids.extend(&self.pending);
        ids.retain(|id| !self.deleted.contains(id));
        ids.into_iter().rev().collect()
    }

    async fn store(&self, pool: &PgPool) -> anyhow::Result<()> {
        let posts = self.entries.iter().chain(&self.merged_posts);
        for (post_id, author) in posts {
            sqlx::query(
                "INSERT INTO posts (post_id, author_id, content, created_at, deleted_at) \
                 VALUES ($1, $2, 'text', now(), CASE WHEN $3 THEN now() END) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(post_id)
            .bind(author)
            .bind(self.deleted.contains(post_id))
            .execute(pool)
            .await?;
        }
        for (post_id, author) in &self.entries {
            sqlx::query("INSERT INTO feeds (user_id, post_id, author_id) VALUES ($1, $2, $3)")
                .bind(self.owner)
                .bind(post_id)
                .bind(author)
                .execute(pool)
                .await?;
        }
        for (floor, author) in &self.merged_authors {
            sqlx::query(
                "INSERT INTO follows (user_id, author_id, min_post_id) VALUES ($1, $2, $3)",
            )
            .bind(self.owner)
            .bind(author)
            .bind(floor)
            .execute(pool)
            .await?;
        }
        for (post_id, author) in &self.merged_posts {
            sqlx::query("INSERT INTO merged_posts (author_id, post_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(author)
                .bind(post_id)
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}

/// The feed of issue 12's report: user 11 follows 22 (merged on read, floor 0); posts
/// a1, a2 by 11, b1 by 22, then a3, a4, a5 by 11. With a cap of 2 a cold first page
/// used to give a5 a4 b1, and its next page a2 a1: a3 was never served.
fn reported_feed() -> StoredFeed {
    StoredFeed {
        owner: 11,
        entries: vec![(101, 11), (102, 11), (104, 11), (105, 11), (106, 11)],
        merged_authors: vec![(0, 22)],
        merged_posts: vec![(103, 22)],
        deleted: BTreeSet::new(),
        pending: Vec::new(),
    }
}

/// A random feed of `owner`: entries by a few authors, two merged authors (one floor at
/// 0, one inside the feed's range), posts merged on read interleaved with the entries
/// so that some lie above and some below any cap's floor, own posts the API accepted
/// (stored or not yet), some posts deleted.
fn random_feed(rng: &mut fastrand::Rng, owner: i64) -> StoredFeed {
    let base = owner * 10_000;
    let mut feed = StoredFeed {
        owner,
        ..StoredFeed::default()
    };
    let length = rng.usize(0..60);
    let merged_a = owner * 100 + 1;
    let merged_b = owner * 100 + 2;
    feed.merged_authors = vec![(0, merged_a), (base + rng.i64(0..=length as i64), merged_b)];
    for n in 0..length as i64 {
        let id = base + n;
        match rng.u8(..12) {
            0..=5 => feed.entries.push((id, owner * 100 + rng.i64(3..6))),
            6..=7 => feed.merged_posts.push((id, merged_a)),
            8..=9 => feed.merged_posts.push((id, merged_b)),
            10 => {
                feed.entries.push((id, owner));
                feed.pending.push(id);
            }
            _ => feed.pending.push(id),
        }
        if rng.u8(..12) == 0 {
            feed.deleted.insert(id);
        }
    }
    feed
}

struct Reader {
    reader: FeedReader,
    cache: FeedCache,
    metrics: ReadMetrics,
}

impl Reader {
    async fn new(deployment: &Deployment, pool: &PgPool, cap: usize) -> anyhow::Result<Self> {
        // A prefix of its own: a cache that has never seen these feeds, as after a
        // Redis restart.
        let prefix = format!("{}{:08x}:", deployment.redis_prefix, fastrand::u32(..));
        let cache = FeedCache::connect(&deployment.redis_url, &prefix, cap)?;
        let metrics = ReadMetrics::default();
        Ok(Self {
            reader: FeedReader::new(
                pool.clone(),
                &deployment.database_url,
                cache.clone(),
                metrics.clone(),
            ),
            cache,
            metrics,
        })
    }

    /// Does what the API does once the broker acknowledged each feed's pending posts,
    /// and the deletions of those deleted.
    async fn accept_pending(&self, feeds: &[StoredFeed]) -> anyhow::Result<()> {
        for feed in feeds {
            for post_id in &feed.pending {
                let post = CachedPost {
                    post_id: *post_id,
                    author: feed.owner,
                    created_ms: 0,
                    content: "text".into(),
                };
                self.cache.note_accepted(&post).await?;
                if feed.deleted.contains(post_id) {
                    self.cache.note_deleted(feed.owner, *post_id).await?;
                }
            }
        }
        Ok(())
    }

    fn postgres_queries(&self) -> u64 {
        self.metrics.postgres_queries.get()
    }

    /// Every page through the `next` cursor (`max_id` = the oldest id a page covered),
    /// as a client scrolls, until a page covers nothing.
    async fn scroll(&self, owner: i64, limit: usize) -> anyhow::Result<Vec<i64>> {
        let user = UserId::new(owner as u64)?;
        let mut ids = Vec::new();
        let mut max_id: Option<PostId> = None;
        for _ in 0..10_000 {
            let request = PageRequest {
                max_id,
                since_id: None,
                min_id: None,
                limit,
            };
            let page = self.reader.page(user, &request).await?;
            ids.extend(page.posts.iter().map(|post| post.id.as_i64()));
            match page.oldest {
                Some(oldest) => max_id = Some(oldest),
                None => return Ok(ids),
            }
        }
        anyhow::bail!("feed of {owner} did not end")
    }

    /// Every page through the `prev` cursor (`min_id` = the newest id a page covered),
    /// from the oldest post up, returned newest first.
    async fn scroll_up(&self, owner: i64, limit: usize) -> anyhow::Result<Vec<i64>> {
        let user = UserId::new(owner as u64)?;
        let mut ids = Vec::new();
        let mut min_id = PostId::new(1)?;
        for _ in 0..10_000 {
            let request = PageRequest {
                max_id: None,
                since_id: None,
                min_id: Some(min_id),
                limit,
            };
            let page = self.reader.page(user, &request).await?;
            let mut newer: Vec<i64> = page.posts.iter().map(|post| post.id.as_i64()).collect();
            newer.extend(ids);
            ids = newer;
            match page.newest {
                Some(newest) => min_id = newest,
                None => return Ok(ids),
            }
        }
        anyhow::bail!("feed of {owner} did not end")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_equal_the_feed_from_a_cold_and_a_filled_cache_for_caps_below_and_above_the_limit(
) -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    let pool = connect_postgres(&deployment.database_url)?;
    migrate(&pool).await?;

    let seed = std::env::var("FEEDSTREAM_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut feeds = vec![reported_feed()];
    for owner in 1..=8 {
        feeds.push(random_feed(&mut rng, owner));
    }
    for feed in &feeds {
        feed.store(&pool).await?;
    }

    let mut checked = 0;
    let mut unread = 0;
    for cap in [1, 2, 3, 5, 8, 20, 100] {
        for limit in [1, 2, 3, 7, 10, 40] {
            let reader = Reader::new(&deployment, &pool, cap).await?;
            reader.accept_pending(&feeds).await?;
            for feed in &feeds {
                let expected = feed.expected();
                let what = |pass: &str| {
                    format!(
                        "feed of {} (cap {cap}, limit {limit}, {pass}; seed {seed})",
                        feed.owner
                    )
                };
                assert_eq!(
                    reader.scroll(feed.owner, limit).await?,
                    expected,
                    "{}",
                    what("cold cache")
                );
                let before = reader.postgres_queries();
                assert_eq!(
                    reader.scroll(feed.owner, limit).await?,
                    expected,
                    "{}",
                    what("filled cache")
                );
                // A cap above the feed's length caches all of it: no page reads
                // PostgreSQL, bodies and merged posts included.
                if cap >= 100 {
                    assert_eq!(
                        reader.postgres_queries(),
                        before,
                        "{}",
                        what("filled cache, PostgreSQL queries")
                    );
                    unread += 1;
                }
                assert_eq!(
                    reader.scroll_up(feed.owner, limit).await?,
                    expected,
                    "{}",
                    what("upwards")
                );
                checked += 1;
            }
            // Upwards first, from a cold cache: a fill by a page that is not the first.
            let reader = Reader::new(&deployment, &pool, cap).await?;
            reader.accept_pending(&feeds).await?;
            for feed in &feeds {
                let what = format!(
                    "feed of {} upwards from cold (cap {cap}, limit {limit}; seed {seed})",
                    feed.owner
                );
                assert_eq!(
                    reader.scroll_up(feed.owner, limit).await?,
                    feed.expected(),
                    "{what}"
                );
                assert_eq!(
                    reader.scroll(feed.owner, limit).await?,
                    feed.expected(),
                    "{what}"
                );
            }
        }
    }
    assert_eq!(checked, 7 * 6 * feeds.len());
    assert_eq!(unread, 6 * feeds.len());
    Ok(())
}

/// The sink's cache writes keep a filled cache equal to PostgreSQL: after a merged post
/// is deleted, a merged author unfollowed, a new merged post and a new follow, every
/// page is the new feed, read from Redis alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_cache_writes_keep_a_filled_cache_exact_without_postgres() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    let pool = connect_postgres(&deployment.database_url)?;
    migrate(&pool).await?;
    let mut feed = StoredFeed {
        owner: 7,
        entries: vec![(701, 8), (704, 8), (707, 8)],
        merged_authors: vec![(0, 21), (0, 22)],
        merged_posts: vec![(702, 21), (703, 22), (705, 21), (706, 22)],
        deleted: BTreeSet::new(),
        pending: Vec::new(),
    };
    feed.store(&pool).await?;
    let reader = Reader::new(&deployment, &pool, 100).await?;
    assert_eq!(reader.scroll(feed.owner, 2).await?, feed.expected());
    let filled = reader.postgres_queries();
    assert!(filled > 0, "a cold cache reads PostgreSQL");

    // What the sink writes to PostgreSQL, and the operations it mirrors.
    sqlx::query("UPDATE posts SET deleted_at = now(), content = '' WHERE post_id = 705")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM merged_posts WHERE post_id = 705")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM follows WHERE user_id = 7 AND author_id = 22")
        .execute(&pool)
        .await?;
    let new_posts = [(708, 21), (709, 23)];
    for (post_id, author) in new_posts {
        sqlx::query("INSERT INTO posts (post_id, author_id, content, created_at) VALUES ($1, $2, 'new', now())")
            .bind(post_id)
            .bind(author)
            .execute(&pool)
            .await?;
        sqlx::query("INSERT INTO merged_posts (author_id, post_id) VALUES ($1, $2)")
            .bind(author)
            .bind(post_id)
            .execute(&pool)
            .await?;
    }
    sqlx::query("INSERT INTO follows (user_id, author_id, min_post_id) VALUES (7, 23, 709)")
        .execute(&pool)
        .await?;
    let post = |post_id: i64, author: i64| {
        CacheOp::Post(CachedPost {
            post_id,
            author,
            created_ms: 1_700_000_000_000,
            content: "new".to_string(),
        })
    };
    reader
        .cache
        .apply(&[
            CacheOp::MergedRemoved {
                author: 21,
                post_id: 705,
            },
            CacheOp::PostDeleted { post_id: 705 },
            CacheOp::Unfollowed {
                owner: 7,
                author: 22,
            },
            post(708, 21),
            CacheOp::Merged {
                author: 21,
                post_id: 708,
            },
            post(709, 23),
            CacheOp::Merged {
                author: 23,
                post_id: 709,
            },
            CacheOp::Followed {
                owner: 7,
                author: 23,
                min_post_id: 709,
            },
        ])
        .await?;
    feed.deleted.insert(705);
    feed.merged_authors = vec![(0, 21), (709, 23)];
    feed.merged_posts.extend(new_posts);
    let expected = feed.expected();
    assert_eq!(expected, vec![709, 708, 707, 704, 702, 701]);

    // Author 23's merged posts were never read: that first page reads PostgreSQL once
    // to cache them; after it, Redis alone serves every page.
    assert_eq!(reader.scroll(feed.owner, 2).await?, expected);
    let before = reader.postgres_queries();
    assert!(
        before > filled,
        "author 23's merged posts come from PostgreSQL once"
    );
    assert_eq!(reader.scroll(feed.owner, 2).await?, expected);
    assert_eq!(reader.scroll_up(feed.owner, 3).await?, expected);
    assert_eq!(reader.postgres_queries(), before);
    Ok(())
}
