//! `charter-testkit` owns what every test suite shares: where the test
//! PostgreSQL and NATS are, and scratch PostgreSQL schemas, JetStream
//! streams and SQLite files that remove themselves when the test ends
//! (even when it panics). It depends on no Charter crate, so any of them
//! can use it in tests.

use std::path::{Path, PathBuf};

use sqlx::Connection;

pub fn test_database_url() -> String {
    std::env::var("CHARTER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn test_nats_url() -> String {
    std::env::var("CHARTER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A fresh, unique PostgreSQL schema name, dropped (with everything in it)
/// when this value is dropped. The schema itself is created by whoever
/// connects with it.
#[derive(Debug)]
pub struct ScratchSchema {
    pub name: String,
}

impl ScratchSchema {
    pub fn new(prefix: &str) -> Self {
        Self {
            name: format!("{prefix}_{}", uuid::Uuid::now_v7().simple()),
        }
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        clean_up(async move {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&test_database_url()).await {
                let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

/// Runs a clean-up to its end on a thread and runtime of its own: the
/// test's runtime may be shutting down, or a drop may run outside any.
fn clean_up(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(work);
        }
    })
    .join();
}

/// JetStream streams a test's server creates (its events stream and its
/// task queue, `<name>_TASKS`), deleted when this value is dropped.
#[derive(Debug)]
pub struct ScratchStreams {
    pub name: String,
}

impl ScratchStreams {
    pub fn new(prefix: &str) -> Self {
        Self {
            name: format!("{prefix}_{}", uuid::Uuid::now_v7().simple()),
        }
    }
}

impl std::ops::Deref for ScratchStreams {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for ScratchStreams {
    fn drop(&mut self) {
        let names = [self.name.clone(), format!("{}_TASKS", self.name)];
        clean_up(async move {
            let Ok(client) = async_nats::connect(test_nats_url()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client);
            for name in names {
                let _ = js.delete_stream(&name).await;
            }
        });
    }
}

/// A fresh SQLite file path in the temp directory, removed (with its WAL
/// and shared-memory files) when this value is dropped.
#[derive(Debug)]
pub struct ScratchFile {
    pub path: PathBuf,
}

impl ScratchFile {
    pub fn new(prefix: &str) -> Self {
        Self {
            path: std::env::temp_dir().join(format!("{prefix}-{}.db", uuid::Uuid::now_v7())),
        }
    }

    /// The `sqlite://` URL of the file.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}
