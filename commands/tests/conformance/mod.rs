//! The event-store conformance suite, written once and run against every
//! backend (`postgres.rs`, `sqlite.rs`). Each test gets a fresh store: its
//! own PostgreSQL schema or SQLite file.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::store::Subscription;
use charter_commands::{
    AppendOutcome, CommandHandler, CommandMeta, EventStore, ExpectedVersion, NewEvent, Position,
    RecordedEvent, Snapshot, StoreError, StreamId, StreamVersion,
};
use charter_domain::organization::{DisplayName, OrgCommand, OrgEvent, Organization, Tags};
use charter_domain::{Actor, Aggregate, CommandId, OrgName};
use serde_json::json;

/// A stored row written around the store, to test what reads make of it.
pub struct RawRow {
    pub stream_id: String,
    pub version: u64,
    pub aggregate_type: String,
    pub event_type: String,
    pub schema_version: i32,
    pub org: String,
    /// JSON text; the SQLite harness stores it as is, even when invalid.
    pub payload: String,
}

#[async_trait]
pub trait Harness: Send + Sync + 'static {
    fn store(&self) -> Arc<dyn EventStore>;

    /// Writes a row directly, bypassing every check of `append`.
    async fn insert_raw(&self, row: RawRow);

    /// Appends inside a transaction that stays open for `hold` after its
    /// events are written (PostgreSQL: after taking its transaction id, so
    /// its positions are small but it commits late).
    async fn append_held(
        &self,
        stream: StreamId,
        events: Vec<NewEvent>,
        meta: CommandMeta,
        hold: Duration,
    ) -> Result<AppendOutcome, StoreError>;
}

pub fn org(name: &str) -> OrgName {
    OrgName::parse(name).unwrap()
}

pub fn meta(org_name: &str) -> CommandMeta {
    CommandMeta::new("test", org(org_name), Actor::parse("user:tester").unwrap())
}

pub fn stream(name: &str) -> StreamId {
    StreamId::parse(name).unwrap()
}

pub fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("Happened", json!({"n": i, "note": "x".repeat(200)})))
        .collect()
}

/// Every event through `through`, once the log is readable that far (other
/// tests' open transactions may hold the read horizon back for a moment).
async fn read_everything(store: &dyn EventStore, through: Position) -> Vec<RecordedEvent> {
    readable(store, through).await;
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = store.read_all(after, 500).await.unwrap();
        let Some(last) = batch.last() else { return all };
        after = last.position;
        all.extend(batch);
    }
}

async fn readable(store: &dyn EventStore, position: Position) {
    let reached =
        charter_commands::store::wait_for_position(store, position, Duration::from_secs(60))
            .await
            .unwrap();
    assert!(reached, "position {position} never became readable");
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn append_records_every_field(h: &dyn Harness) {
    let store = h.store();
    let s = stream("orders-1");
    let mut m = meta("acme");
    m.aggregate_type = "order".into();
    let new = events(3);
    let outcome = store
        .append(&s, ExpectedVersion::NoStream, &new, &m)
        .await
        .unwrap();
    assert_eq!(outcome.first_version, StreamVersion(1));
    assert_eq!(outcome.last_version, StreamVersion(3));
    assert!(!outcome.duplicate);
    assert!(outcome.first_position < outcome.last_position);
    let read = store.read_stream(&s, StreamVersion(0), 100).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (event, original)) in read.iter().zip(&new).enumerate() {
        assert_eq!(event.event_id, original.event_id);
        assert_eq!(event.event_id.as_uuid().get_version_num(), 7);
        assert_eq!(event.stream_id, s);
        assert_eq!(event.aggregate_type, "order");
        assert_eq!(event.version, StreamVersion(i as u64 + 1));
        assert_eq!(event.event_type, "Happened");
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.org, org("acme"));
        assert_eq!(event.actor, m.actor);
        assert_eq!(event.command_id, m.command_id);
        assert_eq!(event.correlation_id, m.correlation_id);
        assert_eq!(event.causation_id.as_uuid(), m.command_id.as_uuid());
        assert_eq!(event.payload_value().unwrap(), original.payload_value());
        assert!((chrono::Utc::now() - event.recorded_at).num_seconds().abs() < 60);
    }
    assert_eq!(read[0].position, outcome.first_position);
    assert_eq!(read[2].position, outcome.last_position);
    readable(&*store, outcome.last_position).await;
    // Forward from a version.
    let tail = store.read_stream(&s, StreamVersion(1), 100).await.unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].version, StreamVersion(2));
    assert_eq!(store.stream_version(&s).await.unwrap(), StreamVersion(3));
    assert_eq!(store.head().await.unwrap(), outcome.last_position);
}

