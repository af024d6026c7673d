//! Commands that change two aggregates at once: one decision over both
//! states, one atomic append of both streams ([`EventStore::append_all`]).
//!
//! A run's worker charges the run's contract and claims the node in one
//! step, so that a call is never charged without being claimed nor claimed
//! without being charged; a run starts together with its contract. The
//! rules of each aggregate stay in the aggregate: the decision is a
//! function the caller composes from their own `decide`s.
//!
//! As for single commands, the states decided from may come from the
//! kernel's cache or be taken to be new; the append checks both versions,
//! and a refusal, or a side with nothing to append, is trusted only when
//! decided from states loaded from the store. Joint commands always carry
//! fresh command ids (the server makes them), so there is no repeat to
//! look up.

use std::sync::Arc;

use charter_domain::Aggregate;

use crate::kernel::{CommandError, Loaded, conflict_pause};
use crate::{
    CommandHandler, CommandMeta, ExpectedVersion, NewEvent, Position, StoreError, StreamAppend,
    StreamId, StreamVersion,
};

/// What a joint decision appends to each aggregate, and what it tells its
/// caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Joint<EA, EB, T> {
    pub first: Vec<EA>,
    pub second: Vec<EB>,
    pub value: T,
}

/// One aggregate's share of a joint command.
#[derive(Debug, Clone, PartialEq)]
pub struct Share<E> {
    pub stream_id: StreamId,
    pub events: Vec<E>,
    /// The stream's version after the command.
    pub stream_version: StreamVersion,
    /// The global position of its last event, when it appended any.
    pub position: Option<Position>,
    /// When its events were recorded, when it appended any.
    pub recorded_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The events' payloads as stored, in order (as `events`), shared;
    /// empty when it appended none.
    pub payloads: Vec<crate::SharedPayload>,
}

/// What a joint command did.
#[derive(Debug, Clone, PartialEq)]
pub struct JointOutcome<EA, EB, T> {
    pub first: Share<EA>,
    pub second: Share<EB>,
    pub value: T,
}

/// One side's state for an attempt: the state, its version, and whether
/// it was loaded from the store just now.
struct Side<A> {
    state: Arc<A>,
    version: StreamVersion,
    trusted: bool,
}

impl CommandHandler {
    async fn side<A: Aggregate>(
        &self,
        stream: &StreamId,
        from_store: bool,
    ) -> Result<Side<A>, StoreError> {
        if !from_store {
            if let Some((state, version)) = self.cache.get::<A>(A::KIND, stream) {
                return Ok(Side {
                    state,
                    version,
                    trusted: false,
                });
            }
            return Ok(Side {
                state: Arc::new(A::default()),
                version: StreamVersion(0),
                trusted: false,
            });
        }
        let Loaded { state, version } = self.load_stream::<A>(stream).await?;
        Ok(Side {
            state: Arc::new(state),
            version,
            trusted: true,
        })
    }

