//! What the machine can do without feedstream: the raw produce and consume rates of the
//! same broker, with the clients and topic layout feedstream uses, and the raw rate of
//! the Redis sorted-set read that serves a cached feed page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use feedstream_core::event::EVENT_ID_HEADER;
use feedstream_kafka::topics::{create_topics, TopicSpec, Topics};
use feedstream_kafka::{self as kafka, KafkaFailure, KafkaSettings, OutboundRecord};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BrokerCeiling {
    pub records: u64,
    pub produce_per_second: f64,
    pub consume_per_second: f64,
}

/// Produces `records` feed-event-sized records to a feed-events topic of its own
/// (`partitions` partitions, created like feedstream's), acknowledged as the processor's
/// are, then reads them all back partition by partition as a restoring task does.
pub async fn broker(
    settings: &KafkaSettings,
    prefix: &str,
    partitions: i32,
    records: u64,
) -> anyhow::Result<BrokerCeiling> {
    let topics = Topics::new(prefix, "ceiling");
    let spec = TopicSpec {
        partitions,
        output_partitions: partitions,
        replication: 1,
        changelog_configs: Vec::new(),
    };
    create_topics(settings, &topics, spec)
        .await
        .context("creating the ceiling topics")?;
    let topic = topics.feed_events.clone();
    let outbound: Arc<str> = topic.as_str().into();

    let producer = kafka::batch_producer(settings, "bench-ceiling")?;
    let batch: Vec<OutboundRecord> = (0..records)
        .map(|n| feed_event_sized(&outbound, n))
        .collect();
    let started = Instant::now();
    producer.deliver(&batch).await?;
    let produce_per_second = records as f64 / started.elapsed().as_secs_f64();

    let settings = settings.clone();
    let consume_per_second = tokio::task::spawn_blocking(move || {
        let consumer = kafka::standalone_consumer(&settings, "bench-ceiling")?;
        let started = Instant::now();
        let mut read = 0;
        for partition in 0..partitions {
            read += kafka::read_partition::<KafkaFailure>(
                &consumer,
                &topic,
                partition,
                &mut |_| Ok(()),
                &mut |_| {},
            )?;
        }
        anyhow::ensure!(read == records, "read {read} of {records} records back");
        Ok(read as f64 / started.elapsed().as_secs_f64())
    })
    .await??;
    Ok(BrokerCeiling {
        records,
        produce_per_second,
        consume_per_second,
    })
}

/// A record shaped like an ENTRY_ADDED: a user-id key, about 190 bytes of JSON and the
/// event-id header.
fn feed_event_sized(topic: &Arc<str>, n: u64) -> OutboundRecord {
    let owner = n % 5_000 + 1;
    let post = 779_496_298_905_600_000 + n;
    let payload = format!(
        r#"{{"type":"ENTRY_ADDED","feed_owner_id":"{owner}","post_id":"{post}","author_id":"7","cause_event_id":"{post}","timestamp":1763683200000,"version":1}}"#
    );
    OutboundRecord {
        topic: topic.clone(),
        partition: None,
        key: owner.to_string().into_bytes(),
        payload: Some(payload.into_bytes()),
        timestamp: None,
        headers: vec![(EVENT_ID_HEADER, post.to_string())],
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisCeiling {
    pub reads: u64,
    pub per_second: f64,
    pub connections: usize,
    pub concurrency: usize,
}

/// Sorted sets the ceiling reads, and members in each: a cached feed of 100 entries.
const SETS: u64 = 1_000;
const MEMBERS: u64 = 100;

/// `concurrency` tasks over `connections` multiplexed connections read the newest 20
/// members of a random set (ZREVRANGEBYLEX, as a cached feed page is read) for
/// `duration`.
pub async fn redis(
    url: &str,
    prefix: &str,
    connections: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<RedisCeiling> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    let mut setup = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))?;
    for set in 0..SETS {
        let members: Vec<(u8, String)> = (0..MEMBERS)
            .map(|m| (0, format!("{:020}", 779_496_298_905_600_000 + m)))
            .collect();
        redis::cmd("ZADD")
            .arg(format!("{prefix}ceiling:{set}"))
            .arg(members)
            .query_async::<()>(&mut setup)
            .await?;
    }
    let mut pool = Vec::new();
    for _ in 0..connections {
        pool.push(client.get_multiplexed_async_connection().await?);
    }
    let reads = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let mut connection = pool[task % pool.len()].clone();
            let (reads, prefix) = (reads.clone(), prefix.to_string());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(task as u64);
                while started.elapsed() < duration {
                    let key = format!("{prefix}ceiling:{}", rng.u64(..SETS));
                    let page: redis::RedisResult<Vec<String>> = redis::cmd("ZREVRANGEBYLEX")
                        .arg(key)
                        .arg("+")
                        .arg("-")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(20)
                        .query_async(&mut connection)
                        .await;
                    if page.is_ok_and(|page| page.len() == 20) {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reads = reads.load(Ordering::Relaxed);
    for set in 0..SETS {
        redis::cmd("DEL")
            .arg(format!("{prefix}ceiling:{set}"))
            .query_async::<()>(&mut setup)
            .await?;
    }
    Ok(RedisCeiling {
        reads,
        per_second: reads as f64 / elapsed,
        connections,
        concurrency,
    })
}
