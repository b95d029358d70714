//! Kafka plumbing shared by the processor and the sinks: client settings, a group
//! consumer that cuts batches at rebalances, and an outbox that waits for every
//! acknowledgement.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::client_log::{self, KafkaContext};
use crate::event::EVENT_ID_HEADER;
use crate::metrics::LagLabels;

/// How the API and the runtimes reach the brokers.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// How long a produced record may wait for the broker's acknowledgement before the
    /// send fails. The API keeps it short (it answers a person); runtimes keep it long.
    pub delivery_timeout: Duration,
    /// librdkafka debug contexts (e.g. `cgrp,fetch`), for diagnosing the client.
    pub debug: Option<String>,
    /// Longest time the broker may hold a consumer's fetch that found no data
    /// (`fetch.wait.max.ms`); a record that arrives ends the wait.
    pub fetch_wait: Duration,
    /// librdkafka properties for every consumer, applied after feedstream's own.
    pub consumer_properties: Vec<(String, String)>,
}

/// Default of [`KafkaSettings::fetch_wait`]: librdkafka's own. Kafka answers a fetch
/// as soon as a record arrives for it, so this only bounds how long the broker holds a
/// fetch that finds nothing; a shorter wait buys no latency and costs idle fetches.
pub const DEFAULT_FETCH_WAIT: Duration = Duration::from_millis(500);

/// A Kafka failure, and whether trying again later can succeed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaFailure {
    #[error("Kafka client could not be configured: {0}")]
    Configuration(#[source] KafkaError),
    #[error("Kafka broker at {brokers} did not answer: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka operation failed: {0}")]
    Operation(#[source] KafkaError),
    #[error("{topic}[{partition}] gave no record for {quiet:?} at offset {reached} of {end}")]
    Stalled {
        topic: String,
        partition: i32,
        reached: i64,
        end: i64,
        quiet: Duration,
    },
}

impl KafkaFailure {
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaFailure::Configuration(_) => false,
            KafkaFailure::Unreachable { .. } | KafkaFailure::Stalled { .. } => true,
            KafkaFailure::Operation(error) => error.rdkafka_error_code().is_none_or(|code| {
                !matches!(
                    code,
                    RDKafkaErrorCode::Fatal | RDKafkaErrorCode::InvalidConfig
                )
            }),
        }
    }
}

fn client_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", client_id)
        .set("socket.timeout.ms", "10000")
        // Statistics tell when a broker is reachable again (see client_log).
        .set("statistics.interval.ms", "5000");
    if let Some(contexts) = &settings.debug {
        config.set("debug", contexts);
    }
    config
}

/// Every producer of feedstream.
pub type Producer = FutureProducer<KafkaContext>;

/// A consumer in no group, reading the partitions it is assigned.
pub type Reader = BaseConsumer<KafkaContext>;

/// A producer with acks from all in-sync replicas, idempotence on, and the given
/// delivery timeout.
pub fn producer(settings: &KafkaSettings, client_id: &str) -> Result<Producer, KafkaFailure> {
    producer_config(settings, client_id)
        .create_with_context(KafkaContext)
        .map_err(KafkaFailure::Configuration)
}

/// The settings of [`producer`], for a caller that adds its own.
pub fn producer_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = client_config(settings, client_id);
    config
        // Java clients' default partitioner, so that records keyed by a user id land in
        // the same partition whichever client produced them.
        .set("partitioner", "murmur2_random")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        );
    config
}

fn consumer_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = client_config(settings, client_id);
    config.set(
        "fetch.wait.max.ms",
        settings.fetch_wait.as_millis().to_string(),
    );
    config
}

/// The operator's consumer properties, last, so that they win over feedstream's.
fn with_consumer_properties(mut config: ClientConfig, settings: &KafkaSettings) -> ClientConfig {
    for (key, value) in &settings.consumer_properties {
        config.set(key, value);
    }
    config
}

