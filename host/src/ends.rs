//! Saga ends, within this process: whoever waits for a saga to end — a caller of `sagas.run`
//! with `wait` (through the orchestrator), or a writer waiting for the aggregates a saga holds —
//! is woken when it does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::ids::SagaId;
use tokio::sync::Notify;

/// Wakes whoever waits for a saga to end; cheap to clone.
#[derive(Clone, Default)]
pub struct SagaEnds {
    waiting: Arc<Mutex<HashMap<SagaId, Arc<Notify>>>>,
}

impl SagaEnds {
    /// Waits until `saga` ends or `at_most` passes, whichever is first.
    pub async fn wait(&self, saga: SagaId, at_most: Duration) {
        let notify = self
            .waiting
            .lock()
            .expect("saga-end lock")
            .entry(saga)
            .or_default()
            .clone();
        let _ = tokio::time::timeout(at_most, notify.notified()).await;
    }

    /// Saga `saga` ended: wakes everyone waiting for it.
    pub fn ended(&self, saga: SagaId) {
        if let Some(notify) = self.waiting.lock().expect("saga-end lock").remove(&saga) {
            notify.notify_waiters();
        }
    }
}
