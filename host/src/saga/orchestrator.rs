//! The saga orchestrator: starts executions, advances them step by step, takes replies, fires
//! timers (reply deadlines, retries, saga deadlines) and compensates.
//!
//! Everything that moves an execution is a *transition*: the execution is loaded, the input
//! (a start, a reply, a timer, a failure) is applied in memory — running callbacks, whose
//! writes are staged under the saga — and the new state is stored in one transaction together
//! with those writes, the commands it sends and the acknowledgement of the reply it consumed.
//! A crash therefore leaves all of a transition or none of it.
//!
//! A remote step whose participant is loaded in this host runs *inline*: the participant's
//! handler is called within the transition and its reply taken at once, so that a saga of
//! local participants commits once instead of twice per step. Its effects are committed in the
//! same transaction as the saga's progress, exactly as if the command had gone through the
//! queue; only the queue round trip is saved. Anything else — a participant elsewhere, a retry
//! after a system error, a reply that is late — goes through the queue and the timers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::{Notify, oneshot};

use super::definition::{Invocation, SagaDefinition, Step};
use super::execution::{
    Compensation, CompensationStatus, ErrorInfo, Execution, Frame, Sent, Status, StepKind,
    StepRecord, StepStatus,
};
use crate::broker::{Broker, Delivery, Message, Outcome, ReplyTo};
use crate::handler;
use crate::runtime::bindings::types as wit;
use crate::runtime::registry::Registry;
use crate::runtime::{
    Access, CallContext, CallEnv, CallError, Called, Caller, Runtime, SagaRunner, Scope,
    ServiceVersion,
};
use crate::storage::{self, Consumed, Resolve, Storage, StorageError, Transaction};

/// How sagas run.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Run remote steps whose participant is loaded here within the transition that sends them.
    pub inline_steps: bool,
    /// How long a remote step waits for its reply, unless its definition says.
    pub step_timeout: Duration,
    /// How long a saga may take in all, unless its definition says; none: no limit.
    pub saga_timeout: Option<Duration>,
    /// Attempts of a remote step or a compensation before it counts as failed.
    pub max_attempts: u32,
    /// The delay before the second attempt; each next one doubles, up to `max_retry_delay`.
    pub first_retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// How long a transition may wait for aggregates another saga holds.
    pub lock_wait: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            inline_steps: true,
            step_timeout: Duration::from_secs(30),
            saga_timeout: Some(Duration::from_secs(600)),
            max_attempts: 3,
            first_retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(10),
            lock_wait: Duration::from_secs(30),
        }
    }
}

impl SagaConfig {
    fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.first_retry_delay
            .saturating_mul(factor)
            .min(self.max_retry_delay)
    }
}

/// Wakes whoever waits for a saga to end: callers of `sagas.run`, and writers waiting for the
/// aggregates a saga holds.
#[derive(Clone, Default)]
pub struct SagaEnds {
    waiting: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl SagaEnds {
    /// Waits until `saga` ends or `at_most` passes, whichever is first.
    pub async fn wait(&self, saga: &str, at_most: Duration) {
        let notify = self
            .waiting
            .lock()
            .expect("saga-end lock")
            .entry(saga.to_string())
            .or_default()
            .clone();
        let _ = tokio::time::timeout(at_most, notify.notified()).await;
    }

    fn ended(&self, saga: &str) {
        if let Some(notify) = self.waiting.lock().expect("saga-end lock").remove(saga) {
            notify.notify_waiters();
        }
    }
}

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
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<wit::Execution>>>>,
    /// Unfinished executions as last stored by this process, so that a reply needs no read
    /// (a lone host only: in a cluster, other hosts advance them too).
    /// The stored revision still decides: a stale copy fails its commit and is read again.
    cached: Mutex<HashMap<String, Execution>>,
    /// Timers scheduled in memory, by saga: the earliest.
    timers: Mutex<HashMap<String, i64>>,
}

/// Unfinished executions kept in memory at most; beyond, replies read them from storage.
const MAX_CACHED: usize = 100_000;

/// What moves an execution.
enum Input {
    Start,
    Reply(Message),
    Timer,
    /// Its writes could not commit: fail it.
    Fail(ErrorInfo),
}

/// Where a transition starts from.
enum Origin<'a> {
    /// A new execution, on the version that starts it.
    New(&'a Execution, &'a Arc<ServiceVersion>),
    Stored(&'a str),
}

/// A transition that did not happen.
enum TransitionError {
    /// No such saga.
    Gone,
    /// The message it consumes was consumed before.
    Duplicate,
    /// Its service is not loaded here.
    Unloaded(String),
    Storage(String),
}

/// A stored transition that failed.
enum PersistError {
    /// Run the transition again, from the stored state, once `holder` (if any) has ended.
    Retry(Option<String>),
    /// The saga's staged writes were overwritten: fail the saga instead.
    Overwritten(ErrorInfo),
    /// A message it consumes was consumed before (the id).
    Duplicate(String),
    Storage(StorageError),
}

/// A callback or participant raced with another writer: the transition is run again from the
/// stored state, once the holder (if any) has ended.
struct Raced(Option<String>);

/// After a reply: go on with the next step, or stop here (paused, failed, or retrying).
enum Next {
    Continue,
    Stop,
}

