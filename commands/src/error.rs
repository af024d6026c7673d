//! The write side's one error type; every variant maps to a stable code.

use charter_domain::{ErrorClass, ErrorCode};

use crate::{ExpectedVersion, Position, StreamId, StreamVersion};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("stream `{stream}` is at version {actual}, expected {expected}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: StreamVersion,
    },
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("event {index} is {bytes} bytes; the limit is {max}")]
    EventTooLarge {
        index: usize,
        bytes: usize,
        max: usize,
    },
    #[error("an append of {count} events exceeds the limit of {max}")]
    BatchTooLarge { count: usize, max: usize },
    #[error("stream `{0}` does not exist")]
    StreamNotFound(StreamId),
    #[error("command {command_id} was already applied to stream `{stream}`")]
    CommandIdReused {
        command_id: charter_domain::CommandId,
        stream: StreamId,
    },
    #[error("one append names the same {what} `{value}` twice")]
    RepeatedInAppend { what: &'static str, value: String },
    #[error("invalid {what} `{value}`")]
    InvalidName { what: &'static str, value: String },
    #[error("stored event at position {position} is malformed: {reason}")]
    MalformedEvent { position: Position, reason: String },
    #[error("could not serialize: {0}")]
    Serialization(String),
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    #[error("the store is not migrated: {0}")]
    NotMigrated(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Database(String),
}

impl ErrorCode for StoreError {
    fn code(&self) -> &'static str {
        match self {
            Self::WrongExpectedVersion { .. } => "wrong_expected_version",
            Self::EmptyAppend => "empty_append",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::BatchTooLarge { .. } => "batch_too_large",
            Self::StreamNotFound(_) => "stream_not_found",
            Self::CommandIdReused { .. } => "command_id_reused",
            Self::RepeatedInAppend { .. } => "repeated_in_append",
            Self::InvalidName { .. } => "invalid_name",
            Self::MalformedEvent { .. } => "malformed_event",
            Self::Serialization(_) => "serialization_failed",
            Self::Unavailable(_) => "store_unavailable",
            Self::NotMigrated(_) => "store_not_migrated",
            Self::Migration(_) => "migration_failed",
            Self::Database(_) => "database_error",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::WrongExpectedVersion { .. } => ErrorClass::Conflict,
            Self::EmptyAppend | Self::InvalidName { .. } | Self::RepeatedInAppend { .. } => {
                ErrorClass::InvalidInput
            }
            Self::EventTooLarge { .. } | Self::BatchTooLarge { .. } => ErrorClass::TooLarge,
            Self::StreamNotFound(_) => ErrorClass::NotFound,
            Self::CommandIdReused { .. } => ErrorClass::Conflict,
            Self::Unavailable(_) => ErrorClass::Unavailable,
            Self::NotMigrated(_) => ErrorClass::Unavailable,
            Self::MalformedEvent { .. }
            | Self::Serialization(_)
            | Self::Migration(_)
            | Self::Database(_) => ErrorClass::Internal,
        }
    }
}

impl StoreError {
    /// Classifies a driver error: connection trouble is `Unavailable`, a
    /// missing table is `NotMigrated`, the rest is `Database`.
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error.to_string()),
            sqlx::Error::Database(db) => {
                let message = db.message();
                // PostgreSQL: 42P01 undefined_table; SQLite: "no such table".
                if db.code().as_deref() == Some("42P01") || message.contains("no such table") {
                    Self::NotMigrated(message.to_owned())
                } else if db.code().as_deref().is_some_and(|c| c.starts_with("08")) {
                    Self::Unavailable(message.to_owned())
                } else {
                    Self::Database(message.to_owned())
                }
            }
            _ => Self::Database(error.to_string()),
        }
    }
}
