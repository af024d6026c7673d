//! Test support shared by the PostgreSQL-backed suites: a migrated store on
//! a schema of the test's own, dropped when the test ends.

#![allow(dead_code)]

use std::sync::Arc;

use charter_commands::EventStore;
use charter_commands::postgres::PostgresStore;
use charter_commands::store::StoreOptions;
use charter_testkit::ScratchSchema;
pub use charter_testkit::test_database_url;

/// A migrated store on a fresh schema; the schema is dropped on drop.
pub struct PgSchema {
    pub store: Arc<PostgresStore>,
    pub schema: ScratchSchema,
}

impl PgSchema {
    pub async fn new(max_connections: u32) -> Self {
        Self::with_lanes(max_connections, 1).await
    }

    /// A store that commits up to `lanes` groups of appends at once.
    pub async fn with_lanes(max_connections: u32, lanes: u32) -> Self {
        let schema = ScratchSchema::new("t");
        let store = PostgresStore::connect(
            &test_database_url(),
            StoreOptions {
                schema: Some(schema.name.clone()),
                max_connections,
                append_lanes: lanes,
                ..StoreOptions::default()
            },
        )
        .await
        .expect("PostgreSQL must be running for these tests (see README: Running the tests)");
        store.migrate().await.expect("migrations apply");
        Self {
            store: Arc::new(store),
            schema,
        }
    }
}
