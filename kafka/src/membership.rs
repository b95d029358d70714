//! Assignment changes of a group member, as librdkafka reports them during a poll.

use std::sync::Mutex;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::client_log;
use crate::metrics::LagLabels;
use crate::TopicPartition;

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
    pub(crate) changes: Mutex<Vec<MembershipChange>>,
    pub(crate) group: String,
    pub(crate) lag: Family<LagLabels, Gauge>,
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

    pub(crate) fn has_changes(&self) -> bool {
        !self
            .changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
    }

    pub(crate) fn take(&self) -> Vec<MembershipChange> {
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
    // A fatal error of a group member is told once, by the group consumer, which looks
    // for one whenever a poll finds nothing (it says what it means and what it does);
    // librdkafka's own lines for it would repeat at every attempt to join.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FATAL" {
            tracing::debug!(target: "librdkafka", fac, "{message}");
        } else {
            client_log::log(level, fac, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::UnreleasedInstanceId
                    | RDKafkaErrorCode::FencedInstanceId
            )
        );
        if fatal {
            tracing::debug!(target: "librdkafka", %error, "{reason}");
        } else {
            client_log::client_error(&error, reason);
        }
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