pub async fn expected_version_is_enforced(h: &dyn Harness) {
    let store = h.store();
    let s = stream("s-1");
    let first = store
        .append(&s, ExpectedVersion::NoStream, &events(2), &meta("acme"))
        .await
        .unwrap();
    let before = read_everything(&*store, first.last_position).await;
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(StreamVersion(1)),
        ExpectedVersion::Exact(StreamVersion(3)),
        ExpectedVersion::Exact(StreamVersion(0)),
    ] {
        let err = store
            .append(&s, expected, &events(1), &meta("acme"))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::WrongExpectedVersion {
                stream: s.clone(),
                expected,
                actual: StreamVersion(2)
            }
        );
    }
    assert_eq!(
        read_everything(&*store, first.last_position).await,
        before,
        "a conflict wrote something"
    );
    let ok = store
        .append(
            &s,
            ExpectedVersion::Exact(StreamVersion(2)),
            &events(1),
            &meta("acme"),
        )
        .await
        .unwrap();
    assert_eq!(ok.last_version, StreamVersion(3));
    let any = store
        .append(&s, ExpectedVersion::Any, &events(2), &meta("acme"))
        .await
        .unwrap();
    assert_eq!(any.first_version, StreamVersion(4));
    assert_eq!(any.last_version, StreamVersion(5));
    let fresh = store
        .append(
            &stream("s-2"),
            ExpectedVersion::Any,
            &events(1),
            &meta("acme"),
        )
        .await
        .unwrap();
    assert_eq!(fresh.last_version, StreamVersion(1));
}

pub async fn racing_writers_one_wins(h: &dyn Harness) {
    let store = h.store();
    let s = stream("race-1");
    store
        .append(&s, ExpectedVersion::NoStream, &events(1), &meta("acme"))
        .await
        .unwrap();
    for round in 0..5 {
        let loaded = store.stream_version(&s).await.unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let store = Arc::clone(&store);
                let s = s.clone();
                tokio::spawn(async move {
                    store
                        .append(
                            &s,
                            ExpectedVersion::Exact(loaded),
                            &events(2),
                            &meta("acme"),
                        )
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(outcome) => {
                    wins += 1;
                    assert_eq!(outcome.first_version, StreamVersion(loaded.0 + 1));
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    assert_eq!(actual, StreamVersion(loaded.0 + 2));
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one writer must win");
        assert_eq!(
            store.stream_version(&s).await.unwrap(),
            StreamVersion(loaded.0 + 2)
        );
    }
}

/// Read-modify-write loops from many writers: every increment survives.
pub async fn no_lost_update(h: &dyn Harness) {
    let store = h.store();
    let s = stream("counter-1");
    let writers = 8;
    let per_writer = 10;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = Arc::clone(&store);
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    loop {
                        let v = store.stream_version(&s).await.unwrap();
                        let expected = if v.0 == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(v)
                        };
                        let event = NewEvent::new("Incremented", json!({"writer": w, "i": i}));
                        match store.append(&s, expected, &[event], &meta("acme")).await {
                            Ok(_) => break,
                            Err(StoreError::WrongExpectedVersion { .. }) => continue,
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let all = store.read_stream(&s, StreamVersion(0), 1000).await.unwrap();
    assert_eq!(all.len(), writers * per_writer);
    for (i, event) in all.iter().enumerate() {
        assert_eq!(
            event.version,
            StreamVersion(i as u64 + 1),
            "versions must be dense"
        );
    }
    let seen: HashSet<_> = all
        .iter()
        .map(|e| {
            let payload = e.payload_value().unwrap();
            (payload["writer"].as_u64(), payload["i"].as_u64())
        })
        .collect();
    assert_eq!(seen.len(), writers * per_writer);
}

pub async fn repeated_command_takes_effect_once(h: &dyn Harness) {
    let store = h.store();
    let s = stream("idem-1");
    let m = meta("acme");
    let first = store
        .append(&s, ExpectedVersion::NoStream, &events(3), &m)
        .await
        .unwrap();
    let before = read_everything(&*store, first.last_position).await;
    // The same command again: same expected version, or any, or stale.
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let again = store.append(&s, expected, &events(3), &m).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.first_position, first.first_position);
        assert_eq!(again.last_position, first.last_position);
        assert_eq!(again.first_version, first.first_version);
        assert_eq!(again.last_version, first.last_version);
    }
    assert_eq!(read_everything(&*store, first.last_position).await, before);
    assert_eq!(
        store
            .command_outcome(m.command_id)
            .await
            .unwrap()
            .unwrap()
            .last_position,
        first.last_position
    );
    // The same id on another stream is refused, not silently accepted.
    let err = store
        .append(&stream("idem-2"), ExpectedVersion::Any, &events(1), &m)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CommandIdReused { .. }), "{err:?}");

    // Concurrent retries of one command: one append, one outcome.
    let m2 = meta("acme");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let m2 = m2.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &stream("idem-3"),
                        ExpectedVersion::NoStream,
                        &events(2),
                        &m2,
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
    for o in &outcomes {
        assert_eq!(o.first_position, outcomes[0].first_position);
        assert_eq!(o.last_version, StreamVersion(2));
    }
    assert_eq!(
        store
            .read_stream(&stream("idem-3"), StreamVersion(0), 100)
            .await
            .unwrap()
            .len(),
        2
    );
}

