//! The persisted state of one saga execution: where it is (a stack of frames, one per running
//! saga definition, for conditional steps' inner sagas), its context, and the record of every
//! step it executed (what compensation walks back through, and what an operator inspects).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::runtime::bindings::types as wit;
use crate::storage::{self, SagaRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Created,
    Running,
    Paused,
    Finished,
    Errored,
    CompensationFailed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Finished => "finished",
            Status::Errored => "errored",
            Status::CompensationFailed => "compensation-failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Created,
            Status::Running,
            Status::Paused,
            Status::Finished,
            Status::Errored,
            Status::CompensationFailed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// The saga will not move again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Finished | Status::Errored | Status::CompensationFailed
        )
    }

    fn to_wit(self) -> wit::SagaStatus {
        match self {
            Status::Created => wit::SagaStatus::Created,
            Status::Running => wit::SagaStatus::Running,
            Status::Paused => wit::SagaStatus::Paused,
            Status::Finished => wit::SagaStatus::Finished,
            Status::Errored => wit::SagaStatus::Errored,
            Status::CompensationFailed => wit::SagaStatus::CompensationFailed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Remote,
    Local,
    Conditional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Running,
    AwaitingReply,
    Succeeded,
    Failed,
    /// Its compensation was sent (remote) or ran (local).
    Compensated,
    /// Its compensation could not be sent or failed.
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub status: u16,
    pub message: String,
}

/// One executed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The definition the step belongs to (the saga's own, or an inner saga's).
    pub saga: String,
    /// Its index in that definition.
    pub index: usize,
    pub kind: StepKind,
    pub status: StepStatus,
    /// The command's topic, for remote steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Where execution stands in one saga definition: the next step to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub saga: String,
    pub step: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub service: String,
    /// The definition it was started with.
    pub name: String,
    /// The component version it runs on until it ends.
    pub digest: String,
    pub status: Status,
    pub context: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub frames: Vec<Frame>,
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Optimistic concurrency: the row's revision this state was read at.
    #[serde(skip)]
    pub revision: i64,
}

/// The part of an execution kept in the `state` column.
#[derive(Serialize, Deserialize)]
struct State {
    digest: String,
    context: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    frames: Vec<Frame>,
    steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorInfo>,
}

impl Execution {
    pub fn new(
        service: &str,
        name: &str,
        digest: &str,
        context: Map<String, Value>,
        user: Option<String>,
    ) -> Self {
        let now = storage::now_ms();
        Execution {
            id: uuid::Uuid::new_v4().to_string(),
            service: service.to_string(),
            name: name.to_string(),
            digest: digest.to_string(),
            status: Status::Created,
            context,
            user,
            frames: vec![Frame {
                saga: name.to_string(),
                step: 0,
            }],
            steps: Vec::new(),
            error: None,
            created_at: now,
            updated_at: now,
            revision: 0,
        }
    }

    pub fn to_row(&self) -> SagaRow {
        let state = State {
            digest: self.digest.clone(),
            context: self.context.clone(),
            user: self.user.clone(),
            frames: self.frames.clone(),
            steps: self.steps.clone(),
            error: self.error.clone(),
        };
        SagaRow {
            id: self.id.clone(),
            service: self.service.clone(),
            name: self.name.clone(),
            status: self.status.as_str().to_string(),
            state: serde_json::to_string(&state).expect("saga state serialises"),
            created_at: self.created_at,
            updated_at: self.updated_at,
            revision: self.revision,
        }
    }

    pub fn from_row(row: &SagaRow) -> Result<Execution, String> {
        let state: State = serde_json::from_str(&row.state)
            .map_err(|e| format!("saga {} has an unreadable state: {e}", row.id))?;
        let status = Status::parse(&row.status)
            .ok_or_else(|| format!("saga {} has an unknown status {:?}", row.id, row.status))?;
        Ok(Execution {
            id: row.id.clone(),
            service: row.service.clone(),
            name: row.name.clone(),
            digest: state.digest,
            status,
            context: state.context,
            user: state.user,
            frames: state.frames,
            steps: state.steps,
            error: state.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
            revision: row.revision,
        })
    }

    pub fn to_wit(&self) -> wit::Execution {
        wit::Execution {
            id: self.id.clone(),
            name: self.name.clone(),
            status: self.status.to_wit(),
            context: Value::Object(self.context.clone()).to_string(),
            error: self.error.as_ref().map(|e| wit::Error {
                status: e.status,
                message: e.message.clone(),
            }),
        }
    }

    /// The step waiting for a reply, if the saga is paused on one.
    pub fn awaiting(&self) -> Option<usize> {
        let last = self.steps.len().checked_sub(1)?;
        (self.status == Status::Paused && self.steps[last].status == StepStatus::AwaitingReply)
            .then_some(last)
    }
}
