//! Running projections: the live [`ProjectionRunner`] that follows the log
//! into the active generation, and [`rebuild`], which fills a new
//! generation from the start of the log and then activates it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use charter_commands::store::Subscription;
use charter_commands::{EventStore, Position, RecordedEvent};
use serde::Serialize;
use tokio::sync::watch;

use crate::{BatchOutcome, ProjectionError, Projector, ReadModels};

/// Follows the global log and applies it to one projection's active
/// generation, batch by batch, each batch with its checkpoint.
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    models: Arc<dyn ReadModels>,
    projector: Arc<dyn Projector>,
    batch: usize,
    visible: watch::Sender<Position>,
}

impl ProjectionRunner {
    pub fn new(
        store: Arc<dyn EventStore>,
        models: Arc<dyn ReadModels>,
        projector: Arc<dyn Projector>,
    ) -> Self {
        Self {
            store,
            models,
            projector,
            batch: 500,
            visible: watch::channel(Position::START).0,
        }
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The position through which this runner's projection is applied;
    /// read-your-writes waits on it instead of polling.
    pub fn visible(&self) -> watch::Receiver<Position> {
        self.visible.subscribe()
    }

    /// Runs until `shutdown` completes; failures pause and resume from the
    /// committed checkpoint.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                result = self.follow() => {
                    if let Err(error) = result {
                        metrics::counter!("charter_projection_failures_total", "projection" => self.projector.name()).increment(1);
                        tracing::warn!(projection = self.projector.name(), %error, "projection paused");
                    }
                }
                () = &mut shutdown => return,
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut shutdown => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(&self) -> Result<(), ProjectionError> {
        let name = self.projector.name();
        let mut generation = self.models.register(name).await?;
        let mut position = self.models.checkpoint(name, generation).await?;
        self.visible.send_replace(position);
        let mut subscription = Subscription::new(Arc::clone(&self.store), position, self.batch);
        let mut began = tokio::time::Instant::now();
        // Events the projector ignores only move its checkpoint; those moves
        // are written at most every `SKIPPED_CHECKPOINT` (and when the log
        // goes quiet), not once per batch. In this process, readers see the
        // position at once (`visible`).
        let mut skipped: Option<RecordedEvent> = None;
        let mut skipped_since = tokio::time::Instant::now();
        loop {
            let mut events = match skipped {
                None => subscription.next_batch().await?,
                Some(_) => tokio::select! {
                    events = subscription.next_batch() => events?,
                    () = tokio::time::sleep_until(skipped_since + SKIPPED_CHECKPOINT) => Vec::new(),
                },
            };
            // Under a steady trickle, a batch per commit costs a
            // transaction per commit: let a few milliseconds of events
            // gather first (a full batch goes at once).
            if !events.is_empty() && events.len() < self.batch {
                tokio::time::sleep_until(began + GATHER).await;
                events.extend(subscription.next_ready(self.batch - events.len()).await?);
            }
            let wanted = events.iter().any(|e| self.projector.wants(e));
            match events.last() {
                Some(last) if !wanted => {
                    began = tokio::time::Instant::now();
                    self.visible.send_replace(last.position);
                    if skipped.is_none() {
                        skipped_since = tokio::time::Instant::now();
                    }
                    skipped = events.pop();
                    if skipped_since.elapsed() < SKIPPED_CHECKPOINT {
                        continue;
                    }
                    events.extend(skipped.take());
                }
                Some(_) => skipped = None,
                // The log went quiet with a move pending: write it now.
                None => match skipped.take() {
                    Some(last) => events.push(last),
                    None => continue,
                },
            }
            began = tokio::time::Instant::now();
            match self
                .models
                .apply_batch(&*self.projector, generation, &events, true)
                .await?
            {
                BatchOutcome::Applied(at) => {
                    position = at;
                    self.visible.send_replace(position);
                    if let Some(last) = events.last() {
                        let lag = chrono::Utc::now() - last.recorded_at;
                        metrics::gauge!("charter_projection_lag_seconds", "projection" => name)
                            .set(lag.num_milliseconds().max(0) as f64 / 1000.0);
                    }
                }
                BatchOutcome::Superseded { active } => {
                    // A rebuild activated a new generation: carry on from
                    // its checkpoint.
                    generation = active;
                    position = self.models.checkpoint(name, generation).await?;
                    tracing::info!(projection = name, generation, %position, "switched to a rebuilt generation");
                    self.visible.send_replace(position);
                    subscription = Subscription::new(Arc::clone(&self.store), position, self.batch);
                }
            }
        }
    }
}

/// How long a runner lets events gather before applying a short batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a checkpoint move over ignored events may wait to be written.
const SKIPPED_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(250);

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    pub projection: String,
    pub generation: u32,
    pub position: Position,
    pub events: u64,
}

/// Rebuilds a projection from the start of the log into a new generation
/// while the active one keeps serving, then activates it. A live runner
/// notices the switch and continues from the new generation's checkpoint.
pub async fn rebuild(
    store: &dyn EventStore,
    models: &dyn ReadModels,
    projector: &dyn Projector,
    batch: usize,
) -> Result<RebuildReport, ProjectionError> {
    let name = projector.name();
    models.register(name).await?;
    let generation = models.new_generation(name).await?;
    let mut position = Position::START;
    let mut events_seen = 0u64;
    loop {
        let events = store.read_all(position, batch.max(1)).await?;
        let Some(last) = events.last() else { break };
        let last = last.position;
        models
            .apply_batch(projector, generation, &events, false)
            .await?;
        events_seen += events.len() as u64;
        position = last;
    }
    models.activate(name, generation).await?;
    tracing::info!(projection = name, generation, %position, events = events_seen, "rebuilt");
    Ok(RebuildReport {
        projection: name.to_owned(),
        generation,
        position,
        events: events_seen,
    })
}
