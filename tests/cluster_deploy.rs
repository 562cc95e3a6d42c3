//! Cluster-wide deploys, on real hosts sharing one PostgreSQL database and one NATS JetStream: a
//! version deployed to one host becomes current on every host that runs its service, each host
//! loading it itself; the deploy answers each host's result, a host that cannot load it says
//! why and serves on; a host that starts later runs the cluster's version over its own file; a
//! saga finishes on the version it started with, also on a host that never had that version.
//! These tests need the local PostgreSQL and NATS servers (see tests/cluster.rs).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Answer, Host, NatsCluster, PgDatabase, TempDir, cluster_host, component};
use serde_json::{Value, json};
use uuid::Uuid;

const TOKEN: &str = "deploy-everywhere";

async fn put_component(host: &Host, name: &str, bytes: Vec<u8>) -> Answer {
    let authorization = format!("Bearer {TOKEN}");
    let headers = [
        ("content-type", "application/wasm"),
        ("authorization", authorization.as_str()),
    ];
    host.http()
        .send_with("PUT", &format!("/admin/components/{name}"), &headers, bytes)
        .await
}

/// `GET /admin/components`: the entry of service `name`.
async fn listed(host: &Host, name: &str) -> Value {
    let list = host
        .http()
        .admin("GET", "/admin/components", Some(TOKEN))
        .await
        .json();
    list.as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no service {name} in {list}"))
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).expect("read a component")
}

fn digest_of(bytes: &[u8]) -> String {
    saga_host::runtime::digest(bytes)
}

async fn submit(host: &Host) -> Answer {
    let submission = json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()});
    host.http().post_json("/exams", &submission).await
}

/// The hosts' answers of a deploy, by whether each is the host deployed to.
fn answers(deployed: &Value) -> (Value, Vec<Value>) {
    let hosts = deployed["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("a cluster deploy answers each host's result: {deployed}"));
    let (here, others): (Vec<&Value>, Vec<&Value>) = hosts.iter().partition(|h| h["here"] == true);
    assert_eq!(here.len(), 1, "{deployed}");
    (here[0].clone(), others.into_iter().cloned().collect())
}

#[tokio::test]
async fn a_deploy_to_one_host_becomes_current_on_every_host_that_runs_the_service() {
    let database = PgDatabase::create("deploy-everywhere").await;
    let nats = NatsCluster::create("deploy").await;
    let bundled = [component("guest_exam"), component("guest_attempt")];
    let args = ["--admin-token", TOKEN];
    let (dir_a, dir_b) = (TempDir::new("deploy-a"), TempDir::new("deploy-b"));
    let a = cluster_host(&dir_a, &bundled, &database, &nats, &args);
    let b = cluster_host(&dir_b, &bundled, &database, &nats, &args);
    let old = listed(&b, "exam").await["digest"].clone();
    assert_eq!(submit(&b).await.json().get("build"), None, "B runs build a");

    let new = wasm("guest_exam_variant_b");
    let digest = digest_of(&new);
    let started = Instant::now();
    let deployed = put_component(&a, "exam", new.clone()).await;
    println!("the deploy answered in {:?}", started.elapsed());
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let deployed = deployed.json();
    assert_eq!(deployed["digest"], digest.as_str());
    let (here, others) = answers(&deployed);
    assert_eq!(here["result"], "current", "{deployed}");
    assert_eq!(others.len(), 1, "B runs the service too: {deployed}");
    assert_eq!(others[0]["result"], "current", "{deployed}");
    assert_eq!(others[0]["error"], Value::Null, "{deployed}");
    let b_id = others[0]["host"].clone();

    // B serves the new version, and says so; so does A, for both hosts.
    let exam_on_b = listed(&b, "exam").await;
    assert_eq!(exam_on_b["digest"], digest.as_str(), "{exam_on_b}");
    assert_ne!(exam_on_b["digest"], old);
    assert_eq!(
        exam_on_b["cluster"]["digest"],
        digest.as_str(),
        "{exam_on_b}"
    );
    let answer = submit(&b).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json()["build"],
        "b",
        "B runs build b: {}",
        answer.body
    );
    let exam_on_a = listed(&a, "exam").await;
    let hosts = exam_on_a["cluster"]["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{exam_on_a}");
    assert!(
        hosts.iter().all(|h| h["current"] == digest.as_str()),
        "{exam_on_a}"
    );
    assert!(
        hosts
            .iter()
            .any(|h| h["host"] == b_id && h["here"] == false)
    );
    // B keeps it over a restart: its components directory has the new bytes.
    let file = dir_b.path().join("components/guest_exam.wasm");
    assert_eq!(std::fs::read(&file).expect("B's exam file"), new);

    // A third host started later with the old file runs the cluster's version.
    let dir_c = TempDir::new("deploy-c");
    let c = cluster_host(&dir_c, &bundled, &database, &nats, &args);
    assert_eq!(listed(&c, "exam").await["digest"], digest.as_str());
    let answer = submit(&c).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json()["build"],
        "b",
        "C runs build b: {}",
        answer.body
    );
    assert!(
        c.log().contains("loaded the cluster's version"),
        "{}",
        c.log()
    );
    let exam_on_b = listed(&b, "exam").await;
    let hosts = exam_on_b["cluster"]["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3, "{exam_on_b}");
    assert!(hosts.iter().all(|h| h["current"] == digest.as_str()));

    // Deploying back to the first build, through C this time, reaches A and B.
    let deployed = put_component(&c, "exam", wasm("guest_exam")).await;
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let deployed = deployed.json();
    let (_, others) = answers(&deployed);
    assert_eq!(others.len(), 2, "{deployed}");
    assert!(
        others.iter().all(|h| h["result"] == "current"),
        "{deployed}"
    );
    for host in [&a, &b] {
        assert_eq!(submit(host).await.json().get("build"), None);
    }
}

