//! The [`EventStore`] trait every backend implements, its limits, snapshots,
//! checkpoints, and the live [`Subscription`] built on top of any backend.
//!
//! The trait is the I/O boundary of the write side: the PostgreSQL store is
//! the production implementation, the SQLite store the embedded one, and one
//! conformance suite (`commands/tests/conformance`) runs against both.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use charter_domain::upcast::Upcasters;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::event::check_type_name;
use crate::{
    AppendOutcome, CommandMeta, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError,
    StreamAppend, StreamId, StreamVersion,
};

/// Size limits every append is checked against before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLimits {
    /// Largest serialized payload of one event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_batch: usize,
}

/// No append may hold more events than this: the PostgreSQL store keeps
/// the event's index inside its transaction in the low 20 bits of the
/// position.
pub const HARD_MAX_BATCH: usize = 1 << 20;

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 512 * 1024,
            max_batch: 10_000,
        }
    }
}

/// The latest saved state of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub stream_id: StreamId,
    pub aggregate_type: String,
    /// The stream version the state includes.
    pub version: StreamVersion,
    pub state: Value,
    pub taken_at: DateTime<Utc>,
}

/// Options every backend understands.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub limits: StoreLimits,
    /// PostgreSQL only: the schema that holds Charter's tables (created if
    /// absent). `None` uses the connection's default search path.
    pub schema: Option<String>,
    pub max_connections: u32,
    /// PostgreSQL only: how many groups of appends may be on their way at
    /// once, each on a connection of its own.
    pub append_lanes: u32,
    pub upcasters: Arc<Upcasters>,
    /// The longest a live subscription waits before looking again when no
    /// commit was announced (commits by other processes that could not be
    /// announced, transactions that held the read horizon back).
    pub poll_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            limits: StoreLimits::default(),
            schema: None,
            max_connections: 16,
            append_lanes: 1,
            upcasters: Arc::new(charter_domain::upcast::domain_upcasters()),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// An append-only log of streams with one global order.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;

    fn limits(&self) -> StoreLimits;

    /// Applies the schema migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Ok when the store is reachable and fully migrated.
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Appends `events` to `stream` if its version matches `expected`, as
    /// one atomic step. A `meta.command_id` that was already appended
    /// returns the first outcome (with `duplicate: true`) and writes nothing.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        meta: &CommandMeta,
    ) -> Result<AppendOutcome, StoreError> {
        let part = StreamAppend {
            stream,
            expected,
            events,
            meta,
        };
        let mut outcomes = self.append_all(&[part]).await?;
        Ok(outcomes.remove(0))
    }

    /// Appends to several streams as one atomic step: every part is
    /// written, or none is. Each part has its own expected version and its
    /// own command (command ids must differ between parts, and so must
    /// streams); the outcomes come back in the order of the parts. When
    /// any part's expected version does not match, nothing is written and
    /// the first such part's conflict is returned. When the parts' command
    /// ids were appended before, each part answers with its first outcome
    /// (`duplicate: true`); when only some were, the append is refused with
    /// [`StoreError::CommandIdReused`].
    async fn append_all(
        &self,
        parts: &[StreamAppend<'_>],
    ) -> Result<Vec<AppendOutcome>, StoreError>;

    /// What the append of this command id did, if it was appended.
    async fn command_outcome(
        &self,
        command_id: charter_domain::CommandId,
    ) -> Result<Option<AppendOutcome>, StoreError>;

    /// The stream's current version (0 when it does not exist).
    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError>;

    /// Events of one stream with a version greater than `after`, in version
    /// order. An unknown stream is [`StoreError::StreamNotFound`].
    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events of the whole log after `after`, in global order, never
    /// passing an event that a still-open transaction may yet commit.
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// What a live [`Subscription`] reads: like `read_all`, but a store
    /// may answer from a shared in-memory tail that trails the database by
    /// a moment (it then ticks `commits()` when it has more). It also says
    /// whether events already committed lie beyond what it could return
    /// (held back by an older transaction still open): only then need a
    /// follower look again before the next tick. A store that cannot tell
    /// says they may.
    async fn read_tail(&self, after: Position, limit: usize) -> Result<TailRead, StoreError> {
        Ok(TailRead {
            events: self.read_all(after, limit).await?,
            held_back: true,
        })
    }

    /// The position of the last event `read_all` can return now.
    async fn head(&self) -> Result<Position, StoreError>;

    /// How many readable events lie after `after`, counting at most `cap`.
    async fn count_after(&self, after: Position, cap: u64) -> Result<u64, StoreError>;

    /// Saves a snapshot unless a newer one is already stored.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// The stream's latest snapshot and up to `limit` events after it:
    /// what loading an aggregate needs, in one round trip where the backend
    /// can. An unknown stream is no snapshot and no events.
    async fn load(
        &self,
        stream: &StreamId,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        let snapshot = self.load_snapshot(stream).await?;
        let after = snapshot.as_ref().map_or(StreamVersion(0), |s| s.version);
        let events = match self.read_stream(stream, after, limit).await {
            Ok(events) => events,
            Err(StoreError::StreamNotFound(_)) => Vec::new(),
            Err(error) => return Err(error),
        };
        Ok((snapshot, events))
    }

    /// A named reader's saved position.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError>;

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError>;

    /// Ticks whenever a commit is announced: by this process, or by other
    /// processes where the backend can hear them.
    fn commits(&self) -> watch::Receiver<u64>;

    fn poll_interval(&self) -> Duration;
}

