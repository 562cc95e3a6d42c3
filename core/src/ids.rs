//! The identifiers that travel between the host's parts, each its own type so that a saga id is
//! never passed where a message id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One saga execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaId(pub Uuid);

/// One message (a command, query, event or reply); a resend of the same message keeps its id,
/// so that a consumer that handled it once does nothing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        impl $name {
            /// A new id: a UUIDv7, random but ordered by the time it was made, so that a
            /// table keyed by it grows at its end instead of in random places of its index.
            pub fn random() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                Uuid::parse_str(text)
                    .map($name)
                    .map_err(|e| IdError(format!("{text:?} is not a {}: {e}", $what)))
            }
        }
    };
}

uuid_id!(SagaId, "saga id (a UUID)");
uuid_id!(MessageId, "message id (a UUID)");

/// A text that is not a valid id, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

/// A service's name, as its manifest declares it ("exam").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceName(pub String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ServiceName {
    fn from(name: &str) -> Self {
        ServiceName(name.to_string())
    }
}

impl PartialEq<str> for ServiceName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// The content digest of a component version: SHA-256 of its bytes, 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(pub String);

impl Digest {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for logs and listings.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_hyphenated_uuids() {
        let id = SagaId::random();
        assert_eq!(id.to_string().parse::<SagaId>(), Ok(id));
        let error = "nope".parse::<MessageId>().unwrap_err();
        assert!(error.0.contains("is not a message id"), "{error}");
    }
}
