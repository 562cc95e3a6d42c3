//! The rules of the README's "How sagas run", one test each.

use super::*;

#[test]
fn a_saga_runs_its_steps_in_order_then_its_commit_and_promotes_its_writes() {
    let mut run = Run::new(two_compensated_steps());
    let decision = run.start();
    assert_eq!(run.calls(&decision), ["prepare_A"]);
    assert_eq!(run.exec.status, Status::Running);
    run.prepares();
    assert_eq!(run.last_command().topic, "A");
    assert_eq!(run.exec.status, Status::Paused);
    assert_eq!(run.exec.timer_at(), Some(1_100), "the reply is due");
    let decision = run.reply(200, r#"{"ok":true}"#);
    assert_eq!(run.calls(&decision), ["prepare_B"]);
    run.prepares();
    let decision = run.reply(200, "{}");
    assert_eq!(run.calls(&decision), ["commit"]);
    let decision = run.context(r#"{"done":true}"#);
    assert_eq!(decision.actions, [Action::Promote, Action::Ended]);
    assert_eq!(run.exec.status, Status::Finished);
    assert_eq!(run.exec.context.as_str(), r#"{"done":true}"#);
    assert_eq!(run.exec.timer_at(), None);
    assert!(
        run.exec
            .steps
            .iter()
            .all(|s| s.sent.as_ref().unwrap().payload.is_none()),
        "a finished step keeps no payload"
    );
}

#[test]
fn a_success_reply_runs_on_reply_whose_context_is_the_sagas() {
    let mut step = remote("A");
    step.on_reply = Some("got_a".into());
    let mut run = Run::new(vec![saga("S", vec![Step::Remote(step)], None)]);
    run.start();
    run.prepares();
    let decision = run.reply(200, r#"{"count":2}"#);
    assert_eq!(run.calls(&decision), ["got_a"]);
    let Action::Call(callback) = &decision.actions[0] else {
        unreachable!()
    };
    assert_eq!(callback.kind, CallbackKind::OnReply);
    assert_eq!(callback.reply, Some((200, r#"{"count":2}"#.into())));
    run.context(r#"{"count":2}"#);
    assert_eq!(run.exec.status, Status::Finished);
    assert_eq!(run.exec.context.as_str(), r#"{"count":2}"#);
}

#[test]
fn an_error_reply_runs_on_error_and_the_saga_goes_on_and_the_refused_step_is_never_compensated() {
    let mut first = compensated(remote("A"), "UndoA");
    first.on_error = Some("refused_a".into());
    let second = compensated(remote("B"), "UndoB");
    let mut run = Run::new(vec![saga(
        "S",
        vec![Step::Remote(first), Step::Remote(second)],
        None,
    )]);
    run.start();
    run.prepares();
    let decision = run.reply(400, r#""no seats""#);
    assert_eq!(run.calls(&decision), ["refused_a"]);
    run.context(r#"{"a":"refused"}"#);
    assert_eq!(run.exec.steps[0].status, StepStatus::Succeeded);
    assert_eq!(run.exec.steps[0].acted, Acted::No);
    assert_eq!(
        run.exec.steps[0].error,
        Some(ErrorInfo::new(400, "no seats"))
    );
    // The saga goes on; when a later step fails, the refused step gets no compensation.
    run.prepares();
    run.reply(500, r#""down""#);
    run.timer();
    run.reply(500, r#""down""#);
    run.timer();
    run.reply(500, r#""down""#);
    assert_eq!(run.exec.status, Status::Errored);
    assert!(run.compensations_sent().is_empty(), "{:?}", run.actions);
}

#[test]
fn an_error_reply_without_on_error_goes_on() {
    let mut run = Run::new(vec![saga(
        "S",
        vec![Step::Remote(remote("A")), Step::Remote(remote("B"))],
        None,
    )]);
    run.start();
    run.prepares();
    let decision = run.reply(404, r#""nothing""#);
    assert_eq!(run.calls(&decision), ["prepare_B"]);
}

#[test]
fn on_error_failing_fails_the_step_without_its_compensation() {
    let first = compensated(remote("A"), "UndoA");
    let mut second = compensated(remote("B"), "UndoB");
    second.on_error = Some("refuse".into());
    let mut run = Run::new(vec![saga(
        "S",
        vec![Step::Remote(first), Step::Remote(second)],
        None,
    )]);
    run.start();
    run.prepares();
    run.reply(200, "{}");
    run.prepares();
    run.reply(400, r#""declined""#);
    run.fails(400, "the fee was declined");
    assert_eq!(run.exec.steps[1].status, StepStatus::Failed);
    assert_eq!(
        run.compensations_sent(),
        [(0, "UndoA".to_string())],
        "only the step that acted is compensated"
    );
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);
    assert_eq!(
        run.exec.error,
        Some(ErrorInfo::new(400, "the fee was declined"))
    );
    assert!(run.has(&Action::Discard) && !run.has(&Action::Promote));
}

#[test]
fn a_system_error_is_retried_with_backoff_and_a_new_message_id_then_fails_the_step_uncompensated() {
    let mut run = Run::new(vec![saga(
        "S",
        vec![Step::Remote(compensated(remote("A"), "UndoA"))],
        None,
    )]);
    run.start();
    run.prepares();
    let first = run.last_command();
    run.reply(500, r#""db down""#);
    assert_eq!(run.exec.status, Status::Paused);
    assert_eq!(run.exec.steps[0].status, StepStatus::AwaitingRetry);
    assert_eq!(run.exec.timer_at(), Some(1_010), "first retry after 10 ms");
    run.timer();
    let second = run.last_command();
    assert_ne!(
        second.message_id, first.message_id,
        "a new id after a system error"
    );
    assert_eq!(second.attempt, 2);
    run.reply(500, r#""db down""#);
    assert_eq!(run.exec.timer_at(), Some(1_030), "the delay doubles");
    run.timer();
    run.reply(500, r#""db down""#);
    assert_eq!(run.exec.status, Status::Errored);
    assert_eq!(
        run.exec.error,
        Some(ErrorInfo::new(500, "A failed: db down (after 3 attempts)"))
    );
    assert!(run.compensations_sent().is_empty(), "it did nothing");
}

#[test]
fn a_missing_reply_is_sent_again_with_the_same_id_then_fails_the_step_with_its_compensation() {
    let mut run = Run::new(vec![saga(
        "S",
        vec![Step::Remote(compensated(remote("A"), "UndoA"))],
        None,
    )]);
    run.world.inline.insert("A".into());
    run.start();
    run.prepares();
    let first = run.last_command();
    assert!(first.inline, "a fresh command runs inline when it can");
    run.timer();
    let again = run.last_command();
    assert_eq!(again.message_id, first.message_id, "the same id");
    assert!(
        !again.inline,
        "a copy may be queued: it goes through the queue"
    );
    assert_eq!(again.attempt, 2);
    run.timer();
    run.timer();
    assert_eq!(run.exec.steps[0].acted, Acted::Maybe);
    assert_eq!(run.compensations_sent(), [(0, "UndoA".to_string())]);
    assert_eq!(
        run.exec.error.as_ref().unwrap().message,
        "A did not reply within 0 s, 3 attempts"
    );
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);
}

#[test]
fn on_reply_failing_after_success_compensates_the_step_that_acted() {
    let mut step = compensated(remote("A"), "UndoA");
    step.on_reply = Some("check".into());
    let mut run = Run::new(vec![saga("S", vec![Step::Remote(step)], None)]);
    run.start();
    run.prepares();
    run.reply(200, "{}");
    run.fails(500, "on_reply broke");
    assert_eq!(run.compensations_sent(), [(0, "UndoA".to_string())]);
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);
}

#[test]
fn a_failed_local_step_did_nothing_and_earlier_steps_are_compensated() {
    let mut run = Run::new(vec![saga(
        "S",
        vec![
            Step::Local(LocalStep {
                on_execute: "reserve".into(),
                on_failure: Some("release".into()),
            }),
            Step::Local(LocalStep {
                on_execute: "charge".into(),
                on_failure: Some("refund".into()),
            }),
        ],
        None,
    )]);
    run.start();
    let decision = run.context(r#"{"reserved":1}"#);
    assert_eq!(run.calls(&decision), ["charge"]);
    let decision = run.fails(400, "declined");
    assert_eq!(
        run.calls(&decision),
        ["release"],
        "only the local step that succeeded is compensated"
    );
    run.context("{}");
    assert_eq!(run.exec.status, Status::Errored);
}

#[test]
fn a_prepare_that_fails_sends_nothing_and_compensates_nothing_of_its_step() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    run.reply(200, "{}");
    run.fails(500, "cannot build the command");
    assert_eq!(run.compensations_sent(), [(0, "UndoA".to_string())]);
    assert_eq!(run.exec.steps[1].acted, Acted::No);
}

#[test]
fn compensations_run_one_at_a_time_latest_first_each_once() {
    let mut run = Run::new(vec![saga(
        "S",
        vec![
            Step::Remote(compensated(remote("A"), "UndoA")),
            Step::Remote(remote("B")),
            Step::Remote(compensated(remote("C"), "UndoC")),
            Step::Remote(compensated(remote("D"), "UndoD")),
        ],
        None,
    )]);
    run.start();
    for _ in 0..3 {
        run.prepares();
        run.reply(200, "{}");
    }
    run.prepares();
    run.reply(422, r#""no""#);
    // D refused and has no on_error: the saga goes on — to its end, finished.
    assert_eq!(run.exec.status, Status::Finished);

    let mut run = Run::new(vec![saga(
        "S",
        vec![
            Step::Remote(compensated(remote("A"), "UndoA")),
            Step::Remote(remote("B")),
            Step::Remote(compensated(remote("C"), "UndoC")),
        ],
        Some("commit"),
    )]);
    run.start();
    for _ in 0..3 {
        run.prepares();
        run.reply(200, "{}");
    }
    run.fails(500, "the commit broke");
    assert_eq!(run.compensations_sent(), [(2, "UndoC".to_string())]);
    assert_eq!(run.exec.status, Status::Compensating);
    assert_eq!(run.exec.compensation_out(), Some(2));
    run.reply(200, "{}");
    assert_eq!(
        run.compensations_sent(),
        [(2, "UndoC".to_string()), (0, "UndoA".to_string())],
        "the next one once the first is confirmed"
    );
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);
    // A second confirmation of the same compensation changes nothing.
    let decision = run.reply(200, "{}");
    assert!(decision.actions.is_empty());
    assert!(matches!(
        decision.history[0].event,
        Recorded::Ignored { .. }
    ));
}

#[test]
fn a_compensation_that_keeps_failing_ends_compensation_failed_after_the_others_ran() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    run.reply(200, "{}");
    run.prepares();
    run.reply(200, "{}");
    run.fails(500, "commit broke");
    assert_eq!(run.last_command().topic, "UndoB");
    run.reply(500, r#""undo broke""#);
    assert_eq!(run.exec.status, Status::Compensating);
    run.timer();
    run.reply(500, r#""undo broke""#);
    run.timer();
    run.reply(500, r#""undo broke""#);
    assert_eq!(
        run.last_command().topic,
        "UndoA",
        "the other compensations still run"
    );
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::CompensationFailed);
    let failed = run.exec.steps[1].compensation.as_ref().unwrap();
    assert_eq!(failed.status, CompensationStatus::Failed);
    assert_eq!(
        failed.error.as_ref().unwrap().message,
        "UndoB failed: undo broke (after 3 attempts)"
    );
    assert!(run.has(&Action::Discard));

    // An operator retries it once the participant is fixed: it ends errored.
    let decision = run
        .try_event(Event::Operator {
            action: OperatorAction::RetryCompensations {
                reason: "fixed".into(),
            },
            by: "admin".into(),
        })
        .unwrap();
    assert!(matches!(
        decision.history[0].event,
        Recorded::Operator { .. }
    ));
    assert_eq!(run.last_command().topic, "UndoB");
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);
}

#[test]
fn a_compensation_refused_with_a_business_error_is_done() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    run.reply(200, "{}");
    run.prepares();
    run.reply(200, "{}");
    run.fails(500, "commit broke");
    run.reply(409, r#""already released""#);
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);
    assert_eq!(
        run.exec.steps[1].compensation.as_ref().unwrap().status,
        CompensationStatus::Done
    );
}

#[test]
fn a_conditional_step_runs_the_first_branch_that_holds_as_an_inner_saga() {
    let definitions = vec![
        saga(
            "S",
            vec![
                Step::Conditional(ConditionalStep {
                    branches: vec![("is_x".into(), "X".into()), ("is_y".into(), "Y".into())],
                    otherwise: Some("Z".into()),
                }),
                Step::Remote(remote("After")),
            ],
            None,
        ),
        saga("X", vec![Step::Remote(remote("InX"))], Some("commit_x")),
        saga("Y", vec![Step::Remote(remote("InY"))], None),
        saga("Z", vec![Step::Remote(remote("InZ"))], None),
    ];
    let mut run = Run::new(definitions.clone());
    let decision = run.start();
    assert_eq!(run.calls(&decision), ["is_x"]);
    let decision = run.returns(Returned::Decision(false));
    assert_eq!(run.calls(&decision), ["is_y"]);
    let decision = run.returns(Returned::Decision(true));
    assert_eq!(run.calls(&decision), ["prepare_InY"]);
    assert_eq!(run.exec.frames.len(), 2);
    run.prepares();
    let decision = run.reply(200, "{}");
    assert_eq!(
        run.calls(&decision),
        ["prepare_After"],
        "back in the outer saga"
    );
    run.prepares();
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Finished);

    let mut run = Run::new(definitions);
    run.start();
    run.returns(Returned::Decision(false));
    let decision = run.returns(Returned::Decision(false));
    assert_eq!(run.calls(&decision), ["prepare_InZ"], "else_then");
}

#[test]
fn the_sagas_deadline_fails_it_and_compensates_the_step_that_may_have_acted() {
    let mut run = Run::new(two_compensated_steps());
    run.config.saga_timeout = Some(Duration::from_millis(50));
    run.start();
    run.prepares();
    assert_eq!(run.exec.timer_at(), Some(1_050), "the deadline comes first");
    run.timer();
    assert_eq!(
        run.exec.error,
        Some(ErrorInfo::new(
            504,
            "the saga did not finish within its deadline of 0 s"
        ))
    );
    assert_eq!(run.compensations_sent(), [(0, "UndoA".to_string())]);
}

#[test]
fn events_that_do_not_fit_change_nothing_and_are_recorded_as_ignored() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    let command = run.last_command();
    run.reply(200, "{}");
    let before = run.exec.clone();
    for event in [
        // The reply again (a duplicate).
        Event::Replied {
            target: command.target,
            message_id: command.message_id,
            status: 200,
            payload: "{}".into(),
        },
        // A confirmation of a compensation never sent.
        Event::Replied {
            target: Target::Compensation(0),
            message_id: command.message_id,
            status: 200,
            payload: "{}".into(),
        },
    ] {
        let decision = run.event(event);
        assert!(decision.actions.is_empty());
        assert!(
            matches!(
                decision.history[..],
                [Entry {
                    event: Recorded::Ignored { .. },
                    ..
                }]
            ),
            "{:?}",
            decision.history
        );
    }
    let pending = before.pending.clone();
    let mut after = run.exec.clone();
    after.updated_at = before.updated_at;
    after.pending = pending;
    assert_eq!(after, before);
    // A timer with nothing due does nothing and records nothing.
    run.prepares();
    let decision = run.event(Event::Timer);
    assert_eq!(decision, Decision::default());
}

#[test]
fn an_operator_cancels_a_paused_saga_and_its_acted_steps_are_compensated() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    run.reply(200, "{}");
    run.prepares();
    let decision = run
        .try_event(Event::Operator {
            action: OperatorAction::Cancel {
                reason: "stuck participant".into(),
            },
            by: "ops".into(),
        })
        .unwrap();
    assert!(decision.awaits() || !decision.actions.is_empty());
    assert_eq!(
        run.exec.error,
        Some(ErrorInfo::new(
            409,
            "cancelled by the operator: stuck participant"
        ))
    );
    assert_eq!(
        run.compensations_sent(),
        [(1, "UndoB".to_string())],
        "the paused step may have acted: compensated first"
    );
    run.reply(200, "{}");
    run.reply(200, "{}");
    assert_eq!(run.exec.status, Status::Errored);

    // Cancelling it again does not fit: refused, nothing changes.
    let before = run.exec.clone();
    let refused = run
        .try_event(Event::Operator {
            action: OperatorAction::Cancel {
                reason: String::new(),
            },
            by: "ops".into(),
        })
        .unwrap_err();
    assert_eq!(refused.status, Status::Errored);
    assert_eq!(run.exec, before);
}

#[test]
fn an_operator_cancels_a_saga_waiting_for_a_retry_and_each_step_that_acted_is_compensated_once() {
    let mut run = Run::new(vec![saga(
        "S",
        vec![
            Step::Remote(compensated(remote("A"), "UndoA")),
            Step::Remote(compensated(remote("B"), "UndoB")),
            Step::Remote(compensated(remote("C"), "UndoC")),
        ],
        Some("commit"),
    )]);
    run.start();
    for _ in 0..2 {
        run.prepares();
        run.reply(200, "{}");
    }
    run.prepares();
    run.reply(503, r#""later""#);
    assert_eq!(run.exec.steps[2].status, StepStatus::AwaitingRetry);
    assert_eq!(run.exec.status, Status::Paused);
    let decision = run
        .try_event(Event::Operator {
            action: OperatorAction::Cancel {
                reason: "customer left".into(),
            },
            by: "admin".into(),
        })
        .unwrap();
    assert_eq!(
        decision.history[0].event,
        Recorded::Operator {
            action: OperatorAction::Cancel {
                reason: "customer left".into()
            },
            by: "admin".into(),
        },
        "who and why come first in the history"
    );
    run.reply(200, "{}");
    run.reply(200, "{}");
    assert_eq!(
        run.compensations_sent(),
        [(1, "UndoB".to_string()), (0, "UndoA".to_string())],
        "the refused step did nothing; the others are undone latest first, once each"
    );
    assert_eq!(run.exec.status, Status::Errored);
    assert_eq!(
        run.exec.error.as_ref().map(|e| e.message.as_str()),
        Some("cancelled by the operator: customer left")
    );
    // A late retry timer of the cancelled step sends nothing.
    let before = run.compensations_sent().len();
    run.world.now += 10_000;
    run.event(Event::Timer);
    assert_eq!(run.compensations_sent().len(), before);
    assert!(!run.actions.iter().any(|a| matches!(
        a,
        Action::Send(Command {
            target: Target::Step(2),
            attempt: 2,
            ..
        })
    )));
}

#[test]
fn an_operator_retries_a_paused_step_now() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    let first = run.last_command();
    run.reply(503, r#""later""#);
    assert_eq!(run.exec.steps[0].status, StepStatus::AwaitingRetry);
    run.try_event(Event::Operator {
        action: OperatorAction::RetryNow {
            reason: String::new(),
        },
        by: "ops".into(),
    })
    .unwrap();
    let again = run.last_command();
    assert_eq!(again.attempt, 2);
    assert_ne!(again.message_id, first.message_id);
    assert_eq!(run.world.now, 1_000, "without waiting for the back-off");
}

#[test]
fn an_execution_at_rest_survives_a_round_trip_through_its_stored_form() {
    let mut run = Run::new(two_compensated_steps());
    run.start();
    run.prepares();
    let stored = serde_json::to_string(&run.exec).unwrap();
    let back: Execution = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, run.exec);
    assert!(
        !stored.contains("\\\""),
        "payloads are stored as JSON, not escaped: {stored}"
    );
}
