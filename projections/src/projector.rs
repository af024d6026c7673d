//! What a projector is: a named fold of events into documents.

use async_trait::async_trait;
use charter_commands::{Position, RecordedEvent};
use charter_domain::OrgName;
use serde_json::Value;

use crate::ProjectionError;

/// The documents of one projection, as seen inside the transaction that
/// applies a batch. Writes are staged and committed with the checkpoint.
#[async_trait]
pub trait Documents: Send {
    /// The current document, including writes staged earlier in the batch.
    async fn get(&mut self, collection: &str, key: &str) -> Result<Option<Value>, ProjectionError>;
    /// The current document, for a caller that puts or deletes it next (it
    /// need not be copied; it must be written back).
    async fn take(
        &mut self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ProjectionError> {
        self.get(collection, key).await
    }
    /// The position of the event the following writes come from.
    fn at(&mut self, position: Position);
    /// Creates or replaces a document. `org` scopes every query of it.
    fn put(&mut self, collection: &str, key: &str, org: &OrgName, doc: Value);
    fn delete(&mut self, collection: &str, key: &str);
}

/// Folds events into documents. `apply` must be deterministic: a rebuild
/// replays the same events and must produce the same documents.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The projection's name: its checkpoint, its documents, its CLI name.
    fn name(&self) -> &'static str;

    /// Whether `apply` cares about this event; others only move the
    /// checkpoint.
    fn wants(&self, event: &RecordedEvent) -> bool;

    async fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError>;

    /// Applies the events of one batch that the projector wants, in order.
    /// A projector may fold several events of one document at once, as
    /// long as the documents come out as `apply` would make them.
    async fn apply_all(
        &self,
        events: &[&RecordedEvent],
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        for event in events {
            docs.at(event.position);
            self.apply(event, docs).await?;
        }
        Ok(())
    }

    /// The documents `apply` will read for this event, as `(collection,
    /// key)`: the backend fetches those of a whole batch in one query
    /// instead of one per event. Optional; a miss is only slower.
    fn reads(&self, _event: &RecordedEvent) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}