pub async fn read_all_is_ordered_and_batched(h: &dyn Harness) {
    let store = h.store();
    let mut last = Position::START;
    for i in 0..10 {
        last = store
            .append(
                &stream(&format!("log-{i}")),
                ExpectedVersion::Any,
                &events(3),
                &meta("acme"),
            )
            .await
            .unwrap()
            .last_position;
    }
    let all = read_everything(&*store, last).await;
    assert_eq!(all.len(), 30);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let first = store.read_all(Position::START, 7).await.unwrap();
    assert_eq!(first.len(), 7);
    let next = store.read_all(first[6].position, 7).await.unwrap();
    assert_eq!(next[0].position, all[7].position);
    assert!(
        store
            .read_all(all[29].position, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.count_after(all[19].position, 100).await.unwrap(), 10);
    assert_eq!(store.count_after(Position::START, 5).await.unwrap(), 5);
}

pub async fn bad_input_is_typed_and_writes_nothing(h: &dyn Harness) {
    let store = h.store();
    let s = stream("limits-1");
    let first = store
        .append(&s, ExpectedVersion::NoStream, &events(1), &meta("acme"))
        .await
        .unwrap();
    let before = read_everything(&*store, first.last_position).await;
    let max = store.limits().max_event_bytes;
    let mut batch = events(2);
    batch[1].payload = serde_json::value::to_raw_value(&json!({"blob": "x".repeat(max)})).unwrap();
    let err = store
        .append(&s, ExpectedVersion::Any, &batch, &meta("acme"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::EventTooLarge { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Any, &[], &meta("acme"))
            .await
            .unwrap_err(),
        StoreError::EmptyAppend
    );
    let too_many = events(store.limits().max_batch + 1);
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, &too_many, &meta("acme"))
            .await
            .unwrap_err(),
        StoreError::BatchTooLarge { .. }
    ));
    let mut bad_type = events(1);
    bad_type[0].event_type = "has.dots".into();
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, &bad_type, &meta("acme"))
            .await
            .unwrap_err(),
        StoreError::InvalidName { .. }
    ));
    assert!(StreamId::parse("has space").is_err());
    assert!(StreamId::parse("").is_err());
    assert_eq!(read_everything(&*store, first.last_position).await, before);
    // An unknown stream is a typed error, not an empty success.
    assert_eq!(
        store
            .read_stream(&stream("nope"), StreamVersion(0), 10)
            .await
            .unwrap_err(),
        StoreError::StreamNotFound(stream("nope"))
    );
    assert_eq!(
        store.stream_version(&stream("nope")).await.unwrap(),
        StreamVersion(0)
    );
}

pub async fn malformed_rows_are_typed_errors(h: &dyn Harness) {
    let store = h.store();
    let good = store
        .append(
            &stream("fine-1"),
            ExpectedVersion::NoStream,
            &events(1),
            &meta("acme"),
        )
        .await
        .unwrap();
    h.insert_raw(RawRow {
        stream_id: "broken-1".into(),
        version: 1,
        aggregate_type: "organization".into(),
        event_type: "Registered".into(),
        schema_version: 2,
        org: "NOT A VALID ORG".into(),
        payload: r#"{"name": "x"}"#.into(),
    })
    .await;
    let store_ref = Arc::clone(&store);
    wait_until("the raw row to be readable", || {
        let store = Arc::clone(&store_ref);
        async move { store.head().await.unwrap() > good.last_position }
    })
    .await;
    let err = store.read_all(good.last_position, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::MalformedEvent { .. }), "{err:?}");
    // Events before the bad row still read; the bad row is not altered.
    assert_eq!(store.read_all(Position::START, 1).await.unwrap().len(), 1);
    assert!(
        store
            .read_stream(&stream("broken-1"), StreamVersion(0), 10)
            .await
            .is_err()
    );

    // A payload that does not fit the aggregate's event is a typed error
    // from the command kernel, never a panic.
    h.insert_raw(RawRow {
        stream_id: "organization-mangled".into(),
        version: 1,
        aggregate_type: "organization".into(),
        event_type: "Renamed".into(),
        schema_version: 1,
        org: "mangled".into(),
        payload: r#"{"display_name": 42}"#.into(),
    })
    .await;
    let kernel = CommandHandler::new(Arc::clone(&store));
    let err = kernel
        .load::<Organization>(&org("mangled"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MalformedEvent { .. }), "{err:?}");
}

pub async fn old_schema_versions_are_upcast(h: &dyn Harness) {
    let store = h.store();
    h.insert_raw(RawRow {
        stream_id: "organization-legacy".into(),
        version: 1,
        aggregate_type: "organization".into(),
        event_type: "Registered".into(),
        schema_version: 1,
        org: "legacy".into(),
        payload: r#"{"name": "legacy"}"#.into(),
    })
    .await;
    let read = store
        .read_stream(&stream("organization-legacy"), StreamVersion(0), 10)
        .await
        .unwrap();
    assert_eq!(read[0].schema_version, 2);
    assert_eq!(read[0].payload_value().unwrap()["display_name"], "legacy");
    let kernel = CommandHandler::new(Arc::clone(&store));
    let loaded = kernel.load::<Organization>(&org("legacy")).await.unwrap();
    let state = loaded.state.0.unwrap();
    assert_eq!(state.display_name.as_str(), "legacy");
    assert_eq!(loaded.version, StreamVersion(1));
}

