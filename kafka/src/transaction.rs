//! Exactly-once (Kafka Streams' `exactly_once_v2`, KIP-447): a stage's outputs and its
//! input offsets are one Kafka transaction, committed or aborted together. Readers with
//! `isolation.level=read_committed` (every reader of feedstream, and the contract asks
//! the same of analysts) never see the records of an aborted transaction.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::settings::producer_config;
use crate::{Acknowledged, BatchProducer, GroupConsumer, KafkaFailure, KafkaSettings};
use crate::{OutboundRecord, TopicPartition};

/// What a stage promises about its outputs when it fails and starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessingGuarantee {
    /// Outputs are sent, then input offsets committed: a crash in between sends the
    /// outputs of the replayed records again. Idempotent sinks make it effectively-once.
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets in one transaction per cycle.
    ExactlyOnceV2,
}

impl ProcessingGuarantee {
    /// Kafka Streams' names.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
            ProcessingGuarantee::ExactlyOnceV2 => "exactly_once_v2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown processing guarantee {0:?}: at_least_once or exactly_once_v2")]
pub struct UnknownGuarantee(String);

impl FromStr for ProcessingGuarantee {
    type Err = UnknownGuarantee;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "at_least_once" => Ok(ProcessingGuarantee::AtLeastOnce),
            "exactly_once_v2" => Ok(ProcessingGuarantee::ExactlyOnceV2),
            other => Err(UnknownGuarantee(other.to_string())),
        }
    }
}

/// How long an open transaction may last before the broker aborts it (Kafka Streams'
/// default under exactly-once). It bounds how long a killed instance's open
/// transaction holds back every read_committed reader of the partitions it wrote.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The retry backoff of a transactional producer (see [`transactional_producer`]).
const CONCURRENT_TRANSACTIONS_BACKOFF: Duration = Duration::from_millis(20);

/// A producer whose records belong to transactions of `transactional_id`, registered
/// with the broker: starting it fences an earlier producer of the same id (a zombie of
/// this instance) and aborts that producer's open transaction.
pub fn transactional_producer(
    settings: &KafkaSettings,
    client_id: &str,
    transactional_id: &str,
) -> Result<BatchProducer, KafkaFailure> {
    let mut config = producer_config(settings, client_id);
    let delivery = settings.delivery_timeout.min(TRANSACTION_TIMEOUT);
    config
        .set("transactional.id", transactional_id)
        .set(
            "transaction.timeout.ms",
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        )
        // librdkafka requires a delivery to time out within its transaction.
        .set("message.timeout.ms", delivery.as_millis().to_string())
        // A transaction begun right after the previous commit finds the coordinator
        // still writing that commit's markers: it answers CONCURRENT_TRANSACTIONS and
        // the client retries after this backoff. librdkafka's 100 ms default made every
        // cycle at least that long; Java's producer uses 20 ms here (KAFKA-5477).
        .set(
            "retry.backoff.ms",
            CONCURRENT_TRANSACTIONS_BACKOFF.as_millis().to_string(),
        );
    let producer = BatchProducer::create(&config)?;
    tokio::task::block_in_place(|| producer.client().init_transactions(TRANSACTION_TIMEOUT))
        .map_err(transaction_failure)?;
    Ok(producer)
}

/// Sends `records` and commits `offsets` (next offset to read, per partition) of
/// `consumer`'s group in one transaction. On failure the transaction is aborted (its
/// records are then invisible to read_committed readers) and the error says whether a
/// new attempt may follow ([`KafkaFailure::Aborted`]) or the producer was fenced
/// ([`KafkaFailure::Fatal`]: another instance took over; this one must stop writing).
pub async fn commit_transaction(
    producer: &BatchProducer,
    consumer: &GroupConsumer,
    records: &[OutboundRecord],
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<Acknowledged, KafkaFailure> {
    tokio::task::block_in_place(|| producer.client().begin_transaction())
        .map_err(transaction_failure)?;
    match send_and_commit(producer, consumer, records, offsets).await {
        Ok(acknowledged) => Ok(acknowledged),
        Err(failure) if !failure.is_retriable() => Err(failure),
        Err(failure) => {
            if let Err(error) = tokio::task::block_in_place(|| {
                producer.client().abort_transaction(TRANSACTION_TIMEOUT)
            }) {
                // The broker aborts it at its timeout; the next attempt starts afresh.
                tracing::warn!(%error, "could not abort the transaction");
            }
            Err(KafkaFailure::Aborted {
                reason: failure.to_string(),
            })
        }
    }
}

async fn send_and_commit(
    producer: &BatchProducer,
    consumer: &GroupConsumer,
    records: &[OutboundRecord],
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<Acknowledged, KafkaFailure> {
    let acknowledged = producer.deliver(records).await?;
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(KafkaFailure::Operation)?;
    }
    let group = consumer
        .group_metadata()
        .ok_or_else(|| KafkaFailure::Aborted {
            reason: "the consumer has no group metadata yet".to_string(),
        })?;
    // A retriable error of either call may be answered by calling it again.
    retry_retriable(|| {
        producer
            .client()
            .send_offsets_to_transaction(&list, &group, TRANSACTION_TIMEOUT)
    })?;
    retry_retriable(|| producer.client().commit_transaction(TRANSACTION_TIMEOUT))?;
    Ok(acknowledged)
}

/// Attempts at a transactional call that keeps failing retriably (each waits up to
/// [`TRANSACTION_TIMEOUT`]).
const ATTEMPTS: u32 = 3;

fn retry_retriable(call: impl Fn() -> Result<(), KafkaError>) -> Result<(), KafkaFailure> {
    let mut attempt = 1;
    loop {
        match tokio::task::block_in_place(&call) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(error)) if error.is_retriable() && attempt < ATTEMPTS => {
                tracing::debug!(%error, attempt, "transactional call failed; calling it again");
                attempt += 1;
            }
            Err(error) => return Err(transaction_failure(error)),
        }
    }
}

/// A fatal transactional error (fenced, or the producer's state lost) is final; any
/// other leaves the transaction to be aborted and tried again.
fn transaction_failure(error: KafkaError) -> KafkaFailure {
    match &error {
        KafkaError::Transaction(inner) if inner.is_fatal() => fatal(inner),
        _ => KafkaFailure::Aborted {
            reason: error.to_string(),
        },
    }
}

fn fatal(error: &RDKafkaError) -> KafkaFailure {
    KafkaFailure::Fatal {
        code: error.code(),
        reason: error.string(),
    }
}
