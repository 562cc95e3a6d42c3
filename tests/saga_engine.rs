//! The saga engine's semantics, through a real host running the test orchestrator and
//! participant (tests/components): the rows of the reply table end to end (the state machine's
//! unit tests in core/src/engine carry each rule in detail), compensation in reverse inside the
//! failed saga, retries and timeouts, duplicate delivery, conflicting sagas, dead letters,
//! inspection and history.

mod common;

use std::time::{Duration, Instant};

use common::{Answer, Host, TempDir};
use serde_json::{Value, json};

const COMPONENTS: [&str; 2] = ["test_orchestrator", "test_participant"];

/// What one saga run left behind.
struct Outcome {
    execution: Value,
    /// GET /sagas/{id}
    inspected: Value,
    /// The participant's ledger: effect → count.
    counts: Value,
    /// The participant's effects in the order they happened.
    journal: Vec<String>,
    /// The orchestrator's own notes (local steps, commit).
    notes: Vec<String>,
    /// GET /sagas/{id}/history
    history: Value,
}

impl Outcome {
    fn status(&self) -> &str {
        self.execution["status"].as_str().unwrap_or_default()
    }

    fn count(&self, effect: &str) -> u64 {
        self.counts[effect].as_u64().unwrap_or(0)
    }

    fn error(&self) -> String {
        self.execution["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The steps whose compensation ended, in that order, by name.
    fn compensated(&self) -> Vec<String> {
        let steps = self.inspected["steps"].as_array().expect("steps");
        self.history
            .as_array()
            .expect("a history")
            .iter()
            .filter(|entry| entry["event"] == "compensated")
            .map(|entry| {
                let step = &steps[entry["step"].as_u64().expect("a step") as usize];
                let name = match (step["saga"].as_str(), step["index"].as_u64()) {
                    (Some("MAIN"), Some(0)) => "a",
                    (Some("MAIN"), Some(1)) => "local",
                    (Some("MAIN"), Some(2)) => "b",
                    (Some("MAIN"), Some(4)) => "c",
                    (Some("BRANCH_X"), _) => "x",
                    (Some("BRANCH_Y"), _) => "y",
                    (Some(saga), Some(index)) => return format!("{saga}#{index}"),
                    _ => "?",
                };
                name.to_string()
            })
            .collect()
    }

    fn step(&self, saga: &str, index: usize) -> &Value {
        self.inspected["steps"]
            .as_array()
            .and_then(|steps| {
                steps
                    .iter()
                    .find(|s| s["saga"] == saga && s["index"] == index)
            })
            .unwrap_or_else(|| panic!("no step {saga}#{index} in {}", self.inspected))
    }
}

async fn effects(host: &Host, key: &str) -> (Value, Vec<String>) {
    let ledger = host.http().get(&format!("/effects/{key}")).await.json();
    let journal = ledger["journal"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    (ledger["counts"].clone(), journal)
}

async fn run(host: &Host, saga: &str, context: Value) -> Outcome {
    let key = context["key"]
        .as_str()
        .expect("every context has a key")
        .to_string();
    let answer = host
        .http()
        .post_json(&format!("/run/{saga}"), &context)
        .await;
    assert_eq!(answer.status, 200, "POST /run/{saga}: {}", answer.body);
    let execution = answer.json();
    let id = execution["id"]
        .as_str()
        .expect("an execution id")
        .to_string();
    let inspected = host.http().get(&format!("/sagas/{id}")).await.json();
    let (counts, journal) = effects(host, &key).await;
    let notes = serde_json::from_value(host.http().get(&format!("/notes/{key}")).await.json())
        .unwrap_or_default();
    let history = host
        .http()
        .get(&format!("/sagas/{id}/history"))
        .await
        .json();
    Outcome {
        execution,
        inspected,
        counts,
        journal,
        notes,
        history,
    }
}

fn unique(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn minos_reply_semantics_and_compensation_table() {
    let dir = TempDir::new("semantics");
    let host = Host::start_with(&dir, &COMPONENTS, &["--retry-delay-ms", "20"]);

    // Every step succeeds: on_reply results land in the context; the first true branch runs.
    let ok = run(&host, "MAIN", json!({"key": unique("ok"), "branch": "x"})).await;
    assert_eq!(ok.status(), "finished", "{}", ok.execution);
    assert_eq!(ok.execution["context"]["reply_a"]["done"], "a");
    assert_eq!(ok.execution["context"]["committed"], true);
    assert_eq!(
        ok.journal,
        ["a", "b", "x", "c"],
        "steps run in order, the branch as an inner saga"
    );
    assert_eq!(ok.notes, ["local", "commit"]);
    assert_eq!(ok.step("BRANCH_X", 0)["status"], "succeeded");
    assert_eq!(ok.inspected["status"], "finished");

    // No branch holds: else_then runs.
    let other = run(&host, "MAIN", json!({"key": unique("else"), "branch": "z"})).await;
    assert_eq!(other.status(), "finished");
    assert_eq!(other.journal, ["a", "b", "y", "c"]);

    // ERROR reply, on_error goes on: the saga continues without the refused effect.
    let went_on = run(
        &host,
        "MAIN",
        json!({"key": unique("error-on"), "behaviors": {"a": "business"}}),
    )
    .await;
    assert_eq!(went_on.status(), "finished", "{}", went_on.execution);
    assert_eq!(went_on.execution["context"]["error_a"], "a refused");
    assert_eq!(went_on.count("a"), 0);
    assert_eq!(went_on.journal, ["b", "y", "c"]);
    assert_eq!(went_on.step("MAIN", 0)["error"]["status"], 400);

    // ERROR reply, on_error fails: the step fails. The participant refused (it did nothing):
    // its step is not compensated; the steps before it that acted are, latest first. Inside the
    // failed saga: every write of it — the steps', the compensations' — vanishes.
    let refused = run(
        &host,
        "MAIN",
        json!({"key": unique("error-fail"), "behaviors": {"b": "business"}, "on_error": {"b": "fail"}}),
    )
    .await;
    assert_eq!(refused.status(), "errored", "{}", refused.execution);
    assert_eq!(refused.error(), "on_error of b refuses: b refused");
    assert_eq!(refused.compensated(), ["local", "a"], "{}", refused.history);
    assert!(refused.journal.is_empty(), "{:?}", refused.journal);
    assert!(refused.notes.is_empty(), "{:?}", refused.notes);
    assert_eq!(refused.step("MAIN", 0)["compensation"]["status"], "done");
    assert_eq!(refused.step("MAIN", 2)["compensation"], Value::Null);

    // ERROR reply without on_error: Minos's rule, the step goes on.
    let no_handler = run(
        &host,
        "MAIN",
        json!({"key": unique("error-none"), "behaviors": {"c": "business"}}),
    )
    .await;
    assert_eq!(no_handler.status(), "finished", "{}", no_handler.execution);
    assert_eq!(no_handler.count("c"), 0);
    assert_eq!(no_handler.step("MAIN", 4)["error"]["message"], "c refused");

    // SYSTEM_ERROR: retried, then the step fails without its own compensation.
    let broken = run(
        &host,
        "MAIN",
        json!({"key": unique("system"), "behaviors": {"c": "system"}}),
    )
    .await;
    assert_eq!(broken.status(), "errored", "{}", broken.execution);
    assert_eq!(broken.error(), "Do failed: c broke (after 3 attempts)");
    assert_eq!(
        broken.compensated(),
        ["y", "b", "local", "a"],
        "no compensation of c: the participant did nothing"
    );
    assert!(broken.journal.is_empty(), "{:?}", broken.journal);
    assert_eq!(broken.step("MAIN", 4)["sent"]["attempts"], 3);
    assert_eq!(broken.step("MAIN", 4)["status"], "failed");

    // A trap is a system error too.
    let trapped = run(
        &host,
        "MAIN",
        json!({"key": unique("trap"), "behaviors": {"a": "trap"}}),
    )
    .await;
    assert_eq!(trapped.status(), "errored", "{}", trapped.execution);
    assert!(trapped.error().contains("a trapped"), "{}", trapped.error());
    assert!(trapped.compensated().is_empty(), "{}", trapped.history);

    // on_reply failing after SUCCESS: the participant acted, so its step is compensated too.
    let callback = run(
        &host,
        "MAIN",
        json!({"key": unique("callback"), "fail_on_reply": ["b"]}),
    )
    .await;
    assert_eq!(callback.status(), "errored", "{}", callback.execution);
    assert_eq!(callback.error(), "on_reply of b fails on purpose");
    assert_eq!(callback.compensated(), ["b", "local", "a"]);

    // A failing local step did nothing (its writes rolled back with the call): no on_failure
    // for it; the remote step before it is compensated.
    let local = run(
        &host,
        "MAIN",
        json!({"key": unique("local"), "local_fails": true}),
    )
    .await;
    assert_eq!(local.status(), "errored", "{}", local.execution);
    assert_eq!(local.compensated(), ["a"]);
    assert!(local.notes.is_empty(), "{:?}", local.notes);

    // A failing commit: every executed step is compensated, in reverse.
    let commit = run(
        &host,
        "MAIN",
        json!({"key": unique("commit"), "commit_fails": true, "branch": "x"}),
    )
    .await;
    assert_eq!(commit.status(), "errored", "{}", commit.execution);
    assert!(
        commit.error().contains("the commit fails on purpose"),
        "{}",
        commit.error()
    );
    assert_eq!(commit.compensated(), ["c", "x", "b", "local", "a"]);
    assert!(commit.notes.is_empty(), "{:?}", commit.notes);

    // A compensation that keeps failing: the saga says so, and never that it compensated.
    let stuck = run(
        &host,
        "MAIN",
        json!({"key": unique("stuck"), "behaviors": {"c": "system"}, "undo_behaviors": {"b": "system"}}),
    )
    .await;
    assert_eq!(stuck.status(), "compensation-failed", "{}", stuck.execution);
    assert_eq!(stuck.step("MAIN", 2)["compensation"]["status"], "failed");
    assert_eq!(stuck.step("MAIN", 2)["compensation"]["sent"]["attempts"], 3);
    assert_eq!(stuck.step("MAIN", 0)["compensation"]["status"], "done");
    assert_eq!(
        stuck.compensated(),
        ["y", "b", "local", "a"],
        "the other compensations still ran"
    );

    // A flaky participant: retried with backoff until it succeeds; its effect happens once.
    let flaky = run(
        &host,
        "MAIN",
        json!({"key": unique("flaky"), "behaviors": {"b": "flaky:2"}}),
    )
    .await;
    assert_eq!(flaky.status(), "finished", "{}", flaky.execution);
    assert_eq!(flaky.count("b"), 1);
    assert_eq!(flaky.step("MAIN", 2)["sent"]["attempts"], 3);
}

/// Through the queue, with a reply deadline of 200 ms: a late participant gets the command
/// again (same message id) and does it once; one that never answers in time fails the step,
/// is compensated, and its late work is dropped rather than left holding the aggregate.
#[tokio::test]
async fn reply_timeouts_resend_once_and_late_work_is_dropped() {
    let dir = TempDir::new("timeouts");
    let host = Host::start_with(
        &dir,
        &COMPONENTS,
        &["--inline-steps", "false", "--step-attempts", "4"],
    );

    // About 0.3 s of work: late for the step timeout of 200 ms, in time for the fourth attempt.
    let late = run(
        &host,
        "SLOW",
        json!({"key": unique("late"), "behaviors": {"slow": "spin:400"}}),
    )
    .await;
    assert_eq!(late.status(), "finished", "{}", late.execution);
    assert_eq!(
        late.count("slow"),
        1,
        "delivered more than once, done once: {}",
        late.counts
    );
    let attempts = late.step("SLOW", 0)["sent"]["attempts"].as_u64().unwrap();
    assert!(
        attempts >= 2,
        "the command was sent again after the deadline: {}",
        late.inspected
    );

    let key = unique("never");
    let never = run(
        &host,
        "SLOW",
        json!({"key": key, "behaviors": {"slow": "spin:4000"}}),
    )
    .await;
    assert_eq!(never.status(), "errored", "{}", never.execution);
    assert_eq!(never.error(), "Do did not reply within 0 s, 4 attempts");
    assert_eq!(never.execution["error"]["status"], 504);
    // Its own compensation is sent: it may have done the work.
    assert_eq!(never.compensated(), ["SLOW#0"], "{}", never.history);
    // The participant finishes its first copy after the saga ended: its write is dropped, and
    // nothing holds the aggregate afterwards.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (counts, _) = effects(&host, &key).await;
    assert_eq!(
        counts["slow"],
        Value::Null,
        "late work of an ended saga must vanish: {counts}"
    );
    let again = run(
        &host,
        "SLOW",
        json!({"key": key, "behaviors": {"slow": "ok"}}),
    )
    .await;
    assert_eq!(
        again.status(),
        "finished",
        "the aggregate is free again: {}",
        again.execution
    );
    assert_eq!(again.count("slow"), 1);
}

/// Two sagas bump the same counter from the version they both read: one wins, the other fails
/// on the version check and is compensated; nothing is overwritten.
#[tokio::test]
async fn conflicting_sagas_one_wins_the_other_fails() {
    for args in [&[][..], &["--inline-steps", "false"][..]] {
        let dir = TempDir::new("conflict");
        let host = Host::start_with(&dir, &COMPONENTS, args);
        let key = unique("counter");
        let created = host
            .http()
            .post_json(&format!("/counters/{key}"), &json!(null))
            .await;
        assert_eq!(created.status, 200, "{}", created.body);
        let version = created.json()["version"].as_u64().unwrap();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let http = host.http().clone();
                let context = json!({"key": key, "expected_version": version});
                tokio::spawn(async move { http.post_json("/run/CONFLICT", &context).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for racer in racers {
            let answer = racer.await.unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
            let execution = answer.json();
            if execution["status"] == "errored" {
                assert_eq!(execution["error"]["status"], 409, "{execution}");
                assert!(
                    execution["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("is at version 2, not 1"),
                    "{execution}"
                );
            }
            statuses.push(execution["status"].as_str().unwrap().to_string());
        }
        statuses.sort();
        assert_eq!(statuses, ["errored", "finished"], "{args:?}");
        let counter = host.http().get(&format!("/counters/{key}")).await.json();
        assert_eq!(counter["value"], 1, "exactly one bump: {counter}");
        assert_eq!(counter["version"], 2);
    }
}

/// A call reads each aggregate from storage once and answers a second read from what the
/// first found, but not across a saga it waited for: that saga may have changed it.
#[tokio::test]
async fn a_call_sees_what_a_saga_it_waited_for_wrote() {
    let dir = TempDir::new("read-around");
    let host = Host::start(&dir, &COMPONENTS);
    let key = unique("named");
    let around = |host: &Host| {
        let http = host.http().clone();
        let key = key.clone();
        async move {
            let answer = http.post_json("/read-around", &json!({"key": key})).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.json()
        }
    };
    let first = around(&host).await;
    assert_eq!(
        first,
        json!({"before": null, "after": "saga", "status": "finished"}),
        "absent before the saga, created by it"
    );
    let second = around(&host).await;
    assert_eq!(
        second,
        json!({"before": "saga", "after": "saga+saga", "status": "finished"}),
        "the saga's update is seen after it"
    );
}

async fn poll<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letters_and_is_redriven() {
    let dir = TempDir::new("poison");
    let host = Host::start_with(
        &dir,
        &COMPONENTS,
        &[
            "--delivery-attempts",
            "3",
            "--retry-delay-ms",
            "20",
            "--admin-token",
            "s3cret",
        ],
    );
    let http = host.http();
    let key = unique("alarm");
    assert_eq!(
        http.post_json("/alarm", &json!({"key": key})).await.status,
        200
    );
    let letters = poll(
        "the alarm to be dead-lettered",
        Duration::from_secs(20),
        || async {
            let letters = http
                .admin("GET", "/admin/dead-letters", Some("s3cret"))
                .await
                .json();
            (letters.as_array().map(Vec::len) == Some(1)).then_some(letters)
        },
    )
    .await;
    let letter = &letters[0];
    assert_eq!(letter["topic"], "Alarm");
    assert_eq!(
        letter["payload"]["key"], key,
        "the operator sees what failed: {letter}"
    );
    assert_eq!(letter["consumer"], "participant");
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("broken until POST /switch"),
        "{letter}"
    );

    // Other sagas keep running meanwhile.
    let ok = run(&host, "MAIN", json!({"key": unique("meanwhile")})).await;
    assert_eq!(ok.status(), "finished");

    // The admin API needs the token.
    let no_token: Answer = http.admin("GET", "/admin/dead-letters", None).await;
    assert_eq!(no_token.status, 401);
    assert!(
        no_token.error().contains("Authorization: Bearer"),
        "{}",
        no_token.body
    );
    let wrong: Answer = http.admin("GET", "/admin/dead-letters", Some("nope")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error(), "the admin token is wrong");

    // Fixed, then redriven: handled once.
    assert_eq!(http.post_json("/switch", &json!(null)).await.status, 200);
    let id = letter["id"].as_i64().unwrap();
    let redrive_path = format!("/admin/dead-letters/{id}/redrive");
    let redriven = http.admin("POST", &redrive_path, Some("s3cret")).await;
    assert_eq!(redriven.status, 200, "{}", redriven.body);
    poll(
        "the redriven alarm to be handled",
        Duration::from_secs(10),
        || async {
            let (counts, _) = effects(&host, &key).await;
            (counts["alarm"] == 1).then_some(counts)
        },
    )
    .await;
    let letters = http
        .admin("GET", "/admin/dead-letters", Some("s3cret"))
        .await
        .json();
    assert_eq!(letters, json!([]));
    let again = http.admin("POST", &redrive_path, Some("s3cret")).await;
    assert_eq!(again.status, 404, "{}", again.body);
}

#[tokio::test]
async fn executions_can_be_inspected_and_started_in_the_background() {
    let dir = TempDir::new("inspect");
    let host = Host::start_with(&dir, &COMPONENTS, &["--inline-steps", "false"]);
    let http = host.http();
    let key = unique("background");
    let started = http.post_json("/start/THREE", &json!({"key": key})).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let started = started.json();
    assert_eq!(
        started["status"], "paused",
        "stored and waiting for its first reply: {started}"
    );
    let id = started["id"].as_str().unwrap().to_string();
    let finished = poll(
        "the background saga to finish",
        Duration::from_secs(10),
        || async {
            let saga = http.get(&format!("/sagas/{id}")).await.json();
            (saga["status"] == "finished").then_some(saga)
        },
    )
    .await;
    assert_eq!(finished["name"], "THREE");
    assert_eq!(finished["service"], "orchestrator");
    let steps = finished["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for step in steps {
        assert_eq!(step["status"], "succeeded", "{step}");
        assert_eq!(step["kind"], "remote");
        assert_eq!(step["topic"], "Do");
        assert!(step["finished_at"].as_i64().unwrap() >= step["started_at"].as_i64().unwrap());
    }
    let (counts, _) = effects(&host, &key).await;
    assert_eq!(counts, json!({"s1": 1, "s2": 1, "s3": 1}));

    let failed = run(
        &host,
        "MAIN",
        json!({"key": unique("listed"), "local_fails": true}),
    )
    .await;
    let listed = http.get("/sagas?status=errored").await.json()["sagas"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == failed.execution["id"]),
        "{listed}"
    );
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "errored")
    );
    let bad = http.get("/sagas?status=sideways").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().contains("unknown saga status \"sideways\""),
        "{}",
        bad.body
    );
    let missing = http.get("/sagas/no-such-saga").await;
    assert_eq!(missing.status, 404);
}
