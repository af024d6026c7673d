//! Appends on PostgreSQL, committed in groups.
//!
//! Every append (one stream, or several that must commit together) becomes
//! a *unit* handed to one committer task. While transactions are on their
//! way (as many at once as the store has append lanes, each on its own
//! connection), the units that arrive
//! wait; the next transaction takes all of them at once, in one statement.
//! Under load, many commands share one round trip, one transaction id and
//! one flush of the write-ahead log; with a single writer, a unit goes out
//! at once, as it would alone.
//!
//! Units in one transaction stay independent: the statement checks every
//! stream's expected version and every command id first and writes only
//! the units whose checks all pass, so a stale writer or a repeated command
//! never costs the others their commit. Two units on the same stream never
//! share a transaction, nor go out in two at once (the later one waits for
//! the earlier one's commit), so the checks see each other's results. A writer in another process can still race a
//! unit to a version; the unique constraint then fails the whole statement,
//! and each unit of that group is tried again on its own.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::sql::{self, to_i64, to_u64};
use crate::store::{HARD_MAX_BATCH, record_append};
use crate::{
    AppendOutcome, CommandMeta, ExpectedVersion, Position, StoreError, StreamId, StreamVersion,
};

/// Most units in one transaction.
const MAX_UNITS: usize = 512;
/// Most events in one transaction (well below the 2^20 a transaction can
/// number).
const MAX_EVENTS: usize = 20_000;
/// Most payload bytes in one transaction, a single large unit excepted.
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// How often a unit alone is tried again after losing a race.
const MAX_ATTEMPTS: usize = 50;

/// Appends to many streams in one statement. Parts are numbered by their
/// place in the arrays (`WITH ORDINALITY`); a unit is committed only when
/// none of its parts is a repeated command or at another version than
/// expected (NULL = any). Each event's position is the transaction id
/// shifted left by 20 plus its index in the transaction; its version is
/// the stream's current version plus its place in its part.
///
/// The per-part lookups are `LATERAL` joins with a limit, never plain
/// sub-selects: the plan is made once per connection, and a plan made
/// while the log was small may otherwise hash the whole command index on
/// every call once it has grown.
const APPEND_SQL: &str = "\
WITH p AS (
    SELECT p.part, p.unit, p.stream_id, p.expected, p.aggregate_type, p.org, p.actor,
           p.command_id, p.correlation_id, p.causation_id, cur.actual, d.dup IS NOT NULL AS dup
      FROM unnest($1::int4[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                  $7::uuid[], $8::uuid[], $9::uuid[])
           WITH ORDINALITY AS p(unit, stream_id, expected, aggregate_type, org, actor,
                                command_id, correlation_id, causation_id, part)
     CROSS JOIN LATERAL (SELECT COALESCE(max(version), 0) AS actual
                           FROM events WHERE stream_id = p.stream_id) cur
      LEFT JOIN LATERAL (SELECT true AS dup FROM events
                          WHERE command_id = p.command_id AND command_seq = 0 LIMIT 1) d ON true
), bad AS (
    SELECT DISTINCT unit FROM p WHERE dup OR actual <> COALESCE(expected, actual)
), ins AS (
    INSERT INTO events (position, stream_id, version, aggregate_type, event_id, event_type,
        schema_version, org, actor, command_id, command_seq, correlation_id, causation_id, payload)
    SELECT (pg_current_xact_id()::text::int8 << 20) + e.ord - 1, p.stream_id, p.actual + e.seq,
           p.aggregate_type, e.event_id, e.event_type, e.schema_version, p.org, p.actor,
           p.command_id, e.seq - 1, p.correlation_id, p.causation_id, e.payload::json
      FROM unnest($10::int8[], $11::int4[], $12::uuid[], $13::text[], $14::int4[], $15::text[])
           WITH ORDINALITY AS e(part, seq, event_id, event_type, schema_version, payload, ord)
      JOIN p ON p.part = e.part
     WHERE p.unit NOT IN (SELECT unit FROM bad)
    RETURNING stream_id, position, version
)
SELECT p.part, p.actual, p.dup, count(ins.position),
       COALESCE(min(ins.position), 0), COALESCE(max(ins.position), 0),
       COALESCE(min(ins.version), 0), COALESCE(max(ins.version), 0), now()
  FROM p LEFT JOIN ins ON ins.stream_id = p.stream_id
 GROUP BY p.part, p.actual, p.dup
 ORDER BY p.part";

