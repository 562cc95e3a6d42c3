//! The state of one saga execution: where it is (a stack of frames, one per running definition,
//! for conditional steps' inner sagas), its context, the record of every step it executed (what
//! compensation walks back through, and what an operator inspects), and — derived from those —
//! when it next needs attention.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{Digest, MessageId, SagaId, ServiceName};

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Stored, not yet started.
    Created,
    /// A step is being executed (only within a transition).
    Running,
    /// Waiting for a remote step's reply, or for the time to retry it.
    Paused,
    /// A step failed; the executed steps that acted are being compensated, one at a time.
    Compensating,
    /// Every step succeeded and the commit ran: the saga's writes are visible.
    Finished,
    /// A step failed and every compensation is done; the saga's writes vanished.
    Errored,
    /// A step failed and a compensation could not be done: an operator must look.
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

    /// The saga will not move again by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Finished | Status::Errored | Status::CompensationFailed
        )
    }

    /// The saga may still stage writes: it has not ended.
    pub fn is_open(self) -> bool {
        !self.is_final()
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
    /// Its callback runs (only within a transition).
    Running,
    /// Its command is out; the reply is due by `sent.reply_due`.
    AwaitingReply,
    /// Its command failed with a system error; it is sent again at `sent.retry_at`.
    AwaitingRetry,
    Succeeded,
    Failed,
}

/// Whether a step did something that a compensation may have to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acted {
    /// Nothing: it has not run, it failed, or its participant refused (an ERROR or
    /// SYSTEM_ERROR reply: the participant's transaction rolled back).
    #[default]
    No,
    /// Its participant answered SUCCESS, or its local callback succeeded.
    Yes,
    /// Its participant did not reply in time: it may have acted.
    Maybe,
}

impl Acted {
    fn is_no(&self) -> bool {
        *self == Acted::No
    }
}

/// Why something failed: an HTTP-like status (4xx business, 5xx system) and words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub status: u16,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ErrorInfo {
            status,
            message: message.into(),
        }
    }
}

/// A command out to a participant, kept so that it can be sent again as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub message_id: MessageId,
    /// The command's payload (JSON), while a resend may need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Json>,
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
    /// To run, after the compensations of the later steps.
    Pending,
    /// Its callback runs (only within a transition).
    Running,
    /// Sent; its confirmation is awaited.
    AwaitingReply,
    /// Failed with a system error; it is sent again at `sent.retry_at`.
    AwaitingRetry,
    /// The participant confirmed it (or the local compensation ran).
    Done,
    /// It could not be done: an operator must look.
    Failed,
}

/// The compensation of one executed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    pub status: CompensationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl Compensation {
    pub(crate) fn pending() -> Self {
        Compensation {
            status: CompensationStatus::Pending,
            topic: None,
            sent: None,
            error: None,
        }
    }

    /// Waiting for its participant: a confirmation or the time to retry.
    pub fn is_out(&self) -> bool {
        matches!(
            self.status,
            CompensationStatus::AwaitingReply | CompensationStatus::AwaitingRetry
        )
    }
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
    #[serde(default, skip_serializing_if = "Acted::is_no")]
    pub acted: Acted,
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

/// A JSON text, kept as it is (valid, never parsed into values by the host).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<RawValue>);

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Json {
    /// Checks that `text` is JSON.
    pub fn parse(text: String) -> Result<Json, String> {
        RawValue::from_string(text)
            .map(Json)
            .map_err(|e| format!("it is not JSON: {e}"))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

/// A saga context: a JSON object, kept as the text the callbacks exchange (the host never needs
/// to look inside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(Json);

impl Context {
    /// Checks that `text` is a JSON object.
    pub fn parse(text: String) -> Result<Context, String> {
        let json = Json::parse(text)?;
        if json.as_str().trim_start().starts_with('{') {
            Ok(Context(json))
        } else {
            Err("it is not a JSON object".into())
        }
    }

    /// `{}`.
    pub fn empty() -> Context {
        Context::parse("{}".into()).expect("{} is a JSON object")
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The context as JSON (a command's payload when no callback prepares one).
    pub fn to_json(&self) -> Json {
        self.0.clone()
    }
}

/// A saga execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: SagaId,
    pub service: ServiceName,
    /// The definition it was started with.
    pub name: String,
    /// The component version it runs on until it ends.
    pub digest: Digest,
    pub status: Status,
    pub context: Context,
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
    /// The callback the machine waits for within a transition; never stored.
    #[serde(skip)]
    pub(crate) pending: Option<Pending>,
}

/// The callback an execution waits for within a transition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub(super) purpose: Purpose,
    pub(super) callback: String,
}

/// What a callback is run for: where its result takes the execution (and, through
/// `machine::callback_kind`, which export of the component runs it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Purpose {
    /// The command of the remote step at this index.
    Prepare(usize),
    /// The command of the compensation of this step.
    PrepareCompensation(usize),
    /// `on_reply` (a 2xx reply) or `on_error` (a 4xx one) of this step.
    Reply { step: usize, status: u16 },
    /// A local step.
    Execute(usize),
    /// The local compensation (`on_failure`) of this step.
    Compensate(usize),
    /// Branch `branch` of the conditional step at this index.
    Condition { step: usize, branch: usize },
    /// The commit of the innermost running definition.
    Commit,
}

impl Execution {
    pub fn new(
        id: SagaId,
        service: ServiceName,
        name: &str,
        digest: Digest,
        context: Context,
        user: Option<String>,
        now: i64,
    ) -> Self {
        Execution {
            id,
            service,
            name: name.to_string(),
            digest,
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
            pending: None,
        }
    }

    /// When the execution next needs attention: the reply or retry its awaiting step waits
    /// for, or the compensation out's, or its own deadline.
    pub fn timer_at(&self) -> Option<i64> {
        match self.status {
            Status::Compensating => self
                .steps
                .iter()
                .filter_map(|s| s.compensation.as_ref())
                .filter(|c| c.is_out())
                .filter_map(|c| due(c.status == CompensationStatus::AwaitingRetry, &c.sent))
                .min(),
            Status::Running | Status::Paused => {
                let step = self.awaiting().map(|i| &self.steps[i]);
                let step_due =
                    step.and_then(|s| due(s.status == StepStatus::AwaitingRetry, &s.sent));
                step_due.into_iter().chain(self.deadline_at).min()
            }
            _ => None,
        }
    }

    /// The step waiting for a reply or a retry, if the saga is paused on one.
    pub fn awaiting(&self) -> Option<usize> {
        let last = self.steps.len().checked_sub(1)?;
        let waiting = matches!(
            self.steps[last].status,
            StepStatus::AwaitingReply | StepStatus::AwaitingRetry
        );
        (matches!(self.status, Status::Paused | Status::Running) && waiting).then_some(last)
    }

    /// The compensation out (awaiting its confirmation or its retry), if any.
    pub fn compensation_out(&self) -> Option<usize> {
        self.steps
            .iter()
            .rposition(|s| s.compensation.as_ref().is_some_and(Compensation::is_out))
    }
}

/// When a command waiting for a reply (or, `retrying`, for its retry) needs attention.
fn due(retrying: bool, sent: &Option<Sent>) -> Option<i64> {
    let sent = sent.as_ref()?;
    if retrying {
        sent.retry_at
    } else {
        Some(sent.reply_due)
    }
}
