//! A saga orchestrator for tests and benchmarks. Its sagas call the test participant's `Do`
//! (and `Undo` to compensate); how each step behaves, and whether each callback fails, comes
//! from the saga context, so that one definition covers every row of the semantics table:
//!
//! - `key`: the ledger key the participant records effects under.
//! - `behaviors`: step name → the participant's behavior for `Do` ("ok", "business", …).
//! - `undo_behaviors`: step name → its behavior for `Undo`.
//! - `on_error`: step name → "fail" to make that step's `on_error` fail (else it goes on).
//! - `fail_on_reply`: step names whose `on_reply` fails.
//! - `local_fails`, `commit_fails`: booleans; `branch`: "x" or anything else.
//!
//! `POST /run/{saga}` runs a saga with the body as its context and waits; `POST /start/{saga}`
//! starts it and returns at once; `POST /read-around` reads a note, runs `NAMED_NOTE` (which
//! writes it) and reads it again.

use std::time::Duration;

use saga_sdk::prelude::*;

#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Note {
    key: String,
    text: String,
}

impl Aggregate for Note {
    const NAME: &'static str = "Note";
    const INDEXES: &'static [&'static str] = &["key"];
}

fn setting<'a>(context: &'a SagaContext, table: &str, name: &str) -> Option<&'a str> {
    context[table].get(name).and_then(Value::as_str)
}

fn order(context: &SagaContext, name: &str, table: &str) -> Result<Value> {
    Ok(json!({
        "key": context.get::<String>("key")?,
        "name": name,
        "behavior": setting(context, table, name).unwrap_or("ok"),
    }))
}

/// A remote step to the participant: `Do name`, compensated by `Undo name`.
fn remote(saga: Saga, name: &'static str, compensated: bool, on_error: bool) -> Saga {
    let mut saga = saga
        .step()
        .invoke_participant("Do", move |context| order(context, name, "behaviors"));
    if compensated {
        saga = saga.with_compensation("Undo", move |context| {
            order(context, name, "undo_behaviors")
        });
    }
    saga = saga.on_reply(move |mut context, reply| {
        let fails = context["fail_on_reply"]
            .as_array()
            .is_some_and(|names| names.iter().any(|n| n == name));
        if fails {
            return Err(Error::system(format!(
                "on_reply of {name} fails on purpose"
            )));
        }
        context.set(&format!("reply_{name}"), reply.content::<Value>()?);
        Ok(context)
    });
    if on_error {
        saga = saga.on_error(move |mut context, reply| {
            if setting(&context, "on_error", name) == Some("fail") {
                return Err(Error::business(format!(
                    "on_error of {name} refuses: {}",
                    reply.message()
                )));
            }
            context.set(&format!("error_{name}"), reply.message());
            Ok(context)
        });
    }
    saga
}

fn write_note(context: &SagaContext, text: &str) -> Result<()> {
    Note {
        key: context.get("key")?,
        text: text.into(),
    }
    .create()?;
    Ok(())
}

/// The uuid of the note `NAMED_NOTE` writes for a key.
fn named_note(key: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("note/{key}").as_bytes())
}

/// `NAMED_NOTE`'s one step: creates the key's named note, or appends to its text.
fn write_named_note(context: SagaContext) -> Result<SagaContext> {
    let key: String = context.get("key")?;
    let uuid = named_note(&key);
    match Note::get(uuid) {
        Ok(mut note) => {
            note.text.push_str("+saga");
            note.save()?;
        }
        Err(error) if error.is_not_found() => {
            Note {
                key,
                text: "saga".into(),
            }
            .create_with_uuid(uuid)?;
        }
        Err(error) => return Err(error),
    }
    Ok(context)
}

fn local(context: SagaContext) -> Result<SagaContext> {
    write_note(&context, "local")?;
    if context["local_fails"] == true {
        return Err(Error::business("the local step fails on purpose"));
    }
    Ok(context)
}

fn local_undo(context: SagaContext) -> Result<SagaContext> {
    write_note(&context, "undo:local")?;
    Ok(context)
}

fn commit(mut context: SagaContext) -> Result<SagaContext> {
    if context["commit_fails"] == true {
        return Err(Error::system("the commit fails on purpose"));
    }
    write_note(
        &context,
        if cfg!(feature = "variant-b") {
            "commit:b"
        } else {
            "commit"
        },
    )?;
    context.set("committed", true);
    Ok(context)
}

/// Every kind of step: remote with and without `on_error`, local, conditional.
fn main_saga() -> Saga {
    let saga = remote(Saga::new(), "a", true, true)
        .local_step()
        .on_execute(local)
        .on_failure(local_undo);
    let saga = remote(saga, "b", true, true)
        .conditional_step()
        .if_then(|context| Ok(context["branch"] == "x"), "BRANCH_X")
        .else_then("BRANCH_Y");
    remote(saga, "c", true, false).commit(commit)
}

/// A chain of `steps` remote steps, named s1, s2, …, each compensated, each with an `on_error`
/// (which fails the step when the context's `on_error` says "fail").
fn chain(steps: usize) -> Saga {
    const NAMES: [&str; 9] = ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"];
    NAMES[..steps]
        .iter()
        .fold(Saga::new(), |saga, name| remote(saga, name, true, true))
        .commit_empty()
}

/// One step with a short reply deadline, for the timeout tests.
fn slow() -> Saga {
    remote(Saga::new(), "slow", true, false)
        .step_timeout(Duration::from_millis(200))
        .commit_empty()
}