/// Opens the store a URL names: `postgres://…`/`postgresql://…` or
/// `sqlite://…` (`sqlite://charter.db` is a file in the working directory).
pub async fn connect(url: &str, options: StoreOptions) -> Result<Arc<dyn EventStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            crate::postgres::PostgresStore::connect(url, options).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            crate::sqlite::SqliteStore::open(url, options).await?,
        ))
    } else {
        Err(StoreError::InvalidName {
            what: "database url (expected postgres://… or sqlite://…)",
            value: url.split('@').next_back().unwrap_or_default().to_owned(),
        })
    }
}

/// Checks an append before any I/O and serializes each payload once.
pub(crate) fn prepare_append(
    events: &[NewEvent],
    meta: &CommandMeta,
    limits: StoreLimits,
) -> Result<Vec<String>, StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    let max_batch = limits.max_batch.min(HARD_MAX_BATCH);
    if events.len() > max_batch {
        return Err(StoreError::BatchTooLarge {
            count: events.len(),
            max: max_batch,
        });
    }
    check_type_name("aggregate type", &meta.aggregate_type)?;
    let mut payloads = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        check_type_name("event type", &event.event_type)?;
        let payload = event.payload.get().to_owned();
        if payload.len() > limits.max_event_bytes {
            return Err(StoreError::EventTooLarge {
                index,
                bytes: payload.len(),
                max: limits.max_event_bytes,
            });
        }
        payloads.push(payload);
    }
    Ok(payloads)
}

/// Checks a multi-stream append before any I/O: at least one part, no
/// stream or command id twice, each part as [`prepare_append`] checks it.
/// Returns each part's serialized payloads.
pub(crate) fn prepare_parts(
    parts: &[StreamAppend<'_>],
    limits: StoreLimits,
) -> Result<Vec<Vec<String>>, StoreError> {
    if parts.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    let mut prepared = Vec::with_capacity(parts.len());
    let mut total = 0;
    for (index, part) in parts.iter().enumerate() {
        let earlier = &parts[..index];
        if earlier.iter().any(|p| p.stream == part.stream) {
            return Err(StoreError::RepeatedInAppend {
                what: "stream",
                value: part.stream.to_string(),
            });
        }
        if earlier
            .iter()
            .any(|p| p.meta.command_id == part.meta.command_id)
        {
            return Err(StoreError::RepeatedInAppend {
                what: "command id",
                value: part.meta.command_id.to_string(),
            });
        }
        total += part.events.len();
        prepared.push(prepare_append(part.events, part.meta, limits)?);
    }
    if total > HARD_MAX_BATCH {
        return Err(StoreError::BatchTooLarge {
            count: total,
            max: HARD_MAX_BATCH,
        });
    }
    Ok(prepared)
}

/// Brings a stored payload to the current schema version; a payload that
/// is already current is passed through without being parsed.
pub(crate) fn upcast_payload(
    upcasters: &Upcasters,
    position: Position,
    aggregate_type: &str,
    event_type: &str,
    schema_version: u32,
    payload: Box<RawValue>,
) -> Result<(u32, Box<RawValue>), StoreError> {
    if upcasters.is_empty()
        || upcasters.current_version(aggregate_type, event_type) <= schema_version
    {
        return Ok((schema_version, payload));
    }
    let malformed = |reason: String| StoreError::MalformedEvent { position, reason };
    let value: Value = serde_json::from_str(payload.get()).map_err(|e| malformed(e.to_string()))?;
    let (version, value) = upcasters
        .upcast(aggregate_type, event_type, schema_version, value)
        .map_err(|e| malformed(e.to_string()))?;
    let raw = serde_json::value::to_raw_value(&value).map_err(|e| malformed(e.to_string()))?;
    Ok((version, raw))
}

/// What a read of the log's tail found.
#[derive(Debug, Default)]
pub struct TailRead {
    pub events: Vec<RecordedEvent>,
    /// Committed events lie beyond `events` that an older open transaction
    /// holds back for now (or the store cannot tell that none do).
    pub held_back: bool,
}

/// A live reader of the global log: it first catches up from its position,
/// then follows new commits. Once it has everything readable it sleeps
/// until a commit is announced, or at most the store's poll interval;
/// while committed events are held back by an older open transaction it
/// looks again soon, backing off. It never spins.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    position: Position,
    batch: usize,
    commits: watch::Receiver<u64>,
    idle_rounds: u32,
    /// The last read returned everything readable and nothing was held
    /// back: the next waits for a commit first.
    settled: bool,
}

