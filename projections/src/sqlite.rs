//! Read models on SQLite: documents as JSON text; each batch is one
//! `BEGIN IMMEDIATE` transaction with its checkpoint (SQLite's single
//! writer orders batches and activations).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::{Position, RecordedEvent};
use charter_domain::OrgName;
use chrono::Utc;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::read_models::{fold_statuses, generation_arg, generation_of, to_i64, to_u64};
use crate::staged::{Change, DocLoader, StagedDocuments};
use crate::{BatchOutcome, Document, ProjectionError, ProjectionStatus, Projector, ReadModels};

pub struct SqliteReadModels {
    pool: SqlitePool,
}

fn db(error: sqlx::Error) -> ProjectionError {
    ProjectionError::database(error)
}

fn json(collection: &str, key: &str, text: &str) -> Result<Value, ProjectionError> {
    serde_json::from_str(text).map_err(|e| ProjectionError::MalformedDocument {
        collection: collection.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

impl SqliteReadModels {
    /// Opens the event store's file (it must exist and be migrated).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, ProjectionError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| ProjectionError::Database(e.to_string()))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.clamp(1, 8))
            .connect_with(options)
            .await
            .map_err(db)?;
        Ok(Self { pool })
    }
}

struct SqliteLoader<'c> {
    conn: &'c mut SqliteConnection,
    projection: &'c str,
    generation: i32,
}

#[async_trait]
impl DocLoader for SqliteLoader<'_> {
    async fn load(
        &mut self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ProjectionError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT doc FROM read_models
              WHERE projection = ?1 AND generation = ?2 AND collection = ?3 AND key = ?4",
        )
        .bind(self.projection)
        .bind(self.generation)
        .bind(collection)
        .bind(key)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(db)?;
        text.map(|t| json(collection, key, &t)).transpose()
    }
}

fn document(row: &SqliteRow) -> Result<Document, ProjectionError> {
    let collection: String = row.try_get(0).map_err(db)?;
    let key: String = row.try_get(1).map_err(db)?;
    let org: String = row.try_get(2).map_err(db)?;
    let org = OrgName::parse(org).map_err(|e| ProjectionError::MalformedDocument {
        collection: collection.clone(),
        key: key.clone(),
        reason: e.to_string(),
    })?;
    let text: String = row.try_get(3).map_err(db)?;
    let doc = json(&collection, &key, &text)?;
    Ok(Document {
        collection,
        key,
        org,
        doc,
        position: Position(to_u64(row.try_get(4).map_err(db)?)),
    })
}

