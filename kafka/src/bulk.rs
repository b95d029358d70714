//! Producing many records whose offsets nobody needs (feed-events, dead letters) and
//! waiting for all of them at once. librdkafka reports only failed deliveries
//! (`delivery.report.only.error`), so a record costs no delivery report, no future and
//! no channel: a profile of the processor had a fifth of its CPU in the thread that
//! turned one delivery report per record into one future per record.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::{client_log, producer_config, KafkaFailure, KafkaSettings, OutboundRecord};

/// Hears of failed deliveries only; keeps the first since the last batch.
pub struct BulkContext {
    failure: Mutex<Option<KafkaError>>,
}

impl BulkContext {
    fn take_failure(&self) -> Option<KafkaError> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl ClientContext for BulkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        client_log::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_log::client_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        client_log::brokers_seen(&statistics);
    }
}

impl ProducerContext for BulkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert_with(|| error.clone());
        }
    }
}

/// A producer for records sent in batches and acknowledged as a batch.
pub struct BulkProducer {
    producer: ThreadedProducer<BulkContext>,
    /// How long a batch may wait for its acknowledgements: the settings' delivery
    /// timeout, after which librdkafka fails the records still waiting.
    flush_timeout: Duration,
}

impl BulkProducer {
    pub fn new(settings: &KafkaSettings, client_id: &str) -> Result<Self, KafkaFailure> {
        let producer = producer_config(settings, client_id)
            .set("delivery.report.only.error", "true")
            .create_with_context(BulkContext {
                failure: Mutex::new(None),
            })
            .map_err(KafkaFailure::Configuration)?;
        Ok(Self {
            producer,
            flush_timeout: settings.delivery_timeout + Duration::from_secs(5),
        })
    }

    /// Sends every record and waits until the broker has acknowledged all of them, or
    /// fails with the first record it did not take (the others may have been stored:
    /// sending the batch again is the caller's retry, and every reader of these topics
    /// is idempotent).
    pub fn send_all(&self, records: &[OutboundRecord]) -> Result<(), KafkaFailure> {
        // A failure left from an earlier batch belongs to that batch, already retried.
        self.producer.context().take_failure();
        for record in records {
            self.send(record)?;
        }
        tokio::task::block_in_place(|| self.producer.flush(self.flush_timeout))
            .map_err(KafkaFailure::Operation)?;
        match self.producer.context().take_failure() {
            Some(error) => Err(KafkaFailure::Operation(error)),
            None => Ok(()),
        }
    }

    fn send(&self, record: &OutboundRecord) -> Result<(), KafkaFailure> {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        let mut base = BaseRecord::<[u8], [u8]>::to(&record.topic)
            .key(&record.key)
            .headers(headers);
        if let Some(payload) = &record.payload {
            base = base.payload(payload);
        }
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        if let Some(timestamp) = record.timestamp {
            base = base.timestamp(timestamp);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // librdkafka's queue is full: wait for some of it to be acknowledged.
                    base = returned;
                    tokio::task::block_in_place(|| {
                        let _ = self.producer.flush(Duration::from_millis(100));
                    });
                }
                Err((error, _)) => return Err(KafkaFailure::Operation(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::Consumer;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;
    use crate::{standalone_consumer, DEFAULT_FETCH_WAIT};

    fn settings(brokers: String) -> KafkaSettings {
        KafkaSettings {
            brokers,
            delivery_timeout: Duration::from_secs(10),
            debug: None,
            fetch_wait: DEFAULT_FETCH_WAIT,
            consumer_properties: Vec::new(),
        }
    }

    fn records(topic: &str, count: usize) -> Vec<OutboundRecord> {
        (0..count)
            .map(|i| OutboundRecord {
                topic: topic.to_string(),
                partition: None,
                key: i.to_string().into_bytes(),
                payload: Some(b"{}".to_vec()),
                timestamp: None,
                headers: vec![("event_id", i.to_string())],
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_returns_once_the_broker_holds_all_of_it() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("feed-events", 3, 1).unwrap();
        let settings = settings(cluster.bootstrap_servers());
        let producer = BulkProducer::new(&settings, "test-bulk").unwrap();
        producer.send_all(&records("feed-events", 2_000)).unwrap();
        let reader = standalone_consumer(&settings, "test-reader").unwrap();
        let stored: i64 = (0..3)
            .map(|partition| {
                let (low, high) = reader
                    .fetch_watermarks("feed-events", partition, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum();
        assert_eq!(stored, 2_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_the_broker_refuses_fails_the_batch() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("feed-events", 1, 1).unwrap();
        let producer =
            BulkProducer::new(&settings(cluster.bootstrap_servers()), "test-bulk").unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let result = producer.send_all(&records("feed-events", 10));
        assert!(
            matches!(result, Err(KafkaFailure::Operation(_))),
            "{result:?}"
        );
    }
}
