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
    prefetched: Known,
}

/// Documents as committed, by `(collection, key)` (`None`: known not to
/// exist).
pub(crate) type Known = std::collections::HashMap<(String, String), Option<Value>>;

/// How many documents [`WrittenDocs`] keeps per projection generation.
const KEPT_DOCUMENTS: usize = 4096;

/// The documents each projection generation last wrote in this process,
/// with the checkpoint that write committed. While the checkpoint found
/// under the projection's lock is still that one, nobody else has written
/// since (every batch moves the checkpoint), so the next batch may use
/// them instead of reading them again.
#[derive(Default)]
pub(crate) struct WrittenDocs {
    by_generation: std::sync::Mutex<std::collections::HashMap<(String, i32), (Position, Known)>>,
}

impl WrittenDocs {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, i32), (Position, Known)>>
    {
        self.by_generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The documents to start a batch from, when the checkpoint is still
    /// the one this process left; nothing otherwise. They are taken: a
    /// batch that fails leaves nothing behind.
    pub(crate) fn take(&self, projection: &str, generation: i32, checkpoint: Position) -> Known {
        match self.lock().remove(&(projection.to_owned(), generation)) {
            Some((at, known)) if at == checkpoint => known,
            _ => Known::new(),
        }
    }

    /// What a batch that committed through `checkpoint` left.
    pub(crate) fn keep(
        &self,
        projection: &str,
        generation: i32,
        checkpoint: Position,
        known: Known,
    ) {
        if known.len() > KEPT_DOCUMENTS {
            return;
        }
        self.lock()
            .insert((projection.to_owned(), generation), (checkpoint, known));
    }
}

impl<'l> StagedDocuments<'l> {
    pub(crate) fn new(loader: &'l mut dyn DocLoader) -> Self {
        Self::knowing(loader, Known::new())
    }

    /// Staged writes over documents some of which are already known (as
    /// committed), so that they need not be read.
    pub(crate) fn knowing(loader: &'l mut dyn DocLoader, known: Known) -> Self {
        Self {
            loader,
            changes: BTreeMap::new(),
            position: Position::START,
            prefetched: known,
        }
    }

    /// The writes to flush, and the documents known before them (those the
    /// batch wrote are replaced by [`after_commit`]).
    pub(crate) fn into_parts(self) -> (BTreeMap<(String, String), Change>, Known) {
        (self.changes, self.prefetched)
    }
}

/// The documents as they are once a batch committed: those known before,
/// with what it wrote put over them (`None` for a delete).
pub(crate) fn after_commit(changes: BTreeMap<(String, String), Change>, mut known: Known) -> Known {
    for (id, change) in changes {
        let doc = match change {
            Change::Put { doc, .. } => Some(doc),
            Change::Delete => None,
        };
        known.insert(id, doc);
    }
    known
}

impl StagedDocuments<'_> {
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
            keys.retain(|key| {
                !self
                    .prefetched
                    .contains_key(&(collection.to_owned(), key.clone()))
            });
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