/// A consumer that is in no group: it reads exactly the partitions it is assigned.
pub fn standalone_consumer(
    settings: &KafkaSettings,
    client_id: &str,
) -> Result<Reader, KafkaFailure> {
    let mut config = consumer_config(settings, client_id);
    config
        .set("group.id", format!("{client_id}-standalone"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    with_consumer_properties(config, settings)
        .create_with_context(KafkaContext)
        .map_err(KafkaFailure::Configuration)
}

/// One partition of one topic.
pub type TopicPartition = (String, i32);

/// Reads a partition from its beginning to its end as of the call, with a consumer in
/// no group, calling `each` per record. Returns how many records it read.
pub fn read_partition<E: From<KafkaFailure>>(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    each: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, E> {
    const QUIET: Duration = Duration::from_secs(60);
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(KafkaFailure::Operation)?;
    if low >= high {
        return Ok(0);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(low))
        .map_err(KafkaFailure::Operation)?;
    consumer.assign(&list).map_err(KafkaFailure::Operation)?;
    let mut count = 0u64;
    let mut next = low;
    let mut quiet_since = std::time::Instant::now();
    while next < high {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                quiet_since = std::time::Instant::now();
                each(&message)?;
                count += 1;
                next = message.offset() + 1;
                if count % 10_000 == 0 {
                    progress(count);
                }
            }
            Some(Err(error)) => return Err(KafkaFailure::Operation(error).into()),
            None if quiet_since.elapsed() > QUIET => {
                return Err(KafkaFailure::Stalled {
                    topic: topic.to_string(),
                    partition,
                    reached: next,
                    end: high,
                    quiet: QUIET,
                }
                .into())
            }
            None => {}
        }
    }
    consumer.unassign().map_err(KafkaFailure::Operation)?;
    progress(count);
    Ok(count)
}

/// A change of this member's assignment, seen during a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Records assignment changes as librdkafka reports them, for the runtime to act on
/// between batches (it never has work in flight while it polls), and publishes the
/// consumer lag librdkafka's statistics report.
pub struct MembershipContext {
    changes: Mutex<Vec<MembershipChange>>,
    group: String,
    lag: Family<LagLabels, Gauge>,
}

impl MembershipContext {
    fn lag_labels(&self, topic: &str, partition: i32) -> LagLabels {
        LagLabels {
            group: self.group.clone(),
            topic: topic.to_string(),
            partition,
        }
    }

    fn push(&self, change: MembershipChange) {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(change);
    }

    fn has_changes(&self) -> bool {
        !self
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
    }

    fn take(&self) -> Vec<MembershipChange> {
        std::mem::take(
            &mut *self
                .changes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|element| (element.topic().to_string(), element.partition()))
        .collect()
}

impl ClientContext for MembershipContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        client_log::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_log::client_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        client_log::brokers_seen(&statistics);
        for (name, topic) in &statistics.topics {
            for (partition, state) in &topic.partitions {
                // librdkafka lists partitions it only knows of (-1: no lag known).
                if *partition >= 0 && state.desired && state.consumer_lag >= 0 {
                    self.lag
                        .get_or_create(&self.lag_labels(name, *partition))
                        .set(state.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for MembershipContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // librdkafka keeps a partition's pause across its revocation and its next
            // assignment, while the runtime forgets its pauses at revocation: a
            // partition paused for backpressure would never be fetched again. So every
            // partition leaves its assignment resumed (resuming it while it is still
            // assigned; the assignment that follows then starts at the committed
            // offset, as any other).
            if let Err(error) = consumer.resume(list) {
                tracing::error!(%error, "could not resume revoked partitions");
            }
            let revoked = partitions_of(list);
            for (topic, partition) in &revoked {
                self.lag.remove(&self.lag_labels(topic, *partition));
            }
            self.push(MembershipChange::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => self.push(MembershipChange::Assigned(partitions_of(list))),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::error!(%error, "consumer group rebalance failed"),
        }
    }
}

/// A record read from an input topic, detached from the consumer.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The record's timestamp (Unix ms), when it has one.
    pub timestamp: Option<i64>,
    /// The `event_id` header, when present and numeric.
    pub event_id: Option<u64>,
}

impl InputRecord {
    fn from_message<M: Message>(message: &M) -> Self {
        let event_id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == EVENT_ID_HEADER)
                .and_then(|header| header.value)
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(|text| text.parse().ok())
        });
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp: message.timestamp().to_millis(),
            event_id,
        }
    }

    /// A short description for logs and dead-letter headers.
    pub fn source(&self) -> String {
        format!("{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// Records read since the last batch, all from before `changes` happened.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<InputRecord>,
    pub changes: Vec<MembershipChange>,
}

/// A member of a consumer group with manual, synchronous offset commits.
pub struct GroupConsumer {
    consumer: StreamConsumer<MembershipContext>,
    /// A record that arrived after a membership change: first of the next batch.
    held: Option<InputRecord>,
    /// Offsets whose commit failed, committed with the next ones.
    uncommitted: BTreeMap<TopicPartition, i64>,
    /// The partitions this member owns, as of the changes handed out so far.
    assignment: BTreeSet<TopicPartition>,
}

impl GroupConsumer {
    /// Joins `group_id` and subscribes to `topics` with Kafka's consumer group protocol
    /// (KIP-848): the broker assigns, incrementally, so when a member joins or leaves
    /// only the partitions that move are revoked and assigned, and the others keep
    /// being processed. Its `range` assignor gives partition i of every topic to the
    /// same member when the topics have equal partition counts: the co-partitioning the
    /// processor's tasks rely on. Session timeout and heartbeats are the broker's
    /// (`group.consumer.*` in deploy/kafka/broker.properties). The lag of each owned
    /// partition is kept in `lag`, refreshed every few seconds.
    pub fn join(
        settings: &KafkaSettings,
        group_id: &str,
        client_id: &str,
        topics: &[&str],
        lag: Family<LagLabels, Gauge>,
    ) -> Result<Self, KafkaFailure> {
        let mut config = consumer_config(settings, client_id);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("group.protocol", "consumer")
            .set("group.remote.assignor", "range")
            // Restoration and retried sink writes happen between polls.
            .set("max.poll.interval.ms", "300000")
            // Bounds what librdkafka prefetches (one queue for all partitions) while the
            // runtime is busy or retrying: memory stays bounded whatever the input rate.
            .set("queued.max.messages.kbytes", "16384");
        let context = MembershipContext {
            changes: Mutex::default(),
            group: group_id.to_string(),
            lag,
        };
        let consumer: StreamConsumer<MembershipContext> =
            with_consumer_properties(config, settings)
                .create_with_context(context)
                .map_err(KafkaFailure::Configuration)?;
        consumer
            .subscribe(topics)
            .map_err(KafkaFailure::Operation)?;
        Ok(Self {
            consumer,
            held: None,
            uncommitted: BTreeMap::new(),
            assignment: BTreeSet::new(),
        })
    }

    /// Waits up to `max_wait` for a first record, then takes the records already
    /// fetched, up to `max_records`, without waiting for more: a record is handed on at
    /// once when traffic is light, and batches grow by themselves under load (from what
    /// arrived while the last batch was written). Stops early at a membership change or
    /// at shutdown. Records of the returned batch all precede its changes.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Batch {
        let mut batch = Batch::default();
        if !self.uncommitted.is_empty() {
            if let Err(error) = self.commit(&BTreeMap::new()) {
                tracing::debug!(%error, "earlier offsets still not committed");
            }
        }
        if let Some(record) = self.held.take() {
            batch.records.push(record);
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        while batch.records.len() < max_records && !*shutdown.borrow() {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() || self.consumer.context().has_changes() {
                break;
            }
            let step = if batch.records.is_empty() {
                remaining.min(Duration::from_millis(100))
            } else {
                Duration::ZERO
            };
            tokio::select! {
                received = tokio::time::timeout(step, self.consumer.recv()) => match received {
                    Ok(Ok(message)) => {
                        let record = InputRecord::from_message(&message);
                        if self.consumer.context().has_changes() {
                            self.held = Some(record);
                            break;
                        }
                        batch.records.push(record);
                    }
                    Ok(Err(error)) => {
                        if client_log::is_connection_failure(&error) {
                            tracing::debug!(%error, "consumer error; librdkafka retries");
                        } else {
                            tracing::warn!(%error, "consumer error; librdkafka retries");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // Nothing more already fetched: hand on what there is.
                    Err(_) if !batch.records.is_empty() => break,
                    Err(_) => {}
                },
                _ = shutdown.changed() => break,
            }
        }
        batch.changes = self.consumer.context().take();
        for change in &batch.changes {
            match change {
                MembershipChange::Revoked(partitions) => {
                    for partition in partitions {
                        self.uncommitted.remove(partition);
                        self.assignment.remove(partition);
                    }
                }
                MembershipChange::Assigned(partitions) => {
                    self.assignment.extend(partitions.iter().cloned());
                }
            }
        }
        // librdkafka hands out no record fetched under an assignment that has since
        // been revoked, so a record held back at a change belongs to the assignment
        // that follows it: it is dropped only if its partition is gone (it is then
        // read again from the committed offset by its next owner). Dropping it because
        // its partition was revoked *and assigned again* would skip it for good: the
        // fetch goes on after it.
        if self.held.as_ref().is_some_and(|held| {
            !self
                .assignment
                .contains(&(held.topic.clone(), held.partition))
        }) {
            self.held = None;
        }
        if !batch.changes.is_empty() {
            tracing::debug!(changes = ?batch.changes, "consumer group membership changed");
        }
        batch
    }

    /// Commits `next offset to read` for each partition, with any earlier offsets whose
    /// commit failed, and waits for the broker. Offsets that fail to commit are kept and
    /// tried again with the next commit or batch, so a failure is never final while the
    /// partition stays assigned; until then a restart replays from the older commit.
    pub fn commit(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<(), KafkaFailure> {
        for (partition, offset) in offsets {
            let pending = self.uncommitted.entry(partition.clone()).or_insert(*offset);
            *pending = (*pending).max(*offset);
        }
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.uncommitted {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(KafkaFailure::Operation)?;
        }
        tokio::task::block_in_place(|| self.consumer.commit(&list, CommitMode::Sync))
            .map_err(KafkaFailure::Operation)?;
        self.uncommitted.clear();
        Ok(())
    }

    /// Whether this member has read everything the broker holds of each of `partitions`
    /// of `topic`, asked in one request. The end offsets are asked of the broker at the
    /// time of the question: a fetch response reads its partitions one after another,
    /// so the watermark it carried can miss a record stored before a later record of
    /// another partition. Before the first record arrives the position is unknown; then
    /// the committed offset (or, without one, the start of the partition) is where
    /// reading resumes.
    pub fn caught_up(
        &self,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<BTreeMap<i32, bool>, KafkaFailure> {
        let list = |offset: Offset| -> Result<TopicPartitionList, KafkaFailure> {
            let mut list = TopicPartitionList::new();
            for partition in partitions {
                list.add_partition_offset(topic, *partition, offset)
                    .map_err(KafkaFailure::Operation)?;
            }
            Ok(list)
        };
        let offsets_of = |list: &TopicPartitionList| -> BTreeMap<i32, i64> {
            list.elements_for_topic(topic)
                .into_iter()
                .filter_map(|element| match element.offset() {
                    Offset::Offset(offset) => Some((element.partition(), offset)),
                    _ => None,
                })
                .collect()
        };
        tokio::task::block_in_place(|| {
            // A ListOffsets for "latest" (Offset::End, timestamp -1) of every partition.
            let ends = self
                .consumer
                .offsets_for_times(list(Offset::End)?, timeout)
                .map_err(KafkaFailure::Operation)?;
            let ends = offsets_of(&ends);
            let mut positions = self
                .consumer
                .position()
                .map(|positions| offsets_of(&positions))
                .unwrap_or_default();
            if partitions.iter().any(|p| !positions.contains_key(p)) {
                let committed = self
                    .consumer
                    .committed_offsets(list(Offset::Invalid)?, timeout)
                    .map_err(KafkaFailure::Operation)?;
                for (partition, offset) in offsets_of(&committed) {
                    positions.entry(partition).or_insert(offset);
                }
            }
            Ok(partitions
                .iter()
                .map(|partition| {
                    let end = ends.get(partition).copied().unwrap_or(i64::MAX);
                    // Without a position or a committed offset, reading starts at the
                    // beginning, offset 0 for inputs (they are kept forever).
                    let resumes_at = positions.get(partition).copied().unwrap_or(0);
                    (*partition, resumes_at >= end)
                })
                .collect())
        })
    }

    /// Stops fetching these partitions (the member stays in the group), or resumes.
    pub fn set_paused(
        &self,
        partitions: &[TopicPartition],
        paused: bool,
    ) -> Result<(), KafkaFailure> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        result.map_err(KafkaFailure::Operation)
    }
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    pub topic: String,
    /// `None` lets the partitioner choose by key.
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    /// `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(&'static str, String)>,
}

/// Where a record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Sends every record and waits for all acknowledgements.
pub async fn deliver(
    producer: &Producer,
    records: &[OutboundRecord],
) -> Result<Vec<Delivered>, KafkaFailure> {
    let mut outbox = Outbox::new(producer);
    for record in records {
        outbox.send(record).await?;
    }
    outbox.flush().await
}

/// Sends records and waits for every acknowledgement; records in flight are bounded by
/// librdkafka's queue (a full queue waits for the oldest delivery).
pub struct Outbox<'p> {
    producer: &'p Producer,
    in_flight: VecDeque<(String, DeliveryFuture)>,
    delivered: Vec<Delivered>,
}

impl<'p> Outbox<'p> {
    pub fn new(producer: &'p Producer) -> Self {
        Self {
            producer,
            in_flight: VecDeque::new(),
            delivered: Vec::new(),
        }
    }

    pub async fn send(&mut self, record: &OutboundRecord) -> Result<(), KafkaFailure> {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        let mut future_record = FutureRecord::<[u8], [u8]>::to(&record.topic)
            .key(&record.key)
            .headers(headers);
        if let Some(payload) = &record.payload {
            future_record = future_record.payload(payload);
        }
        if let Some(partition) = record.partition {
            future_record = future_record.partition(partition);
        }
        if let Some(timestamp) = record.timestamp {
            future_record = future_record.timestamp(timestamp);
        }
        loop {
            match self.producer.send_result(future_record) {
                Ok(delivery) => {
                    self.in_flight
                        .push_back((record.topic.to_string(), delivery));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    future_record = returned;
                    if !self.await_oldest().await? {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err((error, _)) => return Err(KafkaFailure::Operation(error)),
            }
        }
    }

    /// Waits for all acknowledgements; fails on the first record the broker did not take.
    pub async fn flush(mut self) -> Result<Vec<Delivered>, KafkaFailure> {
        while self.await_oldest().await? {}
        Ok(self.delivered)
    }

    async fn await_oldest(&mut self) -> Result<bool, KafkaFailure> {
        let Some((topic, delivery)) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        match delivery.await {
            Ok(Ok(delivery)) => {
                self.delivered.push(Delivered {
                    topic,
                    partition: delivery.partition,
                    offset: delivery.offset,
                });
                Ok(true)
            }
            Ok(Err((error, _))) => Err(KafkaFailure::Operation(error)),
            Err(_) => Err(KafkaFailure::Operation(KafkaError::Canceled)),
        }
    }
}
