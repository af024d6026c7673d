//! The conformance suite against PostgreSQL: each test owns a fresh schema
//! in the database `CHARTER_TEST_DATABASE_URL` names (by default the local
//! `test` database), dropped when the test ends.

mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::postgres::PostgresStore;
use charter_commands::store::StoreOptions;
use charter_commands::{
    AppendOutcome, CommandMeta, EventStore, ExpectedVersion, NewEvent, Position, StoreError,
    StreamId,
};
use conformance::{Harness, RawRow};
use support::{PgSchema, test_database_url};

struct PgHarness(PgSchema);

async fn harness() -> PgHarness {
    let schema = PgSchema::new(8).await;
    schema.store.check_ready().await.unwrap();
    PgHarness(schema)
}

#[async_trait]
impl Harness for PgHarness {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.0.store) as Arc<dyn EventStore>
    }

    async fn insert_raw(&self, row: RawRow) {
        sqlx::query(
            "INSERT INTO events (position, stream_id, version, aggregate_type, event_id, event_type,
                schema_version, org, actor, command_id, command_seq, correlation_id, causation_id, payload)
             VALUES ((pg_current_xact_id()::text::int8 << 20), $1, $2, $3, $4, $5, $6, $7,
                'user:legacy', $4, 0, $4, $4, $8::json)",
        )
        .bind(&row.stream_id)
        .bind(row.version as i64)
        .bind(&row.aggregate_type)
        .bind(uuid::Uuid::now_v7())
        .bind(&row.event_type)
        .bind(row.schema_version)
        .bind(&row.org)
        .bind(&row.payload)
        .execute(self.0.store.pool())
        .await
        .unwrap();
    }

    async fn append_held(
        &self,
        stream: StreamId,
        events: Vec<NewEvent>,
        meta: CommandMeta,
        hold: Duration,
    ) -> Result<AppendOutcome, StoreError> {
        let mut tx = self.0.store.pool().begin().await.unwrap();
        // Take the transaction id now: its positions will be small, but it
        // commits after transactions that start later.
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await
            .unwrap();
        tokio::time::sleep(hold / 2).await;
        let outcome = self
            .0
            .store
            .append_on(&mut tx, &stream, ExpectedVersion::Any, &events, &meta)
            .await?;
        tokio::time::sleep(hold / 2).await;
        tx.commit().await.unwrap();
        self.0.store.announce_commit();
        Ok(outcome)
    }
}

conformance_tests!(harness());

/// The store is created lazily: it exists while PostgreSQL is unreachable,
/// and says so with a typed error instead of hanging or panicking.
#[tokio::test]
async fn unreachable_server_is_a_typed_error() {
    let store = PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/none",
        StoreOptions::default(),
    )
    .await
    .unwrap();
    let err = store.check_ready().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

