//! The persisted state of one saga execution: where it is (a stack of frames, one per running
//! saga definition, for conditional steps' inner sagas), its context, the record of every step
//! it executed (what compensation walks back through, and what an operator inspects), and when
//! it next needs attention (a reply deadline, a retry, its own deadline).

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
    Compensating,
    Finished,
    Errored,
    CompensationFailed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Compensating,
        Status::Finished,
        Status::Errored,
        Status::CompensationFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Compensating => "compensating",
            Status::Finished => "finished",
            Status::Errored => "errored",
            Status::CompensationFailed => "compensation-failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
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
            Status::Compensating => wit::SagaStatus::Compensating,
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
    /// Its command is out; the reply is due by `reply_due`.
    AwaitingReply,
    /// Its command failed with a system error; it is sent again at `retry_at`.
    AwaitingRetry,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub status: u16,
    pub message: String,
}

/// A command out to a participant, kept so that it can be sent again as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    /// The message as the broker serialises it.
    pub message: String,
    pub attempts: u32,
    pub sent_at: i64,
    /// The reply is due by then; later, the command is sent again (same message id, so a
    /// participant that did get it does nothing twice) or the attempt counts as failed.
    pub reply_due: i64,
    /// After a system-error reply: when to send it again (with a new message id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompensationStatus {
    /// Sent; its confirmation is awaited.
    Sent,
    /// Failed with a system error; it is sent again at `retry_at`.
    AwaitingRetry,
    /// The participant confirmed it (or a local compensation ran).
    Done,
    /// It could not be done: an operator must look.
    Failed,
}

/// The compensation of one executed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    pub status: CompensationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
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
    pub sent: Option<Sent>,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Why it failed, or the ERROR reply it went on after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Compensation>,
}

impl StepRecord {
    pub fn attempts(&self) -> u32 {
        self.sent.as_ref().map_or(1, |s| s.attempts)
    }
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
    /// The whole saga must have finished by then (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<i64>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_at: Option<i64>,
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
            deadline_at: None,
            created_at: now,
            updated_at: now,
            revision: 0,
        }
    }

    /// When the execution next needs attention: the reply or retry its awaiting step waits
    /// for, its pending compensations', or its own deadline.
    pub fn timer_at(&self) -> Option<i64> {
        if self.status.is_final() {
            return None;
        }
        let mut due: Vec<i64> = Vec::new();
        if self.status == Status::Compensating {
            for compensation in self.steps.iter().filter_map(|s| s.compensation.as_ref()) {
                match (compensation.status, &compensation.sent) {
                    (CompensationStatus::Sent, Some(sent)) => due.push(sent.reply_due),
                    (CompensationStatus::AwaitingRetry, Some(sent)) => due.extend(sent.retry_at),
                    _ => {}
                }
            }
        } else {
            due.extend(self.deadline_at);
            if let Some(step) = self.steps.last()
                && let Some(sent) = &step.sent
            {
                match step.status {
                    StepStatus::AwaitingReply => due.push(sent.reply_due),
                    StepStatus::AwaitingRetry => due.extend(sent.retry_at),
                    _ => {}
                }
            }
        }
        due.into_iter().min()
    }

    pub fn to_row(&self) -> SagaRow {
        let state = State {
            digest: self.digest.clone(),
            context: self.context.clone(),
            user: self.user.clone(),
            frames: self.frames.clone(),
            steps: self.steps.clone(),
            error: self.error.clone(),
            deadline_at: self.deadline_at,
        };
        SagaRow {
            id: self.id.clone(),
            service: self.service.clone(),
            name: self.name.clone(),
            version: self.digest.clone(),
            status: self.status.as_str().to_string(),
            state: serde_json::to_string(&state).expect("saga state serialises"),
            created_at: self.created_at,
            updated_at: self.updated_at,
            revision: self.revision,
            timer_at: self.timer_at(),
            owner: None,
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
            deadline_at: state.deadline_at,
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

    /// Everything an operator sees of the execution (`GET /sagas/{id}`).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "service": self.service,
            "name": self.name,
            "version": self.digest,
            "status": self.status.as_str(),
            "context": self.context,
            "error": self.error,
            "steps": self.steps,
            "deadline_at": self.deadline_at,
            "next_timer_at": self.timer_at(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// The step waiting for a reply or a retry, if the saga is paused on one.
    pub fn awaiting(&self) -> Option<usize> {
        let last = self.steps.len().checked_sub(1)?;
        let waiting = matches!(
            self.steps[last].status,
            StepStatus::AwaitingReply | StepStatus::AwaitingRetry
        );
        (self.status == Status::Paused && waiting).then_some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(reply_due: i64, retry_at: Option<i64>) -> Sent {
        Sent {
            message: "{}".into(),
            attempts: 1,
            sent_at: 0,
            reply_due,
            retry_at,
        }
    }

    fn step(status: StepStatus, sent: Option<Sent>) -> StepRecord {
        StepRecord {
            saga: "S".into(),
            index: 0,
            kind: StepKind::Remote,
            status,
            topic: None,
            sent,
            started_at: 0,
            finished_at: None,
            error: None,
            compensation: None,
        }
    }

    #[test]
    fn the_timer_is_the_earliest_thing_due() {
        let mut exec = Execution::new("svc", "S", "d", Map::new(), None);
        exec.status = Status::Paused;
        exec.steps
            .push(step(StepStatus::AwaitingReply, Some(sent(500, None))));
        assert_eq!(exec.timer_at(), Some(500));
        exec.deadline_at = Some(300);
        assert_eq!(exec.timer_at(), Some(300));
        exec.steps[0].status = StepStatus::AwaitingRetry;
        exec.steps[0].sent = Some(sent(500, Some(200)));
        assert_eq!(exec.timer_at(), Some(200));
        exec.status = Status::Compensating;
        exec.steps[0].compensation = Some(Compensation {
            status: CompensationStatus::Sent,
            sent: Some(sent(900, None)),
            error: None,
        });
        assert_eq!(
            exec.timer_at(),
            Some(900),
            "a compensating saga waits for its compensations only"
        );
        exec.status = Status::Errored;
        assert_eq!(exec.timer_at(), None);
    }

    #[test]
    fn the_row_round_trips() {
        let mut exec = Execution::new("svc", "S", "d", Map::new(), Some("u".into()));
        exec.steps.push(step(StepStatus::Succeeded, None));
        exec.deadline_at = Some(42);
        exec.revision = 3;
        let back = Execution::from_row(&exec.to_row()).unwrap();
        assert_eq!(back, exec);
    }
}
