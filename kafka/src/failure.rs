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
    /// A transaction was aborted (its records are invisible to read_committed readers);
    /// the work it held is to be done again.
    #[error("Kafka transaction aborted: {reason}")]
    Aborted { reason: String },
    /// The client can no longer be used (librdkafka's fatal errors), e.g. another
    /// process joined the group with this one's instance id.
    #[error("Kafka client failed for good ({code:?}): {reason}")]
    Fatal {
        code: RDKafkaErrorCode,
        reason: String,
    },
}

impl KafkaFailure {
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaFailure::Configuration(_) => false,
            KafkaFailure::Unreachable { .. }
            | KafkaFailure::Stalled { .. }
            | KafkaFailure::Aborted { .. } => true,
            // An instance id still held by this instance's killed predecessor is
            // released when the broker expires that session; any other fatal error
            // (fenced by a newer instance with the same id) means this one must stop.
            KafkaFailure::Fatal { code, .. } => *code == RDKafkaErrorCode::UnreleasedInstanceId,
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
