//! Faults of the servers the host depends on, made by the test on servers of its own (never the
//! machine's shared PostgreSQL and NATS): PostgreSQL restarted under a load of `POST /exams`,
//! NATS killed and started again while sagas are in flight, and the embedded SQLite database on
//! a disk that fills up. In each, a client is told clearly what is wrong while it lasts, nothing
//! acknowledged is lost or done twice, and the host recovers by itself, without a restart.
//! (A clock that jumps backwards is tested where the sagas' clock lives: host/src/saga/clock.rs.)

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sagas::{Rng, Started, check_all_ended_once, seed, start_sagas};
use common::servers::{NatsServer, Postgres};
use common::{Answer, Host, Http, TempDir, cluster_host_on, component, components_dir};
use serde_json::{Value, json};
use uuid::Uuid;

/// Clients submitting exams at once.
const CLIENTS: usize = 3;
/// How long a request may take before the test counts it as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the host may take to work again once the server it lost is back.
const RECOVERY: Duration = Duration::from_secs(60);

/// One `POST /exams` and what came of it.
struct Submitted {
    user: Uuid,
    sent: Instant,
    answered: Instant,
    answer: Result<Answer, String>,
}

impl Submitted {
    fn status(&self) -> Option<u16> {
        self.answer.as_ref().ok().map(|a| a.status)
    }

    fn describe(&self) -> String {
        match &self.answer {
            Ok(answer) => format!("{} {}", answer.status, answer.body),
            Err(problem) => problem.clone(),
        }
    }
}

/// Submits exams (each for a new user, so that none is refused for its attempts) one after
/// the other until `stop` is set, into `log`.
async fn submit_exams(http: Http, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Submitted>>>) {
    while !stop.load(Ordering::Relaxed) {
        let user = Uuid::new_v4();
        let body = json!({"user_uuid": user, "exam_uuid": Uuid::new_v4()});
        let sent = Instant::now();
        let answer = http
            .try_send_with(
                "POST",
                "/exams",
                &[("content-type", "application/json")],
                body.to_string().into_bytes(),
                REQUEST_TIMEOUT,
            )
            .await;
        let pause = match &answer {
            Ok(answer) if answer.status == 200 => Duration::ZERO,
            _ => Duration::from_millis(50),
        };
        log.lock().expect("log lock").push(Submitted {
            user,
            sent,
            answered: Instant::now(),
            answer,
        });
        tokio::time::sleep(pause).await;
    }
}

/// The Exam aggregates stored in a PostgreSQL database: uuid → user.
async fn stored_exams(url: &str) -> Vec<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test's PostgreSQL");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT uuid, data FROM snapshots WHERE service = 'exam' AND aggregate = 'Exam'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read the stored exams");
    rows.into_iter()
        .map(|(uuid, data)| {
            let data: Value = serde_json::from_str(&data).expect("an exam is JSON");
            let user = data["user_uuid"].as_str().unwrap_or_default().to_string();
            (uuid, user)
        })
        .collect()
}

