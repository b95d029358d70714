use feedstream_stores::{
    ChangeRecord, InMemoryStore, KeyValueStore, FOLLOWERS_STORE, RECENT_POSTS_STORE,
};
use proptest::prelude::*;

use super::*;
use crate::event::ENVELOPE_VERSION;
use crate::feed::{apply, TaskStores};
use crate::ids::EventId;

#[derive(Debug, Clone)]
enum Op {
    Post(u64),
    Follow(u64, u64),
    Unfollow(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 1u64..=4;
    prop_oneof![
        3 => user.clone().prop_map(Op::Post),
        2 => (user.clone(), user.clone()).prop_map(|(f, a)| Op::Follow(f, a)),
        1 => (user.clone(), user).prop_map(|(f, a)| Op::Unfollow(f, a)),
    ]
}

fn uid(id: u64) -> UserId {
    UserId::new(id).unwrap()
}

/// Envelopes in model order: event id i+1 at millisecond i; a post's id is its event id.
fn history(ops: &[Op]) -> Vec<Envelope> {
    ops.iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Follow(f, a) | Op::Unfollow(f, a) if f == a))
        .map(|(i, op)| {
            let event_id = i as u64 + 1;
            let (actor, body) = match *op {
                Op::Post(author) => (
                    author,
                    EventBody::PostCreated {
                        post_id: PostId::new(event_id).unwrap(),
                        content: "x".into(),
                    },
                ),
                Op::Follow(f, a) => (
                    f,
                    EventBody::Followed {
                        followee_id: uid(a),
                    },
                ),
                Op::Unfollow(f, a) => (
                    f,
                    EventBody::Unfollowed {
                        followee_id: uid(a),
                    },
                ),
            };
            Envelope {
                event_id: EventId::new(event_id).unwrap(),
                body,
                actor_id: uid(actor),
                timestamp: i as i64,
                version: ENVELOPE_VERSION,
            }
        })
        .collect()
}

fn stores(backfill: usize, slack: usize) -> TaskStores<InMemoryStore> {
    TaskStores::new(
        InMemoryStore::default(),
        InMemoryStore::default(),
        backfill,
        slack,
    )
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
) -> Vec<(&'static str, ChangeRecord)> {
    stores.drain_changes();
    let mut outputs = Vec::new();
    for event in records {
        outputs.extend(apply(event, stores).unwrap());
    }
    for (change, reached) in outputs.iter().zip(delivered.iter().cycle()) {
        if *reached {
            view.apply(change);
        }
    }
    stores.drain_changes()
}

