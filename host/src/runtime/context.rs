//! The host side of one component call: what the call may do (its scope and access), the writes
//! and messages it accumulates until it ends, and the implementation of every host import
//! (storage, broker, sagas, logging) against that state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use saga_core::engine::{Context, Cost};
use saga_core::ids::{MessageId, SagaId};
use saga_core::message::SagaRef;

use super::ServiceVersion;
use super::bindings::{broker, logging, sagas, storage as wit_storage, types as wit};
use crate::broker::{Broker, Message};
use crate::storage::condition::{self, Condition, Node, OrderBy};
use crate::storage::{self, Action, AggregateRecord, Found, NewMessage, Storage, Write};

/// Starts sagas on behalf of a component (implemented by the orchestrator).
pub trait SagaRunner: Send + Sync + 'static {
    fn run(
        &self,
        caller: Caller,
        name: String,
        context: Context,
        wait: bool,
    ) -> BoxFuture<'static, Result<wit::Execution, wit::Error>>;

    fn get(
        &self,
        service: String,
        id: String,
    ) -> BoxFuture<'static, Result<wit::Execution, wit::Error>>;
}

/// Who starts a saga: the service version (sagas stay on the version they start with) and the
/// user the request came from.
#[derive(Clone)]
pub struct Caller {
    pub service: Arc<ServiceVersion>,
    pub user: Option<String>,
}

/// What the host gives every call.
pub struct CallEnv {
    pub storage: Storage,
    pub broker: Broker,
    pub sagas: Arc<dyn SagaRunner>,
}

/// Whose writes these are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Commit when the call ends.
    Direct,
    /// Stage under this saga until it ends.
    Saga(SagaId),
}

/// What the call may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Commands and saga callbacks.
    ReadWrite,
    /// Queries: reads only.
    ReadOnly,
    /// `describe`: nothing at all.
    Nothing,
}

/// The state of one call.
pub struct CallContext {
    pub service: Arc<ServiceVersion>,
    pub scope: Scope,
    pub access: Access,
    pub env: Option<Arc<CallEnv>>,
    /// On whose behalf (propagated to the messages the call sends).
    pub user: Option<String>,
    /// The message being handled, for logs.
    pub message_id: Option<MessageId>,
    /// Writes made earlier in the transaction this call joins (a saga transition runs several
    /// calls before it commits): the call sees them as if they were stored.
    pub prior: Vec<Write>,
    /// Writes and messages, committed (or staged) when the call succeeds.
    pub writes: Vec<Write>,
    pub messages: Vec<NewMessage>,
    /// Time spent waiting on the host inside imports: not counted against the CPU budget.
    pub host_time: Duration,
    /// What the call cost, once it has ended.
    pub cost: Cost,
    /// What the call has seen: the version of every aggregate it read, the uuids it found
    /// absent, and the conditions it searched with. A conflict on something the call saw
    /// otherwise is a race (another writer committed while the call ran): the call is run again.
    /// A conflict on something it never looked at is the component's to handle.
    observed: HashMap<String, u64>,
    absent: HashSet<String>,
    searched: Vec<(String, Condition)>,
    /// Host calls and log lines so far, against the component's limits.
    host_calls: usize,
    log_lines: usize,
    /// The first limit the call was refused by. The guest got the refusal as an error it may
    /// ignore; the call fails as a whole anyway when it ends, whatever it returns.
    pub refused: Option<String>,
    /// The call's place among the service's concurrent handler calls, given up while it waits
    /// for a saga it started (which may need a place of its own).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A call acted on data another writer changed while it ran; it is stopped and run again.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Raced {
    pub reason: String,
    /// The saga holding what the call wants, if that is the cause.
    pub holder: Option<SagaId>,
}

impl CallContext {
    pub fn new(
        service: Arc<ServiceVersion>,
        env: Option<Arc<CallEnv>>,
        scope: Scope,
        access: Access,
    ) -> Self {
        CallContext {
            service,
            scope,
            access,
            env,
            user: None,
            message_id: None,
            prior: Vec::new(),
            writes: Vec::new(),
            messages: Vec::new(),
            host_time: Duration::ZERO,
            cost: Cost::default(),
            observed: HashMap::new(),
            absent: HashSet::new(),
            searched: Vec::new(),
            host_calls: 0,
            log_lines: 0,
            refused: None,
            permit: None,
        }
    }

