//! The SQLite event store: the embedded default, one file, no server.
//!
//! SQLite runs one write transaction at a time. Every append takes the
//! database's write lock first (`BEGIN IMMEDIATE`, and in-process a mutex so
//! that the process's own writers queue instead of spinning on `SQLITE_BUSY`),
//! and positions come from `AUTOINCREMENT` inside that transaction: a later
//! position can only be handed out after the earlier transaction committed,
//! so position order is commit order and `WHERE position > last` is safe.
//!
//! The file runs in WAL mode, so readers never block the writer, with
//! `synchronous=NORMAL`: a commit survives a crash of the process, and a
//! power loss can only lose the last commits, never corrupt the file. The
//! production path (PostgreSQL) makes every commit durable.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use charter_domain::upcast::Upcasters;
use charter_domain::{Actor, CausationId, CommandId, CorrelationId, EventId, OrgName};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::value::RawValue;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::sql::{self, to_i64, to_u64};
use crate::store::{Snapshot, StoreOptions, prepare_parts, record_append, upcast_payload};
use crate::{
    AppendOutcome, EventStore, ExpectedVersion, Position, RecordedEvent, StoreError, StoreLimits,
    StreamAppend, StreamId, StreamVersion,
};

fn migrator() -> Migrator {
    sql::migrator(&[
        (
            "event store",
            include_str!("../../schema/migrations/sqlite/0001_event_store.sql"),
        ),
        (
            "read models",
            include_str!("../../schema/migrations/sqlite/0002_read_models.sql"),
        ),
        (
            "read model index by org",
            include_str!("../../schema/migrations/sqlite/0003_read_model_index.sql"),
        ),
    ])
}

macro_rules! event_columns {
    () => {
        "position, event_id, stream_id, aggregate_type, version, event_type, schema_version, \
         recorded_at, org, actor, command_id, correlation_id, causation_id, payload"
    };
}

