//! Several hosts on one PostgreSQL database and one NATS JetStream: any host serves the routes
//! of the services it loads and reaches the services other hosts load; when a host dies, the
//! others finish its sagas, each participant effect still exactly once. These tests need the
//! local PostgreSQL and NATS servers and say how to start them when they are missing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::sagas::{Rng, Started, check_all_ended_once, seed, start_sagas};
use common::servers::NatsServer;
use common::{NatsCluster, PgDatabase, TempDir, cluster_host, component, example};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn the_exam_flow_runs_on_two_hosts_where_only_one_loads_attempt() {
    let database = PgDatabase::create("exam-cluster").await;
    let nats = NatsCluster::create("exam").await;
    let (dir_a, dir_b) = (TempDir::new("host-a"), TempDir::new("host-b"));
    // A also loads the JavaScript notifier, which counts the ExamCreated events.
    let a_components = [
        component("guest_exam"),
        component("guest_attempt"),
        example("js-notifier", "notifier"),
    ];
    let a = cluster_host(&dir_a, &a_components, &database, &nats, &[]);
    let b = cluster_host(&dir_b, &[component("guest_exam")], &database, &nats, &[]);
    assert_eq!(
        b.http().get("/health").await.json()["services"],
        json!(["exam"])
    );

    // B has no Attempt service: its sagas ask A's through NATS; and the ExamCreated events of
    // B's exams reach A's notifier.
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    let submission = json!({"user_uuid": user, "exam_uuid": exam});
    for (n, host) in [&b, &a, &b].into_iter().enumerate() {
        let answer = host.http().post_json("/exams", &submission).await;
        assert_eq!(answer.status, 200, "submission {n}: {}", answer.body);
        assert_eq!(answer.json()["attempt"], n + 1, "{}", answer.body);
    }
    let refused = b.http().post_json("/exams", &submission).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("maximum number of attempts"),
        "{}",
        refused.body
    );
    for host in [&a, &b] {
        let listed = host
            .http()
            .get(&format!("/exams?user_uuid={user}"))
            .await
            .json();
        assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = a.http().get(&format!("/students/{user}")).await.json();
        if seen["exams"] == 3 || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        seen["exams"], 3,
        "every ExamCreated event reached the notifier: {seen}"
    );
    // The Attempt routes are A's alone.
    assert_eq!(
        b.http()
            .get(&format!("/attempts/{user}/{exam}"))
            .await
            .status,
        404
    );
    assert_eq!(
        a.http()
            .get(&format!("/attempts/{user}/{exam}"))
            .await
            .json()["quantity"],
        3
    );

    // Concurrent submissions for one user and exam, spread over both hosts: exactly three win.
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    let submission = json!({"user_uuid": user, "exam_uuid": exam});
    let tries: Vec<_> = (0..10)
        .map(|n| {
            let http = if n % 2 == 0 { a.http() } else { b.http() }.clone();
            let submission = submission.clone();
            tokio::spawn(async move { http.post_json("/exams", &submission).await })
        })
        .collect();
    let mut accepted = Vec::new();
    for attempt in tries {
        let answer = attempt.await.expect("a submission");
        match answer.status {
            200 => accepted.push(answer.json()["attempt"].as_u64().expect("attempt")),
            400 => assert!(
                answer.error().contains("maximum number of attempts"),
                "{}",
                answer.body
            ),
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    accepted.sort_unstable();
    assert_eq!(accepted, vec![1, 2, 3], "exactly three submissions win");
    assert_eq!(
        database
            .count("SELECT COUNT(*) FROM sagas WHERE status NOT IN ('finished', 'errored')")
            .await,
        0,
        "every saga ended"
    );
}

/// Clients starting sagas on each host.
const CLIENTS_PER_HOST: usize = 2;

#[tokio::test]
async fn when_one_of_two_hosts_is_killed_the_other_finishes_every_saga_once() {
    let seed = seed("cluster kill test");
    let mut rng = Rng(seed);
    let database = PgDatabase::create("kill-cluster").await;
    let nats = NatsCluster::create("kill").await;
    let components = [
        component("test_orchestrator"),
        component("test_participant"),
    ];
    // Steps go through NATS (not inline), so that work is in flight between the hosts.
    let args = [
        "--inline-steps",
        "false",
        "--retry-delay-ms",
        "50",
        "--step-timeout-s",
        "3",
    ];
    let (dir_a, dir_b) = (TempDir::new("host-a"), TempDir::new("host-b"));
    let a = cluster_host(&dir_a, &components, &database, &nats, &args);
    let b = cluster_host(&dir_b, &components, &database, &nats, &args);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [&a, &b]
        .into_iter()
        .enumerate()
        .flat_map(|(h, host)| (0..CLIENTS_PER_HOST).map(move |c| (h, c, host.http().clone())))
        .map(|(h, c, http)| {
            let rng = Rng(rng.next() | 1);
            tokio::spawn(start_sagas(
                http,
                rng,
                format!("h{h}-c{c}"),
                seed,
                stop.clone(),
            ))
        })
        .collect();
    let moment = Duration::from_millis(300 + rng.below(700));
    tokio::time::sleep(moment).await;
    a.kill();
    println!("host A killed after {} ms", moment.as_millis());
    // B keeps taking sagas for a while after A died.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut started: Vec<Started> = Vec::new();
    for client in clients {
        started.extend(client.await.expect("a client task"));
    }
    let accepted = started.iter().filter(|s| s.accepted.is_some()).count();
    println!("{accepted} of {} starts were acknowledged", started.len());
    assert!(
        accepted > 10,
        "too few sagas started to test anything: {accepted}"
    );
    check_all_ended_once(b.http(), &started, seed, Duration::from_secs(120), || {
        b.log()
    })
    .await;
    assert!(
        b.log()
            .contains("took over the sagas of a host that stopped"),
        "B took over A's sagas:\n{}",
        b.log()
    );
}

/// Credentials in the broker URL reach NATS; wrong ones stop the start with NATS's refusal and
/// without the password in the message.
#[tokio::test]
async fn a_nats_server_that_wants_credentials_gets_them_from_the_url() {
    // A NATS server of the test's own that wants a user and password.
    let nats = NatsServer::start(&["--user", "saga", "--pass", "s3cr3t-pw"]);
    let database = PgDatabase::create("nats-auth").await;
    let dir = TempDir::new("nats-auth-host");
    let components = common::components_dir(&dir, &["guest_exam", "guest_attempt"]);
    let broker = format!("nats://saga:s3cr3t-pw@127.0.0.1:{}/auth", nats.port);
    let host = common::Host::launch(
        &dir,
        &components,
        &["--database", &database.url, "--broker", &broker],
    )
    .unwrap_or_else(|f| panic!("the host did not start with the right credentials: {f:?}"));
    let submission = json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()});
    let answer = host.http().post_json("/exams", &submission).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    host.stop();

    let wrong = format!("nats://saga:not-it@127.0.0.1:{}/auth", nats.port);
    let dir = TempDir::new("nats-auth-wrong");
    let components = common::components_dir(&dir, &["guest_exam", "guest_attempt"]);
    let failure = common::Host::launch(
        &dir,
        &components,
        &["--database", &database.url, "--broker", &wrong],
    )
    .err()
    .expect("a wrong password stops the start");
    assert!(
        failure
            .stderr
            .contains("cannot connect to NATS at nats://127.0.0.1:"),
        "{}",
        failure.stderr
    );
    assert!(!failure.stderr.contains("not-it"), "{}", failure.stderr);
}
