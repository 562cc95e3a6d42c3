//! How a call ended when it did not return normally: the errors a caller sees, and how a
//! wasmtime error is told apart — one of our limits, a race with another writer, a missing
//! export, a full standard error, or the component's own trap with what it printed.

use std::time::Duration;

use super::{CallState, RaceTrap, Returned, STDERR_BYTES};

/// Why a call did not return normally.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("component {service} trapped: {reason}")]
    Trap { service: String, reason: String },
    #[error("component {service} exceeded a limit: {reason}")]
    Limit { service: String, reason: String },
    #[error("component {service} did not return within {} s (limit call-timeout-s)", .limit.as_secs_f64())]
    Timeout { service: String, limit: Duration },
    #[error("component {service} does not export {what}")]
    Missing { service: String, what: &'static str },
    /// The call acted on data another writer changed meanwhile; run it again (once `holder`,
    /// if any, has ended).
    #[error("component {service}'s call raced with another writer: {reason}")]
    Raced {
        service: String,
        reason: String,
        holder: Option<saga_core::ids::SagaId>,
    },
}

impl CallError {
    /// How the call ended, as the calls metric labels it.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Trap { .. } => "trap",
            CallError::Limit { .. } => "limit",
            CallError::Timeout { .. } => "timeout",
            CallError::Missing { .. } => "missing",
            CallError::Raced { .. } => "raced",
        }
    }
}

/// A limit broken inside a call; raised as the call's error so that it can be told apart from
/// a trap of the component's own making.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LimitExceeded(pub(crate) String);

/// The limit key a refusal names ("… (limit cpu-ms)"), for the refusals metric.
pub(super) fn limit_key(reason: &str) -> Option<&str> {
    let (_, rest) = reason.rsplit_once("(limit ")?;
    rest.split(|c: char| c == ')' || c.is_whitespace()).next()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct MissingExport(pub(super) &'static str);

/// What a call returned must fit `max_bytes`: a component must not hand the host gigabytes.
pub(super) fn check_size(returned: Returned, max_bytes: usize) -> Result<Returned, String> {
    let size = match &returned {
        Returned::Response(Ok(response)) => response.payload.len(),
        Returned::Request(Ok(request)) => request.payload.len(),
        Returned::Context(Ok(context)) => context.len(),
        _ => 0,
    };
    if size > max_bytes {
        return Err(format!(
            "it returned {size} bytes; the limit is {max_bytes} bytes (limit max-response-kb)"
        ));
    }
    Ok(returned)
}

/// Turns a failed call into an error a person can act on: our limits by name, a trap with the
/// component's own panic message when it printed one.
pub(super) fn classify(service: &str, error: &wasmtime::Error, state: &CallState) -> CallError {
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return CallError::Limit {
            service: service.to_string(),
            reason: limit.0.clone(),
        };
    }
    if let Some(raced) = error.downcast_ref::<RaceTrap>() {
        return CallError::Raced {
            service: service.to_string(),
            reason: raced.reason.clone(),
            holder: raced.holder,
        };
    }
    if let Some(missing) = error.downcast_ref::<MissingExport>() {
        return CallError::Missing {
            service: service.to_string(),
            what: missing.0,
        };
    }
    // Standard error full: the component's next write failed, and that is why it stopped.
    let stderr = state.stderr();
    if stderr.len() >= STDERR_BYTES {
        return CallError::Limit {
            service: service.to_string(),
            reason: format!(
                "it wrote more than {} KiB to its standard error in one call; log through the logging interface instead",
                STDERR_BYTES >> 10
            ),
        };
    }
    let mut reason = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => root_cause(error),
    };
    let printed = String::from_utf8_lossy(&stderr);
    let printed = printed.trim();
    if !printed.is_empty() {
        let tail: String = printed
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        reason = format!("{reason}; it printed: {tail}");
    }
    CallError::Trap {
        service: service.to_string(),
        reason,
    }
}

pub(super) fn root_cause(error: &wasmtime::Error) -> String {
    format!("{error:#}")
}
