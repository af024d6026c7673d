//! `charter-projections` will own Charter's read side: the projector trait,
//! checkpointed runners that commit each read-model update together with
//! its checkpoint, rebuilds, and as-of (time-travel) reads, on PostgreSQL
//! (JSONB where a document fits) and on SQLite.
//!
//! It follows the global log through `charter_commands::store::Subscription`,
//! whose order is the commit order, and must never write events.
//!
//! Nothing is implemented here yet: the organizations/roles/policies issue
//! builds the first projectors on it.
