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

    /// Several documents of one collection at once: those found, by key.
    async fn load_many(
        &mut self,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<(String, Value)>, ProjectionError> {
        let mut found = Vec::new();
        for key in keys {
            if let Some(doc) = self.load(collection, key).await? {
                found.push((key.clone(), doc));
            }
        }
        Ok(found)
    }
}

pub(crate) struct StagedDocuments<'l> {
    loader: &'l mut dyn DocLoader,
    /// Ordered, so that flushes touch rows in the same order every time.
    pub(crate) changes: BTreeMap<(String, String), Change>,
    /// The position of the event being applied; stamped on each write.
    pub(crate) position: Position,
    /// Documents read ahead for the batch (`None`: known not to exist).
    prefetched: std::collections::HashMap<(String, String), Option<Value>>,
}

impl<'l> StagedDocuments<'l> {
    pub(crate) fn new(loader: &'l mut dyn DocLoader) -> Self {
        Self {
            loader,
            changes: BTreeMap::new(),
            position: Position::START,
            prefetched: std::collections::HashMap::new(),
        }
    }

    /// Reads ahead every document the projector said the batch will read.
    pub(crate) async fn prefetch(
        &mut self,
        wanted: Vec<(&'static str, String)>,
    ) -> Result<(), ProjectionError> {
        let mut by_collection: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (collection, key) in wanted {
            by_collection.entry(collection).or_default().push(key);
        }
        for (collection, mut keys) in by_collection {
            keys.sort();
            keys.dedup();
            for chunk in keys.chunks(1000) {
                for key in chunk {
                    self.prefetched
                        .insert((collection.to_owned(), key.clone()), None);
                }
                for (key, doc) in self.loader.load_many(collection, chunk).await? {
                    self.prefetched
                        .insert((collection.to_owned(), key), Some(doc));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Documents for StagedDocuments<'_> {
    async fn get(&mut self, collection: &str, key: &str) -> Result<Option<Value>, ProjectionError> {
        match self.changes.get(&(collection.to_owned(), key.to_owned())) {
            Some(Change::Put { doc, .. }) => Ok(Some(doc.clone())),
            Some(Change::Delete) => Ok(None),
            None => match self
                .prefetched
                .get(&(collection.to_owned(), key.to_owned()))
            {
                Some(doc) => Ok(doc.clone()),
                None => self.loader.load(collection, key).await,
            },
        }
    }

    async fn take(
        &mut self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Value>, ProjectionError> {
        let id = (collection.to_owned(), key.to_owned());
        match self.changes.remove(&id) {
            Some(Change::Put { doc, .. }) => Ok(Some(doc)),
            Some(Change::Delete) => {
                self.changes.insert(id, Change::Delete);
                Ok(None)
            }
            None => match self.prefetched.get_mut(&id) {
                Some(doc) => Ok(doc.take()),
                None => self.loader.load(collection, key).await,
            },
        }
    }

    fn at(&mut self, position: Position) {
        self.position = position;
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
