//! Hostile components and hostile input: every misbehaving call of the probe component is
//! stopped or refused with an error that names the cause (and the limit to change), changes
//! nothing, and never stops the Exam flow running at the same time in the same host. A missing
//! or invalid component stops the host at start with the file and the cause named.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Host, Http, TempDir, components_dir};
use serde_json::json;
use uuid::Uuid;

const COMPONENTS: &[&str] = &["guest_exam", "guest_attempt", "test_probe"];

async fn submit_exam(http: &Http) -> common::Answer {
    http.post_json(
        "/exams",
        &json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()}),
    )
    .await
}

/// Submits exams one after the other until stopped; every one must succeed.
struct ExamTraffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl ExamTraffic {
    fn start(http: &Http) -> ExamTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (http, stop) = (http.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = submit_exam(&http).await;
                    outcomes.push(match answer.status {
                        200 => "ok".to_string(),
                        status => format!("{status}: {}", answer.body),
                    });
                }
                outcomes
            })
        };
        ExamTraffic { stop, task }
    }

    /// Stops the traffic and checks that every exam submitted meanwhile was created.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let outcomes = self.task.await.expect("the exam traffic task");
        let failed: Vec<&String> = outcomes.iter().filter(|o| *o != "ok").collect();
        assert!(
            failed.is_empty(),
            "exam submissions failed next to the hostile calls: {failed:?}"
        );
        assert!(!outcomes.is_empty(), "no exam was submitted meanwhile");
        outcomes.len()
    }
}

/// Asserts a 500 whose error contains every one of `expected`.
async fn assert_stopped(http: &Http, method: &str, path: &str, expected: &[&str]) {
    let answer = http.send(method, path, None, Vec::new()).await;
    assert_eq!(answer.status, 500, "{method} {path}: {}", answer.body);
    let error = answer.error();
    for part in expected {
        assert!(
            error.contains(part),
            "{method} {path}: {part:?} not in {error}"
        );
    }
}

#[tokio::test]
async fn every_hostile_call_is_stopped_with_a_clear_error_while_exams_keep_flowing() {
    let dir = TempDir::new("hostile");
    let host = Host::start_with(
        &dir,
        COMPONENTS,
        &[
            "--cpu-ms",
            "300",
            "--memory-mb",
            "64",
            "--component-limits",
            "probe:max-host-calls=5000,max-log-lines=20",
        ],
    );
    let http = host.http();
    let traffic = ExamTraffic::start(http);

    assert_stopped(
        http,
        "GET",
        "/probe/trap",
        &["component probe trapped", "the probe panics on purpose"],
    )
    .await;
    assert_stopped(
        http,
        "GET",
        "/probe/loop",
        &[
            "component probe exceeded a limit",
            "more than 300 ms of CPU time",
            "cpu-ms",
        ],
    )
    .await;
    assert_stopped(
        http,
        "GET",
        "/probe/memory",
        &[
            "exceeded a limit",
            "beyond the limit of 64 MiB",
            "memory-mb",
        ],
    )
    .await;
    assert_stopped(
        http,
        "GET",
        "/probe/huge?mb=8",
        &[
            "exceeded a limit",
            "the limit is 4194304 bytes",
            "max-response-kb",
        ],
    )
    .await;
    assert_stopped(
        http,
        "GET",
        "/probe/recursion",
        &["component probe trapped", "call stack exhausted"],
    )
    .await;
    // A flood of writes: refused at the 1001st, and the call's error discards the 1000 before.
    assert_stopped(
        http,
        "POST",
        "/probe/flood?count=1000000",
        &["a call may write at most 1000 aggregates", "max-writes"],
    )
    .await;
    // The same flood ignoring the refusals: stopped by the number of host calls.
    assert_stopped(
        http,
        "POST",
        "/probe/flood?count=1000000&ignore-errors=true",
        &[
            "exceeded a limit",
            "more than 5000 host calls",
            "max-host-calls",
        ],
    )
    .await;
    assert_stopped(
        http,
        "GET",
        "/probe/host-calls",
        &["more than 5000 host calls"],
    )
    .await;
    assert_stopped(
        http,
        "GET",
        "/probe/stderr",
        &["exceeded a limit", "more than 64 KiB to its standard error"],
    )
    .await;

    // Log lines past the limit are dropped, with one warning.
    let logged = http.get("/probe/log?lines=1000").await;
    assert_eq!(logged.status, 200, "{}", logged.body);

    traffic.finish().await;
    assert_eq!(
        host.count("SELECT COUNT(*) FROM snapshots WHERE service = 'probe'")
            .await,
        0,
        "the hostile calls stored nothing"
    );
    assert_eq!(
        host.count("SELECT COUNT(*) FROM sagas WHERE status = 'finished'")
            .await,
        host.count("SELECT COUNT(*) FROM sagas").await,
        "every exam saga finished"
    );
    let log = host.log();
    let lines = log.matches("probe log line").count();
    assert_eq!(lines, 20, "at most max-log-lines lines are logged");
    assert!(
        log.contains("the call wrote more than 20 log lines; the rest are dropped"),
        "{log}"
    );
    assert_eq!(
        http.get("/probe/noop").await.status,
        200,
        "the probe itself still serves"
    );
}

