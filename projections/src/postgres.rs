//! Read models on PostgreSQL: documents as JSONB, one transaction per batch
//! holding the projection's row lock, its documents and its checkpoint.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::{Position, RecordedEvent};
use charter_domain::OrgName;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};

use crate::read_models::{fold_statuses, generation_arg, generation_of, to_i64, to_u64};
use crate::staged::{Change, DocLoader, StagedDocuments, WrittenDocs, after_commit};
use crate::{BatchOutcome, Document, ProjectionError, ProjectionStatus, Projector, ReadModels};

pub struct PostgresReadModels {
    pool: PgPool,
    /// What this process's batches wrote last, to start the next from.
    written: WrittenDocs,
}

fn db(error: sqlx::Error) -> ProjectionError {
    ProjectionError::database(error)
}

impl PostgresReadModels {
    /// Connects lazily to the database (and schema) of the event store.
    pub async fn connect(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, ProjectionError> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| ProjectionError::Database(e.to_string()))?
            .application_name("charter-projections")
            // Documents and checkpoints commit together, so a batch lost to
            // a crash before it reached the disk is simply applied again
            // from the log: read-model commits need not wait for the flush.
            // Plans are made once per connection; one made while the tables
            // were small must not scan them whole once they have grown, and
            // every statement here seeks by index.
            .options([
                ("synchronous_commit", "off"),
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
            ]);
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            written: WrittenDocs::default(),
        })
    }
}

struct PgLoader<'c> {
    conn: &'c mut PgConnection,
    projection: &'c str,
    generation: i32,
}

#[async_trait]
impl DocLoader for PgLoader<'_> {
    async fn load(
        &mut self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ProjectionError> {
        sqlx::query_scalar(
            "SELECT doc FROM read_models
              WHERE projection = $1 AND generation = $2 AND collection = $3 AND key = $4",
        )
        .bind(self.projection)
        .bind(self.generation)
        .bind(collection)
        .bind(key)
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(db)
    }

    async fn load_many(
        &mut self,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, Value)>, ProjectionError> {
        // One index seek per key, whatever the planner's statistics say
        // (a fast-growing table is planned as if tiny until analyzed, and
        // `key = ANY(…)` would then filter the whole collection).
        sqlx::query_as(
            "SELECT r.key, r.doc FROM unnest($4::text[]) AS k(key)
             CROSS JOIN LATERAL (
                 SELECT key, doc FROM read_models
                  WHERE projection = $1 AND generation = $2 AND collection = $3
                    AND key = k.key
                 OFFSET 0) AS r",
        )
        .bind(self.projection)
        .bind(self.generation)
        .bind(collection)
        .bind(keys)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(db)
    }
}

/// Serializes the writers of one projection (batches of its runners,
/// new generations, activation) for the rest of the transaction.
async fn lock_projection(conn: &mut PgConnection, name: &str) -> Result<(), ProjectionError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('charter.projection.' || current_schema() || '.' || $1))")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