/// Increments the participant's counter at the version the context names.
fn conflict() -> Saga {
    Saga::new()
        .step()
        .invoke_participant("Bump", |context| {
            Ok(json!({
                "key": context.get::<String>("key")?,
                "name": "bump",
                "expected_version": context.get::<u64>("expected_version")?,
            }))
        })
        .on_error(|_context, reply| Err(Error::with_status(reply.status, reply.message())))
        .commit_empty()
}

/// Enrolls a student: reserves a seat (released if a later step fails), then charges the fee.
/// A refusal fails its step (`on_error`). The context says how each participant behaves:
/// `reserve`, `release` (the participant's behaviors), `fee` ("ok", "declined", "system").
fn enroll(step_timeout: Option<Duration>) -> Saga {
    let saga = Saga::new()
        .step()
        .invoke_participant("ReserveSeat", |context| {
            Ok(json!({
                "course": context.get::<String>("course")?,
                "behavior": context["reserve"].as_str().unwrap_or("ok"),
            }))
        })
        .with_compensation("ReleaseSeat", |context| {
            Ok(json!({
                "course": context.get::<String>("course")?,
                "behavior": context["release"].as_str().unwrap_or("ok"),
            }))
        })
        .on_error(|_context, reply| Err(Error::business(reply.message())))
        .step()
        .invoke_participant("Do", |context| {
            let behavior = match context["fee"].as_str() {
                Some("declined") => "business",
                Some("system") => "system",
                _ => "noop",
            };
            Ok(json!({
                "key": context.get::<String>("course")?,
                "name": "fee",
                "behavior": behavior,
            }))
        })
        .with_compensation("Undo", |context| {
            Ok(json!({"key": context.get::<String>("course")?, "name": "fee", "behavior": "noop"}))
        })
        .on_error(|_context, reply| Err(Error::business(reply.message())))
        .commit_empty();
    match step_timeout {
        Some(timeout) => saga.step_timeout(timeout),
        None => saga,
    }
}

fn status_name(status: SagaStatus) -> &'static str {
    match status {
        SagaStatus::Created => "created",
        SagaStatus::Running => "running",
        SagaStatus::Paused => "paused",
        SagaStatus::Compensating => "compensating",
        SagaStatus::Finished => "finished",
        SagaStatus::Errored => "errored",
        SagaStatus::CompensationFailed => "compensation-failed",
    }
}

fn execution_json(execution: SagaExecution) -> Value {
    json!({
        "id": execution.uuid,
        "status": status_name(execution.status),
        "context": execution.context,
        "error": execution.error.map(|e| json!({"status": e.status, "message": e.message})),
    })
}

fn run(request: Request) -> Result<Response> {
    let context: SagaContext = request.content()?;
    let execution = SagaManager::run(request.param("saga")?, context)?;
    Ok(Response::new(execution_json(execution)))
}

fn start(request: Request) -> Result<Response> {
    let context: SagaContext = request.content()?;
    let execution = SagaManager::run_in_background(request.param("saga")?, context)?;
    Ok(Response::new(execution_json(execution)))
}

/// The key's named note before and after `NAMED_NOTE` ran, as this one call reads it: a call
/// sees what a saga it waited for wrote.
fn read_around(request: Request) -> Result<Response> {
    let context: SagaContext = request.content()?;
    let uuid = named_note(&context.get::<String>("key")?);
    let text = || match Note::get(uuid) {
        Ok(note) => Ok(Some(note.text.clone())),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    };
    let before = text()?;
    let execution = SagaManager::run("NAMED_NOTE", context)?;
    let after = text()?;
    Ok(Response::new(json!({
        "before": before,
        "after": after,
        "status": status_name(execution.status),
    })))
}

fn notes(request: Request) -> Result<Response> {
    let key = request.param("key")?;
    let notes: Vec<String> = Note::find_ordered(
        Condition::equal("key", key),
        &[Ordering::asc("created_at")],
        None,
    )?
    .into_iter()
    .map(|note| note.data.text)
    .collect();
    Ok(Response::new(notes))
}

fn service() -> Service<Orchestrator> {
    Service::new("orchestrator")
        .aggregate::<Note>()
        .rest_command(Method::Post, "/run/{saga}", run)
        .rest_command(Method::Post, "/start/{saga}", start)
        .rest_command(Method::Post, "/read-around", read_around)
        .rest_query(Method::Get, "/notes/{key}", notes)
        .saga("MAIN", main_saga())
        .saga(
            "BRANCH_X",
            remote(Saga::new(), "x", true, false).commit_empty(),
        )
        .saga(
            "BRANCH_Y",
            remote(Saga::new(), "y", true, false).commit_empty(),
        )
        .saga(
            "NAMED_NOTE",
            Saga::new()
                .local_step()
                .on_execute(write_named_note)
                .commit_empty(),
        )
        .saga("ONE", chain(1))
        .saga("THREE", chain(3))
        .saga("NINE", chain(9))
        .saga("SLOW", slow())
        .saga("CONFLICT", conflict())
        .saga("ENROLL", enroll(None))
        .saga("ENROLL_HURRIED", enroll(Some(Duration::from_millis(300))))
        .saga(
            "SLOW_COMMIT",
            remote(Saga::new(), "slow", true, false).commit(commit),
        )
}

saga_sdk::export_orchestrator!(service);