#[tokio::test]
async fn a_call_that_ignores_a_limit_refusal_fails_whole_and_keeps_nothing() {
    let dir = TempDir::new("ignored-refusal");
    let host = Host::start_with(
        &dir,
        COMPONENTS,
        &[
            "--component-limits",
            "probe:max-writes=10,max-messages=10,max-find=5,max-value-kb=1",
        ],
    );
    let http = host.http();
    // Eight aggregates, more than max-find lets one find scan.
    let seeded = http
        .send("POST", "/probe/flood?count=8", None, Vec::new())
        .await;
    assert_eq!(seeded.status, 200, "{}", seeded.body);
    let before = host.table_counts().await;
    for (limit, refusal) in [
        ("max-writes", "a call may write at most 10 aggregates"),
        ("max-messages", "a call may send at most 10 messages"),
        ("max-find", "matches more than 5 Junk aggregates"),
        ("max-value-kb", "the limit is 1024 (limit max-value-kb)"),
    ] {
        let path = format!("/probe/ignore-refusal?limit={limit}");
        assert_stopped(
            http,
            "POST",
            &path,
            &["component probe exceeded a limit", refusal, limit],
        )
        .await;
    }
    // Let any message that had been sent arrive before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        host.table_counts().await,
        before,
        "the refused calls' own write and message were taken back"
    );
    assert_eq!(
        host.count("SELECT COUNT(*) FROM consumed WHERE consumer = 'probe'")
            .await,
        0,
        "no ProbeNoop command was sent"
    );
    let log = host.log();
    assert!(
        log.contains("(limit max-writes)") && log.contains("component call failed"),
        "the refusal is in the log:\n{log}"
    );
}

#[tokio::test]
async fn a_quiet_host_returns_the_memory_of_finished_calls() {
    let dir = TempDir::new("memory-returned");
    let host = Host::start(&dir, COMPONENTS);
    let http = host.http();
    for _ in 0..20 {
        assert_eq!(http.get("/probe/noop").await.status, 200);
    }
    let idle = host.rss_bytes();
    // Each call fills its memory up to the default limit of 256 MiB and is stopped.
    let mut after = Vec::new();
    for _ in 0..10 {
        assert_stopped(http, "GET", "/probe/memory", &["(limit memory-mb)"]).await;
        after.push(host.rss_bytes() >> 20);
    }
    // What may stay: the part of a pool slot kept resident for the next call (2 MiB), for the
    // few slots a quiet host uses, and the host's own allocations: far below one call's 256 MiB.
    let bound = (idle >> 20) + 64;
    eprintln!(
        "RSS idle {} MiB; after each memory-limit call: {after:?} MiB",
        idle >> 20
    );
    assert!(
        after.iter().all(|&mib| mib <= bound),
        "idle {} MiB; after each of 10 calls that used 256 MiB: {after:?} MiB (bound {bound} MiB)",
        idle >> 20
    );
}

/// The SDK's allocator (guest-sdk/src/arena.rs) frees nothing within its arena; past it, what a
/// call frees is reused, so a call may churn through far more than its memory limit.
#[tokio::test]
async fn a_call_reuses_the_memory_it_frees_once_past_its_arena() {
    let dir = TempDir::new("churn");
    let host = Host::start_with(&dir, COMPONENTS, &["--memory-mb", "16"]);
    let answer = host.http().get("/probe/churn?mb=256").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let churned = answer.json();
    assert_eq!(churned["kept"], 256 * 16, "{churned}");
    let memory = churned["memory_mib"].as_u64().expect("memory_mib");
    assert!(
        memory <= 8,
        "256 MiB churned through 64 KiB buffers grew the memory to {memory} MiB"
    );
}