pub async fn snapshots_and_checkpoints(h: &dyn Harness) {
    let store = h.store();
    let s = stream("snap-1");
    assert!(store.load_snapshot(&s).await.unwrap().is_none());
    let snapshot = |v: u64| Snapshot {
        stream_id: s.clone(),
        aggregate_type: "test".into(),
        version: StreamVersion(v),
        state: json!({"v": v}),
        taken_at: chrono::Utc::now(),
    };
    store.save_snapshot(&snapshot(5)).await.unwrap();
    store.save_snapshot(&snapshot(3)).await.unwrap();
    let loaded = store.load_snapshot(&s).await.unwrap().unwrap();
    assert_eq!(loaded.version, StreamVersion(5));
    assert_eq!(loaded.state, json!({"v": 5}));
    store.save_snapshot(&snapshot(9)).await.unwrap();
    assert_eq!(
        store.load_snapshot(&s).await.unwrap().unwrap().version,
        StreamVersion(9)
    );

    assert_eq!(store.load_checkpoint("relay:x").await.unwrap(), None);
    store
        .save_checkpoint("relay:x", Position(42))
        .await
        .unwrap();
    store
        .save_checkpoint("relay:x", Position(43))
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("relay:x").await.unwrap(),
        Some(Position(43))
    );
}

pub async fn subscription_catches_up_then_follows(h: &dyn Harness) {
    let store = h.store();
    for i in 0..5 {
        store
            .append(
                &stream(&format!("sub-{i}")),
                ExpectedVersion::Any,
                &events(2),
                &meta("acme"),
            )
            .await
            .unwrap();
    }
    let mut subscription = Subscription::new(Arc::clone(&store), Position::START, 3);
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.extend(subscription.next_batch().await.unwrap());
    }
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..20 {
                store
                    .append(
                        &stream("sub-live"),
                        ExpectedVersion::Any,
                        &events(1),
                        &meta("acme"),
                    )
                    .await
                    .unwrap();
                if i % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        while seen.len() < 30 {
            seen.extend(subscription.next_batch().await.unwrap());
        }
    })
    .await
    .expect("the subscription did not follow new commits");
    writer.await.unwrap();
    assert_eq!(seen.len(), 30);
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
}

/// Many writers whose transactions commit out of order while readers
/// follow the log: every committed event is seen exactly once, and every
/// reader sees the same order.
pub async fn readers_follow_commit_order(h: &dyn Harness) {
    let store = h.store();
    let writers = 12;
    let appends_per_writer = 8;
    let follower = |store: Arc<dyn EventStore>, total: usize| {
        tokio::spawn(async move {
            let mut subscription = Subscription::new(store, Position::START, 7);
            let mut seen: Vec<RecordedEvent> = Vec::new();
            tokio::time::timeout(Duration::from_secs(120), async {
                while seen.len() < total {
                    let batch = subscription.next_batch().await.unwrap();
                    seen.extend(batch);
                }
            })
            .await
            .expect("follower stalled");
            seen
        })
    };
    let total = writers * appends_per_writer * 2;
    let reader_a = follower(Arc::clone(&store), total);
    let mut handles = Vec::new();
    for w in 0..writers {
        for a in 0..appends_per_writer {
            // Hold transactions for varied times so that later transaction
            // ids often commit first.
            let hold = Duration::from_millis(rand::random_range(0..40));
            handles.push((stream(&format!("order-{w}-{a}")), hold));
        }
    }
    let h: &dyn Harness = h;
    let futures = handles
        .into_iter()
        .map(|(s, hold)| h.append_held(s, events(2), meta("acme"), hold));
    let results = futures::future::join_all(futures).await;
    let mut committed = BTreeSet::new();
    for result in results {
        let outcome = result.unwrap();
        committed.insert(outcome.first_position);
        committed.insert(outcome.last_position);
    }
    assert_eq!(committed.len(), total);
    let seen_a = reader_a.await.unwrap();
    // A second, independent reader started after the fact.
    let seen_b = follower(Arc::clone(&store), total).await.unwrap();
    let positions_a: Vec<_> = seen_a.iter().map(|e| e.position).collect();
    let positions_b: Vec<_> = seen_b.iter().map(|e| e.position).collect();
    let unique: BTreeSet<_> = positions_a.iter().copied().collect();
    assert_eq!(unique.len(), positions_a.len(), "an event was seen twice");
    assert_eq!(unique, committed, "the follower missed or invented events");
    assert_eq!(positions_a, positions_b, "readers disagree on the order");
    assert!(positions_a.windows(2).all(|w| w[0] < w[1]));
}

