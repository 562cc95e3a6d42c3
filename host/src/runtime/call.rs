//! The state of one component call: who calls and within what (`Identity`), what it wrote and
//! sent until it ends (`Effects`), what it used of its limits (`Budget`), what it saw of storage
//! (`Seen`) — and the wasmtime store data that carries them with WASI (granting nothing). The
//! host imports (`imports/`) each work on the parts they need.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use saga_core::engine::{Context, Cost};
use saga_core::ids::{MessageId, SagaId};

use super::ServiceVersion;
use super::bindings::types as wit;
use super::compute::{Meter, Pacer};
use crate::broker::Broker;
use crate::storage::condition::Condition;
use crate::storage::{AggregateRecord, NewMessage, Storage, Write};

/// Starts sagas on behalf of a component (implemented by the orchestrator).
pub trait SagaRunner: Send + Sync + 'static {
    /// Starts saga `name` of the caller's service; with `wait`, returns once it has ended.
    fn run(
        &self,
        caller: Caller,
        name: String,
        context: Context,
        wait: bool,
    ) -> BoxFuture<'static, Result<wit::Execution, wit::Error>>;

    /// An execution of `service`, by id.
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

/// What the host gives every call: storage, the broker, and sagas.
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

/// Who calls and within what; fixed for the call.
pub struct Identity {
    pub service: Arc<ServiceVersion>,
    pub scope: Scope,
    pub access: Access,
    /// On whose behalf (propagated to the messages the call sends).
    pub user: Option<String>,
    /// The message being handled, for logs.
    pub message_id: Option<MessageId>,
}

impl Identity {
    /// The saga the call works for, if any.
    pub fn saga_id(&self) -> Option<SagaId> {
        match &self.scope {
            Scope::Saga(id) => Some(*id),
            Scope::Direct => None,
        }
    }

    /// What one call of the service may use.
    pub fn limits(&self) -> &super::Limits {
        &self.service.limits
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.service.manifest.name
    }
}

/// What the call wrote and sent, committed (or staged) when it succeeds.
#[derive(Default)]
pub struct Effects {
    /// Writes made earlier in the transaction this call joins (a saga transition runs several
    /// calls before it commits): the call sees them as if they were stored.
    pub prior: Vec<Write>,
    pub writes: Vec<Write>,
    pub messages: Vec<NewMessage>,
}

/// What the call used of its limits.
#[derive(Default)]
pub struct Budget {
    /// Host calls and log lines so far.
    pub(super) host_calls: usize,
    pub(super) log_lines: usize,
    /// The first limit the call was refused by. The guest got the refusal as an error it may
    /// ignore; the call fails as a whole anyway when it ends, whatever it returns.
    pub refused: Option<String>,
}

impl Budget {
    /// Counts a host call; past the component's limit the call is stopped.
    pub(super) fn host_call(&mut self, who: &Identity) -> wasmtime::Result<()> {
        self.host_calls += 1;
        let max = who.limits().max_host_calls;
        if self.host_calls > max {
            return Err(super::LimitExceeded(format!(
                "it made more than {max} host calls in one call (limit max-host-calls)"
            ))
            .into());
        }
        Ok(())
    }

    /// Records a refusal on a limit and returns its message for the guest.
    pub(super) fn refuse(&mut self, message: String) -> String {
        if self.refused.is_none() {
            self.refused = Some(message.clone());
        }
        message
    }
}

/// What the call has seen of storage: what storage answered for each aggregate it read by uuid,
/// the version of every aggregate it was given, and the conditions it searched with. A conflict
/// on something the call saw otherwise is a race (another writer committed while the call ran):
/// the call is run again. A conflict on something it never looked at is the component's to
/// handle.
#[derive(Default)]
pub struct Seen {
    /// By (aggregate type, uuid): its state and whether it is deleted, `None` when it never
    /// existed; a later read of it is answered from here (with the call's own writes over it).
    read: HashMap<(String, String), Option<(AggregateRecord, bool)>>,
    /// How many of `read`'s answers hold a record.
    records: usize,
    pub(super) observed: HashMap<String, u64>,
    pub(super) searched: Vec<(String, Condition)>,
}

/// The records a call keeps of what it read: a call may read `max-host-calls` aggregates of
/// `max-value-kb` each, and the host keeps them for the call's length. Past these, the call
/// reads a record from storage each time; absences are kept all (a uuid each).
const REMEMBERED_RECORDS: usize = 64;

impl Seen {
    /// What storage answered when the call read this aggregate, if it is remembered.
    pub(super) fn recall(
        &self,
        aggregate: &str,
        uuid: &str,
    ) -> Option<&Option<(AggregateRecord, bool)>> {
        self.read.get(&(aggregate.to_string(), uuid.to_string()))
    }

    /// Keeps what storage answered for an aggregate: always its absence, which makes a later
    /// create of it by another writer a race rather than a conflict; a record while fewer than
    /// `REMEMBERED_RECORDS` are kept.
    pub(super) fn remember(
        &mut self,
        aggregate: &str,
        uuid: &str,
        found: &Option<(AggregateRecord, bool)>,
    ) {
        if found.is_some() {
            if self.records == REMEMBERED_RECORDS {
                return;
            }
            self.records += 1;
        }
        self.read
            .insert((aggregate.to_string(), uuid.to_string()), found.clone());
    }

