//! Hot-loading: a new version of a service replaces the old one while the host serves, with no
//! failed request; a bad one is refused with the reason and the old one keeps serving; a saga
//! finishes on the version it started with, across a restart too; the admin API needs its
//! token; a restart with unchanged components does not compile them again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Answer, Host, TempDir, component};
use serde_json::{Value, json};
use uuid::Uuid;

const TOKEN: &str = "let-me-deploy";

async fn put_component(host: &Host, name: &str, bytes: Vec<u8>, token: Option<&str>) -> Answer {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/wasm")];
    if let Some(authorization) = authorization.as_deref() {
        headers.push(("authorization", authorization));
    }
    host.http()
        .send_with("PUT", &format!("/admin/components/{name}"), &headers, bytes)
        .await
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).expect("read a component")
}

async fn submit(host: &Host) -> Answer {
    host.http()
        .post_json(
            "/exams",
            &json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()}),
        )
        .await
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
async fn swapping_the_exam_service_ten_times_under_load_fails_no_request() {
    let dir = TempDir::new("swap");
    let host = Arc::new(Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &["--admin-token", TOKEN],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (served_a, served_b, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::<String>::new())),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop, served_a, served_b, failed) = (
                host.clone(),
                stop.clone(),
                served_a.clone(),
                served_b.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = submit(&host).await;
                    if answer.status != 200 {
                        failed
                            .lock()
                            .unwrap()
                            .push(format!("{}: {}", answer.status, answer.body));
                    } else if answer.json()["build"] == "b" {
                        served_b.fetch_add(1, Ordering::Relaxed);
                    } else {
                        served_a.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let builds = [wasm("guest_exam_variant_b"), wasm("guest_exam")];
    for swap in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let deployed = put_component(&host, "exam", builds[swap % 2].clone(), Some(TOKEN)).await;
        assert_eq!(deployed.status, 200, "swap {swap}: {}", deployed.body);
        assert_eq!(deployed.json()["service"], "exam");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} requests failed during the swaps: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let (a, b) = (
        served_a.load(Ordering::Relaxed),
        served_b.load(Ordering::Relaxed),
    );
    assert!(a > 0 && b > 0, "both versions answered: a {a}, b {b}");
    // The last deploy was the default build.
    assert_eq!(submit(&host).await.json().get("build"), None);
}

#[tokio::test]
async fn bad_updates_are_refused_with_the_reason_and_the_old_version_keeps_serving() {
    let dir = TempDir::new("refused");
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &["--admin-token", TOKEN],
    );
    let digest_before = {
        let listed = host
            .http()
            .admin("GET", "/admin/components", Some(TOKEN))
            .await
            .json();
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "exam")
            .unwrap()["digest"]
            .clone()
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "not wasm",
            "exam",
            b"#!/bin/sh\necho hello".to_vec(),
            400,
            "it is not a WebAssembly binary",
        ),
        (
            "a component for another world",
            "exam",
            wasm("test_not_a_service"),
            400,
            "it does not export saga:host/service@0.2.0",
        ),
        (
            "a component for an older contract",
            "exam",
            wasm("test_old_wit"),
            400,
            "it was built for saga:host@0.1.0, and this host implements saga:host@0.2.0; rebuild it",
        ),
        (
            "a broken saga definition",
            "broken",
            wasm("test_broken_saga"),
            400,
            "saga \"UNFINISHED\": the saga is not committed",
        ),
        (
            "a route conflict",
            "hijack",
            wasm("test_hijack"),
            409,
            "route POST /exams of service hijack conflicts with route POST /exams of service exam",
        ),
        (
            "a name that is not the component's",
            "attempt",
            wasm("guest_exam"),
            400,
            "the component describes itself as service \"exam\", not \"attempt\"",
        ),
    ];
    for (case, name, bytes, status, reason) in cases {
        let answer = put_component(&host, name, bytes, Some(TOKEN)).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(
            answer.error().contains(reason),
            "{case}: {:?} should say {reason:?}",
            answer.error()
        );
        let served = submit(&host).await;
        assert_eq!(
            served.status, 200,
            "{case}: the old version keeps serving: {}",
            served.body
        );
        assert_eq!(served.json().get("build"), None, "{case}");
    }
    let listed = host
        .http()
        .admin("GET", "/admin/components", Some(TOKEN))
        .await
        .json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["attempt", "exam"], "nothing refused was installed");
    let exam = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "exam")
        .unwrap();
    assert_eq!(exam["digest"], digest_before);
    assert!(
        exam["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "route POST /exams"),
        "{exam}"
    );
    assert_eq!(exam["sagas"], json!(["GET_USER_ATTEMPTS", "GRADED_EXAM"]));
}

