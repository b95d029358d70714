//! How every client of feedstream reaches the brokers: the settings, and the producer and
//! consumer configurations built from them.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureProducer;

use crate::client_log::KafkaContext;
use crate::{BatchProducer, KafkaFailure};

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

/// A producer that answers each record on its own: the API's, whose every request
/// waits for its one event. The stages deliver batches through a [`BatchProducer`].
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

/// A [`BatchProducer`] with the settings of [`producer`].
pub fn batch_producer(
    settings: &KafkaSettings,
    client_id: &str,
) -> Result<BatchProducer, KafkaFailure> {
    BatchProducer::create(&producer_config(settings, client_id))
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

pub(crate) fn consumer_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = client_config(settings, client_id);
    config
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait.as_millis().to_string(),
        )
        // librdkafka's default, said here because correctness rests on it: records of
        // aborted transactions (exactly-once) are never read, restored or materialized.
        .set("isolation.level", "read_committed");
    config
}

/// The operator's consumer properties, last, so that they win over feedstream's.
pub(crate) fn with_consumer_properties(
    mut config: ClientConfig,
    settings: &KafkaSettings,
) -> ClientConfig {
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
