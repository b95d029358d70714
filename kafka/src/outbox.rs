//! The producer of the stages (processor, sink, rebuilds, dead-letter replays): it sends
//! a batch of records and waits until the broker acknowledged every one.
//!
//! A batch is tallied, not awaited record by record: librdkafka's delivery reports
//! count down one shared tally (the highest offset acknowledged per partition, the
//! first failure), and the batch wakes once when the count reaches zero. A future, a
//! channel and a copy of the topic name per record cost the processor about a fifth of
//! its CPU when every feed entry is a record (bench/results/2-core-epyc-kafka/ANALYSIS.md).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use tokio::sync::Notify;

use crate::client_log::KafkaContext;
use crate::{KafkaFailure, OutboundRecord};

/// The highest offset the broker acknowledged in each partition a batch wrote to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acknowledged {
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl Acknowledged {
    /// The highest offset acknowledged in `topic`'s `partition`, if the batch wrote there.
    pub fn last_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(topic)?.get(&partition).copied()
    }

    /// Every (topic, partition) written, with its highest acknowledged offset.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.offsets.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(partition, offset)| (topic.as_str(), *partition, *offset))
        })
    }

    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.offsets.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.offsets.entry(topic.to_string()).or_default(),
        };
        let last = partitions.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }
}

/// What the delivery reports of the batch in hand have said so far.
#[derive(Default)]
struct TallyState {
    /// Records sent and not yet reported.
    pending: usize,
    /// The sender wants a wake-up once `pending` is at most this.
    wake_at: usize,
    acknowledged: Acknowledged,
    failure: Option<KafkaError>,
}

#[derive(Default)]
struct Tally {
    state: Mutex<TallyState>,
    settled: Notify,
}

impl Tally {
    fn lock(&self) -> MutexGuard<'_, TallyState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until at most `target` records are pending.
    async fn drained_to(&self, target: usize) {
        loop {
            // Created before the check: a report between the check and the await still
            // wakes it (a stored permit), and a stale permit only costs one more check.
            let notified = self.settled.notified();
            {
                let mut state = self.lock();
                if state.pending <= target {
                    state.wake_at = 0;
                    return;
                }
                state.wake_at = target;
            }
            notified.await;
        }
    }
}

/// The context of a [`BatchProducer`]: the process's librdkafka log handling, and the
/// delivery reports counted into the tally.
pub struct TallyContext {
    tally: std::sync::Arc<Tally>,
}

impl ClientContext for TallyContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        KafkaContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        KafkaContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        KafkaContext.stats(statistics);
    }
}

impl ProducerContext for TallyContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.tally.lock();
        match result {
            Ok(message) => {
                state
                    .acknowledged
                    .record(message.topic(), message.partition(), message.offset())
            }
            Err((error, _)) => {
                state.failure.get_or_insert_with(|| error.clone());
            }
        }
        state.pending = state.pending.saturating_sub(1);
        if state.pending <= state.wake_at {
            self.tally.settled.notify_one();
        }
    }
}

/// A producer that delivers whole batches: [`BatchProducer::deliver`] sends records and
/// returns once every one is acknowledged, or with the first failure once every one is
/// reported. One batch at a time: a second caller waits for the first batch to settle.
pub struct BatchProducer {
    producer: ThreadedProducer<TallyContext>,
    tally: std::sync::Arc<Tally>,
    one_batch: tokio::sync::Mutex<()>,
}

impl BatchProducer {
    pub(crate) fn create(config: &ClientConfig) -> Result<Self, KafkaFailure> {
        let tally = std::sync::Arc::new(Tally::default());
        let producer = config
            .create_with_context(TallyContext {
                tally: tally.clone(),
            })
            .map_err(KafkaFailure::Configuration)?;
        Ok(Self {
            producer,
            tally,
            one_batch: tokio::sync::Mutex::new(()),
        })
    }

    /// The librdkafka producer, for transactional calls.
    pub fn client(&self) -> &ThreadedProducer<TallyContext> {
        &self.producer
    }

