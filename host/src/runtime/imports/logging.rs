//! The `logging` import: a component's log lines, recorded by the host with the service, saga
//! and message ids, within the call's budget of lines.

use crate::runtime::bindings::logging;
use crate::runtime::call::{Budget, Identity};

/// The call's state as the logging import sees it.
pub struct LoggingImport<'a> {
    pub(super) who: &'a Identity,
    pub(super) budget: &'a mut Budget,
}

/// A line longer than this is cut, so that one call cannot flood the host's log.
const MAX_LINE: usize = 4096;

impl logging::Host for LoggingImport<'_> {
    async fn log(&mut self, level: logging::Level, message: String) -> wasmtime::Result<()> {
        self.budget.host_call(self.who)?;
        self.budget.log_lines += 1;
        let limit = self.who.limits().max_log_lines;
        let service = self.who.service_name();
        if self.budget.log_lines > limit {
            if self.budget.log_lines == limit + 1 {
                tracing::warn!(target: "component", service, "the call wrote more than {limit} log lines; the rest are dropped");
            }
            return Ok(());
        }
        let saga = self
            .who
            .saga_id()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let message_id = self
            .who
            .message_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        let (saga, message_id) = (saga.as_str(), message_id.as_str());
        let message: String = message.chars().take(MAX_LINE).collect();
        match level {
            logging::Level::Trace => {
                tracing::trace!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Debug => {
                tracing::debug!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Info => {
                tracing::info!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Warn => {
                tracing::warn!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Error => {
                tracing::error!(target: "component", service, saga, message_id, "{message}")
            }
        }
        Ok(())
    }
}
