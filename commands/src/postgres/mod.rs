//! The PostgreSQL event store: the production backend.
//!
//! # Why readers never pass over a late commit
//!
//! A `bigserial` position is taken when a row is inserted, but transactions
//! commit in another order: a reader that saw position 11 and checkpointed it
//! would never see position 10 if 10's transaction commits a moment later.
//!
//! Here a position is `(transaction id << 20) + index of the event in its
//! transaction`, computed inside the appending statement from
//! `pg_current_xact_id()`. PostgreSQL hands out transaction ids in increasing
//! order, and `pg_snapshot_xmin(pg_current_snapshot())` is the oldest
//! transaction id that may still be running: every transaction with a smaller
//! id has either committed (and is visible) or aborted, and every transaction
//! that starts later gets a larger id. A reader therefore only returns events
//! whose position lies below `xmin << 20`: that prefix of the log is final,
//! nothing can ever be inserted into it, and every reader sees it in the same
//! order. A reader following the log never skips an event and never sees one
//! twice; the price is that one long-running writing transaction anywhere in
//! the cluster holds readers back (not writers) until it ends.
//!
//! Appends are committed in groups (see [`append`]): the appends that
//! arrive while a transaction is on its way share the next one, a single
//! `INSERT … SELECT FROM unnest(…)` statement that checks every stream's
//! expected version and every command id and writes only the appends whose
//! checks pass. Optimistic concurrency rests on those checks and, against
//! writers in other processes, on the unique `(stream_id, version)`
//! constraint (two racing writers cannot both insert version N+1);
//! idempotency on a partial unique index over the command id of each
//! append's first event.
//!
//! Live followers wake on commits announced in-process and, across
//! processes, through `LISTEN`/`NOTIFY` on a channel per schema. `NOTIFY` is
//! sent by a background task coalescing bursts of appends, never inside an
//! append (a notifying transaction takes a cluster-wide lock at commit).
//!
//! Positions use 44 bits for the transaction id (epoch included) — enough
//! for millions of years of transactions at today's rates.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use charter_domain::upcast::Upcasters;
use charter_domain::{Actor, CausationId, CommandId, CorrelationId, EventId, OrgName};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::value::RawValue;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::sql::{self, to_i64, to_u64};
use crate::store::{Snapshot, StoreOptions, TailRead, prepare_parts, upcast_payload};
use crate::{
    AppendOutcome, CommandMeta, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent,
    StoreError, StoreLimits, StreamAppend, StreamId, StreamVersion,
};

mod append;

fn migrator() -> Migrator {
    sql::migrator(&[
        (
            "event store",
            include_str!("../../../schema/migrations/postgres/0001_event_store.sql"),
        ),
        (
            "read models",
            include_str!("../../../schema/migrations/postgres/0002_read_models.sql"),
        ),
        (
            "read model index by org",
            include_str!("../../../schema/migrations/postgres/0003_read_model_index.sql"),
        ),
        (
            "read model pages with room for updates",
            include_str!("../../../schema/migrations/postgres/0004_read_model_fillfactor.sql"),
        ),
    ])
}

macro_rules! event_columns {
    () => {
        "position, event_id, stream_id, aggregate_type, version, event_type, schema_version, \
         recorded_at, org, actor, command_id, correlation_id, causation_id, payload::text"
    };
}

/// The read horizon: positions below it belong to finished transactions.
macro_rules! horizon {
    () => {
        "(pg_snapshot_xmin(pg_current_snapshot())::text::int8 << 20)"
    };
}

/// PostgreSQL-backed [`EventStore`].
pub struct PostgresStore {
    pool: PgPool,
    limits: StoreLimits,
    upcasters: Arc<Upcasters>,
    poll_interval: Duration,
    commits: watch::Sender<u64>,
    announce: Arc<Notify>,
    committer: append::Committer,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 50
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            what: "schema",
            value: schema.to_owned(),
        })
    }
}

