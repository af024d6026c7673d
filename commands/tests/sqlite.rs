//! The conformance suite against SQLite: each test owns a fresh database
//! file, removed when the test ends.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::sqlite::SqliteStore;
use charter_commands::store::StoreOptions;
use charter_commands::{
    AppendOutcome, CommandMeta, EventStore, ExpectedVersion, NewEvent, StoreError, StreamId,
};
use charter_testkit::ScratchFile;
use conformance::{Harness, RawRow};

struct SqliteHarness {
    store: Arc<SqliteStore>,
    _file: ScratchFile,
}

async fn harness() -> SqliteHarness {
    let file = ScratchFile::new("charter-test");
    let store = SqliteStore::open(&file.url(), StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.check_ready().await.unwrap();
    SqliteHarness {
        store: Arc::new(store),
        _file: file,
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.store) as Arc<dyn EventStore>
    }

    async fn insert_raw(&self, row: RawRow) {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO events (stream_id, version, aggregate_type, event_id, event_type,
                schema_version, recorded_at, org, actor, command_id, command_seq,
                correlation_id, causation_id, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'user:legacy', ?4, 0, ?4, ?4, ?9)",
        )
        .bind(&row.stream_id)
        .bind(row.version as i64)
        .bind(&row.aggregate_type)
        .bind(&id)
        .bind(&row.event_type)
        .bind(row.schema_version)
        .bind(chrono::Utc::now())
        .bind(&row.org)
        .bind(&row.payload)
        .execute(self.store.pool())
        .await
        .unwrap();
    }

    /// SQLite runs one writer at a time, so a held transaction would only
    /// delay the others: the hold happens before the append.
    async fn append_held(
        &self,
        stream: StreamId,
        events: Vec<NewEvent>,
        meta: CommandMeta,
        hold: Duration,
    ) -> Result<AppendOutcome, StoreError> {
        tokio::time::sleep(hold).await;
        self.store
            .append(&stream, ExpectedVersion::Any, &events, &meta)
            .await
    }
}

conformance_tests!(harness());

/// Bytes that are not JSON in the payload column: a typed error on read.
#[tokio::test]
async fn payload_that_is_not_json_is_malformed() {
    let h = harness().await;
    h.insert_raw(RawRow {
        stream_id: "garbage-1".into(),
        version: 1,
        aggregate_type: "organization".into(),
        event_type: "Renamed".into(),
        schema_version: 1,
        org: "acme".into(),
        payload: "{not json".into(),
    })
    .await;
    let err = h
        .store()
        .read_all(charter_commands::Position::START, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MalformedEvent { .. }), "{err:?}");
}