/// What happened to a command.
enum Delivered {
    Queued,
    /// Its participant ran inline; this is its reply.
    Replied(Message),
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
        });
        let _ = orchestrator.me.set(Arc::downgrade(&orchestrator));
        orchestrator
    }

    /// Gives the orchestrator the environment its callbacks run in (set once at start-up; weak,
    /// because the environment refers back to the orchestrator).
    pub fn set_env(&self, env: &Arc<CallEnv>) {
        let _ = self.env.set(Arc::downgrade(env));
    }

    fn env(&self) -> Option<Arc<CallEnv>> {
        self.env.get().and_then(Weak::upgrade)
    }

    /// Starts a saga for a component's `sagas.run`.
    pub async fn start(
        &self,
        caller: Caller,
        name: String,
        context: Map<String, Value>,
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
        let template = Execution::new(version.name(), &name, &version.digest, context, caller.user);
        let finished = wait.then(|| self.register_waiter(&template.id));
        match self
            .transition(Origin::New(&template, &version), Input::Start, None)
            .await
        {
            Ok(exec) => match finished {
                Some(receiver) => self.wait_for_end(&exec, receiver).await,
                None => Ok(exec.to_wit()),
            },
            Err(error) => {
                self.waiters
                    .lock()
                    .expect("waiters lock")
                    .remove(&template.id);
                Err(wit::Error {
                    status: 500,
                    message: format!("saga {name} could not be stored: {}", error.describe()),
                })
            }
        }
    }

    /// Waits until a started saga ends, wherever it ends: this host wakes the waiter; another
    /// host's end arrives as an announcement, and, should that be lost, the stored execution is
    /// looked at every second.
    async fn wait_for_end(
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
                        Err(_) => self.get(exec.service.clone(), exec.id.clone()).await,
                    };
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Ok(Some(stored)) = self.inspect(&exec.id).await
                        && stored.status.is_final()
                    {
                        self.waiters.lock().expect("waiters lock").remove(&exec.id);
                        return Ok(stored.to_wit());
                    }
                }
            }
        }
    }

    /// Looks up an execution of `service`.
    pub async fn get(&self, service: String, id: String) -> Result<wit::Execution, wit::Error> {
        match self.inspect(&id).await {
            Ok(Some(exec)) if exec.service == service => Ok(exec.to_wit()),
            Ok(_) => Err(wit::Error {
                status: 404,
                message: format!("no saga execution {id} of service {service}"),
            }),
            Err(message) => Err(wit::Error {
                status: 500,
                message,
            }),
        }
    }

    /// An execution as stored, for inspection.
    pub async fn inspect(&self, id: &str) -> Result<Option<Execution>, String> {
        match self.storage.load_saga(id).await {
            Ok(Some(row)) => Execution::from_row(&row).map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(format!("storage failed: {error}")),
        }
    }

    /// Takes a reply to a saga step or compensation.
    pub async fn on_reply(&self, delivery: Delivery) -> Outcome {
        let consumed = Consumed {
            consumer: delivery.consumer.clone(),
            message_id: delivery.message.id.clone(),
            reply: None,
        };
        let Some(saga) = delivery.message.header("saga").map(str::to_string) else {
            tracing::warn!(message_id = %delivery.message.id, "a reply without a saga header is dropped");
            return self.acknowledge(delivery.queued, consumed).await;
        };
        let input = Input::Reply(delivery.message);
        match self
            .transition(
                Origin::Stored(&saga),
                input,
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
                tracing::warn!(saga = %saga, "a reply for an unknown saga is dropped");
                self.acknowledge(delivery.queued, consumed).await
            }
            Err(TransitionError::Unloaded(problem) | TransitionError::Storage(problem)) => {
                Outcome::Retry(problem)
            }
        }
    }

    /// Fires whatever of an execution's timers is due, and schedules its next one.
    pub async fn on_timer(&self, id: &str) {
        match self
            .transition(Origin::Stored(id), Input::Timer, None)
            .await
        {
            Ok(exec) => {
                if let Some(at) = exec.timer_at() {
                    // Never sooner than shortly: a timer that found nothing to do must not spin.
                    self.schedule(id, at.max(storage::now_ms() + 100));
                }
            }
            Err(TransitionError::Gone | TransitionError::Duplicate) => {}
            Err(TransitionError::Unloaded(problem) | TransitionError::Storage(problem)) => {
                tracing::warn!(saga = %id, "a timer could not fire: {problem}; trying again in a second");
                self.schedule(id, storage::now_ms() + 1_000);
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
            self.schedule(id, *at);
        }
        Ok(timers.len())
    }

    /// Another host ended saga `id`: wake whoever waits for it here.
    pub async fn ended_elsewhere(&self, id: &str) {
        self.cached.lock().expect("cache lock").remove(id);
        let waited = self.waiters.lock().expect("waiters lock").contains_key(id);
        if waited
            && let Ok(Some(exec)) = self.inspect(id).await
            && exec.status.is_final()
        {
            self.notify_end(&exec);
        }
        self.ends.ended(id);
    }

    async fn acknowledge(&self, queued: Option<i64>, consumed: Consumed) -> Outcome {
        let tx = Transaction {
            ack: queued,
            consumed: vec![consumed.clone()],
            ..Transaction::default()
        };
        match self.broker.commit(tx).await {
            Ok(()) => Outcome::Done,
            Err(StorageError::Duplicate(_)) => {
                self.broker
                    .settle_duplicate(queued, &consumed.consumer, &consumed.message_id)
                    .await
            }
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }

    /// Applies an input and stores the result, running again from the stored state when the
    /// transition collides with another writer, and failing the saga when it cannot get its
    /// aggregates within the lock wait or its writes were overwritten.
    async fn transition(
        &self,
        origin: Origin<'_>,
        mut input: Input,
        delivery: Option<(Option<i64>, Consumed)>,
    ) -> Result<Execution, TransitionError> {
        let given_up = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            let (mut exec, version) = match &origin {
                Origin::New(template, version) => ((*template).clone(), (*version).clone()),
                Origin::Stored(id) => {
                    let exec = match self.load(id).await {
                        Ok(Some(exec)) => exec,
                        Ok(None) => return Err(TransitionError::Gone),
                        Err(problem) => return Err(TransitionError::Storage(problem)),
                    };
                    // The saga runs on the version it started with until it ends.
                    let Some(version) = self.registry.version(&exec.service, &exec.digest) else {
                        return Err(TransitionError::Unloaded(format!(
                            "version {} of service {}, which saga {} started on, is not loaded",
                            &exec.digest[..12.min(exec.digest.len())],
                            exec.service,
                            exec.id
                        )));
                    };
                    (exec, version)
                }
            };
            let before = exec.clone();
            let mut tx = Transaction::default();
            if let Some((queued, consumed)) = &delivery {
                tx.ack = *queued;
                tx.consumed.push(consumed.clone());
            }
            let holder = match self.process(&version, &mut exec, &input, &mut tx).await {
                Err(Raced(holder)) => holder,
                Ok(()) if exec == before && delivery.is_none() => {
                    // Nothing was due (an early or repeated timer): store nothing.
                    self.remember(&exec);
                    return Ok(exec);
                }
                Ok(()) => match self.persist(&mut exec, tx).await {
                    Ok(()) => return Ok(exec),
                    Err(PersistError::Retry(holder)) => holder,
                    Err(PersistError::Overwritten(error)) => {
                        input = Input::Fail(error);
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
                        return Err(TransitionError::Storage(error.to_string()));
                    }
                },
            };
            if tokio::time::Instant::now() >= given_up {
                if before.status == Status::Compensating || before.status.is_final() {
                    // Only a saga moving forward can be failed; this input waits for later.
                    return Err(TransitionError::Storage(format!(
                        "saga {} stayed blocked by other sagas for {} s",
                        before.id,
                        self.config.lock_wait.as_secs()
                    )));
                }
                input = Input::Fail(ErrorInfo {
                    status: 503,
                    message: format!(
                        "the saga's writes stayed blocked by other sagas for {} s",
                        self.config.lock_wait.as_secs()
                    ),
                });
                continue;
            }
            match holder {
                Some(saga) => self.ends.wait(&saga, Duration::from_millis(100)).await,
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// An execution as stored: from memory when this process stored it, else read.
    async fn load(&self, id: &str) -> Result<Option<Execution>, String> {
        if let Some(exec) = self.cached.lock().expect("cache lock").remove(id) {
            return Ok(Some(exec));
        }
        self.inspect(id).await
    }

    fn remember(&self, exec: &Execution) {
        if self.broker.is_shared() {
            // Other hosts advance sagas too: a copy here would mostly be stale.
            return;
        }
        let mut cached = self.cached.lock().expect("cache lock");
        if !exec.status.is_final() && cached.len() < MAX_CACHED {
            cached.insert(exec.id.clone(), exec.clone());
        }
    }

    /// Stores a transition; notifies waiters when the saga has ended, schedules its timer.
    async fn persist(&self, exec: &mut Execution, mut tx: Transaction) -> Result<(), PersistError> {
        exec.updated_at = storage::now_ms().max(exec.updated_at);
        if exec.revision == 0 {
            fold_first_transition(exec, &mut tx);
        }
        let mut row = exec.to_row();
        row.owner = Some(self.host_id.clone());
        let timer_at = row.timer_at;
        tx.saga = Some(row);
        match self.broker.commit(tx).await {
            Ok(()) => {
                exec.revision += 1;
                tracing::debug!(saga = %exec.id, status = exec.status.as_str(), "saga transition stored");
                if exec.status.is_final() {
                    self.ended(exec);
                } else {
                    self.remember(exec);
                }
                if let Some(at) = timer_at {
                    self.schedule(&exec.id, at);
                }
                Ok(())
            }
            Err(StorageError::Conflict { holder, .. }) => Err(PersistError::Retry(holder)),
            Err(StorageError::SagaChanged(_)) => Err(PersistError::Retry(None)),
            Err(StorageError::Duplicate(id)) => Err(PersistError::Duplicate(id)),
            Err(error @ StorageError::Overwritten { .. }) => {
                Err(PersistError::Overwritten(ErrorInfo {
                    status: 409,
                    message: format!("{error}; the saga was rolled back instead of overwriting it"),
                }))
            }
            Err(error) => Err(PersistError::Storage(error)),
        }
    }

    /// Runs `on_timer(id)` at `at` (ms since the epoch), unless an earlier timer is due.
    fn schedule(&self, id: &str, at: i64) {
        {
            let mut timers = self.timers.lock().expect("timers lock");
            if timers.get(id).is_some_and(|&scheduled| scheduled <= at) {
                return;
            }
            timers.insert(id.to_string(), at);
        }
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let wait = Duration::from_millis((at - storage::now_ms()).max(0) as u64);
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
            orchestrator.on_timer(&id).await;
        });
    }

    fn register_waiter(&self, id: &str) -> oneshot::Receiver<wit::Execution> {
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .entry(id.to_string())
            .or_default()
            .push(sender);
        receiver
    }

    fn notify_end(&self, exec: &Execution) {
        let waiting = self.waiters.lock().expect("waiters lock").remove(&exec.id);
        for waiter in waiting.into_iter().flatten() {
            let _ = waiter.send(exec.to_wit());
        }
    }

    fn ended(&self, exec: &Execution) {
        self.cached.lock().expect("cache lock").remove(&exec.id);
        self.notify_end(exec);
        self.ends.ended(&exec.id);
        self.broker.announce_end(&exec.id);
        tracing::info!(saga = %exec.id, name = %exec.name, status = exec.status.as_str(), "saga ended");
        let current = self
            .registry
            .service(&exec.service)
            .map(|v| v.digest.clone());
        if current.as_deref() != Some(exec.digest.as_str()) {
            self.release_if_unused(exec.service.clone(), exec.digest.clone());
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

    /// Applies an input to an execution in memory, collecting what it changes into `tx`.
    async fn process(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        input: &Input,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        match input {
            Input::Start => {
                exec.status = Status::Running;
                exec.deadline_at = definition(version, &exec.name)
                    .and_then(|d| d.timeout)
                    .or(self.config.saga_timeout)
                    .map(|timeout| exec.created_at + timeout.as_millis() as i64);
                self.advance(version, exec, tx).await
            }
            Input::Fail(error) => {
                if exec.status.is_final() || exec.status == Status::Compensating {
                    return Ok(());
                }
                let own = exec.awaiting();
                self.fail(version, exec, tx, error.clone(), own).await
            }
            Input::Reply(reply) => {
                if let Some(index) = reply.header_number("compensation") {
                    return self
                        .compensation_replied(version, exec, index, reply, tx)
                        .await;
                }
                match exec.awaiting() {
                    Some(index)
                        if reply.header_number("step") == Some(index)
                            && exec.steps[index].status == StepStatus::AwaitingReply =>
                    {
                        if let Next::Continue =
                            self.take_reply(version, exec, index, reply, tx).await?
                        {
                            self.advance(version, exec, tx).await?;
                        }
                        Ok(())
                    }
                    _ => {
                        tracing::warn!(
                            saga = %exec.id,
                            message_id = %reply.id,
                            "a reply that no step is waiting for is ignored (late or duplicate)"
                        );
                        Ok(())
                    }
                }
            }
            Input::Timer => self.fire(version, exec, tx).await,
        }
    }

    /// Runs steps until one waits for a reply or the saga ends.
    async fn advance(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        loop {
            let frame = exec
                .frames
                .last()
                .expect("a running saga has a frame")
                .clone();
            let Some(def) = definition(version, &frame.saga) else {
                let error = ErrorInfo {
                    status: 500,
                    message: format!(
                        "saga {} is not defined by this component version",
                        frame.saga
                    ),
                };
                return self.fail(version, exec, tx, error, None).await;
            };
            let Some(step) = def.steps.get(frame.step) else {
                // The end of a definition: its commit, then back to the outer saga or done.
                if let Some(callback) = &def.commit {
                    let called = self
                        .runtime
                        .execute(
                            version,
                            self.call_context(exec, version, true, tx),
                            &def.name,
                            callback,
                            context_json(exec),
                        )
                        .await;
                    match absorb(called, tx)?.and_then(|json| parse_context(callback, &json)) {
                        Ok(context) => exec.context = context,
                        Err(error) => {
                            let error = ErrorInfo {
                                status: error.status,
                                message: format!(
                                    "the commit of saga {} failed: {}",
                                    def.name, error.message
                                ),
                            };
                            return self.fail(version, exec, tx, error, None).await;
                        }
                    }
                }
                exec.frames.pop();
                match exec.frames.last_mut() {
                    Some(parent) => {
                        parent.step += 1;
                        continue;
                    }
                    None => {
                        exec.status = Status::Finished;
                        tx.resolve = Some(Resolve::Promote(exec.id.clone()));
                        return Ok(());
                    }
                }
            };
            let mut record = StepRecord {
                saga: def.name.clone(),
                index: frame.step,
                kind: StepKind::Local,
                status: StepStatus::Running,
                topic: None,
                sent: None,
                started_at: storage::now_ms(),
                finished_at: None,
                error: None,
                compensation: None,
            };
            match step {
                Step::Remote(remote) => {
                    record.kind = StepKind::Remote;
                    exec.steps.push(record);
                    let index = exec.steps.len() - 1;
                    let headers = vec![("step".to_string(), index.to_string())];
                    let reply_to = Some(ReplyTo::Saga {
                        service: exec.service.clone(),
                    });
                    let mut message = match self
                        .command(
                            version,
                            exec,
                            &def.name,
                            &remote.invoke,
                            headers,
                            reply_to,
                            tx,
                        )
                        .await?
                    {
                        Ok(message) => message,
                        Err(error) => {
                            // The participant never got it: nothing of its to compensate.
                            exec.steps[index].status = StepStatus::Failed;
                            return self.fail(version, exec, tx, error, None).await;
                        }
                    };
                    let timeout = def.step_timeout.unwrap_or(self.config.step_timeout);
                    set_attempt(&mut message, 1);
                    let record = &mut exec.steps[index];
                    record.topic = Some(message.topic.clone());
                    record.sent = Some(sent(&message, 1, timeout));
                    record.status = StepStatus::AwaitingReply;
                    exec.status = Status::Paused;
                    match self.deliver(exec, &message, true, tx).await? {
                        Ok(Delivered::Queued) => return Ok(()),
                        Ok(Delivered::Replied(reply)) => {
                            match self.take_reply(version, exec, index, &reply, tx).await? {
                                Next::Continue => continue,
                                Next::Stop => return Ok(()),
                            }
                        }
                        Err(error) => {
                            exec.steps[index].status = StepStatus::Failed;
                            return self.fail(version, exec, tx, error, None).await;
                        }
                    }
                }
                Step::Local(local) => {
                    exec.steps.push(record);
                    let index = exec.steps.len() - 1;
                    let called = self
                        .runtime
                        .execute(
                            version,
                            self.call_context(exec, version, true, tx),
                            &def.name,
                            &local.on_execute,
                            context_json(exec),
                        )
                        .await;
                    match absorb(called, tx)?
                        .and_then(|json| parse_context(&local.on_execute, &json))
                    {
                        Ok(context) => {
                            exec.context = context;
                            finish_step(&mut exec.steps[index], StepStatus::Succeeded);
                            exec.frames.last_mut().expect("frame").step += 1;
                        }
                        Err(error) => {
                            return self.fail(version, exec, tx, error, Some(index)).await;
                        }
                    }
                }
                Step::Conditional(conditional) => {
                    record.kind = StepKind::Conditional;
                    exec.steps.push(record);
                    let index = exec.steps.len() - 1;
                    let mut chosen = None;
                    for (condition, saga) in &conditional.branches {
                        let called = self
                            .runtime
                            .condition(
                                version,
                                self.call_context(exec, version, true, tx),
                                &def.name,
                                condition,
                                context_json(exec),
                            )
                            .await;
                        match absorb(called, tx)? {
                            Ok(true) => {
                                chosen = Some(saga.clone());
                                break;
                            }
                            Ok(false) => {}
                            Err(error) => {
                                finish_step(&mut exec.steps[index], StepStatus::Failed);
                                return self.fail(version, exec, tx, error, None).await;
                            }
                        }
                    }
                    finish_step(&mut exec.steps[index], StepStatus::Succeeded);
                    match chosen.or_else(|| conditional.otherwise.clone()) {
                        Some(saga) => exec.frames.push(Frame { saga, step: 0 }),
                        None => exec.frames.last_mut().expect("frame").step += 1,
                    }
                }
            }
        }
    }

    /// Takes the reply of the step at `index` (Minos's rules): SUCCESS runs `on_reply`; ERROR
    /// runs `on_error` (none: the saga goes on); SYSTEM_ERROR is retried, then fails the step
    /// without its own compensation; a failing callback fails the step with it.
    async fn take_reply(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        index: usize,
        reply: &Message,
        tx: &mut Transaction,
    ) -> Result<Next, Raced> {
        let record = &exec.steps[index];
        let Some(Step::Remote(step)) = definition(version, &record.saga)
            .and_then(|d| d.steps.get(record.index))
            .cloned()
        else {
            let error = ErrorInfo {
                status: 500,
                message: format!(
                    "saga {} has no remote step {} in this component version",
                    record.saga,
                    record.index + 1
                ),
            };
            self.fail(version, exec, tx, error, None).await?;
            return Ok(Next::Stop);
        };
        let saga_name = record.saga.clone();
        let topic = record.topic.clone().unwrap_or_default();
        let callback = match reply.status {
            200..=299 => step.on_reply.clone(),
            400..=499 => step.on_error.clone(),
            status => {
                let message = format!("{topic} failed: {}", reply_message(&reply.payload));
                let attempts = exec.steps[index].attempts();
                let record = &mut exec.steps[index];
                record.error = Some(ErrorInfo {
                    status,
                    message: message.clone(),
                });
                if attempts < self.config.max_attempts {
                    // SYSTEM_ERROR: the participant's attempt changed nothing; try again later.
                    let retry_at =
                        storage::now_ms() + self.config.retry_delay(attempts).as_millis() as i64;
                    record.status = StepStatus::AwaitingRetry;
                    if let Some(sent) = record.sent.as_mut() {
                        sent.retry_at = Some(retry_at);
                    }
                    exec.status = Status::Paused;
                    return Ok(Next::Stop);
                }
                finish_step(record, StepStatus::Failed);
                let error = ErrorInfo {
                    status,
                    message: format!("{message} (after {attempts} attempts)"),
                };
                // Nothing of the participant's to undo: its own compensation is not sent.
                self.fail(version, exec, tx, error, None).await?;
                return Ok(Next::Stop);
            }
        };
        if (400..=499).contains(&reply.status) {
            exec.steps[index].error = Some(ErrorInfo {
                status: reply.status,
                message: reply_message(&reply.payload),
            });
        }
        if let Some(callback) = callback {
            let wit_reply = wit::Reply {
                status: reply.status,
                payload: reply.payload.clone(),
            };
            let called = self
                .runtime
                .on_reply(
                    version,
                    self.call_context(exec, version, true, tx),
                    &saga_name,
                    &callback,
                    context_json(exec),
                    wit_reply,
                )
                .await;
            match absorb(called, tx)?.and_then(|json| parse_context(&callback, &json)) {
                Ok(context) => exec.context = context,
                Err(error) => {
                    // The participant did its part: the failed step is compensated too.
                    self.fail(version, exec, tx, error, Some(index)).await?;
                    return Ok(Next::Stop);
                }
            }
        }
        finish_step(&mut exec.steps[index], StepStatus::Succeeded);
        exec.frames
            .last_mut()
            .expect("a running saga has a frame")
            .step += 1;
        exec.status = Status::Running;
        Ok(Next::Continue)
    }

    /// Fires what is due: the saga's deadline, the awaiting step's reply deadline or retry, or
    /// its compensations'.
    async fn fire(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        let now = storage::now_ms();
        if exec.status.is_final() {
            return Ok(());
        }
        if exec.status == Status::Compensating {
            return self.fire_compensations(version, exec, tx, now).await;
        }
        if exec.deadline_at.is_some_and(|deadline| deadline <= now) {
            let limit = (exec.deadline_at.unwrap_or(now) - exec.created_at) / 1000;
            let error = ErrorInfo {
                status: 504,
                message: format!("the saga did not finish within its deadline of {limit} s"),
            };
            // The awaiting step may or may not have been done: compensate it too.
            let own = exec.awaiting();
            return self.fail(version, exec, tx, error, own).await;
        }
        let Some(index) = exec.awaiting() else {
            return Ok(());
        };
        let record = &exec.steps[index];
        let Some(sent) = record.sent.clone() else {
            return Ok(());
        };
        let next = match record.status {
            StepStatus::AwaitingReply if sent.reply_due <= now => {
                if sent.attempts >= self.config.max_attempts {
                    let topic = record.topic.clone().unwrap_or_default();
                    let timeout = (sent.reply_due - sent.sent_at) / 1000;
                    let error = ErrorInfo {
                        status: 504,
                        message: format!(
                            "{topic} did not reply within {timeout} s, {} attempts",
                            sent.attempts
                        ),
                    };
                    // The participant may have done it: compensate it too.
                    self.fail(version, exec, tx, error, Some(index)).await?;
                    return Ok(());
                }
                // Same message id: a participant that did get the first copy does nothing twice.
                self.resend_step(version, exec, index, false, tx).await?
            }
            StepStatus::AwaitingRetry if sent.retry_at.is_some_and(|at| at <= now) => {
                self.resend_step(version, exec, index, true, tx).await?
            }
            _ => Next::Stop,
        };
        if let Next::Continue = next {
            self.advance(version, exec, tx).await?;
        }
        Ok(())
    }

    /// Sends the awaiting step's command again: with a new id after a system error (the
    /// participant's attempt changed nothing), with the same id after a missing reply.
    async fn resend_step(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        index: usize,
        new_id: bool,
        tx: &mut Transaction,
    ) -> Result<Next, Raced> {
        let timeout = self.step_timeout(version, &exec.steps[index]);
        let Some(previous) = exec.steps[index].sent.clone() else {
            return Ok(Next::Stop);
        };
        let Ok(mut message) = Message::decode(&previous.message) else {
            let error = ErrorInfo {
                status: 500,
                message: "the step's stored command is unreadable".into(),
            };
            self.fail(version, exec, tx, error, None).await?;
            return Ok(Next::Stop);
        };
        if new_id {
            message.id = uuid::Uuid::new_v4().to_string();
        }
        set_attempt(&mut message, previous.attempts + 1);
        let record = &mut exec.steps[index];
        record.sent = Some(sent(&message, previous.attempts + 1, timeout));
        record.status = StepStatus::AwaitingReply;
        exec.status = Status::Paused;
        match self.deliver(exec, &message, new_id, tx).await? {
            Ok(Delivered::Queued) => Ok(Next::Stop),
            Ok(Delivered::Replied(reply)) => {
                self.take_reply(version, exec, index, &reply, tx).await
            }
            Err(error) => {
                finish_step(&mut exec.steps[index], StepStatus::Failed);
                self.fail(version, exec, tx, error, None).await?;
                Ok(Next::Stop)
            }
        }
    }

    fn step_timeout(&self, version: &ServiceVersion, record: &StepRecord) -> Duration {
        definition(version, &record.saga)
            .and_then(|d| d.step_timeout)
            .unwrap_or(self.config.step_timeout)
    }

    /// Builds the command of a remote step (or of its compensation).
    #[allow(clippy::too_many_arguments)]
    async fn command(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &Execution,
        saga_name: &str,
        invocation: &Invocation,
        mut headers: Vec<(String, String)>,
        reply_to: Option<ReplyTo>,
        tx: &mut Transaction,
    ) -> Result<Result<Message, ErrorInfo>, Raced> {
        let compensating = headers.iter().any(|(name, _)| name == "compensation");
        let (target, payload) = match &invocation.prepare {
            Some(callback) => {
                let called = self
                    .runtime
                    .prepare(
                        version,
                        self.call_context(exec, version, !compensating, tx),
                        saga_name,
                        callback,
                        context_json(exec),
                    )
                    .await;
                let request = match absorb(called, tx)? {
                    Ok(request) => request,
                    Err(error) => return Ok(Err(error)),
                };
                if serde_json::from_str::<serde::de::IgnoredAny>(&request.payload).is_err() {
                    return Ok(Err(ErrorInfo {
                        status: 500,
                        message: format!("callback {callback} returned a payload that is not JSON"),
                    }));
                }
                (request.target, request.payload)
            }
            None => (None, context_json(exec)),
        };
        let Some(topic) = target.or_else(|| invocation.topic.clone()) else {
            return Ok(Err(ErrorInfo {
                status: 500,
                message: format!(
                    "callback {} named no target topic, and the step names none either",
                    invocation.prepare.as_deref().unwrap_or("?")
                ),
            }));
        };
        headers.push(("saga".into(), exec.id.clone()));
        if let Some(user) = &exec.user {
            headers.push(("user".into(), user.clone()));
        }
        Ok(Ok(Message::command(&topic, payload, headers, reply_to)))
    }

    /// Delivers a command: inline when its participant is loaded here (and inline steps are
    /// on) and the message is `fresh` — a message id sent before may already be in the queue,
    /// where the participant's own deduplication must decide — through the queue otherwise.
    async fn deliver(
        &self,
        exec: &Execution,
        message: &Message,
        fresh: bool,
        tx: &mut Transaction,
    ) -> Result<Result<Delivered, ErrorInfo>, Raced> {
        if self.config.inline_steps
            && fresh
            && let Some(participant) = self.local_participant(&message.topic)
            && let Some((request, scope, access)) = handler::request_for(&participant, message)
        {
            let mut context = CallContext::new(participant.clone(), self.env(), scope, access);
            context.user = exec.user.clone();
            context.message_id = Some(message.id.clone());
            context.prior = tx.writes.clone();
            let (result, called) = self.runtime.handle(&participant, context, request).await;
            if let Err(CallError::Raced { holder, .. }) = &result {
                return Err(Raced(holder.clone()));
            }
            if matches!(result, Ok(Ok(_))) {
                tx.writes.extend(called.writes);
                tx.messages.extend(called.messages);
            }
            // No consumed record: a fresh message handled inline is answered at once, so no
            // copy of it is ever queued (only a late reply makes the same id go out again).
            let (status, payload) = handler::reply_of(&result);
            return Ok(Ok(Delivered::Replied(message.reply(status, payload))));
        }
        match self.broker.address_command(message, None) {
            Ok(addressed) => {
                tx.messages.push(addressed);
                Ok(Ok(Delivered::Queued))
            }
            Err(error) => Ok(Err(ErrorInfo {
                status: 500,
                message: error.to_string(),
            })),
        }
    }

    fn local_participant(&self, topic: &str) -> Option<Arc<ServiceVersion>> {
        let services = self.registry.current();
        let name = services.topics.commands.get(topic)?;
        services.by_name.get(name).cloned()
    }

    /// Fails the saga: discards its staged writes, compensates executed steps in reverse (each
    /// once), records why, and settles its status. `own` is a step that failed after its
    /// participant or callback acted: it is compensated too.
    async fn fail(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        tx: &mut Transaction,
        error: ErrorInfo,
        own: Option<usize>,
    ) -> Result<(), Raced> {
        tracing::info!(saga = %exec.id, status = error.status, error = %error.message, "saga failed; compensating");
        // What this transition staged vanishes with the saga's other staged writes.
        tx.writes
            .retain(|w| w.staged_under.as_deref() != Some(exec.id.as_str()));
        tx.messages
            .retain(|m| m.staged_under.as_deref() != Some(exec.id.as_str()));
        tx.resolve = Some(Resolve::Discard(exec.id.clone()));
        for index in (0..exec.steps.len()).rev() {
            let record = &exec.steps[index];
            let executed = record.status == StepStatus::Succeeded || own == Some(index);
            if !executed || record.compensation.is_some() {
                continue;
            }
            let step = definition(version, &record.saga)
                .and_then(|d| d.steps.get(record.index))
                .cloned();
            let saga_name = record.saga.clone();
            match step {
                Some(Step::Remote(remote)) => {
                    if let Some(invocation) = &remote.compensation {
                        self.compensate_remote(version, exec, index, &saga_name, invocation, tx)
                            .await?;
                    }
                }
                Some(Step::Local(local)) => {
                    if let Some(callback) = &local.on_failure {
                        let called = self
                            .runtime
                            .execute(
                                version,
                                self.call_context(exec, version, false, tx),
                                &saga_name,
                                callback,
                                context_json(exec),
                            )
                            .await;
                        let outcome = absorb(called, tx)?;
                        exec.steps[index].compensation = Some(match outcome {
                            Ok(_) => Compensation {
                                status: CompensationStatus::Done,
                                sent: None,
                                error: None,
                            },
                            Err(problem) => Compensation {
                                status: CompensationStatus::Failed,
                                sent: None,
                                error: Some(problem),
                            },
                        });
                    }
                }
                Some(Step::Conditional(_)) | None => {}
            }
            if own == Some(index) {
                let record = &mut exec.steps[index];
                finish_step(record, StepStatus::Failed);
                record.error.get_or_insert_with(|| error.clone());
            }
        }
        exec.error = Some(error);
        settle(exec);
        Ok(())
    }

    async fn compensate_remote(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        index: usize,
        saga_name: &str,
        invocation: &Invocation,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        let headers = vec![("compensation".to_string(), index.to_string())];
        let reply_to = Some(ReplyTo::Saga {
            service: exec.service.clone(),
        });
        let mut message = match self
            .command(version, exec, saga_name, invocation, headers, reply_to, tx)
            .await?
        {
            Ok(message) => message,
            Err(problem) => {
                exec.steps[index].compensation = Some(Compensation {
                    status: CompensationStatus::Failed,
                    sent: None,
                    error: Some(problem),
                });
                return Ok(());
            }
        };
        let timeout = self.step_timeout(version, &exec.steps[index]);
        set_attempt(&mut message, 1);
        exec.steps[index].compensation = Some(Compensation {
            status: CompensationStatus::Sent,
            sent: Some(sent(&message, 1, timeout)),
            error: None,
        });
        self.deliver_compensation(exec, index, &message, true, tx)
            .await
    }

    async fn deliver_compensation(
        &self,
        exec: &mut Execution,
        index: usize,
        message: &Message,
        fresh: bool,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        match self.deliver(exec, message, fresh, tx).await? {
            Ok(Delivered::Queued) => {}
            Ok(Delivered::Replied(reply)) => self.note_compensation_reply(exec, index, &reply),
            Err(problem) => {
                if let Some(compensation) = exec.steps[index].compensation.as_mut() {
                    compensation.status = CompensationStatus::Failed;
                    compensation.error = Some(problem);
                }
            }
        }
        Ok(())
    }

    /// A participant's answer to a compensation: done (also when it refuses it: a business
    /// error is its final word), or a system error to retry.
    fn note_compensation_reply(&self, exec: &mut Execution, index: usize, reply: &Message) {
        let retry_delay = |attempts| self.config.retry_delay(attempts);
        let max_attempts = self.config.max_attempts;
        let Some(compensation) = exec.steps[index].compensation.as_mut() else {
            return;
        };
        if compensation.status != CompensationStatus::Sent {
            return;
        }
        if reply.status < 500 {
            compensation.status = CompensationStatus::Done;
            if reply.status >= 400 {
                compensation.error = Some(ErrorInfo {
                    status: reply.status,
                    message: reply_message(&reply.payload),
                });
            }
            return;
        }
        let attempts = compensation.sent.as_ref().map_or(1, |s| s.attempts);
        compensation.error = Some(ErrorInfo {
            status: reply.status,
            message: reply_message(&reply.payload),
        });
        if attempts >= max_attempts {
            compensation.status = CompensationStatus::Failed;
        } else if let Some(sent) = compensation.sent.as_mut() {
            compensation.status = CompensationStatus::AwaitingRetry;
            sent.retry_at = Some(storage::now_ms() + retry_delay(attempts).as_millis() as i64);
        }
    }

    async fn compensation_replied(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        index: usize,
        reply: &Message,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        if exec.status != Status::Compensating || index >= exec.steps.len() {
            tracing::warn!(saga = %exec.id, "a compensation reply nobody waits for is ignored");
            return Ok(());
        }
        self.note_compensation_reply(exec, index, reply);
        self.fire_compensations(version, exec, tx, storage::now_ms())
            .await
    }

    /// Sends again the compensations whose retry is due or whose confirmation is late, and
    /// gives up on those out of attempts.
    async fn fire_compensations(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        tx: &mut Transaction,
        now: i64,
    ) -> Result<(), Raced> {
        for index in (0..exec.steps.len()).rev() {
            let Some(compensation) = exec.steps[index].compensation.clone() else {
                continue;
            };
            let Some(previous) = compensation.sent.clone() else {
                continue;
            };
            let new_id = match compensation.status {
                CompensationStatus::AwaitingRetry
                    if previous.retry_at.is_some_and(|at| at <= now) =>
                {
                    true
                }
                CompensationStatus::Sent if previous.reply_due <= now => {
                    if previous.attempts >= self.config.max_attempts {
                        let slot = exec.steps[index]
                            .compensation
                            .as_mut()
                            .expect("compensation");
                        slot.status = CompensationStatus::Failed;
                        slot.error = Some(ErrorInfo {
                            status: 504,
                            message: format!(
                                "no confirmation after {} attempts",
                                previous.attempts
                            ),
                        });
                        continue;
                    }
                    false
                }
                _ => continue,
            };
            let Ok(mut message) = Message::decode(&previous.message) else {
                continue;
            };
            if new_id {
                message.id = uuid::Uuid::new_v4().to_string();
            }
            let timeout = self.step_timeout(version, &exec.steps[index]);
            let slot = exec.steps[index]
                .compensation
                .as_mut()
                .expect("compensation");
            slot.status = CompensationStatus::Sent;
            slot.sent = Some(sent(&message, previous.attempts + 1, timeout));
            self.deliver_compensation(exec, index, &message, new_id, tx)
                .await?;
        }
        settle(exec);
        Ok(())
    }

    /// The context of a callback call: staged under the saga, except compensations, whose
    /// writes must survive the saga's rollback.
    fn call_context(
        &self,
        exec: &Execution,
        version: &Arc<ServiceVersion>,
        staged: bool,
        tx: &Transaction,
    ) -> CallContext {
        let scope = if staged {
            Scope::Saga(exec.id.clone())
        } else {
            Scope::Direct
        };
        let mut context = CallContext::new(version.clone(), self.env(), scope, Access::ReadWrite);
        context.user = exec.user.clone();
        context.prior = tx.writes.clone();
        context
    }
}

impl TransitionError {
    fn describe(&self) -> String {
        match self {
            TransitionError::Gone => "it is gone".into(),
            TransitionError::Duplicate => "its message was handled before".into(),
            TransitionError::Unloaded(problem) | TransitionError::Storage(problem) => {
                problem.clone()
            }
        }
    }
}

/// A saga's first transition is its first write: when it also finishes it, nothing was staged
/// before, so its writes and events commit directly instead of being staged and promoted; when
/// it fails, there is nothing stored to discard.
fn fold_first_transition(exec: &Execution, tx: &mut Transaction) {
    match &tx.resolve {
        Some(Resolve::Promote(saga)) if *saga == exec.id => {
            for write in &mut tx.writes {
                if write.staged_under.as_deref() == Some(saga.as_str()) {
                    write.staged_under = None;
                }
            }
            for message in &mut tx.messages {
                if message.staged_under.as_deref() == Some(saga.as_str()) {
                    message.staged_under = None;
                }
            }
            tx.resolve = None;
        }
        Some(Resolve::Discard(saga)) if *saga == exec.id => tx.resolve = None,
        _ => {}
    }
}

/// The status a failed saga settles in, from its compensations.
fn settle(exec: &mut Execution) {
    let compensations: Vec<CompensationStatus> = exec
        .steps
        .iter()
        .filter_map(|s| s.compensation.as_ref().map(|c| c.status))
        .collect();
    exec.status = if compensations.iter().any(|s| {
        matches!(
            s,
            CompensationStatus::Sent | CompensationStatus::AwaitingRetry
        )
    }) {
        Status::Compensating
    } else if compensations.contains(&CompensationStatus::Failed) {
        Status::CompensationFailed
    } else {
        Status::Errored
    };
}

/// Marks which attempt a command is (the "attempt" header, from 1), for the participant's logs
/// and decisions.
fn set_attempt(message: &mut Message, attempt: u32) {
    message.headers.retain(|(name, _)| name != "attempt");
    message
        .headers
        .push(("attempt".into(), attempt.to_string()));
}

fn sent(message: &Message, attempts: u32, timeout: Duration) -> Sent {
    let now = storage::now_ms();
    Sent {
        message: message.encode(),
        attempts,
        sent_at: now,
        reply_due: now + timeout.as_millis() as i64,
        retry_at: None,
    }
}

fn finish_step(record: &mut StepRecord, status: StepStatus) {
    record.status = status;
    record.finished_at = Some(storage::now_ms());
}

fn definition<'a>(version: &'a ServiceVersion, name: &str) -> Option<&'a SagaDefinition> {
    version.manifest.sagas.get(name).map(Arc::as_ref)
}

fn context_json(exec: &Execution) -> String {
    Value::Object(exec.context.clone()).to_string()
}

/// The text of an error reply's payload (a JSON string), or the payload itself.
fn reply_message(payload: &str) -> String {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::String(text)) => text,
        _ => payload.to_string(),
    }
}

