use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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

impl crate::Retriable for KafkaFailure {
    fn is_retriable(&self) -> bool {
        KafkaFailure::is_retriable(self)
    }
}
