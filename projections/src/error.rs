//! The read side's one error type.

use charter_commands::{Position, StoreError};
use charter_domain::{ErrorClass, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("projection `{0}` is not known")]
    UnknownProjection(String),
    #[error("projector `{projection}` failed on the event at position {position}: {reason}")]
    Projector {
        projection: String,
        position: Position,
        reason: String,
    },
    #[error("document {collection}/{key} is malformed: {reason}")]
    MalformedDocument {
        collection: String,
        key: String,
        reason: String,
    },
    #[error("the read model has not reached position {0} yet")]
    NotYetVisible(Position),
    #[error("read model database error: {0}")]
    Database(String),
}

impl ProjectionError {
    pub(crate) fn database(error: sqlx::Error) -> Self {
        match StoreError::from_sqlx(error) {
            StoreError::Database(message) => Self::Database(message),
            other => Self::Store(other),
        }
    }
}

impl ErrorCode for ProjectionError {
    fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::UnknownProjection(_) => "projection_not_found",
            Self::Projector { .. } => "projector_failed",
            Self::MalformedDocument { .. } => "malformed_document",
            Self::NotYetVisible(_) => "not_yet_visible",
            Self::Database(_) => "database_error",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::Store(e) => e.class(),
            Self::UnknownProjection(_) => ErrorClass::NotFound,
            Self::NotYetVisible(_) => ErrorClass::Unavailable,
            Self::Projector { .. } | Self::MalformedDocument { .. } | Self::Database(_) => {
                ErrorClass::Internal
            }
        }
    }
}
