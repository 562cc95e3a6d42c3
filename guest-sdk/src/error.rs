//! Errors a handler or callback returns: a business error (4xx: the request breaks a rule) or a
//! system error (5xx: something broke). In a saga, a business error is an ERROR reply and a
//! system error a SYSTEM_ERROR reply.
//!
//! Storage's errors arrive as statuses too (not found: 404, conflict: 409, anything else: 500);
//! [`Error::is_not_found`] and [`Error::is_conflict`] read them, so that a service decides on
//! what happened rather than on a number.

use std::fmt;

use crate::bindings::saga::host::{broker, storage, types};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: u16,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A business error with status 400 (Minos's `ResponseException` / `MinosException`).
    pub fn business(message: impl Into<String>) -> Self {
        Error::with_status(400, message)
    }

    /// A system error with status 500.
    pub fn system(message: impl Into<String>) -> Self {
        Error::with_status(500, message)
    }

    /// 404: what was asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::with_status(404, message)
    }

    /// 409: the request conflicts with the current state, e.g. with a version it expected.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::with_status(409, message)
    }

    /// An error with a chosen status: 400–499 business, 500–599 system.
    pub fn with_status(status: u16, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }

    pub fn is_business(&self) -> bool {
        (400..=499).contains(&self.status)
    }

    /// What was asked for does not exist (404): from storage, no aggregate of that type has
    /// that uuid (or it was deleted). It makes get-or-create read as such:
    ///
    /// ```ignore
    /// let course = match Course::get(uuid) {
    ///     Err(error) if error.is_not_found() => Course { name, taken: 0 }.create_with_uuid(uuid)?,
    ///     found => found?,
    /// };
    /// ```
    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }

    /// The write conflicts (409): from storage, `save` or `delete` of an aggregate that changed
    /// since it was read, or `create_with_uuid` of a uuid that is taken. A conflict with a
    /// writer that committed while this call ran never arrives here: the host runs the call
    /// again instead.
    pub fn is_conflict(&self) -> bool {
        self.status == 409
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for Error {}

impl From<storage::StorageError> for Error {
    fn from(error: storage::StorageError) -> Self {
        match error {
            storage::StorageError::NotFound(message) => Error::not_found(message),
            storage::StorageError::Conflict(message) => Error::conflict(message),
            storage::StorageError::Invalid(message)
            | storage::StorageError::Denied(message)
            | storage::StorageError::Unavailable(message) => Error::system(message),
        }
    }
}

impl From<broker::BrokerError> for Error {
    fn from(error: broker::BrokerError) -> Self {
        match error {
            broker::BrokerError::Invalid(message)
            | broker::BrokerError::Denied(message)
            | broker::BrokerError::NoConsumer(message) => Error::system(message),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error::system(format!("JSON: {error}"))
    }
}

impl From<Error> for types::Error {
    fn from(error: Error) -> Self {
        types::Error {
            status: error.status,
            message: error.message,
        }
    }
}

impl From<types::Error> for Error {
    fn from(error: types::Error) -> Self {
        Error {
            status: error.status,
            message: error.message,
        }
    }
}
