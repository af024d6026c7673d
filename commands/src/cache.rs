//! The states of recently used aggregates, kept by the command kernel so
//! that a command on a stream it has just loaded or written needs no read.
//!
//! A cached state is only ever a starting point: an append made from it
//! carries its version as the expected version, so a stale state costs a
//! conflict and a fresh load, never a lost update. The kernel also checks
//! again against the store before it trusts a cached state to refuse a
//! command or to find it already satisfied. Events that reach the log from
//! elsewhere (other processes) drop the entries they make stale
//! ([`StateCache::saw`]).
//!
//! [`StreamLocks`] lets the writers of one process take turns on a stream,
//! so that they never race each other to the same version (writers in
//! other processes still can; the expected version settles those).
//!
//! The cache holds two generations of at most `capacity / 2` entries each:
//! new entries go into the young one; when it is full, the old one is
//! dropped and the young one takes its place, so what was used in the last
//! two rounds stays.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::{StreamId, StreamVersion};

#[derive(Clone)]
struct Entry {
    kind: &'static str,
    state: Arc<dyn Any + Send + Sync>,
    version: StreamVersion,
}

#[derive(Default)]
struct Generations {
    young: HashMap<StreamId, Entry>,
    old: HashMap<StreamId, Entry>,
}

/// A bounded map from stream to its latest known state and version.
pub struct StateCache {
    generations: Mutex<Generations>,
    half: usize,
}

impl StateCache {
    /// Keeps about `capacity` states (0 keeps none).
    pub fn new(capacity: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::default()),
            half: capacity / 2,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached state of `stream`, if it is of type `A` under `kind`.
    pub fn get<A: Send + Sync + 'static>(
        &self,
        kind: &'static str,
        stream: &StreamId,
    ) -> Option<(Arc<A>, StreamVersion)> {
        if self.half == 0 {
            return None;
        }
        let mut generations = self.lock();
        let entry = match generations.young.get(stream) {
            Some(entry) => entry.clone(),
            None => {
                let entry = generations.old.remove(stream)?;
                Self::insert_young(&mut generations, self.half, stream.clone(), entry.clone());
                entry
            }
        };
        if entry.kind != kind {
            return None;
        }
        let state = Arc::clone(&entry.state).downcast::<A>().ok()?;
        Some((state, entry.version))
    }

    /// Remembers `state` as `stream` at `version`, unless a later version
    /// is already known.
    pub fn put<A: Send + Sync + 'static>(
        &self,
        kind: &'static str,
        stream: &StreamId,
        state: Arc<A>,
        version: StreamVersion,
    ) {
        if self.half == 0 {
            return;
        }
        let mut generations = self.lock();
        let known = generations
            .young
            .get(stream)
            .or_else(|| generations.old.get(stream))
            .map(|e| e.version);
        if known.is_some_and(|known| known > version) {
            return;
        }
        generations.old.remove(stream);
        Self::insert_young(
            &mut generations,
            self.half,
            stream.clone(),
            Entry {
                kind,
                state,
                version,
            },
        );
    }

    fn insert_young(generations: &mut Generations, half: usize, stream: StreamId, entry: Entry) {
        if generations.young.len() >= half && !generations.young.contains_key(&stream) {
            generations.old = std::mem::take(&mut generations.young);
        }
        generations.young.insert(stream, entry);
    }

    /// Forgets what is known of `stream`.
    pub fn forget(&self, stream: &StreamId) {
        let mut generations = self.lock();
        generations.young.remove(stream);
        generations.old.remove(stream);
    }

    /// The log has `stream` at `version` or later: a cached state older
    /// than that is stale and is dropped.
    pub fn saw(&self, stream: &StreamId, version: StreamVersion) {
        if self.half == 0 {
            return;
        }
        let mut guard = self.lock();
        let generations = &mut *guard;
        for map in [&mut generations.young, &mut generations.old] {
            if map.get(stream).is_some_and(|e| e.version < version) {
                map.remove(stream);
            }
        }
    }

    /// How many states are held.
    pub fn len(&self) -> usize {
        let generations = self.lock();
        generations.young.len() + generations.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One in-process lock per stream that someone is writing, made on demand
/// and dropped when its last holder or waiter lets go.
#[derive(Default)]
pub struct StreamLocks {
    locks: Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn on one stream; the next writer's turn starts when it is dropped.
pub struct StreamTurn<'a> {
    locks: &'a StreamLocks,
    stream: StreamId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl StreamLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this process's earlier writers of `stream` to finish
    /// (first come, first served).
    pub async fn turn(&self, stream: &StreamId) -> StreamTurn<'_> {
        let lock = Arc::clone(self.map().entry(stream.clone()).or_default());
        let guard = lock.lock_owned().await;
        StreamTurn {
            locks: self,
            stream: stream.clone(),
            guard: Some(guard),
        }
    }

    /// How many streams have a writer now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for StreamTurn<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        drop(self.guard.take());
        // Nobody else holds or waits for the lock: forget it.
        if map
            .get(&self.stream)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            map.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> StreamId {
        StreamId::parse(format!("thing-{n}")).unwrap()
    }

    #[test]
    fn keeps_the_latest_version_and_its_type() {
        let cache = StateCache::new(10);
        cache.put("thing", &stream(1), Arc::new(5u32), StreamVersion(2));
        cache.put("thing", &stream(1), Arc::new(4u32), StreamVersion(1));
        let (state, version) = cache.get::<u32>("thing", &stream(1)).unwrap();
        assert_eq!((*state, version), (5, StreamVersion(2)));
        assert!(cache.get::<u64>("thing", &stream(1)).is_none());
        assert!(cache.get::<u32>("other", &stream(1)).is_none());
    }

    #[test]
    fn newer_log_versions_drop_stale_states() {
        let cache = StateCache::new(10);
        cache.put("thing", &stream(1), Arc::new(1u8), StreamVersion(3));
        cache.saw(&stream(1), StreamVersion(3));
        assert!(cache.get::<u8>("thing", &stream(1)).is_some());
        cache.saw(&stream(1), StreamVersion(4));
        assert!(cache.get::<u8>("thing", &stream(1)).is_none());
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let cache = StateCache::new(100);
        cache.put("thing", &stream(0), Arc::new(0usize), StreamVersion(1));
        for n in 1..1000 {
            cache.put("thing", &stream(n), Arc::new(n), StreamVersion(1));
            // Stream 0 is used all the time: it survives every round.
            assert!(cache.get::<usize>("thing", &stream(0)).is_some());
            assert!(cache.len() <= 100);
        }
        assert!(cache.get::<usize>("thing", &stream(1)).is_none());
        assert!(cache.get::<usize>("thing", &stream(999)).is_some());
    }

    #[tokio::test]
    async fn writers_of_one_stream_take_turns() {
        let locks = Arc::new(StreamLocks::default());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (locks, inside) = (Arc::clone(&locks), Arc::clone(&inside));
                tokio::spawn(async move {
                    let _turn = locks.turn(&stream(1)).await;
                    assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        let other = locks.turn(&stream(2)).await;
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(locks.len(), 1, "only the stream still held is known");
        drop(other);
        assert!(locks.is_empty());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let cache = StateCache::new(0);
        cache.put("thing", &stream(1), Arc::new(1u8), StreamVersion(1));
        assert!(cache.is_empty());
        assert!(cache.get::<u8>("thing", &stream(1)).is_none());
    }
}
