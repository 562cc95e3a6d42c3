//! The tutorial's flow through a real host: POST /exams runs GET_USER_ATTEMPTS against the
//! Attempt service; three submissions succeed, the fourth is refused, and the limit holds under
//! concurrency and across a restart.

mod common;

use common::{Host, TempDir};
use serde_json::json;
use uuid::Uuid;

const BUNDLED: [&str; 2] = ["guest_exam", "guest_attempt"];
const MAX_ATTEMPTS_MESSAGE: &str =
    "An error occurred during exam submit: The maximum number of attempts has been exceeded.";

fn submission(user: Uuid, exam: Uuid) -> serde_json::Value {
    json!({"user_uuid": user, "exam_uuid": exam})
}

#[tokio::test]
async fn the_tutorial_flow() {
    let dir = TempDir::new("tutorial");
    let host = Host::start(&dir, &BUNDLED);
    let http = host.http();
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());

    for attempt in 1..=3 {
        let answer = http.post_json("/exams", &submission(user, exam)).await;
        assert_eq!(answer.status, 200, "submission {attempt}: {}", answer.body);
        let created = answer.json();
        assert_eq!(created["user_uuid"], user.to_string());
        assert_eq!(created["exam_uuid"], exam.to_string());
        assert_eq!(created["attempt"], attempt);
        assert_eq!(created["version"], 1);
        let uuid = created["uuid"].as_str().expect("the exam has a uuid");
        let fetched = http.get(&format!("/exams/{uuid}")).await;
        assert_eq!(fetched.status, 200, "{}", fetched.body);
        assert_eq!(
            fetched.json(),
            created,
            "GET /exams/{{uuid}} returns the exam POST created"
        );
    }

    let before = host.table_counts().await;
    let refused = http.post_json("/exams", &submission(user, exam)).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.error(), MAX_ATTEMPTS_MESSAGE);
    let after = host.table_counts().await;
    for table in [
        "snapshots",
        "events",
        "staged_snapshots",
        "staged_events",
        "queue",
    ] {
        assert_eq!(
            before[table], after[table],
            "the refused submission changed table {table}"
        );
    }
    assert_eq!(
        after["sagas"],
        before["sagas"] + 1,
        "the refused saga is recorded as errored"
    );

    let listed = http
        .get(&format!("/exams?user_uuid={user}&exam_uuid={exam}"))
        .await
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let attempts = http.get(&format!("/attempts/{user}/{exam}")).await.json();
    assert_eq!(attempts["quantity"], 3);
    assert_eq!(attempts["remaining"], 0);

    let other_exam = Uuid::new_v4();
    let answer = http
        .post_json("/exams", &submission(user, other_exam))
        .await;
    assert_eq!(
        answer.status, 200,
        "another exam for the same user: {}",
        answer.body
    );
    assert_eq!(answer.json()["attempt"], 1);
}