/// One stream's share of a unit, checked and serialized.
pub(crate) struct Part {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub meta: CommandMeta,
    pub event_ids: Vec<Uuid>,
    pub types: Vec<String>,
    pub schema_versions: Vec<i32>,
    pub payloads: Vec<String>,
}

impl Part {
    fn bytes(&self) -> usize {
        self.payloads.iter().map(String::len).sum()
    }
}

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, StoreError>>;

/// Appends that commit together or not at all.
pub(crate) struct Unit {
    pub parts: Vec<Part>,
    pub reply: Reply,
    pub started: Instant,
}

impl Unit {
    fn events(&self) -> usize {
        self.parts.iter().map(|p| p.payloads.len()).sum()
    }
}

/// What the statement said of one part.
#[derive(Debug, Clone, Copy)]
struct PartRow {
    actual: u64,
    dup: bool,
    inserted: u64,
    first_position: u64,
    last_position: u64,
    first_version: u64,
    last_version: u64,
    /// The transaction's time: every event's `recorded_at`.
    recorded_at: chrono::DateTime<chrono::Utc>,
}

fn part_row(row: &PgRow) -> Result<PartRow, StoreError> {
    let get = |i: usize| row.try_get::<i64, _>(i).map_err(StoreError::from_sqlx);
    Ok(PartRow {
        actual: to_u64(get(1)?),
        dup: row.try_get(2).map_err(StoreError::from_sqlx)?,
        inserted: to_u64(get(3)?),
        first_position: to_u64(get(4)?),
        last_position: to_u64(get(5)?),
        first_version: to_u64(get(6)?),
        last_version: to_u64(get(7)?),
        recorded_at: row.try_get(8).map_err(StoreError::from_sqlx)?,
    })
}

/// Runs the statement for these units on `conn`; one row per part, in
/// order.
async fn run_statement(
    conn: &mut PgConnection,
    units: &[&[Part]],
) -> Result<Vec<PartRow>, sqlx::Error> {
    let parts: usize = units.iter().map(|u| u.len()).sum();
    let mut unit_of = Vec::with_capacity(parts);
    let mut streams = Vec::with_capacity(parts);
    let mut expected = Vec::with_capacity(parts);
    let mut aggregate_types = Vec::with_capacity(parts);
    let mut orgs = Vec::with_capacity(parts);
    let mut actors = Vec::with_capacity(parts);
    let mut command_ids = Vec::with_capacity(parts);
    let mut correlation_ids = Vec::with_capacity(parts);
    let mut causation_ids = Vec::with_capacity(parts);
    let events: usize = units
        .iter()
        .flat_map(|u| u.iter())
        .map(|p| p.payloads.len())
        .sum();
    let mut event_part = Vec::with_capacity(events);
    let mut event_seq = Vec::with_capacity(events);
    let mut event_ids = Vec::with_capacity(events);
    let mut event_types: Vec<&str> = Vec::with_capacity(events);
    let mut schema_versions = Vec::with_capacity(events);
    let mut payloads: Vec<&str> = Vec::with_capacity(events);
    let mut part_number = 0i64;
    for (unit, unit_parts) in units.iter().enumerate() {
        for part in unit_parts.iter() {
            part_number += 1;
            unit_of.push(unit as i32);
            streams.push(part.stream.as_str());
            expected.push(match part.expected {
                ExpectedVersion::Any => None,
                ExpectedVersion::NoStream => Some(0i64),
                ExpectedVersion::Exact(v) => Some(to_i64(v.0)),
            });
            aggregate_types.push(part.meta.aggregate_type.as_str());
            orgs.push(part.meta.org.as_str());
            actors.push(part.meta.actor.as_str());
            command_ids.push(part.meta.command_id.as_uuid());
            correlation_ids.push(part.meta.correlation_id.as_uuid());
            causation_ids.push(part.meta.causation().as_uuid());
            for index in 0..part.payloads.len() {
                event_part.push(part_number);
                event_seq.push(index as i32 + 1);
                event_ids.push(part.event_ids[index]);
                event_types.push(part.types[index].as_str());
                schema_versions.push(part.schema_versions[index]);
                payloads.push(part.payloads[index].as_str());
            }
        }
    }
    let rows = sqlx::query(APPEND_SQL)
        .bind(unit_of)
        .bind(streams)
        .bind(expected)
        .bind(aggregate_types)
        .bind(orgs)
        .bind(actors)
        .bind(command_ids)
        .bind(correlation_ids)
        .bind(causation_ids)
        .bind(event_part)
        .bind(event_seq)
        .bind(event_ids)
        .bind(event_types)
        .bind(schema_versions)
        .bind(payloads)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(part_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sqlx::Error::Protocol(format!("unexpected append result: {e}")))
}

