//! Sagas: the orchestrator that drives executions through the engine's state machine
//! (`saga_core::engine`), stores every transition with its history, keeps the timers
//! (`timers.rs`), and wakes whoever waits for a saga to end (`ending.rs`).
//!
//! Everything that moves an execution is a *transition*: the execution is loaded, an event (a
//! start, a reply, a timer, a failure, an operator's request) is applied in memory by the
//! driver (`driver.rs`) — running callbacks, whose writes are staged under the saga — and the
//! new state is stored in one transaction together with those writes, the commands it sends,
//! its history entries and the acknowledgement of the reply it consumed. A crash therefore
//! leaves all of a transition or none of it.

mod clock;
mod counts;
mod driver;
mod ending;
mod packed;
pub mod record;
mod timers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use saga_core::engine::{
    Callback, Context, Entry, ErrorInfo, Event, Execution, OperatorAction, Rejected,
};
use saga_core::ids::{Digest, SagaId, ServiceName};
use tokio::sync::oneshot;

pub use saga_core::definition;
pub use saga_core::engine::{Config as Rules, Status};

use crate::broker::{Broker, Delivery, Outcome};
use crate::ends::SagaEnds;
use crate::runtime::bindings::types as wit;
use crate::runtime::registry::Registry;
use crate::runtime::{CallEnv, Caller, Runtime, SagaRunner, ServiceVersion};
use crate::storage::{Consumed, Executions, Outage, Storage, StorageError};
use crate::telemetry::metrics;
use clock::Clock;
use counts::count;
use driver::{Prepared, Stop, Transition};
use record::Stored;

/// How sagas run.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Run remote steps whose participant is loaded here within the transition that sends them.
    pub inline_steps: bool,
    /// How long a transition may wait for aggregates another saga holds.
    pub lock_wait: Duration,
    /// Timeouts and retries of the steps (the state machine's configuration).
    pub rules: Rules,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            inline_steps: true,
            lock_wait: Duration::from_secs(30),
            rules: Rules::default(),
        }
    }
}

/// Drives saga executions.
pub struct Orchestrator {
    /// This host process, which owns the timers of the sagas whose transitions it stores.
    host_id: String,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    broker: Broker,
    storage: Storage,
    config: SagaConfig,
    env: OnceLock<Weak<CallEnv>>,
    me: OnceLock<Weak<Orchestrator>>,
    ends: SagaEnds,
    waiters: Mutex<HashMap<SagaId, Vec<oneshot::Sender<wit::Execution>>>>,
    /// Unfinished executions as last stored by this process, so that a reply needs no read
    /// (a lone host only: in a cluster, other hosts advance them too).
    /// The stored revision still decides: a stale copy fails its commit and is read again.
    cached: Mutex<HashMap<SagaId, Stored>>,
    /// Timers scheduled in memory, by saga: the earliest.
    timers: Mutex<HashMap<SagaId, i64>>,
    /// The time the rules and the timers go by (`clock.rs`).
    clock: Clock,
    /// What the path checker makes of the callbacks (none in a host).
    probe: OnceLock<Arc<dyn Probe>>,
}

/// Watches and steers the saga callbacks a transition runs: the path checker's way to make a
/// callback fail where it would have succeeded, and to see which ran.
pub trait Probe: Send + Sync + 'static {
    /// Called before `callback` runs; an error fails it without running it.
    fn callback(&self, exec: &Execution, callback: &Callback) -> Result<(), ErrorInfo>;
}

/// Unfinished executions kept in memory at most; beyond, replies read them from storage.
const MAX_CACHED: usize = 100_000;

/// Where a transition starts from.
enum StartsFrom<'a> {
    /// A new execution, on the version that starts it.
    New(&'a Execution, &'a Arc<ServiceVersion>),
    Stored(SagaId),
}

impl StartsFrom<'_> {
    fn id(&self) -> SagaId {
        match self {
            StartsFrom::New(template, _) => template.id,
            StartsFrom::Stored(id) => *id,
        }
    }
}

