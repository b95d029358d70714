use feedstream_stores::{ChangeRecord, InMemoryStore, KeyValueStore, StoreName};
use proptest::prelude::*;

use super::*;
use crate::event::ENVELOPE_VERSION;
use crate::feed::{apply, FeedRules, TaskStores};
use crate::ids::EventId;

#[derive(Debug, Clone)]
enum Op {
    Post(u64),
    /// Deletes an earlier post (the number modulo the posts so far); by its author
    /// unless `by_other`.
    Delete(usize, bool),
    Follow(u64, u64),
    Unfollow(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 1u64..=4;
    prop_oneof![
        3 => user.clone().prop_map(Op::Post),
        1 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(i, other)| Op::Delete(i, other)),
        2 => (user.clone(), user.clone()).prop_map(|(f, a)| Op::Follow(f, a)),
        1 => (user.clone(), user).prop_map(|(f, a)| Op::Unfollow(f, a)),
    ]
}

fn uid(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

/// Envelopes in model order: event id i+1 at millisecond i; a post's id is its event id.
fn history(ops: &[Op]) -> Vec<Envelope> {
    let mut posts: Vec<(u64, u64)> = Vec::new();
    let mut events = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let event_id = i as u64 + 1;
        let (actor, body) = match op {
            Op::Follow(f, a) | Op::Unfollow(f, a) if f == a => continue,
            Op::Delete(..) if posts.is_empty() => continue,
            Op::Post(author) => {
                posts.push((*author, event_id));
                (
                    *author,
                    EventBody::PostCreated {
                        post_id: PostId::new(event_id).unwrap(),
                        content: "x".into(),
                    },
                )
            }
            Op::Delete(which, by_other) => {
                let (author, post) = posts[which % posts.len()];
                let actor = if *by_other { author % 4 + 1 } else { author };
                (
                    actor,
                    EventBody::PostDeleted {
                        post_id: PostId::new(post).unwrap(),
                    },
                )
            }
            Op::Follow(f, a) => (
                *f,
                EventBody::Followed {
                    followee_id: uid(*a),
                },
            ),
            Op::Unfollow(f, a) => (
                *f,
                EventBody::Unfollowed {
                    followee_id: uid(*a),
                },
            ),
        };
        events.push(Envelope {
            event_id: EventId::new(event_id).unwrap(),
            body,
            actor_id: uid(actor),
            timestamp: i as i64,
            version: ENVELOPE_VERSION,
        });
    }
    events
}

fn stores(backfill: usize, celebrity_threshold: u64) -> TaskStores<InMemoryStore> {
    TaskStores::new(
        InMemoryStore::default(),
        InMemoryStore::default(),
        rules(backfill, celebrity_threshold),
    )
}

fn rules(backfill: usize, celebrity_threshold: u64) -> FeedRules {
    FeedRules {
        backfill,
        celebrity_threshold,
    }
}

fn as_sets(feeds: BTreeMap<UserId, Vec<PostId>>) -> BTreeMap<UserId, BTreeSet<PostId>> {
    feeds
        .into_iter()
        .map(|(user, posts)| (user, posts.into_iter().collect()))
        .collect()
}

/// Runs the batch that a crash interrupts: each output reaches the broker (and so the
/// view) only where `delivered` says so. Returns the store writes the batch made.
fn crashed_batch(
    records: &[Envelope],
    stores: &mut TaskStores<InMemoryStore>,
    view: &mut FeedView,
    delivered: &[bool],
) -> Vec<(StoreName, ChangeRecord)> {
    stores.drain_changes().unwrap();
    let mut outputs = Vec::new();
    for event in records {
        outputs.extend(apply(event, stores).unwrap());
    }
    for (change, reached) in outputs.iter().zip(delivered.iter().cycle()) {
        if *reached {
            view.apply(change);
        }
    }
    stores.drain_changes().unwrap()
}

/// The writes of one store, in order.
fn writes_of(changes: &[(StoreName, ChangeRecord)], store: StoreName) -> Vec<ChangeRecord> {
    changes
        .iter()
        .filter(|(name, _)| *name == store)
        .map(|(_, change)| change.clone())
        .collect()
}

