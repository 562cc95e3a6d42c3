//! Sagas in the Minos style:
//!
//! ```ignore
//! Saga::new()
//!     .step()
//!     .invoke_participant("GetUserAttempts", prepare_data)
//!     .on_reply(store_attempts)
//!     .commit(commit_result)
//! ```
//!
//! The builder records the calls exactly as written; the host checks them when the component
//! loads (an empty step, a missing participant, an operation set twice, a missing commit are
//! refused with the saga and step named). Callbacks are plain functions of the [`SagaContext`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::bindings::orchestrator::saga::host::sagas;
use crate::bindings::saga::host::types;
use crate::{Error, Result};

/// The data a saga carries from step to step: a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SagaContext(Map<String, Value>);

impl SagaContext {
    pub fn new() -> Self {
        SagaContext(Map::new())
    }

    /// Adds a value, builder style: `SagaContext::new().with("user_uuid", user)`.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.set(key, value);
        self
    }

    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.0.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// A value as `T`; a missing key or a value of another shape is a system error naming it.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let value = self
            .0
            .get(key)
            .ok_or_else(|| Error::system(format!("the saga context has no {key:?}")))?;
        T::deserialize(value).map_err(|e| {
            Error::system(format!(
                "the saga context's {key:?} is not what was expected: {e}"
            ))
        })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub(crate) fn parse(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| {
            Error::system(format!(
                "the host sent a saga context that is not a JSON object: {e}"
            ))
        })
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a JSON object serialises")
    }
}

impl std::ops::Index<&str> for SagaContext {
    type Output = Value;

    /// `context["user_uuid"]`, or null when absent.
    fn index(&self, key: &str) -> &Value {
        self.0.get(key).unwrap_or(&Value::Null)
    }
}

/// A participant's reply to a remote step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 200–299 SUCCESS, 400–499 ERROR, 500–599 SYSTEM_ERROR.
    pub status: u16,
    pub payload: String,
}

impl Reply {
    /// The payload as `T`.
    pub fn content<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload)
            .map_err(|e| Error::system(format!("the reply does not fit: {e}")))
    }

    pub fn is_success(&self) -> bool {
        (200..=299).contains(&self.status)
    }

    /// The error message of an error reply (its payload is a JSON string).
    pub fn message(&self) -> String {
        serde_json::from_str::<String>(&self.payload).unwrap_or_else(|_| self.payload.clone())
    }
}

pub(crate) type PrepareFn = Box<dyn Fn(&SagaContext) -> Result<Value>>;
pub(crate) type ReplyFn = Box<dyn Fn(SagaContext, Reply) -> Result<SagaContext>>;
pub(crate) type ExecuteFn = Box<dyn Fn(SagaContext) -> Result<SagaContext>>;
pub(crate) type ConditionFn = Box<dyn Fn(&SagaContext) -> Result<bool>>;

pub(crate) enum Callback {
    Prepare(PrepareFn),
    Reply(ReplyFn),
    Execute(ExecuteFn),
    Condition(ConditionFn),
}

/// A saga definition under construction (see the module documentation).
pub struct Saga {
    pub(crate) operations: Vec<types::SagaOperation>,
    /// Each callback under the name the host calls it by ("step1.on_reply"); a saga has a few.
    pub(crate) callbacks: Vec<(String, Callback)>,
    pub(crate) step_timeout: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    steps: usize,
}

impl Default for Saga {
    fn default() -> Self {
        Saga::new()
    }
}

impl Saga {
    pub fn new() -> Self {
        Saga {
            operations: Vec::new(),
            callbacks: Vec::new(),
            step_timeout: None,
            timeout: None,
            steps: 0,
        }
    }

    fn start(mut self, operation: types::SagaOperation) -> Self {
        self.steps += 1;
        self.operations.push(operation);
        self
    }

    /// Registers a callback of the current step (of none after `commit`) and returns its name.
    /// The whole service is built for every call, so this stays clear of `format!`.
    fn name_callback(&mut self, what: &str, callback: Callback) -> String {
        let mut name = String::with_capacity(what.len() + 8);
        if self.steps != 0 {
            name.push_str("step");
            name.push_str(itoa::Buffer::new().format(self.steps));
            name.push('.');
        }
        name.push_str(what);
        self.callbacks.push((name.clone(), callback));
        name
    }

