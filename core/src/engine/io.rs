//! What goes into the saga state machine (events: what happened) and what comes out of it
//! (actions: what the driver must do, and entries for the saga's history).

use serde::{Deserialize, Serialize};

use super::execution::{ErrorInfo, Json, Status};
use crate::ids::MessageId;

/// What happened to an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The saga was started.
    Start,
    /// The callback the machine asked for (its last `Action::Call`) returned.
    Called {
        outcome: Result<Returned, ErrorInfo>,
        cost: Cost,
    },
    /// A participant answered a command of the saga.
    Replied {
        target: Target,
        message_id: MessageId,
        status: u16,
        payload: String,
    },
    /// A command the machine asked to send (its last `Action::Send`) could not be addressed.
    Undeliverable { target: Target, error: ErrorInfo },
    /// Time passed: whatever is due (a reply deadline, a retry, the saga's deadline) fires.
    Timer,
    /// The saga's writes could not be stored (another writer overwrote what it holds, or it
    /// waited too long for aggregates another saga holds): it fails.
    Fail(ErrorInfo),
    /// An operator asks for something.
    Operator { action: OperatorAction, by: String },
}

impl Event {
    /// What kind of event it is, in a word (for logs and traces).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Called { .. } => "called",
            Event::Replied { .. } => "replied",
            Event::Undeliverable { .. } => "undeliverable",
            Event::Timer => "timer",
            Event::Fail(_) => "fail",
            Event::Operator { .. } => "operator",
        }
    }
}

/// What an operator may ask of an execution, with the reason the operator gave (kept in the
/// saga's history; an empty reason is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum OperatorAction {
    /// Fail a running or paused saga as if its current step had failed: the steps that acted
    /// are compensated, and it ends errored.
    Cancel {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// Run a compensation-failed saga's failed compensations again.
    RetryCompensations {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// Send the command a paused step (or compensation) waits to retry, now.
    RetryNow {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
}

impl OperatorAction {
    /// The names `OperatorAction::parse` accepts.
    pub const NAMES: [&'static str; 3] = ["cancel", "retry-compensations", "retry-now"];

    /// The action named `name` (one of `NAMES`), with the operator's reason.
    pub fn parse(name: &str, reason: String) -> Option<OperatorAction> {
        match name {
            "cancel" => Some(OperatorAction::Cancel { reason }),
            "retry-compensations" => Some(OperatorAction::RetryCompensations { reason }),
            "retry-now" => Some(OperatorAction::RetryNow { reason }),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OperatorAction::Cancel { .. } => "cancel",
            OperatorAction::RetryCompensations { .. } => "retry-compensations",
            OperatorAction::RetryNow { .. } => "retry-now",
        }
    }

    /// Why the operator asked.
    pub fn reason(&self) -> &str {
        match self {
            OperatorAction::Cancel { reason }
            | OperatorAction::RetryCompensations { reason }
            | OperatorAction::RetryNow { reason } => reason,
        }
    }
}

/// An operator's request that does not fit the execution's state; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the saga is {}: {why}", .status.as_str())]
pub struct Rejected {
    pub status: Status,
    pub why: String,
}

/// What a callback returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Returned {
    /// A saga context (`on-reply`, `execute`): a JSON object.
    Context(String),
    /// A command to send (`prepare`): its payload and, optionally, another topic.
    Request {
        target: Option<String>,
        payload: String,
    },
    /// A conditional step's decision (`condition`).
    Decision(bool),
}

/// What one component call cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Wall-clock time of the call, waiting included, in microseconds.
    pub wall_us: u64,
    /// CPU time of the component's own code, in microseconds.
    pub cpu_us: u64,
}

/// The command of a step, or of a step's compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The step at this index of the execution's steps.
    Step(usize),
    /// The compensation of the step at this index.
    Compensation(usize),
}

impl Target {
    pub fn index(self) -> usize {
        match self {
            Target::Step(index) | Target::Compensation(index) => index,
        }
    }
}

/// Which export of the component a callback is called through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallbackKind {
    /// `prepare`: a command's payload.
    Prepare,
    /// `on-reply`: `on_reply` or `on_error` with the reply.
    OnReply,
    /// `execute`: a local step, a local compensation, or a commit.
    Execute,
    /// `condition`: a conditional step's branch.
    Condition,
}

/// A callback to run with the execution's current context.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    /// The definition it belongs to.
    pub saga: String,
    pub name: String,
    pub kind: CallbackKind,
    /// For `OnReply`: the reply's status and payload.
    pub reply: Option<(u16, String)>,
}

/// A command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub target: Target,
    pub topic: String,
    pub payload: Json,
    pub message_id: MessageId,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The participant is loaded here and the message was never sent before: run it within
    /// this transition and answer with `Event::Replied`. Otherwise it goes through the queue.
    pub inline: bool,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run a callback; its outcome comes back as `Event::Called`.
    Call(Callback),
    /// Send a command (inline: run its participant now and answer with `Event::Replied`, or
    /// with `Event::Undeliverable` when it cannot be addressed).
    Send(Command),
    /// The saga finished: its staged writes become visible and its held messages are sent.
    Promote,
    /// The saga ended failed: its staged writes and held messages vanish.
    Discard,
    /// The saga reached a final status: wake whoever waits for it.
    Ended,
}

/// What a timer fired for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "kebab-case")]
pub enum Due {
    /// The whole saga's deadline.
    SagaDeadline,
    /// The reply (or confirmation) a command waits for.
    ReplyDeadline { target: Target },
    /// The retry of a command after a system error.
    Retry { target: Target },
}

/// One event of a saga's history, as the machine records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When (ms since the epoch).
    pub at: i64,
    #[serde(flatten)]
    pub event: Recorded,
}

/// What a history entry says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Recorded {
    Started {
        name: String,
        digest: String,
    },
    /// A command went out.
    Dispatched {
        target: Target,
        /// The definition and step it belongs to.
        saga: String,
        index: usize,
        topic: String,
        message_id: MessageId,
        attempt: u32,
        inline: bool,
    },
    /// Its participant answered.
    Replied {
        target: Target,
        status: u16,
        /// Time from sending this attempt to the reply.
        after_ms: i64,
    },
    /// A callback ran.
    Called {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<usize>,
        callback: String,
        kind: CallbackKind,
        wall_us: u64,
        cpu_us: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    /// A command failed with a system error and is sent again at `at`.
    RetryScheduled {
        target: Target,
        retry_at: i64,
    },
    /// A deadline or retry came due.
    TimerFired {
        due: Due,
    },
    /// The saga failed; these steps are compensated, latest first.
    Failed {
        error: ErrorInfo,
        compensating: Vec<usize>,
    },
    /// A compensation is over.
    Compensated {
        step: usize,
        done: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    /// An operator acted.
    Operator {
        #[serde(flatten)]
        action: OperatorAction,
        by: String,
    },
    Ended {
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    /// An event that did not fit the state changed nothing.
    Ignored {
        what: String,
        why: String,
    },
}