fn parse_context(callback: &str, json: &str) -> Result<Map<String, Value>, ErrorInfo> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ErrorInfo {
            status: 500,
            message: format!(
                "callback {callback} returned a saga context that is not a JSON object"
            ),
        }),
    }
}

/// A callback's result; on success its writes and messages join the transition's transaction.
fn absorb<T>(
    called: Called<Result<T, wit::Error>>,
    tx: &mut Transaction,
) -> Result<Result<T, ErrorInfo>, Raced> {
    let (result, context) = called;
    Ok(match result {
        Ok(Ok(value)) => {
            tx.writes.extend(context.writes);
            tx.messages.extend(context.messages);
            Ok(value)
        }
        Ok(Err(error)) => Err(ErrorInfo {
            status: if (400..=599).contains(&error.status) {
                error.status
            } else {
                500
            },
            message: error.message,
        }),
        Err(CallError::Raced { holder, .. }) => return Err(Raced(holder)),
        Err(error) => Err(ErrorInfo {
            status: 500,
            message: error.to_string(),
        }),
    })
}

/// The orchestrator as the `sagas` import sees it.
pub struct Runner(pub Arc<Orchestrator>);

impl SagaRunner for Runner {
    fn run(
        &self,
        caller: Caller,
        name: String,
        context: Map<String, Value>,
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
