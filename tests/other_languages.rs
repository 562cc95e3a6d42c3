//! Participants written in Python (examples/python-grader) and JavaScript
//! (examples/js-notifier), built from this repo's WIT with componentize-py and componentize-js,
//! take part in the Exam service's saga GRADED_EXAM next to the Rust services: the success path,
//! a business error (the saga compensates and the answer says why), a trap (a system error),
//! and an event the JavaScript participant handles.

mod common;

use std::time::{Duration, Instant};

use common::{Host, TempDir, component, components_dir_of, example};
use serde_json::{Value, json};
use uuid::Uuid;

fn host(dir: &TempDir, args: &[&str]) -> Host {
    let components = components_dir_of(
        dir,
        &[
            component("guest_exam"),
            component("guest_attempt"),
            example("python-grader", "grader"),
            example("js-notifier", "notifier"),
        ],
    );
    Host::launch(dir, &components, args)
        .unwrap_or_else(|failure| panic!("the host did not start: {failure:?}"))
}

async fn student(host: &Host, user: Uuid) -> Value {
    host.http().get(&format!("/students/{user}")).await.json()
}

/// Whether the newest failed saga retracted its notification: the notifier's compensation ran
/// and was confirmed (its records vanished with the saga's other writes, so its history says).
async fn newest_failure_retracted(host: &Host) -> bool {
    let failed = host
        .http()
        .get("/sagas?status=errored&limit=1")
        .await
        .json();
    let id = failed["sagas"][0]["id"]
        .as_str()
        .expect("a failed saga")
        .to_string();
    let history = host
        .http()
        .get(&format!("/sagas/{id}/history"))
        .await
        .json();
    let entries = history.as_array().expect("a history");
    let sent = entries
        .iter()
        .any(|e| e["event"] == "dispatched" && e["topic"] == "RetractNotification");
    let done = entries
        .iter()
        .filter(|e| e["event"] == "compensated" && e["done"] == true)
        .count();
    sent && done == 1
}

#[tokio::test]
async fn python_and_javascript_participants_take_part_in_the_exam_saga() {
    let dir = TempDir::new("polyglot");
    let host = host(&dir, &["--retry-delay-ms", "20"]);
    let http = host.http();
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    let submit = |answers: Value| {
        let http = http.clone();
        async move {
            http.post_json(
                "/exams/graded",
                &json!({"user_uuid": user, "exam_uuid": exam, "answers": answers}),
            )
            .await
        }
    };

    // No answer key yet: the Python grader refuses, the saga compensates the notification.
    let refused = submit(json!(["a", "b", "c", "d"])).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(
        refused.error(),
        format!(
            "An error occurred during exam submit: exam {exam} has no answer key; PUT /answer-keys/{exam} first"
        )
    );
    assert!(newest_failure_retracted(&host).await);

    let key = http
        .send(
            "PUT",
            &format!("/answer-keys/{exam}"),
            Some("application/json"),
            br#"{"answers": ["a", "b", "c", "d"]}"#.to_vec(),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.body);
    assert_eq!(key.json()["uuid"], exam.to_string());

    // The success path: graded by Python, notified by JavaScript, created by Rust.
    let graded = submit(json!(["a", "B ", "x", "d"])).await;
    assert_eq!(graded.status, 200, "{}", graded.body);
    let created = graded.json();
    assert_eq!(created["score"], 3);
    assert_eq!(created["total"], 4);
    assert_eq!(created["attempt"], 1);
    let grades = http.get(&format!("/grades/{user}")).await.json();
    assert_eq!(grades.as_array().map(Vec::len), Some(1), "{grades}");
    assert_eq!(grades[0]["passed"], true);

    // The JavaScript participant also handles the ExamCreated event (after the commit).
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = student(&host, user).await;
        if seen["exams"] == 1 || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        seen["exams"], 1,
        "the ExamCreated event was counted: {seen}"
    );
    assert_eq!(
        seen["notifications"].as_array().map(Vec::len),
        Some(1),
        "{seen}"
    );
    assert_eq!(
        seen["retractions"].as_array().map(Vec::len),
        Some(0),
        "the failed saga's notification and its retraction both vanished: {seen}"
    );

    // A business error from Python: the JavaScript notification is compensated, the attempt is
    // not counted, nothing is graded.
    let wrong = submit(json!(["a"])).await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert_eq!(
        wrong.error(),
        "An error occurred during exam submit: expected 4 answers, got 1"
    );
    let after = student(&host, user).await;
    assert_eq!(
        after["notifications"].as_array().map(Vec::len),
        Some(1),
        "the new notification vanished: {after}"
    );
    assert!(
        newest_failure_retracted(&host).await,
        "the notification was retracted"
    );
    assert_eq!(after["retractions"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        http.get(&format!("/attempts/{user}/{exam}")).await.json()["quantity"],
        1
    );
    assert_eq!(
        http.get(&format!("/grades/{user}"))
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // A Python exception is a trap: a system error, retried, then the step fails (its own
    // compensation is not sent, the earlier steps' are), with the traceback in the reason.
    let crashed = submit(json!(["crash", "b", "c", "d"])).await;
    assert_eq!(crashed.status, 500, "{}", crashed.body);
    let reason = crashed.error();
    assert!(reason.contains("component grader trapped"), "{reason}");
    assert!(
        reason.contains("RuntimeError: the grader crashed on purpose"),
        "{reason}"
    );
    assert!(reason.contains("(after 3 attempts)"), "{reason}");
    assert!(newest_failure_retracted(&host).await);
    assert_eq!(
        student(&host, user).await["notifications"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // A business error from JavaScript, over HTTP.
    let bad = http.get("/students/not-a-uuid").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error(), "user_uuid: \"not-a-uuid\" is not a UUID");
}

#[tokio::test]
async fn python_and_javascript_components_hot_load_like_rust_ones() {
    let dir = TempDir::new("polyglot-swap");
    let host = host(&dir, &["--admin-token", "t"]);
    for (service, file) in [
        ("grader", example("python-grader", "grader")),
        ("notifier", example("js-notifier", "notifier")),
    ] {
        let bytes = std::fs::read(file).unwrap();
        let deployed = host
            .http()
            .send_with(
                "PUT",
                &format!("/admin/components/{service}"),
                &[
                    ("authorization", "Bearer t"),
                    ("content-type", "application/wasm"),
                ],
                bytes,
            )
            .await;
        assert_eq!(deployed.status, 200, "{service}: {}", deployed.body);
        let version = host.http().get(&format!("/{service}/version")).await.json();
        assert_eq!(version["service"], service);
    }
    // Restarted with a warm compile cache, nothing is compiled again.
    host.stop();
    let host = Host::launch(&dir, &dir.path().join("components"), &[]).expect("the host restarts");
    assert!(!host.log().contains("component compiled"), "{}", host.log());
    assert_eq!(
        host.http().get("/grader/version").await.json()["language"],
        "python"
    );
    assert_eq!(
        host.http().get("/notifier/version").await.json()["language"],
        "javascript"
    );
}
