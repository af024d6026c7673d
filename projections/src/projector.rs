//! What a projector is: a named fold of events into documents.

use async_trait::async_trait;
use charter_commands::RecordedEvent;
use charter_domain::OrgName;
use serde_json::Value;

use crate::ProjectionError;

/// The documents of one projection, as seen inside the transaction that
/// applies a batch. Writes are staged and committed with the checkpoint.
#[async_trait]
pub trait Documents: Send {
    /// The current document, including writes staged earlier in the batch.
    async fn get(&mut self, collection: &str, key: &str) -> Result<Option<Value>, ProjectionError>;
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

    /// The documents `apply` will read for this event, as `(collection,
    /// key)`: the backend fetches those of a whole batch in one query
    /// instead of one per event. Optional; a miss is only slower.
    fn reads(&self, _event: &RecordedEvent) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}
