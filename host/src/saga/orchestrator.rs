//! The saga orchestrator: starts executions, advances them step by step, reacts to replies, and
//! compensates. Each transition — a start running up to its first remote step, a reply running
//! up to the next one or to the end — is one storage transaction holding the new execution
//! state, the callbacks' staged writes, the messages the step sends and the acknowledgement of
//! the reply, so a crash leaves either all of a transition or none of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::{Notify, oneshot};

use super::definition::{Invocation, SagaDefinition, Step};
use super::execution::{ErrorInfo, Execution, Frame, Status, StepKind, StepRecord, StepStatus};
use crate::broker::{Broker, Delivery, Message, Outcome, ReplyTo};
use crate::runtime::bindings::types as wit;
use crate::runtime::registry::Registry;
use crate::runtime::{
    Access, CallContext, CallEnv, CallError, Called, Caller, Runtime, SagaRunner, Scope,
    ServiceVersion,
};
use crate::storage::{self, NewMessage, Resolve, Storage, StorageError, Transaction};

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
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    broker: Broker,
    storage: Storage,
    env: OnceLock<Weak<CallEnv>>,
    ends: SagaEnds,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<wit::Execution>>>>,
    /// Paused executions as last stored by this process, so that a reply needs no read. The
    /// stored revision still decides: a stale copy fails its commit and is read again.
    paused: Mutex<HashMap<String, Execution>>,
    /// How long a transition may wait for aggregates another saga holds.
    lock_wait: Duration,
}

/// Paused executions kept in memory at most; beyond, replies read them from storage.
const MAX_CACHED_PAUSED: usize = 100_000;

/// What moves an execution.
enum Input {
    Start,
    Reply(Message),
    /// The saga's writes could not commit: fail it.
    Fail(ErrorInfo),
}

/// A transition that could not be stored.
enum PersistError {
    /// Try the transition again, from the stored state, once `holder` (if any) has ended.
    Retry(Option<String>),
    /// The saga's staged writes were overwritten: fail the saga instead.
    Overwritten(ErrorInfo),
    /// The reply was handled already.
    Duplicate,
    Storage(StorageError),
}