/// A transition that did not happen.
#[derive(Debug)]
pub enum TransitionError {
    /// No such saga.
    Gone,
    /// The message it consumes was consumed before.
    Duplicate,
    /// The saga's component version is not loaded here.
    Unloaded(String),
    /// An operator's request that does not fit the saga's state.
    Rejected(Rejected),
    Storage(String),
    /// The database could not be used (down, or its disk full); nothing was stored.
    Unavailable(Outage, String),
}

impl std::fmt::Display for TransitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransitionError::Gone => f.write_str("no such saga"),
            TransitionError::Duplicate => f.write_str("its message was handled before"),
            TransitionError::Rejected(rejected) => rejected.fmt(f),
            TransitionError::Unloaded(problem)
            | TransitionError::Storage(problem)
            | TransitionError::Unavailable(_, problem) => f.write_str(problem),
        }
    }
}

/// A stored transition that failed.
enum PersistError {
    /// Run the transition again, from the stored state, once `holder` (if any) has ended.
    Retry(Option<SagaId>),
    /// The saga's staged writes were overwritten: fail the saga instead.
    Overwritten(ErrorInfo),
    /// A message it consumes was consumed before (the id).
    Duplicate(String),
    Storage(StorageError),
}

impl Orchestrator {
    pub fn new(
        host_id: String,
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        broker: Broker,
        storage: Storage,
        ends: SagaEnds,
        config: SagaConfig,
    ) -> Arc<Self> {
        let orchestrator = Arc::new(Orchestrator {
            host_id,
            runtime,
            registry,
            broker,
            storage,
            config,
            env: OnceLock::new(),
            me: OnceLock::new(),
            ends,
            waiters: Mutex::new(HashMap::new()),
            cached: Mutex::new(HashMap::new()),
            timers: Mutex::new(HashMap::new()),
            clock: Clock::new(),
            probe: OnceLock::new(),
        });
        let _ = orchestrator.me.set(Arc::downgrade(&orchestrator));
        orchestrator
    }

    /// Gives the orchestrator the environment its callbacks run in (set once at start-up; weak,
    /// because the environment refers back to the orchestrator).
    pub fn set_env(&self, env: &Arc<CallEnv>) {
        let _ = self.env.set(Arc::downgrade(env));
    }

    /// Sets the probe of the callbacks (once; the path checker's).
    pub fn set_probe(&self, probe: Arc<dyn Probe>) {
        let _ = self.probe.set(probe);
    }

    fn probe(&self) -> Option<&Arc<dyn Probe>> {
        self.probe.get()
    }

