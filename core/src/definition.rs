//! Saga definitions: the builder calls a service declares (`step`, `invoke_participant`, …,
//! `commit`), checked and turned into steps. Every rule a definition must follow is enforced
//! here, when the component loads, so that a broken saga never starts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// One builder call, as the WIT `saga-operation` carries it.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Step,
    RemoteStep,
    LocalStep,
    ConditionalStep,
    InvokeParticipant(Invocation),
    OnReply(String),
    OnSuccess(String),
    OnError(String),
    WithCompensation(Invocation),
    OnExecute(String),
    OnFailure(String),
    IfThen { condition: String, saga: String },
    ElseThen(String),
    Commit(Option<String>),
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Step => "step",
            Operation::RemoteStep => "remote_step",
            Operation::LocalStep => "local_step",
            Operation::ConditionalStep => "conditional_step",
            Operation::InvokeParticipant(_) => "invoke_participant",
            Operation::OnReply(_) => "on_reply",
            Operation::OnSuccess(_) => "on_success",
            Operation::OnError(_) => "on_error",
            Operation::WithCompensation(_) => "with_compensation",
            Operation::OnExecute(_) => "on_execute",
            Operation::OnFailure(_) => "on_failure",
            Operation::IfThen { .. } => "if_then",
            Operation::ElseThen(_) => "else_then",
            Operation::Commit(_) => "commit",
        }
    }
}