#[tokio::test]
async fn a_host_that_cannot_load_a_deploy_says_why_and_its_version_serves_on() {
    let database = PgDatabase::create("deploy-refused").await;
    let nats = NatsCluster::create("refused").await;
    let args = ["--admin-token", TOKEN];
    // Both run the hijack service's harmless build; only B runs the Exam and Attempt services,
    // whose route and command its default build claims.
    let builds = TempDir::new("hijack");
    let harmless = copy_as(&component("test_hijack_variant_b"), &builds);
    let (dir_a, dir_b) = (TempDir::new("refused-a"), TempDir::new("refused-b"));
    let a = cluster_host(
        &dir_a,
        std::slice::from_ref(&harmless.0),
        &database,
        &nats,
        &args,
    );
    let b_components = [
        harmless.0.clone(),
        component("guest_exam"),
        component("guest_attempt"),
    ];
    let b = cluster_host(&dir_b, &b_components, &database, &nats, &args);
    let old = listed(&b, "hijack").await["digest"].clone();

    // Deployed with the command line: it says what happened on each host, and exits 1 since
    // the version is not current everywhere.
    let claiming = component("test_hijack");
    let digest = digest_of(&wasm("test_hijack"));
    let deployed = std::process::Command::new(common::host_binary())
        .arg("deploy")
        .arg(&claiming)
        .args(["--to", &format!("http://{}", a.addr), "--token", TOKEN])
        .output()
        .expect("run saga-host deploy");
    let said = String::from_utf8_lossy(&deployed.stderr);
    assert_eq!(deployed.status.code(), Some(1), "{said}");
    let reason =
        "route POST /exams of service hijack conflicts with route POST /exams of service exam";
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("(here): current")),
        "A made it current: {said}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(": failed: ") && l.contains(reason)),
        "B says why: {said}"
    );
    assert!(said.contains("not current on every host"), "{said}");

    // A runs the new build; B its old one, and says which deploy it could not load and why.
    assert_eq!(a.http().get("/hijack").await.status, 404);
    let hijack_on_b = listed(&b, "hijack").await;
    assert_eq!(hijack_on_b["digest"], old, "{hijack_on_b}");
    assert_eq!(hijack_on_b["cluster"]["digest"], digest.as_str());
    let hosts = hijack_on_b["cluster"]["hosts"].as_array().expect("hosts");
    let on_b = hosts.iter().find(|h| h["here"] == true).expect("B's row");
    assert_eq!(on_b["current"], old, "{hijack_on_b}");
    assert_eq!(on_b["failed"], digest.as_str(), "{hijack_on_b}");
    assert!(
        on_b["error"].as_str().unwrap_or_default().contains(reason),
        "{hijack_on_b}"
    );
    let on_a = hosts.iter().find(|h| h["here"] == false).expect("A's row");
    assert_eq!(on_a["current"], digest.as_str(), "{hijack_on_b}");
    assert_eq!(b.http().get("/hijack").await.status, 200);
    let answer = submit(&b).await;
    assert_eq!(answer.status, 200, "B's exams still run: {}", answer.body);
    assert!(
        b.log()
            .contains("the cluster's version cannot be loaded here")
    );
}

