//! The test harness for services (host/src/harness) and the path checker (host/src/check.rs):
//! the Rust API on the bundled Exam and Attempt components — real and stubbed participants,
//! the clock moved through step timeouts —, `saga-host test-run` on the examples' scripts (from
//! Python's and JavaScript's own test runners too), and `saga-host check` on the Exam
//! component and on a saga whose compensation is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use saga_host::harness::{Harness, Reply};
use serde_json::{Value, json};
use uuid::Uuid;

use common::{TempDir, component, example};

const SAGA_HOST: &str = env!("CARGO_BIN_EXE_saga-host");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn submission(user: Uuid, exam: Uuid) -> Value {
    json!({"user_uuid": user, "exam_uuid": exam})
}

#[tokio::test]
async fn the_exam_flow_runs_in_the_harness_with_the_real_attempt_service() {
    let harness = Harness::start(&[component("guest_exam"), component("guest_attempt")])
        .await
        .expect("the harness starts");
    let mut services = harness.services();
    services.sort();
    assert_eq!(services, ["attempt", "exam"]);
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    for attempt in 1..=3 {
        let answer = harness
            .request("POST", "/exams", submission(user, exam))
            .await
            .expect("a response");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["attempt"], attempt);
        let uuid = answer.body["uuid"].as_str().expect("a uuid").to_string();
        let fetched = harness
            .request("GET", &format!("/exams/{uuid}"), Value::Null)
            .await
            .expect("a response");
        assert_eq!(fetched.body, answer.body);
    }
    let events = harness.aggregate_events().await.expect("events counted");
    let refused = harness
        .request("POST", "/exams", submission(user, exam))
        .await
        .expect("a response");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("The maximum number of attempts has been exceeded.")),
        "{}",
        refused.body
    );
    assert_eq!(harness.aggregate_events().await.unwrap(), events);
    // The broker command reaches the same handler without HTTP.
    let other = Uuid::new_v4();
    let commanded = harness
        .command("CreateExam", submission(other, exam))
        .await
        .expect("a reply");
    assert_eq!(commanded.status, 200, "{}", commanded.body);
    assert_eq!(commanded.body["attempt"], 1);
    assert_eq!(harness.sagas().await.unwrap().len(), 5);
    let unknown = harness.command("NoSuchTopic", json!({})).await.unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("no loaded service handles the command \"NoSuchTopic\"")
    );
}

#[tokio::test]
async fn stubbed_participants_answer_as_told() {
    let harness = Harness::start(&[component("guest_exam")])
        .await
        .expect("the harness starts");
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());

    harness.stub("GetUserAttempts", Reply::Success(json!(2)));
    let accepted = harness
        .request("POST", "/exams", submission(user, exam))
        .await
        .unwrap();
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(accepted.body["attempt"], 3);
    let received = harness.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].topic, "GetUserAttempts");
    assert_eq!(received[0].payload, json!({"user": user, "exam": exam}));

    harness.stub(
        "GetUserAttempts",
        Reply::BusinessError("no attempts left".into()),
    );
    let refused = harness
        .request("POST", "/exams", submission(user, exam))
        .await
        .unwrap();
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("no attempts left")
    );

    // A system error is retried with a new message id each time, then fails the step.
    harness.clear_received();
    harness.stub(
        "GetUserAttempts",
        Reply::SystemError("database down".into()),
    );
    let failed = harness
        .request("POST", "/exams", submission(user, exam))
        .await
        .unwrap();
    assert_eq!(failed.status, 500, "{}", failed.body);
    let sent = harness.received();
    assert_eq!(sent.len(), 3, "three attempts (--step-attempts): {sent:?}");
    assert_ne!(sent[0].message_id, sent[1].message_id);

    // No reply: the same message goes out again after each step timeout — the harness moves
    // the clock while the request waits — and then the step fails.
    harness.clear_received();
    harness.stub("GetUserAttempts", Reply::None);
    let started = std::time::Instant::now();
    let timed_out = harness
        .request("POST", "/exams", submission(user, exam))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the harness skipped the 3 × 30 s of timeouts, took {:?}",
        started.elapsed()
    );
    assert_eq!(timed_out.status, 504, "{}", timed_out.body);
    let sent = harness.received();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|m| m.message_id == sent[0].message_id));
}

#[tokio::test]
async fn advancing_the_clock_fires_a_paused_sagas_timeouts() {
    let harness = Harness::start(&[component("test_orchestrator")])
        .await
        .expect("the harness starts");
    harness.stub("Do", Reply::None);
    harness.stub("Undo", Reply::Success(json!("undone")));
    // POST /start/MAIN starts the saga and answers at once: it waits for its reply.
    let started = harness
        .request("POST", "/start/MAIN", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(started.status, 200, "{}", started.body);
    let ids = harness.sagas().await.unwrap();
    assert_eq!(ids.len(), 1);
    let saga = harness.saga(ids[0]).await.unwrap();
    assert_eq!(saga.exec.status.as_str(), "paused");
    let topics = |harness: &Harness| -> Vec<String> {
        harness.received().into_iter().map(|m| m.topic).collect()
    };
    harness.advance(Duration::from_secs(29)).await;
    assert_eq!(topics(&harness), ["Do"], "not yet due");
    harness.advance(Duration::from_secs(2)).await;
    assert_eq!(
        topics(&harness),
        ["Do", "Do"],
        "sent again after the step timeout"
    );
    harness.advance(Duration::from_secs(31)).await;
    harness.advance(Duration::from_secs(31)).await;
    let saga = harness.saga(ids[0]).await.unwrap();
    assert_eq!(
        saga.exec.status.as_str(),
        "errored",
        "{:?}",
        saga.exec.error
    );
    // The step may have acted (no reply): it was compensated, once.
    assert_eq!(topics(&harness), ["Do", "Do", "Do", "Undo"]);
}

fn test_run(script: &Path) -> (Output, Value) {
    let output = Command::new(SAGA_HOST)
        .args(["test-run"])
        .arg(script)
        .output()
        .expect("saga-host test-run runs");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, report)
}

