//! `saga-host check COMPONENT.wasm`: explores every path of a component's sagas in the test
//! harness — each remote step's participant answering success, a business error, a system
//! error or nothing; each forward callback (`prepare`, `on_reply`, `on_error`, a local step, a
//! condition, the commit) running or failing — with the component's real callbacks, and checks
//! on every path what the README's semantics promise:
//!
//! - the saga ends: `finished` or `errored`, never stuck or `compensation-failed`;
//! - when it did not finish, every step that acted (or may have: no reply) and has a
//!   compensation is compensated exactly once, latest first, and nothing else is;
//! - a saga that did not finish leaves no aggregate event behind;
//! - a saga that failed says why, naming the step or callback that failed.
//!
//! The exploration is bounded: a step's retries repeat its first outcome (they count as one),
//! compensations' participants answer success, the clock is moved ahead from timer to timer
//! at most `MAX_TIMERS` times a path, and at most `max_paths` paths run per saga. Paths are
//! enumerated depth first by replaying the saga with a prefix of choices.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use saga_core::definition::{SagaDefinition, Step};
use saga_core::engine::{
    Callback, Context, ErrorInfo, Execution, Status, StepKind, StepStatus, Target,
};
use saga_core::message::Message;
use serde_json::Value;

use crate::harness::{Harness, Reply};
use crate::runtime::Caller;
use crate::saga::Probe;

/// A component's saga definitions, by name.
type Definitions = HashMap<String, Arc<SagaDefinition>>;

/// Timers fired on one path at most (a step's timeouts and retries, the saga's deadline).
const MAX_TIMERS: usize = 100;

/// What to check and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub component: PathBuf,
    /// One saga; none: every saga the component defines.
    pub saga: Option<String>,
    /// The context each saga starts with.
    pub context: Value,
    /// The payload a participant's SUCCESS reply carries, by topic (default `null`).
    pub replies: BTreeMap<String, Value>,
    /// Paths explored per saga at most.
    pub max_paths: usize,
}

/// One explored path.
#[derive(Debug, Clone)]
pub struct PathReport {
    pub saga: String,
    /// The choices that make the path, in order.
    pub choices: Vec<String>,
    pub status: Option<Status>,
    /// The steps compensated, in order.
    pub compensated: Vec<String>,
    pub error: Option<String>,
    /// The invariants it broke; empty: none.
    pub violations: Vec<String>,
}

/// Every path of every saga checked.
#[derive(Debug, Default)]
pub struct Report {
    pub paths: Vec<PathReport>,
    /// Sagas whose paths were cut at `max_paths`.
    pub truncated: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.paths.iter().all(|p| p.violations.is_empty())
    }

    /// The table of paths and outcomes, violations under their path.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut current = "";
        for (number, path) in self.paths.iter().enumerate() {
            if path.saga != current {
                current = &path.saga;
                let count = self.paths.iter().filter(|p| p.saga == current).count();
                out.push_str(&format!("saga {current}: {count} paths\n"));
            }
            let status = path.status.map_or("did not end", Status::as_str);
            let compensated = if path.compensated.is_empty() {
                "nothing".to_string()
            } else {
                path.compensated.join(", ")
            };
            out.push_str(&format!(
                "  {:>3} {} {}\n      ⇒ {status}; compensated: {compensated}{}\n",
                number + 1,
                if path.violations.is_empty() {
                    "ok  "
                } else {
                    "FAIL"
                },
                path.choices.join(" · "),
                path.error
                    .as_ref()
                    .map(|e| format!("; error: {e}"))
                    .unwrap_or_default(),
            ));
            for violation in &path.violations {
                out.push_str(&format!("      ✗ {violation}\n"));
            }
        }
        for saga in &self.truncated {
            out.push_str(&format!(
                "saga {saga}: stopped at the path limit; raise --max-paths to see the rest\n"
            ));
        }
        let failed = self
            .paths
            .iter()
            .filter(|p| !p.violations.is_empty())
            .count();
        out.push_str(&format!(
            "{} paths, {failed} broke an invariant\n",
            self.paths.len()
        ));
        out
    }
}