#[tokio::test]
async fn a_component_sees_no_files_network_environment_clock_or_other_services() {
    let dir = TempDir::new("isolation");
    let host = Host::start(&dir, COMPONENTS);
    let http = host.http();
    let created = submit_exam(http).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let exam = created.json()["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no exam uuid in {}", created.body))
        .to_string();

    // Another service's aggregates do not exist for it, by uuid or by search.
    let foreign = http.get(&format!("/probe/foreign/{exam}")).await;
    assert_eq!(foreign.status, 200, "{}", foreign.body);
    let foreign = foreign.json();
    for call in ["get", "find"] {
        let outcome = foreign[call].as_str().unwrap_or_default();
        assert!(
            outcome.contains("service probe declares no aggregate type \\\"Exam\\\""),
            "{call}: {outcome}"
        );
        assert!(
            !outcome.contains("user_uuid"),
            "{call} leaked the exam: {outcome}"
        );
    }

    // It cannot speak for other services.
    let before = host.table_counts().await;
    let impersonated = http
        .send("POST", "/probe/impersonate", None, Vec::new())
        .await;
    assert_eq!(impersonated.status, 200, "{}", impersonated.body);
    let impersonated = impersonated.json();
    let publish = impersonated["publish"].as_str().unwrap_or_default();
    assert!(
        publish.contains("ExamCreated reports an aggregate of service exam"),
        "{publish}"
    );
    let send = impersonated["send"].as_str().unwrap_or_default();
    assert!(
        send.contains(
            "the reply topic \\\"GetUserAttempts\\\" is not a broker-command of service probe"
        ),
        "{send}"
    );
    assert_eq!(host.table_counts().await, before, "nothing was sent");

    // No filesystem, network, environment or clock without configuration.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let port = listener.local_addr().expect("its address").port();
    let escape = http.get(&format!("/probe/escape?port={port}")).await;
    assert_eq!(escape.status, 200, "{}", escape.body);
    let escape = escape.json();
    assert!(
        escape["files"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Err"),
        "{escape}"
    );
    assert!(
        escape["passwd"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Err"),
        "{escape}"
    );
    assert!(
        escape["network"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Err"),
        "{escape}"
    );
    assert_eq!(escape["environment"], 0, "{escape}");
    assert_eq!(
        escape["unix_seconds"], 0,
        "the clock stands at the epoch: {escape}"
    );
    listener.set_nonblocking(true).expect("non-blocking");
    assert!(
        listener.accept().is_err(),
        "the component reached the network"
    );
}

#[tokio::test]
async fn configuration_grants_the_clock_to_one_component() {
    let dir = TempDir::new("clock");
    let host = Host::start_with(
        &dir,
        COMPONENTS,
        &["--component-limits", "probe:clock=true"],
    );
    let escape = host.http().get("/probe/escape").await;
    assert_eq!(escape.status, 200, "{}", escape.body);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    let seen = escape.json()["unix_seconds"].as_u64().unwrap_or_default();
    assert!(
        now.abs_diff(seen) < 60,
        "the component sees {seen}, the host {now}"
    );
}

#[tokio::test]
async fn a_storm_of_failing_calls_waits_its_turn_and_does_not_starve_other_services() {
    let dir = TempDir::new("storm");
    let host = Host::start_with(
        &dir,
        COMPONENTS,
        &[
            "--cpu-ms",
            "50",
            "--component-limits",
            "probe:concurrency=2",
        ],
    );
    let http = host.http();
    let traffic = ExamTraffic::start(http);
    // Twelve endless loops at once, two at a time: six rounds of at least 50 ms of CPU each
    // (longer in wall time: while exams are in flight, a long call gets spare CPU only).
    let started = Instant::now();
    let storm: Vec<_> = (0..24)
        .map(|n| {
            let http = http.clone();
            tokio::spawn(async move {
                let path = if n % 2 == 0 {
                    "/probe/loop"
                } else {
                    "/probe/trap"
                };
                http.get(path).await
            })
        })
        .collect();
    for call in storm {
        let answer = call.await.expect("a storm call");
        assert_eq!(answer.status, 500, "{}", answer.body);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290),
        "12 loops of 50 ms ran two at a time, yet took only {elapsed:?}"
    );
    let exams = traffic.finish().await;
    assert!(exams >= 2, "exams kept flowing during the storm: {exams}");
}

#[tokio::test]
async fn a_request_past_the_request_timeout_gets_a_504() {
    let dir = TempDir::new("request-timeout");
    let host = Host::start_with(
        &dir,
        COMPONENTS,
        &["--cpu-ms", "20000", "--request-timeout-s", "1"],
    );
    let started = Instant::now();
    let answer = host.http().get("/probe/loop").await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert!(
        answer
            .error()
            .contains("longer than 1 s (--request-timeout-s)"),
        "{}",
        answer.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let created = submit_exam(host.http()).await;
    assert_eq!(created.status, 200, "{}", created.body);
}

#[tokio::test]
async fn payloads_and_tokens_stay_out_of_the_log() {
    let dir = TempDir::new("quiet-log");
    // With the access log on: its lines name the request, never its body or headers.
    let host = Host::start_with(
        &dir,
        COMPONENTS,
        &["--admin-token", "s3cret-admin-token", "--access-log"],
    );
    let http = host.http();
    let user = Uuid::new_v4();
    let created = submit_exam(http).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let secret_body =
        json!({"user_uuid": user, "exam_uuid": "not-a-uuid", "password": "hunter2-body"});
    assert_eq!(http.post_json("/exams", &secret_body).await.status, 400);
    let refused = http
        .admin("GET", "/admin/components", Some("wrong-guess-token"))
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let listed = http
        .admin("GET", "/admin/components", Some("s3cret-admin-token"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_stopped(http, "GET", "/probe/trap", &["trapped"]).await;
    let log = host.log();
    assert!(
        log.contains("saga_host::access") && log.contains("answered"),
        "the access log is on:\n{log}"
    );
    for secret in [
        "hunter2-body",
        "s3cret-admin-token",
        "wrong-guess-token",
        &user.to_string(),
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

#[test]
fn a_missing_components_directory_stops_the_start() {
    let dir = TempDir::new("no-components");
    let missing = dir.path().join("nowhere");
    let failure = Host::launch(&dir, &missing, &[])
        .err()
        .expect("the host must not start");
    assert!(!failure.status.expect("it exits").success());
    assert!(
        failure.stderr.contains("components directory"),
        "{}",
        failure.stderr
    );
    assert!(failure.stderr.contains("nowhere"), "{}", failure.stderr);
}

#[test]
fn bad_component_limits_stop_the_start_naming_the_setting() {
    let dir = TempDir::new("bad-limits");
    let components = components_dir(&dir, &["guest_exam"]);
    let failure = Host::launch(&dir, &components, &["--component-limits", "exam:speed=11"])
        .err()
        .expect("the host must not start");
    assert!(!failure.status.expect("it exits").success());
    assert!(
        failure.stderr.contains("unknown limit \"speed\""),
        "{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains("memory-mb"),
        "the known limits are listed: {}",
        failure.stderr
    );
}

#[test]
fn an_invalid_component_stops_the_start_naming_the_file_and_the_cause() {
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "garbage.wasm",
            b"this is not wasm",
            "it is not a WebAssembly binary",
        ),
        // A core module, not a component.
        (
            "module.wasm",
            b"\0asm\x01\0\0\0",
            "it is not a valid WebAssembly component",
        ),
        ("empty.wasm", b"", "it is not a WebAssembly binary"),
    ];
    for (file, bytes, cause) in cases {
        let dir = TempDir::new("invalid-component");
        let components = components_dir(&dir, &["guest_exam"]);
        std::fs::write(components.join(file), bytes).unwrap();
        let failure = Host::launch(&dir, &components, &[])
            .err()
            .expect("the host must not start");
        assert!(!failure.status.expect("it exits").success(), "{file}");
        assert!(failure.stderr.contains(file), "{file}: {}", failure.stderr);
        assert!(failure.stderr.contains(cause), "{file}: {}", failure.stderr);
    }
}
