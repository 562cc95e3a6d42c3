//! Deploying components while the host serves: every new version — from the components
//! directory at start, from the directory watcher, or from the admin API — is compiled (off the
//! async threads), linked, described and checked against the other services before it replaces
//! the old one atomically; a refused one changes nothing. A replaced version stays loaded while
//! sagas that started on it are running, and its bytes are kept in the data directory so that
//! they can finish on it after a restart too. On a cluster, a deploy reaches every host that runs
//! the service (`cluster.rs`).

mod cluster;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;

pub use cluster::{Announce, ClusterLink, ClusterView, DEPLOY_WAIT, HostAnswer, HostOutcome};

use crate::runtime::registry::{Fetch, Registry};
use crate::runtime::{Runtime, ServiceVersion};
use crate::storage::{Aggregates, Deploys, Executions, Storage};
use crate::telemetry::metrics;

/// Where a new version comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A file of the components directory.
    File(PathBuf),
    /// The admin API; with the service name the URL names, if any.
    Api(Option<String>),
    /// Another host's deploy to the cluster, of service `service` (cluster deploy `id`; none
    /// when this host catches up with the cluster's version at start or after a missed
    /// announcement).
    Cluster {
        service: String,
        id: Option<String>,
        by: String,
    },
}

/// Why a deploy (or removal) was refused or failed; the service keeps its current version.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Not a valid component of ours: not wasm, another world, a broken manifest or saga.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but it clashes with what is loaded (a route, a topic, another file).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// Which file of the components directory provides which service, as last loaded, and which
/// files were refused (not tried again until they change).
#[derive(Default)]
pub struct Sources {
    by_path: HashMap<PathBuf, Source>,
    refused: HashMap<PathBuf, (u64, Option<SystemTime>)>,
}

#[derive(Clone)]
struct Source {
    service: String,
    digest: String,
    /// What the watcher compares to notice a change without reading the file.
    stamp: (u64, Option<SystemTime>),
}

impl Sources {
    fn path_of(&self, service: &str) -> Option<PathBuf> {
        self.by_path
            .iter()
            .find(|(_, source)| source.service == service)
            .map(|(path, _)| path.clone())
    }
}

fn stamp(path: &Path) -> (u64, Option<SystemTime>) {
    std::fs::metadata(path)
        .map(|m| (m.len(), m.modified().ok()))
        .unwrap_or((0, None))
}

/// `*.wasm` files of a directory, in name order.
pub fn component_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

/// The one path every new version of a service takes — at start, from the directory watcher,
/// from the admin API — and the record of which file provides which service.
pub struct Deployer {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    storage: Storage,
    /// Where the bytes of versions with sagas are kept (`DATA/versions`).
    versions_dir: PathBuf,
    /// The watched components directory.
    components_dir: PathBuf,
    /// Which component file provides which service.
    sources: std::sync::Mutex<Sources>,
    /// Deploys happen one at a time.
    deploying: tokio::sync::Mutex<()>,
    /// Versions replaced lately, and when: a call still running on one may start a saga on it,
    /// so its bytes stay until no such call can be running (the longest call's time).
    replaced: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    /// The cluster this host belongs to (NATS broker), if any: deploys are shared through it.
    cluster: OnceLock<ClusterLink>,
    /// A deploy here and its sharing with the cluster happen together, apart from this host
    /// catching up with the cluster (which could otherwise undo it in between).
    sharing: tokio::sync::Mutex<()>,
    /// Cluster deploys this host refused, by digest: not tried again until deployed again.
    refused: std::sync::Mutex<HashSet<String>>,
    /// Versions that could not be loaded for their sagas lately, and when.
    unfetchable: std::sync::Mutex<HashMap<String, Instant>>,
}

/// How long a version that could not be loaded for its sagas is not tried again.
const FETCH_AGAIN_AFTER: Duration = Duration::from_secs(5);

