//! The feed topology's logic, free of I/O: one input event and the task's stores in, the
//! feed changes out. The runtime feeds it records; tests feed it generated histories.
//!
//! Every output depends only on the event and the current store content, never on
//! whether the event was seen before. That is what makes at-least-once replays harmless:
//! a replayed event meets stores that may already reflect it (or later events of the
//! same batch) and still yields changes whose final effect on the feeds is the same.

use feedstream_stores::{
    AuthorPostsStore, ChangeCapture, ChangeRecord, FollowerStore, KeyValueStore, StoreError,
    StoreName,
};

use crate::event::{Envelope, EventBody, FeedChange};
use crate::ids::{PostId, UserId};

/// Default N: how many of an author's newest live posts a new follower receives.
pub const DEFAULT_BACKFILL: usize = 100;
/// Default follower count above which an author's posts are merged on read.
pub const DEFAULT_CELEBRITY_THRESHOLD: u64 = 10_000;

/// The parameters of DESIGN.md §3 that shape feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRules {
    /// N: how many of an author's newest live posts a new follower receives.
    pub backfill: usize,
    /// An author with more followers than this is not fanned out on write: followers
    /// see the post at read time instead.
    pub celebrity_threshold: u64,
}

impl Default for FeedRules {
    fn default() -> Self {
        Self {
            backfill: DEFAULT_BACKFILL,
            celebrity_threshold: DEFAULT_CELEBRITY_THRESHOLD,
        }
    }
}

/// The stores of one task, each recording its writes for the changelog.
pub struct TaskStores<S> {
    pub followers: FollowerStore<ChangeCapture<S>>,
    pub author_posts: AuthorPostsStore<ChangeCapture<S>>,
    rules: FeedRules,
}

impl<S: KeyValueStore> TaskStores<S> {
    pub fn new(followers: S, author_posts: S, rules: FeedRules) -> Self {
        Self {
            followers: FollowerStore::new(ChangeCapture::new(followers)),
            author_posts: AuthorPostsStore::new(ChangeCapture::new(author_posts)),
            rules,
        }
    }

    /// Writes made since the last call, per store in key order, each key once with its
    /// last value; they are now in the stores too, one write batch per store.
    pub fn drain_changes(&mut self) -> Result<Vec<(StoreName, ChangeRecord)>, StoreError> {
        let followers = self.followers.kv_mut().drain_changes()?;
        let posts = self.author_posts.kv_mut().drain_changes()?;
        Ok(followers
            .into_iter()
            .map(|change| (StoreName::Followers, change))
            .chain(
                posts
                    .into_iter()
                    .map(|change| (StoreName::AuthorPosts, change)),
            )
            .collect())
    }

    /// The two underlying stores: (followers, author-posts), without the writes not
    /// drained.
    pub fn into_stores(self) -> (S, S) {
        (
            self.followers.into_kv().into_inner(),
            self.author_posts.into_kv().into_inner(),
        )
    }

    /// The underlying store by name, for restoration, syncs and digests: it lacks the
    /// writes not drained yet.
    pub fn store_mut(&mut self, name: StoreName) -> &mut S {
        match name {
            StoreName::Followers => self.followers.kv_mut().inner_mut(),
            StoreName::AuthorPosts => self.author_posts.kv_mut().inner_mut(),
        }
    }
}

/// Applies one valid event to the task's stores and returns the feed changes it causes.
///
/// Model order is event-id order (a post's id is its POST_CREATED's event id, and an
/// event's timestamp is the millisecond in its id). Outputs compare ids instead of
/// trusting the stores' age: a post reaches only followers whose follow precedes it, a
/// follow backfills only posts live at the follow, and deletions are kept as marks with
/// their event id. So a replay against stores that already hold later events of the same
/// batch yields changes with the first run's final effect.
pub fn apply<S: KeyValueStore>(
    event: &Envelope,
    stores: &mut TaskStores<S>,
) -> Result<Vec<FeedChange>, StoreError> {
    let actor = event.actor_id;
    match &event.body {
        EventBody::PostCreated { post_id, .. } => post_created(stores, actor, *post_id),
        EventBody::PostDeleted { post_id } => {
            post_deleted(stores, actor, *post_id, event.event_id.get())
        }
        EventBody::Followed { followee_id } => {
            followed(stores, actor, *followee_id, event.event_id.get())
        }
        EventBody::Unfollowed { followee_id } => {
            stores.followers.remove(followee_id.get(), actor.get())?;
            Ok(vec![FeedChange::AuthorRemoved {
                feed_owner_id: actor,
                author_id: *followee_id,
            }])
        }
    }
}