    /// The time the rules go by, in ms since the epoch: the wall clock at start carried forward
    /// by the monotonic clock (a step of the system clock moves no timer), plus however far the
    /// test harness moved it ahead.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    fn env(&self) -> Option<Arc<CallEnv>> {
        self.env.get().and_then(Weak::upgrade)
    }

    /// The service loaded here that handles the command topic, if any.
    fn local_participant(&self, topic: &str) -> Option<Arc<ServiceVersion>> {
        let services = self.registry.current();
        let name = services.topics.commands.get(topic)?;
        services.by_name.get(name).cloned()
    }

    /// Starts a saga for a component's `sagas.run`.
    pub async fn start(
        &self,
        caller: Caller,
        name: String,
        context: Context,
        wait: bool,
    ) -> Result<wit::Execution, wit::Error> {
        let version = caller.service.clone();
        if !version.manifest.sagas.contains_key(&name) {
            let mut known: Vec<&str> = version.manifest.sagas.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(wit::Error {
                status: 400,
                message: format!(
                    "service {} has no saga named {name:?} (its sagas: {})",
                    version.name(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
        if self
            .registry
            .version(version.name(), &version.digest)
            .is_none()
        {
            // A call still running on a replaced version starts a saga: keep that version
            // loaded for it.
            self.registry.retire(version.clone());
        }
        let template = Execution::new(
            SagaId::random(),
            ServiceName::from(version.name()),
            &name,
            Digest(version.digest.clone()),
            context,
            caller.user,
            self.now(),
        );
        let finished = wait.then(|| self.register_waiter(template.id));
        match self
            .transition(StartsFrom::New(&template, &version), Event::Start, None)
            .await
        {
            Ok(exec) => match finished {
                Some(receiver) => self.wait_for_end(&exec, receiver).await,
                None => Ok(record::to_wit(&exec)),
            },
            Err(error) => {
                self.waiters
                    .lock()
                    .expect("waiters lock")
                    .remove(&template.id);
                // A database that is down or full is the server's condition, not a fault:
                // the caller gets its status (503, 507) and may try again.
                let status = match &error {
                    TransitionError::Unavailable(outage, _) => outage.status(),
                    _ => 500,
                };
                Err(wit::Error {
                    status,
                    message: format!("saga {name} could not be stored: {error}"),
                })
            }
        }
    }

    /// Looks up an execution of `service` for a component (`sagas.get`).
    pub async fn get(&self, service: String, id: String) -> Result<wit::Execution, wit::Error> {
        let not_found = || wit::Error {
            status: 404,
            message: format!("no saga execution {id} of service {service}"),
        };
        let Ok(saga) = id.parse::<SagaId>() else {
            return Err(not_found());
        };
        match self.inspect(saga).await {
            Ok(Some(stored)) if stored.exec.service == *service => Ok(record::to_wit(&stored.exec)),
            Ok(_) => Err(not_found()),
            Err(message) => Err(wit::Error {
                status: 500,
                message,
            }),
        }
    }

    /// An execution as stored, for inspection.
    pub async fn inspect(&self, id: SagaId) -> Result<Option<Stored>, String> {
        match self.storage.load_saga(&id.to_string()).await {
            Ok(Some(row)) => Stored::from_row(&row).map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(format!("storage failed: {error}")),
        }
    }

    /// An operator's request on a saga: applied as a transition, or rejected (nothing changes)
    /// when it does not fit the saga's state.
    pub async fn act(
        &self,
        id: SagaId,
        action: OperatorAction,
        by: String,
    ) -> Result<Execution, TransitionError> {
        let event = Event::Operator { action, by };
        self.transition(StartsFrom::Stored(id), event, None).await
    }

    /// What an operator's request would do to a saga, doing nothing: the history entries its
    /// first step would record, or why it does not fit the saga's state.
    pub async fn preview(
        &self,
        id: SagaId,
        action: OperatorAction,
        by: String,
    ) -> Result<Vec<Entry>, TransitionError> {
        let stored = match self.inspect(id).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(TransitionError::Gone),
            Err(problem) => return Err(TransitionError::Storage(problem)),
        };
        let version = self.version_of(&stored.exec)?;
        let event = Event::Operator { action, by };
        driver::preview(self, &version, &stored.exec, event).map_err(TransitionError::Rejected)
    }

    /// Takes a reply to a saga step or compensation.
    pub async fn on_reply(&self, delivery: Delivery) -> Outcome {
        let consumed = Consumed {
            consumer: delivery.consumer.clone(),
            message_id: delivery.message.id.to_string(),
            reply: None,
        };
        let message = delivery.message;
        let (Some(saga), Some(answers)) = (message.saga, message.in_reply_to) else {
            tracing::warn!(message_id = %message.id, "a reply that names no saga step is dropped");
            return self.broker.acknowledge(delivery.queued, consumed).await;
        };
        let Some(target) = saga.target else {
            tracing::warn!(message_id = %message.id, "a reply that names no saga step is dropped");
            return self.broker.acknowledge(delivery.queued, consumed).await;
        };
        let event = Event::Replied {
            target,
            message_id: answers,
            status: message.status,
            payload: message.payload,
        };
        match self
            .transition(
                StartsFrom::Stored(saga.id),
                event,
                Some((delivery.queued, consumed.clone())),
            )
            .await
        {
            Ok(_) => Outcome::Done,
            Err(TransitionError::Duplicate) => {
                self.broker
                    .settle_duplicate(delivery.queued, &consumed.consumer, &consumed.message_id)
                    .await
            }
            Err(TransitionError::Gone) => {
                tracing::warn!(saga = %saga.id, "a reply for an unknown saga is dropped");
                self.broker.acknowledge(delivery.queued, consumed).await
            }
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }

    /// Loads the execution a transition starts from, with the version it runs on.
    async fn load_for(
        &self,
        from: &StartsFrom<'_>,
    ) -> Result<(Stored, Arc<ServiceVersion>), TransitionError> {
        match from {
            StartsFrom::New(template, version) => {
                Ok((Stored::new((*template).clone()), (*version).clone()))
            }
            StartsFrom::Stored(id) => {
                let stored = match self.load(*id).await {
                    Ok(Some(stored)) => stored,
                    Ok(None) => return Err(TransitionError::Gone),
                    Err(problem) => return Err(TransitionError::Storage(problem)),
                };
                let version = match self.version_of(&stored.exec) {
                    Ok(version) => version,
                    // Taken over from another host, or resumed after a restart, on a version
                    // this host does not have loaded: loaded from where versions are kept.
                    Err(unloaded) => {
                        let (service, digest) = (&stored.exec.service, &stored.exec.digest);
                        (self.registry)
                            .version_or_fetch(service.as_str(), digest.as_str())
                            .await
                            .ok_or(unloaded)?
                    }
                };
                Ok((stored, version))
            }
        }
    }

    /// The component version a saga runs on: the one it started with, until it ends.
    fn version_of(&self, exec: &Execution) -> Result<Arc<ServiceVersion>, TransitionError> {
        self.registry
            .version(exec.service.as_str(), exec.digest.as_str())
            .ok_or_else(|| {
                TransitionError::Unloaded(format!(
                    "version {} of service {}, which saga {} started on, is not loaded",
                    exec.digest.short(),
                    exec.service,
                    exec.id
                ))
            })
    }

    /// Applies an event and stores the result, running again from the stored state when the
    /// transition collides with another writer, and failing the saga when it cannot get its
    /// aggregates within the lock wait or its writes were overwritten.
    #[tracing::instrument(
        level = "debug",
        name = "saga",
        skip_all,
        fields(saga_id = %from.id(), event = event.name(), saga)
    )]
    async fn transition(
        &self,
        from: StartsFrom<'_>,
        mut event: Event,
        delivery: Option<(Option<i64>, Consumed)>,
    ) -> Result<Execution, TransitionError> {
        let given_up = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            let (stored, version) = self.load_for(&from).await?;
            tracing::Span::current().record("saga", stored.exec.name.as_str());
            let status = stored.exec.status;
            let mut transition = Transition::new(self, version, stored);
            if let Some((queued, consumed)) = &delivery {
                transition.tx.ack = *queued;
                transition.tx.consumed.push(consumed.clone());
            }
            let holder = match transition.apply(event.clone()).await {
                Err(Stop::Rejected(rejected)) => return Err(TransitionError::Rejected(rejected)),
                Err(Stop::Collided(holder)) => holder,
                Ok(()) if transition.is_idle() => {
                    // Nothing was due (an early or repeated timer): store nothing.
                    let stored = transition.stored;
                    self.remember(&stored);
                    return Ok(stored.exec);
                }
                Ok(()) => match self.persist(transition).await {
                    Ok(exec) => return Ok(exec),
                    Err(PersistError::Retry(holder)) => holder,
                    Err(PersistError::Overwritten(error)) => {
                        event = Event::Fail(error);
                        continue;
                    }
                    Err(PersistError::Duplicate(id))
                        if delivery.as_ref().is_some_and(|(_, c)| c.message_id == id) =>
                    {
                        return Err(TransitionError::Duplicate);
                    }
                    // An inline participant's copy of a command was consumed through the queue
                    // meanwhile: its reply is on the way; start over from the stored state.
                    Err(PersistError::Duplicate(_)) => None,
                    Err(PersistError::Storage(error)) => {
                        return Err(match error.outage() {
                            Some(outage) => TransitionError::Unavailable(outage, error.to_string()),
                            None => TransitionError::Storage(error.to_string()),
                        });
                    }
                },
            };
            if tokio::time::Instant::now() >= given_up {
                if !matches!(status, Status::Created | Status::Running | Status::Paused) {
                    // Only a saga moving forward can be failed; this event waits for later.
                    return Err(TransitionError::Storage(format!(
                        "a transition of a {} saga stayed blocked by other sagas for {} s",
                        status.as_str(),
                        self.config.lock_wait.as_secs()
                    )));
                }
                event = Event::Fail(ErrorInfo::new(
                    503,
                    format!(
                        "the saga's writes stayed blocked by other sagas for {} s",
                        self.config.lock_wait.as_secs()
                    ),
                ));
                continue;
            }
            metrics::rerun("saga", holder.is_some());
            match holder {
                Some(saga) => self.ends.wait(saga, Duration::from_millis(100)).await,
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// An execution as stored: from memory when this process stored it, else read.
    async fn load(&self, id: SagaId) -> Result<Option<Stored>, String> {
        if let Some(stored) = self.cached.lock().expect("cache lock").remove(&id) {
            return Ok(Some(stored));
        }
        self.inspect(id).await
    }

    fn remember(&self, stored: &Stored) {
        if self.broker.is_shared() {
            // Other hosts advance sagas too: a copy here would mostly be stale.
            return;
        }
        let mut cached = self.cached.lock().expect("cache lock");
        if !stored.exec.status.is_final() && cached.len() < MAX_CACHED {
            cached.insert(stored.exec.id, stored.clone());
        }
    }

    /// Stores a transition; notifies waiters when the saga has ended, schedules its timer.
    async fn persist(&self, transition: Transition<'_>) -> Result<Execution, PersistError> {
        let Prepared {
            mut stored,
            tx,
            history,
            ended,
        } = transition.into_transaction(&self.host_id);
        let timer_at = tx.saga.as_ref().and_then(|row| row.timer_at);
        match self.broker.commit(tx).await {
            Ok(()) => {
                stored.revision += 1;
                let exec = &stored.exec;
                tracing::debug!(saga = %exec.id, status = exec.status.as_str(), "saga transition stored");
                count(exec, &history);
                if ended {
                    self.ended(exec);
                } else {
                    self.remember(&stored);
                }
                if let Some(at) = timer_at {
                    self.schedule(exec.id, at);
                }
                Ok(stored.exec)
            }
            Err(StorageError::Conflict { holder, .. }) => {
                Err(PersistError::Retry(holder.and_then(|h| h.parse().ok())))
            }
            Err(StorageError::SagaChanged(_)) => Err(PersistError::Retry(None)),
            Err(StorageError::Duplicate(id)) => Err(PersistError::Duplicate(id)),
            Err(error @ StorageError::Overwritten { .. }) => {
                Err(PersistError::Overwritten(ErrorInfo::new(
                    409,
                    format!("{error}; the saga was rolled back instead of overwriting it"),
                )))
            }
            Err(error) => Err(PersistError::Storage(error)),
        }
    }
}

/// The orchestrator as the `sagas` import sees it.
pub struct Runner(pub Arc<Orchestrator>);

impl SagaRunner for Runner {
    fn run(
        &self,
        caller: Caller,
        name: String,
        context: Context,
        wait: bool,
    ) -> BoxFuture<'static, Result<wit::Execution, wit::Error>> {
        let orchestrator = self.0.clone();
        async move { orchestrator.start(caller, name, context, wait).await }.boxed()
    }

    fn get(
        &self,
        service: String,
        id: String,
    ) -> BoxFuture<'static, Result<wit::Execution, wit::Error>> {
        let orchestrator = self.0.clone();
        async move { orchestrator.get(service, id).await }.boxed()
    }
}
