//! Hosts sharing one database and one NATS broker. Each host says it is alive (a heartbeat row)
//! and what its services consume, several times per lease; from the others' rows it learns where
//! to address commands and events for services it does not load. A saga belongs to the host
//! that stored its last transition (which keeps its timers); a host that finds a saga whose
//! owner has been silent for a whole lease takes it over and schedules its timers. Messages a
//! dead host committed but never handed to NATS are handed on by whichever host sees them first
//! (the stream drops the copies).

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::host::Host;
use crate::storage::{Consumes, Hosts, StorageError, now_ms};

/// How long a committed message may wait in the queue table before another host hands it on.
const RELAY_GRACE: Duration = Duration::from_secs(2);
/// Hosts silent for this many leases are forgotten.
const FORGET_AFTER_LEASES: u32 = 60;

/// Joins the cluster: says this host is alive and what it consumes, learns the others', takes
/// over the sagas of dead hosts, and keeps doing so while the host runs. Returns how many sagas
/// it took over.
pub async fn join(host: &Arc<Host>, id: &str) -> Result<usize, StorageError> {
    let consumes = host.broker.local_consumes();
    host.storage.heartbeat(id, Some(&consumes)).await?;
    let taken = beat(host, id).await?;
    tokio::spawn(membership(Arc::downgrade(host), id.to_string(), consumes));
    Ok(taken)
}

/// One round of membership after the heartbeat: what the cluster consumes, dead hosts' sagas and
/// messages. Returns how many sagas it took over.
async fn beat(host: &Host, id: &str) -> Result<usize, StorageError> {
    let alive_since = now_ms() - host.config.lease.as_millis() as i64;
    let consumes = host.storage.cluster_consumes(alive_since).await?;
    host.broker.set_cluster_consumes(&consumes);
    let taken = host.orchestrator.take_over(alive_since).await?;
    if taken > 0 {
        tracing::info!(
            host = id,
            sagas = taken,
            "took over the sagas of a host that stopped"
        );
    }
    let relayed = host
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

async fn membership(host: Weak<Host>, id: String, mut said: Vec<Consumes>) {
    let Some(lease) = host.upgrade().map(|host| host.config.lease) else {
        return;
    };
    let mut every = tokio::time::interval((lease / 5).max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 1u64.. {
        every.tick().await;
        let Some(host) = host.upgrade() else { return };
        let consumes = host.broker.local_consumes();
        let changed = consumes != said;
        let result = async {
            host.storage
                .heartbeat(&id, changed.then_some(consumes.as_slice()))
                .await?;
            if changed {
                said = consumes;
            }
            beat(&host, &id).await?;
            if round % 100 == 0 {
                let before = now_ms() - (lease * FORGET_AFTER_LEASES).as_millis() as i64;
                host.storage.forget_hosts(before).await?;
            }
            Ok::<_, StorageError>(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "a membership round failed; the next one tries again");
        }
    }
}
