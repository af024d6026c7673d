//! One reader of the log per process: [`TailedStore`] wraps a store and
//! keeps the newest events in memory, read once from the database by a
//! single background reader, so that the relay, every projection runner
//! and the access index (each a [`Subscription`]) follow the log from
//! memory instead of each querying the database on every commit.
//!
//! The cache always holds a contiguous run of the log: every event after
//! `start`, in order, up to what the reader has seen. A subscription's read
//! (`read_tail`) after a position inside that run is answered from it; one
//! from further back (a subscriber catching up) goes to the database as
//! before, and so does every plain `read_all`.
//! `commits()` ticks when the reader has added events, so subscriptions
//! wake exactly when there is something for them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use charter_domain::CommandId;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::store::{StoreLimits, Subscription, TailRead};
use crate::{
    AppendOutcome, EventStore, Position, RecordedEvent, Snapshot, StoreError, StreamAppend,
    StreamId, StreamVersion,
};

struct Cache {
    /// Every event after this position, up to the last cached one, is in
    /// `events`.
    start: Position,
    events: VecDeque<RecordedEvent>,
    capacity: usize,
}

impl Cache {
    fn end(&self) -> Position {
        self.events.back().map_or(self.start, |e| e.position)
    }

    fn push(&mut self, batch: Vec<RecordedEvent>) {
        for event in batch {
            if event.position > self.end() {
                self.events.push_back(event);
            }
        }
        while self.events.len() > self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.start = old.position;
            }
        }
    }

    /// The cached events after `after`, when the cache covers it.
    fn after(&self, after: Position, limit: usize) -> Option<Vec<RecordedEvent>> {
        if after < self.start {
            return None;
        }
        let from = self.events.partition_point(|e| e.position <= after);
        Some(self.events.iter().skip(from).take(limit).cloned().collect())
    }
}

/// A store whose log reads are served from one shared, in-memory tail.
pub struct TailedStore {
    inner: Arc<dyn EventStore>,
    cache: Arc<Mutex<Cache>>,
    ticks: watch::Receiver<u64>,
    reader: AbortHandle,
}

impl Drop for TailedStore {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl TailedStore {
    /// Starts the reader at the log's current head, keeping at most
    /// `capacity` events. Must be called inside a tokio runtime.
    pub async fn start(inner: Arc<dyn EventStore>, capacity: usize) -> Result<Self, StoreError> {
        let head = inner.head().await?;
        let cache = Arc::new(Mutex::new(Cache {
            start: head,
            events: VecDeque::new(),
            capacity: capacity.max(1),
        }));
        let (tick, ticks) = watch::channel(0u64);
        let reader = tokio::spawn(read_ahead(
            Arc::clone(&inner),
            Arc::clone(&cache),
            head,
            tick,
        ))
        .abort_handle();
        Ok(Self {
            inner,
            cache,
            ticks,
            reader,
        })
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn EventStore> {
        &self.inner
    }
}

async fn read_ahead(
    store: Arc<dyn EventStore>,
    cache: Arc<Mutex<Cache>>,
    from: Position,
    tick: watch::Sender<u64>,
) {
    let mut position = from;
    loop {
        let mut subscription = Subscription::new(Arc::clone(&store), position, 1000);
        loop {
            match subscription.next_batch().await {
                Ok(batch) => {
                    if let Some(last) = batch.last() {
                        position = last.position;
                    }
                    cache
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(batch);
                    tick.send_modify(|n| *n = n.wrapping_add(1));
                }
                Err(error) => {
                    tracing::warn!(%error, "the log reader paused");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[async_trait]
impl EventStore for TailedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn limits(&self) -> StoreLimits {
        self.inner.limits()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.inner.check_ready().await
    }

    async fn append_all(
        &self,
        parts: &[StreamAppend<'_>],
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.inner.append_all(parts).await
    }

    async fn command_outcome(
        &self,
        command_id: CommandId,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        self.inner.command_outcome(command_id).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, after, limit).await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    async fn read_tail(&self, after: Position, limit: usize) -> Result<TailRead, StoreError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .after(after, limit);
        match cached {
            // The cache has no gaps: what it lacks comes with a tick.
            Some(events) => Ok(TailRead {
                events,
                held_back: false,
            }),
            None => self.inner.read_tail(after, limit).await,
        }
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.inner.head().await
    }

    async fn count_after(&self, after: Position, cap: u64) -> Result<u64, StoreError> {
        self.inner.count_after(after, cap).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }

    async fn load(
        &self,
        stream: &StreamId,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>), StoreError> {
        self.inner.load(stream, limit).await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        self.inner.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, position).await
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.ticks.clone()
    }

    fn poll_interval(&self) -> Duration {
        self.inner.poll_interval()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(start: u64, positions: &[u64], capacity: usize) -> Cache {
        let mut cache = Cache {
            start: Position(start),
            events: VecDeque::new(),
            capacity,
        };
        cache.push(positions.iter().map(|p| event(*p)).collect());
        cache
    }

    fn event(position: u64) -> RecordedEvent {
        let raw = serde_json::value::to_raw_value(&serde_json::json!({})).unwrap();
        RecordedEvent::new(crate::EventRecord {
            position: Position(position),
            event_id: charter_domain::EventId::new(),
            stream_id: StreamId::parse("organization-acme").unwrap(),
            aggregate_type: "organization".into(),
            version: StreamVersion(1),
            event_type: "Resumed".into(),
            schema_version: 1,
            recorded_at: chrono::Utc::now(),
            org: charter_domain::OrgName::parse("acme").unwrap(),
            actor: charter_domain::Actor::system(),
            command_id: CommandId::new(),
            correlation_id: charter_domain::CorrelationId::new(),
            causation_id: charter_domain::CausationId::new(),
            payload: raw,
        })
    }

    fn positions(events: &[RecordedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.position.0).collect()
    }

    #[test]
    fn serves_only_what_it_covers() {
        let cache = cache(10, &[12, 15, 20], 100);
        assert_eq!(
            positions(&cache.after(Position(10), 10).unwrap()),
            [12, 15, 20]
        );
        assert_eq!(positions(&cache.after(Position(12), 10).unwrap()), [15, 20]);
        assert_eq!(positions(&cache.after(Position(13), 1).unwrap()), [15]);
        assert!(cache.after(Position(20), 10).unwrap().is_empty());
        assert!(
            cache.after(Position(9), 10).is_none(),
            "before the window: the database"
        );
    }

    #[test]
    fn trimming_moves_the_window() {
        let mut cache = cache(0, &[1, 2, 3], 3);
        cache.push(vec![event(4), event(5), event(3)]);
        assert_eq!(
            positions(&cache.events.iter().cloned().collect::<Vec<_>>()),
            [3, 4, 5]
        );
        assert!(cache.after(Position(1), 10).is_none());
        assert_eq!(positions(&cache.after(Position(2), 10).unwrap()), [3, 4, 5]);
    }
}
