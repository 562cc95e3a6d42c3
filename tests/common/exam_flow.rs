//! The tutorial's exam flow, for any Exam and Attempt components that serve the Rust pair's
//! routes and topics (the Rust pair's own test is tests/exam_flow.rs): three submissions
//! accepted, the fourth refused leaving no write behind, ten concurrent submissions creating
//! exactly three exams.

use std::path::PathBuf;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{Host, TempDir, components_dir_of};

/// What the refusal of a fourth submission says, whichever Exam service words it.
pub const MAX_ATTEMPTS_MESSAGE: &str = "The maximum number of attempts has been exceeded.";

fn submission(user: Uuid, exam: Uuid) -> Value {
    json!({"user_uuid": user, "exam_uuid": exam})
}

/// Starts a host with the two components and runs the whole flow on it.
pub async fn exam_flow(label: &str, components: [PathBuf; 2]) {
    let dir = TempDir::new(label);
    let components = components_dir_of(&dir, &components);
    let host = Host::launch(&dir, &components, &[])
        .unwrap_or_else(|failure| panic!("the host did not start: {failure:?}"));
    three_submissions_then_a_refusal(&host).await;
    ten_concurrent_submissions_create_exactly_three_exams(&host).await;
}

async fn three_submissions_then_a_refusal(host: &Host) {
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
    assert!(
        refused.error().contains(MAX_ATTEMPTS_MESSAGE),
        "{}",
        refused.body
    );
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
    assert_eq!(after["sagas"], before["sagas"] + 1, "the errored saga");

    let listed = http
        .get(&format!("/exams?user_uuid={user}&exam_uuid={exam}"))
        .await
        .json();
    let attempts: Vec<&Value> = listed
        .as_array()
        .unwrap_or_else(|| panic!("a list: {listed}"))
        .iter()
        .map(|exam| &exam["attempt"])
        .collect();
    assert_eq!(attempts, [1, 2, 3], "oldest first: {listed}");
    let count = http.get(&format!("/attempts/{user}/{exam}")).await.json();
    assert_eq!(count["quantity"], 3, "{count}");
    assert_eq!(count["remaining"], 0, "{count}");

    let other_exam = http
        .post_json("/exams", &submission(user, Uuid::new_v4()))
        .await;
    assert_eq!(other_exam.status, 200, "{}", other_exam.body);
    assert_eq!(other_exam.json()["attempt"], 1);
}

async fn ten_concurrent_submissions_create_exactly_three_exams(host: &Host) {
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
                assert!(
                    answer.error().contains(MAX_ATTEMPTS_MESSAGE),
                    "{}",
                    answer.body
                );
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
    let count = host
        .http()
        .get(&format!("/attempts/{user}/{exam}"))
        .await
        .json();
    assert_eq!(count["quantity"], 3, "{count}");
}
