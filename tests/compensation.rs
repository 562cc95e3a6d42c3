//! Compensations never undo twice. The test participant keeps a course's seats the tutorial's
//! way — `+1` on `ReserveSeat`, `-1` on `ReleaseSeat`, refused when full (capacity 2) — and the
//! test orchestrator's saga ENROLL reserves a seat, then charges a fee. Whatever happens to a
//! saga — finished, a full course, a declined fee, system errors, a compensation that fails and
//! is retried, a participant that answers after the saga ended — the counter equals the seats
//! that finished sagas took, inline and through the queue: a compensation runs inside its failed
//! saga, so its `-1` vanishes with the `+1` it undoes, and a step whose participant refused gets
//! no compensation at all. Nothing else a failed saga's participant did arrives either: its
//! events and commands vanish with its writes. The same holds in a cluster, where the
//! participant runs on another host (PostgreSQL and NATS needed).

mod common;

use std::time::{Duration, Instant};

use common::{Host, Http, NatsCluster, PgDatabase, TempDir, cluster_host, component};
use serde_json::{Value, json};

const COMPONENTS: [&str; 2] = ["test_orchestrator", "test_participant"];

fn unique(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4())
}

/// Runs an enrollment and returns the execution (status, error, id).
async fn enroll(http: &Http, saga: &str, course: &str, settings: Value) -> Value {
    let mut context = json!({"key": course, "course": course});
    if let (Some(context), Some(settings)) = (context.as_object_mut(), settings.as_object()) {
        context.extend(settings.clone());
    }
    let answer = http.post_json(&format!("/run/{saga}"), &context).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// The course's counters, once the messages of finished sagas have arrived.
async fn course(http: &Http, course: &str, finished: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = http.get(&format!("/courses/{course}")).await.json();
        let heard = seen["events"] == finished && seen["notes"] == finished;
        if heard || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What happened to a saga's compensations: (topic dispatched, done) per compensation.
async fn compensations(http: &Http, execution: &Value) -> Vec<(String, bool)> {
    let id = execution["id"].as_str().expect("an execution id");
    let history = http.get(&format!("/sagas/{id}/history")).await.json();
    let entries = history.as_array().expect("a history");
    let mut topics = entries
        .iter()
        .filter(|e| e["event"] == "dispatched" && e["target"].get("compensation").is_some())
        .map(|e| e["topic"].as_str().unwrap_or_default().to_string());
    let mut seen = Vec::new();
    for entry in entries.iter().filter(|e| e["event"] == "compensated") {
        let topic = topics.next().unwrap_or_default();
        seen.push((topic, entry["done"] == true));
    }
    seen
}

/// The enrollments of `the_counter_stays_true`, started on `http`; the participant's counters
/// read on `seats`.
async fn enrollments_keep_the_counter_true(http: &Http, seats: &Http) {
    // A full course: two students take the seats; the third's ReserveSeat refuses (it wrote
    // nothing) and is not compensated.
    let full = unique("full");
    for _ in 0..2 {
        let done = enroll(http, "ENROLL", &full, json!({})).await;
        assert_eq!(done["status"], "finished", "{done}");
    }
    let third = enroll(http, "ENROLL", &full, json!({})).await;
    assert_eq!(third["status"], "errored", "{third}");
    assert_eq!(third["error"]["message"], format!("course {full} is full"));
    assert!(compensations(http, &third).await.is_empty());
    assert_eq!(
        course(seats, &full, 2).await,
        json!({"taken": 2, "events": 2, "notes": 2}),
        "two seats are taken, and only the finished sagas' messages arrived"
    );

    // A declined fee: the reservation's +1 vanishes with the saga, and so does the -1 of its
    // compensation, which did run (inside the saga, seeing the +1).
    let declined = unique("declined");
    let failed = enroll(http, "ENROLL", &declined, json!({"fee": "declined"})).await;
    assert_eq!(failed["status"], "errored", "{failed}");
    assert_eq!(
        compensations(http, &failed).await,
        [("ReleaseSeat".to_string(), true)],
        "the fee step refused: only the seat is released"
    );
    assert_eq!(
        course(seats, &declined, 0).await,
        json!({"taken": 0, "events": 0, "notes": 0})
    );

    // A compensation that fails once and is retried; and a fee step that keeps failing with a
    // system error.
    let retried = unique("retried");
    let done = enroll(http, "ENROLL", &retried, json!({})).await;
    assert_eq!(done["status"], "finished", "{done}");
    let failed = enroll(
        http,
        "ENROLL",
        &retried,
        json!({"fee": "declined", "release": "flaky:1"}),
    )
    .await;
    assert_eq!(failed["status"], "errored", "{failed}");
    let inspected = http
        .get(&format!("/sagas/{}", failed["id"].as_str().unwrap()))
        .await
        .json();
    assert_eq!(
        inspected["steps"][0]["compensation"]["sent"]["attempts"], 2,
        "{inspected}"
    );
    let broken = enroll(http, "ENROLL", &retried, json!({"fee": "system"})).await;
    assert_eq!(broken["status"], "errored", "{broken}");
    assert_eq!(
        course(seats, &retried, 1).await,
        json!({"taken": 1, "events": 1, "notes": 1})
    );

    // Any mix: the counter is the number of finished enrollments.
    let mixed = unique("mixed");
    let settings = [
        json!({"fee": "declined"}),
        json!({}),
        json!({"fee": "system", "release": "flaky:2"}),
        json!({"reserve": "flaky:1"}),
        json!({"fee": "declined", "release": "flaky:1"}),
        json!({}),
        json!({"reserve": "system"}),
    ];
    let mut finished = 0;
    for setting in settings {
        let outcome = enroll(http, "ENROLL", &mixed, setting.clone()).await;
        if outcome["status"] == "finished" {
            finished += 1;
        }
        let seen = course(seats, &mixed, finished).await;
        assert_eq!(
            seen,
            json!({"taken": finished, "events": finished, "notes": finished}),
            "after {setting}: {outcome}"
        );
    }
    assert_eq!(
        finished, 2,
        "the second and fourth enrollments finished, then it was full"
    );
}

async fn the_counter_stays_true(args: &[&str]) {
    let dir = TempDir::new("seats");
    let mut all = vec!["--retry-delay-ms", "20"];
    all.extend_from_slice(args);
    let host = Host::start_with(&dir, &COMPONENTS, &all);
    enrollments_keep_the_counter_true(host.http(), host.http()).await;
}

#[tokio::test]
async fn a_tutorial_style_counter_stays_true_when_participants_run_inline() {
    the_counter_stays_true(&[]).await;
}

#[tokio::test]
async fn a_tutorial_style_counter_stays_true_through_the_queue() {
    the_counter_stays_true(&["--inline-steps", "false"]).await;
}

#[tokio::test]
async fn a_tutorial_style_counter_stays_true_with_the_participant_on_another_host() {
    let database = PgDatabase::create("seats-cluster").await;
    let nats = NatsCluster::create("seats").await;
    let (dir_a, dir_b) = (TempDir::new("seats-a"), TempDir::new("seats-b"));
    let args = ["--retry-delay-ms", "20"];
    // The participant's host first: the orchestrator's learns what it consumes when it joins.
    let b = cluster_host(
        &dir_b,
        &[component("test_participant")],
        &database,
        &nats,
        &args,
    );
    let a = cluster_host(
        &dir_a,
        &[component("test_orchestrator")],
        &database,
        &nats,
        &args,
    );
    enrollments_keep_the_counter_true(a.http(), b.http()).await;
}

#[tokio::test]
async fn a_participant_that_answers_after_its_saga_ended_leaves_nothing() {
    let dir = TempDir::new("late-seat");
    let host = Host::start_with(&dir, &COMPONENTS, &["--inline-steps", "false"]);
    let http = host.http();
    let late = unique("late");
    // About two seconds of work before the +1: its three attempts of 300 ms run out first.
    let failed = enroll(
        http,
        "ENROLL_HURRIED",
        &late,
        json!({"reserve": "spin:3000"}),
    )
    .await;
    assert_eq!(failed["status"], "errored", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("did not reply within"),
        "{failed}"
    );
    // It may have acted: its compensation ran.
    assert_eq!(
        compensations(http, &failed).await,
        [("ReleaseSeat".to_string(), true)]
    );
    // The participant finishes its copies after the saga ended: what they wrote and sent is
    // dropped, and nothing holds the course afterwards.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        course(http, &late, 0).await,
        json!({"taken": 0, "events": 0, "notes": 0})
    );
    let done = enroll(http, "ENROLL", &late, json!({})).await;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(
        course(http, &late, 1).await,
        json!({"taken": 1, "events": 1, "notes": 1})
    );
}
