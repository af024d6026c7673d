//! `charter-commands` owns Charter's write side: the event store (one
//! [`EventStore`] trait; PostgreSQL for production, with group commit, and
//! SQLite for the embedded default; atomic appends across streams), command
//! handling (load, decide, append, retry on conflict, with a cache of
//! aggregate states and per-stream turns; joint commands over two
//! aggregates), idempotency, snapshots, upcasting on read, the outbox relay
//! that publishes every committed event to JetStream or the in-process bus,
//! and the shared in-memory tail of the log that every reader in a process
//! follows.
//!
//! It must not hold business rules (those live in `charter-domain`) nor read
//! models (those live in `charter-projections`).

pub mod bus;
pub mod cache;
pub mod error;
pub mod event;
pub mod jetstream;
pub mod joint;
pub mod kernel;
pub mod postgres;
pub mod publish;
pub mod relay;
mod sql;
pub mod sqlite;
pub mod store;
pub mod tail;

pub use error::StoreError;
pub use event::{
    AppendOutcome, CommandMeta, EventRecord, ExpectedVersion, NewEvent, Position, RecordedEvent,
    SharedPayload, StreamAppend, StreamId, StreamVersion,
};
pub use kernel::{CommandError, CommandHandler, CommandOutcome, Handling};
pub use store::{EventStore, Snapshot, StoreLimits, connect};
