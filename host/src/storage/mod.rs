//! Durable state of the host, in one SQL database: the services' event-sourced aggregates (events
//! and snapshots), writes staged under a saga until it ends, saga executions, and the in-process
//! broker's queue (so that a handler's writes, the messages it sends and the acknowledgement of
//! the message it handled commit in one transaction: a transactional outbox).
//!
//! Storage does not interpret saga records or message bodies; it stores them as they come (a
//! saga's record packed, a body as JSON text) next to the few columns it queries by. What it
//! offers is split into small capabilities — `Aggregates`, `Executions`, `Queue`, `Hosts`,
//! `Keys`, `Deploys` (`deploys.rs`), `Transactions` — each a trait, all implemented once over
//! sqlx for SQLite and PostgreSQL (`sql/`); a part of the host uses the capabilities it needs.

mod deploys;
mod sql;

pub use saga_core::{AggregateRecord, condition};

use std::future::Future;

use condition::{FieldPath, Prefilter};
use saga_core::engine::Status;
use saga_core::ids::SagaId;

pub use deploys::{ClusterComponent, ClusterDeploy, Deploys, HostComponent};
pub use sql::Storage;

/// The stored state of one aggregate, including a deletion (a deleted aggregate's uuid is never
/// reused).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub record: AggregateRecord,
    pub deleted: bool,
}

/// What `find` read: committed candidates, and the saga's staged aggregates of the type.
#[derive(Debug, Default)]
pub struct Found {
    pub committed: Vec<AggregateRecord>,
    pub staged: Vec<Snapshot>,
}

/// What a write does to an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One event to append: an aggregate moving from `version - 1` to `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub service: String,
    pub aggregate: String,
    pub uuid: String,
    pub action: Action,
    /// The version after this write; the write expects the aggregate at `version - 1` (0: absent).
    pub version: u64,
    /// The fields this write changed, as a JSON object (all fields for a create, `{}` for a
    /// delete).
    pub diff: String,
    /// The whole aggregate after the write (its last state for a delete).
    pub data: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Staged under this saga instead of committed.
    pub staged_under: Option<SagaId>,
}

/// A message to put in the queue once the transaction commits.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub id: String,
    /// Who handles it (a service, or a service's saga orchestrator).
    pub consumer: String,
    /// The message itself, as the broker serialises it.
    pub body: String,
    /// Held until this saga finishes (and dropped if it fails), instead of queued now.
    pub staged_under: Option<SagaId>,
}

/// A message in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub seq: i64,
    pub id: String,
    pub consumer: String,
    pub body: String,
    /// How many times handling it has failed.
    pub attempts: u32,
    /// Not before this time (ms since the epoch): a failed message waits for its retry.
    pub available_at: i64,
}

/// A saga execution row. `state` is the orchestrator's own JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRow {
    pub id: String,
    pub service: String,
    pub name: String,
    /// The digest of the component version it runs on.
    pub version: String,
    pub status: Status,
    /// The rest of the execution and its whole history, packed (`saga::record`): opaque here.
    pub record: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
    /// 0 for a new execution; otherwise the revision it was read at, which must still be the
    /// stored one (two writers of one saga cannot both win).
    pub revision: i64,
    /// When the execution next needs attention, if ever.
    pub timer_at: Option<i64>,
    /// The host that keeps the saga's timer (the one storing this transition); none without a
    /// timer.
    pub owner: Option<String>,
}

/// How a saga's staged writes and messages end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// The saga finished: its writes become visible and its messages are sent.
    Promote(SagaId),
    /// The saga failed: its writes and messages vanish.
    Discard(SagaId),
}

/// A message a transaction consumes: recorded with it, so that a second delivery of the same
/// message is refused as a duplicate and changes nothing — but for its reply, which is kept to
/// be sent again.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed {
    pub consumer: String,
    pub message_id: String,
    /// The reply the handling sent, if any.
    pub reply: Option<NewMessage>,
}

/// A message given up on: what to record in the dead letters.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettering {
    /// Its queue entry (in-process broker), removed at the same time.
    pub queued: Option<i64>,
    pub message_id: String,
    pub consumer: String,
    pub body: String,
    pub attempts: u32,
    pub error: String,
}

/// What a service loaded on some host consumes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Consumes {
    pub service: String,
    pub kind: TopicKind,
    pub topic: String,
}

/// What a topic carries to its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TopicKind {
    /// Commands and queries: one consumer.
    Command,
    /// Events: every subscribed service.
    Event,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Command => "command",
            TopicKind::Event => "event",
        }
    }

    pub fn parse(text: &str) -> Option<TopicKind> {
        [TopicKind::Command, TopicKind::Event]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// A message whose handling kept failing.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub seq: i64,
    pub message_id: String,
    pub consumer: String,
    pub body: String,
    pub attempts: u32,
    pub error: String,
    pub failed_at: i64,
}