pub async fn kernel_handles_commands(h: &dyn Harness) {
    let store = h.store();
    let kernel = CommandHandler::new(Arc::clone(&store)).with_snapshot_every(2);
    let acme = org("acme");
    let m = CommandMeta::new(
        Organization::KIND,
        acme.clone(),
        Actor::parse("user:root").unwrap(),
    );
    let register = OrgCommand::Register {
        display_name: DisplayName::parse("Acme").unwrap(),
        tags: Tags::default(),
        parent: None,
    };
    let first = kernel
        .handle::<Organization>(&acme, &register, &m)
        .await
        .unwrap();
    assert_eq!(first.stream_version, StreamVersion(1));
    assert_eq!(first.events.len(), 1);
    // The same command id again: the original outcome, even though
    // registering twice would now be rejected.
    let again = kernel
        .handle::<Organization>(&acme, &register, &m)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    assert_eq!(again.events, first.events);
    // A new command id: the domain's rejection, typed.
    let err = kernel
        .handle::<Organization>(
            &acme,
            &register,
            &CommandMeta {
                command_id: CommandId::new(),
                ..m.clone()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        charter_domain::ErrorCode::code(&err),
        "org_already_registered"
    );
    // No-op commands append nothing.
    let fresh = |m: &CommandMeta| CommandMeta {
        command_id: CommandId::new(),
        ..m.clone()
    };
    let noop = kernel
        .handle::<Organization>(
            &acme,
            &OrgCommand::Rename {
                display_name: DisplayName::parse("Acme").unwrap(),
            },
            &fresh(&m),
        )
        .await
        .unwrap();
    assert!(noop.events.is_empty());
    assert_eq!(noop.position, None);
    // Walk the lifecycle; a snapshot is taken every 2 events.
    for command in [
        OrgCommand::BeginProvisioning,
        OrgCommand::CompleteProvisioning,
    ] {
        kernel
            .handle::<Organization>(&acme, &command, &fresh(&m))
            .await
            .unwrap();
    }
    let snapshot = store
        .load_snapshot(&StreamId::for_aggregate::<Organization>(&acme).unwrap())
        .await
        .unwrap()
        .expect("a snapshot after two events");
    assert_eq!(snapshot.version, StreamVersion(2));
    let outcome = kernel
        .handle::<Organization>(
            &acme,
            &OrgCommand::Suspend {
                reason: "billing".into(),
            },
            &fresh(&m),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.events,
        vec![OrgEvent::Suspended {
            reason: "billing".into()
        }]
    );
    let loaded = kernel.load::<Organization>(&acme).await.unwrap();
    assert_eq!(loaded.version, StreamVersion(4));
    assert_eq!(
        loaded.state.0.as_ref().unwrap().lifecycle,
        charter_domain::organization::Lifecycle::Suspended
    );
    // Snapshot plus tail equals a full replay.
    let all = store
        .read_stream(&outcome.stream_id, StreamVersion(0), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.to_domain::<OrgEvent>().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(Organization::replay(&all), loaded.state);

    // Loading really starts from the snapshot: one that says something else
    // wins over the events it covers, and the tail after it still applies.
    kernel
        .handle::<Organization>(&acme, &OrgCommand::Resume, &fresh(&m))
        .await
        .unwrap();
    let stream_id = outcome.stream_id.clone();
    let mut doctored = kernel.load::<Organization>(&acme).await.unwrap().state;
    if let Some(state) = doctored.0.as_mut() {
        state.display_name = DisplayName::parse("From Snapshot").unwrap();
    }
    let doctored_snapshot = |version: u64, state: serde_json::Value| Snapshot {
        stream_id: stream_id.clone(),
        aggregate_type: Organization::KIND.into(),
        version: StreamVersion(version),
        state,
        taken_at: chrono::Utc::now(),
    };
    store
        .save_snapshot(&doctored_snapshot(
            5,
            serde_json::to_value(&doctored).unwrap(),
        ))
        .await
        .unwrap();
    let from_snapshot = kernel.load::<Organization>(&acme).await.unwrap();
    assert_eq!(from_snapshot.version, StreamVersion(5));
    assert_eq!(from_snapshot.state, doctored);
    let no_snapshots = CommandHandler::new(Arc::clone(&store)).with_snapshot_every(0);
    let gold = Tags::parse([("tier", "gold")]).unwrap();
    no_snapshots
        .handle::<Organization>(
            &acme,
            &OrgCommand::SetTags { tags: gold.clone() },
            &fresh(&m),
        )
        .await
        .unwrap();
    let with_tail = kernel.load::<Organization>(&acme).await.unwrap();
    assert_eq!(with_tail.version, StreamVersion(6));
    let state = with_tail.state.0.unwrap();
    assert_eq!(state.display_name.as_str(), "From Snapshot");
    assert_eq!(state.tags, gold);

    // A snapshot that no longer fits the aggregate is ignored: full replay.
    store
        .save_snapshot(&doctored_snapshot(6, json!({"not": "an organization"})))
        .await
        .unwrap();
    let replayed = kernel.load::<Organization>(&acme).await.unwrap();
    assert_eq!(replayed.version, StreamVersion(6));
    let state = replayed.state.0.unwrap();
    assert_eq!(state.display_name.as_str(), "Acme");
    assert_eq!(state.tags, gold);
}

/// Concurrent commands on one aggregate: the kernel reloads and decides
/// again on conflict, so every tag change lands.
pub async fn kernel_retries_on_conflict(h: &dyn Harness) {
    let store = h.store();
    let kernel = CommandHandler::new(Arc::clone(&store)).with_max_attempts(50);
    let acme = org("acme");
    let m = CommandMeta::new(
        Organization::KIND,
        acme.clone(),
        Actor::parse("user:root").unwrap(),
    );
    kernel
        .handle::<Organization>(
            &acme,
            &OrgCommand::Register {
                display_name: DisplayName::parse("Acme").unwrap(),
                tags: Tags::default(),
                parent: None,
            },
            &m,
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let kernel = kernel.clone();
            let acme = acme.clone();
            let m = CommandMeta {
                command_id: CommandId::new(),
                ..m.clone()
            };
            tokio::spawn(async move {
                let name = DisplayName::parse(format!("Acme {i}")).unwrap();
                kernel
                    .handle::<Organization>(&acme, &OrgCommand::Rename { display_name: name }, &m)
                    .await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap().unwrap();
        assert_eq!(outcome.events.len(), 1);
    }
    let loaded = kernel.load::<Organization>(&acme).await.unwrap();
    assert_eq!(loaded.version, StreamVersion(9));
}

/// Several streams in one append: all written, in order, with positions
/// that follow one another; a stale part writes nothing of any part; a
/// repeat answers with the first outcomes.
pub async fn atomic_append_across_streams(h: &dyn Harness) {
    use charter_commands::StreamAppend;
    let store = h.store();
    let (a, b, c) = (stream("pair-a"), stream("pair-b"), stream("pair-c"));
    store
        .append(&b, ExpectedVersion::NoStream, &events(2), &meta("acme"))
        .await
        .unwrap();
    let (ma, mb) = (meta("acme"), meta("acme"));
    let (ea, eb) = (events(2), events(1));
    let parts = [
        StreamAppend {
            stream: &a,
            expected: ExpectedVersion::NoStream,
            events: &ea,
            meta: &ma,
        },
        StreamAppend {
            stream: &b,
            expected: ExpectedVersion::Exact(StreamVersion(2)),
            events: &eb,
            meta: &mb,
        },
    ];
    let outcomes = store.append_all(&parts).await.unwrap();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].stream_id, a);
    assert_eq!(
        (outcomes[0].first_version, outcomes[0].last_version),
        (StreamVersion(1), StreamVersion(2))
    );
    assert_eq!(outcomes[1].stream_id, b);
    assert_eq!(
        (outcomes[1].first_version, outcomes[1].last_version),
        (StreamVersion(3), StreamVersion(3))
    );
    assert!(outcomes[0].last_position < outcomes[1].first_position);
    assert!(!outcomes[0].duplicate && !outcomes[1].duplicate);
    let all = read_everything(&*store, outcomes[1].last_position).await;
    let written: Vec<_> = all
        .iter()
        .filter(|e| e.position >= outcomes[0].first_position)
        .map(|e| (e.stream_id.to_string(), e.version.0))
        .collect();
    assert_eq!(
        written,
        [
            ("pair-a".to_owned(), 1),
            ("pair-a".to_owned(), 2),
            ("pair-b".to_owned(), 3)
        ]
    );

    // The same command ids again: the first outcomes, nothing written.
    let again = store.append_all(&parts).await.unwrap();
    assert!(again.iter().all(|o| o.duplicate));
    assert_eq!(again[0].first_position, outcomes[0].first_position);
    assert_eq!(again[1].last_version, StreamVersion(3));

    // One stale part: neither stream moves.
    let (mc, mb2) = (meta("acme"), meta("acme"));
    let stale = [
        StreamAppend {
            stream: &c,
            expected: ExpectedVersion::NoStream,
            events: &ea,
            meta: &mc,
        },
        StreamAppend {
            stream: &b,
            expected: ExpectedVersion::Exact(StreamVersion(2)),
            events: &eb,
            meta: &mb2,
        },
    ];
    match store.append_all(&stale).await {
        Err(StoreError::WrongExpectedVersion { stream, actual, .. }) => {
            assert_eq!(stream, b);
            assert_eq!(actual, StreamVersion(3));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.stream_version(&c).await.unwrap(), StreamVersion(0));
    assert_eq!(store.stream_version(&b).await.unwrap(), StreamVersion(3));

    // A repeated stream or command id is refused before anything happens.
    let twice = [stale[0], stale[0]];
    assert!(matches!(
        store.append_all(&twice).await,
        Err(StoreError::RepeatedInAppend { what: "stream", .. })
    ));
    let same_id = [
        stale[0],
        StreamAppend {
            stream: &b,
            expected: ExpectedVersion::Any,
            events: &eb,
            meta: &mc,
        },
    ];
    assert!(matches!(
        store.append_all(&same_id).await,
        Err(StoreError::RepeatedInAppend {
            what: "command id",
            ..
        })
    ));
    assert!(matches!(
        store.append_all(&[]).await,
        Err(StoreError::EmptyAppend)
    ));
    // Half a repeat: one part's command id was used, the other's not.
    let half = [
        parts[0],
        StreamAppend {
            stream: &c,
            expected: ExpectedVersion::NoStream,
            events: &eb,
            meta: &mc,
        },
    ];
    assert!(matches!(
        store.append_all(&half).await,
        Err(StoreError::CommandIdReused { .. })
    ));
    assert_eq!(store.stream_version(&c).await.unwrap(), StreamVersion(0));
}

/// Many writers at once, some of them stale, some repeating a command:
/// each append's outcome is its own (a stale neighbour never fails a good
/// append), and every stream ends exactly as its good appends left it.
pub async fn concurrent_appends_stay_independent(h: &dyn Harness) {
    let store = h.store();
    let shared = stream("independent-shared");
    store
        .append(
            &shared,
            ExpectedVersion::NoStream,
            &events(1),
            &meta("acme"),
        )
        .await
        .unwrap();
    let repeated = meta("acme");
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let store = Arc::clone(&store);
            let shared = shared.clone();
            let repeated = repeated.clone();
            tokio::spawn(async move {
                match i % 4 {
                    // Good appends to streams of their own.
                    0 | 1 => {
                        let s = stream(&format!("independent-{i}"));
                        let outcome = store
                            .append(&s, ExpectedVersion::NoStream, &events(2), &meta("acme"))
                            .await;
                        (i, outcome)
                    }
                    // Stale appends to the shared stream.
                    2 => (
                        i,
                        store
                            .append(
                                &shared,
                                ExpectedVersion::Exact(StreamVersion(7)),
                                &events(1),
                                &meta("acme"),
                            )
                            .await,
                    ),
                    // The same command, many times at once.
                    _ => {
                        let s = stream("independent-repeated");
                        (
                            i,
                            store
                                .append(&s, ExpectedVersion::Any, &events(1), &repeated)
                                .await,
                        )
                    }
                }
            })
        })
        .collect();
    let mut firsts = 0;
    let mut repeat_positions = HashSet::new();
    for task in tasks {
        let (i, outcome) = task.await.unwrap();
        match i % 4 {
            0 | 1 => {
                let outcome = outcome.unwrap_or_else(|e| panic!("append {i} failed: {e}"));
                assert_eq!(outcome.last_version, StreamVersion(2));
                assert!(!outcome.duplicate);
            }
            2 => match outcome {
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    assert_eq!(actual, StreamVersion(1))
                }
                other => panic!("a stale append must conflict, got {other:?}"),
            },
            _ => {
                let outcome = outcome.unwrap_or_else(|e| panic!("repeat {i} failed: {e}"));
                if !outcome.duplicate {
                    firsts += 1;
                }
                repeat_positions.insert(outcome.first_position);
            }
        }
    }
    assert_eq!(firsts, 1, "a repeated command takes effect once");
    assert_eq!(repeat_positions.len(), 1, "every repeat names the first");
    assert_eq!(
        store
            .stream_version(&stream("independent-repeated"))
            .await
            .unwrap(),
        StreamVersion(1)
    );
    assert_eq!(
        store.stream_version(&shared).await.unwrap(),
        StreamVersion(1)
    );
    for i in (0..120).filter(|i| i % 4 < 2) {
        let s = stream(&format!("independent-{i}"));
        assert_eq!(store.stream_version(&s).await.unwrap(), StreamVersion(2));
    }
}

