//! Pieces both SQL stores share: integer conversions at the column
//! boundary, the embedded migrator, the readiness check and the outcome of
//! a repeated command.

use std::future::Future;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::{AppendOutcome, Position, StoreError, StreamId, StreamVersion};

/// The newest migration this build knows, for every backend.
pub(crate) const LATEST_MIGRATION: i64 = 3;

/// Readiness must answer fast even while the server is unreachable.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A migrator over the SQL files compiled into the binary, numbered from 1
/// in order: `(description, sql)`.
pub(crate) fn migrator(files: &[(&'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .zip(1..)
            .map(|(&(description, sql), version)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Ready when the highest applied migration (what `applied` reads from
/// `_sqlx_migrations`) is the one this build needs.
pub(crate) async fn check_migrated(
    applied: impl Future<Output = Result<i64, sqlx::Error>>,
) -> Result<(), StoreError> {
    let applied = tokio::time::timeout(READY_TIMEOUT, applied)
        .await
        .map_err(|_| StoreError::Unavailable(format!("no answer within {READY_TIMEOUT:?}")))?
        .map_err(StoreError::from_sqlx)?;
    if applied < LATEST_MIGRATION {
        return Err(StoreError::NotMigrated(format!(
            "schema at migration {applied}, this build needs {LATEST_MIGRATION}"
        )));
    }
    Ok(())
}

/// The outcome of an earlier append, from its first event's row and the
/// number of events it wrote.
pub(crate) fn earlier_outcome(
    stream: String,
    first_position: i64,
    first_version: i64,
    count: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
) -> Result<AppendOutcome, StoreError> {
    let (position, version) = (to_u64(first_position), to_u64(first_version));
    let count = to_u64(count).max(1);
    Ok(AppendOutcome {
        stream_id: StreamId::parse(stream)?,
        first_version: StreamVersion(version),
        last_version: StreamVersion(version + count - 1),
        first_position: Position(position),
        last_position: Position(position + count - 1),
        recorded_at,
        duplicate: true,
    })
}
