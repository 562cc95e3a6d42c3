//! The model of saga-host that needs no I/O: conditions on aggregates, saga definitions,
//! messages, the checks an HTTP request passes before it reaches a component, the ids that
//! travel between the host's parts, and the saga engine's rules (`engine`, a pure state
//! machine). What takes untrusted input must refuse it with a reason, never panic — the fuzz
//! targets in `fuzz/` hold it to that.

pub mod condition;
pub mod definition;
pub mod engine;
pub mod ids;
pub mod instant;
pub mod message;
pub mod request;

use serde_json::Value;

/// One aggregate as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRecord {
    pub uuid: String,
    pub version: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    /// A JSON object.
    pub data: Value,
}