#[tokio::test]
async fn the_components_directory_is_watched() {
    let dir = TempDir::new("watch");
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &["--watch-ms", "100"],
    );
    let components = dir.path().join("components");

    // A broken file is refused (logged) and changes nothing.
    std::fs::write(components.join("zz_broken.wasm"), b"not wasm at all").unwrap();
    poll(
        "the refusal to be logged",
        Duration::from_secs(10),
        || async { host.log().contains("zz_broken.wasm").then_some(Value::Null) },
    )
    .await;
    assert!(
        host.log().contains("it is not a WebAssembly binary"),
        "{}",
        host.log()
    );
    assert_eq!(submit(&host).await.status, 200);

    // A changed file is deployed.
    std::fs::copy(
        component("guest_exam_variant_b"),
        components.join("guest_exam.wasm"),
    )
    .unwrap();
    poll(
        "the new build to serve",
        Duration::from_secs(10),
        || async { (submit(&host).await.json()["build"] == "b").then_some(Value::Null) },
    )
    .await;

    // A removed file takes its service away.
    let user = Uuid::new_v4();
    assert_eq!(
        host.http()
            .get(&format!("/attempts/{user}/{user}"))
            .await
            .status,
        200
    );
    std::fs::remove_file(components.join("guest_attempt.wasm")).unwrap();
    poll(
        "the attempt service to go",
        Duration::from_secs(10),
        || async {
            (host
                .http()
                .get(&format!("/attempts/{user}/{user}"))
                .await
                .status
                == 404)
                .then_some(Value::Null)
        },
    )
    .await;
}