    /// The call's wall-clock time since `started` less the time it waited on the host.
    pub(super) fn cpu_estimate(&self, started: Instant) -> Duration {
        started.elapsed().saturating_sub(self.host_time)
    }

    fn limits(&self) -> &super::Limits {
        &self.service.limits
    }

    /// Counts a host call; past the component's limit the call is stopped.
    fn host_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.limits().max_host_calls {
            return Err(super::LimitExceeded(format!(
                "it made more than {} host calls in one call (limit max-host-calls)",
                self.limits().max_host_calls
            ))
            .into());
        }
        Ok(())
    }

    /// Whether the call believed `existing` did not exist: it found the uuid absent, or a
    /// search it made would have returned it.
    fn missed(&self, aggregate: &str, existing: &AggregateRecord) -> bool {
        self.absent.contains(&existing.uuid)
            || self
                .searched
                .iter()
                .any(|(searched, condition)| searched == aggregate && condition.matches(existing))
    }

    fn observe(&mut self, record: &AggregateRecord) {
        self.observed.insert(record.uuid.clone(), record.version);
    }

    /// An `expected-version` that does not match: a race when this call itself read the older
    /// version (someone committed since), a real conflict otherwise.
    fn version_conflict(
        &self,
        aggregate: &str,
        current: &AggregateRecord,
        expected: u64,
    ) -> Failure {
        if self.observed.get(&current.uuid) == Some(&expected) && current.version > expected {
            return Failure::Trap(
                Raced {
                    reason: format!("{aggregate} {} changed while the call ran", current.uuid),
                    holder: None,
                }
                .into(),
            );
        }
        Failure::Guest(wit_storage::StorageError::Conflict(format!(
            "{aggregate} {} is at version {}, not the expected {expected}",
            current.uuid, current.version
        )))
    }

    pub fn saga_id(&self) -> Option<SagaId> {
        match &self.scope {
            Scope::Saga(id) => Some(*id),
            Scope::Direct => None,
        }
    }

    fn staged_under(&self) -> Option<SagaId> {
        self.saga_id()
    }

    fn env(&self) -> Result<&Arc<CallEnv>, wit_storage::StorageError> {
        match (&self.env, self.access) {
            (Some(env), Access::ReadWrite | Access::ReadOnly) => Ok(env),
            _ => Err(wit_storage::StorageError::Denied(
                "describe may not use storage, the broker or sagas".into(),
            )),
        }
    }

    /// Records a refusal on a limit and returns its message for the guest.
    fn refuse(&mut self, message: String) -> String {
        if self.refused.is_none() {
            self.refused = Some(message.clone());
        }
        message
    }

    fn writable(&mut self) -> Result<Arc<CallEnv>, wit_storage::StorageError> {
        let env = self.env()?.clone();
        if self.access == Access::ReadOnly {
            return Err(wit_storage::StorageError::Denied(
                "this handler is a query (rest-query or broker-query) and may not write; declare it as a command to write".into(),
            ));
        }
        if self.writes.len() >= self.limits().max_writes {
            let max = self.limits().max_writes;
            return Err(wit_storage::StorageError::Denied(self.refuse(format!(
                "a call may write at most {max} aggregates (limit max-writes)"
            ))));
        }
        Ok(env)
    }

    fn check_aggregate_type(&self, name: &str) -> Result<(), wit_storage::StorageError> {
        if self.service.manifest.aggregates.contains_key(name) {
            Ok(())
        } else {
            let known: Vec<&str> = self
                .service
                .manifest
                .aggregates
                .keys()
                .map(String::as_str)
                .collect();
            Err(wit_storage::StorageError::Invalid(format!(
                "service {} declares no aggregate type {name:?} (it declares: {}); add it to the manifest's aggregates",
                self.service.manifest.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )))
        }
    }

    /// The writes this call sees before storage: its own, then the visible ones made earlier
    /// in its transaction; latest first.
    fn pending(&self) -> impl Iterator<Item = &Write> {
        let service = self.service.manifest.name.as_str();
        let saga = self.saga_id();
        self.writes
            .iter()
            .rev()
            .chain(self.prior.iter().rev().filter(move |w| {
                w.service == service && (w.staged_under.is_none() || w.staged_under == saga)
            }))
    }

    /// The state this call sees of one aggregate: its transaction's pending writes, then its
    /// saga's staged writes, then the committed snapshot. `Some((record, deleted))` when it ever
    /// existed.
    async fn read(
        &mut self,
        aggregate: &str,
        uuid: &str,
    ) -> Result<Option<(AggregateRecord, bool)>, wit_storage::StorageError> {
        if let Some(write) = self
            .pending()
            .find(|w| w.uuid == uuid && w.aggregate == aggregate)
        {
            return Ok(Some((record_of(write)?, write.action == Action::Delete)));
        }
        let env = self.env()?.clone();
        let started = Instant::now();
        let result = env
            .storage
            .get(&self.service.manifest.name, aggregate, uuid, self.saga_id())
            .await
            .map(|found| found.map(|s| (s.record, s.deleted)));
        self.host_time += started.elapsed();
        result.map_err(unavailable)
    }

    fn push_write(&mut self, write: Write) -> Result<(), wit_storage::StorageError> {
        let env = self.writable()?;
        let event_topic = format!(
            "{}{}",
            write.aggregate,
            match write.action {
                Action::Create => "Created",
                Action::Update => "Updated",
                Action::Delete => "Deleted",
            }
        );
        let payload = serde_json::json!({
            "uuid": write.uuid,
            "aggregate": write.aggregate,
            "version": write.version,
            "action": write.action.as_str(),
            "diff": raw_json(&write.diff),
            "data": raw_json(&write.data),
            "at": write.updated_at,
        });
        let message = self.outgoing(Message::event(
            &event_topic,
            payload.to_string(),
            self.headers(),
        ));
        self.messages
            .extend(env.broker.address_event(&message, self.staged_under()));
        self.writes.push(write);
        Ok(())
    }

    /// Headers the call's outgoing messages carry.
    fn headers(&self) -> Vec<(String, String)> {
        self.user
            .iter()
            .map(|user| ("user".to_string(), user.clone()))
            .collect()
    }

    /// An outgoing message, marked with the saga the call works for.
    fn outgoing(&self, mut message: Message) -> Message {
        message.saga = self.saga_id().map(SagaRef::within);
        message
    }

    fn check_size(&mut self, what: &str, value: &str) -> Result<(), wit_storage::StorageError> {
        let limit = self.limits().max_value_bytes;
        if value.len() > limit {
            return Err(wit_storage::StorageError::Denied(self.refuse(format!(
                "{what} is {} bytes; the limit is {limit} (limit max-value-kb)",
                value.len()
            ))));
        }
        Ok(())
    }
}