#[test]
fn test_run_passes_the_examples_scripts() {
    example("python-tutorial", "exam");
    for script in [
        "examples/python-tutorial/tests/flow.json",
        "examples/python-tutorial/tests/stubbed-attempts.json",
        "examples/js-tutorial/tests/stubbed-attempts.json",
    ] {
        let (output, report) = test_run(&repo().join(script));
        assert!(
            output.status.success(),
            "{script}: {}\n{}",
            serde_json::to_string_pretty(&report).unwrap(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(report["passed"], true);
        assert!(report["steps"].as_array().is_some_and(|s| s.len() >= 3));
    }
}

#[test]
fn test_run_reports_a_failed_expectation_and_refuses_a_broken_script() {
    let dir = TempDir::new("test-run");
    let exam = component("guest_exam");
    let script = dir.path().join("wrong.json");
    std::fs::write(
        &script,
        json!({
            "components": [exam],
            "stubs": {"GetUserAttempts": {"reply": "success", "payload": 0}},
            "steps": [{
                "request": {"method": "POST", "path": "/exams",
                            "body": submission(Uuid::new_v4(), Uuid::new_v4())},
                "expect": {"status": 200, "body": {"attempt": 2}}
            }]
        })
        .to_string(),
    )
    .unwrap();
    let (output, report) = test_run(&script);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["passed"], false);
    assert_eq!(
        report["steps"][0]["failures"],
        json!(["body.attempt: expected 2, got 1"])
    );

    std::fs::write(
        &script,
        json!({"components": [exam], "steps": [{"advance": {"seconds": 1}, "event": {"topic": "x"}}]})
            .to_string(),
    )
    .unwrap();
    let (output, _) = test_run(&script);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("step 0 must have exactly one of request, command, event, advance, stubs"),
        "{stderr}"
    );

    std::fs::write(
        &script,
        json!({"components": ["missing.wasm"], "steps": []}).to_string(),
    )
    .unwrap();
    let (output, _) = test_run(&script);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read the component"), "{stderr}");
}

#[test]
fn the_examples_own_test_runners_use_test_run() {
    let python = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "tests",
            "-p",
            "test_*.py",
        ])
        .current_dir(repo().join("examples/python-tutorial"))
        .env("SAGA_HOST", SAGA_HOST)
        .output()
        .expect("python3 runs");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert!(String::from_utf8_lossy(&python.stderr).contains("Ran 2 tests"));
    let node = Command::new("node")
        .args(["--test", "tests/"])
        .current_dir(repo().join("examples/js-tutorial"))
        .env("SAGA_HOST", SAGA_HOST)
        .output()
        .expect("node runs");
    assert!(
        node.status.success(),
        "{}{}",
        String::from_utf8_lossy(&node.stdout),
        String::from_utf8_lossy(&node.stderr)
    );
}

fn check(component: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(SAGA_HOST)
        .arg("check")
        .arg(component)
        .args(args)
        .output()
        .expect("saga-host check runs");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn check_passes_the_exam_service() {
    let context = json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4(),
                         "answers": ["a"]})
    .to_string();
    let (code, out) = check(
        &component("guest_exam"),
        &["--context", &context, "--reply", "GetUserAttempts=0"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("saga GET_USER_ATTEMPTS: "), "{out}");
    assert!(out.contains("saga GRADED_EXAM: "), "{out}");
    assert!(out.contains(", 0 broke an invariant"), "{out}");
    // GRADED_EXAM: NotifyStudent acted, GradeExam refused → the notification is retracted.
    assert!(
        out.contains("step 3 GradeExam: business error")
            && out.contains("compensated: step 2 (RetractNotification)"),
        "{out}"
    );
}

#[test]
fn check_finds_the_wrong_compensation_and_names_its_path() {
    let component = component("test_wrong_compensation");
    let (code, out) = check(&component, &["--context", r#"{"trip": "Lisbon"}"#]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL"), "{out}");
    // A failing path: the flight booked, the hotel failing → cancelling the flight needs the
    // hotel's reservation.
    let failing: Vec<&str> = out.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(
        failing
            .iter()
            .any(|l| l.contains("step 1 ReserveFlight: success")
                && l.contains("step 2 ReserveHotel: system error")),
        "{out}"
    );
    assert!(out.contains("a compensation could not be done"), "{out}");
    // Bad input: an unknown saga, a context that is not an object.
    let (code, out) = check(&component, &["--saga", "NOPE"]);
    assert_ne!(code, Some(0));
    assert!(
        out.contains("has no saga named \"NOPE\" (its sagas: BOOK_TRIP)"),
        "{out}"
    );
    let (code, out) = check(&component, &["--context", "[1]"]);
    assert_ne!(code, Some(0));
    assert!(out.contains("must be a JSON object"), "{out}");
}