/// Two kernels on one store, as two processes would be: each keeps the
/// states it has seen, and neither ever acts on a stale one. A change the
/// other made is found by the conflict it causes (the command lands on the
/// current state), and a command that the stale state would refuse or find
/// already done is decided again from the store.
pub async fn kernels_sharing_a_store_never_act_on_stale_states(h: &dyn Harness) {
    use charter_domain::organization::Lifecycle;
    let store = h.store();
    let (one, two) = (
        CommandHandler::new(Arc::clone(&store)),
        CommandHandler::new(Arc::clone(&store)),
    );
    let acme = org("acme");
    let m = || {
        CommandMeta::new(
            Organization::KIND,
            acme.clone(),
            Actor::parse("user:root").unwrap(),
        )
    };
    let register = OrgCommand::Register {
        display_name: DisplayName::parse("Acme").unwrap(),
        tags: Tags::default(),
        parent: None,
    };
    // Registered by one, without a read (the stream is taken to be new).
    one.handle::<Organization>(&acme, &register, &m())
        .await
        .unwrap();
    assert_eq!(one.cache().len(), 1);
    // The other knows nothing of it: its guess that the stream is new
    // meets the conflict, and the store's state answers.
    let err = two
        .handle::<Organization>(&acme, &register, &m())
        .await
        .unwrap_err();
    assert_eq!(
        charter_domain::ErrorCode::code(&err),
        "org_already_registered"
    );
    for command in [
        OrgCommand::BeginProvisioning,
        OrgCommand::CompleteProvisioning,
    ] {
        one.handle::<Organization>(&acme, &command, &m())
            .await
            .unwrap();
    }
    // Two suspends the org; one still holds it as active.
    two.handle::<Organization>(
        &acme,
        &OrgCommand::Suspend {
            reason: "billing".into(),
        },
        &m(),
    )
    .await
    .unwrap();
    // Resuming from one's stale state would be "nothing to do" or a
    // refusal; from the store's, it resumes.
    let resumed = one
        .handle::<Organization>(&acme, &OrgCommand::Resume, &m())
        .await
        .unwrap();
    assert!(matches!(
        resumed.events.as_slice(),
        [OrgEvent::Resumed { .. }]
    ));
    assert_eq!(resumed.stream_version, StreamVersion(5));
    // Two's cached state is now stale; its change still lands on top.
    let suspended = two
        .handle::<Organization>(
            &acme,
            &OrgCommand::Suspend {
                reason: "again".into(),
            },
            &m(),
        )
        .await
        .unwrap();
    assert_eq!(suspended.stream_version, StreamVersion(6));
    let loaded = one.load::<Organization>(&acme).await.unwrap();
    assert_eq!(
        loaded.state.0.unwrap().lifecycle,
        Lifecycle::Suspended,
        "the last word is the store's"
    );
    // A client's expected version is checked against the store, not
    // against what a kernel happens to hold.
    let (cached, version) = two.load_cached::<Organization>(&acme).await.unwrap();
    assert_eq!(version, StreamVersion(6));
    assert!(cached.0.is_some());
    one.handle_at::<Organization>(
        &acme,
        &OrgCommand::Resume,
        &m(),
        charter_commands::Handling {
            expected: Some(StreamVersion(6)),
            fresh_command_id: true,
        },
    )
    .await
    .unwrap();
    // Following the log drops what another kernel made stale.
    two.cache().saw(
        &StreamId::for_aggregate::<Organization>(&acme).unwrap(),
        StreamVersion(7),
    );
    let (_, version) = two.load_cached::<Organization>(&acme).await.unwrap();
    assert_eq!(version, StreamVersion(7));
}

