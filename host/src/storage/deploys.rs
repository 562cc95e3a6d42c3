//! The storage capability of cluster-wide deploys: the bytes of component versions by digest,
//! the cluster's current version of each service (the last deploy's), and what each host runs
//! or could not load. Used only with the NATS broker, where hosts share one database.

use std::future::Future;

use super::StorageError;

/// The cluster's current version of a service: the last one deployed to any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterComponent {
    pub service: String,
    pub digest: String,
    /// The host that deployed it.
    pub deployed_by: String,
    pub deployed_at: i64,
}

/// What one host runs of one service, as it last recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostComponent {
    pub host: String,
    pub service: String,
    /// The version current there.
    pub current: String,
    /// The last cluster deploy it could not load (since its current version last changed), and
    /// why.
    pub failed: Option<(String, String)>,
    /// The cluster deploy this row last answered.
    pub deploy_id: Option<String>,
    /// When the host recorded it (ms since the epoch).
    pub at: i64,
    /// The host's last heartbeat (ms since the epoch), none once it is forgotten.
    pub heartbeat_at: Option<i64>,
}

/// A new version as the cluster records it: stored, and made the service's current one.
#[derive(Debug, Clone, Copy)]
pub struct ClusterDeploy<'a> {
    pub service: &'a str,
    pub digest: &'a str,
    pub bytes: &'a [u8],
    /// The host it was deployed to.
    pub by: &'a str,
}

/// Versions' bytes, the cluster's current versions and what each host runs.
pub trait Deploys {
    /// Keeps a version's bytes (once per digest), so that any host can load it.
    fn store_version(
        &self,
        service: &str,
        digest: &str,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Keeps a version's bytes and makes it the cluster's current version of its service, in
    /// one transaction.
    fn deploy_to_cluster(
        &self,
        deploy: ClusterDeploy<'_>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// A stored version: its service and bytes.
    fn stored_version(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<(String, Vec<u8>)>, StorageError>> + Send;

    /// The cluster's current version of every service deployed to it.
    fn cluster_components(
        &self,
    ) -> impl Future<Output = Result<Vec<ClusterComponent>, StorageError>> + Send;

    /// Records that `digest` is host `host`'s current version of `service` (answering cluster
    /// deploy `deploy_id`, if it does), and that `released` stopped being current there.
    fn record_current(
        &self,
        host: &str,
        service: &str,
        digest: &str,
        deploy_id: Option<&str>,
        released: Option<&str>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Records that host `host` could not load `digest` of `service` (cluster deploy
    /// `deploy_id`), and why; its current version stays what it was.
    fn record_failed(
        &self,
        host: &str,
        service: &str,
        digest: &str,
        deploy_id: Option<&str>,
        error: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Records that host `host` no longer runs `service`.
    fn forget_component(
        &self,
        host: &str,
        service: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// What every host runs (of `service`, if given), with each host's last heartbeat.
    fn host_components(
        &self,
        service: Option<&str>,
    ) -> impl Future<Output = Result<Vec<HostComponent>, StorageError>> + Send;

    /// Forgets stored versions nothing needs: not the cluster's current version of a service,
    /// not current on any host, no unfinished saga's, and released (or stored) before `before`
    /// (ms since the epoch). Returns how many.
    fn prune_versions(&self, before: i64)
    -> impl Future<Output = Result<u64, StorageError>> + Send;
}
