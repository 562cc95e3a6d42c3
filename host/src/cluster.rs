//! Hosts sharing one database and one NATS broker. Each host says it is alive (a heartbeat row)
//! and what its services consume, several times per lease; from the others' rows it learns where
//! to address commands and events for services it does not load. A saga belongs to the host
//! that stored its last transition (which keeps its timers); a host that finds a saga whose
//! owner has been silent for a whole lease takes it over and schedules its timers. Messages a
//! dead host committed but never handed to NATS are handed on by whichever host sees them first
//! (the stream drops the copies).

use std::sync::Weak;
use std::time::Duration;

use crate::broker::Broker;
use crate::saga::Orchestrator;
use crate::storage::{Consumes, Hosts, Storage, StorageError, now_ms};
use crate::telemetry::metrics;

/// How long a committed message may wait in the queue table before another host hands it on.
const RELAY_GRACE: Duration = Duration::from_secs(2);
/// Hosts silent for this many leases are forgotten.
const FORGET_AFTER_LEASES: u32 = 60;

/// This host's part in the cluster.
pub struct Membership {
    /// This host's id (it owns the timers of the sagas whose transitions it stores).
    pub id: String,
    pub storage: Storage,
    pub broker: Broker,
    /// Weak: the membership lasts as long as the host's orchestrator.
    pub orchestrator: Weak<Orchestrator>,
    /// How long a host may be silent before the others count it dead.
    pub lease: Duration,
}

impl Membership {
    /// Joins the cluster: says this host is alive and what it consumes, learns the others',
    /// takes over the sagas of dead hosts, and keeps doing so while the orchestrator lives.
    /// Returns how many sagas it took over.
    pub async fn join(self) -> Result<usize, StorageError> {
        let consumes = self.broker.local_consumes();
        self.storage.heartbeat(&self.id, Some(&consumes)).await?;
        let taken = self.beat().await?;
        tokio::spawn(self.keep_up(consumes));
        Ok(taken)
    }

    /// One round of membership after the heartbeat: what the cluster consumes, dead hosts'
    /// sagas and messages. Returns how many sagas it took over.
    async fn beat(&self) -> Result<usize, StorageError> {
        let alive_since = now_ms() - self.lease.as_millis() as i64;
        let consumes = self.storage.cluster_consumes(alive_since).await?;
        self.broker.set_cluster_consumes(&consumes);
        metrics::hosts_alive(self.storage.hosts_alive(alive_since).await?);
        let Some(orchestrator) = self.orchestrator.upgrade() else {
            return Ok(0);
        };
        let taken = orchestrator.take_over(alive_since).await?;
        if taken > 0 {
            tracing::info!(
                host = self.id,
                sagas = taken,
                "took over the sagas of a host that stopped"
            );
        }
        let relayed = self
            .broker
            .relay_left_behind(now_ms() - RELAY_GRACE.as_millis() as i64)
            .await?;
        if relayed > 0 {
            tracing::info!(
                messages = relayed,
                "handed on messages a host left in the queue"
            );
        }
        Ok(taken)
    }

    /// Heartbeats several times per lease while the host runs.
    async fn keep_up(self, mut said: Vec<Consumes>) {
        let mut every = tokio::time::interval((self.lease / 5).max(Duration::from_millis(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 1u64.. {
            every.tick().await;
            if self.orchestrator.strong_count() == 0 {
                return;
            }
            let consumes = self.broker.local_consumes();
            let changed = consumes != said;
            let result = async {
                self.storage
                    .heartbeat(&self.id, changed.then_some(consumes.as_slice()))
                    .await?;
                if changed {
                    said = consumes;
                }
                self.beat().await?;
                if round % 100 == 0 {
                    let before = now_ms() - (self.lease * FORGET_AFTER_LEASES).as_millis() as i64;
                    self.storage.forget_hosts(before).await?;
                }
                Ok::<_, StorageError>(())
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "a membership round failed; the next one tries again");
            }
        }
    }
}
