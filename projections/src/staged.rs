//! Writes a projector makes during one batch, staged in memory and flushed
//! by the backend in the batch's transaction, together with its checkpoint.

use std::collections::BTreeMap;

use async_trait::async_trait;
use charter_commands::Position;
use charter_domain::OrgName;
use serde_json::Value;

use crate::{Documents, ProjectionError};

pub(crate) enum Change {
    Put {
        org: OrgName,
        doc: Value,
        position: Position,
    },
    Delete,
}

/// Reads a document as committed (inside the batch's transaction).
#[async_trait]
pub(crate) trait DocLoader: Send {
    async fn load(&mut self, collection: &str, key: &str)
    -> Result<Option<Value>, ProjectionError>;
}

pub(crate) struct StagedDocuments<'l> {
    loader: &'l mut dyn DocLoader,
    /// Ordered, so that flushes touch rows in the same order every time.
    pub(crate) changes: BTreeMap<(String, String), Change>,
    /// The position of the event being applied; stamped on each write.
    pub(crate) position: Position,
}

impl<'l> StagedDocuments<'l> {
    pub(crate) fn new(loader: &'l mut dyn DocLoader) -> Self {
        Self {
            loader,
            changes: BTreeMap::new(),
            position: Position::START,
        }
    }
}

#[async_trait]
impl Documents for StagedDocuments<'_> {
    async fn get(&mut self, collection: &str, key: &str) -> Result<Option<Value>, ProjectionError> {
        match self.changes.get(&(collection.to_owned(), key.to_owned())) {
            Some(Change::Put { doc, .. }) => Ok(Some(doc.clone())),
            Some(Change::Delete) => Ok(None),
            None => self.loader.load(collection, key).await,
        }
    }

    fn put(&mut self, collection: &str, key: &str, org: &OrgName, doc: Value) {
        self.changes.insert(
            (collection.to_owned(), key.to_owned()),
            Change::Put {
                org: org.clone(),
                doc,
                position: self.position,
            },
        );
    }

    fn delete(&mut self, collection: &str, key: &str) {
        self.changes
            .insert((collection.to_owned(), key.to_owned()), Change::Delete);
    }
}
