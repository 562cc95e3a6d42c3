//! The WebAssembly runtime: one wasmtime engine (component model, async, pooling allocator,
//! epoch interruption), components compiled once and kept as `InstancePre`, and a fresh
//! instance per call with limits on memory, CPU time and wall-clock time.

pub mod bindings;
mod call;
mod compute;
mod engine;
mod exports;
mod imports;
pub mod limits;
pub mod manifest;
mod outcome;
pub mod registry;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::Digest;
use tokio::sync::Semaphore;
use tracing::Instrument;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use bindings::types as wit;
pub use call::{
    Access, Budget, CallContext, CallEnv, CallState, Caller, Effects, Identity, RaceTrap,
    SagaRunner, Scope,
};
use engine::{Limiter, engine_config};
use exports::{Call, Exports, Returned, run_call};
pub use imports::json_kind;
use manifest::Manifest;
pub use outcome::CallError;
pub(crate) use outcome::LimitExceeded;
use outcome::{check_size, classify, limit_key, root_cause};

use crate::telemetry::metrics;

pub use limits::{LimitTable, Limits};

/// How the runtime runs components.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// What a call may use, by default and per service.
    pub limits: LimitTable,
    /// Instances alive at once; the pooling allocator reserves room for this many.
    pub max_instances: u32,
    /// Where compiled components are cached; none: compile at every load.
    pub cache_dir: Option<PathBuf>,
    /// The compile cache's size at most, in bytes; the least recently used artifacts go first.
    pub cache_max_bytes: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            limits: LimitTable::default(),
            max_instances: 1000,
            cache_dir: None,
            cache_max_bytes: 1 << 30,
        }
    }
}

/// How much of its standard error a call may write; the tail of it is shown when it traps.
const STDERR_BYTES: usize = 64 * 1024;

/// The version of the WIT package (`wit/saga-host.wit`) this host implements.
pub const WIT_VERSION: &str = "0.2.0";

/// Bytes of linear memory a pool slot keeps resident between calls: a small service's whole
/// memory, reset in place. Beyond it, memory is returned to the kernel when the call ends.
pub const KEEP_RESIDENT_MEMORY: usize = 2 << 20;

/// How often the engine's epoch advances: the granularity of CPU-time checks and of yielding
/// a long-running call back to the async scheduler.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The WebAssembly runtime: loads components and makes calls (see the module).
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    config: RuntimeConfig,
    instances: Arc<Semaphore>,
    pooling: bool,
    ticker_stop: Arc<AtomicBool>,
    /// Where calls that compute for long finish, at a lower priority.
    long_calls: compute::Pool,
}

/// A loaded component: one version of one service.
pub struct ServiceVersion {
    pub manifest: Manifest,
    /// What one call of it may use.
    pub limits: Limits,
    /// Its handler calls (requests, messages) running at once: `limits.concurrency`.
    pub calls: Arc<Semaphore>,
    /// SHA-256 of the component's bytes, hex.
    pub digest: String,
    /// Where it came from (a file path, or the admin API).
    pub source: String,
    /// Milliseconds since the epoch.
    pub loaded_at: i64,
    pre: InstancePre<CallState>,
    exports: Exports,
    /// What its calls typically cost: past a multiple of it a call is paced (see `compute`).
    typical_cpu: compute::TypicalCpu,
}

impl ServiceVersion {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn orchestrates(&self) -> bool {
        self.exports.orchestrates()
    }

    pub fn handles_command(&self, topic: &str) -> bool {
        self.manifest.handlers.iter().any(|h| {
            h.triggers
                .iter()
                .any(|t| matches!(t, wit::Trigger::BrokerCommand(x) if x == topic))
        })
    }