impl PostgresStore {
    /// Connects lazily: the store is created even while PostgreSQL is down,
    /// and [`EventStore::check_ready`] tells when it is usable. With a
    /// schema set, the schema is created first (this needs the server).
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidName {
            what: "database url",
            value: e.to_string(),
        })?;
        // Every statement here is a fixed shape over indexed equalities and
        // ranges: plan each once per connection instead of on every call.
        // A plan made while the log was small must not read it whole once
        // it has grown: sequential scans are never what these statements
        // want, so the planner is told to avoid them.
        connect = connect.application_name("charter").options([
            ("plan_cache_mode", "force_generic_plan"),
            ("enable_seqscan", "off"),
        ]);
        let channel = match &options.schema {
            Some(schema) => {
                check_schema_name(schema)?;
                let mut conn = PgConnection::connect_with(&connect)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                )))
                .execute(&mut conn)
                .await
                .map_err(StoreError::from_sqlx)?;
                conn.close().await.map_err(StoreError::from_sqlx)?;
                connect = connect.options([("search_path", schema.as_str())]);
                format!("charter_events_{schema}")
            }
            None => "charter_events".to_owned(),
        };
        // Appends have connections of their own (one per group on its
        // way), so that they never queue behind reads for the shared pool.
        let lanes = options.append_lanes.clamp(1, 16);
        let append_pool = PgPoolOptions::new()
            .max_connections(lanes)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(connect.clone());
        let pool = PgPoolOptions::new()
            // One connection more for the LISTEN task, which keeps its own.
            .max_connections(options.max_connections.max(1) + 1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(connect);
        let (commits, _) = watch::channel(0u64);
        let announce = Arc::new(Notify::new());
        let (committer, commit_task) = append::Committer::start(append_pool, lanes as usize, {
            let (commits, announce) = (commits.clone(), Arc::clone(&announce));
            move || {
                commits.send_modify(|n| *n = n.wrapping_add(1));
                announce.notify_one();
            }
        });
        let own = uuid::Uuid::now_v7().simple().to_string();
        let tasks = vec![
            tokio::spawn(listen(
                pool.clone(),
                channel.clone(),
                own.clone(),
                commits.clone(),
            )),
            tokio::spawn(announce_commits(
                pool.clone(),
                channel,
                own,
                Arc::clone(&announce),
            )),
            commit_task,
        ];
        Ok(Self {
            pool,
            limits: options.limits,
            upcasters: options.upcasters,
            poll_interval: options.poll_interval,
            commits,
            announce,
            committer,
            tasks,
        })
    }

    /// The pool, for tests and tools that need raw access to the same
    /// database and schema.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs the production append statement on a connection the caller
    /// controls (inside its own transaction), without retries or grouping.
    /// Tests use it to hold transactions open and commit them out of order.
    pub async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        meta: &CommandMeta,
    ) -> Result<AppendOutcome, StoreError> {
        let parts = self.prepare(&[StreamAppend {
            stream,
            expected,
            events,
            meta,
        }])?;
        let mut outcomes = append::append_unit_on(conn, &parts).await?;
        Ok(outcomes.remove(0))
    }

    fn prepare(&self, parts: &[StreamAppend<'_>]) -> Result<Vec<append::Part>, StoreError> {
        let payloads = prepare_parts(parts, self.limits)?;
        Ok(parts
            .iter()
            .zip(payloads)
            .map(|(part, payloads)| append::Part {
                stream: part.stream.clone(),
                expected: part.expected,
                meta: part.meta.clone(),
                event_ids: part.events.iter().map(|e| e.event_id.as_uuid()).collect(),
                types: part.events.iter().map(|e| e.event_type.clone()).collect(),
                schema_versions: part
                    .events
                    .iter()
                    .map(|e| i32::try_from(e.schema_version).unwrap_or(i32::MAX))
                    .collect(),
                payloads,
            })
            .collect())
    }

    /// Wakes live readers after a commit made outside `append`.
    pub fn announce_commit(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        self.announce.notify_one();
    }

    fn decode(&self, row: &PgRow) -> Result<RecordedEvent, StoreError> {
        decode_row(row, &self.upcasters)
    }
}