/// A saga started on version 1 finishes on version 1 after version 2 is deployed — also when
/// the host is killed and restarted meanwhile — while new sagas run on version 2; version 1 is
/// unloaded once no saga needs it.
#[tokio::test]
async fn a_saga_finishes_on_the_version_it_started_with() {
    let dir = TempDir::new("pinned");
    let args = ["--admin-token", TOKEN, "--inline-steps", "false"];
    let host = Host::start_with(&dir, &["test_orchestrator", "test_participant"], &args);
    let notes = |host: &Host, key: String| {
        let http = host.http().clone();
        async move { http.get(&format!("/notes/{key}")).await.json() }
    };
    let versions = |host: &Host| {
        let http = host.http().clone();
        async move {
            let listed = http
                .admin("GET", "/admin/components", Some(TOKEN))
                .await
                .json();
            listed
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "orchestrator")
                .unwrap()["versions"]
                .clone()
        }
    };

    let slow =
        |key: &str, spin: u32| json!({"key": key, "behaviors": {"slow": format!("spin:{spin}")}});
    let key = format!("pinned-{}", Uuid::new_v4());
    let started = host
        .http()
        .post_json("/start/SLOW_COMMIT", &slow(&key, 1500))
        .await;
    assert_eq!(started.json()["status"], "paused", "{}", started.body);
    let deployed = put_component(
        &host,
        "orchestrator",
        wasm("test_orchestrator_variant_b"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let listed = versions(&host).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "the old version stays for its saga: {listed}"
    );
    let old = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["current"] == false)
        .unwrap();
    assert_eq!(old["running_sagas"], 1, "{listed}");
    poll(
        "the pinned saga to commit",
        Duration::from_secs(20),
        || async { (notes(&host, key.clone()).await == json!(["commit"])).then_some(Value::Null) },
    )
    .await;
    let new_key = format!("new-{}", Uuid::new_v4());
    let run = host
        .http()
        .post_json("/run/SLOW_COMMIT", &slow(&new_key, 1))
        .await;
    assert_eq!(run.json()["status"], "finished", "{}", run.body);
    assert_eq!(
        notes(&host, new_key).await,
        json!(["commit:b"]),
        "new sagas run on the new version"
    );
    poll(
        "the old version to be unloaded",
        Duration::from_secs(10),
        || async {
            let listed = versions(&host).await;
            (listed.as_array().unwrap().len() == 1).then_some(listed)
        },
    )
    .await;

    // The same across a kill: version 2 is current and in the components directory; the saga
    // started on version 1 resumes on it after the restart (its bytes were kept).
    let key = format!("restart-{}", Uuid::new_v4());
    let deployed = put_component(
        &host,
        "orchestrator",
        wasm("test_orchestrator"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let started = host
        .http()
        .post_json("/start/SLOW_COMMIT", &slow(&key, 2000))
        .await;
    assert_eq!(started.json()["status"], "paused", "{}", started.body);
    let deployed = put_component(
        &host,
        "orchestrator",
        wasm("test_orchestrator_variant_b"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    host.kill();
    let host =
        Host::launch(&dir, &dir.path().join("components"), &args).expect("the host restarts");
    let listed = versions(&host).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "the old version is loaded again for its saga: {listed}"
    );
    poll(
        "the pinned saga to commit after the restart",
        Duration::from_secs(30),
        || async { (notes(&host, key.clone()).await == json!(["commit"])).then_some(Value::Null) },
    )
    .await;
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_is_off_without_one() {
    let dir = TempDir::new("auth");
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &["--admin-token", TOKEN],
    );
    let bytes = wasm("guest_exam_variant_b");
    let none = put_component(&host, "exam", bytes.clone(), None).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(
        none.error().contains("needs the admin token"),
        "{}",
        none.body
    );
    let wrong = put_component(&host, "exam", bytes.clone(), Some("guess")).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.error(), "the admin token is wrong");
    let delete = host
        .http()
        .admin("DELETE", "/admin/components/exam", Some("guess"))
        .await;
    assert_eq!(delete.status, 401);
    assert_eq!(
        submit(&host).await.json().get("build"),
        None,
        "nothing changed"
    );

    let off_dir = TempDir::new("auth-off");
    let off = Host::start(&off_dir, &["guest_exam", "guest_attempt"]);
    let refused = put_component(&off, "exam", bytes, Some(TOKEN)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.error().contains("the admin API is off"),
        "{}",
        refused.body
    );
    assert_eq!(submit(&off).await.json().get("build"), None);
}

#[tokio::test]
async fn a_restart_with_unchanged_components_does_not_compile() {
    let dir = TempDir::new("warm");
    let host = Host::start(&dir, &["guest_exam", "guest_attempt"]);
    host.stop();
    let host = Host::launch(&dir, &dir.path().join("components"), &[]).expect("the host restarts");
    let log = host.log();
    assert_eq!(
        log.matches("component loaded from the compile cache")
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("component compiled"), "{log}");
    assert_eq!(submit(&host).await.status, 200);
}

#[tokio::test]
async fn the_command_line_deploys() {
    let dir = TempDir::new("cli");
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &["--admin-token", TOKEN],
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .arg("deploy")
        .arg(component("guest_exam_variant_b"))
        .args(["--to", &format!("http://{}", host.addr), "--token", TOKEN])
        .output()
        .expect("run saga-host deploy");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"service\":\"exam\""));
    assert_eq!(submit(&host).await.json()["build"], "b");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .arg("deploy")
        .arg(component("test_hijack"))
        .args(["--to", &format!("http://{}", host.addr), "--token", TOKEN])
        .output()
        .expect("run saga-host deploy");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the host refused the component (409 Conflict)"),
        "{stderr}"
    );
}

