//! The saga state machine: one function from an execution and an event to the execution's next
//! state, the actions the driver must perform, and the entries of its history. No I/O: time,
//! fresh message ids and whether a participant can run inline come from an `Env`.
//!
//! Forward: steps run in order; a remote step prepares its command (a callback), sends it and
//! pauses until its reply; the reply runs `on_reply`/`on_error`; a local step runs its callback;
//! a conditional step runs the first branch whose condition holds as an inner saga; at the end of
//! each definition its commit runs. Backward, when a step fails: every executed step that acted
//! (its participant answered SUCCESS, or did not answer in time, or its local callback succeeded)
//! and has a compensation is compensated, one at a time, latest first; then the saga's staged
//! writes are discarded. A step whose participant refused (an ERROR or SYSTEM_ERROR reply) did
//! nothing and is not compensated.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::Duration;

use super::execution::{Context, ErrorInfo, Execution, Pending, Purpose, Status};
use super::io::{
    Action, Callback, CallbackKind, Cost, Entry, Event, Recorded, Rejected, Returned, Target,
};
use crate::definition::SagaDefinition;
use crate::ids::MessageId;

/// How sagas run (the host's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How long a remote step waits for its reply, unless its definition says.
    pub step_timeout: Duration,
    /// How long a saga may take in all, unless its definition says; none: no limit.
    pub saga_timeout: Option<Duration>,
    /// Attempts of a remote step or a compensation before it counts as failed.
    pub max_attempts: u32,
    /// The delay before the second attempt; each next one doubles, up to `max_retry_delay`.
    pub first_retry_delay: Duration,
    pub max_retry_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            step_timeout: Duration::from_secs(30),
            saga_timeout: Some(Duration::from_secs(600)),
            max_attempts: 3,
            first_retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The delay before attempt `attempts + 1`.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.first_retry_delay
            .saturating_mul(factor)
            .min(self.max_retry_delay)
    }
}

/// The saga definitions of the component version an execution runs on.
pub trait Definitions {
    fn definition(&self, name: &str) -> Option<&SagaDefinition>;
}

impl<D: Borrow<SagaDefinition>> Definitions for HashMap<String, D> {
    fn definition(&self, name: &str) -> Option<&SagaDefinition> {
        self.get(name).map(Borrow::borrow)
    }
}

/// What the machine asks of the world.
pub trait Env {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> i64;
    /// A fresh message id.
    fn message_id(&mut self) -> MessageId;
    /// Whether a command to `topic` can be handled within the transition (its participant is
    /// loaded here, and inline steps are on).
    fn inline(&self, topic: &str) -> bool;
}

/// What an event led to.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub history: Vec<Entry>,
}

impl Decision {
    /// Whether the driver must feed an event back before the transition is complete: a
    /// callback to run, or a command to run inline.
    pub fn awaits(&self) -> bool {
        self.actions.iter().any(|action| match action {
            Action::Call(_) => true,
            Action::Send(command) => command.inline,
            _ => false,
        })
    }
}

/// The state machine, for one decision.
pub struct Machine<'a, E: Env> {
    definitions: &'a dyn Definitions,
    pub(super) config: &'a Config,
    pub(super) env: &'a mut E,
    pub(super) out: Decision,
}

impl<'a, E: Env> Machine<'a, E> {
    pub fn new(definitions: &'a dyn Definitions, config: &'a Config, env: &'a mut E) -> Self {
        Machine {
            definitions,
            config,
            env,
            out: Decision::default(),
        }
    }

    /// Applies `event` to `exec`. An operator's request that does not fit the execution's state
    /// is rejected and changes nothing; any other event that does not fit is recorded as ignored.
    pub fn decide(mut self, exec: &mut Execution, event: Event) -> Result<Decision, Rejected> {
        let now = self.env.now();
        match event {
            Event::Start => self.start(exec),
            Event::Called { outcome, cost } => self.called(exec, outcome, cost),
            Event::Replied {
                target,
                message_id,
                status,
                payload,
            } => self.replied(exec, target, message_id, status, payload),
            Event::Undeliverable { target, error } => self.undeliverable(exec, target, error),
            Event::Timer => self.timer(exec, now),
            Event::Fail(error) => {
                if matches!(exec.status, Status::Running | Status::Paused) {
                    self.stop_awaiting(exec);
                    self.fail(exec, error);
                } else {
                    self.ignore("a failure", format!("the saga is {}", exec.status.as_str()));
                }
            }
            Event::Operator { action, by } => self.operator(exec, action, by)?,
        }
        exec.updated_at = exec.updated_at.max(now);
        Ok(self.out)
    }