#[async_trait]
impl ReadModels for SqliteReadModels {
    async fn register(&self, name: &str) -> Result<u32, ProjectionError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        sqlx::query(
            "INSERT INTO projections (name, active_generation, updated_at) VALUES (?1, 1, ?2)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, generation, position, updated_at)
             VALUES (?1, 1, 0, ?2) ON CONFLICT (name, generation) DO NOTHING",
        )
        .bind(name)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.active_generation(name).await
    }

    async fn active_generation(&self, name: &str) -> Result<u32, ProjectionError> {
        let generation: Option<i32> =
            sqlx::query_scalar("SELECT active_generation FROM projections WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        generation
            .map(generation_of)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }

    async fn checkpoint(&self, name: &str, generation: u32) -> Result<Position, ProjectionError> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM projection_checkpoints WHERE name = ?1 AND generation = ?2",
        )
        .bind(name)
        .bind(generation_arg(generation))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        position
            .map(|p| Position(to_u64(p)))
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }

    async fn apply_batch(
        &self,
        projector: &dyn Projector,
        generation: u32,
        events: &[RecordedEvent],
        only_if_active: bool,
    ) -> Result<BatchOutcome, ProjectionError> {
        let name = projector.name();
        let generation = generation_arg(generation);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let active: Option<i32> =
            sqlx::query_scalar("SELECT active_generation FROM projections WHERE name = ?1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let active = active.ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))?;
        if only_if_active && active != generation {
            return Ok(BatchOutcome::Superseded {
                active: generation_of(active),
            });
        }
        let checkpoint: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM projection_checkpoints WHERE name = ?1 AND generation = ?2",
        )
        .bind(name)
        .bind(generation)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let checkpoint =
            Position(to_u64(checkpoint.ok_or_else(|| {
                ProjectionError::UnknownProjection(name.to_owned())
            })?));
        let fresh: Vec<&RecordedEvent> =
            events.iter().filter(|e| e.position > checkpoint).collect();
        let Some(last) = fresh.last().map(|e| e.position) else {
            return Ok(BatchOutcome::Applied(checkpoint));
        };
        let changes = {
            let mut loader = SqliteLoader {
                conn: &mut tx,
                projection: name,
                generation,
            };
            let mut staged = StagedDocuments::new(&mut loader);
            let reads: Vec<_> = fresh
                .iter()
                .filter(|e| projector.wants(e))
                .flat_map(|e| projector.reads(e))
                .collect();
            staged.prefetch(reads).await?;
            let wanted: Vec<&RecordedEvent> =
                fresh.into_iter().filter(|e| projector.wants(e)).collect();
            projector.apply_all(&wanted, &mut staged).await?;
            staged.changes
        };
        for ((collection, key), change) in changes {
            match change {
                Change::Put { org, doc, position } => {
                    sqlx::query(
                        "INSERT INTO read_models
                            (projection, generation, collection, key, org, doc, position)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (projection, generation, collection, key) DO UPDATE
                            SET org = excluded.org, doc = excluded.doc,
                                position = excluded.position",
                    )
                    .bind(name)
                    .bind(generation)
                    .bind(&collection)
                    .bind(&key)
                    .bind(org.as_str())
                    .bind(doc.to_string())
                    .bind(to_i64(position.0))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
                Change::Delete => {
                    sqlx::query(
                        "DELETE FROM read_models WHERE projection = ?1 AND generation = ?2
                            AND collection = ?3 AND key = ?4",
                    )
                    .bind(name)
                    .bind(generation)
                    .bind(&collection)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
            }
        }
        sqlx::query(
            "UPDATE projection_checkpoints SET position = ?3, updated_at = ?4
              WHERE name = ?1 AND generation = ?2",
        )
        .bind(name)
        .bind(generation)
        .bind(to_i64(last.0))
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(BatchOutcome::Applied(last))
    }

    async fn new_generation(&self, name: &str) -> Result<u32, ProjectionError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let next: Option<i32> = sqlx::query_scalar(
            "SELECT max(generation) + 1 FROM projection_checkpoints WHERE name = ?1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let next = next.ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, generation, position, updated_at)
             VALUES (?1, ?2, 0, ?3)",
        )
        .bind(name)
        .bind(next)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(generation_of(next))
    }

    async fn activate(&self, name: &str, generation: u32) -> Result<(), ProjectionError> {
        let generation = generation_arg(generation);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let updated = sqlx::query(
            "UPDATE projections SET active_generation = ?2, updated_at = ?3 WHERE name = ?1",
        )
        .bind(name)
        .bind(generation)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if updated.rows_affected() == 0 {
            return Err(ProjectionError::UnknownProjection(name.to_owned()));
        }
        for statement in [
            "DELETE FROM read_models WHERE projection = ?1 AND generation <> ?2",
            "DELETE FROM projection_checkpoints WHERE name = ?1 AND generation <> ?2",
        ] {
            sqlx::query(statement)
                .bind(name)
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn statuses(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT p.name, p.active_generation, c.generation, c.position
               FROM projections p JOIN projection_checkpoints c ON c.name = p.name
              ORDER BY p.name, c.generation",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(db)?,
                    generation_of(row.try_get(1).map_err(db)?),
                    generation_of(row.try_get(2).map_err(db)?),
                    Position(to_u64(row.try_get(3).map_err(db)?)),
                ))
            })
            .collect::<Result<Vec<_>, ProjectionError>>()
            .map(fold_statuses)
    }

    async fn get(
        &self,
        projection: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<Document>, ProjectionError> {
        let row = sqlx::query(
            "SELECT r.collection, r.key, r.org, r.doc, r.position
               FROM read_models r JOIN projections p
                 ON p.name = r.projection AND p.active_generation = r.generation
              WHERE r.projection = ?1 AND r.collection = ?2 AND r.key = ?3",
        )
        .bind(projection)
        .bind(collection)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(document).transpose()
    }

    async fn list(
        &self,
        projection: &str,
        collection: &str,
        org: Option<&OrgName>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT r.collection, r.key, r.org, r.doc, r.position
               FROM read_models r JOIN projections p
                 ON p.name = r.projection AND p.active_generation = r.generation
              WHERE r.projection = ?1 AND r.collection = ?2 AND (?3 IS NULL OR r.org = ?3)
                AND (?4 IS NULL OR r.key > ?4)
              ORDER BY r.key LIMIT ?5",
        )
        .bind(projection)
        .bind(collection)
        .bind(org.map(OrgName::as_str))
        .bind(after)
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(document).collect()
    }
}