/// What `strace -y` saw of the host's file writes while `act` ran.
async fn traced_writes<F: std::future::Future<Output = ()>>(
    host: &Host,
    dir: &TempDir,
    act: F,
) -> String {
    let trace = dir.path().join("strace.txt");
    let mut strace = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
        ])
        .arg("-o")
        .arg(&trace)
        .args(["-p", &host.pid().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace is installed (Debian package strace)");
    // strace creates its output file once it has attached.
    let attached = Instant::now();
    while !trace.exists() && attached.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    act.await;
    let _ = strace.kill();
    let _ = strace.wait();
    std::fs::read_to_string(&trace).expect("read the trace")
}

#[tokio::test]
async fn a_deployed_component_is_on_disk_before_it_serves() {
    let dir = TempDir::new("durable");
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &["--admin-token", TOKEN],
    );
    let trace = traced_writes(&host, &dir, async {
        let answer = put_component(&host, "exam", wasm("guest_exam_variant_b"), Some(TOKEN)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    })
    .await;
    // Every file the deploy wrote under the host's directory was written to a temporary name,
    // fsynced, renamed, and its directory fsynced after the rename.
    let lines: Vec<&str> = trace.lines().collect();
    let root = dir.path().to_string_lossy().into_owned();
    let renames: Vec<(usize, String, String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.contains("rename") && line.contains(&root))
        .map(|(at, line)| {
            let paths: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
            assert_eq!(paths.len(), 2, "a rename of two paths: {line}");
            (at, paths[0].to_string(), paths[1].to_string())
        })
        .collect();
    let written: Vec<&str> = renames.iter().map(|(_, _, to)| to.as_str()).collect();
    assert!(
        written.iter().any(|to| to.contains("/versions/"))
            && written.iter().any(|to| to.contains("/components/")),
        "the deploy writes the version store and the components directory: {written:?}\n{trace}"
    );
    for (at, from, to) in &renames {
        assert!(
            lines[..*at]
                .iter()
                .any(|line| line.contains("sync(") && line.contains(&format!("<{from}>"))),
            "{from} was renamed to {to} before it was fsynced:\n{trace}"
        );
        let parent = std::path::Path::new(to)
            .parent()
            .unwrap()
            .display()
            .to_string();
        assert!(
            lines[*at..]
                .iter()
                .any(|line| line.contains("sync(") && line.contains(&format!("<{parent}>"))),
            "the directory {parent} was not fsynced after {to} was renamed into it:\n{trace}"
        );
    }
}

/// `bytes` with a custom section appended: the same service, another version (digest).
fn variant(bytes: &[u8], n: usize) -> Vec<u8> {
    let name = b"variant";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

fn dir_size(dir: &std::path::Path) -> (usize, u64) {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().fold((0, 0), |(n, bytes), entry| {
                (n + 1, bytes + entry.metadata().map_or(0, |m| m.len()))
            })
        })
        .unwrap_or((0, 0))
}

/// Fifty deploys of the Exam service: the version store keeps only what is loaded, run by a
/// saga or replaced within the longest call's time; the compile cache stays within
/// --cache-max-mb.
#[tokio::test]
async fn fifty_deploys_keep_the_disk_bounded() {
    let dir = TempDir::new("bounded-disk");
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &[
            "--admin-token",
            TOKEN,
            "--cache",
            &cache_arg,
            "--cache-max-mb",
            "8",
            // A replaced version's bytes stay as long as a call on it may still start a saga.
            "--call-timeout-s",
            "1",
        ],
    );
    let exam = wasm("guest_exam");
    let artifact = dir_size(&cache).1 / 2; // the two bundled components' artifacts
    assert!(
        artifact * 50 > 8 << 20,
        "fifty artifacts of {artifact} bytes would fit in 8 MiB anyway: the test proves nothing"
    );
    for n in 0..50 {
        let answer = put_component(&host, "exam", variant(&exam, n), Some(TOKEN)).await;
        assert_eq!(answer.status, 200, "deploy {n}: {}", answer.body);
        let accepted = submit(&host).await;
        assert_eq!(accepted.status, 200, "deploy {n}: {}", accepted.body);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The last one through POST, which learns the service from the component: it names the
    // version it replaced too.
    let current = put_component(&host, "exam", variant(&exam, 49), Some(TOKEN)).await;
    let authorization = format!("Bearer {TOKEN}");
    let headers = [
        ("content-type", "application/wasm"),
        ("authorization", authorization.as_str()),
    ];
    let answer = host
        .http()
        .send_with("POST", "/admin/components", &headers, variant(&exam, 50))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json()["replaced"],
        current.json()["digest"],
        "{}",
        answer.body
    );
    let (versions, _) = dir_size(&host.data.join("versions"));
    assert_eq!(
        versions, 2,
        "the current Exam version and the one it just replaced are kept, no other (no saga runs on one)"
    );
    let (artifacts, bytes) = dir_size(&cache);
    assert!(
        bytes <= 8 << 20,
        "the compile cache holds {bytes} bytes in {artifacts} artifacts, beyond --cache-max-mb 8"
    );
    assert!(artifacts >= 2, "the loaded versions' artifacts stay");
}