fn snapshot(stores: &mut TaskStores<InMemoryStore>) -> (InMemoryStore, InMemoryStore) {
    let followers = stores.store_mut(StoreName::Followers).clone();
    let recent = stores.store_mut(StoreName::AuthorPosts).clone();
    (followers, recent)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Processed in order, the topology's feed changes materialize exactly the model,
    /// whatever the celebrity threshold: with 4 users and thresholds 0..=3, authors cross
    /// it in both directions as follows come and go.
    #[test]
    fn topology_matches_the_model(ops in proptest::collection::vec(op(), 0..80), backfill in 0usize..4, threshold in 0u64..4) {
        let events = history(&ops);
        let mut stores = stores(backfill, threshold);
        let mut view = FeedView::default();
        for event in &events {
            for change in apply(event, &mut stores).unwrap() {
                view.apply(&change);
            }
        }
        let expected = expected_feeds(&events, backfill);
        let found = compare(&expected, &view.feeds());
        prop_assert!(found.is_clean(), "{}", found);
        prop_assert_eq!(as_sets(view.feeds()), expected);
    }

    /// A crash in the middle of a batch: some of its outputs reached the broker, each
    /// store's changelog kept some prefix of its writes. Restoring that and replaying the
    /// batch still gives exactly the model: nothing lost, nothing phantom.
    #[test]
    fn crash_and_replay_of_a_batch_matches_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        backfill in 0usize..4,
        threshold in 0u64..4,
        batch in 1usize..6,
        crash_at in any::<prop::sample::Index>(),
        delivered in proptest::collection::vec(any::<bool>(), 64),
        kept in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let events = history(&ops);
        let batches: Vec<&[Envelope]> = events.chunks(batch).collect();
        prop_assume!(!batches.is_empty());
        let crashed = crash_at.index(batches.len());
        let mut stores = stores(backfill, threshold);
        let mut view = FeedView::default();
        for (index, records) in batches.iter().enumerate() {
            if index == crashed {
                let (followers_before, recent_before) = snapshot(&mut stores);
                let changes = crashed_batch(records, &mut stores, &mut view, &delivered);
                let restore = |mut store: InMemoryStore, name: StoreName, keep: &prop::sample::Index| {
                    let log = writes_of(&changes, name);
                    for change in log.iter().take(keep.index(log.len() + 1)) {
                        change.apply_to(&mut store).unwrap();
                    }
                    store
                };
                let followers = restore(followers_before, StoreName::Followers, &kept.0);
                let recent = restore(recent_before, StoreName::AuthorPosts, &kept.1);
                stores = TaskStores::new(followers, recent, rules(backfill, threshold));
            }
            for event in records.iter() {
                for change in apply(event, &mut stores).unwrap() {
                    view.apply(&change);
                }
            }
            // The batch's writes reach the stores (and the changelog) at its end.
            stores.drain_changes().unwrap();
        }
        let expected = expected_feeds(&events, backfill);
        let found = compare(&expected, &view.feeds());
        prop_assert!(found.is_clean(), "{}", found);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After a kill -9 the local store is kept and can be ahead of its changelog (some
    /// of the crashed batch's changelog records never reached the broker). Restoring
    /// the changelog from the checkpoint onto it and replaying the batch must leave a
    /// changelog that rebuilds exactly the local store, and feeds equal to the model.
    #[test]
    fn replay_against_a_store_ahead_of_its_changelog_converges(
        ops in proptest::collection::vec(op(), 1..80),
        backfill in 0usize..4,
        threshold in 0u64..4,
        batch in 1usize..6,
        crash_at in any::<prop::sample::Index>(),
        delivered in proptest::collection::vec(any::<bool>(), 64),
        kept in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let events = history(&ops);
        let batches: Vec<&[Envelope]> = events.chunks(batch).collect();
        prop_assume!(!batches.is_empty());
        let crashed = crash_at.index(batches.len());
        let mut stores = stores(backfill, threshold);
        let mut view = FeedView::default();
        let mut changelog: Vec<(StoreName, ChangeRecord)> = Vec::new();
        for (index, records) in batches.iter().enumerate() {
            if index == crashed {
                let changes = crashed_batch(records, &mut stores, &mut view, &delivered);
                // Each store's changelog kept a prefix of the batch's records; restoring
                // from the checkpoint re-applies that prefix onto the kept store.
                for (name, keep) in [(StoreName::Followers, &kept.0), (StoreName::AuthorPosts, &kept.1)] {
                    let log = writes_of(&changes, name);
                    let kept_records = keep.index(log.len() + 1);
                    for change in log.into_iter().take(kept_records) {
                        change.apply_to(stores.store_mut(name)).unwrap();
                        changelog.push((name, change));
                    }
                }
            }
            for event in records.iter() {
                for change in apply(event, &mut stores).unwrap() {
                    view.apply(&change);
                }
            }
            changelog.extend(stores.drain_changes().unwrap());
        }
        let found = compare(&expected_feeds(&events, backfill), &view.feeds());
        prop_assert!(found.is_clean(), "{}", found);
        let rebuilt = |name: StoreName| {
            let mut store = InMemoryStore::default();
            for (_, change) in changelog.iter().filter(|(s, _)| *s == name) {
                change.apply_to(&mut store).unwrap();
            }
            store.scan_prefix(&[]).unwrap()
        };
        let local = |stores: &mut TaskStores<InMemoryStore>, name: StoreName| stores.store_mut(name).scan_prefix(&[]).unwrap();
        // Every write is re-sent by the replay: each changelog rebuilds its store exactly.
        for name in StoreName::ALL {
            prop_assert_eq!(rebuilt(name), local(&mut stores, name), "store {}", name);
        }
    }
}

#[test]
fn follow_backfills_the_newest_posts_and_unfollow_removes_them() {
    // user 1 posts three times; 2 follows 1 with N = 2; 1 posts again; 2 unfollows; refollows.
    let ops = [
        Op::Post(1),
        Op::Post(1),
        Op::Post(1),
        Op::Follow(2, 1),
        Op::Post(1),
        Op::Unfollow(2, 1),
        Op::Follow(2, 1),
    ];
    let events = history(&ops);
    let post = |i: u64| PostId::new(i).unwrap();
    let after_follow = expected_feeds(&events[..5], 2);
    assert_eq!(after_follow[&uid(2)], [post(2), post(3), post(5)].into());
    assert_eq!(
        after_follow[&uid(1)],
        [post(1), post(2), post(3), post(5)].into()
    );
    assert!(!expected_feeds(&events[..6], 2).contains_key(&uid(2)));
    // The new follow sets a new floor: the 2 newest at that moment.
    assert_eq!(
        expected_feeds(&events, 2)[&uid(2)],
        [post(3), post(5)].into()
    );
    // N = 0: nothing from before the follow.
    assert_eq!(expected_feeds(&events[..5], 0)[&uid(2)], [post(5)].into());
}

#[test]
fn compare_counts_each_kind_of_discrepancy() {
    let post = |i: u64| PostId::new(i).unwrap();
    let expected = BTreeMap::from([(uid(1), BTreeSet::from([post(1), post(2)]))]);
    let observed = BTreeMap::from([(uid(1), vec![post(2), post(2), post(3)])]);
    let found = compare(&expected, &observed);
    assert_eq!(found.lost, vec![(uid(1), post(1))]);
    assert_eq!(found.duplicated, vec![(uid(1), post(2))]);
    assert_eq!(found.phantom, vec![(uid(1), post(3))]);
    assert!(!found.is_clean());
}

#[test]
fn invalid_events_are_not_part_of_the_model() {
    let mut events = history(&[Op::Post(1), Op::Follow(2, 1)]);
    events[1].body = EventBody::Followed {
        followee_id: uid(2),
    }; // self-follow
    let feeds = expected_feeds(&events, 5);
    assert!(!feeds.contains_key(&uid(2)));
}

#[test]
fn a_deleted_post_leaves_every_feed_and_later_backfills_skip_it() {
    let ops = [
        Op::Post(1),
        Op::Post(1),
        Op::Post(1),
        Op::Follow(2, 1),
        Op::Delete(2, false),
        Op::Follow(3, 1),
    ];
    let events = history(&ops);
    let post = |i: u64| PostId::new(i).unwrap();
    assert_eq!(
        expected_feeds(&events[..4], 2)[&uid(2)],
        [post(2), post(3)].into()
    );
    let feeds = expected_feeds(&events, 2);
    assert_eq!(feeds[&uid(1)], [post(1), post(2)].into());
    assert_eq!(feeds[&uid(2)], [post(2)].into());
    // The two newest live posts when 3 follows.
    assert_eq!(feeds[&uid(3)], [post(1), post(2)].into());

    let mut stores = stores(2, 0);
    let mut view = FeedView::default();
    for event in &events {
        for change in apply(event, &mut stores).unwrap() {
            view.apply(&change);
        }
    }
    assert_eq!(as_sets(view.feeds()), feeds);
}

#[test]
fn a_celebrity_post_is_one_record_whatever_the_followers() {
    let ops = [
        Op::Follow(2, 1),
        Op::Follow(3, 1),
        Op::Follow(4, 1),
        Op::Post(1),
    ];
    let events = history(&ops);
    let mut stores = stores(5, 2);
    let mut view = FeedView::default();
    let mut last = Vec::new();
    for event in &events {
        last = apply(event, &mut stores).unwrap();
        last.iter().for_each(|change| view.apply(change));
    }
    let post = PostId::new(4).unwrap();
    assert_eq!(
        last,
        vec![
            FeedChange::EntryAdded {
                feed_owner_id: uid(1),
                post_id: post,
                author_id: uid(1)
            },
            FeedChange::PostMergedOnRead {
                author_id: uid(1),
                post_id: post
            },
        ]
    );
    assert_eq!(as_sets(view.feeds()), expected_feeds(&events, 5));
    assert_eq!(view.feeds()[&uid(3)], vec![post]);
}