    /// The callback named `name`.
    pub(crate) fn callback(&self, name: &str) -> Option<&Callback> {
        self.callbacks
            .iter()
            .find_map(|(known, callback)| (known == name).then_some(callback))
    }

    /// Starts a step; what follows decides whether it is remote, local or conditional.
    pub fn step(self) -> Self {
        self.start(types::SagaOperation::Step)
    }

    /// Starts a remote step (Minos 0.7).
    pub fn remote_step(self) -> Self {
        self.start(types::SagaOperation::RemoteStep)
    }

    /// Starts a local step (Minos 0.7).
    pub fn local_step(self) -> Self {
        self.start(types::SagaOperation::LocalStep)
    }

    /// Starts a conditional step (Minos 0.7).
    pub fn conditional_step(self) -> Self {
        self.start(types::SagaOperation::ConditionalStep)
    }

    /// Remote step: sends the command `topic` with the payload `prepare` builds.
    pub fn invoke_participant<T: Serialize + 'static>(
        mut self,
        topic: &str,
        prepare: impl Fn(&SagaContext) -> Result<T> + 'static,
    ) -> Self {
        let callback = Callback::Prepare(Box::new(move |context| {
            Ok(serde_json::to_value(prepare(context)?)?)
        }));
        let name = self.name_callback("invoke_participant", callback);
        self.operations
            .push(types::SagaOperation::InvokeParticipant(types::Invocation {
                topic: topic.to_string(),
                prepare: Some(name),
            }));
        self
    }

    /// Remote step: takes a SUCCESS reply and returns the new context.
    pub fn on_reply(
        mut self,
        callback: impl Fn(SagaContext, Reply) -> Result<SagaContext> + 'static,
    ) -> Self {
        let name = self.name_callback("on_reply", Callback::Reply(Box::new(callback)));
        self.operations.push(types::SagaOperation::OnReply(name));
        self
    }

    /// Minos 0.7's name for [`Saga::on_reply`].
    pub fn on_success(
        mut self,
        callback: impl Fn(SagaContext, Reply) -> Result<SagaContext> + 'static,
    ) -> Self {
        let name = self.name_callback("on_success", Callback::Reply(Box::new(callback)));
        self.operations.push(types::SagaOperation::OnSuccess(name));
        self
    }

    /// Remote step: takes an ERROR (4xx) reply. Return the context to go on, or an error to fail
    /// the step. Without it, an ERROR reply does not stop the saga (Minos's rule).
    pub fn on_error(
        mut self,
        callback: impl Fn(SagaContext, Reply) -> Result<SagaContext> + 'static,
    ) -> Self {
        let name = self.name_callback("on_error", Callback::Reply(Box::new(callback)));
        self.operations.push(types::SagaOperation::OnError(name));
        self
    }

    /// Remote step: the command that undoes it when a later step fails.
    pub fn with_compensation<T: Serialize + 'static>(
        mut self,
        topic: &str,
        prepare: impl Fn(&SagaContext) -> Result<T> + 'static,
    ) -> Self {
        let callback = Callback::Prepare(Box::new(move |context| {
            Ok(serde_json::to_value(prepare(context)?)?)
        }));
        let name = self.name_callback("with_compensation", callback);
        self.operations
            .push(types::SagaOperation::WithCompensation(types::Invocation {
                topic: topic.to_string(),
                prepare: Some(name),
            }));
        self
    }

    /// Local step: runs in this service and returns the new context.
    pub fn on_execute(
        mut self,
        callback: impl Fn(SagaContext) -> Result<SagaContext> + 'static,
    ) -> Self {
        let name = self.name_callback("on_execute", Callback::Execute(Box::new(callback)));
        self.operations.push(types::SagaOperation::OnExecute(name));
        self
    }

    /// Local step: undoes `on_execute` when a later step fails. Its writes are kept even
    /// though the saga's own are rolled back.
    pub fn on_failure(
        mut self,
        callback: impl Fn(SagaContext) -> Result<SagaContext> + 'static,
    ) -> Self {
        let name = self.name_callback("on_failure", Callback::Execute(Box::new(callback)));
        self.operations.push(types::SagaOperation::OnFailure(name));
        self
    }

    /// Conditional step: when `condition` holds, the saga registered as `saga` runs.
    pub fn if_then(
        mut self,
        condition: impl Fn(&SagaContext) -> Result<bool> + 'static,
        saga: &str,
    ) -> Self {
        let index = self
            .operations
            .iter()
            .filter(|op| matches!(op, types::SagaOperation::IfThen(_)))
            .count();
        let name = self.name_callback(
            &format!("if_then{index}"),
            Callback::Condition(Box::new(condition)),
        );
        self.operations
            .push(types::SagaOperation::IfThen(types::Branch {
                condition: name,
                saga: saga.to_string(),
            }));
        self
    }

    /// Conditional step: the saga to run when no branch holds.
    pub fn else_then(mut self, saga: &str) -> Self {
        self.operations
            .push(types::SagaOperation::ElseThen(saga.to_string()));
        self
    }

    /// Ends the definition; `callback` runs once every step has succeeded and returns the final
    /// context. Its writes commit with the saga's.
    pub fn commit(
        mut self,
        callback: impl Fn(SagaContext) -> Result<SagaContext> + 'static,
    ) -> Self {
        self.steps = 0;
        let name = self.name_callback("commit", Callback::Execute(Box::new(callback)));
        self.operations
            .push(types::SagaOperation::Commit(Some(name)));
        self
    }

    /// Ends the definition without a commit callback.
    pub fn commit_empty(mut self) -> Self {
        self.operations.push(types::SagaOperation::Commit(None));
        self
    }

    /// How long each remote step may wait for its reply.
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.step_timeout = Some(timeout);
        self
    }

    /// How long the whole saga may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Where a saga execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStatus {
    Created,
    Running,
    Paused,
    Compensating,
    Finished,
    Errored,
    CompensationFailed,
}