    /// Sends every record and waits for all acknowledgements. A record the broker did
    /// not take fails the batch, after every record of it was reported: nothing of a
    /// failed batch is still in flight when the caller sends it again.
    pub async fn deliver(&self, records: &[OutboundRecord]) -> Result<Acknowledged, KafkaFailure> {
        let _batch = self.one_batch.lock().await;
        // Reports of an earlier batch whose caller went away are not this batch's.
        self.tally.drained_to(0).await;
        {
            let mut state = self.tally.lock();
            state.acknowledged = Acknowledged::default();
            state.failure = None;
        }
        let mut refused = None;
        for record in records {
            if let Err(error) = self.send(record).await {
                refused = Some(error);
                break;
            }
        }
        self.tally.drained_to(0).await;
        let mut state = self.tally.lock();
        match (refused, state.failure.take()) {
            (Some(error), _) | (None, Some(error)) => Err(KafkaFailure::Operation(error)),
            (None, None) => Ok(std::mem::take(&mut state.acknowledged)),
        }
    }

    /// Hands one record to librdkafka; a full queue waits until half of it is reported.
    async fn send(&self, record: &OutboundRecord) -> Result<(), KafkaError> {
        let headers = (!record.headers.is_empty()).then(|| {
            record.headers.iter().fold(
                OwnedHeaders::new_with_capacity(record.headers.len()),
                |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    })
                },
            )
        });
        let mut base = BaseRecord::<[u8], [u8]>::to(&record.topic).key(&record.key[..]);
        if let Some(headers) = headers {
            base = base.headers(headers);
        }
        if let Some(payload) = &record.payload {
            base = base.payload(&payload[..]);
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        if let Some(timestamp) = record.timestamp {
            base = base.timestamp(timestamp);
        }
        loop {
            // Counted before the send: its report may come before `send` returns.
            self.tally.lock().pending += 1;
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((error, returned)) => {
                    self.tally.lock().pending -= 1;
                    if error != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                        return Err(error);
                    }
                    base = returned;
                    let pending = self.tally.lock().pending;
                    if pending == 0 {
                        // Full of nothing this producer sent: give librdkafka a moment.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    self.tally.drained_to(pending / 2).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;

    fn record(topic: &str, partition: i32, n: u32) -> OutboundRecord {
        OutboundRecord {
            topic: topic.into(),
            partition: Some(partition),
            key: n.to_be_bytes().to_vec(),
            payload: Some(vec![b'x'; 100]),
            timestamp: None,
            headers: vec![("event_id", n.to_string())],
        }
    }

    /// A producer of librdkafka's in-process mock cluster whose queue holds `queue`
    /// records.
    fn producer(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        queue: usize,
    ) -> BatchProducer {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", queue.to_string());
        BatchProducer::create(&config).expect("a producer of the mock cluster")
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_queue_is_delivered_whole() {
        let cluster = MockCluster::new(1).expect("a mock cluster");
        cluster.create_topic("out", 3, 1).expect("a topic");
        let producer = producer(&cluster, 50);
        let records: Vec<_> = (0..1_000)
            .map(|n| record("out", (n % 3) as i32, n))
            .collect();

        let acknowledged = producer.deliver(&records).await.expect("delivered");

        // A fresh topic: offsets count from 0, so the last offsets tell how many landed.
        let landed: Vec<_> = acknowledged.iter().collect();
        assert_eq!(
            landed,
            vec![("out", 0, 333), ("out", 1, 332), ("out", 2, 332)]
        );
    }

    #[tokio::test]
    async fn a_refused_batch_fails_and_the_next_batch_counts_only_its_own_records() {
        let cluster = MockCluster::new(1).expect("a mock cluster");
        cluster.create_topic("out", 2, 1).expect("a topic");
        let producer = producer(&cluster, 1_000);
        // Partition 9 does not exist: the batch fails once its first record is reported.
        let refused = producer
            .deliver(&[record("out", 1, 0), record("out", 9, 1)])
            .await;
        assert!(
            refused.is_err(),
            "a record to a missing partition was taken: {refused:?}"
        );

        let acknowledged = producer
            .deliver(&[record("out", 0, 2), record("out", 0, 3)])
            .await
            .expect("delivered");
        assert_eq!(acknowledged.iter().collect::<Vec<_>>(), vec![("out", 0, 1)]);
        assert_eq!(acknowledged.last_offset("out", 1), None);
    }
}
