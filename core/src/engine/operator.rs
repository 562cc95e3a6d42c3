//! An operator's requests: cancel, retry the failed compensations, retry now.

use super::execution::{
    Compensation, CompensationStatus, ErrorInfo, Execution, Status, StepStatus,
};
use super::io::{OperatorAction, Recorded, Rejected, Target};
use super::machine::{Env, Machine};

impl<'a, E: Env> Machine<'a, E> {
    /// Applies an operator's request, or rejects it (changing nothing) when it does not fit the
    /// execution's state.
    pub(super) fn operator(
        &mut self,
        exec: &mut Execution,
        action: OperatorAction,
        by: String,
    ) -> Result<(), Rejected> {
        check_operator(exec, &action)?;
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
            OperatorAction::RetryCompensations { .. } => {
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
            OperatorAction::RetryNow { .. } => match exec.status {
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
        Ok(())
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
        OperatorAction::RetryCompensations { .. } => match exec.status {
            Status::CompensationFailed => Ok(()),
            _ => rejected("only a compensation-failed saga has compensations to retry"),
        },
        OperatorAction::RetryNow { .. } => {
            let waits = exec.awaiting().is_some() || exec.compensation_out().is_some();
            if waits && matches!(exec.status, Status::Paused | Status::Compensating) {
                Ok(())
            } else {
                rejected("no step or compensation of it waits for a reply or a retry")
            }
        }
    }
}
