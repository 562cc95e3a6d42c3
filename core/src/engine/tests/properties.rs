//! Random definitions against random participants, with crashes between transitions: the
//! invariants every saga must keep.

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
