//! `Idempotency-Key` on REST commands, through the real host over HTTP with the bundled Exam
//! and Attempt services: a repeat gets the first answer and runs nothing, the same key with
//! another body is a 422, concurrent repeats run once, bad keys are refused, and the keys live
//! in PostgreSQL the same as in SQLite.

mod common;

use common::{Host, PgDatabase, TempDir, components_dir};
use serde_json::{Value, json};
use uuid::Uuid;

const BUNDLED: [&str; 2] = ["guest_exam", "guest_attempt"];

fn submission(user: Uuid, exam: Uuid) -> Vec<u8> {
    json!({"user_uuid": user, "exam_uuid": exam})
        .to_string()
        .into_bytes()
}

async fn post_exam(host: &Host, key: Option<&str>, body: Vec<u8>) -> common::Answer {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    host.http()
        .send_with("POST", "/exams", &headers, body)
        .await
}

/// A repeat gets the first answer, byte for byte, and changes nothing; a new key runs again.
async fn a_repeat_gets_the_first_answer(host: &Host, counts: impl AsyncFn() -> Vec<i64>) {
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    let key = Uuid::new_v4().to_string();
    let first = post_exam(host, Some(&key), submission(user, exam)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["attempt"], 1, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let before = counts().await;
    for _ in 0..3 {
        let repeat = post_exam(host, Some(&key), submission(user, exam)).await;
        assert_eq!(repeat.status, 200, "{}", repeat.body);
        assert_eq!(repeat.body, first.body, "the repeat gets the first answer");
        assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(counts().await, before, "a repeat ran nothing");

    let second = post_exam(
        host,
        Some(&Uuid::new_v4().to_string()),
        submission(user, exam),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(
        second.json()["attempt"],
        2,
        "a new key runs: {}",
        second.body
    );
    assert_ne!(counts().await, before);

    // The same key with another body: 422, and nothing runs.
    let before = counts().await;
    let other = post_exam(host, Some(&key), submission(user, Uuid::new_v4())).await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert!(
        other.error().contains(&key) && other.error().contains("POST /exams"),
        "{}",
        other.body
    );
    assert_eq!(counts().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_on_sqlite() {
    let dir = TempDir::new("idempotency");
    let host = Host::start(&dir, &BUNDLED);
    let counts = async || host.table_counts().await.into_values().collect::<Vec<_>>();
    a_repeat_gets_the_first_answer(&host, counts).await;

    // Ten concurrent sends of one request under one key run it once: every answer is the
    // same exam, and only one saga ran.
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    let key = Uuid::new_v4().to_string();
    let sagas_before = host.count("SELECT COUNT(*) FROM sagas").await;
    let sends = (0..10).map(|_| {
        let http = host.http().clone();
        let key = key.clone();
        tokio::spawn(async move {
            let headers = [
                ("content-type", "application/json"),
                ("idempotency-key", key.as_str()),
            ];
            http.send_with("POST", "/exams", &headers, submission(user, exam))
                .await
        })
    });
    let answers: Vec<common::Answer> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|joined| joined.expect("a send"))
        .collect();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(answers[0].json()["attempt"], 1);
    assert_eq!(
        host.count("SELECT COUNT(*) FROM sagas").await,
        sagas_before + 1,
        "one saga for ten sends"
    );
    let replayed = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 9, "one ran, nine got its answer");

    // A refusal is an answer too: its repeat gets it again without running.
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    for _ in 0..3 {
        let answer = post_exam(&host, None, submission(user, exam)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let key = Uuid::new_v4().to_string();
    let refused = post_exam(&host, Some(&key), submission(user, exam)).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let before = host.table_counts().await;
    let again = post_exam(&host, Some(&key), submission(user, exam)).await;
    assert_eq!((again.status, &again.body), (400, &refused.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(host.table_counts().await, before);

    // Bad keys: 400, saying what a key must be, and nothing stored.
    let keys_before = host.count("SELECT COUNT(*) FROM idempotency").await;
    let long = "k".repeat(256);
    for (bad, says) in [(long.as_str(), "256 bytes"), ("", "1 to 255")] {
        let answer = post_exam(&host, Some(bad), submission(user, Uuid::new_v4())).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(answer.error().contains(says), "{}", answer.body);
    }
    let mut request = hyper::Request::post(format!("http://{}/exams", host.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            submission(user, Uuid::new_v4()),
        )))
        .unwrap();
    request.headers_mut().insert(
        "idempotency-key",
        hyper::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.expect("an answer");
    assert_eq!(response.status(), 400);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("outside printable ASCII")),
        "{error}"
    );
    assert_eq!(host.table_counts().await, before);
    assert_eq!(
        host.count("SELECT COUNT(*) FROM idempotency").await,
        keys_before
    );

    // A key that reaches a query is harmless: queries run every time.
    let exam_uuid = answers[0].json()["uuid"].as_str().unwrap().to_string();
    let read = host
        .http()
        .send_with(
            "GET",
            &format!("/exams/{exam_uuid}"),
            &[("idempotency-key", "read-1")],
            Vec::new(),
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.header("idempotent-replayed"), None);
    host.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_on_postgresql() {
    let database = PgDatabase::create("idempotency").await;
    let dir = TempDir::new("idempotency-pg");
    let components = components_dir(&dir, &BUNDLED);
    let host = Host::launch(&dir, &components, &["--database", &database.url])
        .unwrap_or_else(|failure| panic!("the host did not start: {failure:?}"));
    let counts = async || {
        let mut counts = Vec::new();
        for table in ["snapshots", "events", "sagas", "queue"] {
            counts.push(
                database
                    .count(&format!("SELECT COUNT(*) FROM {table}"))
                    .await,
            );
        }
        counts
    };
    a_repeat_gets_the_first_answer(&host, counts).await;
    assert_eq!(
        database
            .count("SELECT COUNT(*) FROM idempotency WHERE status = 200")
            .await,
        2,
        "both keys answered, in the database"
    );
    host.stop();
}