/// Runs the check.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    if !options.context.is_object() {
        bail!(
            "the saga's context (--context) must be a JSON object, not {}",
            options.context
        );
    }
    let harness = Harness::start(std::slice::from_ref(&options.component)).await?;
    let services = harness.services();
    let [service] = services.as_slice() else {
        bail!(
            "the harness loaded {} services; expected one",
            services.len()
        );
    };
    let version = harness
        .version(service)
        .ok_or_else(|| anyhow!("service {service} is not loaded"))?;
    let definitions = &version.manifest.sagas;
    let mut names: Vec<&String> = definitions.keys().collect();
    names.sort();
    if let Some(wanted) = &options.saga {
        if !definitions.contains_key(wanted) {
            let known: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            bail!(
                "service {service} has no saga named {wanted:?} (its sagas: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        names.retain(|n| *n == wanted);
    }
    if names.is_empty() {
        bail!("service {service} defines no saga; nothing to check");
    }
    let explorer = Arc::new(Explorer::new(
        definitions.values().map(Arc::as_ref),
        options.replies.clone(),
    ));
    harness.orchestrator().set_probe(explorer.clone());
    for topic in explorer.topics.iter() {
        let explorer = explorer.clone();
        harness.stub_with(topic, move |message| explorer.answer(message));
    }
    let mut report = Report::default();
    for name in names {
        let mut prefix: Vec<usize> = Vec::new();
        let mut explored = 0;
        loop {
            if explored == options.max_paths {
                report.truncated.push(name.clone());
                break;
            }
            explored += 1;
            explorer.begin(prefix.clone());
            let caller = Caller {
                service: version.clone(),
                user: None,
            };
            let path = run_path(&harness, &explorer, caller, name, definitions, options).await?;
            report.paths.push(path);
            match explorer.next_prefix() {
                Some(next) => prefix = next,
                None => break,
            }
        }
    }
    Ok(report)
}

async fn run_path(
    harness: &Harness,
    explorer: &Explorer,
    caller: Caller,
    name: &str,
    definitions: &Definitions,
    options: &Options,
) -> anyhow::Result<PathReport> {
    let events_before = harness.aggregate_events().await?;
    harness.clear_received();
    let context = Context::parse(options.context.to_string())
        .map_err(|e| anyhow!("the saga's context (--context) must be a JSON object: {e}"))?;
    let started = harness
        .orchestrator()
        .start(caller, name.to_string(), context, false)
        .await
        .map_err(|e| anyhow!("saga {name} could not start: {}", e.message))?;
    let id = started
        .id
        .parse()
        .map_err(|_| anyhow!("the saga's id {:?} is not one", started.id))?;
    harness.settle().await;
    let mut exec = harness.saga(id).await?.exec;
    for _ in 0..MAX_TIMERS {
        if exec.status.is_final() {
            break;
        }
        let Some(at) = exec.timer_at() else { break };
        let by = (at - harness.orchestrator().now()).max(0) as u64;
        harness.advance(Duration::from_millis(by + 1)).await;
        exec = harness.saga(id).await?.exec;
    }
    let compensated = explorer.compensations();
    let mut violations = Vec::new();
    let status = exec.status.is_final().then_some(exec.status);
    match exec.status {
        Status::Finished | Status::Errored => {}
        Status::CompensationFailed => violations.push(format!(
            "a compensation could not be done: {}",
            failed_compensation(&exec).unwrap_or_else(|| "no reason recorded".into())
        )),
        other => violations.push(format!(
            "the saga did not end: it is still {} after {MAX_TIMERS} timers",
            other.as_str()
        )),
    }
    if exec.status != Status::Finished {
        let expected = expected_compensations(&exec, definitions, explorer);
        // (A saga that ended compensation-failed is reported above.)
        if exec.status == Status::Errored && compensated != expected {
            violations.push(format!(
                "expected the compensations [{}], got [{}]",
                expected.join(", "),
                compensated.join(", ")
            ));
        }
        let events_after = harness.aggregate_events().await?;
        if events_after != events_before {
            violations.push(format!(
                "the saga did not finish, yet {} aggregate events it wrote remained",
                events_after - events_before
            ));
        }
        match &exec.error {
            None => violations.push("the saga failed without saying why".into()),
            Some(error) if !names_where(&error.message, &exec, definitions) => violations.push(
                format!("its error names no step or callback: {:?}", error.message),
            ),
            Some(_) => {}
        }
    } else if !compensated.is_empty() {
        violations.push(format!(
            "the saga finished, yet compensations ran: {}",
            compensated.join(", ")
        ));
    }
    Ok(PathReport {
        saga: name.to_string(),
        choices: explorer.labels(),
        status,
        compensated,
        error: exec.error.as_ref().map(|e| e.message.clone()),
        violations,
    })
}

/// Whether an error message says where the saga failed: a step number, a callback or a topic.
fn names_where(message: &str, exec: &Execution, definitions: &Definitions) -> bool {
    message.contains("step")
        || message.contains("commit")
        || exec.steps.iter().any(|record| {
            record.topic.as_deref().is_some_and(|t| message.contains(t))
                || callbacks_of(definitions.get(&record.saga).map(Arc::as_ref), record.index)
                    .iter()
                    .any(|c| message.contains(c.as_str()))
        })
}

fn callbacks_of(definition: Option<&SagaDefinition>, index: usize) -> Vec<String> {
    match definition.and_then(|d| d.steps.get(index)) {
        Some(Step::Remote(remote)) => [
            remote.invoke.prepare.clone(),
            remote.on_reply.clone(),
            remote.on_error.clone(),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Some(Step::Local(local)) => vec![local.on_execute.clone()],
        Some(Step::Conditional(conditional)) => conditional
            .branches
            .iter()
            .map(|(condition, _)| condition.clone())
            .collect(),
        None => Vec::new(),
    }
}

/// The compensations the README's rules call for, from what the participants and callbacks
/// did on this path: the steps that acted (or may have) and have one, latest first.
fn expected_compensations(
    exec: &Execution,
    definitions: &Definitions,
    explorer: &Explorer,
) -> Vec<String> {
    let decided = explorer.decided.lock().expect("explorer lock").clone();
    let mut expected = Vec::new();
    for (index, record) in exec.steps.iter().enumerate().rev() {
        match definitions
            .get(&record.saga)
            .and_then(|d| d.steps.get(record.index))
        {
            Some(Step::Remote(remote)) => {
                let acted = matches!(
                    decided.get(&Target::Step(index)),
                    Some(Reply::Success(_) | Reply::None)
                );
                if let (true, Some(compensation)) = (acted, &remote.compensation) {
                    let topic = compensation.topic.clone().unwrap_or_default();
                    expected.push(format!("step {} ({topic})", index + 1));
                }
            }
            Some(Step::Local(local)) => {
                let acted = record.status == StepStatus::Succeeded;
                if let (true, Some(on_failure)) = (acted, &local.on_failure) {
                    expected.push(format!("step {} ({on_failure})", index + 1));
                }
            }
            _ => {}
        }
    }
    expected
}

fn failed_compensation(exec: &Execution) -> Option<String> {
    exec.steps
        .iter()
        .enumerate()
        .find_map(|(index, record)| {
            let compensation = record.compensation.as_ref()?;
            let error = compensation.error.as_ref()?;
            Some(format!("step {}: {}", index + 1, error.message))
        })
        .or_else(|| exec.error.as_ref().map(|e| e.message.clone()))
}

/// One decision on a path: what was chosen among which options.
#[derive(Debug, Clone)]
struct Choice {
    label: String,
    options: Vec<String>,
    chosen: usize,
}

/// Makes the choices of one path (from a prefix, then the first option), and remembers them
/// to enumerate the next path.
struct Explorer {
    /// The command topics the sagas send, forward and compensation.
    topics: HashSet<String>,
    /// The callbacks that undo (local steps' `on_failure`, compensations' `prepare`): they run
    /// as written, never made to fail.
    undoing: HashSet<String>,
    replies: BTreeMap<String, Value>,
    prefix: Mutex<Vec<usize>>,
    trace: Mutex<Vec<Choice>>,
    /// A step's outcome, repeated on its retries.
    decided: Mutex<HashMap<Target, Reply>>,
    /// The compensations run on this path, in order: a step's compensation command (each
    /// message once: a resend keeps its id) or a local step's `on_failure`.
    undone: Mutex<Vec<String>>,
    /// The compensation commands' ids seen.
    undoing_messages: Mutex<HashSet<String>>,
}

impl Explorer {
    fn new<'a>(
        definitions: impl Iterator<Item = &'a SagaDefinition>,
        replies: BTreeMap<String, Value>,
    ) -> Explorer {
        let mut topics = HashSet::new();
        let mut undoing = HashSet::new();
        for definition in definitions {
            for step in &definition.steps {
                match step {
                    Step::Remote(remote) => {
                        topics.extend(remote.invoke.topic.clone());
                        if let Some(compensation) = &remote.compensation {
                            topics.extend(compensation.topic.clone());
                            undoing.extend(compensation.prepare.clone());
                        }
                    }
                    Step::Local(local) => undoing.extend(local.on_failure.clone()),
                    Step::Conditional(_) => {}
                }
            }
        }
        Explorer {
            topics,
            undoing,
            replies,
            prefix: Mutex::new(Vec::new()),
            trace: Mutex::new(Vec::new()),
            decided: Mutex::new(HashMap::new()),
            undone: Mutex::new(Vec::new()),
            undoing_messages: Mutex::new(HashSet::new()),
        }
    }

    fn begin(&self, prefix: Vec<usize>) {
        *self.prefix.lock().expect("explorer lock") = prefix;
        self.trace.lock().expect("explorer lock").clear();
        self.decided.lock().expect("explorer lock").clear();
        self.undone.lock().expect("explorer lock").clear();
        self.undoing_messages.lock().expect("explorer lock").clear();
    }

    fn choose(&self, label: String, options: &[&str]) -> usize {
        let mut trace = self.trace.lock().expect("explorer lock");
        let chosen = self
            .prefix
            .lock()
            .expect("explorer lock")
            .get(trace.len())
            .copied()
            .unwrap_or(0);
        trace.push(Choice {
            label,
            options: options.iter().map(|o| o.to_string()).collect(),
            chosen,
        });
        chosen
    }

    /// The prefix of the next path, depth first: the last choice that has an option left,
    /// moved to it.
    fn next_prefix(&self) -> Option<Vec<usize>> {
        let trace = self.trace.lock().expect("explorer lock");
        let last = trace
            .iter()
            .rposition(|choice| choice.chosen + 1 < choice.options.len())?;
        let mut prefix: Vec<usize> = trace[..last].iter().map(|c| c.chosen).collect();
        prefix.push(trace[last].chosen + 1);
        Some(prefix)
    }

    /// The path in words: every participant's answer, and the callbacks made to fail (those
    /// that ran as written are left out).
    fn labels(&self) -> Vec<String> {
        self.trace
            .lock()
            .expect("explorer lock")
            .iter()
            .filter(|c| !(c.label.starts_with("callback") && c.chosen == 0))
            .map(|c| format!("{}: {}", c.label, c.options[c.chosen]))
            .collect()
    }

    fn compensations(&self) -> Vec<String> {
        self.undone.lock().expect("explorer lock").clone()
    }

    /// A stubbed participant's answer: a forward command's outcome is a choice (kept for its
    /// retries); a compensation succeeds.
    fn answer(&self, message: &Message) -> Reply {
        let success = || {
            Reply::Success(
                self.replies
                    .get(&message.topic)
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        };
        let Some(target) = message.saga.and_then(|s| s.target) else {
            return success();
        };
        let Target::Step(index) = target else {
            let first = self
                .undoing_messages
                .lock()
                .expect("explorer lock")
                .insert(message.id.to_string());
            if first {
                let label = format!("step {} ({})", target.index() + 1, message.topic);
                self.undone.lock().expect("explorer lock").push(label);
            }
            return success();
        };
        if let Some(reply) = self.decided.lock().expect("explorer lock").get(&target) {
            return reply.clone();
        }
        let label = format!("step {} {}", index + 1, message.topic);
        let reply = match self.choose(
            label,
            &["success", "business error", "system error", "no reply"],
        ) {
            0 => success(),
            1 => Reply::BusinessError(format!("the checker's {} refused", message.topic)),
            2 => Reply::SystemError(format!("the checker's {} failed", message.topic)),
            _ => Reply::None,
        };
        self.decided
            .lock()
            .expect("explorer lock")
            .insert(target, reply.clone());
        reply
    }
}

impl Probe for Explorer {
    fn callback(&self, exec: &Execution, callback: &Callback) -> Result<(), ErrorInfo> {
        if self.undoing.contains(&callback.name) {
            // Compensations run latest step first: the one running is the earliest step whose
            // compensation has begun.
            let index = exec.steps.iter().position(|r| r.compensation.is_some());
            if let Some(index) = index
                && exec.steps[index].kind == StepKind::Local
            {
                let label = format!("step {} ({})", index + 1, callback.name);
                self.undone.lock().expect("explorer lock").push(label);
            }
            return Ok(());
        }
        match self.choose(format!("callback {}", callback.name), &["runs", "fails"]) {
            0 => Ok(()),
            _ => Err(ErrorInfo::new(
                500,
                format!(
                    "callback {} failed (made to fail by the checker)",
                    callback.name
                ),
            )),
        }
    }
}