/// Why a storage import did not succeed: an error the component receives, or a trap that stops
/// the call (a race, after which the host runs the call again).
enum Failure {
    Guest(wit_storage::StorageError),
    Trap(wasmtime::Error),
}

impl From<wit_storage::StorageError> for Failure {
    fn from(error: wit_storage::StorageError) -> Self {
        Failure::Guest(error)
    }
}

fn settle<T>(result: Result<T, Failure>) -> wasmtime::Result<Result<T, wit_storage::StorageError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(Failure::Guest(error)) => Ok(Err(error)),
        Err(Failure::Trap(trap)) => Err(trap),
    }
}

fn raw_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn record_of(write: &Write) -> Result<AggregateRecord, wit_storage::StorageError> {
    Ok(AggregateRecord {
        uuid: write.uuid.clone(),
        version: write.version,
        created_at: write.created_at,
        updated_at: write.updated_at,
        data: serde_json::from_str(&write.data)
            .map_err(|e| wit_storage::StorageError::Unavailable(e.to_string()))?,
    })
}

fn unavailable(error: storage::StorageError) -> wit_storage::StorageError {
    tracing::error!(%error, "storage read failed");
    wit_storage::StorageError::Unavailable(format!("storage failed: {error}"))
}

fn to_wit(record: &AggregateRecord) -> wit_storage::Aggregate {
    wit_storage::Aggregate {
        uuid: record.uuid.clone(),
        version: record.version,
        created_at: record.created_at.max(0) as u64,
        updated_at: record.updated_at.max(0) as u64,
        data: record.data.to_string(),
    }
}