/// The outcome of an earlier append of this command id, if there was one.
pub(crate) async fn find_command(
    conn: &mut PgConnection,
    command_id: charter_domain::CommandId,
) -> Result<Option<AppendOutcome>, StoreError> {
    let row = sqlx::query(
        "SELECT f.stream_id, f.position, f.version,
                (SELECT count(*) FROM events e
                  WHERE e.stream_id = f.stream_id AND e.version >= f.version
                    AND e.version < f.version + $2 AND e.command_id = f.command_id),
                f.recorded_at
         FROM events f WHERE f.command_id = $1 AND f.command_seq = 0",
    )
    .bind(command_id.as_uuid())
    .bind(to_i64(HARD_MAX_BATCH as u64))
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

/// What a unit's rows mean: its outcomes, a conflict, or a repeat whose
/// first outcomes must be looked up.
enum Verdict {
    Done(Vec<AppendOutcome>),
    Repeat,
    Failed(StoreError),
}

fn verdict(parts: &[Part], rows: &[PartRow]) -> Verdict {
    let written = parts
        .iter()
        .zip(rows)
        .all(|(part, row)| row.inserted == part.payloads.len() as u64);
    if written {
        return Verdict::Done(
            parts
                .iter()
                .zip(rows)
                .map(|(part, row)| AppendOutcome {
                    stream_id: part.stream.clone(),
                    first_version: StreamVersion(row.first_version),
                    last_version: StreamVersion(row.last_version),
                    first_position: Position(row.first_position),
                    last_position: Position(row.last_position),
                    recorded_at: row.recorded_at,
                    duplicate: false,
                })
                .collect(),
        );
    }
    if rows.iter().any(|row| row.dup) {
        return Verdict::Repeat;
    }
    for (part, row) in parts.iter().zip(rows) {
        let matches = match part.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => row.actual == 0,
            ExpectedVersion::Exact(v) => row.actual == v.0,
        };
        if !matches {
            return Verdict::Failed(StoreError::WrongExpectedVersion {
                stream: part.stream.clone(),
                expected: part.expected,
                actual: StreamVersion(row.actual),
            });
        }
    }
    Verdict::Failed(StoreError::Database(
        "an append was neither written nor refused".into(),
    ))
}

