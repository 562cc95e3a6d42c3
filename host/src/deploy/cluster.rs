//! Deploys across a cluster (the NATS broker, one database). A version deployed to one host —
//! through the admin API or its components directory — is validated and installed there as on a
//! lone host, then stored in the database as the cluster's current version of its service and
//! announced on NATS. Every other host that runs the service loads it from the database through
//! its own deployer (the same checks as any deploy) and records what it made of it: current, or
//! failed with the reason, its previous version serving on. The deploying host waits a bounded
//! time for those answers. A host that missed an announcement catches up with the cluster's
//! versions every lease, and a host that starts loads them over its directory's files: what the
//! cluster last deployed is what it runs.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{DeployError, Deployer, Origin};
use crate::runtime::ServiceVersion;
use crate::storage::{ClusterDeploy, Deploys, HostComponent, Storage, now_ms};

/// How long a deploy waits for the other hosts to load the new version and answer.
pub const DEPLOY_WAIT: Duration = Duration::from_secs(30);

/// How a deploy is announced to every host (the broker's `announce_deployed`).
pub type Announce = Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// This host's part in cluster-wide deploys.
pub struct ClusterLink {
    /// This host's id (as in the cluster's `hosts` table).
    pub host: String,
    /// How long a host may be silent before it counts as dead: a deploy does not wait for it,
    /// and it catches up when it is back.
    pub lease: Duration,
    pub announce: Announce,
}

/// What one host made of a deploy to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAnswer {
    pub host: String,
    /// The host deployed to.
    pub here: bool,
    pub outcome: HostOutcome,
}

/// Whether a host runs a deployed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// It is current there.
    Current,
    /// The host could not load it, for this reason; its previous version serves on.
    Failed(String),
    /// The host did not answer within the deploy's wait (it catches up when it can).
    NoAnswer,
}

/// What the cluster runs, as an operator sees it from one host.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This host's id.
    pub host: String,
    /// The cluster's current version of each service deployed to it, by service.
    pub current: HashMap<String, String>,
    /// What each live host runs.
    pub hosts: Vec<HostComponent>,
}

impl ClusterLink {
    /// Records in the database that `version` is current here (answering cluster deploy
    /// `deploy_id`, if it does), and keeps the bytes of a version with sagas there, so that any
    /// host can resume its sagas. A failure is logged: the deploy here stands.
    pub(super) async fn record(
        &self,
        storage: &Storage,
        version: &ServiceVersion,
        bytes: &[u8],
        deploy_id: Option<&str>,
        released: Option<&str>,
    ) {
        let (service, digest) = (version.name(), version.digest.as_str());
        if !version.manifest.sagas.is_empty()
            && let Err(error) = storage.store_version(service, digest, bytes).await
        {
            tracing::warn!(service, %error, "could not keep the version's bytes in the database; other hosts cannot take over its sagas");
        }
        if let Err(error) = storage
            .record_current(&self.host, service, digest, deploy_id, released)
            .await
        {
            tracing::warn!(service, %error, "could not record this host's current version in the database");
        }
    }
}

impl Deployer {
    /// Makes this host part of a cluster: its deploys reach the other hosts, and theirs reach
    /// it. Done once, before the components load.
    pub fn join_cluster(&self, link: ClusterLink) {
        let _ = self.cluster.set(link);
    }