/// A command a remote step sends: to `topic`, or where the `prepare` callback says (Minos 0.7's
/// `on_execute` on a remote step names no topic).
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invocation {
    pub topic: Option<String>,
    pub prepare: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDefinition {
    pub name: String,
    pub steps: Vec<Step>,
    /// The commit callback, if any (a definition always ends with a commit).
    pub commit: Option<String>,
    pub step_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Remote(RemoteStep),
    Local(LocalStep),
    Conditional(ConditionalStep),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStep {
    pub invoke: Invocation,
    pub on_reply: Option<String>,
    pub on_error: Option<String>,
    pub compensation: Option<Invocation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStep {
    pub on_execute: String,
    pub on_failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionalStep {
    /// (condition callback, saga to run), tried in order.
    pub branches: Vec<(String, String)>,
    pub otherwise: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga {saga:?}{}: {problem}", step.map(|s| format!(", step {s}")).unwrap_or_default())]
pub struct DefinitionError {
    pub saga: String,
    /// 1-based, as an author counts the `step()` calls.
    pub step: Option<usize>,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    Remote,
    Local,
    Conditional,
}

/// The operations of one step, collected before its kind is known.
#[derive(Default)]
struct Draft {
    invoke: Option<Invocation>,
    on_reply: Option<String>,
    on_error: Option<String>,
    compensation: Option<Invocation>,
    on_execute: Option<String>,
    on_failure: Option<String>,
    branches: Vec<(String, String)>,
    otherwise: Option<String>,
}

impl SagaDefinition {
    /// Checks a definition's builder calls and turns them into steps.
    pub fn parse(
        name: &str,
        operations: &[Operation],
        step_timeout: Option<Duration>,
        timeout: Option<Duration>,
    ) -> Result<SagaDefinition, DefinitionError> {
        let error = |step: Option<usize>, problem: String| DefinitionError {
            saga: name.to_string(),
            step,
            problem,
        };
        if name.is_empty() || name.len() > 128 {
            return Err(error(
                None,
                "the saga's name must be 1 to 128 characters".into(),
            ));
        }
        if operations.is_empty() {
            return Err(error(
                None,
                "the saga is empty: add a step, e.g. Saga::new().step().invoke_participant(\"Topic\", prepare).commit(..)".into(),
            ));
        }
        let mut steps = Vec::new();
        let mut commit: Option<Option<String>> = None;
        let mut current: Option<(Kind, Draft)> = None;
        for operation in operations {
            let number = steps.len() + usize::from(current.is_some());
            let starts = match operation {
                Operation::Step => Some(Kind::Unknown),
                Operation::RemoteStep => Some(Kind::Remote),
                Operation::LocalStep => Some(Kind::Local),
                Operation::ConditionalStep => Some(Kind::Conditional),
                _ => None,
            };
            if commit.is_some() {
                return Err(if starts.is_some() {
                    error(
                        Some(steps.len() + 1),
                        "a step is added after commit(); commit() must be the last call".into(),
                    )
                } else {
                    error(
                        None,
                        format!(
                            "{}() comes after commit(); commit() must be the last call",
                            operation.name()
                        ),
                    )
                });
            }
            if let Some(kind) = starts {
                if let Some((kind, draft)) = current.take() {
                    steps.push(
                        finish_step(kind, draft).map_err(|p| error(Some(steps.len() + 1), p))?,
                    );
                }
                current = Some((kind, Draft::default()));
                continue;
            }
            if let Operation::Commit(callback) = operation {
                if let Some(callback) = callback {
                    check_name(callback).map_err(|p| error(None, format!("commit: {p}")))?;
                }
                if let Some((kind, draft)) = current.take() {
                    steps.push(
                        finish_step(kind, draft).map_err(|p| error(Some(steps.len() + 1), p))?,
                    );
                }
                commit = Some(callback.clone());
                continue;
            }
            let Some((kind, draft)) = current.as_mut() else {
                return Err(error(
                    None,
                    format!(
                        "{}() comes before any step(); start a step first",
                        operation.name()
                    ),
                ));
            };
            add_operation(kind, draft, operation).map_err(|p| error(Some(number), p))?;
        }
        if let Some((kind, draft)) = current.take() {
            steps.push(finish_step(kind, draft).map_err(|p| error(Some(steps.len() + 1), p))?);
        }
        if steps.is_empty() {
            return Err(error(
                None,
                "the saga has no steps; add at least one step()".into(),
            ));
        }
        let Some(commit) = commit else {
            return Err(error(
                None,
                "the saga is not committed: end the definition with commit() (with or without a callback)".into(),
            ));
        };
        Ok(SagaDefinition {
            name: name.to_string(),
            steps,
            commit,
            step_timeout,
            timeout,
        })
    }

    /// Sagas that conditional steps of this definition run.
    pub fn inner_sagas(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().flat_map(|step| match step {
            Step::Conditional(conditional) => conditional
                .branches
                .iter()
                .map(|(_, saga)| saga.as_str())
                .chain(conditional.otherwise.as_deref())
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }
}

/// Checks the references between a service's definitions: every inner saga exists, and no saga
/// contains itself (directly or through others).
pub fn check_references(definitions: &[SagaDefinition]) -> Result<(), DefinitionError> {
    let by_name: HashMap<&str, &SagaDefinition> =
        definitions.iter().map(|d| (d.name.as_str(), d)).collect();
    if by_name.len() != definitions.len() {
        let mut seen = HashSet::new();
        let duplicate = definitions
            .iter()
            .find(|d| !seen.insert(d.name.as_str()))
            .expect("a duplicate exists");
        return Err(DefinitionError {
            saga: duplicate.name.clone(),
            step: None,
            problem: "two sagas have this name; saga names must be unique within a service".into(),
        });
    }
    for definition in definitions {
        for inner in definition.inner_sagas() {
            if !by_name.contains_key(inner) {
                return Err(DefinitionError {
                    saga: definition.name.clone(),
                    step: None,
                    problem: format!(
                        "a conditional step runs saga {inner:?}, which the service does not define"
                    ),
                });
            }
        }
    }
    // Depth-first search for a cycle, iteratively.
    for start in definitions {
        let mut stack: Vec<&str> = definition_children(&by_name, &start.name);
        let mut visited = HashSet::new();
        while let Some(name) = stack.pop() {
            if name == start.name {
                return Err(DefinitionError {
                    saga: start.name.clone(),
                    step: None,
                    problem: "the saga runs itself through its conditional steps; inner sagas must not loop".into(),
                });
            }
            if visited.insert(name) {
                stack.extend(definition_children(&by_name, name));
            }
        }
    }
    Ok(())
}

fn definition_children<'a>(
    by_name: &HashMap<&str, &'a SagaDefinition>,
    name: &str,
) -> Vec<&'a str> {
    by_name
        .get(name)
        .map(|d| d.inner_sagas().collect())
        .unwrap_or_default()
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("a callback or topic name is empty".into())
    } else if name.len() > 256 {
        Err("a callback or topic name is longer than 256 characters".into())
    } else {
        Ok(())
    }
}

fn check_invocation(invocation: &Invocation) -> Result<(), String> {
    match (&invocation.topic, &invocation.prepare) {
        (None, None) => Err("an invocation needs a topic or a callback".into()),
        (topic, prepare) => {
            topic.as_deref().map(check_name).transpose()?;
            prepare.as_deref().map(check_name).transpose()?;
            Ok(())
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!(
            "{what} is set twice; each operation may appear once per step"
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn settle(kind: &mut Kind, wanted: Kind, operation: &Operation) -> Result<(), String> {
    match *kind {
        Kind::Unknown => {
            *kind = wanted;
            Ok(())
        }
        k if k == wanted => Ok(()),
        k => Err(format!(
            "{}() belongs to a {} step, but this is a {} step; start a new step() for it",
            operation.name(),
            kind_name(wanted),
            kind_name(k)
        )),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unknown => "new",
        Kind::Remote => "remote",
        Kind::Local => "local",
        Kind::Conditional => "conditional",
    }
}

fn add_operation(kind: &mut Kind, draft: &mut Draft, operation: &Operation) -> Result<(), String> {
    match operation {
        Operation::InvokeParticipant(invocation) => {
            settle(kind, Kind::Remote, operation)?;
            check_invocation(invocation)?;
            set_once(
                &mut draft.invoke,
                invocation.clone(),
                "invoke_participant (on_execute)",
            )
        }
        Operation::OnReply(callback) | Operation::OnSuccess(callback) => {
            settle(kind, Kind::Remote, operation)?;
            check_name(callback)?;
            set_once(
                &mut draft.on_reply,
                callback.clone(),
                "on_reply (on_success)",
            )
        }
        Operation::OnError(callback) => {
            settle(kind, Kind::Remote, operation)?;
            check_name(callback)?;
            set_once(&mut draft.on_error, callback.clone(), "on_error")
        }
        Operation::WithCompensation(invocation) => {
            settle(kind, Kind::Remote, operation)?;
            check_invocation(invocation)?;
            set_once(
                &mut draft.compensation,
                invocation.clone(),
                "with_compensation (on_failure)",
            )
        }
        // Minos 0.7: on a remote step, `on_execute` builds the command and `on_failure` its
        // compensation; on a local step they are the step's own callbacks.
        Operation::OnExecute(callback) if *kind == Kind::Remote => {
            check_name(callback)?;
            let invocation = Invocation {
                topic: None,
                prepare: Some(callback.clone()),
            };
            set_once(
                &mut draft.invoke,
                invocation,
                "invoke_participant (on_execute)",
            )
        }
        Operation::OnFailure(callback) if *kind == Kind::Remote => {
            check_name(callback)?;
            let invocation = Invocation {
                topic: None,
                prepare: Some(callback.clone()),
            };
            set_once(
                &mut draft.compensation,
                invocation,
                "with_compensation (on_failure)",
            )
        }
        Operation::OnExecute(callback) => {
            settle(kind, Kind::Local, operation)?;
            check_name(callback)?;
            set_once(&mut draft.on_execute, callback.clone(), "on_execute")
        }
        Operation::OnFailure(callback) => {
            settle(kind, Kind::Local, operation)?;
            check_name(callback)?;
            set_once(&mut draft.on_failure, callback.clone(), "on_failure")
        }
        Operation::IfThen { condition, saga } => {
            settle(kind, Kind::Conditional, operation)?;
            check_name(condition)?;
            check_name(saga)?;
            draft.branches.push((condition.clone(), saga.clone()));
            Ok(())
        }
        Operation::ElseThen(saga) => {
            settle(kind, Kind::Conditional, operation)?;
            check_name(saga)?;
            set_once(&mut draft.otherwise, saga.clone(), "else_then")
        }
        Operation::Step
        | Operation::RemoteStep
        | Operation::LocalStep
        | Operation::ConditionalStep
        | Operation::Commit(_) => unreachable!("handled by the caller"),
    }
}

fn finish_step(kind: Kind, draft: Draft) -> Result<Step, String> {
    match kind {
        Kind::Unknown => {
            Err("the step is empty; give it an operation such as invoke_participant(..)".into())
        }
        Kind::Remote => {
            let invoke = draft.invoke.ok_or(
                "a remote step needs a participant: call invoke_participant(\"Topic\", ..) (on_execute in Minos 0.7)",
            )?;
            Ok(Step::Remote(RemoteStep {
                invoke,
                on_reply: draft.on_reply,
                on_error: draft.on_error,
                compensation: draft.compensation,
            }))
        }
        Kind::Local => Ok(Step::Local(LocalStep {
            on_execute: draft
                .on_execute
                .ok_or("a local step needs on_execute(callback)")?,
            on_failure: draft.on_failure,
        })),
        Kind::Conditional => {
            if draft.branches.is_empty() {
                return Err(
                    "a conditional step needs at least one if_then(condition, saga)".into(),
                );
            }
            Ok(Step::Conditional(ConditionalStep {
                branches: draft.branches,
                otherwise: draft.otherwise,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Step as Kinded;
    use super::*;
    use Operation::*;

    fn invoke(topic: &str, prepare: Option<&str>) -> Operation {
        InvokeParticipant(Invocation {
            topic: Some(topic.into()),
            prepare: prepare.map(Into::into),
        })
    }

    fn parse(operations: &[Operation]) -> Result<SagaDefinition, DefinitionError> {
        SagaDefinition::parse("GET_USER_ATTEMPTS", operations, None, None)
    }

    fn problem(operations: &[Operation]) -> (Option<usize>, String) {
        let error = parse(operations).unwrap_err();
        (error.step, error.problem)
    }

    #[test]
    fn the_tutorial_saga() {
        let definition = parse(&[
            Step,
            invoke("GetUserAttempts", Some("prepare_data")),
            Commit(Some("commit_result".into())),
        ])
        .unwrap();
        assert_eq!(definition.steps.len(), 1);
        assert_eq!(definition.commit.as_deref(), Some("commit_result"));
        let Kinded::Remote(step) = &definition.steps[0] else {
            panic!("remote")
        };
        assert_eq!(step.invoke.topic.as_deref(), Some("GetUserAttempts"));
    }

    #[test]
    fn minos_07_names_mean_the_same() {
        let tutorial = parse(&[
            Step,
            invoke("A", Some("p")),
            OnReply("r".into()),
            WithCompensation(Invocation {
                topic: Some("UndoA".into()),
                prepare: None,
            }),
            Step,
            OnExecute("local".into()),
            OnFailure("undo_local".into()),
            Commit(None),
        ])
        .unwrap();
        let minos = parse(&[
            RemoteStep,
            invoke("A", Some("p")),
            OnSuccess("r".into()),
            WithCompensation(Invocation {
                topic: Some("UndoA".into()),
                prepare: None,
            }),
            LocalStep,
            OnExecute("local".into()),
            OnFailure("undo_local".into()),
            Commit(None),
        ])
        .unwrap();
        assert_eq!(tutorial, minos);
        // Minos 0.7 remote step with callbacks that pick the target themselves.
        let dynamic = parse(&[
            RemoteStep,
            OnExecute("send".into()),
            OnFailure("revert".into()),
            Commit(None),
        ])
        .unwrap();
        let Kinded::Remote(step) = &dynamic.steps[0] else {
            panic!("remote")
        };
        assert_eq!(
            step.invoke,
            Invocation {
                topic: None,
                prepare: Some("send".into())
            }
        );
        assert_eq!(
            step.compensation.as_ref().unwrap().prepare.as_deref(),
            Some("revert")
        );
    }

    #[test]
    fn conditional_steps() {
        let definition = parse(&[
            ConditionalStep,
            IfThen {
                condition: "is_premium".into(),
                saga: "PREMIUM".into(),
            },
            ElseThen("BASIC".into()),
            Commit(None),
        ])
        .unwrap();
        assert_eq!(
            definition.inner_sagas().collect::<Vec<_>>(),
            vec!["PREMIUM", "BASIC"]
        );
    }

    #[test]
    fn every_rule_is_enforced_with_the_step_named() {
        assert!(problem(&[]).1.contains("the saga is empty"));
        assert!(problem(&[Commit(None)]).1.contains("no steps"));
        assert_eq!(
            problem(&[Step, Commit(None)]),
            (
                Some(1),
                "the step is empty; give it an operation such as invoke_participant(..)".into()
            )
        );
        let (step, text) = problem(&[
            Step,
            invoke("A", None),
            Step,
            OnReply("r".into()),
            Commit(None),
        ]);
        assert_eq!(step, Some(2));
        assert!(text.contains("needs a participant"), "{text}");
        let (step, text) = problem(&[Step, invoke("A", None), invoke("B", None), Commit(None)]);
        assert_eq!(step, Some(1));
        assert!(text.contains("set twice"), "{text}");
        let (_, text) = problem(&[
            Step,
            invoke("A", None),
            OnReply("r".into()),
            OnSuccess("s".into()),
            Commit(None),
        ]);
        assert!(text.contains("set twice"), "{text}");
        assert!(
            problem(&[Step, invoke("A", None)])
                .1
                .contains("not committed")
        );
        let (step, text) = problem(&[
            Step,
            invoke("A", None),
            Commit(None),
            Step,
            invoke("B", None),
        ]);
        assert_eq!(step, Some(2));
        assert!(text.contains("after commit"), "{text}");
        assert!(
            problem(&[Step, invoke("A", None), Commit(None), Commit(None)])
                .1
                .contains("after commit")
        );
        assert!(
            problem(&[invoke("A", None), Commit(None)])
                .1
                .contains("before any step")
        );
        let (_, text) = problem(&[
            Step,
            invoke("A", None),
            IfThen {
                condition: "c".into(),
                saga: "S".into(),
            },
            Commit(None),
        ]);
        assert!(text.contains("belongs to a conditional step"), "{text}");
        assert!(
            problem(&[ConditionalStep, ElseThen("S".into()), Commit(None)])
                .1
                .contains("at least one if_then")
        );
        assert!(
            problem(&[Step, invoke("", None), Commit(None)])
                .1
                .contains("empty")
        );
        assert!(
            problem(&[LocalStep, OnFailure("f".into()), Commit(None)])
                .1
                .contains("needs on_execute")
        );
    }

    #[test]
    fn references_between_sagas() {
        let outer = SagaDefinition::parse(
            "OUTER",
            &[
                ConditionalStep,
                IfThen {
                    condition: "c".into(),
                    saga: "INNER".into(),
                },
                Commit(None),
            ],
            None,
            None,
        )
        .unwrap();
        let inner = SagaDefinition::parse(
            "INNER",
            &[Step, invoke("A", None), Commit(None)],
            None,
            None,
        )
        .unwrap();
        assert!(check_references(&[outer.clone(), inner.clone()]).is_ok());
        assert!(
            check_references(std::slice::from_ref(&outer))
                .unwrap_err()
                .problem
                .contains("does not define")
        );
        let looping = SagaDefinition::parse(
            "INNER",
            &[
                ConditionalStep,
                IfThen {
                    condition: "c".into(),
                    saga: "OUTER".into(),
                },
                Commit(None),
            ],
            None,
            None,
        )
        .unwrap();
        assert!(
            check_references(&[outer.clone(), looping])
                .unwrap_err()
                .problem
                .contains("must not loop")
        );
        assert!(
            check_references(&[inner.clone(), inner])
                .unwrap_err()
                .problem
                .contains("unique")
        );
    }
}