/// A schema without the migrations is reachable but not ready.
#[tokio::test]
async fn unmigrated_schema_is_not_ready() {
    let schema = charter_testkit::ScratchSchema::new("t");
    let store = PostgresStore::connect(
        &test_database_url(),
        StoreOptions {
            schema: Some(schema.name.clone()),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let err = store.check_ready().await.unwrap_err();
    assert!(matches!(err, StoreError::NotMigrated(_)), "{err:?}");
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.check_ready().await.unwrap();
}

/// The same store behind the shared in-memory tail: log readers get the
/// same events, once each, in commit order.
struct TailedHarness {
    pg: PgHarness,
    tailed: Arc<charter_commands::tail::TailedStore>,
}

async fn tailed_harness() -> TailedHarness {
    let pg = harness().await;
    let tailed = charter_commands::tail::TailedStore::start(pg.store(), 50)
        .await
        .unwrap();
    TailedHarness {
        pg,
        tailed: Arc::new(tailed),
    }
}

#[async_trait]
impl Harness for TailedHarness {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.tailed) as Arc<dyn EventStore>
    }

    async fn insert_raw(&self, row: RawRow) {
        self.pg.insert_raw(row).await;
    }

    async fn append_held(
        &self,
        stream: StreamId,
        events: Vec<NewEvent>,
        meta: CommandMeta,
        hold: Duration,
    ) -> Result<AppendOutcome, StoreError> {
        self.pg.append_held(stream, events, meta, hold).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tailed_readers_follow_commit_order() {
    conformance::readers_follow_commit_order(&tailed_harness().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tailed_subscription_catches_up_then_follows() {
    conformance::subscription_catches_up_then_follows(&tailed_harness().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tailed_read_all_is_ordered_and_batched() {
    conformance::read_all_is_ordered_and_batched(&tailed_harness().await).await;
}

/// Appends that arrive while a transaction is on its way share the next
/// one: under concurrent writers, several appends carry the same
/// transaction id in their positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions() {
    let h = harness().await;
    let store = h.store();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = StreamId::parse(format!("grouped-{i}")).unwrap();
                store
                    .append(
                        &s,
                        ExpectedVersion::NoStream,
                        &conformance::events(1),
                        &conformance::meta("acme"),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut transactions = std::collections::HashMap::new();
    for task in tasks {
        let outcome = task.await.unwrap();
        *transactions
            .entry(outcome.first_position.0 >> 20)
            .or_insert(0usize) += 1;
    }
    let largest = transactions.values().copied().max().unwrap();
    assert!(
        transactions.len() < 200 && largest > 1,
        "200 concurrent appends took {} transactions",
        transactions.len()
    );
}

/// Several groups of appends on their way at once (more lanes): the same
/// guarantees.
mod lanes {
    use super::*;

    async fn harness() -> PgHarness {
        let schema = PgSchema::with_lanes(8, 3).await;
        schema.store.check_ready().await.unwrap();
        PgHarness(schema)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_stay_independent() {
        conformance::concurrent_appends_stay_independent(&harness().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_writers_one_wins() {
        conformance::racing_writers_one_wins(&harness().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_lost_update() {
        conformance::no_lost_update(&harness().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn joint_commands_change_both_or_neither() {
        conformance::joint_commands_change_both_or_neither(&harness().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readers_follow_commit_order() {
        conformance::readers_follow_commit_order(&harness().await).await;
    }
}

/// Two stores on one database, as two processes would have: their groups
/// race for the same versions, the database's constraint decides, and the
/// loser of each race learns the version that won; no group loses an
/// append of another stream to the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_of_two_processes_race_safely() {
    let first = PgSchema::new(8).await;
    let second = PostgresStore::connect(
        &test_database_url(),
        StoreOptions {
            schema: Some(first.schema.name.clone()),
            max_connections: 8,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let stores: [Arc<dyn EventStore>; 2] = [
        Arc::clone(&first.store) as Arc<dyn EventStore>,
        Arc::new(second),
    ];
    let shared = StreamId::parse("raced").unwrap();
    stores[0]
        .append(
            &shared,
            ExpectedVersion::NoStream,
            &conformance::events(1),
            &conformance::meta("acme"),
        )
        .await
        .unwrap();
    for round in 0..5u64 {
        let at = stores[0].stream_version(&shared).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let shared = shared.clone();
                tokio::spawn(async move {
                    // Each writer also appends to a stream of its own, in
                    // the same group as its neighbours' racing appends.
                    let own = StreamId::parse(format!("own-{round}-{i}")).unwrap();
                    let one = conformance::events(1);
                    let (by_me, by_race) = (conformance::meta("acme"), conformance::meta("acme"));
                    let mine = store.append(&own, ExpectedVersion::NoStream, &one, &by_me);
                    let raced = store.append(&shared, ExpectedVersion::Exact(at), &one, &by_race);
                    let (mine, raced) = tokio::join!(mine, raced);
                    (mine, raced)
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            let (mine, raced) = task.await.unwrap();
            mine.expect("an append to a stream of its own never loses");
            match raced {
                Ok(_) => wins += 1,
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    assert_eq!(actual.0, at.0 + 1)
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(
        stores[1].stream_version(&shared).await.unwrap().0,
        6,
        "one append per round"
    );
}

/// A read of the tail says when committed events wait behind an older
/// transaction still open, so that followers look again only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reads_say_when_commits_are_held_back() {
    let h = harness().await;
    let store = h.store();
    let empty = store.read_tail(Position::START, 100).await.unwrap();
    assert!(empty.events.is_empty() && !empty.held_back, "{empty:?}");

    // An older transaction takes its id, then a newer append commits.
    let mut older = h.0.store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    let newer = store
        .append(
            &StreamId::parse("held").unwrap(),
            ExpectedVersion::NoStream,
            &conformance::events(1),
            &conformance::meta("acme"),
        )
        .await
        .unwrap();
    let held = store.read_tail(Position::START, 100).await.unwrap();
    assert!(held.events.is_empty(), "read past an open transaction");
    assert!(held.held_back, "the newer commit went unmentioned");

    older.rollback().await.unwrap();
    // Other tests' transactions may hold the horizon back for a moment.
    let released = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let read = store.read_tail(Position::START, 100).await.unwrap();
            if !read.events.is_empty() {
                return read;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the commit never became readable");
    assert_eq!(released.events[0].position, newer.first_position);
}
