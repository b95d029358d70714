//! PostgreSQL, the truth both sides share: its pool and its schema (`migrations/`).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::redact::redact;
use crate::StorageError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that connects lazily, so a process starts (and reports PostgreSQL as down in
/// its health) while the database is unreachable.
pub fn connect_postgres(url: &str) -> Result<PgPool, StorageError> {
    let options: PgConnectOptions = url.parse().map_err(|source| StorageError::Postgres {
        target: redact(url),
        source,
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

/// Applies the migrations in `migrations/` (idempotent; concurrent runs serialize on
/// sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StorageError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
