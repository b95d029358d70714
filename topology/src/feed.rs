//! The feed topology's logic, free of I/O: one input event and the task's stores in, the
//! feed changes out. The runtime feeds it records; tests feed it generated histories.
//!
//! Every output depends only on the event and the current store content, never on
//! whether the event was seen before. That is what makes at-least-once replays harmless:
//! a replayed event meets stores that may already reflect it (or later events of the
//! same batch) and still yields changes whose final effect on the feeds is the same.

use feedstream_stores::{
    ChangeCapture, ChangeRecord, FollowerStore, KeyValueStore, RecentPostsStore, StoreError,
    FOLLOWERS_STORE, RECENT_POSTS_STORE,
};

use crate::event::{Envelope, EventBody, FeedChange};
use crate::ids::{PostId, UserId};

/// The stores of one task, each recording its writes for the changelog.
pub struct TaskStores<S> {
    pub followers: FollowerStore<ChangeCapture<S>>,
    pub recent_posts: RecentPostsStore<ChangeCapture<S>>,
    backfill: usize,
}

impl<S: KeyValueStore> TaskStores<S> {
    /// `backfill` is N, how many of an author's newest posts a new follower receives.
    /// `replay_slack` is how far (in records) the stores can be ahead of the committed
    /// input: one batch. recent-posts keeps N + slack ids so that a replay against such a
    /// store still finds the N posts that preceded a follow.
    pub fn new(followers: S, recent_posts: S, backfill: usize, replay_slack: usize) -> Self {
        let capacity = if backfill == 0 {
            0
        } else {
            backfill + replay_slack
        };
        Self {
            followers: FollowerStore::new(ChangeCapture::new(followers)),
            recent_posts: RecentPostsStore::new(ChangeCapture::new(recent_posts), capacity),
            backfill,
        }
    }

    /// Writes made since the last call, per store, oldest first.
    pub fn drain_changes(&mut self) -> Vec<(&'static str, ChangeRecord)> {
        let followers = self.followers.kv_mut().drain_changes();
        let recent = self.recent_posts.kv_mut().drain_changes();
        followers
            .into_iter()
            .map(|change| (FOLLOWERS_STORE, change))
            .chain(
                recent
                    .into_iter()
                    .map(|change| (RECENT_POSTS_STORE, change)),
            )
            .collect()
    }

    /// The two underlying stores: (followers, recent-posts).
    pub fn into_stores(self) -> (S, S) {
        (
            self.followers.into_kv().into_inner(),
            self.recent_posts.into_kv().into_inner(),
        )
    }

    /// The underlying store by name, for restoration and digests.
    pub fn store_mut(&mut self, name: &str) -> Option<&mut S> {
        match name {
            FOLLOWERS_STORE => Some(self.followers.kv_mut().inner_mut()),
            RECENT_POSTS_STORE => Some(self.recent_posts.kv_mut().inner_mut()),
            _ => None,
        }
    }
}

/// Applies one valid event to the task's stores and returns the feed changes it causes.
///
/// Model order is event-id order (a post's id is its POST_CREATED's event id, and an
/// event's timestamp is the millisecond in its id). Outputs compare ids instead of
/// trusting the stores' age: a post reaches only followers whose follow precedes it, and
/// a follow backfills only posts that precede it. So a replay against stores that already
/// hold later events of the same batch yields exactly the first run's changes.
pub fn apply<S: KeyValueStore>(
    event: &Envelope,
    stores: &mut TaskStores<S>,
) -> Result<Vec<FeedChange>, StoreError> {
    match &event.body {
        EventBody::PostCreated { post_id, .. } => {
            let author = event.actor_id;
            stores.recent_posts.push(author.get(), post_id.get())?;
            let followers = stores.followers.followers(author.get())?;
            let reached = followers
                .into_iter()
                .filter(|follower| follower.since < post_id.get())
                .filter_map(|follower| UserId::new(follower.id).ok());
            Ok(std::iter::once(author)
                .chain(reached)
                .map(|feed_owner_id| FeedChange::EntryAdded {
                    feed_owner_id,
                    post_id: *post_id,
                    author_id: author,
                })
                .collect())
        }
        EventBody::Followed { followee_id } => {
            let follower = event.actor_id;
            stores
                .followers
                .add(followee_id.get(), follower.get(), event.event_id.get())?;
            // Backfill even when the edge already existed: on a replay the store may hold
            // it while the first backfill never reached the broker. For a repeated follow
            // the entries are the author's newest before it, all above the first floor.
            let backfill = stores.recent_posts.newest_below(
                followee_id.get(),
                event.event_id.get(),
                stores.backfill,
            )?;
            Ok(backfill
                .into_iter()
                .filter_map(|id| PostId::new(id).ok())
                .map(|post_id| FeedChange::EntryAdded {
                    feed_owner_id: follower,
                    post_id,
                    author_id: *followee_id,
                })
                .collect())
        }
        EventBody::Unfollowed { followee_id } => {
            stores
                .followers
                .remove(followee_id.get(), event.actor_id.get())?;
            Ok(vec![FeedChange::AuthorRemoved {
                feed_owner_id: event.actor_id,
                author_id: *followee_id,
            }])
        }
    }
}
