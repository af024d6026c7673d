//! `charter bench`: throughput and latency figures of the configured store,
//! measured on a fresh schema (PostgreSQL) or file (SQLite) that is removed
//! afterwards. Each prints one JSON object on its last line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use charter_commands::store::{StoreOptions, wait_for_position};
use charter_commands::{CommandMeta, EventStore, ExpectedVersion, NewEvent, Position, StreamId};
use charter_domain::{Actor, OrgName};
use serde_json::json;
use sqlx::Connection;

use crate::Config;

/// A store that exists only for one benchmark.
pub struct ScratchStore {
    pub store: Arc<dyn EventStore>,
    cleanup: Cleanup,
}

enum Cleanup {
    Schema { url: String, schema: String },
    File(std::path::PathBuf),
}

impl ScratchStore {
    pub async fn create(config: &Config, connections: u32) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let (url, options, cleanup) = if config.database_url.starts_with("sqlite:") {
            let path = std::env::temp_dir().join(format!("charter-bench-{suffix}.db"));
            (
                format!("sqlite://{}", path.display()),
                config.store_options(),
                Cleanup::File(path),
            )
        } else {
            let schema = format!("charter_bench_{suffix}");
            let options = StoreOptions {
                schema: Some(schema.clone()),
                max_connections: connections,
                ..config.store_options()
            };
            (
                config.database_url.clone(),
                options,
                Cleanup::Schema {
                    url: config.database_url.clone(),
                    schema,
                },
            )
        };
        let store = charter_commands::connect(&url, options)
            .await
            .context("opening the benchmark store")?;
        store.migrate().await?;
        Ok(Self { store, cleanup })
    }

    /// Removes the schema or file.
    pub async fn remove(self) -> anyhow::Result<()> {
        drop(self.store);
        match self.cleanup {
            Cleanup::Schema { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&mut conn)
                .await?;
            }
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut name = path.clone().into_os_string();
                    name.push(suffix);
                    let _ = std::fs::remove_file(name);
                }
            }
        }
        Ok(())
    }
}

fn bench_events(stream: &str, batch: usize) -> Vec<NewEvent> {
    (0..batch)
        .map(|g| {
            NewEvent::new(
                "OrganizationTagged",
                json!({"org": stream, "tag": format!("tier-{g}"), "note": "x".repeat(240)}),
            )
        })
        .collect()
}

fn bench_meta() -> anyhow::Result<CommandMeta> {
    Ok(CommandMeta::new(
        "organization",
        OrgName::parse("bench")?,
        Actor::parse("system:bench")?,
    ))
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    (sorted[index].as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// `writers` tasks append `events` events in appends of `batch`, each
/// append a new stream (like the raw-INSERT ceiling it is compared to).
pub async fn append(
    config: &Config,
    writers: usize,
    batch: usize,
    events: u64,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        writers > 0 && batch > 0 && events > 0,
        "writers, batch and events must be positive"
    );
    let scratch = ScratchStore::create(config, writers as u32 + 2).await?;
    let result = run_append(&scratch.store, writers, batch, events).await;
    scratch.remove().await?;
    result
}

async fn run_append(
    store: &Arc<dyn EventStore>,
    writers: usize,
    batch: usize,
    events: u64,
) -> anyhow::Result<serde_json::Value> {
    let appends = events.div_ceil(batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = Arc::clone(store);
        let next = Arc::clone(&next);
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            // Warm the connection and its prepared statements, untimed.
            for w in 0..2 {
                let stream = StreamId::parse(format!("warmup-{writer}-{w}"))?;
                store
                    .append(
                        &stream,
                        ExpectedVersion::NoStream,
                        &bench_events("warmup", batch),
                        &bench_meta()?,
                    )
                    .await?;
            }
            start.wait().await;
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= appends {
                    break;
                }
                let name = format!("bench-{i}");
                let stream = StreamId::parse(name.as_str())?;
                let new = bench_events(&name, batch);
                let meta = bench_meta()?;
                let started = Instant::now();
                store
                    .append(&stream, ExpectedVersion::NoStream, &new, &meta)
                    .await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    start.wait().await;
    let began = Instant::now();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let written = appends * batch as u64;
    Ok(json!({
        "backend": store.backend(),
        "writers": writers,
        "batch": batch,
        "events": written,
        "events_per_sec": (written as f64 / elapsed).round(),
        "p50_ms": percentile_ms(&latencies, 50.0),
        "p99_ms": percentile_ms(&latencies, 99.0),
    }))
}

/// Writes `events` events, then times a catch-up read of the whole log.
pub async fn read(config: &Config, events: u64) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(events > 0, "events must be positive");
    let scratch = ScratchStore::create(config, 6).await?;
    let result = run_read(&scratch.store, events).await;
    scratch.remove().await?;
    result
}

async fn run_read(store: &Arc<dyn EventStore>, events: u64) -> anyhow::Result<serde_json::Value> {
    let batch = 1000.min(events as usize);
    let appends = events.div_ceil(batch as u64);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = Arc::clone(store);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut last = Position::START;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= appends {
                    return anyhow::Ok(last);
                }
                let name = format!("read-{i}");
                let outcome = store
                    .append(
                        &StreamId::parse(name.as_str())?,
                        ExpectedVersion::NoStream,
                        &bench_events(&name, batch),
                        &bench_meta()?,
                    )
                    .await?;
                last = last.max(outcome.last_position);
            }
        }));
    }
    let mut last = Position::START;
    for task in tasks {
        last = last.max(task.await??);
    }
    anyhow::ensure!(
        wait_for_position(store.as_ref(), last, Duration::from_secs(60)).await?,
        "the log never became readable up to {last}"
    );
    eprintln!("wrote {} events; reading them back", appends * batch as u64);
    let began = Instant::now();
    let mut after = Position::START;
    let mut read = 0u64;
    loop {
        let page = store.read_all(after, 5000).await?;
        let Some(tail) = page.last() else { break };
        after = tail.position;
        read += page.len() as u64;
    }
    let elapsed = began.elapsed().as_secs_f64();
    Ok(json!({
        "backend": store.backend(),
        "events": read,
        "events_per_sec": (read as f64 / elapsed).round(),
    }))
}