async fn pg_count(url: &str, query: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test's PostgreSQL");
    sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// PostgreSQL stopped (`pg_ctl stop -m fast`) and started again under a load of `POST /exams`
/// on a cluster host: while it is down every request fails with a 503 that says the database
/// is unreachable; when it is back the host works again by itself; every exam acknowledged
/// (200) is stored, and none refused is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_under_load_answers_503_and_the_host_recovers_by_itself() {
    let mut postgres = Postgres::start();
    let nats = NatsServer::start(&[]);
    let dir = TempDir::new("pg-restart");
    let host = cluster_host_on(
        &dir,
        &[component("guest_exam"), component("guest_attempt")],
        &postgres.url(),
        &nats.url("pg-restart"),
        &[],
    );
    let pid = host.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(submit_exams(host.http().clone(), stop.clone(), log.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| postgres.stop_server());
    let stopped = Instant::now();
    // Down longer than the host waits for a connection (5 s), so that requests fail meanwhile
    // rather than wait it out.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| postgres.start_server());
    let restarted = Instant::now();

    // The host works again by itself: a request sent after the restart succeeds.
    let recovered = loop {
        let success = log
            .lock()
            .expect("log lock")
            .iter()
            .find(|s| s.sent >= restarted && s.status() == Some(200))
            .map(|s| s.answered);
        if let Some(at) = success {
            break at;
        }
        assert!(
            restarted.elapsed() < RECOVERY,
            "no request succeeded within {RECOVERY:?} of PostgreSQL's restart; host log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "the host served again {} ms after PostgreSQL was back",
        recovered.duration_since(restarted).as_millis()
    );
    // A while longer under load, to see it keeps working.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client task");
    }
    let log = std::mem::take(&mut *log.lock().expect("log lock"));

    let count = |status: u16| log.iter().filter(|s| s.status() == Some(status)).count();
    println!(
        "{} requests: {} answered 200, {} answered 503",
        log.len(),
        count(200),
        count(503)
    );
    for submitted in &log {
        match &submitted.answer {
            Ok(answer) if answer.status == 200 => {}
            Ok(answer) if answer.status == 503 => assert!(
                answer.error().contains("the database is unreachable"),
                "a 503 says the database is unreachable: {}",
                answer.body
            ),
            _ => panic!(
                "every request succeeds or gets a clear 503, not: {}\nhost log:\n{}",
                submitted.describe(),
                host.log()
            ),
        }
    }
    let while_down: Vec<&Submitted> = log
        .iter()
        .filter(|s| s.sent >= stopped && s.answered <= restarting)
        .collect();
    assert!(
        !while_down.is_empty(),
        "requests were made while PostgreSQL was down"
    );
    for submitted in &while_down {
        assert_eq!(
            submitted.status(),
            Some(503),
            "a request while PostgreSQL is down: {}",
            submitted.describe()
        );
    }
    assert!(
        log.iter()
            .any(|s| s.answered < stopped && s.status() == Some(200)),
        "requests succeeded before PostgreSQL stopped"
    );

    // Acknowledged means stored; refused means not stored.
    let stored = stored_exams(&postgres.url()).await;
    let stored_uuids: HashSet<&str> = stored.iter().map(|(uuid, _)| uuid.as_str()).collect();
    let stored_users: HashSet<&str> = stored.iter().map(|(_, user)| user.as_str()).collect();
    for submitted in &log {
        let Ok(answer) = &submitted.answer else {
            continue;
        };
        if answer.status == 200 {
            let uuid = answer.json()["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                stored_uuids.contains(uuid.as_str()),
                "exam {uuid} was acknowledged but is not stored"
            );
        } else {
            assert!(
                !stored_users.contains(submitted.user.to_string().as_str()),
                "a refused submission ({}) stored an exam",
                answer.body
            );
        }
    }
    assert_eq!(
        stored.len(),
        count(200),
        "one stored exam per acknowledged submission"
    );
    let unfinished = pg_count(
        &postgres.url(),
        "SELECT COUNT(*) FROM sagas WHERE status NOT IN ('finished', 'errored')",
    )
    .await;
    assert_eq!(unfinished, 0, "every saga ended");
    assert_eq!(host.pid(), pid);
    assert_eq!(host.http().get("/health").await.status, 200);
}

/// Clients starting sagas during the NATS test.
const SAGA_CLIENTS: usize = 3;

/// NATS killed while sagas are in flight between the orchestrator and the participant (steps
/// through the queue, not inline) and started again on the same port and store: the queued
/// work resumes, every saga ends (finished, or failed and compensated), and each participant
/// effect happened exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarting_while_sagas_are_in_flight_loses_and_doubles_nothing() {
    let seed = seed("nats restart test");
    let mut rng = Rng(seed);
    let postgres = Postgres::start();
    let mut nats = NatsServer::start(&[]);
    let dir = TempDir::new("nats-restart");
    let host = cluster_host_on(
        &dir,
        &[
            component("test_orchestrator"),
            component("test_participant"),
        ],
        &postgres.url(),
        &nats.url("nats-restart"),
        &[
            "--inline-steps",
            "false",
            "--retry-delay-ms",
            "50",
            // Long enough that the backlog NATS's absence leaves (on a machine busy with other
            // work) does not time steps out; replies lost with the server are still asked again.
            "--step-timeout-s",
            "10",
        ],
    );
    let pid = host.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..SAGA_CLIENTS)
        .map(|c| {
            let rng = Rng(rng.next() | 1);
            tokio::spawn(start_sagas(
                host.http().clone(),
                rng,
                format!("c{c}"),
                seed,
                stop.clone(),
            ))
        })
        .collect();
    let moment = Duration::from_millis(300 + rng.below(700));
    tokio::time::sleep(moment).await;
    let in_flight = pg_count(
        &postgres.url(),
        "SELECT COUNT(*) FROM sagas WHERE status NOT IN ('finished', 'errored')",
    )
    .await;
    nats.kill();
    println!(
        "NATS killed after {} ms with {in_flight} sagas unfinished",
        moment.as_millis()
    );
    // Sagas go on being started while it is down (their messages wait in the outbox), for a
    // second: enough to queue work, not so much that the backlog is a load test.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| nats.start_again());
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
    check_all_ended_once(
        host.http(),
        &started,
        seed,
        Duration::from_secs(120),
        || host.log(),
    )
    .await;

    // Nothing is left behind: the outbox drains and no saga holds staged writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let mut left = Vec::new();
        for table in [
            "queue",
            "staged_snapshots",
            "staged_events",
            "staged_messages",
        ] {
            let rows = pg_count(&postgres.url(), &format!("SELECT COUNT(*) FROM {table}")).await;
            if rows > 0 {
                left.push(format!("{table}: {rows}"));
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        left.is_empty(),
        "left behind (seed {seed}): {left:?}\nhost log:\n{}",
        host.log()
    );
    assert_eq!(host.pid(), pid, "the host was not restarted");
}