/// Everything one handler call or saga transition changes, applied atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transaction {
    pub writes: Vec<Write>,
    pub messages: Vec<NewMessage>,
    pub consumed: Vec<Consumed>,
    /// The queue entry whose handling this is: removed in the same transaction.
    pub ack: Option<i64>,
    /// A message to put in the dead letters (and its queue entry to remove, if it has one).
    pub dead_letter: Option<DeadLettering>,
    /// A dead letter to queue again.
    pub redrive: Option<i64>,
    pub saga: Option<SagaRow>,
    pub resolve: Option<Resolve>,
    /// A request's idempotency key: claimed, answered or given up.
    pub key: Option<KeyUse>,
}

/// A request's `Idempotency-Key`, within the service and route it was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub service: String,
    /// The route: its method and path template ("POST /exams").
    pub route: String,
    pub key: String,
}

/// What a transaction does with a request's idempotency key; each is refused as `KeyHeld`
/// when the key is not the run's to use.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyUse {
    /// Takes the key for the run named `claim`: refused while another run holds it or once it
    /// was answered, unless the other's claim is older than `stale_before` (ms since the
    /// epoch: its host died) and was made for the same request.
    Claim {
        key: RequestKey,
        request_hash: String,
        claim: String,
        stale_before: i64,
    },
    /// Stores the answer the run gave, which every repeat gets.
    Answer {
        key: RequestKey,
        claim: String,
        status: u16,
        body: String,
    },
    /// Gives the key up, unanswered: the run failed in a way a retry may mend.
    Release { key: RequestKey, claim: String },
}

impl KeyUse {
    pub fn key(&self) -> &RequestKey {
        match self {
            KeyUse::Claim { key, .. }
            | KeyUse::Answer { key, .. }
            | KeyUse::Release { key, .. } => key,
        }
    }
}

/// A stored key: the request it was first used for and, once the run answered, the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub request_hash: String,
    pub claimed_at: i64,
    /// The status and JSON body the request was answered with.
    pub answer: Option<(u16, String)>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        *self == Transaction::default()
    }
}

/// What a commit made deliverable: the messages now in the queue, in order.
#[derive(Debug, Default)]
pub struct Committed {
    pub queued: Vec<QueuedMessage>,
}

/// Why storage refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another writer changed or holds the aggregate; retry after it is done.
    #[error("{aggregate} {uuid} of service {service} {reason}")]
    Conflict {
        service: String,
        aggregate: String,
        uuid: String,
        reason: String,
        /// The saga whose staged writes hold the aggregate, if that is the cause.
        holder: Option<String>,
    },
    /// A finished saga's staged writes were based on a version another writer has since
    /// replaced: the saga must fail rather than overwrite.
    #[error(
        "{aggregate} {uuid} of service {service} was changed by another writer while a saga held it"
    )]
    Overwritten {
        service: String,
        aggregate: String,
        uuid: String,
    },
    /// The saga execution was changed by someone else since it was read.
    #[error("saga {0} was changed concurrently")]
    SagaChanged(String),
    /// The idempotency key is held by another run or was answered, or this run's claim on it
    /// was taken over.
    #[error("the Idempotency-Key {0:?} is held by another request")]
    KeyHeld(String),
    /// A message this transaction consumes was consumed before.
    #[error("message {0} was already handled")]
    Duplicate(String),
    #[error("cannot open the database at {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored row is corrupt: {0}")]
    Corrupt(String),
    /// The database cannot be used at all right now (it is down, or its disk is full); the
    /// message says which and what to do.
    #[error("{}", .outage.describe(.detail))]
    Unavailable { outage: Outage, detail: String },
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// An error of the SQLite writer's own handle (see `sql/exec.rs`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("the storage writer has stopped")]
    WriterGone,
}

/// Why the database cannot be used right now: a condition of the server or the machine that
/// passes (the host keeps trying), not a fault of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// No connection: the server is down, restarting or refusing connections.
    Unreachable,
    /// The disk the database writes to is full.
    DiskFull,
}