    /// Decides one command over two aggregates and appends what it says to
    /// both streams atomically, retrying on conflict like
    /// [`CommandHandler::handle`]. `decide` sees both current states and
    /// answers with each one's events (either may be empty) and a value
    /// for the caller, or a rejection.
    pub async fn handle_together<A, B, T, R>(
        &self,
        first: (&A::Id, &CommandMeta),
        second: (&B::Id, &CommandMeta),
        decide: impl Fn(&A, &B) -> Result<Joint<A::Event, B::Event, T>, R>,
    ) -> Result<JointOutcome<A::Event, B::Event, T>, CommandError<R>>
    where
        A: Aggregate,
        B: Aggregate,
    {
        let stream_a = StreamId::for_aggregate::<A>(first.0)?;
        let stream_b = StreamId::for_aggregate::<B>(second.0)?;
        let mut meta_a = first.1.clone();
        meta_a.aggregate_type = A::KIND.to_owned();
        let mut meta_b = second.1.clone();
        meta_b.aggregate_type = B::KIND.to_owned();
        // Turns on both streams, always taken in the same order.
        let (low, high) = if stream_a <= stream_b {
            (&stream_a, &stream_b)
        } else {
            (&stream_b, &stream_a)
        };
        let _first_turn = self.locks.turn(low).await;
        let _second_turn = self.locks.turn(high).await;
        let (mut reload_a, mut reload_b) = (false, false);
        let mut attempt = 0;
        loop {
            let a = self.side::<A>(&stream_a, reload_a).await?;
            let b = self.side::<B>(&stream_b, reload_b).await?;
            let joint = match decide(&a.state, &b.state) {
                Ok(joint) => joint,
                Err(_) if !(a.trusted && b.trusted) => {
                    (reload_a, reload_b) = (true, true);
                    continue;
                }
                Err(rejection) => return Err(CommandError::Rejected(rejection)),
            };
            // Nothing to append to a side is only believed of the store's
            // state of it.
            let doubtful_a = joint.first.is_empty() && !a.trusted;
            let doubtful_b = joint.second.is_empty() && !b.trusted;
            if doubtful_a || doubtful_b {
                reload_a |= doubtful_a;
                reload_b |= doubtful_b;
                continue;
            }
            let events_a = joint
                .first
                .iter()
                .map(NewEvent::from_domain)
                .collect::<Result<Vec<_>, _>>()?;
            let events_b = joint
                .second
                .iter()
                .map(NewEvent::from_domain)
                .collect::<Result<Vec<_>, _>>()?;
            let expected = |version: StreamVersion| {
                if version == StreamVersion(0) {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                }
            };
            let mut parts = Vec::with_capacity(2);
            if !events_a.is_empty() {
                parts.push(StreamAppend {
                    stream: &stream_a,
                    expected: expected(a.version),
                    events: &events_a,
                    meta: &meta_a,
                });
            }
            if !events_b.is_empty() {
                parts.push(StreamAppend {
                    stream: &stream_b,
                    expected: expected(b.version),
                    events: &events_b,
                    meta: &meta_b,
                });
            }
            let outcomes = if parts.is_empty() {
                Ok(Vec::new())
            } else {
                self.store.append_all(&parts).await
            };
            match outcomes {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    let outcome_a = (!events_a.is_empty()).then(|| outcomes.next()).flatten();
                    let outcome_b = (!events_b.is_empty()).then(|| outcomes.next()).flatten();
                    let share_a = self
                        .settle::<A>(&stream_a, a, (joint.first, events_a), outcome_a)
                        .await;
                    let share_b = self
                        .settle::<B>(&stream_b, b, (joint.second, events_b), outcome_b)
                        .await;
                    return Ok(JointOutcome {
                        first: share_a,
                        second: share_b,
                        value: joint.value,
                    });
                }
                Err(StoreError::WrongExpectedVersion {
                    stream,
                    expected,
                    actual,
                }) => {
                    let on_a = stream == stream_a;
                    let was_trusted = if on_a { a.trusted } else { b.trusted };
                    if on_a {
                        self.cache.forget(&stream_a);
                        reload_a = true;
                    } else {
                        self.cache.forget(&stream_b);
                        reload_b = true;
                    }
                    // A state that was the store's a moment ago lost a race:
                    // back off, then decide again from both streams.
                    if was_trusted {
                        if attempt >= self.max_attempts {
                            return Err(StoreError::WrongExpectedVersion {
                                stream,
                                expected,
                                actual,
                            }
                            .into());
                        }
                        metrics::counter!("charter_command_retries_total", "aggregate" => A::KIND)
                            .increment(1);
                        attempt += 1;
                        conflict_pause(attempt).await;
                        (reload_a, reload_b) = (true, true);
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// One side after a successful append: its new state cached (and
    /// snapshotted when due), its share.
    async fn settle<A: Aggregate>(
        &self,
        stream: &StreamId,
        side: Side<A>,
        (events, appended): (Vec<A::Event>, Vec<NewEvent>),
        outcome: Option<crate::AppendOutcome>,
    ) -> Share<A::Event> {
        match outcome {
            Some(outcome) => {
                let mut state = Arc::unwrap_or_clone(side.state);
                for event in &events {
                    state.evolve(event);
                }
                self.maybe_snapshot::<A>(stream, side.version, outcome.last_version, &state)
                    .await;
                self.cache
                    .put(A::KIND, stream, Arc::new(state), outcome.last_version);
                Share {
                    stream_id: stream.clone(),
                    events,
                    stream_version: outcome.last_version,
                    position: Some(outcome.last_position),
                    recorded_at: Some(outcome.recorded_at),
                    payloads: crate::kernel::shared_payloads(appended),
                }
            }
            None => {
                self.cache.put(A::KIND, stream, side.state, side.version);
                Share {
                    stream_id: stream.clone(),
                    events,
                    stream_version: side.version,
                    position: None,
                    recorded_at: None,
                    payloads: Vec::new(),
                }
            }
        }
    }
}
