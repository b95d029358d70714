//! Restore-rate benchmark: fills a followers changelog partition with N records, then
//! measures, on the same broker, (a) the raw consume rate of that partition and (b) the
//! rate at which a task's store is restored from it. Run by `scripts/bench-restore.sh`.
//!
//! Usage: restore_bench BROKERS RECORDS

use std::time::{Duration, Instant};

use feedstream_stores::{encode_value, FOLLOWERS_STORE};
use feedstream_topology::kafka::{self, KafkaSettings, OutboundRecord, Outbox};
use feedstream_topology::state::StateOpener;
use feedstream_topology::topics::{create_topics, TopicSpec, Topics};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().ok_or("usage: restore_bench BROKERS RECORDS")?;
    let records: u64 = args
        .next()
        .ok_or("usage: restore_bench BROKERS RECORDS")?
        .parse()?;
    let settings = KafkaSettings {
        brokers,
        delivery_timeout: Duration::from_secs(300),
        debug: None,
    };
    let topics = Topics::new("bench-", "bench");
    create_topics(
        &settings,
        &topics,
        TopicSpec {
            partitions: 1,
            output_partitions: 1,
            replication: 1,
        },
    )
    .await?;
    let changelog = topics.changelog(FOLLOWERS_STORE);

    // Follower edges as the processor writes them: key followee ++ follower, value since.
    let started = Instant::now();
    let producer = kafka::producer(&settings, "bench-producer")?;
    let mut outbox = Outbox::new(&producer);
    for n in 0..records {
        let mut key = (n / 100 + 1).to_be_bytes().to_vec();
        key.extend((n % 100 + 1).to_be_bytes());
        outbox
            .send(&OutboundRecord {
                topic: changelog.clone(),
                partition: Some(0),
                key,
                payload: Some(encode_value(&n)?),
                timestamp: None,
                headers: Vec::new(),
            })
            .await?;
    }
    outbox.flush().await?;
    let produce_rate = records as f64 / started.elapsed().as_secs_f64();

    let consumer = kafka::standalone_consumer(&settings, "bench-raw")?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&changelog, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let started = Instant::now();
    let mut seen = 0u64;
    while seen < records {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(error)) => return Err(error.into()),
            None => return Err(format!("raw consume stalled at {seen} of {records}").into()),
        }
    }
    let raw_rate = records as f64 / started.elapsed().as_secs_f64();

    let state = tempfile::tempdir()?;
    let opener = StateOpener {
        kafka: &settings,
        topics: &topics,
        task_dir: state.path(),
        partition: 0,
    };
    let (_, restored) = opener.open_store(FOLLOWERS_STORE, None, &mut |_, _| {})?;
    let restore_rate = restored.records as f64 / restored.elapsed.as_secs_f64();

    println!("records                 {records}");
    println!("produce (acks=all)      {produce_rate:>10.0} records/s");
    println!("raw consume             {raw_rate:>10.0} records/s");
    println!(
        "restore into RocksDB    {restore_rate:>10.0} records/s ({:.0}% of raw consume)",
        100.0 * restore_rate / raw_rate
    );
    Ok(())
}
