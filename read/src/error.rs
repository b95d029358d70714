/// Failures of PostgreSQL and Redis, on the read path and in the sink's writes, and
/// whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
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
}

impl StorageError {
    pub fn is_retriable(&self) -> bool {
        match self {
            StorageError::Postgres { source, .. } => postgres_is_transient(source),
            StorageError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
            }
            StorageError::Migration(_) | StorageError::RedisUrl(_) => false,
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