    /// Deploys a component here and, on a cluster, to every host that runs its service; with
    /// `wait`, answers each live host's result (none without a cluster). A deploy refused here
    /// goes nowhere.
    pub async fn deploy_everywhere(
        &self,
        bytes: Vec<u8>,
        origin: Origin,
        wait: bool,
    ) -> Result<(Arc<ServiceVersion>, Option<Vec<HostAnswer>>), DeployError> {
        let Some(link) = self.cluster.get() else {
            return Ok((self.deploy(bytes, origin).await?, None));
        };
        let explicit = matches!(origin, Origin::Api(_));
        let sharing = self.sharing.lock().await;
        let version = self.deploy(bytes.clone(), origin).await?;
        if !explicit {
            // A file that holds the cluster's version already (written by a cluster deploy) is
            // no new deploy. The admin API's always is: deploying again retries failed hosts.
            let cluster = self.storage.cluster_components().await?;
            if (cluster.iter()).any(|c| c.service == version.name() && c.digest == version.digest) {
                return Ok((version, None));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let deploy = ClusterDeploy {
            service: version.name(),
            digest: &version.digest,
            bytes: &bytes,
            by: &link.host,
        };
        self.storage.deploy_to_cluster(deploy).await.map_err(|e| {
            DeployError::Io(format!(
                "deployed on this host, but not to the cluster (its database failed: {e}); deploy again"
            ))
        })?;
        let longest_call = self.runtime.config().limits.longest_call();
        match (self.storage)
            .prune_versions(now_ms() - longest_call.as_millis() as i64)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "forgot stored versions nothing needs"),
            Err(error) => tracing::warn!(%error, "could not prune the stored versions"),
        }
        let note = json!({
            "service": version.name(),
            "digest": version.digest,
            "by": link.host,
            "id": id,
        });
        if let Err(error) = (link.announce)(note.to_string()).await {
            tracing::warn!(%error, "could not announce the deploy; the other hosts catch up within a lease");
        }
        tracing::info!(
            service = version.name(),
            digest = version.short_digest(),
            "deployed to the cluster"
        );
        drop(sharing);
        if !wait {
            return Ok((version, None));
        }
        let answers = self.answers(link, &version, &id).await;
        Ok((version, Some(answers)))
    }