fn parse_object(what: &str, text: &str) -> Result<Map<String, Value>, wit_storage::StorageError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(wit_storage::StorageError::Invalid(format!(
            "{what} must be a JSON object, not {}",
            json_kind(&other)
        ))),
        Err(e) => Err(wit_storage::StorageError::Invalid(format!(
            "{what} is not valid JSON: {e}"
        ))),
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_uuid(text: &str) -> Result<String, wit_storage::StorageError> {
    Uuid::parse_str(text)
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| wit_storage::StorageError::Invalid(format!("{text:?} is not a UUID: {e}")))
}

/// The host state of a wasmtime store: the call's context plus WASI (granting nothing).
pub struct CallState {
    pub ctx: CallContext,
    pub(super) limits: super::Limiter,
    /// How the call's CPU is counted and paced (see `compute`).
    pacer: super::compute::Pacer,
    pub(super) meter: Arc<super::compute::Meter>,
    pub started: Instant,
    pub stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl CallState {
    pub(super) fn new(
        ctx: CallContext,
        limits: super::Limiter,
        stderr_bytes: usize,
        pacing: (super::compute::Pacer, Arc<super::compute::Meter>),
    ) -> Self {
        let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(stderr_bytes);
        let mut wasi = wasmtime_wasi::WasiCtx::builder();
        wasi.stderr(stderr.clone());
        if !ctx.service.limits.clock {
            // No clock unless granted: time is the Unix epoch and stands still.
            wasi.wall_clock(NoClock).monotonic_clock(NoClock);
        }
        let wasi = wasi.build();
        CallState {
            ctx,
            limits,
            pacer: pacing.0,
            meter: pacing.1,
            started: Instant::now(),
            stderr,
            wasi,
            table: wasmtime::component::ResourceTable::new(),
        }
    }

    /// Wall-clock time spent running the component's own code so far: the estimate of its CPU
    /// time while it is short (see `compute`).
    pub fn cpu_time(&self) -> Duration {
        self.ctx.cpu_estimate(self.started)
    }
}

/// The clock of a component not granted one.
struct NoClock;

impl wasmtime_wasi::HostWallClock for NoClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for NoClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

impl wasmtime_wasi::WasiView for CallState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for CallState {}

impl wit_storage::Host for CallState {
    async fn create(
        &mut self,
        aggregate_type: String,
        uuid: Option<String>,
        data: String,
    ) -> wasmtime::Result<Result<wit_storage::Aggregate, wit_storage::StorageError>> {
        self.ctx.host_call()?;
        settle(async {
            let ctx = &mut self.ctx;
            ctx.writable()?;
            ctx.check_aggregate_type(&aggregate_type)?;
            ctx.check_size("the aggregate's data", &data)?;
            let object = parse_object("the aggregate's data", &data)?;
            let uuid = match uuid {
                Some(text) => {
                    let uuid = parse_uuid(&text)?;
                    if let Some((existing, deleted)) = ctx.read(&aggregate_type, &uuid).await? {
                        if !deleted && ctx.missed(&aggregate_type, &existing) {
                            // Created by someone else since the call looked: run it again.
                            return Err(Failure::Trap(
                                Raced {
                                    reason: format!("{aggregate_type} {uuid} was created while the call ran"),
                                    holder: None,
                                }
                                .into(),
                            ));
                        }
                        return Err(wit_storage::StorageError::Conflict(format!(
                            "{aggregate_type} {uuid} already exists (or existed); a uuid is never reused"
                        ))
                        .into());
                    }
                    uuid
                }
                None => Uuid::new_v4().hyphenated().to_string(),
            };
            let now = storage::now_ms();
            let data = Value::Object(object).to_string();
            let write = Write {
                service: ctx.service.manifest.name.clone(),
                aggregate: aggregate_type,
                uuid,
                action: Action::Create,
                version: 1,
                diff: data.clone(),
                data,
                created_at: now,
                updated_at: now,
                staged_under: ctx.staged_under(),
            };
            let record = record_of(&write)?;
            ctx.push_write(write)?;
            Ok(to_wit(&record))
        }
        .await)
    }

