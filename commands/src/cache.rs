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

    #[test]
    fn capacity_zero_keeps_nothing() {
        let cache = StateCache::new(0);
        cache.put("thing", &stream(1), Arc::new(1u8), StreamVersion(1));
        assert!(cache.is_empty());
        assert!(cache.get::<u8>("thing", &stream(1)).is_none());
    }
}