/// A copy of a component file under the name of its default build (`test_hijack.wasm`), so that
/// a host's components directory holds one file per service whatever the build.
fn copy_as(file: &std::path::Path, dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .replace("_variant_b", "");
    let copy = dir.path().join(name);
    std::fs::copy(file, &copy).expect("copy a component");
    let bytes = std::fs::read(&copy).expect("read a component");
    (copy, bytes)
}

/// With every host on a long lease except the one that takes over, so that the participant's
/// host counts as alive while it is stopped.
fn long_lease_host(
    dir: &TempDir,
    files: &[PathBuf],
    database: &PgDatabase,
    nats: &NatsCluster,
) -> Host {
    let components = common::components_dir_of(dir, files);
    let args = [
        "--database",
        database.url.as_str(),
        "--broker",
        nats.url.as_str(),
        "--lease-s",
        "30",
        "--inline-steps",
        "false",
        "--admin-token",
        TOKEN,
    ];
    Host::launch(dir, &components, &args).unwrap_or_else(|failure| {
        panic!(
            "a host did not start ({:?}):\n{}",
            failure.status, failure.stderr
        )
    })
}

fn signal(host: &Host, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &host.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {}", host.pid());
}

#[tokio::test]
async fn a_saga_finishes_on_its_version_on_a_host_that_never_had_it() {
    let database = PgDatabase::create("deploy-pinned").await;
    let nats = NatsCluster::create("pinned").await;
    let (dir_p, dir_a, dir_c) = (
        TempDir::new("pinned-p"),
        TempDir::new("pinned-a"),
        TempDir::new("pinned-c"),
    );
    let p = long_lease_host(&dir_p, &[component("test_participant")], &database, &nats);
    let a = long_lease_host(&dir_a, &[component("test_orchestrator")], &database, &nats);
    // C runs only build b of the orchestrator: it never loaded build a.
    let builds = TempDir::new("orchestrator");
    let build_b = copy_as(&component("test_orchestrator_variant_b"), &builds);
    let c = cluster_host(
        &dir_c,
        std::slice::from_ref(&build_b.0),
        &database,
        &nats,
        &["--admin-token", TOKEN, "--inline-steps", "false"],
    );
    let build_a = listed(&a, "orchestrator").await["digest"].clone();

    // The participant is stopped: the saga A starts on build a waits for its reply.
    signal(&p, "-STOP");
    let key = format!("pinned-{}", Uuid::new_v4());
    let started = a
        .http()
        .post_json("/start/SLOW_COMMIT", &json!({"key": key}))
        .await;
    assert_eq!(started.status, 200, "{}", started.body);
    let id = started.json()["id"]
        .as_str()
        .expect("a saga id")
        .to_string();
    let saga = a
        .http()
        .admin("GET", &format!("/sagas/{id}"), Some(TOKEN))
        .await
        .json();
    assert_eq!(saga["version"], build_a, "{saga}");

    // Build b becomes the cluster's; then A dies, and only C runs the orchestrator.
    let deployed = put_component(&a, "orchestrator", build_b.1.clone()).await;
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    a.kill();
    signal(&p, "-CONT");

    let deadline = Instant::now() + Duration::from_secs(60);
    let saga = loop {
        let saga = c
            .http()
            .admin("GET", &format!("/sagas/{id}"), Some(TOKEN))
            .await
            .json();
        if saga["status"] == "finished" || Instant::now() > deadline {
            break saga;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(saga["status"], "finished", "{saga}\n{}", c.log());
    let notes = c.http().get(&format!("/notes/{key}")).await.json();
    assert_eq!(
        notes,
        json!(["commit"]),
        "the commit of build a ran, not b's"
    );
    assert!(
        c.log().contains("loaded the version a saga here runs on"),
        "{}",
        c.log()
    );
}
