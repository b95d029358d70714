//! Kafka Streams-grade state: stores survive a wiped state directory, a kill -9 and
//! tasks moving between processors, with feeds equal to the reference model throughout.

mod common;

use std::time::Duration;

use common::{
    group_members, set_group_config, topic_records, Client, Deployment, Engines, GroupMember,
};
use feedstream_core::model::{compare, expected_feeds};
use feedstream_harness::{eventually, free_port, metric, terminate};

/// The state directory of the tests' processor, under the deployment's directory.
const STATE: &str = "state";

const BACKFILL: usize = 100;
const USERS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const FEED_DEADLINE: Duration = Duration::from_secs(120);

async fn assert_feeds_match_model(client: &Client) -> anyhow::Result<()> {
    let expected = expected_feeds(&client.events, BACKFILL);
    let observed = client.await_feeds(&USERS, &expected, FEED_DEADLINE).await?;
    let found = compare(&expected, &observed);
    assert!(found.is_clean(), "feeds differ from the model: {found}");
    Ok(())
}

/// Follows and posts among USERS, deterministic for a given `round`.
async fn traffic(client: &mut Client, round: u64, posts: u64) -> anyhow::Result<()> {
    for (i, follower) in USERS.iter().enumerate() {
        // Every eighth round would pair each user with themselves.
        let followee = USERS[(i + 1 + round as usize) % USERS.len()];
        if followee != *follower {
            client.follow(*follower, followee).await?;
        }
    }
    for n in 0..posts {
        let author = USERS[((n * 3 + round) % USERS.len() as u64) as usize];
        client
            .post(author, &format!("round {round} post {n}"))
            .await?;
    }
    let follower = USERS[(round % USERS.len() as u64) as usize];
    let followee = USERS[((round + 1) % USERS.len() as u64) as usize];
    client.unfollow(follower, followee).await?;
    Ok(())
}

/// The digest line `store NAME: N entries, digest H` of `rebuild-state`.
async fn rebuild(
    deployment: &Deployment,
    state: &str,
    store: &str,
    from_source: bool,
) -> anyhow::Result<String> {
    let mut args = vec!["rebuild-state", "--store", store, "--state-dir", state];
    if from_source {
        args.push("--from-source");
    }
    let (ok, stdout, stderr) = deployment.run(&args).await?;
    anyhow::ensure!(ok, "rebuild-state failed: {stderr}");
    stdout
        .lines()
        .find(|line| line.starts_with("store "))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no digest in: {stdout}"))
}

/// Polls a processor's metrics until it runs at least `tasks` tasks.
async fn await_active_tasks(port: u16, tasks: u32, what: &str) -> anyhow::Result<()> {
    eventually(FEED_DEADLINE, what, || async {
        let active = metric(port, "processor_active_tasks").await.unwrap_or(0.0);
        Ok(active >= f64::from(tasks))
    })
    .await
}

/// A deployment with its API and sink running; processors are the tests' business.
struct Running {
    engines: Engines,
    deployment: Deployment,
    /// State directory for the tests' processor.
    state: String,
    /// Base URL of the API.
    base: String,
    _api: tokio::process::Child,
    _sink: tokio::process::Child,
}