/// A repeated unit answers with what each of its parts did the first time;
/// a part whose command id went elsewhere (or nowhere) is an error.
async fn earlier_outcomes(
    conn: &mut PgConnection,
    parts: &[Part],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(parts.len());
    for part in parts {
        match find_command(conn, part.meta.command_id).await? {
            Some(outcome) if outcome.stream_id == part.stream => outcomes.push(outcome),
            Some(outcome) => {
                return Err(StoreError::CommandIdReused {
                    command_id: part.meta.command_id,
                    stream: outcome.stream_id,
                });
            }
            None => {
                let other = parts
                    .iter()
                    .find(|p| p.meta.command_id != part.meta.command_id)
                    .unwrap_or(part);
                return Err(StoreError::CommandIdReused {
                    command_id: other.meta.command_id,
                    stream: other.stream.clone(),
                });
            }
        }
    }
    Ok(outcomes)
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Appends one unit on a connection the caller controls, inside whatever
/// transaction it holds; a lost race is a unique violation, returned as is.
pub(crate) async fn append_unit_on(
    conn: &mut PgConnection,
    parts: &[Part],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let rows = match run_statement(conn, &[parts]).await {
        Ok(rows) => rows,
        Err(error) if is_unique_violation(&error) => {
            // The racing writer committed first: name the version it left.
            let part = &parts[0];
            let actual: i64 = sqlx::query_scalar(
                "SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = $1",
            )
            .bind(part.stream.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
            return Err(StoreError::WrongExpectedVersion {
                stream: part.stream.clone(),
                expected: part.expected,
                actual: StreamVersion(to_u64(actual)),
            });
        }
        Err(error) => return Err(StoreError::from_sqlx(error)),
    };
    match verdict(parts, &rows) {
        Verdict::Done(outcomes) => Ok(outcomes),
        Verdict::Repeat => earlier_outcomes(conn, parts).await,
        Verdict::Failed(error) => Err(error),
    }
}

/// The handle appends are sent through.
#[derive(Clone)]
pub(crate) struct Committer {
    units: mpsc::UnboundedSender<Unit>,
}

impl Committer {
    /// Starts the committer task; `committed` is called after every
    /// transaction that wrote something.
    pub fn start(
        pool: PgPool,
        lanes: usize,
        committed: impl Fn() + Send + Sync + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (units, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(commit_loop(pool, lanes, receiver, committed));
        (Self { units }, task)
    }

    /// Hands a unit over and waits for its outcome.
    pub async fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendOutcome>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let unit = Unit {
            parts,
            reply,
            started: Instant::now(),
        };
        self.units
            .send(unit)
            .map_err(|_| StoreError::Unavailable("the store's committer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| StoreError::Unavailable("the store's committer has stopped".into()))?
    }
}

/// The units of one transaction, and what they touch.
#[derive(Default)]
struct Group {
    units: Vec<Unit>,
    streams: HashSet<StreamId>,
    events: usize,
    bytes: usize,
}

impl Group {
    fn is_full(&self) -> bool {
        self.units.len() >= MAX_UNITS || self.events >= MAX_EVENTS || self.bytes >= MAX_BYTES
    }

    /// Takes the unit unless it touches a stream already in the group (or
    /// on its way in another) or would make the group too large (a
    /// group's first unit always fits).
    fn offer(&mut self, unit: Unit) -> Option<Unit> {
        let collides = unit.parts.iter().any(|p| self.streams.contains(&p.stream));
        let bytes: usize = unit.parts.iter().map(Part::bytes).sum();
        let too_big = !self.units.is_empty()
            && (self.events + unit.events() > MAX_EVENTS || self.bytes + bytes > MAX_BYTES);
        if collides || too_big {
            return Some(unit);
        }
        self.streams
            .extend(unit.parts.iter().map(|p| p.stream.clone()));
        self.events += unit.events();
        self.bytes += bytes;
        self.units.push(unit);
        None
    }
}

/// Forms groups and sends each out on a free lane (`lanes` at most at
/// once: while one waits for the disk, the next can be executed; on two
/// cores one lane measured best, as more lanes make smaller groups).
async fn commit_loop(
    pool: PgPool,
    lanes: usize,
    mut receiver: mpsc::UnboundedReceiver<Unit>,
    committed: impl Fn() + Send + Sync + 'static,
) {
    let committed = std::sync::Arc::new(committed);
    let lanes = std::sync::Arc::new(tokio::sync::Semaphore::new(lanes.max(1)));
    // Streams of the groups on their way: no unit touching one of them
    // joins another group until that group is done.
    let mut in_flight: HashSet<StreamId> = HashSet::new();
    let (done, mut finished) = mpsc::unbounded_channel::<Vec<StreamId>>();
    let mut waiting: VecDeque<Unit> = VecDeque::new();
    let mut open = true;
    loop {
        let Ok(lane) = std::sync::Arc::clone(&lanes).acquire_owned().await else {
            return;
        };
        let group = loop {
            while let Ok(streams) = finished.try_recv() {
                for stream in streams {
                    in_flight.remove(&stream);
                }
            }
            let mut group = Group {
                streams: in_flight.clone(),
                ..Group::default()
            };
            let mut later = VecDeque::new();
            while let Some(unit) = waiting.pop_front() {
                if group.is_full() {
                    later.push_back(unit);
                } else if let Some(unit) = group.offer(unit) {
                    later.push_back(unit);
                }
            }
            while open && !group.is_full() {
                match receiver.try_recv() {
                    Ok(unit) => {
                        if let Some(unit) = group.offer(unit) {
                            later.push_back(unit);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            waiting = later;
            if !group.units.is_empty() {
                break group;
            }
            if !open && waiting.is_empty() && in_flight.is_empty() {
                return;
            }
            // Nothing that can go now: wait for a unit, or for a group on
            // its way to free its streams.
            tokio::select! {
                unit = receiver.recv(), if open => match unit {
                    Some(unit) => waiting.push_back(unit),
                    None => open = false,
                },
                Some(streams) = finished.recv() => {
                    for stream in streams {
                        in_flight.remove(&stream);
                    }
                }
            }
        };
        let mine: Vec<StreamId> = group
            .units
            .iter()
            .flat_map(|u| u.parts.iter().map(|p| p.stream.clone()))
            .collect();
        in_flight.extend(mine.iter().cloned());
        metrics::histogram!("charter_store_group_units").record(group.units.len() as f64);
        let (pool, done, committed) = (
            pool.clone(),
            done.clone(),
            std::sync::Arc::clone(&committed),
        );
        tokio::spawn(async move {
            if commit_group(&pool, group.units).await {
                committed();
            }
            let _ = done.send(mine);
            drop(lane);
        });
    }
}

/// Commits one group and answers each unit; true when anything was
/// written.
async fn commit_group(pool: &PgPool, units: Vec<Unit>) -> bool {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(error) => {
            let error = StoreError::from_sqlx(error);
            for unit in units {
                answer(unit, Err(error.clone()));
            }
            return false;
        }
    };
    let all: Vec<&[Part]> = units.iter().map(|u| u.parts.as_slice()).collect();
    match run_statement(&mut conn, &all).await {
        Ok(rows) => {
            let mut wrote = false;
            let mut rows = rows.as_slice();
            for unit in units {
                let (mine, rest) = rows.split_at(unit.parts.len().min(rows.len()));
                rows = rest;
                let outcome = match verdict(&unit.parts, mine) {
                    Verdict::Done(outcomes) => {
                        wrote = true;
                        Ok(outcomes)
                    }
                    Verdict::Repeat => earlier_outcomes(&mut conn, &unit.parts).await,
                    Verdict::Failed(error) => Err(error),
                };
                answer(unit, outcome);
            }
            wrote
        }
        Err(error) if is_unique_violation(&error) => {
            // A writer elsewhere won a race (or a repeated command id came
            // in twice at once): each unit goes again on its own.
            metrics::counter!("charter_store_group_retries_total").increment(1);
            let mut wrote = false;
            for unit in units {
                let outcome = append_alone(&mut conn, &unit.parts).await;
                wrote |= outcome
                    .as_ref()
                    .is_ok_and(|o| o.iter().any(|o| !o.duplicate));
                answer(unit, outcome);
            }
            wrote
        }
        Err(error) => {
            let error = StoreError::from_sqlx(error);
            for unit in units {
                answer(unit, Err(error.clone()));
            }
            false
        }
    }
}

/// One unit in its own transaction, tried again while it loses races (a
/// lost race shows on the next try as a version or a repeat).
async fn append_alone(
    conn: &mut PgConnection,
    parts: &[Part],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run_statement(conn, &[parts]).await {
            Ok(rows) => {
                return match verdict(parts, &rows) {
                    Verdict::Done(outcomes) => Ok(outcomes),
                    Verdict::Repeat => earlier_outcomes(conn, parts).await,
                    Verdict::Failed(error) => Err(error),
                };
            }
            Err(error) if is_unique_violation(&error) && attempt < MAX_ATTEMPTS => continue,
            Err(error) => return Err(StoreError::from_sqlx(error)),
        }
    }
}

fn answer(unit: Unit, outcome: Result<Vec<AppendOutcome>, StoreError>) {
    let elapsed = unit.started.elapsed();
    match &outcome {
        Ok(outcomes) => {
            for o in outcomes {
                record_append("postgres", Ok(o), elapsed);
            }
        }
        Err(error) => record_append("postgres", Err(error), elapsed),
    }
    let _ = unit.reply.send(outcome);
}