impl Subscription {
    pub fn new(store: Arc<dyn EventStore>, after: Position, batch: usize) -> Self {
        let commits = store.commits();
        Self {
            store,
            position: after,
            batch: batch.max(1),
            commits,
            idle_rounds: 0,
            settled: false,
        }
    }

    /// The position of the last event handed out.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The events available right now (at most `limit`), without waiting.
    pub async fn next_ready(&mut self, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let events = self.store.read_tail(self.position, limit).await?.events;
        if let Some(last) = events.last() {
            self.position = last.position;
        }
        Ok(events)
    }

    /// The next batch of events, waiting for one if the log is caught up.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            if self.settled {
                // Nothing to read until the next commit (the poll interval
                // bounds the wait, should an announcement be lost).
                self.settled = false;
                tokio::select! {
                    changed = self.commits.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(self.store.poll_interval()).await;
                        }
                    }
                    () = tokio::time::sleep(self.store.poll_interval()) => {}
                }
            }
            self.commits.mark_unchanged();
            let TailRead { events, held_back } =
                self.store.read_tail(self.position, self.batch).await?;
            let full = events.len() >= self.batch;
            if let Some(last) = events.last() {
                self.position = last.position;
                self.idle_rounds = 0;
                self.settled = !full && !held_back;
                return Ok(events);
            }
            if !held_back {
                self.idle_rounds = 0;
                self.settled = true;
                continue;
            }
            // Committed events are held back by an older transaction that
            // is about to commit: look again soon, backing off towards the
            // poll interval.
            let poll = self.store.poll_interval();
            let wait = if self.idle_rounds < 8 {
                Duration::from_millis(1 << self.idle_rounds).min(poll)
            } else {
                poll
            };
            self.idle_rounds = self.idle_rounds.saturating_add(1);
            tokio::select! {
                changed = self.commits.changed() => {
                    if changed.is_ok() {
                        self.idle_rounds = 0;
                    } else {
                        tokio::time::sleep(wait).await;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Records one append in the metrics every backend reports.
pub(crate) fn record_append(
    backend: &'static str,
    result: Result<&AppendOutcome, &StoreError>,
    elapsed: Duration,
) {
    use charter_domain::ErrorCode;
    metrics::histogram!("charter_store_append_duration_seconds", "backend" => backend)
        .record(elapsed.as_secs_f64());
    match result {
        Ok(outcome) if !outcome.duplicate => {
            metrics::counter!("charter_store_appends_total", "backend" => backend).increment(1);
            metrics::counter!("charter_store_appended_events_total", "backend" => backend)
                .increment(outcome.last_version.0 - outcome.first_version.0 + 1);
        }
        Ok(_) => {
            metrics::counter!("charter_store_duplicate_commands_total", "backend" => backend)
                .increment(1);
        }
        Err(StoreError::WrongExpectedVersion { .. }) => {
            metrics::counter!("charter_store_append_conflicts_total", "backend" => backend)
                .increment(1);
        }
        Err(error) => {
            metrics::counter!("charter_store_append_errors_total", "backend" => backend, "code" => error.code())
                .increment(1);
        }
    }
}

/// Waits until `read_all` can return the event at `position` (a writer's
/// read-your-writes), or `timeout` passes. Returns whether it got there.
pub async fn wait_for_position(
    store: &dyn EventStore,
    position: Position,
    timeout: Duration,
) -> Result<bool, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut commits = store.commits();
    let mut pause = Duration::from_millis(1);
    loop {
        commits.mark_unchanged();
        if store.head().await? >= position {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let wait = pause.min(deadline - now);
        tokio::select! {
            _ = commits.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
        pause = (pause * 2).min(store.poll_interval());
    }
}
