//! The feed of DESIGN.md §3 end to end, on the real broker, PostgreSQL and Redis: a
//! seeded workload of a few thousand HTTP writes (follows, unfollows, re-follows, posts,
//! deletions, celebrities and an author crossing the threshold both ways), then every
//! user's feed read page by page must equal the reference model.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, Deployment, Engines};
use feedstream_core::ids::PostId;
use feedstream_core::model::{compare, expected_feeds};
use feedstream_read::layout;

const USERS: u64 = 40;
const BACKFILL: usize = 10;
/// Small enough that the busiest authors cross it during the run.
const CELEBRITY_THRESHOLD: u64 = 8;
/// Small enough that most feeds are longer than what Redis holds.
const CACHE_CAP: usize = 15;
const PAGE: usize = 7;
/// The author the workload moves across the threshold and back.
const CROSSER: u64 = 7;

/// Drives the API with a seeded random workload, remembering what it needs to pick
/// sensible follow-ups (existing follows to undo, live posts to delete).
struct Workload {
    rng: fastrand::Rng,
    client: Client,
    follows: BTreeSet<(u64, u64)>,
    live_posts: Vec<(u64, PostId)>,
}

impl Workload {
    /// Followees are skewed: users 1 and 2 become celebrities, 3 to 6 are popular.
    /// Only the scripted part of the run follows CROSSER.
    fn followee(&mut self) -> u64 {
        let followee = match self.rng.u8(..10) {
            0..=3 => self.rng.u64(1..=2),
            4..=5 => self.rng.u64(3..=6),
            _ => self.rng.u64(1..=USERS),
        };
        if followee == CROSSER {
            CROSSER + 1
        } else {
            followee
        }
    }

    async fn follow(&mut self, follower: u64, followee: u64) -> anyhow::Result<()> {
        if follower == followee {
            return Ok(());
        }
        self.client.follow(follower, followee).await?;
        self.follows.insert((follower, followee));
        Ok(())
    }

    async fn unfollow(&mut self, follower: u64, followee: u64) -> anyhow::Result<()> {
        self.client.unfollow(follower, followee).await?;
        self.follows.remove(&(follower, followee));
        Ok(())
    }

    async fn post(&mut self, author: u64) -> anyhow::Result<()> {
        let text = format!("post {} by {author}", self.live_posts.len());
        let post_id = self.client.post(author, &text).await?;
        self.live_posts.push((author, post_id));
        Ok(())
    }

    async fn delete_one(&mut self) -> anyhow::Result<()> {
        if self.live_posts.is_empty() {
            return Ok(());
        }
        let index = self.rng.usize(..self.live_posts.len());
        let (author, post_id) = self.live_posts.swap_remove(index);
        self.client
            .delete_post(author, post_id, Duration::from_secs(60))
            .await
    }

