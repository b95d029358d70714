//! The reference model of DESIGN.md §3: what every feed must contain after a history of
//! events, as a plain function. Property tests check the topology against it; end-to-end
//! and crash tests count lost, duplicated and phantom entries with [`compare`].

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Envelope, EventBody, FeedChange};
use crate::ids::{PostId, UserId};

/// Every user's expected feed (post ids), for the given backfill size N.
///
/// Events are ordered by (`timestamp`, `event_id`); invalid ones are ignored, as the
/// processor dead-letters them. Users whose feed is empty are absent. The celebrity
/// threshold is deliberately not a parameter: the feed must not depend on it.
pub fn expected_feeds(events: &[Envelope], backfill: usize) -> BTreeMap<UserId, BTreeSet<PostId>> {
    let mut ordered: Vec<&Envelope> = events.iter().filter(|e| e.validate().is_ok()).collect();
    ordered.sort_by_key(|event| (event.timestamp, event.event_id));

    let mut posts: BTreeMap<UserId, BTreeSet<PostId>> = BTreeMap::new();
    // (follower, followee) → floor: the smallest post id of the followee that counts.
    let mut follows: BTreeMap<(UserId, UserId), u64> = BTreeMap::new();
    for event in ordered {
        let actor = event.actor_id;
        match &event.body {
            EventBody::PostCreated { post_id, .. } => {
                posts.entry(actor).or_default().insert(*post_id);
            }
            EventBody::PostDeleted { post_id } => {
                // Only the author deletes; a delete of anyone else's post is a no-op.
                if let Some(authored) = posts.get_mut(&actor) {
                    authored.remove(post_id);
                }
            }
            EventBody::Followed { followee_id } => {
                let authored = posts.get(followee_id);
                follows
                    .entry((actor, *followee_id))
                    .or_insert_with(|| floor(authored, backfill));
            }
            EventBody::Unfollowed { followee_id } => {
                follows.remove(&(actor, *followee_id));
            }
        }
    }

    let mut feeds: BTreeMap<UserId, BTreeSet<PostId>> = BTreeMap::new();
    for (author, authored) in &posts {
        feeds.entry(*author).or_default().extend(authored);
    }
    for ((follower, followee), floor) in follows {
        let visible = posts
            .get(&followee)
            .into_iter()
            .flatten()
            .filter(|post| post.get() >= floor);
        feeds.entry(follower).or_default().extend(visible);
    }
    feeds.retain(|_, feed| !feed.is_empty());
    feeds
}

/// The floor of a follow that begins now (`authored` holds live posts only): the id of
/// the author's N-th newest live post;
/// the smallest if there are fewer; the next id to be issued if N = 0.
fn floor(authored: Option<&BTreeSet<PostId>>, backfill: usize) -> u64 {
    let Some(authored) = authored.filter(|posts| !posts.is_empty()) else {
        return 0;
    };
    if backfill == 0 {
        return authored.last().map_or(0, |newest| newest.get() + 1);
    }
    authored
        .iter()
        .rev()
        .nth(backfill - 1)
        .or_else(|| authored.first())
        .map_or(0, |post| post.get())
}

/// Feeds as the sinks and the read path build them from feed changes: entries keyed by
/// (owner, post), so applying a change again is harmless, and, at read time, the union of
/// a user's entries with the posts merged on read of every author the user follows, at
/// or above that follow's `min_post_id`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedView {
    entries: BTreeMap<UserId, BTreeMap<PostId, UserId>>,
    /// (follower, author) → min_post_id (0: all).
    follows: BTreeMap<(UserId, UserId), u64>,
    merged: BTreeMap<UserId, BTreeSet<PostId>>,
}

