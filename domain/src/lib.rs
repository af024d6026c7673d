//! `charter-domain` owns Charter's business rules and nothing else.
//!
//! Aggregates are plain values with a pure `decide` (command + state → events
//! or a typed rejection) and a pure `evolve` (state + event → state). Value
//! types are parsed at the edge and never travel as raw strings past it.
//!
//! This crate must not do I/O: no async runtime, no SQL, no HTTP, no clock
//! reads in `decide` or `evolve`. Everything that decides lives here so that
//! it compiles and tests in seconds.

pub mod access;
pub mod aggregate;
pub mod audit;
pub mod authorize;
mod compiled;
pub mod contract;
pub mod error;
pub mod expr;
pub mod ids;
pub mod manifest;
pub mod organization;
pub mod policy;
pub mod role;
pub mod run;
pub mod span;
pub mod subject;
pub mod testing;
pub mod tool;
pub mod upcast;
pub mod workflow;

pub use aggregate::{Aggregate, DomainEvent, EventParts};
pub use error::{ErrorClass, ErrorCode};
pub use ids::{Actor, CausationId, CommandId, CorrelationId, EventId, OrgName, Scoped};