/// Reads of aggregates by uuid the host has sent to the database so far (its metric).
async fn reads_by_uuid(http: &common::Http) -> u64 {
    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    metrics
        .body
        .lines()
        .find_map(|line| line.strip_prefix(r#"saga_host_storage_reads_total{kind="get"} "#))
        .map_or(0, |count| count.parse().expect("a count"))
}

/// The Attempt service reads the user's attempt and then creates or saves it: the call reads
/// it from the database once, whether it was there or not.
#[tokio::test]
async fn a_submission_reads_the_attempt_from_the_database_once() {
    let dir = TempDir::new("reads");
    let host = Host::start(&dir, &BUNDLED);
    let http = host.http();
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    for attempt in 1..=2 {
        let before = reads_by_uuid(http).await;
        let answer = http.post_json("/exams", &submission(user, exam)).await;
        assert_eq!(answer.status, 200, "submission {attempt}: {}", answer.body);
        assert_eq!(answer.json()["attempt"], attempt);
        assert_eq!(
            reads_by_uuid(http).await - before,
            1,
            "submission {attempt}: the attempt read once (get, then {})",
            if attempt == 1 { "create" } else { "save" }
        );
    }
}

#[tokio::test]
async fn ten_concurrent_submissions_create_exactly_three_exams() {
    ten_concurrent_submissions(&[]).await;
}

/// The same through the queue: every step's command and reply is a stored message.
#[tokio::test]
async fn ten_concurrent_submissions_through_the_queue_create_exactly_three_exams() {
    ten_concurrent_submissions(&["--inline-steps", "false"]).await;
}

async fn ten_concurrent_submissions(args: &[&str]) {
    let dir = TempDir::new("concurrent");
    let host = Host::start_with(&dir, &BUNDLED, args);
    for _round in 0..2 {
        let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
        let submissions: Vec<_> = (0..10)
            .map(|_| {
                let http = host.http().clone();
                tokio::spawn(async move { http.post_json("/exams", &submission(user, exam)).await })
            })
            .collect();
        let mut accepted = Vec::new();
        let mut refused = 0;
        for submission in submissions {
            let answer = submission.await.expect("the request task");
            match answer.status {
                200 => accepted.push(answer.json()["attempt"].as_u64().expect("attempt number")),
                400 => {
                    assert_eq!(answer.error(), MAX_ATTEMPTS_MESSAGE);
                    refused += 1;
                }
                other => panic!("unexpected status {other}: {}", answer.body),
            }
        }
        accepted.sort_unstable();
        assert_eq!(
            accepted,
            vec![1, 2, 3],
            "each accepted submission is a distinct attempt"
        );
        assert_eq!(refused, 7);
        let listed = host
            .http()
            .get(&format!("/exams?user_uuid={user}"))
            .await
            .json();
        assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
        let attempts = host
            .http()
            .get(&format!("/attempts/{user}/{exam}"))
            .await
            .json();
        assert_eq!(attempts["quantity"], 3);
    }
}

#[tokio::test]
async fn a_restart_keeps_exams_and_attempt_counts() {
    let dir = TempDir::new("restart");
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    let host = Host::start(&dir, &BUNDLED);
    let mut exams = Vec::new();
    for _ in 0..2 {
        let answer = host
            .http()
            .post_json("/exams", &submission(user, exam))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        exams.push(answer.json());
    }
    host.stop();

    let host =
        Host::launch(&dir, &dir.path().join("components"), &[]).expect("the host starts again");
    let http = host.http();
    for exam in &exams {
        let fetched = http
            .get(&format!("/exams/{}", exam["uuid"].as_str().unwrap()))
            .await;
        assert_eq!(fetched.status, 200, "{}", fetched.body);
        assert_eq!(&fetched.json(), exam);
    }
    assert_eq!(
        http.get(&format!("/attempts/{user}/{exam}")).await.json()["quantity"],
        2
    );
    let third = http.post_json("/exams", &submission(user, exam)).await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(third.json()["attempt"], 3);
    let fourth = http.post_json("/exams", &submission(user, exam)).await;
    assert_eq!(fourth.status, 400, "{}", fourth.body);
    assert_eq!(fourth.error(), MAX_ATTEMPTS_MESSAGE);
}

/// `--workers` sizes the runtime that serves requests (one worker per core by default); a size
/// of 0 is refused with a message that names the flag.
#[tokio::test]
async fn the_host_serves_on_the_workers_it_is_given() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (args, workers) in [(&["--workers", "3"][..], 3), (&[][..], cores)] {
        let dir = TempDir::new("workers");
        let host = Host::start_with(&dir, &BUNDLED, args);
        let answer = host
            .http()
            .post_json("/exams", &submission(Uuid::new_v4(), Uuid::new_v4()))
            .await;
        assert_eq!(answer.status, 200, "{args:?}: {}", answer.body);
        let said = format!("workers={workers}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !host
            .log()
            .lines()
            .any(|line| line.contains("worker threads") && line.contains(&said))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{args:?}: the host did not say it runs on {workers} workers:\n{}",
                host.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let dir = TempDir::new("no-workers");
    let refused = std::process::Command::new(common::host_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .output()
        .expect("saga-host runs");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("'0'") && said.contains("--workers"), "{said}");
    assert!(!dir.path().join("data").exists(), "nothing was set up");
}

/// The component `saga-bench instantiate` measures the host's cost per call with: built without
/// Rust's standard library, it imports no function (not even the WASI ones the library links
/// in; only the WIT's shared types), and the host serves it like any other service.
#[tokio::test]
async fn the_no_op_component_imports_no_function_and_is_served() {
    use wasmtime::component::types::ComponentItem;
    let engine = wasmtime::Engine::default();
    let component =
        wasmtime::component::Component::from_file(&engine, common::component("test_noop"))
            .expect("test_noop is a component");
    let mut imports = Vec::new();
    let mut functions = Vec::new();
    for (name, item) in component.component_type().imports(&engine) {
        imports.push(name.to_string());
        match item.ty {
            ComponentItem::ComponentInstance(instance) => functions.extend(
                instance
                    .exports(&engine)
                    .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                    .map(|(function, _)| format!("{name}#{function}")),
            ),
            _ => functions.push(name.to_string()),
        }
    }
    assert!(functions.is_empty(), "test_noop imports {functions:?}");
    assert_eq!(imports, ["saga:host/types@0.2.0"]);
    let dir = TempDir::new("no-op");
    let host = Host::start(&dir, &["test_noop"]);
    for _ in 0..3 {
        let answer = host.http().get("/noop").await;
        assert_eq!(answer.status, 200, "{}", answer.error());
        assert_eq!(answer.json(), serde_json::Value::Null);
    }
    host.stop();
}