    /// Each live host's answer to cluster deploy `id` of `version`, once every host that runs
    /// the service answered or `DEPLOY_WAIT` passed.
    async fn answers(
        &self,
        link: &ClusterLink,
        version: &ServiceVersion,
        id: &str,
    ) -> Vec<HostAnswer> {
        let deadline = Instant::now() + DEPLOY_WAIT;
        let mut answers = Vec::new();
        loop {
            let waiting = match self.storage.host_components(Some(version.name())).await {
                Ok(rows) => {
                    let alive_since = now_ms() - link.lease.as_millis() as i64;
                    answers = vec![HostAnswer {
                        host: link.host.clone(),
                        here: true,
                        outcome: HostOutcome::Current,
                    }];
                    let others = rows.into_iter().filter(|row| {
                        row.host != link.host
                            && row.heartbeat_at.is_some_and(|at| at >= alive_since)
                    });
                    for row in others {
                        let outcome = match &row.failed {
                            _ if row.current == version.digest => HostOutcome::Current,
                            Some((digest, error))
                                if *digest == version.digest
                                    && row.deploy_id.as_deref() == Some(id) =>
                            {
                                HostOutcome::Failed(error.clone())
                            }
                            _ => HostOutcome::NoAnswer,
                        };
                        answers.push(HostAnswer {
                            host: row.host,
                            here: false,
                            outcome,
                        });
                    }
                    answers.iter().any(|a| a.outcome == HostOutcome::NoAnswer)
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read the hosts' answers to a deploy");
                    true
                }
            };
            if !waiting || Instant::now() >= deadline {
                return answers;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the cluster runs: its current versions and each live host's (none without a
    /// cluster).
    pub async fn cluster_view(&self) -> Result<Option<ClusterView>, DeployError> {
        let Some(link) = self.cluster.get() else {
            return Ok(None);
        };
        let current = self.storage.cluster_components().await?;
        let alive_since = now_ms() - link.lease.as_millis() as i64;
        let hosts = self.storage.host_components(None).await?;
        Ok(Some(ClusterView {
            host: link.host.clone(),
            current: (current.into_iter())
                .map(|c| (c.service, c.digest))
                .collect(),
            hosts: (hosts.into_iter())
                .filter(|row| {
                    row.host == link.host || row.heartbeat_at.is_some_and(|at| at >= alive_since)
                })
                .collect(),
        }))
    }

    /// Follows the cluster's deploys while the host runs: each announced one at once (`notes`,
    /// from NATS), and every `every` the cluster's current versions, in case an announcement
    /// was lost.
    pub async fn follow_cluster(
        deployer: Weak<Deployer>,
        mut notes: UnboundedReceiver<String>,
        every: Duration,
    ) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let note = tokio::select! {
                note = notes.recv() => match note {
                    Some(note) => Some(note),
                    None => return,
                },
                _ = tick.tick() => None,
            };
            let Some(this) = deployer.upgrade() else {
                return;
            };
            match note {
                Some(note) => this.follow(&note).await,
                None => this.catch_up_with_cluster(false).await,
            }
        }
    }

    /// An announced deploy: loaded here when this host runs its service.
    async fn follow(&self, note: &str) {
        let note: Value = serde_json::from_str(note).unwrap_or_default();
        let (Some(service), Some(digest), Some(by), Some(id)) = (
            note["service"].as_str(),
            note["digest"].as_str(),
            note["by"].as_str(),
            note["id"].as_str(),
        ) else {
            tracing::warn!("an announcement of a deploy that says nothing readable is ignored");
            return;
        };
        if self.cluster.get().is_some_and(|link| link.host == by) {
            return;
        }
        self.catch_up(service, digest, Some(id), by, true).await;
    }

    /// Loads the cluster's current version of each service this host runs, where it differs
    /// from the one loaded here. With `retry`, also versions this host refused before.
    pub(super) async fn catch_up_with_cluster(&self, retry: bool) {
        if self.cluster.get().is_none() {
            return;
        }
        match self.storage.cluster_components().await {
            Ok(cluster) => {
                for component in cluster {
                    let (service, digest) = (&component.service, &component.digest);
                    (self.catch_up(service, digest, None, &component.deployed_by, retry)).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the cluster's versions; trying again later")
            }
        }
    }

    /// Makes `digest` this host's current version of `service` (cluster deploy `id`, if it is
    /// an announced one), through the same checks as any deploy, and records the result; a
    /// host that does not run the service ignores it.
    async fn catch_up(&self, service: &str, digest: &str, id: Option<&str>, by: &str, retry: bool) {
        let Some(link) = self.cluster.get() else {
            return;
        };
        let _sharing = self.sharing.lock().await;
        let Some(current) = self.registry.service(service) else {
            return;
        };
        if current.digest == digest {
            if let Some(id) = id
                && let Err(error) = (self.storage)
                    .record_current(&link.host, service, digest, Some(id), None)
                    .await
            {
                tracing::warn!(service, %error, "could not answer a deploy");
            }
            return;
        }
        if !retry && self.refused.lock().expect("refused lock").contains(digest) {
            return;
        }
        let cluster = match self.storage.cluster_components().await {
            Ok(cluster) => cluster,
            Err(error) => {
                tracing::warn!(service, %error, "could not read the cluster's versions; trying again later");
                return;
            }
        };
        if !cluster
            .iter()
            .any(|c| c.service == service && c.digest == digest)
        {
            // An announcement a later deploy overtook: that one is the cluster's version.
            return;
        }
        let bytes = match self.storage.stored_version(digest).await {
            Ok(Some((_, bytes))) => bytes,
            Ok(None) => {
                let problem = "the cluster's database does not have its bytes";
                (self.refused.lock().expect("refused lock")).insert(digest.to_string());
                self.refuse(link, service, digest, id, problem).await;
                return;
            }
            Err(error) => {
                tracing::warn!(service, %error, "could not read a deployed version; trying again later");
                return;
            }
        };
        let origin = Origin::Cluster {
            service: service.to_string(),
            id: id.map(str::to_string),
            by: by.to_string(),
        };
        match self.deploy(bytes, origin).await {
            Ok(version) => {
                self.refused.lock().expect("refused lock").remove(digest);
                tracing::info!(
                    service,
                    digest = version.short_digest(),
                    "loaded the cluster's version"
                );
            }
            Err(error) => {
                if matches!(error, DeployError::Invalid(_) | DeployError::Conflict(_)) {
                    self.refused
                        .lock()
                        .expect("refused lock")
                        .insert(digest.to_string());
                }
                self.refuse(link, service, digest, id, &error.to_string())
                    .await;
            }
        }
    }

    /// Records that this host could not load `digest` of `service`, and why.
    async fn refuse(
        &self,
        link: &ClusterLink,
        service: &str,
        digest: &str,
        id: Option<&str>,
        problem: &str,
    ) {
        tracing::error!(
            service,
            digest,
            "the cluster's version cannot be loaded here; the loaded version keeps serving: {problem}"
        );
        if let Err(error) = (self.storage)
            .record_failed(&link.host, service, digest, id, problem)
            .await
        {
            tracing::warn!(service, %error, "could not record the failure in the database");
        }
    }
}