/// The writes of one store, in order.
fn writes_of(changes: &[(&'static str, ChangeRecord)], store: &str) -> Vec<ChangeRecord> {
    changes
        .iter()
        .filter(|(name, _)| *name == store)
        .map(|(_, change)| change.clone())
        .collect()
}

fn snapshot(stores: &mut TaskStores<InMemoryStore>) -> (InMemoryStore, InMemoryStore) {
    let followers = stores.store_mut(FOLLOWERS_STORE).unwrap().clone();
    let recent = stores.store_mut(RECENT_POSTS_STORE).unwrap().clone();
    (followers, recent)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Processed in order, the topology's feed changes materialize exactly the model.
    #[test]
    fn topology_matches_the_model(ops in proptest::collection::vec(op(), 0..80), backfill in 0usize..4) {
        let events = history(&ops);
        let mut stores = stores(backfill, 0);
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
        batch in 1usize..6,
        crash_at in any::<prop::sample::Index>(),
        delivered in proptest::collection::vec(any::<bool>(), 64),
        kept in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let events = history(&ops);
        let batches: Vec<&[Envelope]> = events.chunks(batch).collect();
        prop_assume!(!batches.is_empty());
        let crashed = crash_at.index(batches.len());
        let mut stores = stores(backfill, batch);
        let mut view = FeedView::default();
        for (index, records) in batches.iter().enumerate() {
            if index == crashed {
                let (followers_before, recent_before) = snapshot(&mut stores);
                let changes = crashed_batch(records, &mut stores, &mut view, &delivered);
                let restore = |mut store: InMemoryStore, name: &str, keep: &prop::sample::Index| {
                    let log = writes_of(&changes, name);
                    for change in log.iter().take(keep.index(log.len() + 1)) {
                        change.apply_to(&mut store).unwrap();
                    }
                    store
                };
                let followers = restore(followers_before, FOLLOWERS_STORE, &kept.0);
                let recent = restore(recent_before, RECENT_POSTS_STORE, &kept.1);
                stores = TaskStores::new(followers, recent, backfill, batch);
            }
            for event in records.iter() {
                for change in apply(event, &mut stores).unwrap() {
                    view.apply(&change);
                }
            }
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
        batch in 1usize..6,
        crash_at in any::<prop::sample::Index>(),
        delivered in proptest::collection::vec(any::<bool>(), 64),
        kept in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let events = history(&ops);
        let batches: Vec<&[Envelope]> = events.chunks(batch).collect();
        prop_assume!(!batches.is_empty());
        let crashed = crash_at.index(batches.len());
        let mut stores = stores(backfill, batch);
        let mut view = FeedView::default();
        let mut changelog: Vec<(&'static str, ChangeRecord)> = Vec::new();
        for (index, records) in batches.iter().enumerate() {
            if index == crashed {
                let changes = crashed_batch(records, &mut stores, &mut view, &delivered);
                // Each store's changelog kept a prefix of the batch's records; restoring
                // from the checkpoint re-applies that prefix onto the kept store.
                for (name, keep) in [(FOLLOWERS_STORE, &kept.0), (RECENT_POSTS_STORE, &kept.1)] {
                    let log = writes_of(&changes, name);
                    let kept_records = keep.index(log.len() + 1);
                    for change in log.into_iter().take(kept_records) {
                        change.apply_to(stores.store_mut(name).unwrap()).unwrap();
                        changelog.push((name, change));
                    }
                }
            }
            for event in records.iter() {
                for change in apply(event, &mut stores).unwrap() {
                    view.apply(&change);
                }
            }
            changelog.extend(stores.drain_changes());
        }
        let found = compare(&expected_feeds(&events, backfill), &view.feeds());
        prop_assert!(found.is_clean(), "{}", found);
        let rebuilt = |name: &str| {
            let mut store = InMemoryStore::default();
            for (_, change) in changelog.iter().filter(|(s, _)| *s == name) {
                change.apply_to(&mut store).unwrap();
            }
            store.scan_prefix(&[]).unwrap()
        };
        let local = |stores: &mut TaskStores<InMemoryStore>, name: &str| stores.store_mut(name).unwrap().scan_prefix(&[]).unwrap();
        // Every follower write is re-sent by the replay: the changelog converges exactly.
        prop_assert_eq!(rebuilt(FOLLOWERS_STORE), local(&mut stores, FOLLOWERS_STORE));
        // recent-posts may keep, in the changelog, an eviction the crash lost: an id
        // older than every id the local store holds for that author. Such an id is a
        // real post; the next post of the author evicts it again.
        let kept_locally = local(&mut stores, RECENT_POSTS_STORE);
        let from_changelog = rebuilt(RECENT_POSTS_STORE);
        for entry in &kept_locally {
            prop_assert!(from_changelog.contains(entry), "changelog lacks a recent post the store holds");
        }
        for (key, _) in from_changelog.iter().filter(|entry| !kept_locally.contains(entry)) {
            let oldest_local = kept_locally.iter().map(|(k, _)| k).find(|k| k[..8] == key[..8]);
            prop_assert!(oldest_local.is_some_and(|oldest| key < oldest), "extra changelog entry {:?} is not an old eviction", key);
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
