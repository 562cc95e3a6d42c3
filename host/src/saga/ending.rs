//! When a saga ends: whoever waits for it is woken, whether it ended on this host or on another
//! (announced, or else found by looking), and a retired version is unloaded once no unfinished
//! saga runs on it.

use std::time::Duration;

use saga_core::engine::Execution;
use saga_core::ids::SagaId;
use tokio::sync::oneshot;

use super::{Orchestrator, record};
use crate::runtime::bindings::types as wit;
use crate::storage::Executions;

impl Orchestrator {
    /// Waits until a started saga ends, wherever it ends: this host wakes the waiter; another
    /// host's end arrives as an announcement, and, should that be lost, the stored execution is
    /// looked at every second.
    pub(super) async fn wait_for_end(
        &self,
        exec: &Execution,
        mut finished: oneshot::Receiver<wit::Execution>,
    ) -> Result<wit::Execution, wit::Error> {
        loop {
            tokio::select! {
                done = &mut finished => {
                    return match done {
                        Ok(done) => Ok(done),
                        // The host is shutting down; report what is stored.
                        Err(_) => self.get(exec.service.to_string(), exec.id.to_string()).await,
                    };
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Ok(Some(stored)) = self.inspect(exec.id).await
                        && stored.exec.status.is_final()
                    {
                        self.waiters.lock().expect("waiters lock").remove(&exec.id);
                        return Ok(record::to_wit(&stored.exec));
                    }
                }
            }
        }
    }

    /// Another host ended saga `id`: wake whoever waits for it here.
    pub async fn ended_elsewhere(&self, id: SagaId) {
        self.cached.lock().expect("cache lock").remove(&id);
        let waited = self.waiters.lock().expect("waiters lock").contains_key(&id);
        if waited
            && let Ok(Some(stored)) = self.inspect(id).await
            && stored.exec.status.is_final()
        {
            self.notify_end(&stored.exec);
        }
        self.ends.ended(id);
    }

    /// Registers a waiter for saga `id`'s end, before the saga starts so that no end is missed.
    pub(super) fn register_waiter(&self, id: SagaId) -> oneshot::Receiver<wit::Execution> {
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .entry(id)
            .or_default()
            .push(sender);
        receiver
    }

    /// Wakes whoever waits here for `exec` to end.
    fn notify_end(&self, exec: &Execution) {
        let waiting = self.waiters.lock().expect("waiters lock").remove(&exec.id);
        for waiter in waiting.into_iter().flatten() {
            let _ = waiter.send(record::to_wit(exec));
        }
    }

    /// A saga this host stored has ended: wake its waiters here and on the other hosts, and
    /// release the version it ran on if that version is retired.
    pub(super) fn ended(&self, exec: &Execution) {
        self.cached.lock().expect("cache lock").remove(&exec.id);
        self.notify_end(exec);
        self.ends.ended(exec.id);
        self.broker.announce_end(&exec.id.to_string());
        tracing::debug!(saga = %exec.id, name = %exec.name, status = exec.status.as_str(), "saga ended");
        let current = self
            .registry
            .service(exec.service.as_str())
            .map(|v| v.digest.clone());
        if current.as_deref() != Some(exec.digest.as_str()) {
            self.release_if_unused(exec.service.to_string(), exec.digest.to_string());
        }
    }

    /// Unloads a retired version once no unfinished saga runs on it.
    fn release_if_unused(&self, service: String, digest: String) {
        let (storage, registry) = (self.storage.clone(), self.registry.clone());
        tokio::spawn(async move {
            match storage.running_versions().await {
                Ok(running)
                    if !running
                        .iter()
                        .any(|(s, v, _)| *s == service && *v == digest) =>
                {
                    registry.release(&digest)
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not count the sagas on a retired version")
                }
            }
        });
    }
}