/// A joint command that sends `command` to the orgs `first` and `second`.
fn to_both(
    first: &'static str,
    second: &'static str,
    command: OrgCommand,
) -> impl Fn(
    &Organization,
    &Organization,
) -> Result<
    charter_commands::joint::Joint<OrgEvent, OrgEvent, ()>,
    charter_domain::organization::OrgRejection,
> {
    move |a: &Organization, b: &Organization| {
        Ok(charter_commands::joint::Joint {
            first: a.decide(&org(first), &command)?,
            second: b.decide(&org(second), &command)?,
            value: (),
        })
    }
}

/// One decision over two aggregates: both streams written in one append or
/// neither; a refusal writes nothing; a state another kernel made stale is
/// found by the conflict and decided again; concurrent joint commands on
/// the same two aggregates all land.
pub async fn joint_commands_change_both_or_neither(h: &dyn Harness) {
    let store = h.store();
    let kernel = CommandHandler::new(Arc::clone(&store)).with_max_attempts(60);
    let other = CommandHandler::new(Arc::clone(&store));
    let (left, right) = (org("left"), org("right"));
    let m = |o: &OrgName| {
        CommandMeta::new(
            Organization::KIND,
            o.clone(),
            Actor::parse("user:root").unwrap(),
        )
    };
    let register = OrgCommand::Register {
        display_name: DisplayName::parse("Side").unwrap(),
        tags: Tags::default(),
        parent: None,
    };
    let outcome = kernel
        .handle_together::<Organization, Organization, _, _>(
            (&left, &m(&left)),
            (&right, &m(&right)),
            to_both("left", "right", register.clone()),
        )
        .await
        .unwrap();
    assert_eq!(outcome.first.stream_version, StreamVersion(1));
    assert_eq!(outcome.second.stream_version, StreamVersion(1));
    let (p1, p2) = (
        outcome.first.position.unwrap(),
        outcome.second.position.unwrap(),
    );
    assert!(p1 < p2);
    // Registering again is refused on both sides: nothing is written.
    let err = kernel
        .handle_together::<Organization, Organization, _, _>(
            (&left, &m(&left)),
            (&right, &m(&right)),
            to_both("left", "right", register.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        charter_domain::ErrorCode::code(&err),
        "org_already_registered"
    );
    // A refusal by one side only: the other side's change is not written.
    let lonely = org("lonely");
    let err = kernel
        .handle_together::<Organization, Organization, _, _>(
            (&lonely, &m(&lonely)),
            (&right, &m(&right)),
            to_both("lonely", "right", register.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        charter_domain::ErrorCode::code(&err),
        "org_already_registered"
    );
    assert_eq!(
        store
            .stream_version(&StreamId::for_aggregate::<Organization>(&lonely).unwrap())
            .await
            .unwrap(),
        StreamVersion(0)
    );
    // Another kernel moves one side; the joint command still lands on top.
    other
        .handle::<Organization>(&right, &OrgCommand::BeginProvisioning, &m(&right))
        .await
        .unwrap();
    let tags = |n: usize| OrgCommand::SetTags {
        tags: Tags::parse([("n", n.to_string().as_str())]).unwrap(),
    };
    let outcome = kernel
        .handle_together::<Organization, Organization, _, _>(
            (&left, &m(&left)),
            (&right, &m(&right)),
            to_both("left", "right", tags(0)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.first.stream_version, StreamVersion(2));
    assert_eq!(outcome.second.stream_version, StreamVersion(3));
    // Concurrent joint commands on the same pair all land.
    let tasks: Vec<_> = (1..=12)
        .map(|n| {
            let kernel = kernel.clone();
            let (left, right) = (left.clone(), right.clone());
            tokio::spawn(async move {
                let m = |o: &OrgName| {
                    CommandMeta::new(
                        Organization::KIND,
                        o.clone(),
                        Actor::parse("user:root").unwrap(),
                    )
                };
                kernel
                    .handle_together::<Organization, Organization, _, _>(
                        (&left, &m(&left)),
                        (&right, &m(&right)),
                        to_both("left", "right", tags(n)),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let l = kernel.load::<Organization>(&left).await.unwrap();
    let r = kernel.load::<Organization>(&right).await.unwrap();
    assert_eq!(l.version, StreamVersion(14));
    assert_eq!(r.version, StreamVersion(15));
    assert_eq!(
        l.state.0.unwrap().tags,
        r.state.0.unwrap().tags,
        "decided together"
    );
}

#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            append_records_every_field,
            expected_version_is_enforced,
            racing_writers_one_wins,
            no_lost_update,
            repeated_command_takes_effect_once,
            read_all_is_ordered_and_batched,
            bad_input_is_typed_and_writes_nothing,
            malformed_rows_are_typed_errors,
            old_schema_versions_are_upcast,
            snapshots_and_checkpoints,
            subscription_catches_up_then_follows,
            readers_follow_commit_order,
            kernel_handles_commands,
            kernel_retries_on_conflict,
            atomic_append_across_streams,
            concurrent_appends_stay_independent,
            kernels_sharing_a_store_never_act_on_stale_states,
            joint_commands_change_both_or_neither,
        );
    };
    (@each $harness:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness.await;
                conformance::$name(&harness).await;
            }
        )*
    };
}
