//! The rules of the README's "How sagas run", one test each, and a property test that runs
//! random definitions against random participants (with crashes between transitions) and checks
//! the invariants every saga must keep.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::*;
use crate::definition::{ConditionalStep, Invocation, LocalStep, RemoteStep, SagaDefinition, Step};
use crate::ids::{Digest, MessageId, SagaId, ServiceName};

// ------------------------------------------------------------------------------------------
// A small world to run the machine in
// ------------------------------------------------------------------------------------------

struct World {
    now: i64,
    next_id: u128,
    inline: HashSet<String>,
}

impl Env for World {
    fn now(&self) -> i64 {
        self.now
    }

    fn message_id(&mut self) -> MessageId {
        self.next_id += 1;
        MessageId(uuid::Uuid::from_u128(self.next_id))
    }

    fn inline(&self, topic: &str) -> bool {
        self.inline.contains(topic)
    }
}

fn remote(topic: &str) -> RemoteStep {
    RemoteStep {
        invoke: Invocation {
            topic: Some(topic.into()),
            prepare: Some(format!("prepare_{topic}")),
        },
        on_reply: None,
        on_error: None,
        compensation: None,
    }
}

fn compensated(mut step: RemoteStep, undo: &str) -> RemoteStep {
    step.compensation = Some(Invocation {
        topic: Some(undo.into()),
        prepare: None,
    });
    step
}

fn saga(name: &str, steps: Vec<Step>, commit: Option<&str>) -> SagaDefinition {
    SagaDefinition {
        name: name.into(),
        steps,
        commit: commit.map(str::to_string),
        step_timeout: None,
        timeout: None,
    }
}

/// An execution with its definitions, driven one event at a time; everything it decided is
/// kept for the assertions.
struct Run {
    definitions: HashMap<String, SagaDefinition>,
    config: Config,
    world: World,
    exec: Execution,
    actions: Vec<Action>,
    history: Vec<Entry>,
}

impl Run {
    fn new(definitions: Vec<SagaDefinition>) -> Run {
        let main = definitions[0].name.clone();
        let exec = Execution::new(
            SagaId::random(),
            ServiceName::from("svc"),
            &main,
            Digest("d".repeat(64)),
            Context::parse(r#"{"n":0}"#.into()).unwrap(),
            None,
            1_000,
        );
        Run {
            definitions: definitions
                .into_iter()
                .map(|d| (d.name.clone(), d))
                .collect(),
            config: Config {
                step_timeout: Duration::from_millis(100),
                saga_timeout: Some(Duration::from_secs(60)),
                max_attempts: 3,
                first_retry_delay: Duration::from_millis(10),
                max_retry_delay: Duration::from_millis(40),
            },
            world: World {
                now: 1_000,
                next_id: 0,
                inline: HashSet::new(),
            },
            exec,
            actions: Vec::new(),
            history: Vec::new(),
        }
    }

    fn try_event(&mut self, event: Event) -> Result<Decision, Rejected> {
        let machine = Machine::new(&self.definitions, &self.config, &mut self.world);
        let decision = machine.decide(&mut self.exec, event)?;
        self.actions.extend(decision.actions.iter().cloned());
        self.history.extend(decision.history.iter().cloned());
        Ok(decision)
    }

    fn event(&mut self, event: Event) -> Decision {
        self.try_event(event).expect("not an operator's request")
    }

    fn start(&mut self) -> Decision {
        self.event(Event::Start)
    }

    fn returns(&mut self, returned: Returned) -> Decision {
        self.event(Event::Called {
            outcome: Ok(returned),
            cost: Cost::default(),
        })
    }

    fn fails(&mut self, status: u16, message: &str) -> Decision {
        self.event(Event::Called {
            outcome: Err(ErrorInfo::new(status, message)),
            cost: Cost::default(),
        })
    }

    fn prepares(&mut self) -> Decision {
        self.returns(Returned::Request {
            target: None,
            payload: r#"{"x":1}"#.into(),
        })
    }

    fn context(&mut self, json: &str) -> Decision {
        self.returns(Returned::Context(json.into()))
    }

    fn last_command(&self) -> Command {
        self.actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Send(command) => Some(command.clone()),
                _ => None,
            })
            .expect("a command was sent")
    }

    fn reply(&mut self, status: u16, payload: &str) -> Decision {
        let command = self.last_command();
        self.event(Event::Replied {
            target: command.target,
            message_id: command.message_id,
            status,
            payload: payload.into(),
        })
    }

    /// Lets time pass to the execution's next timer, and fires it.
    fn timer(&mut self) -> Decision {
        let at = self.exec.timer_at().expect("a timer is due");
        self.world.now = self.world.now.max(at);
        self.event(Event::Timer)
    }

    fn calls(&self, decision: &Decision) -> Vec<String> {
        decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Call(callback) => Some(callback.name.clone()),
                _ => None,
            })
            .collect()
    }

    fn compensations_sent(&self) -> Vec<(usize, String)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Command {
                    target: Target::Compensation(index),
                    topic,
                    ..
                }) => Some((*index, topic.clone())),
                _ => None,
            })
            .collect()
    }

    fn has(&self, action: &Action) -> bool {
        self.actions.contains(action)
    }
}

