//! The [`ReadModels`] trait: where projections keep their generations,
//! checkpoints and documents, and how queries read them. PostgreSQL and
//! SQLite implement it over the same database as the event store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::{Position, RecordedEvent};
use charter_domain::OrgName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ProjectionError, Projector};

/// One document of a projection's active generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub collection: String,
    pub key: String,
    pub org: OrgName,
    pub doc: Value,
    /// The position of the last event that changed it.
    pub position: Position,
}

/// Where a projection is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub generation: u32,
    pub position: Position,
    /// A generation being rebuilt, and how far it got.
    pub rebuilding: Option<(u32, Position)>,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Applied (events at or before the checkpoint skipped); the new
    /// checkpoint.
    Applied(Position),
    /// The generation is no longer the active one: nothing was written.
    Superseded { active: u32 },
}

#[async_trait]
pub trait ReadModels: Send + Sync + 'static {
    /// Makes the projection known (generation 1 at the start of the log)
    /// and returns its active generation.
    async fn register(&self, name: &str) -> Result<u32, ProjectionError>;

    async fn active_generation(&self, name: &str) -> Result<u32, ProjectionError>;

    async fn checkpoint(&self, name: &str, generation: u32) -> Result<Position, ProjectionError>;

    /// Applies `events` to `generation` in one transaction with its
    /// checkpoint. Events at or before the checkpoint are skipped, so a
    /// batch applied twice takes effect once. With `only_if_active`, a
    /// generation that is no longer active writes nothing.
    async fn apply_batch(
        &self,
        projector: &dyn Projector,
        generation: u32,
        events: &[RecordedEvent],
        only_if_active: bool,
    ) -> Result<BatchOutcome, ProjectionError>;

    /// Starts a new, inactive generation at the start of the log.
    async fn new_generation(&self, name: &str) -> Result<u32, ProjectionError>;

    /// Makes `generation` the one queries read, and drops the others.
    async fn activate(&self, name: &str, generation: u32) -> Result<(), ProjectionError>;

    async fn statuses(&self) -> Result<Vec<ProjectionStatus>, ProjectionError>;

    /// One document of the active generation.
    async fn get(
        &self,
        projection: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, ProjectionError>;

    /// The documents of a collection in key order, after the cursor: one
    /// org's, or every org's when `org` is `None`.
    async fn list(
        &self,
        projection: &str,
        collection: &str,
        org: Option<&OrgName>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, ProjectionError>;

    /// Waits until the active generation has applied the log through
    /// `position` (read-your-writes), at most `timeout`.
    async fn wait_for(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let generation = self.active_generation(name).await?;
            if self.checkpoint(name, generation).await? >= position {
                return Ok(());
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ProjectionError::NotYetVisible(position));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Opens the read models in the database a URL names (the event store's).
pub async fn connect(
    url: &str,
    schema: Option<&str>,
    max_connections: u32,
) -> Result<Arc<dyn ReadModels>, ProjectionError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            crate::postgres::PostgresReadModels::connect(url, schema, max_connections).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            crate::sqlite::SqliteReadModels::open(url, max_connections).await?,
        ))
    } else {
        Err(ProjectionError::Database(
            "database url must start with postgres://, postgresql:// or sqlite:".into(),
        ))
    }
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn generation_of(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

pub(crate) fn generation_arg(generation: u32) -> i32 {
    i32::try_from(generation).unwrap_or(i32::MAX)
}

/// Folds `(name, active generation, generation, position)` rows, ordered
/// by name, into one status per projection.
pub(crate) fn fold_statuses(
    rows: impl IntoIterator<Item = (String, u32, u32, Position)>,
) -> Vec<ProjectionStatus> {
    let mut out: Vec<ProjectionStatus> = Vec::new();
    for (name, active, generation, position) in rows {
        if out.last().is_none_or(|s| s.name != name) {
            out.push(ProjectionStatus {
                name,
                generation: active,
                position: Position::START,
                rebuilding: None,
            });
        }
        if let Some(entry) = out.last_mut() {
            if generation == active {
                entry.position = position;
            } else {
                entry.rebuilding = Some((generation, position));
            }
        }
    }
    out
}