impl Outage {
    /// The outage an error of the database driver shows, if it is one.
    pub fn of(error: &sqlx::Error) -> Option<Outage> {
        match error {
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                Some(Outage::DiskFull)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Some(Outage::Unreachable),
            sqlx::Error::Database(error) => {
                let code = error.code().unwrap_or_default();
                // SQLite: SQLITE_FULL. PostgreSQL: disk_full (53100), connection exceptions
                // (class 08), and the server shutting down or starting up (57P01, 57P02, 57P03).
                if code.parse().is_ok_and(sqlite_full) || code == "53100" {
                    Some(Outage::DiskFull)
                } else if code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03") {
                    Some(Outage::Unreachable)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The HTTP status that tells a client: 503 (try again later), 507 (insufficient storage).
    pub fn status(self) -> u16 {
        match self {
            Outage::Unreachable => 503,
            Outage::DiskFull => 507,
        }
    }

    /// What an operator and a client read: what is wrong, that nothing was stored, what to do.
    pub fn describe(self, detail: &str) -> String {
        match self {
            Outage::Unreachable => format!(
                "the database is unreachable ({detail}); try again once it is back (the host reconnects by itself)"
            ),
            Outage::DiskFull => format!(
                "the disk of the database is full ({detail}); nothing was stored — free space on it (the host resumes by itself), then try again"
            ),
        }
    }
}

/// SQLite's code for a full disk, SQLITE_FULL (13), also as the low byte of an extended code.
fn sqlite_full(code: i32) -> bool {
    code & 0xff == 13
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error() {
            Some(code) if sqlite_full(code.extended_code) => StorageError::Unavailable {
                outage: Outage::DiskFull,
                detail: error.to_string(),
            },
            _ => StorageError::Sqlite(error),
        }
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        match Outage::of(&error) {
            Some(outage) => StorageError::Unavailable {
                outage,
                detail: error.to_string(),
            },
            None => StorageError::Database(error),
        }
    }
}

impl StorageError {
    /// The kind of refusal, when storage refused a transaction on its merits (rather than
    /// failing): conflict, saga_changed, overwritten, duplicate.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            StorageError::Conflict { .. } => Some("conflict"),
            StorageError::SagaChanged(_) => Some("saga_changed"),
            StorageError::Overwritten { .. } => Some("overwritten"),
            StorageError::Duplicate(_) => Some("duplicate"),
            _ => None,
        }
    }

    /// The outage behind this error, when the database could not be used at all.
    pub fn outage(&self) -> Option<Outage> {
        match self {
            StorageError::Unavailable { outage, .. } => Some(*outage),
            _ => None,
        }
    }
}

/// Reading the services' aggregates (their writes go through `Transactions`).
pub trait Aggregates {
    /// The state of one aggregate a reader sees: the saga's staged state when `saga` wrote it,
    /// else the committed one; deleted or not. One round trip.
    fn get(
        &self,
        service: &str,
        aggregate: &str,
        uuid: &str,
        saga: Option<SagaId>,
    ) -> impl Future<Output = Result<Option<Snapshot>, StorageError>> + Send;

    /// Aggregates of a type that satisfy the prefilter, in creation order (committed), and,
    /// for a saga, every aggregate of the type it has staged (to overlay). One round trip. With
    /// `limit`, the prefilter must be exact and there must be no saga.
    fn find(
        &self,
        service: &str,
        aggregate: &str,
        prefilter: &Prefilter,
        limit: Option<u32>,
        saga: Option<SagaId>,
    ) -> impl Future<Output = Result<Found, StorageError>> + Send;

