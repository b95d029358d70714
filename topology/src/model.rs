//! The reference model of DESIGN.md §3: what every feed must contain after a history of
//! events, as a plain function. Property tests check the topology against it; end-to-end
//! and crash tests count lost, duplicated and phantom entries with [`compare`].

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Envelope, EventBody, FeedChange};
use crate::ids::{PostId, UserId};

/// Every user's expected feed (post ids), for the given backfill size N.
///
/// Events are ordered by (`timestamp`, `event_id`); invalid ones are ignored, as the
/// processor dead-letters them. Users whose feed is empty are absent.
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

/// The floor of a follow that begins now: the id of the author's N-th newest live post;
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

/// Feeds materialized from feed changes with the sinks' semantics: entries keyed by
/// (owner, post), so applying a change again is harmless.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedView {
    feeds: BTreeMap<UserId, BTreeMap<PostId, UserId>>,
}

impl FeedView {
    pub fn apply(&mut self, change: &FeedChange) {
        match change {
            FeedChange::EntryAdded {
                feed_owner_id,
                post_id,
                author_id,
            } => {
                self.feeds
                    .entry(*feed_owner_id)
                    .or_default()
                    .insert(*post_id, *author_id);
            }
            FeedChange::AuthorRemoved {
                feed_owner_id,
                author_id,
            } => {
                if let Some(feed) = self.feeds.get_mut(feed_owner_id) {
                    feed.retain(|_, author| author != author_id);
                }
            }
        }
    }

    /// Each feed's post ids, newest first, without empty feeds.
    pub fn feeds(&self) -> BTreeMap<UserId, Vec<PostId>> {
        self.feeds
            .iter()
            .filter(|(_, feed)| !feed.is_empty())
            .map(|(owner, feed)| (*owner, feed.keys().rev().copied().collect()))
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
