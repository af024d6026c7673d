//! The one classification of failures every Charter surface shares.
//!
//! Each error type in every crate implements [`ErrorCode`]: a stable,
//! machine-readable `code` (what clients match on) and an [`ErrorClass`]
//! (what REST maps to a status, GraphQL to `extensions.code`, the CLI to an
//! exit code). This module must not know about HTTP.

/// The broad class of a failure; surfaces map each class to their own signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The request itself is malformed or breaks a value rule.
    InvalidInput,
    /// The request body cannot even be read (not JSON, not YAML, wrong
    /// content type).
    Malformed,
    /// The target does not exist (or is not visible to the caller).
    NotFound,
    /// The target already exists.
    AlreadyExists,
    /// A concurrent change won: the caller's view is stale.
    Conflict,
    /// The target is in a state that does not allow this request.
    FailedPrecondition,
    /// Authenticated but not allowed.
    Forbidden,
    /// No valid credential.
    Unauthenticated,
    /// The request or one of its parts is larger than allowed.
    TooLarge,
    /// A dependency is unreachable; retrying later may succeed.
    Unavailable,
    /// A bug or corrupted data; not the caller's fault.
    Internal,
}

/// A stable, machine-readable identity for an error value.
pub trait ErrorCode {
    /// A `snake_case` code that never changes once published.
    fn code(&self) -> &'static str;
    /// The class surfaces use to pick their status.
    fn class(&self) -> ErrorClass;
}