/// A saga execution as `SagaManager::run` returns it.
#[derive(Debug, Clone)]
pub struct SagaExecution {
    pub uuid: Uuid,
    pub name: String,
    pub status: SagaStatus,
    pub context: SagaContext,
    /// Why it did not finish.
    pub error: Option<Error>,
}

impl SagaExecution {
    fn from_wit(execution: types::Execution) -> Result<Self> {
        Ok(SagaExecution {
            uuid: Uuid::parse_str(&execution.id)
                .map_err(|e| Error::system(format!("bad saga id: {e}")))?,
            name: execution.name,
            status: match execution.status {
                types::SagaStatus::Created => SagaStatus::Created,
                types::SagaStatus::Running => SagaStatus::Running,
                types::SagaStatus::Paused => SagaStatus::Paused,
                types::SagaStatus::Compensating => SagaStatus::Compensating,
                types::SagaStatus::Finished => SagaStatus::Finished,
                types::SagaStatus::Errored => SagaStatus::Errored,
                types::SagaStatus::CompensationFailed => SagaStatus::CompensationFailed,
            },
            context: SagaContext::parse(&execution.context)?,
            error: execution.error.map(Error::from),
        })
    }
}

/// Runs this service's sagas (Minos's `saga_manager`).
pub struct SagaManager;

impl SagaManager {
    /// Runs the saga registered as `name` and waits until it has finished or failed.
    pub fn run(name: &str, context: SagaContext) -> Result<SagaExecution> {
        SagaManager::start(name, context, true)
    }

    /// Starts the saga and returns at once; its progress is stored (see [`SagaManager::get`]).
    pub fn run_in_background(name: &str, context: SagaContext) -> Result<SagaExecution> {
        SagaManager::start(name, context, false)
    }

    /// An execution of this service's sagas.
    pub fn get(uuid: Uuid) -> Result<SagaExecution> {
        SagaExecution::from_wit(sagas::get(crate::uuid_text(
            &uuid,
            &mut Uuid::encode_buffer(),
        ))?)
    }

    /// The saga this call works for: in a saga callback, the execution it is a callback of (an
    /// inner saga's callbacks belong to the execution that runs it), to name what it creates
    /// after the saga, say; in a handler of a saga step's command or compensation, the saga
    /// that sent it; otherwise none.
    ///
    /// A participant reads the saga of a step's command from [`crate::Request::saga`] instead:
    /// this asks the host through the `sagas` interface, which only orchestrators import.
    pub fn current() -> Option<Uuid> {
        sagas::current().map(|id| Uuid::parse_str(&id).expect("the host names sagas by UUID"))
    }

    fn start(name: &str, context: SagaContext, wait: bool) -> Result<SagaExecution> {
        let execution = sagas::run(name, &context.to_json(), sagas::RunOptions { wait })?;
        SagaExecution::from_wit(execution)
    }
}
