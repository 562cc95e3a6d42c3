//! The sagas' timers on this host: each saga's earliest timer is kept in memory and fired by a
//! task that sleeps until it is due; a restarted or surviving host takes over the timers no
//! live host owns from storage (`take_over`), and the test harness moves the clock ahead.

use std::time::Duration;

use saga_core::engine::Event;
use saga_core::ids::SagaId;

use super::{Orchestrator, StartsFrom, TransitionError};
use crate::storage::{Executions, StorageError};

impl Orchestrator {
    /// Moves the clock ahead and fires every timer that is due by then, one saga after the
    /// other (the test harness's way to let time pass).
    pub async fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
        let now = self.now();
        let mut due: Vec<(i64, SagaId)> = {
            let mut timers = self.timers.lock().expect("timers lock");
            let due: Vec<(i64, SagaId)> = timers
                .iter()
                .filter(|&(_, &at)| at <= now)
                .map(|(&id, &at)| (at, id))
                .collect();
            for (_, id) in &due {
                timers.remove(id);
            }
            due
        };
        due.sort_unstable();
        for (_, id) in due {
            self.on_timer(id).await;
        }
    }

    /// When the earliest timer scheduled here is due.
    pub fn next_timer_at(&self) -> Option<i64> {
        self.timers
            .lock()
            .expect("timers lock")
            .values()
            .min()
            .copied()
    }

    /// Fires whatever of an execution's timers is due, and schedules its next one.
    pub async fn on_timer(&self, id: SagaId) {
        match self
            .transition(StartsFrom::Stored(id), Event::Timer, None)
            .await
        {
            Ok(exec) => {
                if let Some(at) = exec.timer_at() {
                    // Never sooner than shortly: a timer that found nothing to do must not spin.
                    self.schedule(id, at.max(self.now() + 100));
                }
            }
            Err(TransitionError::Gone | TransitionError::Duplicate) => {}
            Err(error) => {
                tracing::warn!(saga = %id, "a timer could not fire: {error}; trying again in a second");
                self.schedule(id, self.now() + 1_000);
            }
        }
    }

    /// Takes over the timers of the sagas no live host owns (all of them after a restart of a
    /// lone host; a dead host's in a cluster), and schedules them here.
    pub async fn take_over(&self, alive_since: i64) -> Result<usize, StorageError> {
        let timers = self
            .storage
            .claim_orphaned_sagas(&self.host_id, alive_since)
            .await?;
        for (id, at) in &timers {
            if let Ok(id) = id.parse() {
                self.schedule(id, *at);
            }
        }
        Ok(timers.len())
    }

    /// Runs `on_timer(id)` at `at` (ms since the epoch), unless an earlier timer is due.
    pub(super) fn schedule(&self, id: SagaId, at: i64) {
        {
            let mut timers = self.timers.lock().expect("timers lock");
            if timers.get(&id).is_some_and(|&scheduled| scheduled <= at) {
                return;
            }
            timers.insert(id, at);
        }
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        let wait = Duration::from_millis((at - self.now()).max(0) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(orchestrator) = me.upgrade() else {
                return;
            };
            {
                let mut timers = orchestrator.timers.lock().expect("timers lock");
                if timers.get(&id) == Some(&at) {
                    timers.remove(&id);
                }
            }
            orchestrator.on_timer(id).await;
        });
    }
}