    pub(super) fn record(&mut self, event: Recorded) {
        let at = self.env.now();
        self.out.history.push(Entry { at, event });
    }

    pub(super) fn ignore(&mut self, what: &str, why: String) {
        self.record(Recorded::Ignored {
            what: what.to_string(),
            why,
        });
    }

    pub(super) fn definition(&self, name: &str) -> Option<&'a SagaDefinition> {
        self.definitions.definition(name)
    }

    pub(super) fn step_timeout(&self, saga: &str) -> Duration {
        self.definition(saga)
            .and_then(|d| d.step_timeout)
            .unwrap_or(self.config.step_timeout)
    }

    pub(super) fn call(
        &mut self,
        exec: &mut Execution,
        purpose: Purpose,
        saga: &str,
        name: &str,
        reply: Option<(u16, String)>,
    ) {
        exec.pending = Some(Pending {
            purpose,
            callback: name.to_string(),
        });
        self.out.actions.push(Action::Call(Callback {
            saga: saga.to_string(),
            name: name.to_string(),
            kind: callback_kind(purpose),
            reply,
        }));
    }

    fn called(&mut self, exec: &mut Execution, outcome: Result<Returned, ErrorInfo>, cost: Cost) {
        let Some(pending) = exec.pending.take() else {
            return self.ignore("a callback's result", "no callback was running".into());
        };
        let step = match pending.purpose {
            Purpose::Prepare(i)
            | Purpose::PrepareCompensation(i)
            | Purpose::Reply { step: i, .. }
            | Purpose::Execute(i)
            | Purpose::Compensate(i)
            | Purpose::Condition { step: i, .. } => Some(i),
            Purpose::Commit => None,
        };
        self.record(Recorded::Called {
            step,
            callback: pending.callback.clone(),
            kind: callback_kind(pending.purpose),
            wall_us: cost.wall_us,
            cpu_us: cost.cpu_us,
            error: outcome.as_ref().err().cloned(),
        });
        let callback = pending.callback.as_str();
        match pending.purpose {
            Purpose::Prepare(index) => self.prepared(exec, Target::Step(index), outcome),
            Purpose::PrepareCompensation(index) => {
                self.prepared(exec, Target::Compensation(index), outcome)
            }
            // After SUCCESS the participant acted (`acted` says so already): a failed `on_reply`
            // gets the step compensated; after ERROR it did nothing.
            Purpose::Reply { step, .. } => {
                self.step_called(exec, step, context_of(callback, outcome), false)
            }
            // A failed local step's writes rolled back with the call: it did nothing.
            Purpose::Execute(step) => {
                self.step_called(exec, step, context_of(callback, outcome), true)
            }
            Purpose::Compensate(step) => {
                let outcome = context_of(callback, outcome).map(|context| {
                    exec.context = context;
                });
                self.compensation_over(exec, step, outcome);
            }
            Purpose::Condition { step, branch } => {
                let decision = match outcome {
                    Ok(Returned::Decision(decision)) => Ok(decision),
                    Ok(_) => Err(ErrorInfo::new(
                        500,
                        format!("condition {callback} returned no decision"),
                    )),
                    Err(error) => Err(error),
                };
                self.condition_called(exec, step, branch, decision);
            }
            Purpose::Commit => self.commit_called(exec, context_of(callback, outcome)),
        }
    }
}

/// A callback's new context, checked.
/// Which export of the component runs a callback for `purpose`.
fn callback_kind(purpose: Purpose) -> CallbackKind {
    match purpose {
        Purpose::Prepare(_) | Purpose::PrepareCompensation(_) => CallbackKind::Prepare,
        Purpose::Reply { .. } => CallbackKind::OnReply,
        Purpose::Execute(_) | Purpose::Compensate(_) | Purpose::Commit => CallbackKind::Execute,
        Purpose::Condition { .. } => CallbackKind::Condition,
    }
}

fn context_of(callback: &str, outcome: Result<Returned, ErrorInfo>) -> Result<Context, ErrorInfo> {
    match outcome? {
        Returned::Context(json) => Context::parse(json).map_err(|problem| {
            ErrorInfo::new(
                500,
                format!("callback {callback} returned a saga context that is not valid: {problem}"),
            )
        }),
        _ => Err(ErrorInfo::new(
            500,
            format!("callback {callback} returned no saga context"),
        )),
    }
}

/// The text of an error reply's payload (a JSON string), or the payload itself.
pub fn reply_message(payload: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::String(text)) => text,
        _ => payload.to_string(),
    }
}
