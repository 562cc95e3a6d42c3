//! Backward: a failed saga compensates the steps that acted, one at a time, latest first, and
//! ends once none is left.

use super::execution::{
    Acted, Compensation, CompensationStatus, ErrorInfo, Execution, Purpose, Status,
};
use super::io::{Action, Due, Recorded, Target};
use super::machine::{Env, Machine, reply_message};
use crate::definition::Step;

impl<'a, E: Env> Machine<'a, E> {
    /// Fails the saga: records why, and compensates the executed steps that acted, latest first.
    pub(super) fn fail(&mut self, exec: &mut Execution, error: ErrorInfo) {
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
    pub(super) fn next_compensation(&mut self, exec: &mut Execution) {
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
                        None,
                    ),
                    None => self.send_prepared(exec, Target::Compensation(index), invocation, None),
                },
                None => self.compensation_over(exec, index, Ok(())),
            },
            Some(Step::Local(local)) => match &local.on_failure {
                Some(on_failure) => {
                    self.call(exec, Purpose::Compensate(index), &saga, on_failure, None)
                }
                None => self.compensation_over(exec, index, Ok(())),
            },
            _ => {
                let error = ErrorInfo::new(500, "the compensated step is no longer defined");
                self.compensation_over(exec, index, Err(error));
            }
        }
    }

    /// A compensation is done, or given up on; on with the next.
    pub(super) fn compensation_over(
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
    pub(super) fn compensation_replied(
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

    pub(super) fn compensation_timer(&mut self, exec: &mut Execution, now: i64) {
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
                    due: Due::ReplyDeadline {
                        target: Target::Compensation(index),
                    },
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
                    due: Due::Retry {
                        target: Target::Compensation(index),
                    },
                });
                self.resend(exec, Target::Compensation(index), true);
            }
            _ => {}
        }
    }
}
