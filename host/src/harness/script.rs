//! `saga-host test-run SCRIPT.json`: the harness driven by a JSON script, for tests of services
//! in any language. The script loads components, stubs participants, and runs steps, each
//! with what it expects:
//!
//! ```json
//! {
//!   "components": ["../exam.wasm"],
//!   "stubs": {"GetUserAttempts": {"reply": "success", "payload": 0}},
//!   "steps": [
//!     {"name": "submits", "request": {"method": "POST", "path": "/exams", "body": {…}},
//!      "expect": {"status": 201, "body": {"attempt": 1}}},
//!     {"command": {"topic": "GetUserAttempts", "payload": {…}}, "expect": {"status": 200}},
//!     {"event": {"topic": "ExamCreated", "payload": {…}}},
//!     {"stubs": {"GetUserAttempts": {"reply": "none"}}},
//!     {"advance": {"seconds": 30}, "expect": {"received": {"GetUserAttempts": 2}}}
//!   ]
//! }
//! ```
//!
//! Paths are relative to the script's directory. `expect.body` is a subset: every field it
//! names must be there with that value (arrays element by element). A string
//! `"${steps.N.body.FIELD…}"` (or `${steps.N.status}`) in a later step's path, body, payload
//! or expected body is replaced by that value of step N's answer. The report (stdout) is JSON: every step's answer
//! and what failed, and what the stubs received.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Harness, Reply, relative_to};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    components: Vec<String>,
    #[serde(default)]
    stubs: BTreeMap<String, Stub>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stub {
    reply: ReplyKind,
    /// A success's payload; an error's message (a string).
    #[serde(default)]
    payload: Value,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ReplyKind {
    Success,
    BusinessError,
    SystemError,
    None,
}

impl Stub {
    fn reply(&self) -> Reply {
        let message = || match &self.payload {
            Value::String(text) => text.clone(),
            Value::Null => "stubbed".to_string(),
            other => other.to_string(),
        };
        match self.reply {
            ReplyKind::Success => Reply::Success(self.payload.clone()),
            ReplyKind::BusinessError => Reply::BusinessError(message()),
            ReplyKind::SystemError => Reply::SystemError(message()),
            ReplyKind::None => Reply::None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    request: Option<RequestStep>,
    #[serde(default)]
    command: Option<MessageStep>,
    #[serde(default)]
    event: Option<MessageStep>,
    #[serde(default)]
    advance: Option<Advance>,
    #[serde(default)]
    stubs: Option<BTreeMap<String, Stub>>,
    #[serde(default)]
    expect: Option<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestStep {
    method: String,
    path: String,
    #[serde(default)]
    body: Value,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageStep {
    topic: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    body: Option<Value>,
    /// How many commands the stubs received on each topic so far.
    #[serde(default)]
    received: Option<BTreeMap<String, usize>>,
}

/// What a script run found.
pub struct Report {
    pub passed: bool,
    /// The JSON report.
    pub json: Value,
}

/// Reads a script; a script that is not one says where and why, before anything runs.
fn read(path: &Path) -> anyhow::Result<Script> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the script {}", path.display()))?;
    let script: Script = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a test-run script", path.display()))?;
    if script.components.is_empty() {
        bail!(
            "{}: \"components\" is empty; name the .wasm files to load",
            path.display()
        );
    }
    for (index, step) in script.steps.iter().enumerate() {
        let actions = [
            step.request.is_some(),
            step.command.is_some(),
            step.event.is_some(),
            step.advance.is_some(),
            step.stubs.is_some(),
        ];
        if actions.iter().filter(|&&a| a).count() != 1 {
            bail!(
                "{}: step {index} must have exactly one of request, command, event, advance, stubs",
                path.display()
            );
        }
        if let Some(advance) = &step.advance
            && !(advance.seconds.is_finite() && advance.seconds >= 0.0)
        {
            bail!(
                "{}: step {index}: advance.seconds must be a number of seconds ≥ 0",
                path.display()
            );
        }
    }
    Ok(script)
}

/// Runs a script. An error is a script that could not run (unreadable, a component that does
/// not load); a failed expectation is in the report.
pub async fn run(path: &Path) -> anyhow::Result<Report> {
    let script = read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let components: Vec<_> = script
        .components
        .iter()
        .map(|c| relative_to(base, c))
        .collect();
    let harness = Harness::start(&components).await?;
    for (topic, stub) in &script.stubs {
        harness.stub(topic, stub.reply());
    }
    let mut answers: Vec<Value> = Vec::new();
    let mut reports = Vec::new();
    let mut passed = true;
    for (index, step) in script.steps.iter().enumerate() {
        let answer = perform(&harness, step, &answers)
            .await
            .with_context(|| format!("step {index}"))?;
        let failures = check(&harness, step.expect.as_ref(), answer.as_ref(), &answers)
            .with_context(|| format!("step {index}"))?;
        passed &= failures.is_empty();
        let answer_json =
            answer.map_or(Value::Null, |a| json!({"status": a.status, "body": a.body}));
        reports.push(json!({
            "step": index,
            "name": step.name,
            "answer": answer_json,
            "failures": failures,
        }));
        answers.push(answer_json);
    }
    let received: Vec<Value> = harness
        .received()
        .into_iter()
        .map(|r| json!({"topic": r.topic, "payload": r.payload, "reply": format!("{:?}", r.reply)}))
        .collect();
    Ok(Report {
        passed,
        json: json!({"passed": passed, "steps": reports, "received": received}),
    })
}

async fn perform(
    harness: &Harness,
    step: &Step,
    answers: &[Value],
) -> anyhow::Result<Option<Answer>> {
    if let Some(request) = &step.request {
        let path = substitute(&Value::String(request.path.clone()), answers)?;
        let path = path.as_str().unwrap_or_default().to_string();
        let body = substitute(&request.body, answers)?;
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        return Ok(Some(
            harness
                .request_with(&request.method, &path, body, &headers)
                .await?,
        ));
    }
    if let Some(command) = &step.command {
        let payload = substitute(&command.payload, answers)?;
        return Ok(Some(harness.command(&command.topic, payload).await?));
    }
    if let Some(event) = &step.event {
        let payload = substitute(&event.payload, answers)?;
        harness.event(&event.topic, payload).await?;
        return Ok(None);
    }
    if let Some(advance) = &step.advance {
        harness
            .advance(Duration::from_secs_f64(advance.seconds))
            .await;
        return Ok(None);
    }
    for (topic, stub) in step.stubs.iter().flatten() {
        harness.stub(topic, stub.reply());
    }
    Ok(None)
}

/// What a step's answer and the stubs broke of what it expects.
fn check(
    harness: &Harness,
    expect: Option<&Expect>,
    answer: Option<&Answer>,
    answers: &[Value],
) -> anyhow::Result<Vec<String>> {
    let Some(expect) = expect else {
        return Ok(Vec::new());
    };
    let mut failures = Vec::new();
    if expect.status.is_some() || expect.body.is_some() {
        match answer {
            None => failures.push("this step has no answer to expect a status or body of".into()),
            Some(answer) => {
                if let Some(status) = expect.status
                    && status != answer.status
                {
                    failures.push(format!(
                        "expected status {status}, got {} with {}",
                        answer.status, answer.body
                    ));
                }
                if let Some(body) = &expect.body {
                    subset(
                        &substitute(body, answers)?,
                        &answer.body,
                        "body",
                        &mut failures,
                    );
                }
            }
        }
    }
    for (topic, count) in expect.received.iter().flatten() {
        let got = harness
            .received()
            .iter()
            .filter(|r| &r.topic == topic)
            .count();
        if got != *count {
            failures.push(format!(
                "expected the stub of {topic} to have received {count} commands, it received {got}"
            ));
        }
    }
    Ok(failures)
}

/// Whether `actual` has everything `expected` names, noting each difference with its path.
fn subset(expected: &Value, actual: &Value, at: &str, failures: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(fields), Value::Object(got)) => {
            for (key, value) in fields {
                match got.get(key) {
                    Some(found) => subset(value, found, &format!("{at}.{key}"), failures),
                    None => failures.push(format!("{at}.{key} is missing (expected {value})")),
                }
            }
        }
        (Value::Array(items), Value::Array(got)) if items.len() == got.len() => {
            for (index, (item, found)) in items.iter().zip(got).enumerate() {
                subset(item, found, &format!("{at}[{index}]"), failures);
            }
        }
        _ if expected == actual => {}
        _ => failures.push(format!("{at}: expected {expected}, got {actual}")),
    }
}

/// Replaces `${steps.N.…}` in the strings of `value` with earlier answers.
fn substitute(value: &Value, answers: &[Value]) -> anyhow::Result<Value> {
    Ok(match value {
        Value::String(text) => substitute_text(text, answers)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute(item, answers))
                .collect::<anyhow::Result<_>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, answers)?)))
                .collect::<anyhow::Result<_>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute_text(text: &str, answers: &[Value]) -> anyhow::Result<Value> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .ok_or_else(|| anyhow!("{text:?}: an unclosed ${{"))?;
        let value = lookup(&rest[start + 2..end], answers)?;
        if start == 0 && end == rest.len() - 1 && out.is_empty() {
            return Ok(value);
        }
        out.push_str(&rest[..start]);
        match value {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn lookup(reference: &str, answers: &[Value]) -> anyhow::Result<Value> {
    let mut parts = reference.split('.');
    let (Some("steps"), Some(index)) = (parts.next(), parts.next()) else {
        bail!("${{{reference}}}: a reference reads steps.N.body.FIELD or steps.N.status");
    };
    let index: usize = index
        .parse()
        .map_err(|_| anyhow!("${{{reference}}}: {index:?} is not a step number"))?;
    let mut value = answers
        .get(index)
        .ok_or_else(|| anyhow!("${{{reference}}}: step {index} has not run before this one"))?;
    for part in parts {
        value = match value {
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            Value::Object(fields) => fields.get(part),
            _ => None,
        }
        .ok_or_else(|| anyhow!("${{{reference}}}: step {index}'s answer has no {part:?}"))?;
    }
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_earlier_answers() {
        let answers = vec![json!({"status": 201, "body": {"id": "e1", "n": 3, "list": [7]}})];
        assert_eq!(
            substitute_text("/exams/${steps.0.body.id}", &answers).unwrap(),
            json!("/exams/e1")
        );
        assert_eq!(
            substitute_text("${steps.0.body.n}", &answers).unwrap(),
            json!(3)
        );
        assert_eq!(
            substitute_text("${steps.0.body.list.0}", &answers).unwrap(),
            json!(7)
        );
        let error = substitute_text("${steps.1.status}", &answers).unwrap_err();
        assert!(error.to_string().contains("step 1 has not run"), "{error}");
        let error = substitute_text("${steps.0.body.nope}", &answers).unwrap_err();
        assert!(error.to_string().contains("no \"nope\""), "{error}");
    }

    #[test]
    fn a_subset_names_what_differs() {
        let mut failures = Vec::new();
        subset(
            &json!({"a": 1, "b": {"c": [1, 2]}, "d": "x"}),
            &json!({"a": 1, "b": {"c": [1, 3]}, "e": 0}),
            "body",
            &mut failures,
        );
        assert_eq!(
            failures,
            vec![
                "body.b.c[1]: expected 2, got 3".to_string(),
                "body.d is missing (expected \"x\")".to_string(),
            ]
        );
    }
}
