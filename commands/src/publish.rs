//! Where the outbox relay sends committed events: the [`EventPublisher`]
//! trait, served by JetStream in production and by the in-process bus in
//! the embedded mode.

use async_trait::async_trait;

use crate::{Position, RecordedEvent};

/// A publish that stopped part-way: the first `acked` events are safely
/// published, the rest may or may not be.
#[derive(Debug, thiserror::Error)]
#[error("publishing stopped after {acked} acknowledged events: {reason}")]
pub struct PublishFailure {
    pub acked: usize,
    pub reason: String,
}

#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    /// `jetstream` or `in-process`.
    fn kind(&self) -> &'static str;

    /// Makes sure the destination exists (creating the stream if absent).
    async fn prepare(&self) -> Result<(), PublishFailure>;

    /// The position of the last event the destination holds, when it can
    /// tell; the relay resumes after the larger of this and its checkpoint.
    async fn last_published(&self) -> Result<Option<Position>, PublishFailure>;

    /// Publishes `events` in order. Ok means every one was acknowledged.
    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), PublishFailure>;
}

/// The subject an event is published on:
/// `<prefix>.<org>.<aggregate_type>.<event_type>`. Every part is a
/// validated name without dots or wildcards.
pub fn subject_for(prefix: &str, event: &RecordedEvent) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        event.org, event.aggregate_type, event.event_type
    )
}
