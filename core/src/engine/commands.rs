//! Commands: a step's or a compensation's command prepared, sent, sent again, answered.

use super::execution::{
    Compensation, CompensationStatus, ErrorInfo, Execution, Json, Sent, Status, StepStatus,
};
use super::io::{Action, Command, Recorded, Returned, Target};
use super::machine::{Env, Machine, reply_message};
use crate::definition::{Invocation, Step};
use crate::ids::MessageId;

impl<'a, E: Env> Machine<'a, E> {
    pub(super) fn invocation(&self, exec: &Execution, target: Target) -> Option<&'a Invocation> {
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
    pub(super) fn send_prepared(
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
    pub(super) fn not_sent(&mut self, exec: &mut Execution, target: Target, error: ErrorInfo) {
        match target {
            Target::Step(index) => self.step_failed(exec, index, error),
            Target::Compensation(index) => self.compensation_over(exec, index, Err(error)),
        }
    }

    pub(super) fn send(
        &mut self,
        exec: &mut Execution,
        target: Target,
        topic: String,
        payload: Json,
    ) {
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
    pub(super) fn dispatch(
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
    pub(super) fn resend(&mut self, exec: &mut Execution, target: Target, new_id: bool) {
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

    pub(super) fn replied(
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

    /// A SYSTEM_ERROR reply (or a trap): the participant's attempt changed nothing; it is tried
    /// again later with a new message id, until the attempts are used up.
    pub(super) fn system_error(
        &mut self,
        exec: &mut Execution,
        target: Target,
        status: u16,
        payload: &str,
    ) {
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
                Target::Step(_) => self.step_failed(exec, index, error),
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

    /// A `prepare` callback returned: send what it made, or the command fails unsent.
    pub(super) fn prepared(
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
}