/// The author's own feed always gets the post. Followers get an entry each (fan-out on
/// write), unless the author is a celebrity: then one record says the post is merged on
/// read, whatever the number of followers.
fn post_created<S: KeyValueStore>(
    stores: &mut TaskStores<S>,
    author: UserId,
    post_id: PostId,
) -> Result<Vec<FeedChange>, StoreError> {
    stores.author_posts.record(author.get(), post_id.get())?;
    let own = FeedChange::EntryAdded {
        feed_owner_id: author,
        post_id,
        author_id: author,
    };
    if stores.followers.count(author.get())? > stores.rules.celebrity_threshold {
        return Ok(vec![
            own,
            FeedChange::PostMergedOnRead {
                author_id: author,
                post_id,
            },
        ]);
    }
    let mut changes = vec![own];
    stores
        .followers
        .visit_followers(author.get(), &mut |follower| {
            if follower.since >= post_id.get() {
                return;
            }
            if let Ok(feed_owner_id) = UserId::new(follower.id) {
                changes.push(FeedChange::EntryAdded {
                    feed_owner_id,
                    post_id,
                    author_id: author,
                });
            }
        })?;
    Ok(changes)
}

/// Only the author deletes a post; an unknown one changes nothing. The removal goes to
/// every current follower, whatever their follow's age: a backfill may have given the
/// post to a follower who followed after it was written.
fn post_deleted<S: KeyValueStore>(
    stores: &mut TaskStores<S>,
    author: UserId,
    post_id: PostId,
    deleted_by: u64,
) -> Result<Vec<FeedChange>, StoreError> {
    if !stores
        .author_posts
        .mark_deleted(author.get(), post_id.get(), deleted_by)?
    {
        return Ok(Vec::new());
    }
    let removed = |feed_owner_id| FeedChange::EntryRemoved {
        feed_owner_id,
        post_id,
        author_id: author,
    };
    let mut changes = vec![removed(author)];
    stores
        .followers
        .visit_followers(author.get(), &mut |follower| {
            if let Ok(feed_owner_id) = UserId::new(follower.id) {
                changes.push(removed(feed_owner_id));
            }
        })?;
    Ok(changes)
}

/// Backfills the followee's N newest posts live at the follow and records where the
/// follow's view of the author begins (for posts merged on read).
///
/// A repeated follow keeps the first follow's `since` (the store keeps the edge), so its
/// window and floor are the first follow's; only posts still live are sent again. That
/// also covers a replay, where the store may hold the edge while the first backfill
/// never reached the broker.
fn followed<S: KeyValueStore>(
    stores: &mut TaskStores<S>,
    follower: UserId,
    author: UserId,
    event_id: u64,
) -> Result<Vec<FeedChange>, StoreError> {
    let since = stores
        .followers
        .add(author.get(), follower.get(), event_id)?;
    let backfill = stores.rules.backfill;
    let window = stores
        .author_posts
        .newest_live_at(author.get(), since, backfill)?;
    let min_post_id = if backfill == 0 {
        PostId::new(since).ok()
    } else if window.len() == backfill {
        window.last().and_then(|post| PostId::new(post.id).ok())
    } else {
        None
    };
    let entries = window
        .iter()
        .filter(|post| post.live_at(event_id))
        .filter_map(|post| PostId::new(post.id).ok())
        .map(|post_id| FeedChange::EntryAdded {
            feed_owner_id: follower,
            post_id,
            author_id: author,
        });
    Ok(entries
        .chain(std::iter::once(FeedChange::FollowStarted {
            feed_owner_id: follower,
            author_id: author,
            min_post_id,
        }))
        .collect())
}