impl Deployer {
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        storage: Storage,
        data_dir: &Path,
        components_dir: PathBuf,
    ) -> Self {
        Deployer {
            runtime,
            registry,
            storage,
            versions_dir: data_dir.join("versions"),
            components_dir,
            sources: Default::default(),
            deploying: tokio::sync::Mutex::new(()),
            replaced: Default::default(),
            cluster: OnceLock::new(),
            sharing: tokio::sync::Mutex::new(()),
            refused: Default::default(),
            unfetchable: Default::default(),
        }
    }

    fn version_store(&self, digest: &str) -> PathBuf {
        self.versions_dir.join(format!("{digest}.wasm"))
    }

    /// Validates a component completely and installs it, replacing its service's current
    /// version; a component the API deploys is also written to the components directory, so
    /// that a restart loads it again. Then removes from disk what no version needs any more.
    pub async fn deploy(
        &self,
        bytes: Vec<u8>,
        origin: Origin,
    ) -> Result<Arc<ServiceVersion>, DeployError> {
        let deployed = self.deploy_one(bytes, origin).await;
        if deployed.is_ok() {
            self.prune_disk().await;
        }
        deployed
    }

    /// `deploy` without the pruning, counted.
    async fn deploy_one(
        &self,
        bytes: Vec<u8>,
        origin: Origin,
    ) -> Result<Arc<ServiceVersion>, DeployError> {
        let deployed = self.install(bytes, origin).await;
        metrics::deploy(match &deployed {
            Ok(_) => "ok",
            Err(DeployError::Invalid(_)) => "invalid",
            Err(DeployError::Conflict(_)) => "conflict",
            Err(_) => "failed",
        });
        deployed
    }

    async fn install(
        &self,
        bytes: Vec<u8>,
        origin: Origin,
    ) -> Result<Arc<ServiceVersion>, DeployError> {
        let _one_at_a_time = self.deploying.lock().await;
        let source = match &origin {
            Origin::File(path) => path.display().to_string(),
            Origin::Api(Some(name)) => format!("component {name} (admin API)"),
            Origin::Api(None) => "component (admin API)".to_string(),
            Origin::Cluster { service, by, .. } => {
                format!("component {service} (deployed to the cluster through host {by})")
            }
        };
        let version = self
            .runtime
            .load(bytes.clone(), source.clone())
            .await
            .map_err(|e| DeployError::Invalid(e.to_string()))?;
        let name = version.name().to_string();
        if let Origin::Api(Some(expected))
        | Origin::Cluster {
            service: expected, ..
        } = &origin
            && *expected != name
        {
            return Err(DeployError::Invalid(format!(
                "{source}: the component describes itself as service {name:?}, not {expected:?}; deploy it as {name}"
            )));
        }
        let owner = self.sources.lock().expect("sources lock").path_of(&name);
        if let (Origin::File(path), Some(owner)) = (&origin, &owner)
            && owner != path
        {
            return Err(DeployError::Conflict(format!(
                "{source}: service {name} is already provided by {}; remove one of the two files",
                owner.display()
            )));
        }
        if !version.manifest.sagas.is_empty() {
            // Sagas may outlive this version being current: keep its bytes to resume them.
            let stored = self.version_store(&version.digest);
            if !stored.exists() {
                crate::files::write_durably(&stored, &bytes).map_err(|e| {
                    DeployError::Io(format!("cannot keep {}: {e}", stored.display()))
                })?;
            }
        }
        for aggregate in version.manifest.aggregates.values() {
            for field in &aggregate.indexes {
                self.storage
                    .ensure_index(&name, &aggregate.name, field)
                    .await?;
            }
        }
        let replaced = self
            .registry
            .install(version.clone())
            .await
            .map_err(|conflict| DeployError::Conflict(format!("{source}: {conflict}")))?;
        let deploy_id = match &origin {
            Origin::Cluster { id, .. } => id.clone(),
            _ => None,
        };
        let file = match origin {
            Origin::File(path) => path,
            Origin::Api(_) | Origin::Cluster { .. } => {
                let path =
                    owner.unwrap_or_else(|| self.components_dir.join(format!("{name}.wasm")));
                if let Err(error) = crate::files::write_durably(&path, &bytes) {
                    tracing::warn!(path = %path.display(), %error, "deployed, but could not write the component file; a restart will load the previous one");
                }
                path
            }
        };
        self.sources.lock().expect("sources lock").by_path.insert(
            file.clone(),
            Source {
                service: name.clone(),
                digest: version.digest.clone(),
                stamp: stamp(&file),
            },
        );
        let released = (replaced.as_ref())
            .map(|old| old.digest.clone())
            .filter(|old| *old != version.digest);
        if let Some(replaced) = replaced
            && replaced.digest != version.digest
        {
            self.replaced
                .lock()
                .expect("replaced lock")
                .push((replaced.digest.clone(), std::time::Instant::now()));
            self.retire_if_pinned(replaced).await;
        }
        if let Some(link) = self.cluster.get() {
            link.record(
                &self.storage,
                &version,
                &bytes,
                deploy_id.as_deref(),
                released.as_deref(),
            )
            .await;
        }
        tracing::info!(
            service = name,
            digest = version.short_digest(),
            source,
            "component deployed"
        );
        Ok(version)
    }

    /// Keeps the disk bounded: removes the stored bytes of versions that are neither loaded
    /// (current, or kept for their sagas), nor the version of an unfinished saga, nor replaced
    /// so lately that a call still running on it could start a saga; and the compile cache's
    /// least recently used artifacts beyond its limit (never a loaded version's). Run after a
    /// deploy, and once when the components have loaded at start, with deploys held (a deploy
    /// writes its version's bytes before the version is installed).
    async fn prune_disk(&self) {
        let _one_at_a_time = self.deploying.lock().await;
        let recent = {
            let longest_call = self.runtime.config().limits.longest_call();
            let mut replaced = self.replaced.lock().expect("replaced lock");
            replaced.retain(|(_, at)| at.elapsed() <= longest_call);
            replaced
                .iter()
                .map(|(digest, _)| digest.clone())
                .collect::<Vec<_>>()
        };
        let mut needed: std::collections::HashSet<String> = self
            .registry
            .current()
            .by_name
            .values()
            .chain(self.registry.retired().iter())
            .map(|version| version.digest.clone())
            .chain(recent)
            .collect();
        match self.storage.running_versions().await {
            Ok(running) => needed.extend(running.into_iter().map(|(_, digest, _)| digest)),
            Err(error) => {
                tracing::warn!(%error, "could not read which versions sagas run on; pruning nothing");
                return;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.versions_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let digest = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                if path.extension().is_some_and(|e| e == "wasm") && !needed.contains(digest) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::debug!(path = %path.display(), "removed a version no saga runs on")
                        }
                        Err(error) => {
                            tracing::warn!(path = %path.display(), %error, "could not remove an unused version")
                        }
                    }
                }
            }
        }
        self.runtime.prune_cache(&needed);
    }

    /// Removes a service: its routes and topics go at once; a version sagas still run on stays
    /// loaded for them. Its file leaves the components directory.
    pub async fn undeploy(&self, name: &str) -> Result<Arc<ServiceVersion>, DeployError> {
        let _one_at_a_time = self.deploying.lock().await;
        let Some(removed) = self.registry.remove(name).await else {
            return Err(DeployError::Invalid(format!(
                "no service named {name:?} is loaded"
            )));
        };
        let path = {
            let mut sources = self.sources.lock().expect("sources lock");
            let path = sources.path_of(name);
            if let Some(path) = &path {
                sources.by_path.remove(path);
            }
            path
        };
        if let Some(path) = path
            && let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove the component file");
        }
        self.retire_if_pinned(removed.clone()).await;
        if let Some(link) = self.cluster.get()
            && let Err(error) = self.storage.forget_component(&link.host, name).await
        {
            tracing::warn!(%error, "removed, but the cluster's record still says this host runs it");
        }
        tracing::info!(service = name, "component removed");
        Ok(removed)
    }

    /// Keeps a version that is no longer current loaded if sagas run on it.
    async fn retire_if_pinned(&self, version: Arc<ServiceVersion>) {
        match self.storage.running_versions().await {
            Ok(running) => {
                if running
                    .iter()
                    .any(|(s, v, _)| s == version.name() && *v == version.digest)
                {
                    self.registry.retire(version);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not count the sagas on a replaced version; keeping it");
                self.registry.retire(version);
            }
        }
    }

    /// At start: loads every component of the directory (any failure stops the start), then
    /// the older versions that unfinished sagas were started on.
    pub async fn load_components(&self) -> Result<(), DeployError> {
        let dir = &self.components_dir;
        let files = component_files(dir).map_err(|e| {
            DeployError::Io(format!(
                "components directory {}: {e}; build the bundled components with `make components` or pass --components DIR",
                dir.display()
            ))
        })?;
        if files.is_empty() {
            return Err(DeployError::Io(format!(
                "components directory {} has no .wasm files; build the bundled components with `make components`",
                dir.display()
            )));
        }
        for path in files {
            let bytes = std::fs::read(&path)
                .map_err(|e| DeployError::Io(format!("{}: cannot read it: {e}", path.display())))?;
            self.deploy_one(bytes, Origin::File(path)).await?;
        }
        // On a cluster, the version the cluster last deployed wins over the directory's file.
        self.catch_up_with_cluster(true).await;
        for (service, digest, count) in self.storage.running_versions().await? {
            // On a cluster, the sagas of services other hosts run are theirs.
            let elsewhere =
                self.cluster.get().is_some() && self.registry.service(&service).is_none();
            if elsewhere || self.registry.version(&service, &digest).is_some() {
                continue;
            }
            match self.load_pinned(&service, &digest).await {
                Ok(_) => {}
                Err(problem) => tracing::error!(
                    service,
                    digest,
                    sagas = count,
                    "sagas started on an older version of this service cannot resume until it is loaded: {problem}"
                ),
            }
        }
        self.prune_disk().await;
        Ok(())
    }

    /// Loads version `digest` of `service` for the sagas that run on it, from the version store
    /// or (on a cluster) the database, and keeps it loaded beside the current version.
    async fn load_pinned(
        &self,
        service: &str,
        digest: &str,
    ) -> Result<Arc<ServiceVersion>, String> {
        let stored = self.version_store(digest);
        let (bytes, source) = match std::fs::read(&stored) {
            Ok(bytes) => (bytes, stored.display().to_string()),
            Err(error) if self.cluster.get().is_none() => {
                return Err(format!("{}: {error}", stored.display()));
            }
            Err(error) => match self.storage.stored_version(digest).await {
                Ok(Some((_, bytes))) => {
                    let short = &digest[..digest.len().min(12)];
                    (
                        bytes,
                        format!("version {short} of {service} (the cluster's database)"),
                    )
                }
                Ok(None) => {
                    return Err(format!(
                        "{}: {error}, and the cluster's database does not have it either",
                        stored.display()
                    ));
                }
                Err(failure) => {
                    return Err(format!(
                        "{}: {error}, and the cluster's database could not be read: {failure}",
                        stored.display()
                    ));
                }
            },
        };
        let version =
            (self.runtime.load(bytes.clone(), source).await).map_err(|e| e.to_string())?;
        if version.name() != service || version.digest != digest {
            return Err(format!(
                "the stored bytes are version {} of service {}, not {digest} of {service}",
                version.short_digest(),
                version.name()
            ));
        }
        if !stored.exists()
            && let Err(error) = crate::files::write_durably(&stored, &bytes)
        {
            tracing::warn!(path = %stored.display(), %error, "could not keep a version sagas run on");
        }
        self.registry.retire(version.clone());
        Ok(version)
    }

    /// Watches the components directory: a new or changed file is deployed, a removed one
    /// undeployed; a refused one is logged and the old version keeps serving.
    pub async fn watch(deployer: std::sync::Weak<Deployer>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(this) = deployer.upgrade() else {
                return;
            };
            let Ok(files) = component_files(&this.components_dir) else {
                continue;
            };
            let (known, refused) = {
                let sources = this.sources.lock().expect("sources lock");
                (sources.by_path.clone(), sources.refused.clone())
            };
            for path in &files {
                let now = stamp(path);
                if known.get(path).is_some_and(|source| source.stamp == now)
                    || refused.get(path) == Some(&now)
                {
                    continue;
                }
                let Ok(bytes) = std::fs::read(path) else {
                    continue;
                };
                if known
                    .get(path)
                    .is_some_and(|source| source.digest == crate::runtime::digest(&bytes))
                {
                    // Touched, not changed.
                    if let Some(source) = this
                        .sources
                        .lock()
                        .expect("sources lock")
                        .by_path
                        .get_mut(path)
                    {
                        source.stamp = now;
                    }
                    continue;
                }
                match this
                    .deploy_everywhere(bytes, Origin::File(path.clone()), false)
                    .await
                {
                    Ok(_) => {
                        this.sources
                            .lock()
                            .expect("sources lock")
                            .refused
                            .remove(path);
                    }
                    Err(error) => {
                        tracing::error!(file = %path.display(), "the component was refused; the loaded version keeps serving: {error}");
                        this.sources
                            .lock()
                            .expect("sources lock")
                            .refused
                            .insert(path.clone(), now);
                    }
                }
            }
            for (path, source) in known {
                let still_current = this
                    .registry
                    .service(&source.service)
                    .is_some_and(|v| v.digest == source.digest);
                if !files.contains(&path)
                    && still_current
                    && let Err(error) = this.undeploy(&source.service).await
                {
                    tracing::warn!(file = %path.display(), "{error}");
                }
            }
        }
    }
}

impl Fetch for Deployer {
    fn fetch<'a>(
        &'a self,
        service: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Option<Arc<ServiceVersion>>> {
        Box::pin(async move {
            let failed_lately = (self.unfetchable.lock().expect("unfetchable lock"))
                .get(digest)
                .is_some_and(|at| at.elapsed() < FETCH_AGAIN_AFTER);
            if failed_lately {
                return None;
            }
            // Held like a deploy: pruning must not remove the bytes before the version is kept.
            let _one_at_a_time = self.deploying.lock().await;
            if let Some(version) = self.registry.version(service, digest) {
                return Some(version);
            }
            match self.load_pinned(service, digest).await {
                Ok(version) => {
                    tracing::info!(
                        service,
                        digest = version.short_digest(),
                        "loaded the version a saga here runs on"
                    );
                    Some(version)
                }
                Err(problem) => {
                    tracing::error!(
                        service,
                        digest,
                        "a saga runs on a version this host cannot load: {problem}"
                    );
                    (self.unfetchable.lock().expect("unfetchable lock"))
                        .insert(digest.to_string(), Instant::now());
                    None
                }
            }
        })
    }
}