fn decode_row(row: &PgRow, upcasters: &Upcasters) -> Result<RecordedEvent, StoreError> {
    let position = Position(to_u64(row.try_get(0).map_err(StoreError::from_sqlx)?));
    let malformed = |reason: String| StoreError::MalformedEvent { position, reason };
    let column = |e: sqlx::Error| malformed(e.to_string());
    let aggregate_type: String = row.try_get(3).map_err(column)?;
    let event_type: String = row.try_get(5).map_err(column)?;
    let schema_version: i32 = row.try_get(6).map_err(column)?;
    let payload = RawValue::from_string(row.try_get::<String, _>(13).map_err(column)?)
        .map_err(|e| malformed(format!("payload is not JSON: {e}")))?;
    let schema_version = u32::try_from(schema_version)
        .map_err(|_| malformed(format!("negative schema version {schema_version}")))?;
    let (schema_version, payload) = upcast_payload(
        upcasters,
        position,
        &aggregate_type,
        &event_type,
        schema_version,
        payload,
    )?;
    Ok(RecordedEvent::new(crate::EventRecord {
        position,
        event_id: EventId::from_uuid(row.try_get(1).map_err(column)?),
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
        command_id: CommandId::from_uuid(row.try_get(10).map_err(column)?),
        correlation_id: CorrelationId::from_uuid(row.try_get(11).map_err(column)?),
        causation_id: CausationId::from_uuid(row.try_get(12).map_err(column)?),
        payload,
    }))
}