    /// Forgets what the call read, which a saga it waited for may have changed.
    pub(super) fn forget_reads(&mut self) {
        self.read.clear();
        self.records = 0;
    }
}

/// The state of one call.
pub struct CallContext {
    pub who: Identity,
    /// What the host gives the call; none for `describe`.
    pub env: Option<Arc<CallEnv>>,
    pub effects: Effects,
    pub budget: Budget,
    pub seen: Seen,
    /// What the call cost, once it has ended.
    pub cost: Cost,
    /// The call's place among the service's concurrent handler calls, given up while it waits
    /// for a saga it started (which may need a place of its own).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A call acted on data another writer changed while it ran: raised inside the call to stop it,
/// after which the host runs it again.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct RaceTrap {
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
            who: Identity {
                service,
                scope,
                access,
                user: None,
                message_id: None,
            },
            env,
            effects: Effects::default(),
            budget: Budget::default(),
            seen: Seen::default(),
            cost: Cost::default(),
            permit: None,
        }
    }
}

/// The host state of a wasmtime store: the call's context plus WASI (granting nothing).
pub struct CallState {
    pub ctx: CallContext,
    pub(super) limits: super::engine::Limiter,
    /// How the call's CPU is counted and paced (see `compute`).
    pub(super) pacer: Pacer,
    pub(super) meter: Arc<Meter>,
    pub started: Instant,
    /// WASI's context, made when the component first calls WASI: most calls never do (a Rust
    /// service imports WASI's stdio for its panics), and making it cost every call about 3 K
    /// instructions (callgrind; a no-op call is 31 K).
    wasi: Option<Wasi>,
    stderr_bytes: usize,
    table: wasmtime::component::ResourceTable,
}

/// WASI as a call sees it: an empty environment, no files, no sockets, and standard error
/// kept (up to a bound) for the host's message when the call fails.
struct Wasi {
    ctx: wasmtime_wasi::WasiCtx,
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
}

impl CallState {
    pub(super) fn new(
        ctx: CallContext,
        limits: super::engine::Limiter,
        stderr_bytes: usize,
        (pacer, meter): (Pacer, Arc<Meter>),
    ) -> Self {
        CallState {
            ctx,
            limits,
            pacer,
            meter,
            started: Instant::now(),
            wasi: None,
            stderr_bytes,
            table: wasmtime::component::ResourceTable::new(),
        }
    }

    /// What the call wrote to its standard error.
    pub fn stderr(&self) -> Vec<u8> {
        self.wasi
            .as_ref()
            .map(|wasi| wasi.stderr.contents().to_vec())
            .unwrap_or_default()
    }
}

impl Wasi {
    fn new(clock: bool, stderr_bytes: usize) -> Self {
        let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(stderr_bytes);
        let mut ctx = wasmtime_wasi::WasiCtx::builder();
        ctx.stderr(stderr.clone());
        if !clock {
            // No clock unless granted: time is the Unix epoch and stands still.
            ctx.wall_clock(NoClock).monotonic_clock(NoClock);
        }
        Wasi {
            ctx: ctx.build(),
            stderr,
        }
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
        let (clock, stderr_bytes) = (self.ctx.who.service.limits.clock, self.stderr_bytes);
        let wasi = self
            .wasi
            .get_or_insert_with(|| Wasi::new(clock, stderr_bytes));
        wasmtime_wasi::WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut self.table,
        }
    }
}

impl wit::Host for CallState {}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uuid: &str) -> Option<(AggregateRecord, bool)> {
        Some((
            AggregateRecord {
                uuid: uuid.to_string(),
                version: 1,
                created_at: 0,
                updated_at: 0,
                data: serde_json::json!({"n": 1}),
            },
            false,
        ))
    }

    #[test]
    fn a_call_keeps_every_absence_and_a_bounded_number_of_records() {
        let mut seen = Seen::default();
        for n in 0..REMEMBERED_RECORDS + 10 {
            let uuid = format!("found-{n}");
            seen.remember("Exam", &uuid, &record(&uuid));
            seen.remember("Exam", &format!("absent-{n}"), &None);
        }
        let kept = (0..REMEMBERED_RECORDS + 10)
            .filter(|n| seen.recall("Exam", &format!("found-{n}")).is_some())
            .count();
        assert_eq!(kept, REMEMBERED_RECORDS, "records are kept up to the bound");
        assert_eq!(seen.recall("Exam", "found-0"), Some(&record("found-0")));
        for n in 0..REMEMBERED_RECORDS + 10 {
            assert_eq!(
                seen.recall("Exam", &format!("absent-{n}")),
                Some(&None),
                "absence {n} is kept"
            );
        }
        assert_eq!(
            seen.recall("Attempt", "absent-0"),
            None,
            "an answer is the type's"
        );
        seen.forget_reads();
        assert_eq!(seen.recall("Exam", "absent-0"), None);
        seen.remember("Exam", "again", &record("again"));
        assert!(
            seen.recall("Exam", "again").is_some(),
            "room again after forgetting"
        );
    }
}
