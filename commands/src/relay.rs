//! The outbox relay: follows the event store's global log and publishes
//! every committed event, in order, through an [`EventPublisher`].
//!
//! The store is the outbox: an event is committed once, in the store, and
//! the relay's checkpoint (kept in the store, advanced only as acks return)
//! says how far publishing got. When the publisher fails, the relay backs
//! off, then resumes after the larger of its checkpoint and the last
//! position the destination reports holding, so a restart or an outage
//! neither loses an event nor publishes one twice.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::publish::EventPublisher;
use crate::store::Subscription;
use crate::{EventStore, Position, StoreError};

/// The checkpoint name of the relay for one destination.
pub fn checkpoint_name(destination: &str) -> String {
    format!("relay:{destination}")
}

/// Longest a busy relay goes without saving its checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    publisher: Arc<dyn EventPublisher>,
    checkpoint: String,
    batch: usize,
    min_backoff: Duration,
    max_backoff: Duration,
    published: watch::Sender<Position>,
}

impl OutboxRelay {
    /// `destination` names the checkpoint: one relay per destination.
    pub fn new(
        store: Arc<dyn EventStore>,
        publisher: Arc<dyn EventPublisher>,
        destination: &str,
    ) -> Self {
        Self {
            store,
            publisher,
            checkpoint: checkpoint_name(destination),
            batch: 1024,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            published: watch::channel(Position::START).0,
        }
    }

    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// The position up to which every event is published; waiters use it to
    /// wait for a given event instead of sleeping.
    pub fn published(&self) -> watch::Receiver<Position> {
        self.published.subscribe()
    }

    /// Runs until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tokio::select! {
            () = self.run_forever() => {}
            () = &mut shutdown => tracing::info!("relay stopped"),
        }
        // Checkpoints are saved at most every few hundred milliseconds
        // while running; keep the last word.
        let published = *self.published.borrow();
        let saved = self
            .store
            .load_checkpoint(&self.checkpoint)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        if published > saved
            && let Err(error) = self
                .store
                .save_checkpoint(&self.checkpoint, published)
                .await
        {
            tracing::warn!(%error, "could not save the relay checkpoint on the way out");
        }
    }

    async fn run_forever(&self) {
        let mut backoff = self.min_backoff;
        loop {
            match self.run_once().await {
                Ok(()) => backoff = self.min_backoff,
                Err(error) => {
                    metrics::counter!("charter_relay_failures_total").increment(1);
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "relay paused");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// Resumes from the right position and publishes until something fails.
    async fn run_once(&self) -> Result<(), RelayError> {
        self.publisher
            .prepare()
            .await
            .map_err(RelayError::publish)?;
        let checkpoint = self
            .store
            .load_checkpoint(&self.checkpoint)
            .await?
            .unwrap_or_default();
        let held = self
            .publisher
            .last_published()
            .await
            .map_err(RelayError::publish)?
            .unwrap_or_default();
        let mut position = checkpoint.max(held);
        if position > checkpoint {
            // The destination holds events whose acks were lost.
            self.store
                .save_checkpoint(&self.checkpoint, position)
                .await?;
        }
        self.published.send_replace(position);
        tracing::info!(%position, publisher = self.publisher.kind(), "relay resuming");
        let mut subscription = Subscription::new(Arc::clone(&self.store), position, self.batch);
        let mut lag_measured = Instant::now() - Duration::from_secs(10);
        // The checkpoint only shortens a resume (the destination's last
        // message bounds it too), so it is saved at most every
        // CHECKPOINT_EVERY while busy, and as soon as the relay goes idle.
        let mut saved_at = Instant::now();
        let mut unsaved = false;
        loop {
            let events = if unsaved {
                let deadline = tokio::time::Instant::from_std(saved_at + CHECKPOINT_EVERY);
                tokio::select! {
                    batch = subscription.next_batch() => batch?,
                    () = tokio::time::sleep_until(deadline) => {
                        self.store.save_checkpoint(&self.checkpoint, position).await?;
                        saved_at = Instant::now();
                        unsaved = false;
                        continue;
                    }
                }
            } else {
                subscription.next_batch().await?
            };
            let outcome = self.publisher.publish(&events).await;
            let acked = match &outcome {
                Ok(()) => events.len(),
                Err(failure) => failure.acked.min(events.len()),
            };
            if acked > 0 {
                position = events[acked - 1].position;
                if saved_at.elapsed() >= CHECKPOINT_EVERY || outcome.is_err() {
                    self.store
                        .save_checkpoint(&self.checkpoint, position)
                        .await?;
                    saved_at = Instant::now();
                    unsaved = false;
                } else {
                    unsaved = true;
                }
                self.published.send_replace(position);
                metrics::counter!("charter_relay_published_events_total").increment(acked as u64);
                let age = chrono::Utc::now() - events[acked - 1].recorded_at;
                metrics::gauge!("charter_relay_lag_seconds")
                    .set(age.num_milliseconds().max(0) as f64 / 1000.0);
            }
            if let Err(failure) = outcome {
                return Err(RelayError::publish(failure));
            }
            if events.len() < self.batch {
                // A short batch means the relay reached the log's head.
                metrics::gauge!("charter_relay_lag_events").set(0.0);
            } else if lag_measured.elapsed() >= Duration::from_secs(1) {
                lag_measured = Instant::now();
                let lag = self.store.count_after(position, 1_000_000).await?;
                metrics::gauge!("charter_relay_lag_events").set(lag as f64);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("publisher: {0}")]
    Publish(String),
}

impl RelayError {
    fn publish(failure: crate::publish::PublishFailure) -> Self {
        Self::Publish(failure.to_string())
    }
}
