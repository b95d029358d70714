//! Exactly-once: the processor is killed -9 again and again while follows and posts
//! arrive; afterwards `feed-events`, read with isolation.level=read_committed, holds each
//! feed change once, and feeds equal the reference model. The same run under
//! at-least-once reports how many changes it sent twice (a figure, not a failure: the
//! sinks apply a change once however often it comes).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{topic_values, Client, Deployment, Engines};
use feedstream_core::event::{FeedChange, FeedEvent};
use feedstream_core::model::{compare, expected_feeds};
use feedstream_harness::{eventually, free_port, metric};

const BACKFILL: usize = 100;
const USERS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const KILLS: usize = 5;
const DEADLINE: Duration = Duration::from_secs(180);

/// Follows among USERS, posts, an unfollow and a deletion: every kind of feed change.
async fn traffic(client: &mut Client, round: u64) -> anyhow::Result<()> {
    for (i, follower) in USERS.iter().enumerate() {
        let followee = USERS[(i + 1 + round as usize) % USERS.len()];
        if followee != *follower {
            client.follow(*follower, followee).await?;
        }
    }
    let mut last = None;
    for n in 0..10u64 {
        let author = USERS[((n * 3 + round) % USERS.len() as u64) as usize];
        last = Some((
            author,
            client
                .post(author, &format!("round {round} post {n}"))
                .await?,
        ));
    }
    if let Some((author, post)) = last.filter(|_| round % 3 == 0) {
        client.delete_post(author, post, DEADLINE).await?;
    }
    let follower = USERS[(round % USERS.len() as u64) as usize];
    let followee = USERS[((round + 1) % USERS.len() as u64) as usize];
    client.unfollow(follower, followee).await?;
    Ok(())
}

/// What one run saw in feed-events.
struct Seen {
    changes: usize,
    /// Changes beyond the first of each (change, cause event), by change type.
    duplicates: BTreeMap<&'static str, usize>,
}

fn kind(change: &FeedChange) -> &'static str {
    match change {
        FeedChange::EntryAdded { .. } => "ENTRY_ADDED",
        FeedChange::EntryRemoved { .. } => "ENTRY_REMOVED",
        FeedChange::AuthorRemoved { .. } => "AUTHOR_REMOVED",
        FeedChange::FollowStarted { .. } => "FOLLOW_STARTED",
        FeedChange::PostMergedOnRead { .. } => "POST_MERGED_ON_READ",
    }
}

/// Runs the workload under `guarantee` with KILLS kills -9 of the processor, checks the
/// feeds against the model, and counts what feed-events holds.
async fn killed_again_and_again(guarantee: &str) -> anyhow::Result<Seen> {
    let deployment = Deployment::new(&Engines::from_env()).await?;
    deployment.create_topics(3).await?;
    let (_api, base) = deployment.spawn_api(&[]).await?;
    let _sink = deployment.spawn(&["sink"])?;
    let spawn = |port: u16| {
        deployment.spawn_processor_with(
            "processor",
            &[
                "--processing-guarantee",
                guarantee,
                // Small batches: many transactions for the kills to land between and in.
                "--process-batch-records",
                "10",
                "--process-metrics-listen",
                &format!("127.0.0.1:{port}"),
            ],
        )
    };
    let mut port = free_port()?;
    let mut processor = spawn(port)?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut client = Client::new(base.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) || round < 4 {
                traffic(&mut client, round).await?;
                round += 1;
            }
            anyhow::Ok(client)
        })
    };
    for kill in 1..=KILLS {
        // Each kill lands while this incarnation processes: it has restored its
        // stores and applied records of its own.
        let current = port;
        eventually(
            DEADLINE,
            "the processor to process records",
            move || async move {
                Ok(metric(current, "processor_records_total")
                    .await
                    .unwrap_or(0.0)
                    >= 5.0)
            },
        )
        .await?;
        println!("{guarantee}: kill -9 of the processor, {kill} of {KILLS}");
        processor.start_kill()?;
        processor.wait().await?;
        port = free_port()?;
        processor = spawn(port)?;
    }
    stop.store(true, Ordering::Relaxed);
    let client = writer.await??;

    let expected = expected_feeds(&client.events, BACKFILL);
    let observed = client.await_feeds(&USERS, &expected, DEADLINE).await?;
    let found = compare(&expected, &observed);
    assert!(
        found.is_clean(),
        "{guarantee}: feeds differ from the model: {found}"
    );

    // The last processor's own count: transactions only under exactly-once.
    let committed = metric(port, "processor_transactions_total{outcome=\"committed\"}").await?;
    assert_eq!(
        committed > 0.0,
        guarantee == "exactly_once_v2",
        "{guarantee}: {committed} transactions committed"
    );
    let values = tokio::task::block_in_place(|| {
        topic_values(&deployment.brokers, &deployment.topic("feed-events"))
    })?;
    let mut seen: BTreeMap<String, (&'static str, usize)> = BTreeMap::new();
    for value in &values {
        let event: FeedEvent = serde_json::from_slice(value)?;
        let key = format!("{:?} {}", event.change, event.cause_event_id);
        seen.entry(key).or_insert((kind(&event.change), 0)).1 += 1;
    }
    let mut duplicates = BTreeMap::new();
    for (kind, count) in seen.values() {
        if *count > 1 {
            *duplicates.entry(*kind).or_default() += count - 1;
        }
    }
    Ok(Seen {
        changes: values.len(),
        duplicates,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_exactly_once_feed_events_hold_each_change_once_through_kills() -> anyhow::Result<()>
{
    let seen = killed_again_and_again("exactly_once_v2").await?;
    println!(
        "exactly_once_v2: {} feed changes, duplicates {:?}",
        seen.changes, seen.duplicates
    );
    assert!(seen.changes > 0, "the workload made feed changes");
    assert!(
        seen.duplicates.is_empty(),
        "feed-events holds changes more than once: {:?}",
        seen.duplicates
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_at_least_once_feeds_stay_exact_through_kills_and_duplicates_are_counted(
) -> anyhow::Result<()> {
    let seen = killed_again_and_again("at_least_once").await?;
    println!(
        "at_least_once: {} feed changes, {} sent more than once {:?}",
        seen.changes,
        seen.duplicates.values().sum::<usize>(),
        seen.duplicates
    );
    assert!(seen.changes > 0, "the workload made feed changes");
    Ok(())
}
