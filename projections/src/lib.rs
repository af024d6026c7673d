//! `charter-projections` owns Charter's read side: the [`Projector`] trait,
//! the document read models projectors write ([`ReadModels`], on PostgreSQL
//! as JSONB and on SQLite as JSON text), the checkpointed
//! [`ProjectionRunner`] that follows the log, rebuilds, the projections
//! themselves (organizations, the directory of subjects, roles, bindings and
//! policies, the audit log) and the in-memory access index.
//!
//! Every batch a projector handles commits together with its checkpoint, in
//! one transaction: a crash never applies an event twice nor loses one. A
//! rebuild fills a new generation of a projection from the start of the log
//! while the active generation keeps serving, then switches in one step.
//!
//! It follows the global log through
//! [`charter_commands::store::Subscription`], whose order is the commit
//! order, and it never writes events.

pub mod access;
pub mod directory;
pub mod error;
pub mod organizations;
pub mod postgres;
pub mod projector;
pub mod read_models;
pub mod runner;
pub mod sqlite;
mod staged;

pub use error::ProjectionError;
pub use projector::{Documents, Projector};
pub use read_models::{BatchOutcome, Document, ProjectionStatus, ReadModels, connect};
pub use runner::{ProjectionRunner, RebuildReport, rebuild};

/// Every projection Charter runs, in the order they start.
pub fn projectors() -> Vec<std::sync::Arc<dyn Projector>> {
    vec![
        std::sync::Arc::new(organizations::OrganizationsProjector),
        std::sync::Arc::new(directory::DirectoryProjector::default()),
        std::sync::Arc::new(directory::AuditProjector),
    ]
}

/// The projector of that name.
pub fn projector(name: &str) -> Option<std::sync::Arc<dyn Projector>> {
    projectors().into_iter().find(|p| p.name() == name)
}