    /// The first 12 hex digits of the digest, for logs and listings.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12.min(self.digest.len())]
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct LoadError {
    pub origin: String,
    pub problem: String,
}

/// The result of a call and the call's context (its accumulated writes and messages).
pub type Called<T> = (Result<T, CallError>, CallContext);

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, wasmtime::Error> {
        let (engine, pooling) = match Engine::new(&engine_config(&config, true)) {
            Ok(engine) => (engine, true),
            Err(error) => {
                // The pool reserves address space up front; where that is refused (a ulimit),
                // allocate instances on demand instead.
                tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                (Engine::new(&engine_config(&config, false))?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        imports::add_to_linker(&mut linker)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        {
            let engine = engine.clone();
            let (stop, ticks) = (ticker_stop.clone(), ticks.clone());
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(wasmtime::Error::new)?;
        }
        Ok(Runtime {
            instances: Arc::new(Semaphore::new(config.max_instances as usize)),
            engine,
            linker,
            config,
            pooling,
            ticker_stop,
            long_calls: compute::Pool::new(ticks),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn uses_pooling(&self) -> bool {
        self.pooling
    }

    /// Compiles, links and describes a component, checking everything a later call relies on.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        source: String,
    ) -> Result<Arc<ServiceVersion>, LoadError> {
        let fail = |problem: String| LoadError {
            origin: source.clone(),
            problem,
        };
        let digest = digest(&bytes);
        let component = self.compile(bytes, &digest).await.map_err(fail)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            fail(match self.other_wit_version(&component) {
                Some(theirs) => format!(
                    "it was built for saga:host@{theirs}, and this host implements saga:host@{WIT_VERSION}; rebuild it against wit/saga-host.wit"
                ),
                None => format!(
                    "it cannot be linked against the host: {}; a service may only import the saga:host@{WIT_VERSION} interfaces and WASI",
                    root_cause(&e)
                ),
            })
        })?;
        let exports = Exports::of(&pre).ok_or_else(|| {
            fail(format!(
                "it does not export saga:host/service@{WIT_VERSION}; build it for the `participant` or `orchestrator` world of wit/saga-host.wit"
            ))
        })?;
        let orchestrates = exports.orchestrates();
        let defaults = self.config.limits.defaults.clone();
        let provisional = Arc::new(ServiceVersion {
            calls: Arc::new(Semaphore::new(defaults.concurrency)),
            limits: defaults,
            manifest: Manifest {
                name: "(loading)".into(),
                handlers: Vec::new(),
                aggregates: Default::default(),
                sagas: Default::default(),
            },
            digest: digest.clone(),
            source: source.clone(),
            loaded_at: crate::storage::now_ms(),
            pre: pre.clone(),
            exports: exports.clone(),
            typical_cpu: Default::default(),
        });
        let context = CallContext::new(provisional.clone(), None, Scope::Direct, Access::Nothing);
        let (described, _) = self.invoke(&provisional, context, Call::Describe).await;
        let described = match described {
            Ok(Returned::Manifest(manifest)) => manifest,
            Ok(_) => unreachable!("describe returns a manifest"),
            Err(error) => return Err(fail(format!("describe failed: {error}"))),
        };
        let manifest = Manifest::from_wit(described, orchestrates)
            .map_err(|e| fail(format!("its manifest is invalid: {e}")))?;
        let limits = self.config.limits.for_service(&manifest.name).clone();
        Ok(Arc::new(ServiceVersion {
            calls: Arc::new(Semaphore::new(limits.concurrency)),
            limits,
            manifest,
            digest,
            source,
            loaded_at: provisional.loaded_at,
            pre,
            exports,
            typical_cpu: Default::default(),
        }))
    }

    /// The version of the saga:host package a component imports, when it is not this host's.
    fn other_wit_version(&self, component: &Component) -> Option<String> {
        component
            .component_type()
            .imports(&self.engine)
            .filter_map(|(name, _)| name.strip_prefix("saga:host/"))
            .filter_map(|interface| interface.split_once('@').map(|(_, v)| v.to_string()))
            .find(|version| version != WIT_VERSION)
    }

    async fn compile(&self, bytes: Vec<u8>, digest: &str) -> Result<Component, String> {
        if !bytes.starts_with(b"\0asm") {
            return Err("it is not a WebAssembly binary (it does not start with \\0asm)".into());
        }
        let engine = self.engine.clone();
        let cache = self.config.cache_dir.as_ref().map(|dir| {
            let compatibility = {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                engine.precompile_compatibility_hash().hash(&mut hasher);
                hasher.finish()
            };
            dir.join(format!("{digest}-{compatibility:016x}.cwasm"))
        });
        let short = digest[..12].to_string();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            if let Some(path) = &cache
                && path.exists()
            {
                // Safety: the cache directory is the host's own; an artifact there was written
                // by this engine configuration for exactly these bytes (both are in its name).
                match unsafe { Component::deserialize_file(&engine, path) } {
                    Ok(component) => {
                        // Used now: the cache's pruning goes by this time.
                        let _ = std::fs::File::options()
                            .append(true)
                            .open(path)
                            .and_then(|file| file.set_modified(std::time::SystemTime::now()));
                        metrics::component_loaded(true, started.elapsed());
                        tracing::info!(digest = short, ms = started.elapsed().as_millis() as u64, "component loaded from the compile cache");
                        return Ok(component);
                    }
                    Err(error) => tracing::warn!(path = %path.display(), %error, "ignoring an unreadable cached artifact"),
                }
            }
            let component = Component::new(&engine, &bytes).map_err(|e| {
                format!("it is not a valid WebAssembly component: {}", root_cause(&e))
            })?;
            metrics::component_loaded(false, started.elapsed());
            tracing::info!(digest = short, ms = started.elapsed().as_millis() as u64, "component compiled");
            if let Some(path) = &cache
                && let Err(error) = write_cache(&component, path)
            {
                tracing::warn!(path = %path.display(), %error, "could not cache a compiled component");
            }
            Ok(component)
        })
        .await
        .map_err(|e| format!("compilation panicked: {e}"))?
    }

    /// Removes the compile cache's least recently used artifacts until it holds at most
    /// `cache_max_bytes`, keeping those of the `needed` digests whatever their size.
    pub fn prune_cache(&self, needed: &std::collections::HashSet<String>) {
        let Some(dir) = &self.config.cache_dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut artifacts: Vec<(std::time::SystemTime, u64, PathBuf, bool)> = entries
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "cwasm"))
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                let path = entry.path();
                let name = path.file_name()?.to_str()?;
                let keep = needed
                    .iter()
                    .any(|digest| name.starts_with(digest.as_str()));
                Some((meta.modified().ok()?, meta.len(), path, keep))
            })
            .collect();
        let mut total: u64 = artifacts.iter().map(|a| a.1).sum();
        artifacts.sort();
        for (_, size, path, keep) in artifacts {
            if total <= self.config.cache_max_bytes {
                break;
            }
            if keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => total -= size,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "could not prune the compile cache")
                }
            }
        }
    }

    pub async fn handle(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        request: wit::Request,
    ) -> Called<Result<wit::Response, wit::Error>> {
        let (result, context) = self.invoke(version, context, Call::Handle(request)).await;
        (
            result.map(|r| match r {
                Returned::Response(r) => r,
                _ => unreachable!("handle returns a response"),
            }),
            context,
        )
    }

    pub async fn prepare(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        saga: &str,
        callback: &str,
        saga_context: String,
    ) -> Called<Result<wit::SagaRequest, wit::Error>> {
        let call = Call::Prepare {
            saga: saga.into(),
            callback: callback.into(),
            context: saga_context,
        };
        let (result, context) = self.invoke(version, context, call).await;
        (
            result.map(|r| match r {
                Returned::Request(r) => r,
                _ => unreachable!("prepare returns a request"),
            }),
            context,
        )
    }

    pub async fn on_reply(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        saga: &str,
        callback: &str,
        saga_context: String,
        reply: wit::Reply,
    ) -> Called<Result<String, wit::Error>> {
        let call = Call::OnReply {
            saga: saga.into(),
            callback: callback.into(),
            context: saga_context,
            reply,
        };
        self.invoke_for_context(version, context, call).await
    }

    pub async fn execute(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        saga: &str,
        callback: &str,
        saga_context: String,
    ) -> Called<Result<String, wit::Error>> {
        let call = Call::Execute {
            saga: saga.into(),
            callback: callback.into(),
            context: saga_context,
        };
        self.invoke_for_context(version, context, call).await
    }

    pub async fn condition(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        saga: &str,
        callback: &str,
        saga_context: String,
    ) -> Called<Result<bool, wit::Error>> {
        let call = Call::Condition {
            saga: saga.into(),
            callback: callback.into(),
            context: saga_context,
        };
        let (result, context) = self.invoke(version, context, call).await;
        (
            result.map(|r| match r {
                Returned::Decision(r) => r,
                _ => unreachable!("condition returns a decision"),
            }),
            context,
        )
    }

    async fn invoke_for_context(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        call: Call,
    ) -> Called<Result<String, wit::Error>> {
        let (result, context) = self.invoke(version, context, call).await;
        (
            result.map(|r| match r {
                Returned::Context(r) => r,
                _ => unreachable!("callbacks return a context"),
            }),
            context,
        )
    }

    /// Makes one call, in a span of its own (where the component's log lines go), and counts it.
    async fn invoke(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        call: Call,
    ) -> Called<Returned> {
        let export = call.export();
        let (saga, callback) = call.callback();
        let span = tracing::debug_span!(
            "call",
            service = version.manifest.name,
            export,
            saga,
            callback,
            saga_id = context.who.saga_id().map(tracing::field::display),
            message_id = context.who.message_id.map(tracing::field::display),
        );
        let (result, context) = self.call(version, context, call).instrument(span).await;
        let outcome = match &result {
            Ok(returned) if returned.is_error() => "error",
            Ok(_) => "ok",
            Err(error) => error.outcome(),
        };
        let refused_on = match &result {
            Err(CallError::Limit { reason, .. }) => limit_key(reason),
            _ => None,
        };
        metrics::component_call(
            &version.manifest.name,
            export,
            outcome,
            Duration::from_micros(context.cost.wall_us),
            Duration::from_micros(context.cost.cpu_us),
            refused_on,
        );
        (result, context)
    }

    /// Instantiates the component in a fresh store and makes one call, within the limits.
    async fn call(
        &self,
        version: &Arc<ServiceVersion>,
        context: CallContext,
        call: Call,
    ) -> Called<Returned> {
        let service = version.manifest.name.clone();
        let _permit = self
            .instances
            .acquire()
            .await
            .expect("the instance semaphore is never closed");
        let limits = &version.limits;
        let limiter = Limiter {
            max_memory: limits.memory_bytes,
        };
        let meter = Arc::new(compute::Meter::new(version.typical_cpu.paced_past()));
        let pacing = (self.long_calls.pacer(), meter.clone());
        let state = CallState::new(context, limiter, STDERR_BYTES, pacing);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let cpu_time = limits.cpu_time;
        store.set_epoch_deadline(1);
        {
            let (meter, pacer) = (meter.clone(), self.long_calls.pacer());
            store.epoch_deadline_callback(move |_| {
                let used = meter.tick();
                if used > cpu_time {
                    return Err(LimitExceeded(format!(
                        "it ran for more than {} ms of CPU time in one call (limit cpu-ms)",
                        cpu_time.as_millis()
                    ))
                    .into());
                }
                // Let other calls run while this one computes.
                Ok(match pacer.pause(&meter) {
                    Some(pause) => UpdateDeadline::YieldCustom(1, pause),
                    None => UpdateDeadline::Yield(1),
                })
            });
        }
        let wall_time = limits.wall_time;
        let owned = version.clone();
        let run = async move {
            let returned =
                tokio::time::timeout(wall_time, run_call(&mut store, &owned, call)).await;
            (returned, store)
        };
        let (returned, store) = self.long_calls.run(run, &meter).await;
        let result = match returned {
            // A call refused on a limit fails as a whole, whatever it did with the refusal.
            Ok(Ok(_)) if store.data().ctx.budget.refused.is_some() => Err(CallError::Limit {
                service: service.clone(),
                reason: store.data().ctx.budget.refused.clone().unwrap_or_default(),
            }),
            Ok(Ok(returned)) => {
                check_size(returned, limits.max_response_bytes).map_err(|reason| CallError::Limit {
                    service: service.clone(),
                    reason,
                })
            }
            Ok(Err(error)) => Err(classify(&service, &error, store.data())),
            Err(_) => Err(CallError::Timeout {
                service: service.clone(),
                limit: limits.wall_time,
            }),
        };
        match &result {
            Err(error @ CallError::Raced { .. }) => {
                tracing::debug!(service, %error, "call raced; it is run again")
            }
            Err(error) => tracing::warn!(service, %error, "component call failed"),
            Ok(_) => {}
        }
        let state = store.into_data();
        let mut ctx = state.ctx;
        let cpu = meter.cpu_time();
        ctx.cost = saga_core::engine::Cost {
            wall_us: state.started.elapsed().as_micros() as u64,
            cpu_us: cpu.as_micros() as u64,
        };
        if result.is_ok() {
            version.typical_cpu.record(cpu);
        }
        (result, ctx)
    }
}

/// The content digest of a component: SHA-256, hex.
pub fn digest(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn write_cache(component: &Component, path: &std::path::Path) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    crate::files::write_durably(path, &bytes)
}
