//! The command kernel: load an aggregate (snapshot plus the tail of its
//! stream), run its pure `decide`, append the events with the loaded version
//! as the expected version, and on a conflict reload and decide again, a
//! bounded number of times.
//!
//! Writers of one stream in one process take turns (an in-process lock per
//! stream being written), so they never race each other; the expected
//! version settles races with other processes.
//!
//! Loads are often skipped. The kernel keeps the states it loaded or wrote
//! in a [`StateCache`], and a stream it knows nothing of is first taken to
//! be new: a command that creates something is decided against the empty
//! state and appended with "no stream" expected. Neither shortcut can lose
//! an update, since the append checks the version the decision was made
//! from; and a decision that refuses the command, or finds nothing to do, is
//! only trusted once it was made from a state loaded from the store.
//!
//! It owns no rule: what a command means is the aggregate's business.

use std::sync::Arc;

use charter_domain::{Aggregate, ErrorClass, ErrorCode};
use chrono::Utc;

use crate::cache::{StateCache, StreamLocks};
use crate::store::Subscription;
use crate::{
    CommandMeta, EventStore, ExpectedVersion, NewEvent, Position, Snapshot, StoreError, StreamId,
    StreamVersion,
};

/// How many aggregate states a kernel keeps by default.
pub const DEFAULT_CACHED_STATES: usize = 10_000;

/// How many events one stream read asks for.
const LOAD_BATCH: usize = 1000;

/// A command failed: the domain said no, or the store could not do it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError<R> {
    #[error(transparent)]
    Rejected(R),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<R: ErrorCode> ErrorCode for CommandError<R> {
    fn code(&self) -> &'static str {
        match self {
            Self::Rejected(r) => r.code(),
            Self::Store(e) => e.code(),
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            Self::Rejected(r) => r.class(),
            Self::Store(e) => e.class(),
        }
    }
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome<E> {
    pub stream_id: StreamId,
    /// The events the command appended (or appended the first time, for a
    /// repeated command id). Empty when the command changed nothing.
    pub events: Vec<E>,
    /// The stream's version after the command.
    pub stream_version: StreamVersion,
    /// The global position of the last appended event; readers that reach
    /// it see the command's effect.
    pub position: Option<Position>,
    /// When its events were recorded, when it appended any.
    pub recorded_at: Option<chrono::DateTime<Utc>>,
    /// True when this command id had already been handled.
    pub duplicate: bool,
    /// The events' payloads as stored, in order (as `events`), shared.
    pub payloads: Vec<crate::SharedPayload>,
}

/// The payloads of events as appended, to share.
pub(crate) fn shared_payloads(events: Vec<NewEvent>) -> Vec<crate::SharedPayload> {
    events
        .into_iter()
        .map(|e| crate::SharedPayload(Arc::from(e.payload)))
        .collect()
}

/// How one command is to be handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handling {
    /// Refuse with a conflict unless the stream is at this version.
    pub expected: Option<StreamVersion>,
    /// The command id was made for this command just now (not given by a
    /// client), so looking for an earlier outcome is pointless.
    pub fresh_command_id: bool,
}

/// Writers that collided back off by a random amount (growing with each
/// collision) so that they stop colliding.
pub(crate) async fn conflict_pause(attempt: u32) {
    let ceiling = 1u64 << attempt.min(5);
    let pause = rand::random_range(0..=ceiling * 1000);
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

/// An aggregate as loaded from the store.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub version: StreamVersion,
}

/// Runs commands against aggregates kept in an [`EventStore`].
#[derive(Clone)]
pub struct CommandHandler {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) cache: Arc<StateCache>,
    pub(crate) locks: Arc<StreamLocks>,
    snapshot_every: u64,
    pub(crate) max_attempts: u32,
}

/// Where one attempt at a command starts from.
pub(crate) enum Start<A> {
    /// A state this kernel loaded or wrote earlier.
    Cached(Arc<A>, StreamVersion),
    /// The empty state: the stream is taken to be new.
    New,
    /// A cached state at least at the version the store just reported (the
    /// state a writer of this process that won a race left): every cached
    /// state is the stream's true state at its version, and this one is as
    /// recent as a load would be.
    Known(Arc<A>, StreamVersion),
    /// A state loaded from the store just now.
    Store,
}

