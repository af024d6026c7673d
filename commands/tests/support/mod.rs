//! Test support shared by the PostgreSQL-backed suites: the test database
//! and a store on a schema of the test's own, dropped when the test ends.

#![allow(dead_code)]

use std::sync::Arc;

use charter_commands::EventStore;
use charter_commands::postgres::PostgresStore;
use charter_commands::store::StoreOptions;
use sqlx::Connection;

pub fn test_database_url() -> String {
    std::env::var("CHARTER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A migrated store on a fresh schema; the schema is dropped on drop.
pub struct PgSchema {
    pub store: Arc<PostgresStore>,
    pub name: String,
}

impl PgSchema {
    pub async fn new(max_connections: u32) -> Self {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let store = PostgresStore::connect(
            &test_database_url(),
            StoreOptions {
                schema: Some(name.clone()),
                max_connections,
                ..StoreOptions::default()
            },
        )
        .await
        .expect("PostgreSQL must be running for these tests (see README: Running the tests)");
        store.migrate().await.expect("migrations apply");
        Self {
            store: Arc::new(store),
            name,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // On its own thread: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&test_database_url()).await {
                    let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