    async fn get(
        &mut self,
        aggregate_type: String,
        uuid: String,
    ) -> wasmtime::Result<Result<wit_storage::Aggregate, wit_storage::StorageError>> {
        self.ctx.host_call()?;
        settle(
            async {
                let ctx = &mut self.ctx;
                ctx.check_aggregate_type(&aggregate_type)?;
                let uuid = parse_uuid(&uuid)?;
                match ctx.read(&aggregate_type, &uuid).await? {
                    Some((record, false)) => {
                        ctx.observe(&record);
                        Ok(to_wit(&record))
                    }
                    found => {
                        if found.is_none() {
                            ctx.absent.insert(uuid.clone());
                        }
                        Err(wit_storage::StorageError::NotFound(format!(
                            "{aggregate_type} {uuid} does not exist"
                        ))
                        .into())
                    }
                }
            }
            .await,
        )
    }

    async fn update(
        &mut self,
        aggregate_type: String,
        uuid: String,
        expected_version: Option<u64>,
        fields: String,
    ) -> wasmtime::Result<Result<wit_storage::Aggregate, wit_storage::StorageError>> {
        self.ctx.host_call()?;
        settle(
            async {
                let ctx = &mut self.ctx;
                ctx.writable()?;
                ctx.check_aggregate_type(&aggregate_type)?;
                ctx.check_size("the updated fields", &fields)?;
                let fields = parse_object("the updated fields", &fields)?;
                let uuid = parse_uuid(&uuid)?;
                let Some((current, false)) = ctx.read(&aggregate_type, &uuid).await? else {
                    return Err(wit_storage::StorageError::NotFound(format!(
                        "{aggregate_type} {uuid} does not exist"
                    ))
                    .into());
                };
                if let Some(expected) = expected_version
                    && expected != current.version
                {
                    return Err(ctx.version_conflict(&aggregate_type, &current, expected));
                }
                let mut data = match current.data.clone() {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                let mut diff = Map::new();
                for (field, value) in fields {
                    if data.get(&field) != Some(&value) {
                        diff.insert(field.clone(), value.clone());
                        data.insert(field, value);
                    }
                }
                if diff.is_empty() {
                    return Ok(to_wit(&current));
                }
                let data = Value::Object(data).to_string();
                ctx.check_size("the aggregate's data", &data)?;
                let write = Write {
                    service: ctx.service.manifest.name.clone(),
                    aggregate: aggregate_type,
                    uuid,
                    action: Action::Update,
                    version: current.version + 1,
                    diff: Value::Object(diff).to_string(),
                    data,
                    created_at: current.created_at,
                    updated_at: storage::now_ms().max(current.updated_at),
                    staged_under: ctx.staged_under(),
                };
                let record = record_of(&write)?;
                ctx.push_write(write)?;
                Ok(to_wit(&record))
            }
            .await,
        )
    }

    async fn delete(
        &mut self,
        aggregate_type: String,
        uuid: String,
        expected_version: Option<u64>,
    ) -> wasmtime::Result<Result<(), wit_storage::StorageError>> {
        self.ctx.host_call()?;
        settle(
            async {
                let ctx = &mut self.ctx;
                ctx.writable()?;
                ctx.check_aggregate_type(&aggregate_type)?;
                let uuid = parse_uuid(&uuid)?;
                let Some((current, false)) = ctx.read(&aggregate_type, &uuid).await? else {
                    return Err(wit_storage::StorageError::NotFound(format!(
                        "{aggregate_type} {uuid} does not exist"
                    ))
                    .into());
                };
                if let Some(expected) = expected_version
                    && expected != current.version
                {
                    return Err(ctx.version_conflict(&aggregate_type, &current, expected));
                }
                let write = Write {
                    service: ctx.service.manifest.name.clone(),
                    aggregate: aggregate_type,
                    uuid,
                    action: Action::Delete,
                    version: current.version + 1,
                    diff: "{}".into(),
                    data: current.data.to_string(),
                    created_at: current.created_at,
                    updated_at: storage::now_ms().max(current.updated_at),
                    staged_under: ctx.staged_under(),
                };
                Ok(ctx.push_write(write)?)
            }
            .await,
        )
    }

    async fn find(
        &mut self,
        aggregate_type: String,
        condition: Vec<wit_storage::ConditionNode>,
        ordering: Vec<wit_storage::OrderBy>,
        limit: Option<u32>,
    ) -> wasmtime::Result<Result<Vec<wit_storage::Aggregate>, wit_storage::StorageError>> {
        self.ctx.host_call()?;
        settle(async {
            let ctx = &mut self.ctx;
            let env = ctx.env()?.clone();
            ctx.check_aggregate_type(&aggregate_type)?;
            let nodes: Vec<Node> = condition.into_iter().map(node_from_wit).collect();
            let condition = Condition::parse(&nodes).map_err(|e| wit_storage::StorageError::Invalid(e.to_string()))?;
            let ordering = ordering
                .into_iter()
                .map(|o| {
                    Ok(OrderBy {
                        field: condition::FieldPath::parse(&o.field)?,
                        descending: o.descending,
                    })
                })
                .collect::<Result<Vec<_>, condition::ConditionError>>()
                .map_err(|e| wit_storage::StorageError::Invalid(e.to_string()))?;
            let service = ctx.service.manifest.name.clone();
            let prefilter = condition.prefilter();
            let own_writes = ctx.pending().any(|w| w.aggregate == aggregate_type);
            // Outside a saga, with no writes of its own to overlay and a condition SQL answers
            // exactly, SQL also applies the limit; otherwise fetch the candidates, overlay the
            // saga's and the call's writes, filter, sort, then limit.
            let sql_limit = if ctx.saga_id().is_none() && !own_writes && prefilter.exact && ordering.is_empty() {
                limit.map(|l| l.min(ctx.limits().max_find_results as u32))
            } else {
                Some(ctx.limits().max_find_results as u32 + 1)
            };
            let started = Instant::now();
            let found = env
                .storage
                .find(&service, &aggregate_type, &prefilter, sql_limit, ctx.saga_id())
                .await;
            ctx.host_time += started.elapsed();
            let Found { committed, staged } = found.map_err(unavailable)?;
            if committed.len() > ctx.limits().max_find_results {
                let max = ctx.limits().max_find_results;
                return Err(wit_storage::StorageError::Denied(ctx.refuse(format!(
                    "the condition matches more than {max} {aggregate_type} aggregates before filtering (limit max-find); add an equality on an indexed field or a limit"
                )))
                .into());
            }
            let mut records: Vec<AggregateRecord> = committed;
            let mut overlay: Vec<(AggregateRecord, bool)> =
                staged.into_iter().map(|s| (s.record, s.deleted)).collect();
            let pending: Vec<&Write> = ctx.pending().filter(|w| w.aggregate == aggregate_type).collect();
            // Oldest first, so that the latest write of an aggregate wins.
            for write in pending.into_iter().rev() {
                overlay.retain(|(r, _)| r.uuid != write.uuid);
                overlay.push((record_of(write)?, write.action == Action::Delete));
            }
            for (record, deleted) in overlay {
                records.retain(|r| r.uuid != record.uuid);
                if !deleted {
                    records.push(record);
                }
            }
            records.retain(|r| condition.matches(r));
            condition::sort_records(&mut records, &ordering);
            let complete = limit.is_none_or(|limit| records.len() <= limit as usize);
            if let Some(limit) = limit {
                records.truncate(limit as usize);
            }
            for record in &records {
                ctx.observe(record);
            }
            if complete {
                // Every match was returned: an aggregate created later that matches was missed.
                ctx.searched.push((aggregate_type, condition));
            }
            Ok(records.iter().map(to_wit).collect())
        }
        .await)
    }
}

fn node_from_wit(node: wit_storage::ConditionNode) -> Node {
    use wit_storage::ConditionNode as W;
    match node {
        W::AlwaysTrue => Node::True,
        W::AlwaysFalse => Node::False,
        W::And(children) => Node::And(children),
        W::Or(children) => Node::Or(children),
        W::Not(child) => Node::Not(child),
        W::Compare(c) => Node::Compare {
            field: c.field,
            op: match c.op {
                wit_storage::ComparisonOp::Equal => condition::CompareOp::Equal,
                wit_storage::ComparisonOp::NotEqual => condition::CompareOp::NotEqual,
                wit_storage::ComparisonOp::LowerThan => condition::CompareOp::Lower,
                wit_storage::ComparisonOp::LowerEqual => condition::CompareOp::LowerEqual,
                wit_storage::ComparisonOp::GreaterThan => condition::CompareOp::Greater,
                wit_storage::ComparisonOp::GreaterEqual => condition::CompareOp::GreaterEqual,
            },
            value: c.value,
        },
        W::In(m) => Node::In {
            field: m.field,
            values: m.values,
        },
        W::Like(p) => Node::Like {
            field: p.field,
            pattern: p.pattern,
        },
    }
}

impl broker::Host for CallState {
    async fn publish(
        &mut self,
        topic: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), broker::BrokerError>> {
        self.ctx.host_call()?;
        Ok((|| {
            let ctx = &mut self.ctx;
            let env = ctx.writable().map_err(denied)?;
            check_message(ctx, &topic, &payload)?;
            if let Some(owner) = env.broker.aggregate_event_owner(&topic)
                && owner != ctx.service.manifest.name
            {
                return Err(broker::BrokerError::Denied(format!(
                    "{topic} reports an aggregate of service {owner}; a service publishes only its own aggregates' events (the host does, when it writes them)"
                )));
            }
            let message = ctx.outgoing(Message::event(&topic, payload, ctx.headers()));
            let addressed = env.broker.address_event(&message, ctx.staged_under());
            ctx.messages.extend(addressed);
            Ok(())
        })())
    }

