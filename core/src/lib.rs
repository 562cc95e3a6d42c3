//! The model of saga-host that needs no I/O: conditions on aggregates, saga definitions,
//! messages, and the checks an HTTP request passes before it reaches a component. Everything
//! here takes untrusted input and must refuse it with a reason, never panic — the fuzz targets
//! in `fuzz/` hold it to that.

pub mod condition;
pub mod definition;
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