impl Orchestrator {
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        broker: Broker,
        storage: Storage,
        ends: SagaEnds,
        lock_wait: Duration,
    ) -> Self {
        Orchestrator {
            runtime,
            registry,
            broker,
            storage,
            env: OnceLock::new(),
            ends,
            waiters: Mutex::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            lock_wait,
        }
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
        let template = Execution::new(version.name(), &name, &version.digest, context, caller.user);
        let id = template.id.clone();
        let finished = wait.then(|| self.register_waiter(&id));
        let given_up = Instant::now() + self.lock_wait;
        let mut input = Input::Start;
        let exec = loop {
            let mut exec = template.clone();
            let mut tx = Transaction::default();
            let processed = self.process(&version, &mut exec, &input, &mut tx).await;
            let stored = match processed {
                Ok(()) => self.persist(&mut exec, tx).await,
                Err(Raced(holder)) => Err(PersistError::Retry(holder)),
            };
            match stored {
                Ok(()) => break exec,
                Err(PersistError::Retry(holder)) if Instant::now() < given_up => {
                    self.wait_for(holder).await
                }
                Err(PersistError::Overwritten(error)) => input = Input::Fail(error),
                Err(PersistError::Retry(_)) => {
                    self.drop_waiter(&id);
                    return Err(wit::Error {
                        status: 503,
                        message: format!(
                            "saga {name} could not start: the aggregates it writes stayed held by other sagas for {} s; try again",
                            self.lock_wait.as_secs()
                        ),
                    });
                }
                Err(PersistError::Duplicate) => unreachable!("a start acknowledges no message"),
                Err(PersistError::Storage(error)) => {
                    self.drop_waiter(&id);
                    return Err(wit::Error {
                        status: 500,
                        message: format!("saga {name} could not be stored: {error}"),
                    });
                }
            }
        };
        match finished {
            Some(receiver) => match receiver.await {
                Ok(done) => Ok(done),
                // The host is shutting down; report what is stored.
                Err(_) => self.get(version.name().to_string(), id).await,
            },
            None => Ok(exec.to_wit()),
        }
    }

    /// Looks up an execution of `service`.
    pub async fn get(&self, service: String, id: String) -> Result<wit::Execution, wit::Error> {
        let not_found = || wit::Error {
            status: 404,
            message: format!("no saga execution {id} of service {service}"),
        };
        match self.storage.load_saga(&id).await {
            Ok(Some(row)) if row.service == service => Execution::from_row(&row)
                .map(|e| e.to_wit())
                .map_err(|message| wit::Error {
                    status: 500,
                    message,
                }),
            Ok(_) => Err(not_found()),
            Err(error) => Err(wit::Error {
                status: 500,
                message: format!("storage failed: {error}"),
            }),
        }
    }

    /// Takes a reply to a saga step.
    pub async fn on_reply(&self, delivery: Delivery) -> Outcome {
        let Some(saga_id) = delivery.message.header("saga").map(str::to_string) else {
            tracing::warn!(message_id = %delivery.message.id, "a reply without a saga header is dropped");
            return self.acknowledge(delivery.seq).await;
        };
        let given_up = Instant::now() + self.lock_wait;
        let mut input = Input::Reply(delivery.message.clone());
        loop {
            let mut exec = match self.load(&saga_id).await {
                Ok(Some(exec)) => exec,
                Ok(None) => {
                    tracing::warn!(saga = %saga_id, "a reply for an unknown saga is dropped");
                    return self.acknowledge(delivery.seq).await;
                }
                Err(problem) => return Outcome::Retry(problem),
            };
            let Some(version) = self.registry.service(&exec.service) else {
                return Outcome::Retry(format!(
                    "service {} is not loaded; its saga {saga_id} waits",
                    exec.service
                ));
            };
            let mut tx = Transaction {
                ack: Some(delivery.seq),
                ..Transaction::default()
            };
            let processed = self.process(&version, &mut exec, &input, &mut tx).await;
            let stored = match processed {
                Ok(()) => self.persist(&mut exec, tx).await,
                Err(Raced(holder)) => Err(PersistError::Retry(holder)),
            };
            match stored {
                Ok(()) | Err(PersistError::Duplicate) => return Outcome::Done,
                Err(PersistError::Retry(holder)) if Instant::now() < given_up => {
                    self.wait_for(holder).await
                }
                Err(PersistError::Retry(_)) => {
                    input = Input::Fail(ErrorInfo {
                        status: 503,
                        message: format!(
                            "the saga's writes stayed blocked by other sagas for {} s",
                            self.lock_wait.as_secs()
                        ),
                    })
                }
                Err(PersistError::Overwritten(error)) => input = Input::Fail(error),
                Err(PersistError::Storage(error)) => return Outcome::Retry(error.to_string()),
            }
        }
    }

    /// An execution as stored: from memory when this process stored it paused, else read.
    async fn load(&self, id: &str) -> Result<Option<Execution>, String> {
        if let Some(exec) = self.paused.lock().expect("paused lock").remove(id) {
            return Ok(Some(exec));
        }
        match self.storage.load_saga(id).await {
            Ok(Some(row)) => Execution::from_row(&row).map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn acknowledge(&self, seq: i64) -> Outcome {
        let tx = Transaction {
            ack: Some(seq),
            ..Transaction::default()
        };
        match self.broker.commit(tx).await {
            Ok(()) | Err(StorageError::Duplicate(_)) => Outcome::Done,
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }

    async fn wait_for(&self, holder: Option<String>) {
        match holder {
            Some(saga) => self.ends.wait(&saga, Duration::from_millis(100)).await,
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }

    /// Stores a transition; notifies waiters when the saga has ended.
    async fn persist(&self, exec: &mut Execution, mut tx: Transaction) -> Result<(), PersistError> {
        exec.updated_at = storage::now_ms().max(exec.updated_at);
        tx.saga = Some(exec.to_row());
        match self.broker.commit(tx).await {
            Ok(()) => {
                exec.revision += 1;
                tracing::debug!(saga = %exec.id, status = exec.status.as_str(), "saga transition stored");
                if exec.status.is_final() {
                    self.ended(exec);
                } else if exec.status == Status::Paused {
                    let mut paused = self.paused.lock().expect("paused lock");
                    if paused.len() < MAX_CACHED_PAUSED {
                        paused.insert(exec.id.clone(), exec.clone());
                    }
                }
                Ok(())
            }
            Err(StorageError::Conflict { holder, .. }) => Err(PersistError::Retry(holder)),
            Err(StorageError::SagaChanged(_)) => Err(PersistError::Retry(None)),
            Err(StorageError::Duplicate(_)) => Err(PersistError::Duplicate),
            Err(error @ StorageError::Overwritten { .. }) => {
                Err(PersistError::Overwritten(ErrorInfo {
                    status: 409,
                    message: format!("{error}; the saga was rolled back instead of overwriting it"),
                }))
            }
            Err(error) => Err(PersistError::Storage(error)),
        }
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

    fn drop_waiter(&self, id: &str) {
        self.waiters.lock().expect("waiters lock").remove(id);
    }

    fn ended(&self, exec: &Execution) {
        let waiting = self.waiters.lock().expect("waiters lock").remove(&exec.id);
        for waiter in waiting.into_iter().flatten() {
            let _ = waiter.send(exec.to_wit());
        }
        self.ends.ended(&exec.id);
        tracing::info!(saga = %exec.id, name = %exec.name, status = exec.status.as_str(), "saga ended");
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
                self.advance(version, exec, tx).await
            }
            Input::Fail(error) => {
                let awaiting = exec.awaiting();
                if let Some(index) = awaiting {
                    // The participant did its part; undo it with the rest.
                    exec.steps[index].status = StepStatus::Succeeded;
                }
                self.fail(version, exec, tx, error.clone(), None).await
            }
            Input::Reply(reply) => {
                let step = reply.header("step").and_then(|s| s.parse::<usize>().ok());
                match exec.awaiting() {
                    Some(index) if Some(index) == step => {
                        self.take_reply(version, exec, index, reply, tx).await
                    }
                    _ => {
                        tracing::warn!(
                            saga = %exec.id,
                            message_id = %reply.id,
                            "a reply that no step is waiting for is ignored (late, duplicate, or for a compensation)"
                        );
                        Ok(())
                    }
                }
            }
        }
    }

    async fn take_reply(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        index: usize,
        reply: &Message,
        tx: &mut Transaction,
    ) -> Result<(), Raced> {
        let record = &exec.steps[index];
        let Some(Step::Remote(step)) = definition(version, &record.saga)
            .and_then(|d| d.steps.get(record.index))
            .cloned()
        else {
            let error = ErrorInfo {
                status: 500,
                message: format!(
                    "saga {} no longer has remote step {} in this component version",
                    record.saga,
                    record.index + 1
                ),
            };
            return self.fail(version, exec, tx, error, None).await;
        };
        let saga_name = record.saga.clone();
        let wit_reply = wit::Reply {
            status: reply.status,
            payload: reply.payload.clone(),
        };
        let callback = match reply.status {
            200..=299 => step.on_reply.clone(),
            400..=499 => step.on_error.clone(),
            status => {
                // SYSTEM_ERROR: the participant failed, so there is nothing of its to compensate.
                let message = reply_message(&reply.payload);
                exec.steps[index].status = StepStatus::Failed;
                let error = ErrorInfo {
                    status,
                    message: format!(
                        "{} failed: {message}",
                        step.invoke.topic.as_deref().unwrap_or("the participant")
                    ),
                };
                return self.fail(version, exec, tx, error, None).await;
            }
        };
        if let Some(callback) = callback {
            let called = self
                .runtime
                .on_reply(
                    version,
                    self.call_context(exec, version, true),
                    &saga_name,
                    &callback,
                    context_json(exec),
                    wit_reply,
                )
                .await;
            match absorb(called, tx)?.and_then(|json| parse_context(&callback, &json)) {
                Ok(context) => exec.context = context,
                Err(error) => {
                    // A failing callback fails its step, whose own compensation then runs.
                    exec.steps[index].status = StepStatus::Succeeded;
                    return self.fail(version, exec, tx, error, Some(index)).await;
                }
            }
        }
        let record = &mut exec.steps[index];
        record.status = StepStatus::Succeeded;
        record.finished_at = Some(storage::now_ms());
        if (400..=499).contains(&reply.status) {
            record.error = Some(ErrorInfo {
                status: reply.status,
                message: reply_message(&reply.payload),
            });
        }
        exec.frames
            .last_mut()
            .expect("a running saga has a frame")
            .step += 1;
        exec.status = Status::Running;
        self.advance(version, exec, tx).await
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
                            self.call_context(exec, version, true),
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
                message_id: None,
                started_at: storage::now_ms(),
                finished_at: None,
                attempts: 1,
                error: None,
            };
            match step {
                Step::Remote(remote) => {
                    record.kind = StepKind::Remote;
                    exec.steps.push(record);
                    let index = exec.steps.len() - 1;
                    let headers = vec![("step".to_string(), index.to_string())];
                    let sent = self
                        .command(
                            version,
                            exec,
                            &def.name,
                            &remote.invoke,
                            headers,
                            Some(ReplyTo::Saga {
                                service: exec.service.clone(),
                            }),
                            tx,
                        )
                        .await?;
                    match sent {
                        Ok((topic, message)) => {
                            let record = &mut exec.steps[index];
                            record.topic = Some(topic);
                            record.message_id = Some(message.id.clone());
                            record.status = StepStatus::AwaitingReply;
                            tx.messages.push(message);
                            exec.status = Status::Paused;
                            return Ok(());
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
                            self.call_context(exec, version, true),
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
                            exec.steps[index].status = StepStatus::Succeeded;
                            exec.steps[index].finished_at = Some(storage::now_ms());
                            exec.frames.last_mut().expect("frame").step += 1;
                        }
                        Err(error) => {
                            exec.steps[index].status = StepStatus::Succeeded;
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
                                self.call_context(exec, version, true),
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
                                exec.steps[index].status = StepStatus::Failed;
                                return self.fail(version, exec, tx, error, None).await;
                            }
                        }
                    }
                    exec.steps[index].status = StepStatus::Succeeded;
                    exec.steps[index].finished_at = Some(storage::now_ms());
                    match chosen.or_else(|| conditional.otherwise.clone()) {
                        Some(saga) => exec.frames.push(Frame { saga, step: 0 }),
                        None => exec.frames.last_mut().expect("frame").step += 1,
                    }
                }
            }
        }
    }

    /// Builds the command of a remote step (or of its compensation) and addresses it.
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
    ) -> Result<Result<(String, NewMessage), ErrorInfo>, Raced> {
        let (target, payload) = match &invocation.prepare {
            Some(callback) => {
                let compensating = reply_to.is_none();
                let called = self
                    .runtime
                    .prepare(
                        version,
                        self.call_context(exec, version, !compensating),
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
        let message = Message::command(&topic, payload, headers, reply_to);
        Ok(self
            .broker
            .address_command(&message, None)
            .map(|addressed| (topic, addressed))
            .map_err(|e| ErrorInfo {
                status: 500,
                message: e.to_string(),
            }))
    }

    /// Fails the saga: compensates executed steps in reverse (each once), discards its staged
    /// writes, and records why. `own` is a step whose callback failed: it is compensated too.
    async fn fail(
        &self,
        version: &Arc<ServiceVersion>,
        exec: &mut Execution,
        tx: &mut Transaction,
        error: ErrorInfo,
        own: Option<usize>,
    ) -> Result<(), Raced> {
        tracing::info!(saga = %exec.id, status = error.status, error = %error.message, "saga step failed; compensating");
        // Writes staged by this transition vanish with the saga's other staged writes.
        tx.writes
            .retain(|w| w.staged_under.as_deref() != Some(exec.id.as_str()));
        tx.messages
            .retain(|m| m.staged_under.as_deref() != Some(exec.id.as_str()));
        let mut compensation_failed = false;
        for index in (0..exec.steps.len()).rev() {
            let record = &exec.steps[index];
            let executed = record.status == StepStatus::Succeeded;
            if !executed && own != Some(index) {
                continue;
            }
            let step = definition(version, &record.saga)
                .and_then(|d| d.steps.get(record.index))
                .cloned();
            let saga_name = record.saga.clone();
            let outcome = match step {
                Some(Step::Remote(remote)) => match &remote.compensation {
                    Some(compensation) => {
                        let headers = vec![("compensation".to_string(), "true".to_string())];
                        match self
                            .command(version, exec, &saga_name, compensation, headers, None, tx)
                            .await?
                        {
                            Ok((_, message)) => {
                                tx.messages.push(message);
                                Some(Ok(()))
                            }
                            Err(error) => Some(Err(error)),
                        }
                    }
                    None => None,
                },
                Some(Step::Local(local)) => match &local.on_failure {
                    Some(callback) => {
                        let called = self
                            .runtime
                            .execute(
                                version,
                                self.call_context(exec, version, false),
                                &saga_name,
                                callback,
                                context_json(exec),
                            )
                            .await;
                        Some(absorb(called, tx)?.map(|_| ()))
                    }
                    None => None,
                },
                Some(Step::Conditional(_)) | None => None,
            };
            let record = &mut exec.steps[index];
            match outcome {
                Some(Ok(())) => record.status = StepStatus::Compensated,
                Some(Err(problem)) => {
                    tracing::error!(saga = %exec.id, step = index, error = %problem.message, "compensation failed");
                    record.status = StepStatus::CompensationFailed;
                    record.error = Some(problem);
                    compensation_failed = true;
                }
                None if own == Some(index) => record.status = StepStatus::Failed,
                None => {}
            }
            if own == Some(index) && record.error.is_none() {
                record.error = Some(error.clone());
            }
            record.finished_at.get_or_insert(storage::now_ms());
        }
        exec.status = if compensation_failed {
            Status::CompensationFailed
        } else {
            Status::Errored
        };
        exec.error = Some(error);
        tx.resolve = Some(Resolve::Discard(exec.id.clone()));
        Ok(())
    }

    /// The context of a callback call: staged under the saga, except compensations, whose
    /// writes must survive the saga's rollback.
    fn call_context(
        &self,
        exec: &Execution,
        version: &Arc<ServiceVersion>,
        staged: bool,
    ) -> CallContext {
        let scope = if staged {
            Scope::Saga(exec.id.clone())
        } else {
            Scope::Direct
        };
        let mut context = CallContext::new(version.clone(), self.env(), scope, Access::ReadWrite);
        context.user = exec.user.clone();
        context
    }
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

/// A callback raced with another writer: the whole transition is run again from the stored
/// state, once the holder (if any) has ended.
struct Raced(Option<String>);

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
