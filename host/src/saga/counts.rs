//! What a stored transition adds to the saga metrics, read from the history entries it stored:
//! one source of truth for what happened, counted only once it is durable (a transition run
//! again after a collision is counted once).

use std::time::Duration;

use saga_core::engine::{Due, Entry, Execution, Recorded, Target};

use crate::telemetry::metrics;

/// Counts the entries one stored transition of `exec` recorded.
pub(super) fn count(exec: &Execution, history: &[Entry]) {
    for entry in history {
        match &entry.event {
            Recorded::Started { .. } => metrics::saga_started(exec.service.as_str(), &exec.name),
            Recorded::Dispatched {
                target,
                topic,
                inline,
                ..
            } => {
                metrics::step_dispatched(topic, *inline, matches!(target, Target::Compensation(_)))
            }
            Recorded::Replied {
                target,
                status,
                after_ms,
            } => metrics::step_replied(
                topic_of(exec, *target),
                *status,
                Duration::from_millis((*after_ms).max(0) as u64),
            ),
            Recorded::RetryScheduled { target, .. } => metrics::step_retry(topic_of(exec, *target)),
            Recorded::TimerFired {
                due: Due::ReplyDeadline { target },
            } => metrics::step_timeout(topic_of(exec, *target)),
            Recorded::Compensated { step, done, .. } => {
                metrics::compensation_over(topic_of(exec, Target::Compensation(*step)), *done)
            }
            Recorded::Ended { status, .. } => metrics::saga_ended(
                exec.service.as_str(),
                &exec.name,
                status.as_str(),
                Duration::from_millis((entry.at - exec.created_at).max(0) as u64),
            ),
            _ => {}
        }
    }
}

/// The topic a step's command (or its compensation's) went to; "local" for a local one.
fn topic_of(exec: &Execution, target: Target) -> &str {
    let Some(step) = exec.steps.get(target.index()) else {
        return "unknown";
    };
    let topic = match target {
        Target::Step(_) => step.topic.as_deref(),
        Target::Compensation(_) => step.compensation.as_ref().and_then(|c| c.topic.as_deref()),
    };
    topic.unwrap_or("local")
}