fn two_compensated_steps() -> Vec<SagaDefinition> {
    vec![saga(
        "S",
        vec![
            Step::Remote(compensated(remote("A"), "UndoA")),
            Step::Remote(compensated(remote("B"), "UndoB")),
        ],
        Some("commit"),
    )]
}

// ------------------------------------------------------------------------------------------
// One test per rule
// ------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------
// Random definitions against random participants
// ------------------------------------------------------------------------------------------

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// How a participant or a callback behaves each time it is asked.
    #[derive(Debug, Clone)]
    enum Answer {
        Success,
        Business,
        System,
        NoReply,
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            4 => Just(Answer::Success),
            1 => Just(Answer::Business),
            1 => Just(Answer::System),
            1 => Just(Answer::NoReply),
        ]
    }

    fn remote_step(n: usize) -> impl Strategy<Value = Step> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            move |(prepare, on_reply, on_error, compensation)| {
                Step::Remote(RemoteStep {
                    invoke: Invocation {
                        topic: Some(format!("T{n}")),
                        prepare: prepare.then(|| format!("prepare{n}")),
                    },
                    on_reply: on_reply.then(|| format!("reply{n}")),
                    on_error: on_error.then(|| format!("error{n}")),
                    compensation: compensation.then(|| Invocation {
                        topic: Some(format!("Undo{n}")),
                        prepare: None,
                    }),
                })
            },
        )
    }

    fn step(n: usize, conditional: bool) -> BoxedStrategy<Step> {
        let local = any::<bool>().prop_map(move |undo| {
            Step::Local(LocalStep {
                on_execute: format!("local{n}"),
                on_failure: undo.then(|| format!("unlocal{n}")),
            })
        });
        if conditional {
            prop_oneof![
                3 => remote_step(n),
                1 => local,
                1 => Just(Step::Conditional(ConditionalStep {
                    branches: vec![(format!("cond{n}"), "INNER".into())],
                    otherwise: None,
                })),
            ]
            .boxed()
        } else {
            prop_oneof![3 => remote_step(n), 1 => local].boxed()
        }
    }

    fn definitions() -> impl Strategy<Value = Vec<SagaDefinition>> {
        (
            prop::collection::vec(any::<u8>(), 1..5),
            prop::collection::vec(any::<u8>(), 1..3),
            any::<bool>(),
        )
            .prop_flat_map(|(outer, inner, commit)| {
                let outer: Vec<_> = (0..outer.len()).map(|n| step(n, true)).collect();
                let inner: Vec<_> = (0..inner.len()).map(|n| step(100 + n, false)).collect();
                (outer, inner, Just(commit))
            })
            .prop_map(|(outer, inner, commit)| {
                vec![
                    saga("MAIN", outer, commit.then_some("commit")),
                    saga("INNER", inner, Some("commit_inner")),
                ]
            })
    }

    /// What the world saw a step do, independently of what the machine recorded.
    #[derive(Default)]
    struct Seen {
        /// A participant of the step answered SUCCESS, or its local callback succeeded.
        succeeded: bool,
        /// The last answer to the step's command was none at all.
        silent: bool,
    }

    /// Drives one saga to its end: every callback and participant answers from `script`
    /// (cycled), and between transitions the host may crash (`crashes`), in which case the
    /// transition is lost and its event comes again from the stored state. Returns the run,
    /// the stored transitions' decisions, and what each step was seen to do.
    fn drive(
        definitions: Vec<SagaDefinition>,
        script: &[Answer],
        crashes: &[bool],
    ) -> (Run, Vec<Decision>, HashMap<usize, Seen>) {
        let mut run = Run::new(definitions);
        run.world.inline = (0..200).map(|n| format!("T{n}")).collect();
        let mut committed = Vec::new();
        let mut answers = script.iter().cycle();
        let mut crash = crashes.iter().cycle();
        let mut queue: Vec<Event> = vec![Event::Start];
        let mut crashed = false;
        let mut seen: HashMap<usize, Seen> = HashMap::new();
        for _ in 0..2_000 {
            let Some(event) = queue.pop() else {
                if run.exec.status.is_final() {
                    break;
                }
                match run.exec.timer_at() {
                    Some(_) => {
                        queue.push(Event::Timer);
                        let at = run.exec.timer_at().unwrap();
                        run.world.now = run.world.now.max(at);
                        continue;
                    }
                    None => panic!("a saga that is not final must have a timer: {:?}", run.exec),
                }
            };
            // A transition: the event and the events its own actions feed back, all in memory.
            let stored = run.exec.clone();
            let mut transition = Vec::new();
            let mut next = Some(event.clone());
            let mut later = Vec::new();
            let mut observed: Vec<(usize, Answer)> = Vec::new();
            while let Some(event) = next.take() {
                let machine = Machine::new(&run.definitions, &run.config, &mut run.world);
                let decision = machine
                    .decide(&mut run.exec, event)
                    .expect("no operator here");
                for action in &decision.actions {
                    match action {
                        Action::Call(callback) => {
                            let answer = answers.next().unwrap().clone();
                            let failed = matches!(answer, Answer::Business | Answer::System);
                            if callback.name.starts_with("local") {
                                // A callback either fails or returns: it is never silent.
                                let done = if failed { answer } else { Answer::Success };
                                observed.push((run.exec.steps.len() - 1, done));
                            }
                            next = Some(Event::Called {
                                outcome: if failed {
                                    Err(ErrorInfo::new(500, format!("{} failed", callback.name)))
                                } else {
                                    Ok(match callback.kind {
                                        CallbackKind::Prepare => Returned::Request {
                                            target: None,
                                            payload: "{}".into(),
                                        },
                                        CallbackKind::Condition => Returned::Decision(true),
                                        _ => Returned::Context("{}".into()),
                                    })
                                },
                                cost: Cost::default(),
                            });
                        }
                        Action::Send(command) => {
                            let answer = answers.next().unwrap();
                            if let Target::Step(index) = command.target {
                                observed.push((index, answer.clone()));
                            }
                            let status = match answer {
                                Answer::Success => Some(200),
                                Answer::Business => Some(400),
                                Answer::System => Some(500),
                                Answer::NoReply => None,
                            };
                            let reply = status.map(|status| Event::Replied {
                                target: command.target,
                                message_id: command.message_id,
                                status,
                                payload: r#""answer""#.into(),
                            });
                            if command.inline {
                                next = reply;
                            } else {
                                later.extend(reply);
                            }
                        }
                        _ => {}
                    }
                }
                transition.push(decision);
            }
            assert!(
                run.exec.pending.is_none(),
                "a transition ends with no callback pending"
            );
            if *crash.next().unwrap() && !crashed && !run.exec.status.is_final() {
                // Lost before it was stored: the stored state and the event remain (and the
                // restarted host gets through it).
                run.exec = stored;
                queue.push(event);
                crashed = true;
                continue;
            }
            crashed = false;
            // Stored: its state must survive the stored form.
            let text = serde_json::to_string(&run.exec).unwrap();
            run.exec = serde_json::from_str(&text).unwrap();
            committed.extend(transition);
            queue.extend(later);
            for (index, answer) in observed {
                let step = seen.entry(index).or_default();
                step.succeeded |= matches!(answer, Answer::Success);
                step.silent = matches!(answer, Answer::NoReply);
            }
        }
        assert!(run.exec.status.is_final(), "the saga ended: {:?}", run.exec);
        (run, committed, seen)
    }

    fn step_definition<'a>(definitions: &'a [SagaDefinition], record: &StepRecord) -> &'a Step {
        let definition = definitions.iter().find(|d| d.name == record.saga).unwrap();
        &definition.steps[record.index]
    }

    fn has_compensation(step: &Step) -> bool {
        match step {
            Step::Remote(remote) => remote.compensation.is_some(),
            Step::Local(local) => local.on_failure.is_some(),
            Step::Conditional(_) => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn every_saga_ends_and_keeps_its_promises(
            definitions in definitions(),
            script in prop::collection::vec(answer(), 1..40),
            crashes in prop::collection::vec(prop::bool::weighted(0.2), 1..10),
        ) {
            let (run, committed, seen) = drive(definitions.clone(), &script, &crashes);
            let exec = &run.exec;
            let actions: Vec<&Action> = committed.iter().flat_map(|d| &d.actions).collect();
            let history: Vec<&Entry> = committed.iter().flat_map(|d| &d.history).collect();
            let promoted = actions.iter().filter(|a| ***a == Action::Promote).count();
            let discarded = actions.iter().filter(|a| ***a == Action::Discard).count();

            // The status matches the history: the last thing that happened is its end.
            let ended: Vec<Status> = history.iter().filter_map(|e| match &e.event {
                Recorded::Ended { status, .. } => Some(*status),
                _ => None,
            }).collect();
            prop_assert_eq!(ended.last().copied(), Some(exec.status));

            if exec.status == Status::Finished {
                // It ran every step and its commit, and only then promoted its writes.
                prop_assert_eq!((promoted, discarded), (1, 0));
                prop_assert!(exec.steps.iter().all(|s| s.status == StepStatus::Succeeded));
                prop_assert!(exec.frames.is_empty());
                prop_assert!(exec.steps.iter().all(|s| s.compensation.is_none()));
            } else {
                // Failed: its writes discarded, never promoted.
                prop_assert_eq!((promoted, discarded), (0, 1));
                // Compensated: exactly the executed steps that acted and have a compensation,
                // latest first, each done or failed once.
                // Acted, as the world saw it: a participant succeeded (or a local callback), or
                // the step failed with its last command unanswered (it may have acted).
                let acted = |i: usize| seen.get(&i).is_some_and(|s| {
                    s.succeeded || (s.silent && exec.steps[i].status == StepStatus::Failed)
                });
                let expected: Vec<usize> = (0..exec.steps.len()).rev().filter(|&i| {
                    acted(i) && has_compensation(step_definition(&definitions, &exec.steps[i]))
                }).collect();
                let over: Vec<usize> = history.iter().filter_map(|e| match &e.event {
                    Recorded::Compensated { step, .. } => Some(*step),
                    _ => None,
                }).collect();
                prop_assert_eq!(&over, &expected, "compensated: {:?}", exec);
                for (i, record) in exec.steps.iter().enumerate() {
                    prop_assert_eq!(record.compensation.is_some(), expected.contains(&i));
                }
                let failed = exec.steps.iter().any(|s| s.compensation.as_ref()
                    .is_some_and(|c| c.status == CompensationStatus::Failed));
                prop_assert_eq!(
                    exec.status,
                    if failed { Status::CompensationFailed } else { Status::Errored }
                );
                // A refused step never acted.
                for record in &exec.steps {
                    if let Some(error) = &record.error && record.acted == Acted::No {
                        prop_assert!(error.status >= 400);
                    }
                }
            }
        }
    }
}