impl Running {
    async fn start(partitions: u32) -> anyhow::Result<Self> {
        let engines = Engines::from_env();
        let deployment = Deployment::new(&engines).await?;
        deployment.create_topics(partitions).await?;
        let state = deployment.state_dir(STATE).display().to_string();
        let (api, base) = deployment.spawn_api(&[]).await?;
        let sink = deployment.spawn(&["sink"])?;
        Ok(Self {
            engines,
            deployment,
            state,
            base,
            _api: api,
            _sink: sink,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_state_dir_is_restored_to_the_same_stores() -> anyhow::Result<()> {
    let running = Running::start(3).await?;
    let (deployment, state, base) = (
        &running.deployment,
        running.state.clone(),
        running.base.clone(),
    );
    let mut processor = deployment.spawn_processor_with(STATE, &[])?;
    let mut client = Client::new(base);
    traffic(&mut client, 0, 20).await?;
    assert_feeds_match_model(&client).await?;
    terminate(&processor)?;
    processor.wait().await?;

    let followers = rebuild(deployment, &state, "followers", false).await?;
    let recent = rebuild(deployment, &state, "author-posts", false).await?;
    assert!(!followers.contains(" 0 entries"), "{followers}");
    std::fs::remove_dir_all(&state)?;
    assert_eq!(
        rebuild(deployment, &state, "followers", false).await?,
        followers
    );
    assert_eq!(
        rebuild(deployment, &state, "author-posts", false).await?,
        recent
    );
    assert_eq!(
        rebuild(deployment, &state, "followers", true).await?,
        followers,
        "rebuild from follow-events"
    );
    assert_eq!(
        rebuild(deployment, &state, "author-posts", true).await?,
        recent,
        "rebuild from post-events"
    );

    // A processor on an empty state directory restores before processing: new posts
    // reach the followers recorded before the wipe.
    std::fs::remove_dir_all(&state)?;
    let metrics_port = free_port()?;
    let _processor = deployment.spawn_processor_with(
        STATE,
        &[
            "--process-metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    )?;
    for author in [1, 2, 3] {
        client.post(author, "after the wipe").await?;
    }
    assert_feeds_match_model(&client).await?;
    let restored = metric(metrics_port, "state_restore_records_total").await?;
    assert!(
        restored > 0.0,
        "the processor restored its stores from the changelogs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_stream_recovers_exact_feeds() -> anyhow::Result<()> {
    let running = Running::start(3).await?;
    let (deployment, base) = (&running.deployment, running.base.clone());
    // Small batches: many commits, so the kill lands between and inside them.
    let small_batches = ["--process-batch-records", "5"];
    let mut processor = deployment.spawn_processor_with(STATE, &small_batches)?;

    let probe = Client::new(base.clone());
    let mut client = Client::new(base);
    traffic(&mut client, 0, 10).await?;
    let writer = tokio::spawn(async move {
        for round in 1..=4 {
            traffic(&mut client, round, 15).await?;
        }
        anyhow::Ok(client)
    });
    // Kill once processing is under way.
    eventually(FEED_DEADLINE, "the processor to make progress", || async {
        Ok(!probe.feed(2).await?.is_empty())
    })
    .await?;
    processor.start_kill()?;
    processor.wait().await?;
    let _restarted = deployment.spawn_processor_with(STATE, &small_batches)?;
    let client = writer.await??;
    assert_feeds_match_model(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_move_with_their_state_when_processors_join_and_leave() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(4).await?;
    let (_api, base) = deployment.spawn_api(&[]).await?;
    let _sink = deployment.spawn(&["sink"])?;
    let (port_a, port_b) = (free_port()?, free_port()?);
    let _first = deployment.spawn_processor_with(
        "a",
        &["--process-metrics-listen", &format!("127.0.0.1:{port_a}")],
    )?;
    let mut client = Client::new(base);
    traffic(&mut client, 0, 12).await?;
    assert_feeds_match_model(&client).await?;

    let opened_alone = metric(port_a, "processor_tasks_opened_total").await?;
    let restored_alone = metric(port_a, "state_restore_records_total").await?;
    let second = deployment.spawn_processor_with(
        "b",
        &["--process-metrics-listen", &format!("127.0.0.1:{port_b}")],
    )?;
    await_active_tasks(port_b, 1, "the second processor to take tasks").await?;
    traffic(&mut client, 1, 12).await?;
    assert_feeds_match_model(&client).await?;
    // Incremental rebalancing: the first processor only gave tasks away. It reopened
    // none of those it kept, so it restored nothing and never stopped processing them.
    let kept = metric(port_a, "processor_active_tasks").await?;
    let moved = metric(port_b, "processor_active_tasks").await?;
    assert_eq!(kept + moved, 4.0, "every task runs once");
    assert_eq!(
        metric(port_a, "processor_tasks_opened_total").await?,
        opened_alone,
        "the first processor reopened tasks it kept"
    );
    assert_eq!(
        metric(port_a, "state_restore_records_total").await?,
        restored_alone,
        "the first processor restored records while the second joined"
    );
    println!(
        "1 -> 2 processors: {kept} tasks kept, {moved} moved, 0 records restored by the first"
    );

    terminate(&second)?;
    await_active_tasks(port_a, 4, "the first processor to take every task back").await?;
    let restored_back = metric(port_a, "state_restore_records_total").await? - restored_alone;
    println!("2 -> 1 processors: the first took {moved} tasks back, restoring {restored_back} changelog records");
    traffic(&mut client, 2, 12).await?;
    assert_feeds_match_model(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_restarted_with_its_instance_id_takes_its_own_tasks_back() -> anyhow::Result<()>
{
    let running = Running::start(4).await?;
    let deployment = &running.deployment;
    let processor = |name: &str, port: u16| {
        deployment.spawn_processor_with(
            name,
            &[
                "--instance-id",
                name,
                "--process-metrics-listen",
                &format!("127.0.0.1:{port}"),
            ],
        )
    };
    // The session timeout bounds how long a graceful restart may take before the
    // broker hands b's tasks to a. The broker's 10 s is less than a restart (and a
    // kafka-consumer-groups call in between) can take on a loaded 2-core machine.
    let group = format!("{}-processor", deployment.application_id);
    set_group_config(
        &running.engines,
        &deployment.brokers,
        &group,
        "consumer.session.timeout.ms=45000",
    )
    .await?;
    let (port_a, port_b) = (free_port()?, free_port()?);
    let _a = processor("a", port_a)?;
    let mut b = processor("b", port_b)?;
    eventually(
        FEED_DEADLINE,
        "the two processors to share the tasks",
        || async {
            // Two each: the range assignor's target for 4 tasks and 2 members. A total
            // of 4 alone is also met while one member still holds them all.
            Ok(metric(port_a, "processor_active_tasks")
                .await
                .unwrap_or(0.0)
                == 2.0
                && metric(port_b, "processor_active_tasks")
                    .await
                    .unwrap_or(0.0)
                    == 2.0)
        },
    )
    .await?;
    let mut client = Client::new(running.base.clone());
    traffic(&mut client, 0, 12).await?;
    assert_feeds_match_model(&client).await?;
    let opened_by_a = metric(port_a, "processor_tasks_opened_total").await?;
    let tasks_of_b = metric(port_b, "processor_active_tasks").await?;

    // A graceful restart: while b is away the group keeps its tasks (both inputs'
    // partitions of each) assigned to it, unprocessed, and a takes none of them.
    terminate(&b)?;
    b.wait().await?;
    traffic(&mut client, 1, 12).await?;
    let members = group_members(&running.engines, &deployment.brokers, &group).await?;
    assert!(
        members.contains(&GroupMember {
            instance_id: Some("b".to_string()),
            partitions: 2 * tasks_of_b as u32,
        }),
        "the group does not hold b's partitions while b is away: {members:?}"
    );
    let port_b = free_port()?;
    let mut b = processor("b", port_b)?;
    await_active_tasks(
        port_b,
        tasks_of_b as u32,
        "the restarted processor to take its tasks back",
    )
    .await?;
    assert_feeds_match_model(&client).await?;
    assert_eq!(
        metric(port_b, "processor_active_tasks").await?,
        tasks_of_b,
        "the restarted processor runs the tasks it ran before"
    );
    assert_eq!(
        metric(port_b, "state_restore_records_total").await?,
        0.0,
        "the restarted processor found its stores current"
    );
    assert_eq!(
        metric(port_a, "processor_tasks_opened_total").await?,
        opened_by_a,
        "the processor that stayed took tasks of the one restarting"
    );

    // After a kill -9 the broker holds b's instance id until the killed member's session
    // expires; the restarted b joins then.
    b.start_kill()?;
    b.wait().await?;
    let port_b = free_port()?;
    let _b = processor("b", port_b)?;
    traffic(&mut client, 2, 12).await?;
    await_active_tasks(
        port_b,
        1,
        "the processor restarted after a kill -9 to join again",
    )
    .await?;
    assert_feeds_match_model(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_a_compacted_changelog_equals_one_rebuilt_from_its_source(
) -> anyhow::Result<()> {
    let deployment = Deployment::new(&Engines::from_env()).await?;
    // Segments that close after a second and a cleaner that takes any dirty log: the
    // broker compacts while the test runs.
    let (created, _, stderr) = deployment
        .run(&[
            "topics",
            "create",
            "--partitions",
            "2",
            "--changelog-config",
            "segment.ms=1000",
            "--changelog-config",
            "min.cleanable.dirty.ratio=0.01",
        ])
        .await?;
    anyhow::ensure!(created, "topics create failed: {stderr}");
    let state = deployment.state_dir(STATE).display().to_string();
    let (_api, base) = deployment.spawn_api(&[]).await?;
    let _sink = deployment.spawn(&["sink"])?;
    let mut processor = deployment.spawn_processor_with(STATE, &[])?;
    let mut client = Client::new(base);

    // Follows, unfollows and re-follows rewrite the same keys (edges, follower counts)
    // until the broker has compacted the followers changelog.
    let changelog = format!("{}-followers-changelog", deployment.application_id);
    let mut round = 0;
    let compacted = loop {
        traffic(&mut client, round, 2).await?;
        round += 1;
        let (records, span) =
            tokio::task::block_in_place(|| topic_records(&deployment.brokers, &changelog))?;
        if records < span as u64 {
            break (records, span);
        }
        anyhow::ensure!(
            round < 2_000,
            "the changelog was not compacted: {records} records"
        );
    };
    println!(
        "after {round} rounds the followers changelog holds {} records over {} offsets",
        compacted.0, compacted.1
    );
    assert_feeds_match_model(&client).await?;
    terminate(&processor)?;
    processor.wait().await?;

    // The store restored from the compacted changelog is the store its source gives.
    std::fs::remove_dir_all(&state)?;
    let restored = rebuild(&deployment, &state, "followers", false).await?;
    let from_source = rebuild(&deployment, &state, "followers", true).await?;
    assert!(!restored.contains(" 0 entries"), "{restored}");
    assert_eq!(restored, from_source);
    Ok(())
}