/// Follows `NOTIFY`s on the channel and ticks `commits` for each one
/// another store sent (this store's own commits tick at once).
async fn listen(pool: PgPool, channel: String, own: String, commits: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    // Anything committed while we were away is found by the
                    // readers' next look.
                    commits.send_modify(|n| *n = n.wrapping_add(1));
                    loop {
                        match listener.recv().await {
                            Ok(notice) if notice.payload() == own => {}
                            Ok(_) => commits.send_modify(|n| *n = n.wrapping_add(1)),
                            Err(error) => {
                                tracing::debug!(%error, "commit listener lost its connection");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "LISTEN failed"),
            },
            Err(error) => tracing::debug!(%error, "commit listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Sends one `NOTIFY` per burst of local commits, signed with this
/// store's token so that its own listener can pass it by.
async fn announce_commits(pool: PgPool, channel: String, own: String, announce: Arc<Notify>) {
    loop {
        announce.notified().await;
        if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&channel)
            .bind(&own)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "could not announce a commit");
        }
        // Let a burst of appends coalesce into the next notification.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
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
        let prepared = self.prepare(parts)?;
        self.committer.append(prepared).await
    }

    async fn command_outcome(
        &self,
        command_id: CommandId,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
        append::find_command(&mut conn, command_id).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = $1")
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
            " FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3"
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
        // Rows are decoded as they stream in, so that decoding overlaps with
        // the server producing the rest of the page.
        let mut rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE position > $1 AND position < ",
            horizon!(),
            " ORDER BY position LIMIT $2"
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

    async fn read_tail(&self, after: Position, limit: usize) -> Result<TailRead, StoreError> {
        // The same read as `read_all`, and in the same snapshot whether a
        // committed event lies at or past the horizon (its transaction
        // done, an older one still open). With no event to return, the
        // one row has only that answer.
        let mut rows = sqlx::query(concat!(
            "SELECT e.*, hz.held FROM (SELECT s.h, EXISTS (SELECT 1 FROM events WHERE position >= s.h) AS held FROM (SELECT ",
            horizon!(),
            " AS h) s) hz LEFT JOIN LATERAL (SELECT ",
            event_columns!(),
            " FROM events WHERE position > $1 AND position < hz.h ORDER BY position LIMIT $2) e ON true"
        ))
        .bind(to_i64(after.0))
        .bind(to_i64(limit as u64))
        .fetch(&self.pool);
        let mut read = TailRead::default();
        while let Some(row) = rows.try_next().await.map_err(StoreError::from_sqlx)? {
            read.held_back = row.try_get(14).map_err(StoreError::from_sqlx)?;
            let position: Option<i64> = row.try_get(0).map_err(StoreError::from_sqlx)?;
            if position.is_some() {
                read.events.push(self.decode(&row)?);
            }
        }
        Ok(read)
    }

    async fn head(&self) -> Result<Position, StoreError> {
        let head: i64 = sqlx::query_scalar(concat!(
            "SELECT COALESCE(max(position), 0) FROM events WHERE position < ",
            horizon!()
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(Position(to_u64(head)))
    }

    async fn count_after(&self, after: Position, cap: u64) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(concat!(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE position > $1 AND position < ",
            horizon!(),
            " LIMIT $2) t"
        ))
        .bind(to_i64(after.0))
        .bind(to_i64(cap))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(to_u64(count))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, aggregate_type, version, state, taken_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (stream_id) DO UPDATE
                SET aggregate_type = excluded.aggregate_type, version = excluded.version,
                    state = excluded.state, taken_at = excluded.taken_at
              WHERE snapshots.version < excluded.version",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(&snapshot.aggregate_type)
        .bind(to_i64(snapshot.version.0))
        .bind(&snapshot.state)
        .bind(snapshot.taken_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let row = sqlx::query(
            "SELECT aggregate_type, version, state, taken_at FROM snapshots WHERE stream_id = $1",
        )
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        row.map(|row| {
            Ok(Snapshot {
                stream_id: stream.clone(),
                aggregate_type: row.try_get(0).map_err(StoreError::from_sqlx)?,
                version: StreamVersion(to_u64(row.try_get(1).map_err(StoreError::from_sqlx)?)),
                state: row.try_get(2).map_err(StoreError::from_sqlx)?,
                taken_at: row.try_get(3).map_err(StoreError::from_sqlx)?,
            })
        })
        .transpose()
    }

    async fn load(
        &self,
        stream: &StreamId,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        // One round trip: the snapshot (if any) joined with the events
        // after it; the snapshot's state rides on the first row only.
        let rows = sqlx::query(
            "SELECT e.position, e.event_id, e.stream_id, e.aggregate_type, e.version, e.event_type,
                    e.schema_version, e.recorded_at, e.org, e.actor, e.command_id,
                    e.correlation_id, e.causation_id, e.payload,
                    s.aggregate_type, s.version,
                    CASE WHEN e.rn IS NULL OR e.rn = 1 THEN s.state END, s.taken_at
               FROM (SELECT 1) AS one
               LEFT JOIN snapshots s ON s.stream_id = $1
               LEFT JOIN LATERAL (
                    SELECT position, event_id, stream_id, aggregate_type, version, event_type,
                           schema_version, recorded_at, org, actor, command_id, correlation_id,
                           causation_id, payload::text AS payload,
                           row_number() OVER (ORDER BY version) AS rn
                      FROM events
                     WHERE stream_id = $1 AND version > COALESCE(s.version, 0)
                     ORDER BY version LIMIT $2) e ON true
              ORDER BY e.version",
        )
        .bind(stream.as_str())
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        let snapshot = match rows.first() {
            Some(row) => {
                let kind: Option<String> = row.try_get(14).map_err(StoreError::from_sqlx)?;
                match kind {
                    Some(aggregate_type) => Some(Snapshot {
                        stream_id: stream.clone(),
                        aggregate_type,
                        version: StreamVersion(to_u64(
                            row.try_get(15).map_err(StoreError::from_sqlx)?,
                        )),
                        state: row.try_get(16).map_err(StoreError::from_sqlx)?,
                        taken_at: row.try_get(17).map_err(StoreError::from_sqlx)?,
                    }),
                    None => None,
                }
            }
            None => None,
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let position: Option<i64> = row.try_get(0).map_err(StoreError::from_sqlx)?;
            if position.is_some() {
                events.push(self.decode(row)?);
            }
        }
        Ok((snapshot, events))
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        Ok(position.map(|p| Position(to_u64(p))))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        // A checkpoint lost to a crash is only read again from the log
        // (the relay also checks the stream's last message), so it need not
        // wait for the disk: appends keep the write-ahead log busy enough.
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        sqlx::query(
            "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
        )
        .bind(name)
        .bind(to_i64(position.0))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}
