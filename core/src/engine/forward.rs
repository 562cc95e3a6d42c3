//! Forward: steps run in order until one waits for a callback or a reply; replies and timers
//! move the awaiting step on.

use super::execution::{
    Acted, CompensationStatus, Context, ErrorInfo, Execution, Frame, Purpose, Status, StepKind,
    StepRecord, StepStatus,
};
use super::io::{Action, Due, Recorded, Target};
use super::machine::{Env, Machine, reply_message};
use crate::definition::Step;

impl<'a, E: Env> Machine<'a, E> {
    pub(super) fn start(&mut self, exec: &mut Execution) {
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
    pub(super) fn advance(&mut self, exec: &mut Execution) {
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
                Some(commit) => self.call(exec, Purpose::Commit, &definition.name, commit, None),
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
                    None,
                ),
                None => self.send_prepared(exec, Target::Step(index), &remote.invoke, None),
            },
            Step::Local(local) => self.call(
                exec,
                Purpose::Execute(index),
                &definition.name,
                &local.on_execute,
                None,
            ),
            Step::Conditional(_) => self.try_branch(exec, index, 0),
        }
    }

    /// A definition ran its commit: back to the outer saga, or the saga is finished.
    pub(super) fn end_frame(&mut self, exec: &mut Execution) {
        exec.frames.pop();
        match exec.frames.last_mut() {
            Some(parent) => {
                parent.step += 1;
                self.advance(exec);
            }
            None => self.finish(exec),
        }
    }

    pub(super) fn finish(&mut self, exec: &mut Execution) {
        exec.status = Status::Finished;
        self.out.actions.push(Action::Promote);
        self.end(exec);
    }

    pub(super) fn end(&mut self, exec: &mut Execution) {
        self.out.actions.push(Action::Ended);
        self.record(Recorded::Ended {
            status: exec.status,
            error: exec.error.clone(),
        });
    }

    /// Tries the conditional step's branches from `branch` on; none holds: its `else_then`, or
    /// on with the next step.
    pub(super) fn try_branch(&mut self, exec: &mut Execution, step: usize, branch: usize) {
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
    pub(super) fn enter(&mut self, exec: &mut Execution, saga: String) {
        exec.frames.push(Frame { saga, step: 0 });
        self.advance(exec);
    }

    pub(super) fn next_step(&mut self, exec: &mut Execution) {
        if let Some(frame) = exec.frames.last_mut() {
            frame.step += 1;
        }
    }

    pub(super) fn step_done(&mut self, exec: &mut Execution, index: usize, status: StepStatus) {
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
    pub(super) fn lost_step(&mut self, exec: &mut Execution, index: usize) {
        let record = &exec.steps[index];
        let error = ErrorInfo::new(
            500,
            format!(
                "saga {} has no such step {} in this component version",
                record.saga,
                record.index + 1
            ),
        );
        self.step_failed(exec, index, error);
    }

    /// A step's reply, by Minos's rules: SUCCESS runs `on_reply`; ERROR runs `on_error` (none:
    /// the saga goes on); SYSTEM_ERROR is retried, then fails the step.
    pub(super) fn step_replied(
        &mut self,
        exec: &mut Execution,
        index: usize,
        status: u16,
        payload: String,
    ) {
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
                Some((status, payload)),
            ),
            None => self.step_succeeded(exec, index),
        }
    }

    /// A step's callback returned (`on_reply`, `on_error`, a local step's): the step goes on
    /// with the new context, or fails. A local step that succeeded `acts`.
    pub(super) fn step_called(
        &mut self,
        exec: &mut Execution,
        index: usize,
        outcome: Result<Context, ErrorInfo>,
        acts: bool,
    ) {
        match outcome {
            Ok(context) => {
                exec.context = context;
                if acts {
                    exec.steps[index].acted = Acted::Yes;
                }
                self.step_succeeded(exec, index);
            }
            Err(error) => self.step_failed(exec, index, error),
        }
    }

    /// A step failed: the saga fails with its error.
    pub(super) fn step_failed(&mut self, exec: &mut Execution, index: usize, error: ErrorInfo) {
        exec.steps[index].error = Some(error.clone());
        self.step_done(exec, index, StepStatus::Failed);
        self.fail(exec, error);
    }

    /// A conditional step's condition decided: its branch runs, or the next one is tried.
    pub(super) fn condition_called(
        &mut self,
        exec: &mut Execution,
        index: usize,
        branch: usize,
        decision: Result<bool, ErrorInfo>,
    ) {
        match decision {
            Ok(true) => {
                let record = &exec.steps[index];
                let inner = self
                    .definition(&record.saga)
                    .and_then(|d| d.steps.get(record.index))
                    .and_then(|s| match s {
                        Step::Conditional(c) => c.branches.get(branch).map(|b| b.1.clone()),
                        _ => None,
                    });
                match inner {
                    Some(inner) => {
                        self.step_done(exec, index, StepStatus::Succeeded);
                        self.enter(exec, inner);
                    }
                    None => self.lost_step(exec, index),
                }
            }
            Ok(false) => self.try_branch(exec, index, branch + 1),
            Err(error) => self.step_failed(exec, index, error),
        }
    }

    /// The commit of the innermost definition returned: on to the outer saga (or the end), or
    /// the saga fails and every step that acted is compensated.
    pub(super) fn commit_called(
        &mut self,
        exec: &mut Execution,
        outcome: Result<Context, ErrorInfo>,
    ) {
        match outcome {
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
        }
    }

    pub(super) fn step_succeeded(&mut self, exec: &mut Execution, index: usize) {
        self.step_done(exec, index, StepStatus::Succeeded);
        self.next_step(exec);
        self.advance(exec);
    }

    pub(super) fn undeliverable(&mut self, exec: &mut Execution, target: Target, error: ErrorInfo) {
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

    pub(super) fn timer(&mut self, exec: &mut Execution, now: i64) {
        match exec.status {
            Status::Compensating => self.compensation_timer(exec, now),
            Status::Running | Status::Paused => {
                if let Some(deadline) = exec.deadline_at.filter(|&d| d <= now) {
                    let limit = (deadline - exec.created_at) / 1000;
                    self.record(Recorded::TimerFired {
                        due: Due::SagaDeadline,
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
                            due: Due::ReplyDeadline {
                                target: Target::Step(index),
                            },
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
                            return self.step_failed(exec, index, error);
                        }
                        self.resend(exec, Target::Step(index), false);
                    }
                    StepStatus::AwaitingRetry if sent.retry_at.is_some_and(|at| at <= now) => {
                        self.record(Recorded::TimerFired {
                            due: Due::Retry {
                                target: Target::Step(index),
                            },
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
    pub(super) fn stop_awaiting(&mut self, exec: &mut Execution) {
        if let Some(index) = exec.awaiting() {
            if exec.steps[index].status == StepStatus::AwaitingReply {
                exec.steps[index].acted = Acted::Maybe;
            }
            self.step_done(exec, index, StepStatus::Failed);
        }
    }
}
