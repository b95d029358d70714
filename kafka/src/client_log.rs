//! What librdkafka says, reduced to what an operator reads. librdkafka logs every failed
//! reconnect of every client to every broker (about ten ERROR lines a second while a
//! broker is down); here an outage of one broker is one warning when it starts and one
//! line when it ends, with how long it lasted and how many attempts failed, for the
//! whole process. Other librdkafka messages pass through at their own level.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

/// The context of every Kafka client that needs no other (producers, admin, readers).
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        brokers_seen(&statistics);
    }
}

/// A reader assigns its partitions itself: no rebalance to hear of.
impl ConsumerContext for KafkaContext {}

/// One broker that clients of this process cannot reach.
struct Outage {
    since: Instant,
    failures: u64,
}

/// Outages by broker name as librdkafka gives it (`host:port/id`, or
/// `host:port/bootstrap` before the cluster's metadata is known).
static OUTAGES: Mutex<BTreeMap<String, Outage>> = Mutex::new(BTreeMap::new());

fn outages() -> std::sync::MutexGuard<'static, BTreeMap<String, Outage>> {
    OUTAGES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// librdkafka's log callback.
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    // FAIL: a connection to one broker failed or was lost. The message is
    // `[thrd:THREAD]: BROKER: what happened`.
    if fac == "FAIL" {
        let (broker, text) = failing_broker(message);
        connection_failed(broker, text);
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// The broker a FAIL message is about, and the message without its thread prefix.
fn failing_broker(message: &str) -> (&str, &str) {
    let text = message
        .strip_prefix("[thrd:")
        .and_then(|rest| rest.split_once("]: "))
        .map_or(message, |(_, text)| text);
    (text.split(": ").next().unwrap_or(text), text)
}

/// Whether a client error only says that brokers cannot be reached: those are told by
/// the outage lines, from the FAIL log of each broker.
pub(crate) fn is_connection_failure(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// librdkafka's error callback.
pub(crate) fn client_error(error: &KafkaError, reason: &str) {
    if !is_connection_failure(error) {
        tracing::error!(target: "librdkafka", %error, "{reason}");
    }
}

fn connection_failed(broker: &str, message: &str) {
    let mut outages = outages();
    match outages.get_mut(broker) {
        Some(outage) => outage.failures += 1,
        None => {
            tracing::warn!(
                broker,
                detail = message,
                "Kafka broker unreachable; clients retry until it answers"
            );
            outages.insert(
                broker.to_string(),
                Outage {
                    since: Instant::now(),
                    failures: 1,
                },
            );
        }
    }
}

/// Ends the outages of brokers a client's statistics show connected; a bootstrap
/// address's outage ends once any broker of the cluster is.
pub(crate) fn brokers_seen(statistics: &Statistics) {
    let up: Vec<&str> = statistics
        .brokers
        .values()
        .filter(|broker| broker.state == "UP")
        .map(|broker| broker.name.as_str())
        .collect();
    if up.is_empty() {
        return;
    }
    let cluster_up = statistics
        .brokers
        .values()
        .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
    end_outages(&up, cluster_up);
}

fn end_outages(up: &[&str], cluster_up: bool) {
    let mut outages = outages();
    outages.retain(|broker, outage| {
        let ended = up.contains(&broker.as_str()) || (cluster_up && broker.ends_with("/bootstrap"));
        if ended {
            tracing::info!(
                broker = broker.as_str(),
                seconds = outage.since.elapsed().as_secs_f64(),
                failed_attempts = outage.failures,
                "Kafka broker reachable again"
            );
        }
        !ended
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_entry_per_broker_until_it_is_up_again() {
        let message = "[thrd:127.0.0.1:1/7]: 127.0.0.1:1/7: Connect to ipv4#127.0.0.1:1 failed: Connection refused";
        assert_eq!(
            failing_broker(message),
            (
                "127.0.0.1:1/7",
                "127.0.0.1:1/7: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
            )
        );
        for _ in 0..50 {
            log(RDKafkaLogLevel::Error, "FAIL", message);
        }
        log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "[thrd:x]: 127.0.0.1:1/bootstrap: Connect failed",
        );
        let failures = |broker: &str| outages().get(broker).map(|outage| outage.failures);
        assert_eq!(failures("127.0.0.1:1/7"), Some(50));
        assert_eq!(failures("127.0.0.1:1/bootstrap"), Some(1));

        end_outages(&["127.0.0.1:2/8"], false);
        assert_eq!(failures("127.0.0.1:1/7"), Some(50), "another broker is up");
        end_outages(&["127.0.0.1:1/7"], true);
        assert_eq!(failures("127.0.0.1:1/7"), None);
        assert_eq!(failures("127.0.0.1:1/bootstrap"), None, "the cluster is up");
        assert!(is_connection_failure(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
    }
}
