//! An execution in its three other forms: the storage row (the few columns storage queries by,
//! and the rest as JSON in `state`), what a component sees (`wit::Execution`), and what an
//! operator sees (`GET /sagas/{id}`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use saga_core::engine::{Context, Entry, ErrorInfo, Execution, Frame, Status, StepRecord};
use saga_core::ids::{Digest, SagaId, ServiceName};

use crate::runtime::bindings::types as wit;
use crate::storage::SagaRow;

/// An execution as stored, with the revision it was read at (optimistic concurrency: a
/// transition stores only if the revision it read is still the stored one).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub exec: Execution,
    /// 0 for an execution not stored yet.
    pub revision: i64,
}

/// The part of an execution kept in the `state` column.
#[derive(Serialize, Deserialize)]
struct State<F, S> {
    digest: Digest,
    context: Context,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    frames: F,
    steps: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_at: Option<i64>,
}

impl Stored {
    /// The row that stores this execution's next revision, with its history entries; `owner`
    /// is the host storing it.
    pub fn to_row(&self, owner: &str, history: &[Entry]) -> SagaRow {
        let exec = &self.exec;
        let state = State {
            digest: exec.digest.clone(),
            context: exec.context.clone(),
            user: exec.user.clone(),
            frames: &exec.frames,
            steps: &exec.steps,
            error: exec.error.clone(),
            deadline_at: exec.deadline_at,
        };
        SagaRow {
            id: exec.id.to_string(),
            service: exec.service.to_string(),
            name: exec.name.clone(),
            version: exec.digest.to_string(),
            status: exec.status.as_str().to_string(),
            state: serde_json::to_string(&state).expect("saga state serialises"),
            created_at: exec.created_at,
            updated_at: exec.updated_at,
            revision: self.revision,
            timer_at: exec.timer_at(),
            owner: Some(owner.to_string()),
            history: (!history.is_empty())
                .then(|| serde_json::to_string(history).expect("history serialises")),
        }
    }

    pub fn from_row(row: &SagaRow) -> Result<Stored, String> {
        let unreadable = |e: &dyn std::fmt::Display| format!("saga {} is unreadable: {e}", row.id);
        let state: State<Vec<Frame>, Vec<StepRecord>> =
            serde_json::from_str(&row.state).map_err(|e| unreadable(&e))?;
        let status = Status::parse(&row.status)
            .ok_or_else(|| format!("saga {} has an unknown status {:?}", row.id, row.status))?;
        let id: SagaId = row.id.parse().map_err(|e| unreadable(&e))?;
        let mut exec = Execution::new(
            id,
            ServiceName(row.service.clone()),
            &row.name,
            state.digest,
            state.context,
            state.user,
            row.created_at,
        );
        exec.status = status;
        exec.frames = state.frames;
        exec.steps = state.steps;
        exec.error = state.error;
        exec.deadline_at = state.deadline_at;
        exec.updated_at = row.updated_at;
        Ok(Stored {
            exec,
            revision: row.revision,
        })
    }
}

/// The execution as `sagas.run` and `sagas.get` report it to a component.
pub fn to_wit(exec: &Execution) -> wit::Execution {
    wit::Execution {
        id: exec.id.to_string(),
        name: exec.name.clone(),
        status: match exec.status {
            Status::Created => wit::SagaStatus::Created,
            Status::Running => wit::SagaStatus::Running,
            Status::Paused => wit::SagaStatus::Paused,
            Status::Compensating => wit::SagaStatus::Compensating,
            Status::Finished => wit::SagaStatus::Finished,
            Status::Errored => wit::SagaStatus::Errored,
            Status::CompensationFailed => wit::SagaStatus::CompensationFailed,
        },
        context: exec.context.as_str().to_string(),
        error: exec.error.as_ref().map(|e| wit::Error {
            status: e.status,
            message: e.message.clone(),
        }),
    }
}

/// Everything an operator sees of an execution (`GET /sagas/{id}`).
pub fn to_json(exec: &Execution) -> Value {
    json!({
        "id": exec.id,
        "service": exec.service,
        "name": exec.name,
        "version": exec.digest,
        "status": exec.status,
        "context": exec.context,
        "error": exec.error,
        "steps": exec.steps,
        "deadline_at": exec.deadline_at,
        "next_timer_at": exec.timer_at(),
        "created_at": exec.created_at,
        "updated_at": exec.updated_at,
    })
}

/// The short form of an execution in a list (`GET /sagas`).
pub fn to_summary(exec: &Execution) -> Value {
    json!({
        "id": exec.id,
        "service": exec.service,
        "name": exec.name,
        "status": exec.status,
        "error": exec.error,
        "steps": exec.steps.len(),
        "created_at": exec.created_at,
        "updated_at": exec.updated_at,
    })
}
