use feedstream_topology::kafka::KafkaFailure;

/// Failures of the sinks and of the read side, and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("PostgreSQL at {target}: {source}")]
    Postgres {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PostgreSQL migrations failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("Redis at {target}: {source}")]
    Redis {
        target: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("the Redis URL is invalid: {0}")]
    RedisUrl(#[source] redis::RedisError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Layout(#[from] feedstream_topology::topics::TopicsError),
}

impl SinkError {
    pub fn is_retriable(&self) -> bool {
        match self {
            SinkError::Postgres { source, .. } => postgres_is_transient(source),
            SinkError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
            }
            SinkError::Kafka(failure) => failure.is_retriable(),
            SinkError::Layout(error) => error.is_retriable(),
            SinkError::Migration(_) | SinkError::RedisUrl(_) => false,
        }
    }
}

/// Connection trouble, server shutdown and lock conflicts pass; anything about the data
/// itself does not.
fn postgres_is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // 08: connection exception; 40001/40P01: serialization or deadlock;
            // 53: insufficient resources; 57P0x: the server is shutting down or starting.
            code.starts_with("08")
                || code == "40001"
                || code == "40P01"
                || code.starts_with("53")
                || code.starts_with("57P0")
        }),
        _ => false,
    }
}
