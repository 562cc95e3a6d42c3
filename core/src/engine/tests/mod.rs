//! The state machine's tests: the rules of the README's "How sagas run", one test each
//! (`rules.rs`), and a property test that runs random definitions against random participants,
//! with crashes between transitions, and checks the invariants every saga must keep
//! (`properties.rs`). This module holds the small world both run the machine in.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::*;
use crate::definition::{ConditionalStep, Invocation, LocalStep, RemoteStep, SagaDefinition, Step};
use crate::ids::{Digest, MessageId, SagaId, ServiceName};

mod properties;
mod rules;

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