impl FeedView {
    pub fn apply(&mut self, change: &FeedChange) {
        match change {
            FeedChange::EntryAdded {
                feed_owner_id,
                post_id,
                author_id,
            } => {
                self.entries
                    .entry(*feed_owner_id)
                    .or_default()
                    .insert(*post_id, *author_id);
            }
            FeedChange::EntryRemoved {
                feed_owner_id,
                post_id,
                author_id,
            } => {
                if let Some(feed) = self.entries.get_mut(feed_owner_id) {
                    if feed.get(post_id) == Some(author_id) {
                        feed.remove(post_id);
                    }
                }
                // The author's own removal is the deletion itself.
                if feed_owner_id == author_id {
                    if let Some(posts) = self.merged.get_mut(author_id) {
                        posts.remove(post_id);
                    }
                }
            }
            FeedChange::AuthorRemoved {
                feed_owner_id,
                author_id,
            } => {
                if let Some(feed) = self.entries.get_mut(feed_owner_id) {
                    feed.retain(|_, author| author != author_id);
                }
                self.follows.remove(&(*feed_owner_id, *author_id));
            }
            FeedChange::FollowStarted {
                feed_owner_id,
                author_id,
                min_post_id,
            } => {
                self.follows.insert(
                    (*feed_owner_id, *author_id),
                    min_post_id.map_or(0, PostId::get),
                );
            }
            FeedChange::PostMergedOnRead { author_id, post_id } => {
                self.merged.entry(*author_id).or_default().insert(*post_id);
            }
        }
    }

    /// Each feed's post ids, newest first, without empty feeds.
    pub fn feeds(&self) -> BTreeMap<UserId, Vec<PostId>> {
        let mut feeds: BTreeMap<UserId, BTreeSet<PostId>> = self
            .entries
            .iter()
            .map(|(owner, feed)| (*owner, feed.keys().copied().collect()))
            .collect();
        for ((follower, author), min) in &self.follows {
            let merged = self.merged.get(author).into_iter().flatten();
            feeds
                .entry(*follower)
                .or_default()
                .extend(merged.filter(|post| post.get() >= *min));
        }
        feeds
            .into_iter()
            .filter(|(_, feed)| !feed.is_empty())
            .map(|(owner, feed)| (owner, feed.into_iter().rev().collect()))
            .collect()
    }
}

/// Differences between the model and what a system shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Discrepancies {
    /// In the model, not in the system.
    pub lost: Vec<(UserId, PostId)>,
    /// In the system more than once (listed once per extra copy).
    pub duplicated: Vec<(UserId, PostId)>,
    /// In the system, not in the model.
    pub phantom: Vec<(UserId, PostId)>,
}

impl Discrepancies {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.phantom.is_empty()
    }
}

impl std::fmt::Display for Discrepancies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost {}, duplicated {}, phantom {}",
            self.lost.len(),
            self.duplicated.len(),
            self.phantom.len()
        )?;
        for (label, entries) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("phantom", &self.phantom),
        ] {
            if let Some((user, post)) = entries.first() {
                write!(f, "; first {label}: post {post} in feed of {user}")?;
            }
        }
        Ok(())
    }
}

/// Compares the expected feeds with the feeds a system returned (which may repeat ids).
pub fn compare(
    expected: &BTreeMap<UserId, BTreeSet<PostId>>,
    observed: &BTreeMap<UserId, Vec<PostId>>,
) -> Discrepancies {
    let mut found = Discrepancies::default();
    let empty = BTreeSet::new();
    let users: BTreeSet<UserId> = expected.keys().chain(observed.keys()).copied().collect();
    for user in users {
        let want = expected.get(&user).unwrap_or(&empty);
        let mut seen = BTreeSet::new();
        for post in observed.get(&user).into_iter().flatten() {
            if !seen.insert(*post) {
                found.duplicated.push((user, *post));
            } else if !want.contains(post) {
                found.phantom.push((user, *post));
            }
        }
        found
            .lost
            .extend(want.difference(&seen).map(|post| (user, *post)));
    }
    found
}

#[cfg(test)]
mod tests;