fn document(row: &PgRow) -> Result<Document, ProjectionError> {
    let collection: String = row.try_get(0).map_err(db)?;
    let key: String = row.try_get(1).map_err(db)?;
    let org: String = row.try_get(2).map_err(db)?;
    let org = OrgName::parse(org).map_err(|e| ProjectionError::MalformedDocument {
        collection: collection.clone(),
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(Document {
        collection,
        key,
        org,
        doc: row.try_get(3).map_err(db)?,
        position: Position(to_u64(row.try_get(4).map_err(db)?)),
    })
}

async fn flush(
    conn: &mut PgConnection,
    projection: &str,
    generation: i32,
    changes: &std::collections::BTreeMap<(String, String), Change>,
) -> Result<(), ProjectionError> {
    let (mut put_collections, mut put_keys, mut orgs, mut docs, mut positions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut del_collections, mut del_keys) = (Vec::new(), Vec::new());
    for ((collection, key), change) in changes {
        match change {
            Change::Put { org, doc, position } => {
                put_collections.push(collection.as_str());
                put_keys.push(key.as_str());
                orgs.push(org.as_str());
                docs.push(doc.to_string());
                positions.push(to_i64(position.0));
            }
            Change::Delete => {
                del_collections.push(collection.as_str());
                del_keys.push(key.as_str());
            }
        }
    }
    if !put_keys.is_empty() {
        sqlx::query(
            "INSERT INTO read_models (projection, generation, collection, key, org, doc, position)
             SELECT $1, $2, c, k, o, d::jsonb, p
               FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])
                    AS u(c, k, o, d, p)
             ON CONFLICT (projection, generation, collection, key) DO UPDATE
                SET org = excluded.org, doc = excluded.doc, position = excluded.position",
        )
        .bind(projection)
        .bind(generation)
        .bind(put_collections)
        .bind(put_keys)
        .bind(orgs)
        .bind(docs)
        .bind(positions)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    if !del_keys.is_empty() {
        sqlx::query(
            "DELETE FROM read_models r
              USING unnest($3::text[], $4::text[]) AS d(c, k)
              WHERE r.projection = $1 AND r.generation = $2
                AND r.collection = d.c AND r.key = d.k",
        )
        .bind(projection)
        .bind(generation)
        .bind(del_collections)
        .bind(del_keys)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

#[async_trait]
impl ReadModels for PostgresReadModels {
    async fn register(&self, name: &str) -> Result<u32, ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO projections (name, active_generation) VALUES ($1, 1)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, generation, position) VALUES ($1, 1, 0)
             ON CONFLICT (name, generation) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.active_generation(name).await
    }

    async fn active_generation(&self, name: &str) -> Result<u32, ProjectionError> {
        let generation: Option<i32> =
            sqlx::query_scalar("SELECT active_generation FROM projections WHERE name = $1")
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
            "SELECT position FROM projection_checkpoints WHERE name = $1 AND generation = $2",
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
        // A batch the projector wants nothing of only moves the
        // checkpoint: one statement, no transaction.
        if !events.iter().any(|e| projector.wants(e))
            && let Some(last) = events.last()
        {
            let moved: Option<i64> = sqlx::query_scalar(
                "UPDATE projection_checkpoints c SET position = $3, updated_at = now()
                   FROM projections p
                  WHERE c.name = $1 AND c.generation = $2 AND c.position < $3
                    AND p.name = $1 AND (NOT $4 OR p.active_generation = $2)
                 RETURNING c.position",
            )
            .bind(name)
            .bind(generation)
            .bind(to_i64(last.position.0))
            .bind(only_if_active)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            if let Some(position) = moved {
                return Ok(BatchOutcome::Applied(Position(to_u64(position))));
            }
            // Nothing moved: superseded, unknown, or already past this
            // batch; the full path below tells which.
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The projection's lock orders this batch against the other runner
        // of the same projection and against an activation. An advisory
        // lock, not a row lock: a row lock would give the transaction an
        // id for its whole length, and log readers wait for every older
        // transaction id to finish (the read horizon), so a slow batch
        // would hold every reader back. Here the id comes with the writes
        // at the end, just before the commit.
        lock_projection(&mut tx, name).await?;
        // The active generation and this generation's checkpoint, at once.
        let found: Option<(i32, Option<i64>)> = sqlx::query_as(
            "SELECT p.active_generation, c.position
               FROM projections p
               LEFT JOIN projection_checkpoints c ON c.name = p.name AND c.generation = $2
              WHERE p.name = $1",
        )
        .bind(name)
        .bind(generation)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let unknown = || ProjectionError::UnknownProjection(name.to_owned());
        let (active, checkpoint) = found.ok_or_else(unknown)?;
        if only_if_active && active != generation {
            return Ok(BatchOutcome::Superseded {
                active: generation_of(active),
            });
        }
        let checkpoint = Position(to_u64(checkpoint.ok_or_else(unknown)?));
        let fresh: Vec<&RecordedEvent> =
            events.iter().filter(|e| e.position > checkpoint).collect();
        let Some(last) = fresh.last().map(|e| e.position) else {
            return Ok(BatchOutcome::Applied(checkpoint));
        };
        let known = self.written.take(name, generation, checkpoint);
        let (changes, after) = {
            let mut loader = PgLoader {
                conn: &mut tx,
                projection: name,
                generation,
            };
            let mut staged = StagedDocuments::knowing(&mut loader, known);
            let reads: Vec<_> = fresh
                .iter()
                .filter(|e| projector.wants(e))
                .flat_map(|e| projector.reads(e))
                .collect();
            staged.prefetch(reads).await?;
            let wanted: Vec<&RecordedEvent> =
                fresh.into_iter().filter(|e| projector.wants(e)).collect();
            projector.apply_all(&wanted, &mut staged).await?;
            staged.into_parts()
        };
        flush(&mut tx, name, generation, &changes).await?;
        sqlx::query(
            "UPDATE projection_checkpoints SET position = $3, updated_at = now()
              WHERE name = $1 AND generation = $2",
        )
        .bind(name)
        .bind(generation)
        .bind(to_i64(last.0))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.written
            .keep(name, generation, last, after_commit(changes, after));
        Ok(BatchOutcome::Applied(last))
    }

    async fn new_generation(&self, name: &str) -> Result<u32, ProjectionError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        lock_projection(&mut tx, name).await?;
        let next: Option<i32> = sqlx::query_scalar(
            "SELECT max(generation) + 1 FROM projection_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let next = next.ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, generation, position) VALUES ($1, $2, 0)",
        )
        .bind(name)
        .bind(next)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(generation_of(next))
    }

    async fn activate(&self, name: &str, generation: u32) -> Result<(), ProjectionError> {
        let generation = generation_arg(generation);
        let mut tx = self.pool.begin().await.map_err(db)?;
        lock_projection(&mut tx, name).await?;
        let updated = sqlx::query(
            "UPDATE projections SET active_generation = $2, updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(generation)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if updated.rows_affected() == 0 {
            return Err(ProjectionError::UnknownProjection(name.to_owned()));
        }
        for statement in [
            "DELETE FROM read_models WHERE projection = $1 AND generation <> $2",
            "DELETE FROM projection_checkpoints WHERE name = $1 AND generation <> $2",
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
               FROM read_models r
              WHERE r.projection = $1 AND r.collection = $2 AND r.key = $3
                AND r.generation = (SELECT active_generation FROM projections WHERE name = $1)",
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
        // Two statements rather than one with `$3 IS NULL OR …`: plans are
        // generic (see `connect`), and one org's listing must seek by org.
        // The active generation is a sub-select, not a join, so that every
        // column of the index is known before the seek. An empty cursor
        // sorts before every key.
        let query = match org {
            Some(org) => sqlx::query(
                "SELECT r.collection, r.key, r.org, r.doc, r.position
                   FROM read_models r
                  WHERE r.org = $3 AND r.projection = $1 AND r.collection = $2 AND r.key > $4
                    AND r.generation = (SELECT active_generation FROM projections WHERE name = $1)
                  ORDER BY r.key LIMIT $5",
            )
            .bind(projection)
            .bind(collection)
            .bind(org.as_str()),
            None => sqlx::query(
                "SELECT r.collection, r.key, r.org, r.doc, r.position
                   FROM read_models r
                  WHERE r.projection = $1 AND r.collection = $2 AND r.key > $3
                    AND r.generation = (SELECT active_generation FROM projections WHERE name = $1)
                  ORDER BY r.key LIMIT $4",
            )
            .bind(projection)
            .bind(collection),
        };
        let rows = query
            .bind(after.unwrap_or(""))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(document).collect()
    }
}