    /// Makes equality conditions on `field` of `aggregate` use an index. The index also holds
    /// the creation order, so that `find` reads matches already sorted.
    fn ensure_index(
        &self,
        service: &str,
        aggregate: &str,
        field: &FieldPath,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Saga executions as stored, each row with its history (written with the transitions, through
/// `Transactions`).
pub trait Executions {
    /// One execution's row.
    fn load_saga(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<SagaRow>, StorageError>> + Send;

    /// Forgets sagas that ended before `before` (ms since the epoch), with their history, at
    /// most `limit` of them; returns how many. A saga that has not ended is never forgotten.
    fn prune_ended_sagas(
        &self,
        before: i64,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Sagas the filter selects, newest first (by creation, then id), starting after `after`
    /// (the last row of the previous page), at most `limit`.
    fn list_sagas(
        &self,
        filter: &SagaFilter,
        after: Option<&SagaKey>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SagaRow>, StorageError>> + Send;

    /// How many sagas the filter selects, by service, definition and status.
    fn count_sagas(
        &self,
        filter: &SagaFilter,
    ) -> impl Future<Output = Result<Vec<SagaCount>, StorageError>> + Send;

    /// How long the sagas that finished since `since` (ms) took, by service and definition,
    /// each list sorted from the shortest, in ms.
    fn finished_durations(
        &self,
        since: i64,
    ) -> impl Future<Output = Result<Vec<Durations>, StorageError>> + Send;

    /// Takes over the sagas whose owner is not a live host (silent since `alive_since`, or gone
    /// with a restart) and that have a timer: returns them with when they are due, for `me` to
    /// schedule. Sagas of live hosts are left to them.
    fn claim_orphaned_sagas(
        &self,
        me: &str,
        alive_since: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, StorageError>> + Send;

    /// Unfinished sagas by the component version they run on: (service, version, count).
    fn running_versions(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String, i64)>, StorageError>> + Send;

    /// How many sagas that have not ended there are of each status (only statuses with some).
    fn open_sagas(&self) -> impl Future<Output = Result<Vec<(Status, u64)>, StorageError>> + Send;
}

/// Which sagas a listing selects; a field left empty selects all. Times are ms since the
/// epoch; a range includes its start and excludes its end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaFilter {
    pub service: Option<String>,
    /// The definition's name.
    pub name: Option<String>,
    pub status: Option<Status>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    pub updated_from: Option<i64>,
    pub updated_to: Option<i64>,
    /// The start of the saga's id (lowercase hex digits and dashes only: it is a LIKE prefix).
    pub id_prefix: Option<String>,
}

/// A saga's place in the listing order (newest first): its creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaKey {
    pub created_at: i64,
    pub id: String,
}

/// How many sagas of one service and definition are in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaCount {
    pub service: String,
    pub name: String,
    pub status: Status,
    pub count: i64,
}

/// How long the finished sagas of one definition took, shortest first, in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durations {
    pub service: String,
    pub name: String,
    pub took_ms: Vec<i64>,
}

/// The in-process broker's queue, the dead letters, and the record of consumed messages.
pub trait Queue {
    /// Every message still in the queue, oldest first: what a restarted host must deliver.
    fn queued_messages(
        &self,
    ) -> impl Future<Output = Result<Vec<QueuedMessage>, StorageError>> + Send;

    /// Queued messages enqueued before `before` (ms since the epoch), oldest first, at most
    /// `limit`: what a relay left behind (a host that died before handing them on).
    fn queued_before(
        &self,
        before: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<QueuedMessage>, StorageError>> + Send;

    /// Removes queue entries that were handed on (to the external broker).
    fn remove_queued(&self, seqs: &[i64]) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Records a failed attempt at a queued message and when to try again.
    fn defer_message(
        &self,
        seq: i64,
        attempts: u32,
        available_at: i64,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Dead letters, oldest first.
    fn dead_letters(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StorageError>> + Send;

    /// The reply sent when `consumer` consumed `message_id`, if it consumed it and replied.
    fn stored_reply(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<NewMessage>, StorageError>> + Send;

    /// What waits: the queued messages, the oldest one's enqueue time, the dead letters.
    fn backlog(&self) -> impl Future<Output = Result<Backlog, StorageError>> + Send;

    /// Forgets consumed-message records older than `before` (ms since the epoch); returns how
    /// many.
    fn prune_consumed(&self, before: i64)
    -> impl Future<Output = Result<u64, StorageError>> + Send;
}

/// Requests' idempotency keys (claimed, answered and given up through `Transaction::key`).
pub trait Keys {
    /// The key's record, if it was used and not forgotten.
    fn request_key(
        &self,
        key: &RequestKey,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StorageError>> + Send;

    /// Forgets keys claimed before `before` (ms since the epoch); returns how many.
    fn prune_keys(&self, before: i64) -> impl Future<Output = Result<u64, StorageError>> + Send;
}

/// The hosts of a cluster: heartbeats, and what each one's services consume.
pub trait Hosts {
    /// Records that host `me` is alive, and, when given, what its services consume (replacing
    /// what it said before). One transaction.
    fn heartbeat(
        &self,
        me: &str,
        consumes: Option<&[Consumes]>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// What the services of the hosts alive since `alive_since` consume.
    fn cluster_consumes(
        &self,
        alive_since: i64,
    ) -> impl Future<Output = Result<Vec<Consumes>, StorageError>> + Send;

    /// How many hosts sent a heartbeat since `alive_since`.
    fn hosts_alive(
        &self,
        alive_since: i64,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Forgets the hosts silent since before `before`, what they consumed and what they ran.
    fn forget_hosts(&self, before: i64) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// What waits in the queue and the dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub queued: u64,
    /// When the oldest queued message became available (ms since the epoch).
    pub oldest_at: Option<i64>,
    pub dead_letters: u64,
}

/// Committing transactions: writes, messages, consumption records, a saga's transition.
pub trait Transactions {
    /// Commits a transaction durably. Many callers' transactions share one database commit.
    fn commit(
        &self,
        transaction: Transaction,
    ) -> impl Future<Output = Result<Committed, StorageError>> + Send;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