/// SQLite-backed [`EventStore`].
pub struct SqliteStore {
    pool: SqlitePool,
    write: Mutex<()>,
    limits: StoreLimits,
    upcasters: Arc<Upcasters>,
    poll_interval: Duration,
    commits: watch::Sender<u64>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file a `sqlite://` URL names.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidName {
                what: "database url",
                value: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // An in-memory database lives in one connection only.
        let max = if url.contains(":memory:") || url.contains("mode=memory") {
            1
        } else {
            options.max_connections.clamp(1, 8)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(StoreError::from_sqlx)?;
        let (commits, _) = watch::channel(0u64);
        Ok(Self {
            pool,
            write: Mutex::new(()),
            limits: options.limits,
            upcasters: options.upcasters,
            poll_interval: options.poll_interval,
            commits,
        })
    }

    /// The pool, for tests and tools that need raw access to the file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn find_command(
        conn: &mut sqlx::SqliteConnection,
        command_id: CommandId,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let row = sqlx::query(
            "SELECT f.stream_id, f.position, f.version,
                    (SELECT count(*) FROM events e
                      WHERE e.stream_id = f.stream_id AND e.version >= f.version
                        AND e.command_id = f.command_id),
                    f.recorded_at
             FROM events f WHERE f.command_id = ?1 AND f.command_seq = 0",
        )
        .bind(command_id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        let get = |i| row.try_get::<i64, _>(i).map_err(StoreError::from_sqlx);
        sql::earlier_outcome(
            row.try_get(0).map_err(StoreError::from_sqlx)?,
            get(1)?,
            get(2)?,
            get(3)?,
            row.try_get(4).map_err(StoreError::from_sqlx)?,
        )
        .map(Some)
    }

    /// Writes every part in one transaction, or none of them.
    async fn append_parts(
        &self,
        parts: &[StreamAppend<'_>],
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let payloads = prepare_parts(parts, self.limits)?;
        let _writer = self.write.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)?;
        let mut earlier = Vec::with_capacity(parts.len());
        for part in parts {
            earlier.push(Self::find_command(&mut tx, part.meta.command_id).await?);
        }
        if earlier.iter().any(Option::is_some) {
            // A repeat answers with its first outcomes, all of them.
            let mut outcomes = Vec::with_capacity(parts.len());
            for (part, outcome) in parts.iter().zip(earlier) {
                match outcome {
                    Some(outcome) if outcome.stream_id == *part.stream => outcomes.push(outcome),
                    Some(outcome) => {
                        return Err(StoreError::CommandIdReused {
                            command_id: part.meta.command_id,
                            stream: outcome.stream_id,
                        });
                    }
                    None => {
                        return Err(StoreError::CommandIdReused {
                            command_id: part.meta.command_id,
                            stream: part.stream.clone(),
                        });
                    }
                }
            }
            return Ok(outcomes);
        }
        let mut currents = Vec::with_capacity(parts.len());
        for part in parts {
            let current: i64 = sqlx::query_scalar(
                "SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = ?1",
            )
            .bind(part.stream.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
            let current = StreamVersion(to_u64(current));
            let matches = match part.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => current == StreamVersion(0),
                ExpectedVersion::Exact(v) => current == v,
            };
            if !matches {
                return Err(StoreError::WrongExpectedVersion {
                    stream: part.stream.clone(),
                    expected: part.expected,
                    actual: current,
                });
            }
            currents.push(current);
        }
        let recorded_at = Utc::now();
        let mut outcomes = Vec::with_capacity(parts.len());
        for ((part, current), payloads) in parts.iter().zip(currents).zip(&payloads) {
            let meta = part.meta;
            let command_id = meta.command_id.to_string();
            let correlation_id = meta.correlation_id.to_string();
            let causation_id = meta.causation().to_string();
            let mut first_position = None;
            let mut last_position = 0;
            for (index, (event, payload)) in part.events.iter().zip(payloads).enumerate() {
                let result = sqlx::query(
                    "INSERT INTO events (stream_id, version, aggregate_type, event_id, event_type,
                        schema_version, recorded_at, org, actor, command_id, command_seq,
                        correlation_id, causation_id, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .bind(part.stream.as_str())
                .bind(to_i64(current.0 + index as u64 + 1))
                .bind(meta.aggregate_type.as_str())
                .bind(event.event_id.to_string())
                .bind(event.event_type.as_str())
                .bind(i64::from(event.schema_version))
                .bind(recorded_at)
                .bind(meta.org.as_str())
                .bind(meta.actor.as_str())
                .bind(command_id.as_str())
                .bind(index as i64)
                .bind(correlation_id.as_str())
                .bind(causation_id.as_str())
                .bind(payload.as_str())
                .execute(&mut *tx)
                .await;
                match result {
                    Ok(done) => {
                        last_position = to_u64(done.last_insert_rowid());
                        first_position.get_or_insert(last_position);
                    }
                    // Another process won the race for this version.
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        drop(tx);
                        return Err(StoreError::WrongExpectedVersion {
                            stream: part.stream.clone(),
                            expected: part.expected,
                            actual: self.stream_version(part.stream).await?,
                        });
                    }
                    Err(error) => return Err(StoreError::from_sqlx(error)),
                }
            }
            outcomes.push(AppendOutcome {
                stream_id: part.stream.clone(),
                first_version: StreamVersion(current.0 + 1),
                last_version: StreamVersion(current.0 + part.events.len() as u64),
                first_position: Position(first_position.unwrap_or(last_position)),
                last_position: Position(last_position),
                recorded_at,
                duplicate: false,
            });
        }
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        Ok(outcomes)
    }

    fn decode(&self, row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
        let position = Position(to_u64(row.try_get(0).map_err(StoreError::from_sqlx)?));
        let malformed = |reason: String| StoreError::MalformedEvent { position, reason };
        let column = |e: sqlx::Error| malformed(e.to_string());
        let uuid = |i: usize| -> Result<Uuid, StoreError> {
            let text: String = row.try_get(i).map_err(column)?;
            Uuid::parse_str(&text).map_err(|e| malformed(format!("column {i}: {e}")))
        };
        let aggregate_type: String = row.try_get(3).map_err(column)?;
        let event_type: String = row.try_get(5).map_err(column)?;
        let schema_version: i64 = row.try_get(6).map_err(column)?;
        let schema_version = u32::try_from(schema_version)
            .map_err(|_| malformed(format!("bad schema version {schema_version}")))?;
        let payload_text: String = row.try_get(13).map_err(column)?;
        let payload = RawValue::from_string(payload_text)
            .map_err(|e| malformed(format!("payload is not JSON: {e}")))?;
        let (schema_version, payload) = upcast_payload(
            &self.upcasters,
            position,
            &aggregate_type,
            &event_type,
            schema_version,
            payload,
        )?;
        Ok(RecordedEvent::new(crate::EventRecord {
            position,
            event_id: EventId::from_uuid(uuid(1)?),
            stream_id: StreamId::parse(row.try_get::<String, _>(2).map_err(column)?)
                .map_err(|e| malformed(e.to_string()))?,
            aggregate_type,
            version: StreamVersion(to_u64(row.try_get(4).map_err(column)?)),
            event_type,
            schema_version,
            recorded_at: row.try_get::<DateTime<Utc>, _>(7).map_err(column)?,
            org: OrgName::parse(row.try_get::<String, _>(8).map_err(column)?)
                .map_err(|e| malformed(e.to_string()))?,
            actor: Actor::parse(row.try_get::<String, _>(9).map_err(column)?)
                .map_err(|e| malformed(e.to_string()))?,
            command_id: CommandId::from_uuid(uuid(10)?),
            correlation_id: CorrelationId::from_uuid(uuid(11)?),
            causation_id: CausationId::from_uuid(uuid(12)?),
            payload,
        }))
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn limits(&self) -> StoreLimits {
        self.limits
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        migrator()
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        sql::check_migrated(
            sqlx::query_scalar(
                "SELECT COALESCE(max(version), 0) FROM _sqlx_migrations WHERE success",
            )
            .fetch_one(&self.pool),
        )
        .await
    }

    #[tracing::instrument(
        name = "append",
        level = "debug",
        skip_all,
        fields(
            backend = self.backend(),
            parts = parts.len(),
            stream = parts.first().map(|p| p.stream.as_str()),
            org = parts.first().map(|p| p.meta.org.as_str()),
            command_id = parts.first().map(|p| tracing::field::display(p.meta.command_id)),
            correlation_id = parts.first().map(|p| tracing::field::display(p.meta.correlation_id)),
        )
    )]
    async fn append_all(
        &self,
        parts: &[StreamAppend<'_>],
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let started = Instant::now();
        let result = self.append_parts(parts).await;
        match &result {
            Ok(outcomes) => {
                for outcome in outcomes {
                    record_append(self.backend(), Ok(outcome), started.elapsed());
                }
            }
            Err(error) => record_append(self.backend(), Err(error), started.elapsed()),
        }
        result
    }

    async fn command_outcome(
        &self,
        command_id: CommandId,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        Self::find_command(&mut conn, command_id).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = ?1")
                .bind(stream.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        Ok(StreamVersion(to_u64(version)))
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE stream_id = ?1 AND version > ?2 ORDER BY version LIMIT ?3"
        ))
        .bind(stream.as_str())
        .bind(to_i64(after.0))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        if rows.is_empty() && self.stream_version(stream).await? == StreamVersion(0) {
            return Err(StoreError::StreamNotFound(stream.clone()));
        }
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Decoded as rows stream in from SQLite's worker thread.
        let mut rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        ))
        .bind(to_i64(after.0))
        .bind(to_i64(limit as u64))
        .fetch(&self.pool);
        let mut events = Vec::with_capacity(limit.min(10_000));
        while let Some(row) = rows.try_next().await.map_err(StoreError::from_sqlx)? {
            events.push(self.decode(&row)?);
        }
        Ok(events)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(Position(to_u64(head)))
    }

    async fn count_after(&self, after: Position, cap: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE position > ?1 LIMIT ?2)",
        )
        .bind(to_i64(after.0))
        .bind(to_i64(cap))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(to_u64(count))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let state = serde_json::to_string(&snapshot.state)
            .map_err(|e| StoreError::Serialization(e.to_string()))?;
        sqlx::query(
            "INSERT INTO snapshots (stream_id, aggregate_type, version, state, taken_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (stream_id) DO UPDATE
                SET aggregate_type = excluded.aggregate_type, version = excluded.version,
                    state = excluded.state, taken_at = excluded.taken_at
              WHERE snapshots.version < excluded.version",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(&snapshot.aggregate_type)
        .bind(to_i64(snapshot.version.0))
        .bind(state)
        .bind(snapshot.taken_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(
            "SELECT aggregate_type, version, state, taken_at FROM snapshots WHERE stream_id = ?1",
        )
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get(2).map_err(StoreError::from_sqlx)?;
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            aggregate_type: row.try_get(0).map_err(StoreError::from_sqlx)?,
            version: StreamVersion(to_u64(row.try_get(1).map_err(StoreError::from_sqlx)?)),
            state: serde_json::from_str(&state)
                .map_err(|e| StoreError::Serialization(e.to_string()))?,
            taken_at: row.try_get(3).map_err(StoreError::from_sqlx)?,
        }))
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        Ok(position.map(|p| Position(to_u64(p))))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position,
                updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(to_i64(position.0))
        .bind(Utc::now())
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}