impl<A: Aggregate> Start<A> {
    /// After losing a race to `actual`: the winner's state when this kernel
    /// holds it (a writer of this process won), the store's otherwise.
    pub(crate) fn after_conflict(
        cache: &StateCache,
        stream: &StreamId,
        actual: StreamVersion,
    ) -> Self {
        match cache.get::<A>(A::KIND, stream) {
            Some((state, version)) if version >= actual => Self::Known(state, version),
            _ => {
                cache.forget(stream);
                Self::Store
            }
        }
    }
}

impl CommandHandler {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            cache: Arc::new(StateCache::new(DEFAULT_CACHED_STATES)),
            locks: Arc::default(),
            snapshot_every: 100,
            max_attempts: 30,
        }
    }

    /// Keeps about `capacity` aggregate states in memory (0 turns the
    /// cache off: every command loads its aggregate).
    pub fn with_cached_states(mut self, capacity: usize) -> Self {
        self.cache = Arc::new(StateCache::new(capacity));
        self
    }

    /// The states this kernel keeps.
    pub fn cache(&self) -> &Arc<StateCache> {
        &self.cache
    }

    /// Follows the log from `after` and drops every cached state that an
    /// append made elsewhere (another process) has made stale. Runs until
    /// the subscription fails or the task is aborted.
    pub async fn follow_log(self, after: Position) {
        let mut subscription = Subscription::new(Arc::clone(&self.store), after, 1000);
        loop {
            match subscription.next_batch().await {
                Ok(events) => {
                    for event in &events {
                        self.cache.saw(&event.stream_id, event.version);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the state cache lost the log; starting over");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let after = subscription.position();
                    subscription = Subscription::new(Arc::clone(&self.store), after, 1000);
                }
            }
        }
    }

    /// Saves a snapshot each time a stream passes a multiple of `every`
    /// events (0 turns snapshots off).
    pub fn with_snapshot_every(mut self, every: u64) -> Self {
        self.snapshot_every = every;
        self
    }

    /// How many times a command is decided before a conflict is returned.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads the current state from the store: the latest usable snapshot
    /// plus the events after it. A snapshot that no longer deserializes is
    /// ignored.
    pub async fn load<A: Aggregate>(&self, id: &A::Id) -> Result<Loaded<A>, StoreError> {
        let stream = StreamId::for_aggregate::<A>(id)?;
        let loaded = self.load_stream::<A>(&stream).await?;
        self.cache.put(
            A::KIND,
            &stream,
            Arc::new(loaded.state.clone()),
            loaded.version,
        );
        Ok(loaded)
    }

    /// The state as this kernel last knew it, or as loaded from the store
    /// when it knows nothing of it. In one process it is the current state;
    /// across processes it trails appends made elsewhere by as long as the
    /// log takes to bring them (see [`Self::follow_log`]). For reads that
    /// act on what they find, the act itself must be a command that checks
    /// again.
    pub async fn load_cached<A: Aggregate>(
        &self,
        id: &A::Id,
    ) -> Result<(Arc<A>, StreamVersion), StoreError> {
        let stream = StreamId::for_aggregate::<A>(id)?;
        if let Some(cached) = self.cache.get::<A>(A::KIND, &stream) {
            return Ok(cached);
        }
        let loaded = self.load_stream::<A>(&stream).await?;
        let state = Arc::new(loaded.state);
        self.cache
            .put(A::KIND, &stream, Arc::clone(&state), loaded.version);
        Ok((state, loaded.version))
    }

    /// The cached state when `acceptable` takes it, the store's otherwise:
    /// for reads that may act at once on a state that is good enough, and
    /// ask the store before they conclude anything from one that is not
    /// (a cached state can only be behind).
    pub async fn load_unless<A: Aggregate>(
        &self,
        id: &A::Id,
        acceptable: impl Fn(&A) -> bool,
    ) -> Result<Arc<A>, StoreError> {
        let (cached, _) = self.load_cached::<A>(id).await?;
        if acceptable(&cached) {
            return Ok(cached);
        }
        Ok(Arc::new(self.load::<A>(id).await?.state))
    }

    pub(crate) async fn load_stream<A: Aggregate>(
        &self,
        stream: &StreamId,
    ) -> Result<Loaded<A>, StoreError> {
        let (snapshot, first) = self.store.load(stream, LOAD_BATCH).await?;
        let (mut state, mut version, mut batch) = match snapshot {
            Some(snapshot) if snapshot.aggregate_type == A::KIND => {
                match serde_json::from_value::<A>(snapshot.state) {
                    Ok(state) => (state, snapshot.version, Some(first)),
                    Err(error) => {
                        tracing::warn!(%stream, %error, "ignoring a snapshot that no longer fits");
                        (A::default(), StreamVersion(0), None)
                    }
                }
            }
            // No snapshot (or one of another type): the events read are
            // the stream's first ones.
            Some(_) => (A::default(), StreamVersion(0), None),
            None => (A::default(), StreamVersion(0), Some(first)),
        };
        loop {
            let events = match batch.take() {
                Some(events) => events,
                None => match self.store.read_stream(stream, version, LOAD_BATCH).await {
                    Ok(events) => events,
                    Err(StoreError::StreamNotFound(_)) if version == StreamVersion(0) => Vec::new(),
                    Err(error) => return Err(error),
                },
            };
            for recorded in &events {
                let event: A::Event = recorded.to_domain()?;
                state.evolve(&event);
                version = recorded.version;
            }
            if events.len() < LOAD_BATCH {
                return Ok(Loaded { state, version });
            }
        }
    }

    /// Handles one command against the aggregate `id`.
    pub async fn handle<A: Aggregate>(
        &self,
        id: &A::Id,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Rejection>> {
        self.handle_at::<A>(id, command, meta, Handling::default())
            .await
    }

    /// Handles a command whose id was made just now (never sent before):
    /// there is no earlier outcome to look up.
    pub async fn handle_new<A: Aggregate>(
        &self,
        id: &A::Id,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Rejection>> {
        let handling = Handling {
            expected: None,
            fresh_command_id: true,
        };
        self.handle_at::<A>(id, command, meta, handling).await
    }

    /// Handles one command, but only against the stream version the caller
    /// last saw: when `expected` is given and the stream has moved on, the
    /// command is refused with a conflict (no retry, nothing written), so
    /// that of two editors working from the same version one wins and the
    /// other learns of it. Version 0 means "the object must not exist yet".
    #[tracing::instrument(
        name = "command",
        skip_all,
        fields(
            org = %meta.org,
            aggregate = A::KIND,
            id = %id,
            command_id = %meta.command_id,
            correlation_id = %meta.correlation_id,
            causation_id = %meta.causation(),
        )
    )]
    pub async fn handle_at<A: Aggregate>(
        &self,
        id: &A::Id,
        command: &A::Command,
        meta: &CommandMeta,
        handling: Handling,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Rejection>> {
        let expected = handling.expected;
        let stream = StreamId::for_aggregate::<A>(id)?;
        let mut meta = meta.clone();
        meta.aggregate_type = A::KIND.to_owned();
        // A repeated id answers with its first outcome, even if deciding
        // again would now say otherwise. An id just made cannot repeat
        // (and the append refuses a repeat anyway).
        if !handling.fresh_command_id
            && let Some(first) = self.store.command_outcome(meta.command_id).await?
        {
            return self.replay_outcome::<A>(&stream, &meta, first).await;
        }
        // This process's writers of the stream take turns; only writers
        // elsewhere can race this one.
        let _turn = self.locks.turn(&stream).await;
        let mut start = match self.cache.get::<A>(A::KIND, &stream) {
            Some((state, version)) => Start::Cached(state, version),
            None if expected.is_none_or(|v| v == StreamVersion(0)) => Start::New,
            None => Start::Store,
        };
        let mut attempt = 0;
        loop {
            let (state, version, trusted) = match std::mem::replace(&mut start, Start::Store) {
                Start::Cached(state, version) => (state, version, false),
                Start::New => (Arc::new(A::default()), StreamVersion(0), false),
                Start::Known(state, version) => (state, version, true),
                Start::Store => {
                    let Loaded { state, version } = self.load_stream::<A>(&stream).await?;
                    (Arc::new(state), version, true)
                }
            };
            if let Some(expected) = expected
                && expected != version
            {
                if !trusted {
                    continue;
                }
                return Err(StoreError::WrongExpectedVersion {
                    stream,
                    expected: ExpectedVersion::Exact(expected),
                    actual: version,
                }
                .into());
            }
            let events = match state.decide(id, command) {
                Ok(events) if !events.is_empty() => events,
                // Refused, or nothing to do: only the store's word counts.
                _ if !trusted => continue,
                Ok(events) => {
                    self.cache.put(A::KIND, &stream, state, version);
                    return Ok(CommandOutcome {
                        stream_id: stream,
                        events,
                        stream_version: version,
                        position: None,
                        recorded_at: None,
                        duplicate: false,
                        payloads: Vec::new(),
                    });
                }
                Err(rejection) => {
                    self.cache.put(A::KIND, &stream, state, version);
                    return Err(CommandError::Rejected(rejection));
                }
            };
            let new_events = events
                .iter()
                .map(NewEvent::from_domain)
                .collect::<Result<Vec<_>, _>>()?;
            let expected = if version == StreamVersion(0) {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            match self
                .store
                .append(&stream, expected, &new_events, &meta)
                .await
            {
                Ok(outcome) if outcome.duplicate => {
                    return self.replay_outcome::<A>(&stream, &meta, outcome).await;
                }
                Ok(outcome) => {
                    let mut state = Arc::unwrap_or_clone(state);
                    for event in &events {
                        state.evolve(event);
                    }
                    self.maybe_snapshot::<A>(&stream, version, outcome.last_version, &state)
                        .await;
                    self.cache
                        .put(A::KIND, &stream, Arc::new(state), outcome.last_version);
                    return Ok(CommandOutcome {
                        stream_id: stream,
                        events,
                        stream_version: outcome.last_version,
                        position: Some(outcome.last_position),
                        recorded_at: Some(outcome.recorded_at),
                        duplicate: false,
                        payloads: shared_payloads(new_events),
                    });
                }
                // Decided from a state that was not the store's: decide
                // again from the one that is.
                Err(StoreError::WrongExpectedVersion { actual, .. }) if !trusted => {
                    start = Start::after_conflict(&self.cache, &stream, actual);
                }
                Err(StoreError::WrongExpectedVersion { actual, .. })
                    if attempt + 1 < self.max_attempts =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "conflict; deciding again");
                    metrics::counter!("charter_command_retries_total", "aggregate" => A::KIND)
                        .increment(1);
                    conflict_pause(attempt).await;
                    start = Start::after_conflict(&self.cache, &stream, actual);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The outcome of an earlier handling of the same command id.
    async fn replay_outcome<A: Aggregate>(
        &self,
        stream: &StreamId,
        meta: &CommandMeta,
        first: crate::AppendOutcome,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Rejection>> {
        if first.stream_id != *stream {
            return Err(StoreError::CommandIdReused {
                command_id: meta.command_id,
                stream: first.stream_id,
            }
            .into());
        }
        let count = (first.last_version.0 - first.first_version.0 + 1) as usize;
        let recorded = self
            .store
            .read_stream(stream, StreamVersion(first.first_version.0 - 1), count)
            .await?;
        let events = recorded
            .iter()
            .map(|r| r.to_domain::<A::Event>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CommandOutcome {
            stream_id: first.stream_id,
            events,
            stream_version: first.last_version,
            position: Some(first.last_position),
            recorded_at: Some(first.recorded_at),
            duplicate: true,
            payloads: recorded
                .iter()
                .map(|r| crate::SharedPayload(Arc::from(r.payload.clone())))
                .collect(),
        })
    }

    pub(crate) async fn maybe_snapshot<A: Aggregate>(
        &self,
        stream: &StreamId,
        before: StreamVersion,
        after: StreamVersion,
        state: &A,
    ) {
        let every = self.snapshot_every;
        if every == 0 || before.0 / every == after.0 / every {
            return;
        }
        let snapshot = match serde_json::to_value(state) {
            Ok(value) => Snapshot {
                stream_id: stream.clone(),
                aggregate_type: A::KIND.to_owned(),
                version: after,
                state: value,
                taken_at: Utc::now(),
            },
            Err(error) => {
                tracing::warn!(%stream, %error, "state does not serialize; no snapshot");
                return;
            }
        };
        if let Err(error) = self.store.save_snapshot(&snapshot).await {
            tracing::warn!(%stream, %error, "could not save a snapshot");
        }
    }
}