/// A small tmpfs mounted by the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "cannot mount a {size} tmpfs at {} ({}): this test needs root (CAP_SYS_ADMIN) to make \
             a small disk it can fill; run it as root rather than skipping it",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still in use (a host not yet reaped): detach it now, gone once unused.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the file system `dir` is on: writes `filler` until the disk refuses.
fn fill_disk(filler: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(filler).expect("create the filler file");
    let big = vec![0x5au8; 1 << 20];
    while file.write_all(&big).is_ok() {}
    let small = vec![0x5au8; 4096];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

async fn submit(http: &Http) -> (Uuid, Answer) {
    let user = Uuid::new_v4();
    let body = json!({"user_uuid": user, "exam_uuid": Uuid::new_v4()});
    (user, http.post_json("/exams", &body).await)
}

fn integrity_check(database: &Path) -> String {
    let output = Command::new("sqlite3")
        .arg(database)
        .arg("PRAGMA integrity_check;")
        .output()
        .expect("sqlite3 is installed (it checks the host's database file)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// The embedded defaults (SQLite, the in-process broker) with the data directory on a small
/// disk that fills up: writes answer 507 saying the disk is full and what to do, nothing is
/// half-written (the database passes its integrity check; earlier exams are intact; refused
/// submissions left nothing), and once space is freed the host works again without a restart.
#[tokio::test]
async fn sqlite_on_a_full_disk_answers_507_and_recovers_when_space_is_freed() {
    let dir = TempDir::new("full-disk");
    let components = components_dir(&dir, &["guest_exam", "guest_attempt"]);
    let disk = Tmpfs::mount(&dir.path().join("data"), "24m");
    let host = Host::launch(&dir, &components, &[])
        .unwrap_or_else(|failure| panic!("the host did not start: {failure:?}"));
    let pid = host.pid();
    let http = host.http();

    let mut earlier = Vec::new();
    for _ in 0..5 {
        let (_, answer) = submit(http).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        earlier.push(answer.json());
    }

    let filler = disk.0.join("filler");
    fill_disk(&filler);
    // Writes go on until the database needs a page the disk no longer has.
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..2_000 {
        let (user, answer) = submit(http).await;
        match answer.status {
            200 => accepted.push(answer.json()),
            _ => {
                refused.push((user, answer));
                if refused.len() == 3 {
                    break;
                }
            }
        }
    }
    println!(
        "{} submissions succeeded on the full disk before it refused",
        accepted.len()
    );
    assert!(
        !refused.is_empty(),
        "a full disk refused no submission; host log:\n{}",
        host.log()
    );
    println!("a submission on the full disk: {}", refused[0].1.body);
    for (_, answer) in &refused {
        assert_eq!(
            answer.status,
            507,
            "a full disk answers 507 Insufficient Storage: {}\nhost log:\n{}",
            answer.body,
            host.log()
        );
        let message = answer.error();
        assert!(
            message.contains("disk") && message.contains("full") && message.contains("free space"),
            "the message says the disk is full and what to do: {message}"
        );
    }

    let database = host.data.join("saga-host.db");
    let checked = integrity_check(&database);
    assert_eq!(checked, "ok", "the database on the full disk is intact");
    for exam in earlier.iter().chain(&accepted) {
        let uuid = exam["uuid"].as_str().expect("an exam uuid");
        let fetched = http.get(&format!("/exams/{uuid}")).await;
        assert_eq!(fetched.status, 200, "{}", fetched.body);
        assert_eq!(
            &fetched.json(),
            exam,
            "an exam stored before the disk filled"
        );
    }

    // Space is freed: the host works again by itself.
    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = Instant::now() + RECOVERY;
    let recovered = loop {
        let (_, answer) = submit(http).await;
        if answer.status == 200 {
            break answer.json();
        }
        assert!(
            Instant::now() < deadline,
            "the host did not recover within {RECOVERY:?} of space being freed: {}\nhost log:\n{}",
            answer.body,
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let uuid = recovered["uuid"].as_str().expect("an exam uuid");
    assert_eq!(http.get(&format!("/exams/{uuid}")).await.status, 200);
    for (user, answer) in &refused {
        let listed = http.get(&format!("/exams?user_uuid={user}")).await.json();
        assert_eq!(
            listed,
            json!([]),
            "a refused submission ({}) left nothing behind",
            answer.body
        );
    }
    assert_eq!(
        host.count("SELECT COUNT(*) FROM sagas WHERE status NOT IN ('finished', 'errored')")
            .await,
        0,
        "every saga ended"
    );
    assert_eq!(host.pid(), pid, "the host was not restarted");
    drop(host);
    assert_eq!(
        integrity_check(&database),
        "ok",
        "the database is intact at the end"
    );
    drop(disk);
}