    /// One random event: posts and follows mostly, some unfollows, a few repeated
    /// follows of an author already followed.
    async fn step(&mut self) -> anyhow::Result<()> {
        match self.rng.u8(..100) {
            0..=44 => {
                let author = if self.rng.bool() {
                    self.rng.u64(1..=6)
                } else {
                    self.rng.u64(1..=USERS)
                };
                self.post(author).await
            }
            45..=84 => {
                let follower = self.rng.u64(1..=USERS);
                let followee = self.followee();
                let repeated = self.follows.contains(&(follower, followee));
                if repeated && self.rng.u8(..5) != 0 {
                    return Ok(());
                }
                self.follow(follower, followee).await
            }
            _ => {
                if self.follows.is_empty() {
                    return Ok(());
                }
                let pick = self.rng.usize(..self.follows.len());
                let edge = self.follows.iter().nth(pick).copied();
                match edge {
                    Some((follower, followee)) => self.unfollow(follower, followee).await,
                    None => Ok(()),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_feeds_equal_the_model_across_fanout_modes_deletions_and_the_cache_cap(
) -> anyhow::Result<()> {
    let seed = std::env::var("FEEDSTREAM_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("workload seed {seed} (set FEEDSTREAM_TEST_SEED to repeat it)");

    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(4).await?;
    let cap = CACHE_CAP.to_string();
    let (_api, base) = deployment.spawn_api(&["--feed-cache-cap", &cap]).await?;
    let _processor = deployment.spawn_processor_with(
        "processor",
        &[
            "--backfill",
            &BACKFILL.to_string(),
            "--celebrity-threshold",
            &CELEBRITY_THRESHOLD.to_string(),
        ],
    )?;
    let _sink = deployment.spawn(&["sink", "--feed-cache-cap", &cap])?;
    let mut client = Client::new(base);
    client.page_size = PAGE;
    let mut work = Workload {
        rng: fastrand::Rng::with_seed(seed),
        client,
        follows: BTreeSet::new(),
        live_posts: Vec::new(),
    };

    for _ in 0..2000 {
        work.step().await?;
    }
    // CROSSER goes above the threshold, posts, drops below it (keeping 4 followers to
    // fan out to), posts, and goes above again.
    let fans: Vec<u64> = (10..10 + CELEBRITY_THRESHOLD + 4).collect();
    let leaving = &fans[..fans.len() - 4];
    for round in 0..2 {
        let joining = if round == 0 { &fans[..] } else { leaving };
        for fan in joining {
            work.follow(*fan, CROSSER).await?;
        }
        for _ in 0..4 {
            work.post(CROSSER).await?;
        }
        if round == 0 {
            for fan in leaving {
                work.unfollow(*fan, CROSSER).await?;
            }
            for _ in 0..4 {
                work.post(CROSSER).await?;
            }
        }
    }
    for _ in 0..120 {
        work.delete_one().await?;
    }
    for _ in 0..1000 {
        work.step().await?;
    }
    for _ in 0..30 {
        work.delete_one().await?;
    }
    let client = &work.client;
    eprintln!("{} events accepted", client.events.len());

    let users: Vec<u64> = (1..=USERS).collect();
    let expected = expected_feeds(&client.events, BACKFILL);
    let observed = client
        .await_feeds(&users, &expected, Duration::from_secs(240))
        .await?;
    let found = compare(&expected, &observed);
    let entries: usize = expected.values().map(BTreeSet::len).sum();
    eprintln!(
        "{} users, {entries} expected entries: {found}",
        expected.len()
    );
    assert!(
        found.is_clean(),
        "paginated feeds differ from the model: {found}"
    );
    for (user, feed) in &observed {
        assert!(
            feed.windows(2).all(|pair| pair[0] > pair[1]),
            "feed of {user} is not newest first"
        );
    }
    let longest = observed.values().map(Vec::len).max().unwrap_or(0);
    assert!(
        longest > 3 * CACHE_CAP,
        "no feed crosses the Redis cap ({longest} entries at most)"
    );
    // Again, now that Redis holds the newest slice of every feed: no seam at the cap.
    assert_eq!(client.feeds(&users).await?, observed);

    // Walking back up with `prev` links (min_id) from the oldest page gives the feed.
    for (user, feed) in observed
        .iter()
        .filter(|(_, feed)| feed.len() > 2 * PAGE)
        .take(5)
    {
        let oldest = feed.last().copied().unwrap_or_else(|| unreachable!());
        let mut path = format!("/feeds/{user}?limit={PAGE}&max_id={}", oldest.get() + 1);
        let mut pages = Vec::new();
        for _ in 0..feed.len() + 2 {
            let page = client.feed_page(&path).await?;
            let Some(prev) = page.prev.clone() else {
                break;
            };
            pages.push(page.ids);
            path = prev;
        }
        let upward: Vec<PostId> = pages.into_iter().rev().flatten().collect();
        assert_eq!(&upward, feed, "prev links of {user}'s feed");

        let cursor = feed[feed.len() / 2];
        let newer = client
            .feed_page(&format!("/feeds/{user}?limit=5&since_id={cursor}"))
            .await?;
        let expected_newer: Vec<PostId> = feed
            .iter()
            .copied()
            .take_while(|id| *id > cursor)
            .take(5)
            .collect();
        assert_eq!(newer.ids, expected_newer, "since_id page of {user}");
    }

    // Both fan-out modes were used, and the author who crossed the threshold has posts
    // of each kind.
    let pool = sqlx::PgPool::connect(&deployment.database_url).await?;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { anyhow::Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await?) }
    };
    let crosser = i64::try_from(CROSSER)?;
    let merged: i64 = sqlx::query_scalar("SELECT count(*) FROM merged_posts WHERE author_id = $1")
        .bind(crosser)
        .fetch_one(&pool)
        .await?;
    let fanned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feeds WHERE author_id = $1 AND user_id <> $1")
            .bind(crosser)
            .fetch_one(&pool)
            .await?;
    assert!(
        merged > 0 && fanned > 0,
        "author {CROSSER}: {merged} merged, {fanned} fanned out"
    );
    assert!(count("SELECT count(*) FROM merged_posts").await? > merged);

    // Deleted posts are gone from PostgreSQL (content too) and from every cached feed.
    let deleted: BTreeSet<PostId> = client
        .events
        .iter()
        .filter_map(|event| match event.body {
            feedstream_core::event::EventBody::PostDeleted { post_id } => Some(post_id),
            _ => None,
        })
        .collect();
    assert_eq!(
        count("SELECT count(*) FROM posts WHERE deleted_at IS NOT NULL AND content = ''").await?,
        i64::try_from(deleted.len())?
    );
    assert_eq!(
        count("SELECT count(*) FROM feeds f JOIN posts p USING (post_id) WHERE p.deleted_at IS NOT NULL").await?,
        0
    );
    let mut redis = redis::Client::open(deployment.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(layout::feed_key_pattern(&deployment.redis_prefix))
        .query_async(&mut redis)
        .await?;
    assert!(!keys.is_empty(), "no feed is cached");
    for key in keys {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        assert!(
            members.len() <= CACHE_CAP,
            "{key} holds {} entries",
            members.len()
        );
        for member in members {
            let id = layout::post_id_of(&member)
                .and_then(|id| PostId::new(u64::try_from(id).ok()?).ok())
                .ok_or_else(|| anyhow::anyhow!("{member} in {key} is not a post id"))?;
            assert!(
                !deleted.contains(&id),
                "deleted post {id} still cached in {key}"
            );
        }
    }

    // Only the author may delete; for anyone else a live post does not exist.
    let (author, post_id) = work.live_posts[0];
    let other = author % USERS + 1;
    let refused = work.client.try_delete_post(other, post_id).await?;
    assert_eq!(refused.status(), reqwest::StatusCode::NOT_FOUND);
    Ok(())
}