    async fn send(
        &mut self,
        topic: String,
        payload: String,
        reply_topic: Option<String>,
    ) -> wasmtime::Result<Result<String, broker::BrokerError>> {
        self.ctx.host_call()?;
        Ok((|| {
            let ctx = &mut self.ctx;
            let env = ctx.writable().map_err(denied)?;
            check_message(ctx, &topic, &payload)?;
            if let Some(reply_topic) = &reply_topic
                && !ctx.service.handles_command(reply_topic)
            {
                return Err(broker::BrokerError::Denied(format!(
                    "the reply topic {reply_topic:?} is not a broker-command of service {}; replies must come back to a topic it handles",
                    ctx.service.manifest.name
                )));
            }
            let reply = reply_topic.map(|topic| crate::broker::ReplyTo::Topic {
                service: ctx.service.manifest.name.clone(),
                topic,
            });
            let message = ctx.outgoing(Message::command(&topic, payload, ctx.headers(), reply));
            let id = message.id.to_string();
            let addressed = env
                .broker
                .address_command(&message, ctx.staged_under())
                .map_err(|e| broker::BrokerError::NoConsumer(e.to_string()))?;
            ctx.messages.push(addressed);
            Ok(id)
        })())
    }
}

/// A storage refusal (no access, a limit) as the broker's.
fn denied(error: wit_storage::StorageError) -> broker::BrokerError {
    match error {
        wit_storage::StorageError::Denied(message) => broker::BrokerError::Denied(message),
        other => broker::BrokerError::Denied(format!("{other:?}")),
    }
}

fn check_message(
    ctx: &mut CallContext,
    topic: &str,
    payload: &str,
) -> Result<(), broker::BrokerError> {
    if !saga_core::message::valid_topic(topic) {
        return Err(broker::BrokerError::Invalid(format!(
            "topic {topic:?} is invalid: use 1 to 128 letters, digits, '_', '-' or '.'"
        )));
    }
    let limits = ctx.limits();
    let (max_messages, max_bytes) = (limits.max_messages, limits.max_value_bytes);
    if ctx.messages.len() >= max_messages {
        return Err(broker::BrokerError::Denied(ctx.refuse(format!(
            "a call may send at most {max_messages} messages (limit max-messages)"
        ))));
    }
    if payload.len() > max_bytes {
        return Err(broker::BrokerError::Denied(ctx.refuse(format!(
            "the payload is {} bytes; the limit is {max_bytes} (limit max-value-kb)",
            payload.len()
        ))));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map(|_| ())
        .map_err(|e| broker::BrokerError::Invalid(format!("the payload is not valid JSON: {e}")))
}

impl sagas::Host for CallState {
    async fn run(
        &mut self,
        name: String,
        context: String,
        options: sagas::RunOptions,
    ) -> wasmtime::Result<Result<wit::Execution, wit::Error>> {
        self.ctx.host_call()?;
        let ctx = &mut self.ctx;
        let env = match ctx.writable() {
            Ok(env) => env,
            Err(e) => {
                return Ok(Err(wit::Error {
                    status: 500,
                    message: format!("{e:?}"),
                }));
            }
        };
        let context = match Context::parse(context) {
            Ok(context) => context,
            Err(problem) => {
                return Ok(Err(wit::Error {
                    status: 400,
                    message: format!("the saga context is invalid: {problem}"),
                }));
            }
        };
        let caller = Caller {
            service: ctx.service.clone(),
            user: ctx.user.clone(),
        };
        let started = Instant::now();
        let gave_up_permit = options.wait && ctx.permit.take().is_some();
        let waiting = options
            .wait
            .then(|| self.pacer.waiting(&self.meter))
            .flatten();
        let result = env.sagas.run(caller, name, context, options.wait).await;
        drop(waiting);
        if gave_up_permit {
            self.ctx.permit = self.ctx.service.calls.clone().acquire_owned().await.ok();
        }
        self.ctx.host_time += started.elapsed();
        Ok(result)
    }

    async fn current(&mut self) -> wasmtime::Result<Option<String>> {
        self.ctx.host_call()?;
        Ok(self.ctx.saga_id().map(|id| id.to_string()))
    }

    async fn get(&mut self, id: String) -> wasmtime::Result<Result<wit::Execution, wit::Error>> {
        self.ctx.host_call()?;
        let ctx = &mut self.ctx;
        let env = match ctx.env() {
            Ok(env) => env.clone(),
            Err(e) => {
                return Ok(Err(wit::Error {
                    status: 500,
                    message: format!("{e:?}"),
                }));
            }
        };
        let started = Instant::now();
        let result = env.sagas.get(ctx.service.manifest.name.clone(), id).await;
        self.ctx.host_time += started.elapsed();
        Ok(result)
    }
}

impl logging::Host for CallState {
    async fn log(&mut self, level: logging::Level, message: String) -> wasmtime::Result<()> {
        self.ctx.host_call()?;
        self.ctx.log_lines += 1;
        let ctx = &self.ctx;
        let limit = ctx.limits().max_log_lines;
        if ctx.log_lines > limit {
            if ctx.log_lines == limit + 1 {
                tracing::warn!(target: "component", service = ctx.service.manifest.name.as_str(), "the call wrote more than {limit} log lines; the rest are dropped");
            }
            return Ok(());
        }
        let service = ctx.service.manifest.name.as_str();
        let saga = ctx.saga_id().map(|id| id.to_string()).unwrap_or_default();
        let message_id = ctx.message_id.map(|id| id.to_string()).unwrap_or_default();
        let (saga, message_id) = (saga.as_str(), message_id.as_str());
        // Bounded, so that a component cannot flood the host's log with one call.
        let message: String = message.chars().take(4096).collect();
        match level {
            logging::Level::Trace => {
                tracing::trace!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Debug => {
                tracing::debug!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Info => {
                tracing::info!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Warn => {
                tracing::warn!(target: "component", service, saga, message_id, "{message}")
            }
            logging::Level::Error => {
                tracing::error!(target: "component", service, saga, message_id, "{message}")
            }
        }
        Ok(())
    }
}
