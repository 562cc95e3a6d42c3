//! The `storage` import: a service's event-sourced aggregates, over the parts of the call it
//! needs — who calls, what the transaction wrote before it and what it writes, what it saw (to
//! tell a race from a conflict), and its budget.

use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{answer, outgoing};
use crate::broker::Message;
use crate::runtime::bindings::storage as wit_storage;
use crate::runtime::call::{Budget, CallEnv, Effects, Identity, RaceTrap, Seen};
use crate::storage::condition::{self, Condition, Node, OrderBy};
use crate::storage::{self, Action, AggregateRecord, Aggregates, Found, Write};

/// The call's state as the storage import sees it.
pub struct StorageImport<'a> {
    pub(super) who: &'a Identity,
    pub(super) env: Option<&'a Arc<CallEnv>>,
    pub(super) effects: &'a mut Effects,
    pub(super) budget: &'a mut Budget,
    pub(super) seen: &'a mut Seen,
}

impl StorageImport<'_> {
    /// Whether the call believed `existing` did not exist: a search it made would have returned
    /// it. (Had it read the uuid and found nothing, it would find nothing again: see `read`.)
    fn missed(&self, aggregate: &str, existing: &AggregateRecord) -> bool {
        self.seen
            .searched
            .iter()
            .any(|(searched, condition)| searched == aggregate && condition.matches(existing))
    }

    fn observe(&mut self, record: &AggregateRecord) {
        self.seen
            .observed
            .insert(record.uuid.clone(), record.version);
    }

    /// An `expected-version` that does not match: a race when this call itself read the older
    /// version (someone committed since), a real conflict otherwise.
    fn version_conflict(
        &self,
        aggregate: &str,
        current: &AggregateRecord,
        expected: u64,
    ) -> Failure {
        if self.seen.observed.get(&current.uuid) == Some(&expected) && current.version > expected {
            return Failure::Trap(
                RaceTrap {
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

    fn check_aggregate_type(&self, name: &str) -> Result<(), wit_storage::StorageError> {
        if self.who.service.manifest.aggregates.contains_key(name) {
            Ok(())
        } else {
            let known: Vec<&str> = self
                .who
                .service
                .manifest
                .aggregates
                .keys()
                .map(String::as_str)
                .collect();
            Err(wit_storage::StorageError::Invalid(format!(
                "service {} declares no aggregate type {name:?} (it declares: {}); add it to the manifest's aggregates",
                self.who.service.manifest.name,
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
        let service = self.who.service_name();
        let saga = self.who.saga_id();
        self.effects
            .writes
            .iter()
            .rev()
            .chain(self.effects.prior.iter().rev().filter(move |w| {
                w.service == service && (w.staged_under.is_none() || w.staged_under == saga)
            }))
    }

    /// An aggregate that exists, as this call sees it, at `expected` version when one is given:
    /// what an update or a delete acts on.
    async fn existing(
        &mut self,
        aggregate: &str,
        uuid: &str,
        expected: Option<u64>,
    ) -> Result<AggregateRecord, Failure> {
        let Some((current, false)) = self.read(aggregate, uuid).await? else {
            return Err(wit_storage::StorageError::NotFound(format!(
                "{aggregate} {uuid} does not exist"
            ))
            .into());
        };
        match expected {
            Some(expected) if expected != current.version => {
                Err(self.version_conflict(aggregate, &current, expected))
            }
            _ => Ok(current),
        }
    }

    /// The state this call sees of one aggregate: its transaction's pending writes, then its
    /// saga's staged writes, then the committed snapshot. `Some((record, deleted))` when it ever
    /// existed.
    ///
    /// Storage is asked once per aggregate and call (see `Seen` for the bound on the records
    /// kept); a later read gets the same answer (the
    /// Attempt service's `get` then `create_with_uuid` of a new attempt, or `get` then `save`,
    /// read once). Should another writer change the aggregate meanwhile, the call's commit is
    /// refused on the version or the taken uuid and the call runs again: a race, as when a
    /// second read saw the change.
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
        if let Some(known) = self.seen.recall(aggregate, uuid) {
            return Ok(known.clone());
        }
        let env = self.env()?.clone();
        let (service, saga) = (self.who.service_name(), self.who.saga_id());
        let found = env
            .storage
            .get(service, aggregate, uuid, saga)
            .await
            .map_err(unavailable)?
            .map(|s| (s.record, s.deleted));
        self.seen.remember(aggregate, uuid, &found);
        Ok(found)
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
        // Made only for a subscriber: the payload holds the aggregate's data and diff parsed and
        // written again (27 K instructions a write, by callgrind).
        let event = || {
            let payload = serde_json::json!({
                "uuid": write.uuid,
                "aggregate": write.aggregate,
                "version": write.version,
                "action": write.action.as_str(),
                "diff": raw_json(&write.diff),
                "data": raw_json(&write.data),
                "at": write.updated_at,
            });
            outgoing(
                self.who,
                Message::event(&event_topic, payload.to_string(), Vec::new()),
            )
        };
        let addressed = env
            .broker
            .address_event(&event_topic, self.who.saga_id(), event);
        self.effects.messages.extend(addressed);
        self.effects.writes.push(write);
        Ok(())
    }

    fn check_size(&mut self, what: &str, value: &str) -> Result<(), wit_storage::StorageError> {
        let limit = self.who.limits().max_value_bytes;
        if value.len() > limit {
            return Err(wit_storage::StorageError::Denied(self.budget.refuse(
                format!(
                    "{what} is {} bytes; the limit is {limit} (limit max-value-kb)",
                    value.len()
                ),
            )));
        }
        Ok(())
    }

    fn env(&self) -> Result<&Arc<CallEnv>, wit_storage::StorageError> {
        super::env(self.who, self.env).map_err(wit_storage::StorageError::Denied)
    }

    /// What the host gives the call, if it may write one more aggregate.
    fn writable(&mut self) -> Result<Arc<CallEnv>, wit_storage::StorageError> {
        let env = super::acting(self.who, self.env)
            .map_err(wit_storage::StorageError::Denied)?
            .clone();
        let max = self.who.limits().max_writes;
        if self.effects.writes.len() >= max {
            return Err(wit_storage::StorageError::Denied(self.budget.refuse(
                format!("a call may write at most {max} aggregates (limit max-writes)"),
            )));
        }
        Ok(env)
    }
}

/// Why a storage import did not succeed: an error the component receives, or a trap that stops
/// the call (a race, after which the host runs the call again).
pub(super) enum Failure {
    Guest(wit_storage::StorageError),
    Trap(wasmtime::Error),
}

impl From<wit_storage::StorageError> for Failure {
    fn from(error: wit_storage::StorageError) -> Self {
        Failure::Guest(error)
    }
}

impl wit_storage::Host for StorageImport<'_> {
    async fn create(
        &mut self,
        aggregate_type: String,
        uuid: Option<String>,
        data: String,
    ) -> wasmtime::Result<Result<wit_storage::Aggregate, wit_storage::StorageError>> {
        self.budget.host_call(self.who)?;
        answer(async {
            let ctx = &mut *self;
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
                                RaceTrap {
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
                // Time-ordered (UUIDv7): new aggregates land at the end of the uuid indexes.
                None => Uuid::now_v7().hyphenated().to_string(),
            };
            let now = storage::now_ms();
            let data = Value::Object(object).to_string();
            let write = Write {
                service: ctx.who.service_name().to_string(),
                aggregate: aggregate_type,
                uuid,
                action: Action::Create,
                version: 1,
                diff: data.clone(),
                data,
                created_at: now,
                updated_at: now,
                staged_under: ctx.who.saga_id(),
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
        self.budget.host_call(self.who)?;
        answer(
            async {
                let ctx = &mut *self;
                ctx.check_aggregate_type(&aggregate_type)?;
                let uuid = parse_uuid(&uuid)?;
                match ctx.read(&aggregate_type, &uuid).await? {
                    Some((record, false)) => {
                        ctx.observe(&record);
                        Ok(to_wit(&record))
                    }
                    _ => Err(wit_storage::StorageError::NotFound(format!(
                        "{aggregate_type} {uuid} does not exist"
                    ))
                    .into()),
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
        self.budget.host_call(self.who)?;
        answer(
            async {
                let ctx = &mut *self;
                ctx.writable()?;
                ctx.check_aggregate_type(&aggregate_type)?;
                ctx.check_size("the updated fields", &fields)?;
                let fields = parse_object("the updated fields", &fields)?;
                let uuid = parse_uuid(&uuid)?;
                let current = ctx
                    .existing(&aggregate_type, &uuid, expected_version)
                    .await?;
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
                    service: ctx.who.service_name().to_string(),
                    aggregate: aggregate_type,
                    uuid,
                    action: Action::Update,
                    version: current.version + 1,
                    diff: Value::Object(diff).to_string(),
                    data,
                    created_at: current.created_at,
                    updated_at: storage::now_ms().max(current.updated_at),
                    staged_under: ctx.who.saga_id(),
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
        self.budget.host_call(self.who)?;
        answer(
            async {
                let ctx = &mut *self;
                ctx.writable()?;
                ctx.check_aggregate_type(&aggregate_type)?;
                let uuid = parse_uuid(&uuid)?;
                let current = ctx
                    .existing(&aggregate_type, &uuid, expected_version)
                    .await?;
                let write = Write {
                    service: ctx.who.service_name().to_string(),
                    aggregate: aggregate_type,
                    uuid,
                    action: Action::Delete,
                    version: current.version + 1,
                    diff: "{}".into(),
                    data: current.data.to_string(),
                    created_at: current.created_at,
                    updated_at: storage::now_ms().max(current.updated_at),
                    staged_under: ctx.who.saga_id(),
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
        self.budget.host_call(self.who)?;
        answer(async {
            let ctx = &mut *self;
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
            let service = ctx.who.service_name().to_string();
            let prefilter = condition.prefilter();
            let own_writes = ctx.pending().any(|w| w.aggregate == aggregate_type);
            // Outside a saga, with no writes of its own to overlay and a condition SQL answers
            // exactly, SQL also applies the limit; otherwise fetch the candidates, overlay the
            // saga's and the call's writes, filter, sort, then limit.
            let sql_limit = if ctx.who.saga_id().is_none() && !own_writes && prefilter.exact && ordering.is_empty() {
                limit.map(|l| l.min(ctx.who.limits().max_find_results as u32))
            } else {
                Some(ctx.who.limits().max_find_results as u32 + 1)
            };
            let found = env
                .storage
                .find(&service, &aggregate_type, &prefilter, sql_limit, ctx.who.saga_id())
                .await;
            let Found { committed, staged } = found.map_err(unavailable)?;
            if committed.len() > ctx.who.limits().max_find_results {
                let max = ctx.who.limits().max_find_results;
                return Err(wit_storage::StorageError::Denied(ctx.budget.refuse(format!(
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
                ctx.seen.searched.push((aggregate_type, condition));
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
