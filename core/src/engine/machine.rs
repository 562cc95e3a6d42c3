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

use super::execution::{
    Acted, Compensation, CompensationStatus, Context, ErrorInfo, Execution, Frame, Json, Sent,
    Status, StepKind, StepRecord, StepStatus,
};
use super::io::{
    Action, Callback, CallbackKind, Command, Cost, Entry, Event, OperatorAction, Recorded,
    Rejected, Returned, Target,
};
use crate::definition::{Invocation, SagaDefinition, Step};
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

/// The callback an execution waits for within a transition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    purpose: Purpose,
    callback: String,
    kind: CallbackKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Purpose {
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

/// The state machine, for one decision.
pub struct Machine<'a, E: Env> {
    definitions: &'a dyn Definitions,
    config: &'a Config,
    env: &'a mut E,
    out: Decision,
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
        if let Event::Operator { action, .. } = &event {
            check_operator(exec, action)?;
        }
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
            Event::Operator { action, by } => self.operator(exec, action, by),
        }
        exec.updated_at = exec.updated_at.max(now);
        Ok(self.out)
    }

    fn record(&mut self, event: Recorded) {
        let at = self.env.now();
        self.out.history.push(Entry { at, event });
    }

    fn ignore(&mut self, what: &str, why: String) {
        self.record(Recorded::Ignored {
            what: what.to_string(),
            why,
        });
    }

    fn definition(&self, name: &str) -> Option<&'a SagaDefinition> {
        self.definitions.definition(name)
    }

    fn step_timeout(&self, saga: &str) -> Duration {
        self.definition(saga)
            .and_then(|d| d.step_timeout)
            .unwrap_or(self.config.step_timeout)
    }

    fn call(
        &mut self,
        exec: &mut Execution,
        purpose: Purpose,
        saga: &str,
        name: &str,
        kind: CallbackKind,
        reply: Option<(u16, String)>,
    ) {
        exec.pending = Some(Pending {
            purpose,
            callback: name.to_string(),
            kind,
        });
        self.out.actions.push(Action::Call(Callback {
            saga: saga.to_string(),
            name: name.to_string(),
            kind,
            reply,
        }));
    }

    // ---------------------------------------------------------------------------------------
    // Forward
    // ---------------------------------------------------------------------------------------

    fn start(&mut self, exec: &mut Execution) {
        if exec.status != Status::Created {
            return self.ignore(
                "a start",
                format!("the saga is already {}", exec.status.as_str()),
            );
        }
        exec.status = Status::Running;
        let timeout = self
            .definition(&exec.name)
            .and_then(|d| d.timeout)
            .or(self.config.saga_timeout);
        exec.deadline_at = timeout.map(|t| exec.created_at + t.as_millis() as i64);
        self.record(Recorded::Started {
            name: exec.name.clone(),
            digest: exec.digest.to_string(),
        });
        self.advance(exec);
    }

    /// Runs steps until one waits for a callback or a reply, or the saga ends.
    fn advance(&mut self, exec: &mut Execution) {
        exec.status = Status::Running;
        let Some(frame) = exec.frames.last().cloned() else {
            return self.finish(exec);
        };
        let Some(definition) = self.definition(&frame.saga) else {
            let error = ErrorInfo::new(
                500,
                format!(
                    "saga {} is not defined by this component version",
                    frame.saga
                ),
            );
            return self.fail(exec, error);
        };
        let Some(step) = definition.steps.get(frame.step) else {
            return match &definition.commit {
                Some(commit) => self.call(
                    exec,
                    Purpose::Commit,
                    &definition.name,
                    commit,
                    CallbackKind::Execute,
                    None,
                ),
                None => self.end_frame(exec),
            };
        };
        let kind = match step {
            Step::Remote(_) => StepKind::Remote,
            Step::Local(_) => StepKind::Local,
            Step::Conditional(_) => StepKind::Conditional,
        };
        exec.steps.push(StepRecord {
            saga: definition.name.clone(),
            index: frame.step,
            kind,
            status: StepStatus::Running,
            acted: Acted::No,
            topic: None,
            sent: None,
            started_at: self.env.now(),
            finished_at: None,
            error: None,
            compensation: None,
        });
        let index = exec.steps.len() - 1;
        match step {
            Step::Remote(remote) => match &remote.invoke.prepare {
                Some(prepare) => self.call(
                    exec,
                    Purpose::Prepare(index),
                    &definition.name,
                    prepare,
                    CallbackKind::Prepare,
                    None,
                ),
                None => self.send_prepared(exec, Target::Step(index), &remote.invoke, None),
            },
            Step::Local(local) => self.call(
                exec,
                Purpose::Execute(index),
                &definition.name,
                &local.on_execute,
                CallbackKind::Execute,
                None,
            ),
            Step::Conditional(_) => self.try_branch(exec, index, 0),
        }
    }

    /// A definition ran its commit: back to the outer saga, or the saga is finished.
    fn end_frame(&mut self, exec: &mut Execution) {
        exec.frames.pop();
        match exec.frames.last_mut() {
            Some(parent) => {
                parent.step += 1;
                self.advance(exec);
            }
            None => self.finish(exec),
        }
    }

    fn finish(&mut self, exec: &mut Execution) {
        exec.status = Status::Finished;
        self.out.actions.push(Action::Promote);
        self.end(exec);
    }

    fn end(&mut self, exec: &mut Execution) {
        self.out.actions.push(Action::Ended);
        self.record(Recorded::Ended {
            status: exec.status,
            error: exec.error.clone(),
        });
    }

    /// Tries the conditional step's branches from `branch` on; none holds: its `else_then`, or
    /// on with the next step.
    fn try_branch(&mut self, exec: &mut Execution, step: usize, branch: usize) {
        let record = &exec.steps[step];
        let Some(Step::Conditional(conditional)) = self
            .definition(&record.saga)
            .and_then(|d| d.steps.get(record.index))
        else {
            return self.lost_step(exec, step);
        };
        let saga = record.saga.clone();
        match conditional.branches.get(branch) {
            Some((condition, _)) => self.call(
                exec,
                Purpose::Condition { step, branch },
                &saga,
                condition,
                CallbackKind::Condition,
                None,
            ),
            None => {
                let otherwise = conditional.otherwise.clone();
                self.step_done(exec, step, StepStatus::Succeeded);
                match otherwise {
                    Some(inner) => self.enter(exec, inner),
                    None => {
                        self.next_step(exec);
                        self.advance(exec);
                    }
                }
            }
        }
    }

    /// Runs an inner saga of the same execution.
    fn enter(&mut self, exec: &mut Execution, saga: String) {
        exec.frames.push(Frame { saga, step: 0 });
        self.advance(exec);
    }

    fn next_step(&mut self, exec: &mut Execution) {
        if let Some(frame) = exec.frames.last_mut() {
            frame.step += 1;
        }
    }

    fn step_done(&mut self, exec: &mut Execution, index: usize, status: StepStatus) {
        let now = self.env.now();
        let record = &mut exec.steps[index];
        record.status = status;
        record.finished_at = Some(now);
        if let Some(sent) = record.sent.as_mut() {
            // It will not be sent again: the stored execution need not keep it.
            sent.payload = None;
            sent.retry_at = None;
        }
    }

    /// A step's definition is not in this component version (it changed under the saga).
    fn lost_step(&mut self, exec: &mut Execution, index: usize) {
        let record = &exec.steps[index];
        let error = ErrorInfo::new(
            500,
            format!(
                "saga {} has no such step {} in this component version",
                record.saga,
                record.index + 1
            ),
        );
        self.step_done(exec, index, StepStatus::Failed);
        self.fail(exec, error);
    }

    fn invocation(&self, exec: &Execution, target: Target) -> Option<&'a Invocation> {
        let record = &exec.steps[target.index()];
        let Some(Step::Remote(remote)) = self
            .definition(&record.saga)
            .and_then(|d| d.steps.get(record.index))
        else {
            return None;
        };
        match target {
            Target::Step(_) => Some(&remote.invoke),
            Target::Compensation(_) => remote.compensation.as_ref(),
        }
    }

    /// Sends a step's or compensation's command: with the payload its `prepare` callback made
    /// (and the topic it chose), or the context.
    fn send_prepared(
        &mut self,
        exec: &mut Execution,
        target: Target,
        invocation: &Invocation,
        prepared: Option<(Option<String>, String)>,
    ) {
        let callback = invocation.prepare.as_deref().unwrap_or("?");
        let (topic, payload) = match prepared {
            None => (invocation.topic.clone(), Ok(exec.context.to_json())),
            Some((target_topic, payload)) => (
                target_topic.or_else(|| invocation.topic.clone()),
                Json::parse(payload).map_err(|e| {
                    ErrorInfo::new(
                        500,
                        format!("callback {callback} returned a payload that is not JSON: {e}"),
                    )
                }),
            ),
        };
        let topic = topic.ok_or_else(|| {
            ErrorInfo::new(
                500,
                format!(
                    "callback {callback} named no target topic, and the step names none either"
                ),
            )
        });
        match (topic, payload) {
            (Ok(topic), Ok(payload)) => self.send(exec, target, topic, payload),
            (Err(error), _) | (_, Err(error)) => self.not_sent(exec, target, error),
        }
    }

    /// A command that could not be sent: its step fails (its participant never got it), or its
    /// compensation does.
    fn not_sent(&mut self, exec: &mut Execution, target: Target, error: ErrorInfo) {
        match target {
            Target::Step(index) => {
                exec.steps[index].error = Some(error.clone());
                self.step_done(exec, index, StepStatus::Failed);
                self.fail(exec, error);
            }
            Target::Compensation(index) => self.compensation_over(exec, index, Err(error)),
        }
    }

    fn send(&mut self, exec: &mut Execution, target: Target, topic: String, payload: Json) {
        let index = target.index();
        let timeout = self.step_timeout(&exec.steps[index].saga);
        let now = self.env.now();
        let message_id = self.env.message_id();
        let inline = self.env.inline(&topic);
        let sent = Sent {
            message_id,
            payload: Some(payload.clone()),
            attempts: 1,
            sent_at: now,
            reply_due: now + timeout.as_millis() as i64,
            retry_at: None,
        };
        match target {
            Target::Step(_) => {
                let record = &mut exec.steps[index];
                record.topic = Some(topic.clone());
                record.sent = Some(sent);
                record.status = StepStatus::AwaitingReply;
                exec.status = Status::Paused;
            }
            Target::Compensation(_) => {
                let compensation = exec.steps[index]
                    .compensation
                    .get_or_insert_with(Compensation::pending);
                compensation.topic = Some(topic.clone());
                compensation.sent = Some(sent);
                compensation.status = CompensationStatus::AwaitingReply;
            }
        }
        self.dispatch(exec, target, topic, payload, message_id, 1, inline);
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        exec: &Execution,
        target: Target,
        topic: String,
        payload: Json,
        message_id: MessageId,
        attempt: u32,
        inline: bool,
    ) {
        let record = &exec.steps[target.index()];
        self.record(Recorded::Dispatched {
            target,
            saga: record.saga.clone(),
            index: record.index,
            topic: topic.clone(),
            message_id,
            attempt,
            inline,
        });
        self.out.actions.push(Action::Send(Command {
            target,
            topic,
            payload,
            message_id,
            attempt,
            inline,
        }));
    }

    /// Sends a command again: with a new message id after a system error (the participant's
    /// attempt changed nothing), with the same id after a missing reply (a participant that did
    /// get it does nothing twice; that copy may still be queued, so it never runs inline).
    fn resend(&mut self, exec: &mut Execution, target: Target, new_id: bool) {
        let index = target.index();
        let timeout = self.step_timeout(&exec.steps[index].saga);
        let now = self.env.now();
        let fresh_id = new_id.then(|| self.env.message_id());
        let record = &mut exec.steps[index];
        let (topic, sent) = match target {
            Target::Step(_) => (record.topic.clone(), record.sent.as_mut()),
            Target::Compensation(_) => match record.compensation.as_mut() {
                Some(compensation) => (compensation.topic.clone(), compensation.sent.as_mut()),
                None => (None, None),
            },
        };
        let (Some(topic), Some(sent)) = (topic, sent) else {
            let error = ErrorInfo::new(500, "the command to send again is not recorded");
            return self.not_sent(exec, target, error);
        };
        let Some(payload) = sent.payload.clone() else {
            let error = ErrorInfo::new(500, "the payload to send again is not recorded");
            return self.not_sent(exec, target, error);
        };
        if let Some(id) = fresh_id {
            sent.message_id = id;
        }
        sent.attempts += 1;
        sent.sent_at = now;
        sent.reply_due = now + timeout.as_millis() as i64;
        sent.retry_at = None;
        let (message_id, attempt) = (sent.message_id, sent.attempts);
        match target {
            Target::Step(_) => {
                record.status = StepStatus::AwaitingReply;
                exec.status = Status::Paused;
            }
            Target::Compensation(_) => {
                if let Some(compensation) = record.compensation.as_mut() {
                    compensation.status = CompensationStatus::AwaitingReply;
                }
            }
        }
        let inline = new_id && self.env.inline(&topic);
        self.dispatch(exec, target, topic, payload, message_id, attempt, inline);
    }

    fn replied(
        &mut self,
        exec: &mut Execution,
        target: Target,
        message_id: MessageId,
        status: u16,
        payload: String,
    ) {
        let waiting = match target {
            Target::Step(index) => {
                exec.awaiting() == Some(index)
                    && exec.steps[index].status == StepStatus::AwaitingReply
                    && exec.steps[index]
                        .sent
                        .as_ref()
                        .is_some_and(|s| s.message_id == message_id)
            }
            Target::Compensation(index) => {
                exec.status == Status::Compensating
                    && exec.steps.get(index).is_some_and(|s| {
                        s.compensation.as_ref().is_some_and(|c| {
                            c.status == CompensationStatus::AwaitingReply
                                && c.sent.as_ref().is_some_and(|s| s.message_id == message_id)
                        })
                    })
            }
        };
        if !waiting {
            return self.ignore(
                "a reply",
                format!(
                    "nothing waits for message {message_id} ({target:?}) while the saga is {}",
                    exec.status.as_str()
                ),
            );
        }
        let index = target.index();
        let sent_at = match target {
            Target::Step(_) => exec.steps[index].sent.as_ref(),
            Target::Compensation(_) => exec.steps[index]
                .compensation
                .as_ref()
                .and_then(|c| c.sent.as_ref()),
        }
        .map_or(0, |s| s.sent_at);
        let after_ms = self.env.now() - sent_at;
        self.record(Recorded::Replied {
            target,
            status,
            after_ms,
        });
        match target {
            Target::Step(_) => self.step_replied(exec, index, status, payload),
            Target::Compensation(_) => self.compensation_replied(exec, index, status, payload),
        }
    }

    /// A step's reply, by Minos's rules: SUCCESS runs `on_reply`; ERROR runs `on_error` (none:
    /// the saga goes on); SYSTEM_ERROR is retried, then fails the step.
    fn step_replied(&mut self, exec: &mut Execution, index: usize, status: u16, payload: String) {
        let record = &exec.steps[index];
        let Some(Step::Remote(remote)) = self
            .definition(&record.saga)
            .and_then(|d| d.steps.get(record.index))
        else {
            return self.lost_step(exec, index);
        };
        let saga = record.saga.clone();
        let callback = match status {
            200..=299 => {
                exec.steps[index].acted = Acted::Yes;
                remote.on_reply.as_ref()
            }
            400..=499 => {
                exec.steps[index].error = Some(ErrorInfo::new(status, reply_message(&payload)));
                remote.on_error.as_ref()
            }
            _ => return self.system_error(exec, Target::Step(index), status, &payload),
        };
        match callback {
            Some(callback) => self.call(
                exec,
                Purpose::Reply {
                    step: index,
                    status,
                },
                &saga,
                callback,
                CallbackKind::OnReply,
                Some((status, payload)),
            ),
            None => self.step_succeeded(exec, index),
        }
    }

    fn step_succeeded(&mut self, exec: &mut Execution, index: usize) {
        self.step_done(exec, index, StepStatus::Succeeded);
        self.next_step(exec);
        self.advance(exec);
    }

    /// A SYSTEM_ERROR reply (or a trap): the participant's attempt changed nothing; it is tried
    /// again later with a new message id, until the attempts are used up.
    fn system_error(&mut self, exec: &mut Execution, target: Target, status: u16, payload: &str) {
        let index = target.index();
        let now = self.env.now();
        let record = &mut exec.steps[index];
        let topic = match target {
            Target::Step(_) => record.topic.clone(),
            Target::Compensation(_) => record.compensation.as_ref().and_then(|c| c.topic.clone()),
        }
        .unwrap_or_default();
        let error = ErrorInfo::new(
            status,
            format!("{topic} failed: {}", reply_message(payload)),
        );
        let sent = match target {
            Target::Step(_) => record.sent.as_mut(),
            Target::Compensation(_) => record.compensation.as_mut().and_then(|c| c.sent.as_mut()),
        };
        let attempts = sent.as_ref().map_or(1, |s| s.attempts);
        if attempts >= self.config.max_attempts {
            let error = ErrorInfo::new(
                status,
                format!("{} (after {attempts} attempts)", error.message),
            );
            return match target {
                Target::Step(_) => {
                    exec.steps[index].error = Some(error.clone());
                    self.step_done(exec, index, StepStatus::Failed);
                    self.fail(exec, error);
                }
                Target::Compensation(_) => self.compensation_over(exec, index, Err(error)),
            };
        }
        let retry_at = now + self.config.retry_delay(attempts).as_millis() as i64;
        if let Some(sent) = sent {
            sent.retry_at = Some(retry_at);
        }
        match target {
            Target::Step(_) => {
                record.error = Some(error);
                record.status = StepStatus::AwaitingRetry;
                exec.status = Status::Paused;
            }
            Target::Compensation(_) => {
                if let Some(compensation) = record.compensation.as_mut() {
                    compensation.error = Some(error);
                    compensation.status = CompensationStatus::AwaitingRetry;
                }
            }
        }
        self.record(Recorded::RetryScheduled { target, retry_at });
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
            kind: pending.kind,
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
            Purpose::Reply { step, status } => match context_of(callback, outcome) {
                Ok(context) => {
                    exec.context = context;
                    self.step_succeeded(exec, step);
                }
                Err(error) => {
                    // After SUCCESS the participant acted: the failed step is compensated too
                    // (`acted` says so); after ERROR it did nothing.
                    debug_assert_eq!(exec.steps[step].acted == Acted::Yes, status < 300);
                    exec.steps[step].error = Some(error.clone());
                    self.step_done(exec, step, StepStatus::Failed);
                    self.fail(exec, error);
                }
            },
            Purpose::Execute(step) => match context_of(callback, outcome) {
                Ok(context) => {
                    exec.context = context;
                    exec.steps[step].acted = Acted::Yes;
                    self.step_succeeded(exec, step);
                }
                Err(error) => {
                    // Its writes were rolled back with the call: it did nothing to compensate.
                    exec.steps[step].error = Some(error.clone());
                    self.step_done(exec, step, StepStatus::Failed);
                    self.fail(exec, error);
                }
            },
            Purpose::Compensate(step) => {
                let outcome = context_of(callback, outcome).map(|context| {
                    exec.context = context;
                });
                self.compensation_over(exec, step, outcome);
            }
            Purpose::Condition { step, branch } => match outcome {
                Ok(Returned::Decision(true)) => {
                    let inner = self
                        .definition(&exec.steps[step].saga)
                        .and_then(|d| d.steps.get(exec.steps[step].index))
                        .and_then(|s| match s {
                            Step::Conditional(c) => c.branches.get(branch).map(|b| b.1.clone()),
                            _ => None,
                        });
                    match inner {
                        Some(inner) => {
                            self.step_done(exec, step, StepStatus::Succeeded);
                            self.enter(exec, inner);
                        }
                        None => self.lost_step(exec, step),
                    }
                }
                Ok(Returned::Decision(false)) => self.try_branch(exec, step, branch + 1),
                other => {
                    let error = other.err().unwrap_or_else(|| {
                        ErrorInfo::new(500, format!("condition {callback} returned no decision"))
                    });
                    exec.steps[step].error = Some(error.clone());
                    self.step_done(exec, step, StepStatus::Failed);
                    self.fail(exec, error);
                }
            },
            Purpose::Commit => match context_of(callback, outcome) {
                Ok(context) => {
                    exec.context = context;
                    self.end_frame(exec);
                }
                Err(error) => {
                    let saga = exec
                        .frames
                        .last()
                        .map(|f| f.saga.clone())
                        .unwrap_or_default();
                    let error = ErrorInfo::new(
                        error.status,
                        format!("the commit of saga {saga} failed: {}", error.message),
                    );
                    self.fail(exec, error);
                }
            },
        }
    }

    /// A `prepare` callback returned: send what it made, or the command fails unsent.
    fn prepared(
        &mut self,
        exec: &mut Execution,
        target: Target,
        outcome: Result<Returned, ErrorInfo>,
    ) {
        let Some(invocation) = self.invocation(exec, target) else {
            return match target {
                Target::Step(index) => self.lost_step(exec, index),
                Target::Compensation(index) => {
                    let error = ErrorInfo::new(500, "the compensation is no longer defined");
                    self.compensation_over(exec, index, Err(error))
                }
            };
        };
        match outcome {
            Ok(Returned::Request {
                target: topic,
                payload,
            }) => self.send_prepared(exec, target, invocation, Some((topic, payload))),
            Ok(_) => {
                let error = ErrorInfo::new(500, "the prepare callback returned no command");
                self.not_sent(exec, target, error)
            }
            Err(error) => self.not_sent(exec, target, error),
        }
    }

    fn undeliverable(&mut self, exec: &mut Execution, target: Target, error: ErrorInfo) {
        let out = match target {
            Target::Step(index) => {
                exec.steps.get(index).map(|s| s.status) == Some(StepStatus::AwaitingReply)
            }
            Target::Compensation(index) => exec
                .steps
                .get(index)
                .and_then(|s| s.compensation.as_ref())
                .is_some_and(|c| c.status == CompensationStatus::AwaitingReply),
        };
        if !out {
            return self.ignore("an undeliverable command", format!("{target:?} is not out"));
        }
        self.not_sent(exec, target, error);
    }

    fn timer(&mut self, exec: &mut Execution, now: i64) {
        match exec.status {
            Status::Compensating => self.compensation_timer(exec, now),
            Status::Running | Status::Paused => {
                if let Some(deadline) = exec.deadline_at.filter(|&d| d <= now) {
                    let limit = (deadline - exec.created_at) / 1000;
                    self.record(Recorded::TimerFired {
                        what: "the saga's deadline".into(),
                    });
                    self.stop_awaiting(exec);
                    let error = ErrorInfo::new(
                        504,
                        format!("the saga did not finish within its deadline of {limit} s"),
                    );
                    return self.fail(exec, error);
                }
                let Some(index) = exec.awaiting() else { return };
                let record = &exec.steps[index];
                let Some(sent) = record.sent.clone() else {
                    return;
                };
                match record.status {
                    StepStatus::AwaitingReply if sent.reply_due <= now => {
                        self.record(Recorded::TimerFired {
                            what: format!("the reply deadline of step {index}"),
                        });
                        if sent.attempts >= self.config.max_attempts {
                            let topic = record.topic.clone().unwrap_or_default();
                            let timeout = (sent.reply_due - sent.sent_at) / 1000;
                            let error = ErrorInfo::new(
                                504,
                                format!(
                                    "{topic} did not reply within {timeout} s, {} attempts",
                                    sent.attempts
                                ),
                            );
                            exec.steps[index].acted = Acted::Maybe;
                            exec.steps[index].error = Some(error.clone());
                            self.step_done(exec, index, StepStatus::Failed);
                            return self.fail(exec, error);
                        }
                        self.resend(exec, Target::Step(index), false);
                    }
                    StepStatus::AwaitingRetry if sent.retry_at.is_some_and(|at| at <= now) => {
                        self.record(Recorded::TimerFired {
                            what: format!("the retry of step {index}"),
                        });
                        self.resend(exec, Target::Step(index), true);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The awaiting step of a saga about to fail: its participant may have acted unless it
    /// refused (then it waits for a retry).
    fn stop_awaiting(&mut self, exec: &mut Execution) {
        if let Some(index) = exec.awaiting() {
            if exec.steps[index].status == StepStatus::AwaitingReply {
                exec.steps[index].acted = Acted::Maybe;
            }
            self.step_done(exec, index, StepStatus::Failed);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Backward
    // ---------------------------------------------------------------------------------------

    /// Fails the saga: records why, and compensates the executed steps that acted, latest first.
    fn fail(&mut self, exec: &mut Execution, error: ErrorInfo) {
        exec.pending = None;
        exec.error = Some(error.clone());
        let mut compensating = Vec::new();
        for index in (0..exec.steps.len()).rev() {
            let record = &exec.steps[index];
            if record.acted == Acted::No || record.compensation.is_some() {
                continue;
            }
            let compensated = match self
                .definition(&record.saga)
                .and_then(|d| d.steps.get(record.index))
            {
                Some(Step::Remote(remote)) => remote.compensation.is_some(),
                Some(Step::Local(local)) => local.on_failure.is_some(),
                _ => false,
            };
            if compensated {
                exec.steps[index].compensation = Some(Compensation::pending());
                compensating.push(index);
            }
        }
        self.record(Recorded::Failed {
            error,
            compensating,
        });
        exec.status = Status::Compensating;
        self.next_compensation(exec);
    }

    /// Starts the next compensation (latest step first) once none is out; when none is left,
    /// the saga ends: errored, or compensation-failed if one could not be done.
    fn next_compensation(&mut self, exec: &mut Execution) {
        let busy = exec.steps.iter().any(|s| {
            s.compensation
                .as_ref()
                .is_some_and(|c| c.is_out() || c.status == CompensationStatus::Running)
        });
        if busy {
            return;
        }
        let next = exec.steps.iter().rposition(|s| {
            s.compensation
                .as_ref()
                .is_some_and(|c| c.status == CompensationStatus::Pending)
        });
        let Some(index) = next else {
            let failed = exec.steps.iter().any(|s| {
                s.compensation
                    .as_ref()
                    .is_some_and(|c| c.status == CompensationStatus::Failed)
            });
            exec.status = if failed {
                Status::CompensationFailed
            } else {
                Status::Errored
            };
            self.out.actions.push(Action::Discard);
            return self.end(exec);
        };
        let record = &exec.steps[index];
        let saga = record.saga.clone();
        let step = self
            .definition(&record.saga)
            .and_then(|d| d.steps.get(record.index));
        if let Some(compensation) = exec.steps[index].compensation.as_mut() {
            compensation.status = CompensationStatus::Running;
        }
        match step {
            Some(Step::Remote(remote)) => match &remote.compensation {
                Some(invocation) => match &invocation.prepare {
                    Some(prepare) => self.call(
                        exec,
                        Purpose::PrepareCompensation(index),
                        &saga,
                        prepare,
                        CallbackKind::Prepare,
                        None,
                    ),
                    None => self.send_prepared(exec, Target::Compensation(index), invocation, None),
                },
                None => self.compensation_over(exec, index, Ok(())),
            },
            Some(Step::Local(local)) => match &local.on_failure {
                Some(on_failure) => self.call(
                    exec,
                    Purpose::Compensate(index),
                    &saga,
                    on_failure,
                    CallbackKind::Execute,
                    None,
                ),
                None => self.compensation_over(exec, index, Ok(())),
            },
            _ => {
                let error = ErrorInfo::new(500, "the compensated step is no longer defined");
                self.compensation_over(exec, index, Err(error));
            }
        }
    }

    /// A compensation is done, or given up on; on with the next.
    fn compensation_over(
        &mut self,
        exec: &mut Execution,
        index: usize,
        outcome: Result<(), ErrorInfo>,
    ) {
        let done = outcome.is_ok();
        if let Some(compensation) = exec.steps[index].compensation.as_mut() {
            compensation.status = if done {
                CompensationStatus::Done
            } else {
                CompensationStatus::Failed
            };
            if let Err(error) = &outcome {
                compensation.error = Some(error.clone());
            }
            if let Some(sent) = compensation.sent.as_mut() {
                sent.payload = None;
                sent.retry_at = None;
            }
        }
        self.record(Recorded::Compensated {
            step: index,
            done,
            error: outcome.err(),
        });
        self.next_compensation(exec);
    }

    /// A participant's answer to a compensation: done (also when it refuses: a business error
    /// is its final word), or a system error to retry.
    fn compensation_replied(
        &mut self,
        exec: &mut Execution,
        index: usize,
        status: u16,
        payload: String,
    ) {
        if status >= 500 {
            return self.system_error(exec, Target::Compensation(index), status, &payload);
        }
        if status >= 400
            && let Some(compensation) = exec.steps[index].compensation.as_mut()
        {
            compensation.error = Some(ErrorInfo::new(status, reply_message(&payload)));
        }
        self.compensation_over(exec, index, Ok(()));
    }

    fn compensation_timer(&mut self, exec: &mut Execution, now: i64) {
        let Some(index) = exec.compensation_out() else {
            return;
        };
        let Some(compensation) = exec.steps[index].compensation.clone() else {
            return;
        };
        let Some(sent) = compensation.sent else {
            return;
        };
        match compensation.status {
            CompensationStatus::AwaitingReply if sent.reply_due <= now => {
                self.record(Recorded::TimerFired {
                    what: format!("the confirmation deadline of compensation {index}"),
                });
                if sent.attempts >= self.config.max_attempts {
                    let error = ErrorInfo::new(
                        504,
                        format!("no confirmation after {} attempts", sent.attempts),
                    );
                    return self.compensation_over(exec, index, Err(error));
                }
                self.resend(exec, Target::Compensation(index), false);
            }
            CompensationStatus::AwaitingRetry if sent.retry_at.is_some_and(|at| at <= now) => {
                self.record(Recorded::TimerFired {
                    what: format!("the retry of compensation {index}"),
                });
                self.resend(exec, Target::Compensation(index), true);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------------------------------
    // Operators
    // ---------------------------------------------------------------------------------------

    fn operator(&mut self, exec: &mut Execution, action: OperatorAction, by: String) {
        self.record(Recorded::Operator {
            action: action.clone(),
            by,
        });
        match action {
            OperatorAction::Cancel { reason } => {
                self.stop_awaiting(exec);
                let message = if reason.is_empty() {
                    "cancelled by the operator".to_string()
                } else {
                    format!("cancelled by the operator: {reason}")
                };
                self.fail(exec, ErrorInfo::new(409, message));
            }
            OperatorAction::RetryCompensations => {
                for record in &mut exec.steps {
                    if let Some(compensation) = record.compensation.as_mut()
                        && compensation.status == CompensationStatus::Failed
                    {
                        *compensation = Compensation::pending();
                    }
                }
                exec.status = Status::Compensating;
                self.next_compensation(exec);
            }
            OperatorAction::RetryNow => match exec.status {
                Status::Compensating => {
                    if let Some(index) = exec.compensation_out() {
                        let retrying = exec.steps[index]
                            .compensation
                            .as_ref()
                            .is_some_and(|c| c.status == CompensationStatus::AwaitingRetry);
                        self.resend(exec, Target::Compensation(index), retrying);
                    }
                }
                _ => {
                    if let Some(index) = exec.awaiting() {
                        let retrying = exec.steps[index].status == StepStatus::AwaitingRetry;
                        self.resend(exec, Target::Step(index), retrying);
                    }
                }
            },
        }
    }
}

/// Whether an operator's action fits the execution's state.
fn check_operator(exec: &Execution, action: &OperatorAction) -> Result<(), Rejected> {
    let rejected = |why: &str| {
        Err(Rejected {
            status: exec.status,
            why: why.to_string(),
        })
    };
    match action {
        OperatorAction::Cancel { .. } => match exec.status {
            Status::Created | Status::Running | Status::Paused => Ok(()),
            Status::Compensating => rejected("it is already failing and being compensated"),
            _ => rejected("it has ended; only a running or paused saga can be cancelled"),
        },
        OperatorAction::RetryCompensations => match exec.status {
            Status::CompensationFailed => Ok(()),
            _ => rejected("only a compensation-failed saga has compensations to retry"),
        },
        OperatorAction::RetryNow => {
            let waits = exec.awaiting().is_some() || exec.compensation_out().is_some();
            if waits && matches!(exec.status, Status::Paused | Status::Compensating) {
                Ok(())
            } else {
                rejected("no step or compensation of it waits for a reply or a retry")
            }
        }
    }
}

/// A callback's new context, checked.
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
