use feedstream_kafka::topics::TopicsError;
use feedstream_kafka::KafkaFailure;
use feedstream_read::StorageError;

/// Failures of the sink, and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Layout(#[from] TopicsError),
}

impl SinkError {
    pub fn is_retriable(&self) -> bool {
        match self {
            SinkError::Storage(error) => error.is_retriable(),
            SinkError::Kafka(failure) => failure.is_retriable(),
            SinkError::Layout(error) => error.is_retriable(),
        }
    }
}

impl feedstream_kafka::Retriable for SinkError {
    fn is_retriable(&self) -> bool {
        SinkError::is_retriable(self)
    }
}
