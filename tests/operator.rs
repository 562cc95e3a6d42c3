//! Operating sagas through the operator API and the `saga-host` CLI, against a real host
//! running the test orchestrator and participant: cancel, retry now, retry the compensations
//! of a compensation-failed saga once its participant is fixed, bulk actions with a dry run —
//! each recorded in the saga's history with who and why, and refused with 409 when it does not
//! fit the saga's state; the listing's filters and cursor paging (with sagas inserted between
//! pages), and the statistics.

mod common;

use std::collections::BTreeSet;
use std::process::Output;

use common::{Host, Http, TempDir};
use serde_json::{Value, json};

const COMPONENTS: [&str; 2] = ["test_orchestrator", "test_participant"];
const TOKEN: &str = "s3cret";

fn unique(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4())
}

/// A host whose failed steps wait five minutes before their retry: a saga whose step fails
/// with a system error stays paused until an operator acts.
fn patient_host(dir: &TempDir) -> Host {
    Host::start_with(
        dir,
        &COMPONENTS,
        &["--admin-token", TOKEN, "--retry-delay-ms", "300000"],
    )
}

/// Starts THREE with these step behaviors; returns its id once it is stored (paused if a step
/// waits for a retry).
async fn start_three(http: &Http, behaviors: Value) -> (String, Value) {
    let key = unique("op");
    let started = http
        .post_json("/start/THREE", &json!({"key": key, "behaviors": behaviors}))
        .await;
    assert_eq!(started.status, 200, "{}", started.body);
    let started = started.json();
    (started["id"].as_str().unwrap().to_string(), started)
}

async fn get(http: &Http, path: &str) -> Value {
    let answer = http.admin("GET", path, Some(TOKEN)).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.json()
}

async fn post(http: &Http, path: &str, body: Value) -> common::Answer {
    http.admin_json("POST", path, Some(TOKEN), &body).await
}

#[tokio::test]
async fn cancel_and_retry_now_fit_the_state_and_are_recorded_with_who_and_why() {
    let dir = TempDir::new("op-actions");
    let host = patient_host(&dir);
    let http = host.http();

    // A paused saga (s2 failed with a system error and waits for its retry) is cancelled: s1,
    // which acted, is compensated once; s2, which refused, is not.
    let (id, started) = start_three(http, json!({"s2": "system"})).await;
    assert_eq!(started["status"], "paused", "{started}");
    let cancelled = post(
        http,
        &format!("/sagas/{id}/cancel"),
        json!({"reason": "customer left"}),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let cancelled = cancelled.json();
    assert_eq!(cancelled["status"], "errored", "{cancelled}");
    assert_eq!(
        cancelled["error"]["message"],
        "cancelled by the operator: customer left"
    );
    let history = get(http, &format!("/sagas/{id}/history")).await;
    let entries = history.as_array().unwrap();
    let operator: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "operator")
        .collect();
    assert_eq!(operator.len(), 1, "{history}");
    assert_eq!(operator[0]["action"], "cancel");
    assert_eq!(operator[0]["by"], "admin");
    assert_eq!(operator[0]["reason"], "customer left");
    let compensated: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "compensated")
        .collect();
    assert_eq!(compensated.len(), 1, "{history}");
    assert_eq!(compensated[0]["step"], 0);
    assert_eq!(compensated[0]["done"], true);

    // It has ended: a second cancel, or a retry, does not fit — 409 naming the state, and
    // nothing changes.
    for (action, body) in [
        ("cancel", json!({"reason": "again"})),
        ("retry-now", json!({})),
        ("retry-compensations", json!({})),
    ] {
        let refused = post(http, &format!("/sagas/{id}/{action}"), body).await;
        assert_eq!(refused.status, 409, "{action}: {}", refused.body);
        assert!(
            refused.error().contains("the saga is errored"),
            "{}",
            refused.body
        );
    }
    assert_eq!(get(http, &format!("/sagas/{id}/history")).await, history);

    let flaky = retry_now_sends_the_paused_step_at_once(http).await;

    unknown_sagas_bad_bodies_and_no_token(http, &flaky).await;
}

#[tokio::test]
async fn a_compensation_failed_saga_is_retried_to_errored_once_its_participant_is_fixed() {
    let dir = TempDir::new("op-compensations");
    let host = Host::start_with(
        &dir,
        &COMPONENTS,
        &["--admin-token", TOKEN, "--retry-delay-ms", "20"],
    );
    let http = host.http();
    let key = unique("stuck");
    let ran = http
        .post_json(
            "/run/THREE",
            &json!({"key": key, "behaviors": {"s3": "system"}, "undo_behaviors": {"s2": "until-fixed"}}),
        )
        .await
        .json();
    assert_eq!(ran["status"], "compensation-failed", "{ran}");
    let id = ran["id"].as_str().unwrap();
    let early = post(http, &format!("/sagas/{id}/cancel"), json!({})).await;
    assert_eq!(early.status, 409, "{}", early.body);
    assert!(
        early.error().contains("the saga is compensation-failed"),
        "{}",
        early.body
    );

    assert_eq!(http.post_json("/switch", &json!(null)).await.status, 200);
    let retried = post(
        http,
        &format!("/sagas/{id}/retry-compensations"),
        json!({"reason": "Undo fixed"}),
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    let saga = retried.json();
    assert_eq!(saga["status"], "errored", "{saga}");
    assert_eq!(saga["steps"][1]["compensation"]["status"], "done", "{saga}");
    let history = get(http, &format!("/sagas/{id}/history")).await;
    let entries = history.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["event"] == "operator"
            && e["action"] == "retry-compensations"
            && e["reason"] == "Undo fixed"),
        "{history}"
    );
    // Each compensation ended done once: s1's on the first pass, s2's on the retry.
    for step in [0, 1] {
        let done = entries
            .iter()
            .filter(|e| e["event"] == "compensated" && e["step"] == step && e["done"] == true)
            .count();
        assert_eq!(done, 1, "step {step}: {history}");
    }
}

#[tokio::test]
async fn a_bulk_action_over_a_filter_dry_runs_then_acts() {
    let dir = TempDir::new("op-bulk");
    let host = patient_host(&dir);
    let http = host.http();
    let finished = http
        .post_json("/run/THREE", &json!({"key": unique("done")}))
        .await;
    assert_eq!(finished.json()["status"], "finished");
    let mut paused = BTreeSet::new();
    for _ in 0..3 {
        paused.insert(start_three(http, json!({"s3": "system"})).await.0);
    }
    let filter = json!({"status": "paused", "service": "orchestrator", "name": "THREE"});

    let dry = post(
        http,
        "/sagas/actions",
        json!({"action": "cancel", "filter": filter, "reason": "drain", "dry_run": true}),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    let dry = dry.json();
    assert_eq!(dry["count"], 3, "{dry}");
    let listed: BTreeSet<String> = dry["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, paused);
    for saga in dry["sagas"].as_array().unwrap() {
        assert_eq!(saga["status"], "paused");
        let would = saga["would"].as_str().unwrap();
        assert!(
            would.contains("cancelled by the operator: drain")
                && would.contains("compensate steps 2, 1"),
            "{would}"
        );
    }
    for id in &paused {
        let saga = get(http, &format!("/sagas/{id}")).await;
        assert_eq!(
            saga["status"], "paused",
            "a dry run changes nothing: {saga}"
        );
    }

    let done = post(
        http,
        "/sagas/actions",
        json!({"action": "cancel", "filter": filter, "reason": "drain"}),
    )
    .await
    .json();
    assert_eq!(done["count"], 3, "{done}");
    for id in &paused {
        let saga = get(http, &format!("/sagas/{id}")).await;
        assert_eq!(saga["status"], "errored", "{saga}");
    }
    // Now nothing is paused: the same action matches nothing.
    let again = post(
        http,
        "/sagas/actions",
        json!({"action": "cancel", "filter": filter}),
    )
    .await;
    assert_eq!(again.json()["count"], 0, "{}", again.body);
    a_finished_saga_would_refuse(http).await;
    bulk_refuses_bad_bodies(http).await;
}

#[tokio::test]
async fn sagas_are_listed_by_filter_a_page_at_a_time_and_counted() {
    let dir = TempDir::new("op-queries");
    let host = Host::start_with(&dir, &COMPONENTS, &["--retry-delay-ms", "20"]);
    let http = host.http();
    let before = http.get("/sagas").await.json()["sagas"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, 0);
    let mut three = Vec::new();
    for _ in 0..5 {
        let ran = http
            .post_json("/run/THREE", &json!({"key": unique("q")}))
            .await
            .json();
        three.push(ran["id"].as_str().unwrap().to_string());
    }
    let failed = http
        .post_json(
            "/run/MAIN",
            &json!({"key": unique("q"), "local_fails": true}),
        )
        .await
        .json();
    assert_eq!(failed["status"], "errored");

    // Pages of two, with a saga inserted between pages: every saga of the first listing is
    // seen once, the new ones not at all (they are newer than the cursor).
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(next) => format!("/sagas?name=THREE&limit=2&cursor={next}"),
            None => "/sagas?name=THREE&limit=2".to_string(),
        };
        let page = http.get(&path).await.json();
        for saga in page["sagas"].as_array().unwrap() {
            assert_eq!(saga["name"], "THREE");
            seen.push(saga["id"].as_str().unwrap().to_string());
        }
        http.post_json("/run/THREE", &json!({"key": unique("between")}))
            .await;
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    let mut expected = three.clone();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "each saga of the first listing once: {seen:?}"
    );
    assert_eq!(seen.len(), three.len(), "none twice: {seen:?}");

    filters_select(http, &three, &failed).await;
    bad_parameters_are_refused(http).await;

    stats_count_what_is_listed(http).await;
}

/// Runs `saga-host ARGS` against `host`.
fn cli(host: &Host, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .args(args)
        .env("SAGA_HOST_URL", format!("http://{}", host.addr))
        .env("SAGA_HOST_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run saga-host")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_command_line_finds_inspects_and_cancels_a_paused_saga() {
    let dir = TempDir::new("op-cli");
    let host = patient_host(&dir);
    let (id, _) = start_three(host.http(), json!({"s2": "system"})).await;

    let table = stdout(&cli(&host, &["sagas", "list", "--status", "paused"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&id) && table.contains("paused"), "{table}");
    let listed: Value =
        serde_json::from_str(&stdout(&cli(&host, &["sagas", "list", "--json"]))).unwrap();
    assert_eq!(listed["sagas"][0]["id"], id.as_str());

    let shown = stdout(&cli(&host, &["sagas", "show", &id]));
    assert!(
        shown.contains("TIMELINE") && shown.contains("awaiting-retry"),
        "{shown}"
    );
    assert!(
        shown.contains('█'),
        "the steps are drawn on a time axis: {shown}"
    );

    let dry = stdout(&cli(
        &host,
        &["sagas", "cancel", "--status", "paused", "--dry-run"],
    ));
    assert!(dry.contains("would apply to 1"), "{dry}");
    let done = stdout(&cli(
        &host,
        &["sagas", "cancel", &id, "--reason", "from the CLI"],
    ));
    assert!(done.contains("errored"), "{done}");
    let history = stdout(&cli(&host, &["sagas", "history", &id]));
    assert!(
        history.contains("operator") && history.contains("from the CLI"),
        "{history}"
    );

    refusals_exit_with_their_codes(&host, &id);

    let stats = stdout(&cli(&host, &["sagas", "stats"]));
    assert!(
        stats.contains("THREE") && stats.contains("errored"),
        "{stats}"
    );
    let components = stdout(&cli(&host, &["components", "list"]));
    assert!(
        components.contains("orchestrator") && components.contains("participant"),
        "{components}"
    );
    components_are_deployed_and_removed(&host);
    let letters = stdout(&cli(&host, &["dead-letters", "list", "--json"]));
    assert_eq!(serde_json::from_str::<Value>(&letters).unwrap(), json!([]));
    let missing = cli(&host, &["dead-letters", "redrive", "42"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter 42"));
}

/// `components deploy` loads the probe, `components remove` takes it away; removing it again
/// is the host's 404, in its words, with exit code 1.
fn components_are_deployed_and_removed(host: &Host) {
    let probe = common::component("test_probe");
    let deployed = stdout(&cli(
        host,
        &["components", "deploy", probe.to_str().unwrap()],
    ));
    assert!(
        deployed.starts_with("deployed probe version "),
        "{deployed}"
    );
    let listed = stdout(&cli(host, &["components", "list"]));
    assert!(listed.contains("probe"), "{listed}");
    let removed = stdout(&cli(host, &["components", "remove", "probe", "--json"]));
    let removed: Value = serde_json::from_str(&removed).unwrap();
    assert_eq!(removed["removed"], "probe");
    let again = cli(host, &["components", "remove", "probe"]);
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.starts_with("error (404): "), "{said}");
}

/// Retry now: the paused step is sent again at once instead of in five minutes; returns the
/// saga, finished.
async fn retry_now_sends_the_paused_step_at_once(http: &Http) -> String {
    // Retry now: the paused step is sent again at once instead of in five minutes.
    let (flaky, started) = start_three(http, json!({"s2": "flaky:1"})).await;
    assert_eq!(started["status"], "paused", "{started}");
    let refused = post(
        http,
        &format!("/sagas/{flaky}/retry-compensations"),
        json!({}),
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.error().contains("the saga is paused"),
        "{}",
        refused.body
    );
    let retried = post(
        http,
        &format!("/sagas/{flaky}/retry-now"),
        json!({"reason": "fixed"}),
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.json()["status"], "finished", "{}", retried.body);
    let history = get(http, &format!("/sagas/{flaky}/history")).await;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "operator"
                && e["action"] == "retry-now"
                && e["reason"] == "fixed"
                && e["by"] == "admin"),
        "{history}"
    );
    flaky
}

/// A bulk action with a bad body is refused with what is accepted.
async fn bulk_refuses_bad_bodies(http: &Http) {
    for (body, says) in [
        (json!({"action": "explode"}), "unknown action \"explode\""),
        (
            json!({"action": "cancel", "filter": {"status": "sideways"}}),
            "unknown saga status",
        ),
        (
            json!({"action": "cancel", "filter": {"colour": "red"}}),
            "unknown parameter \"colour\"",
        ),
        (json!({"filter": {}}), "the body must be JSON"),
    ] {
        let bad = post(http, "/sagas/actions", body).await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        assert!(bad.error().contains(says), "{}", bad.body);
    }
}

/// The counts and durations agree with the listing.
async fn stats_count_what_is_listed(http: &Http) {
    let stats = http.get("/sagas/stats").await.json();
    let total = http.get("/sagas?limit=1000").await.json()["sagas"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(stats["total"], total, "{stats}");
    assert_eq!(stats["by_status"]["errored"], 1, "{stats}");
    assert_eq!(stats["by_status"]["paused"], 0, "{stats}");
    assert_eq!(stats["by_name"]["orchestrator/THREE"], total - 1, "{stats}");
    let durations = stats["durations"].as_array().unwrap();
    let three_took = durations
        .iter()
        .find(|d| d["name"] == "THREE")
        .expect("THREE's durations");
    assert_eq!(three_took["finished"], total - 1);
    assert!(three_took["p50_ms"].as_i64().unwrap() <= three_took["p99_ms"].as_i64().unwrap());
    let later = http
        .get("/sagas/stats?since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(later["durations"], json!([]));
    let bad = http.get("/sagas/stats?since=soon").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}

/// Every bad parameter is a 400 that says what is accepted.
async fn bad_parameters_are_refused(http: &Http) {
    for (query, says) in [
        ("status=sideways", "unknown saga status \"sideways\""),
        ("limit=0", "limit must be a number from 1 to 1000"),
        ("cursor=zz", "is not one this host gave out"),
        (
            "created_from=yesterday",
            "created_from: \"yesterday\" is not a time: use RFC 3339",
        ),
        ("id_prefix=xyz", "use hex digits and dashes"),
        (
            "colour=red",
            "unknown parameter \"colour\"; accepted: service, name, status",
        ),
    ] {
        let bad = http.get(&format!("/sagas?{query}")).await;
        assert_eq!(bad.status, 400, "{query}: {}", bad.body);
        assert!(bad.error().contains(says), "{query}: {}", bad.body);
    }
}

/// The filters select by status and service, id prefix and time range.
async fn filters_select(http: &Http, three: &[String], failed: &Value) {
    let errored = http
        .get("/sagas?status=errored&service=orchestrator")
        .await
        .json();
    let ids: Vec<&str> = errored["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failed["id"].as_str().unwrap()]);
    let prefix = &three[0][..8];
    let by_prefix = http.get(&format!("/sagas?id_prefix={prefix}")).await.json();
    assert!(
        by_prefix["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == three[0].as_str()),
        "{by_prefix}"
    );
    let first = http.get(&format!("/sagas/{}", three[0])).await.json();
    let created = first["created_at"].as_i64().unwrap();
    let window = format!(
        "/sagas?created_from={}&created_to={}",
        saga_core::instant::format(created),
        created + 1
    );
    let in_window = http.get(&window).await.json();
    assert!(
        in_window["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["created_at"] == created),
        "{in_window}"
    );
    assert!(!in_window["sagas"].as_array().unwrap().is_empty());
    let future = http
        .get("/sagas?updated_from=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(future["sagas"], json!([]));
}

/// Refusals: the host's words on stderr, exit 1; an unreachable host: exit 3.
fn refusals_exit_with_their_codes(host: &Host, id: &str) {
    let again = cli(host, &["sagas", "cancel", id]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("error (409): cannot cancel saga")
            && stderr.contains("the saga is errored"),
        "{stderr}"
    );
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .args([
            "sagas",
            "list",
            "--host",
            &format!("http://{}", host.addr),
            "--token",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("the admin token is wrong"));
    let nowhere = std::process::Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .args(["sagas", "list", "--host", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("is the host running there?"));
}

/// Unknown sagas, bad bodies, and the token.
async fn unknown_sagas_bad_bodies_and_no_token(http: &Http, flaky: &str) {
    let missing = uuid::Uuid::new_v4();
    let gone = post(http, &format!("/sagas/{missing}/cancel"), json!({})).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let bad = http
        .send_with(
            "POST",
            &format!("/sagas/{flaky}/cancel"),
            &[("authorization", "Bearer s3cret")],
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.error().contains("{\"reason\": \"why\"}"),
        "{}",
        bad.body
    );
    let anonymous = http
        .admin_json("POST", &format!("/sagas/{flaky}/cancel"), None, &json!({}))
        .await;
    assert_eq!(anonymous.status, 401);
}

/// A dry run over a finished saga says why it would be refused.
async fn a_finished_saga_would_refuse(http: &Http) {
    let refused = post(
        http,
        "/sagas/actions",
        json!({"action": "cancel", "filter": {"status": "finished"}, "dry_run": true}),
    )
    .await
    .json();
    assert_eq!(refused["matched"], 1, "{refused}");
    assert_eq!(refused["count"], 0, "{refused}");
    assert!(
        refused["sagas"][0]["refused"]
            .as_str()
            .unwrap()
            .contains("the saga is finished"),
        "{refused}"
    );
}

/// Without an admin token the operator API is open: that is refused at start on an address
/// other machines reach, unless accepted by name. (Nothing here listens beyond loopback: the
/// refused start stops before listening, and the accepted one stops at its missing components
/// directory, past the check.)
#[test]
fn an_open_operator_api_on_a_reachable_address_is_refused_at_start() {
    let dir = TempDir::new("open-operator-api");
    let missing = dir.path().join("no-components-here");
    let serve = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_saga-host"))
            .args(["serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--components")
            .arg(&missing)
            .args(extra)
            .env_remove("SAGA_HOST_ADMIN_TOKEN")
            .output()
            .expect("saga-host runs")
    };
    let refused = serve(&[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--listen 0.0.0.0:0 is reachable from other machines")
            && said.contains("--insecure-open-operator-api"),
        "{said}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was set up");
    for accepted in [
        &["--insecure-open-operator-api"][..],
        &["--admin-token", "secret"][..],
    ] {
        let past = serve(accepted);
        let said = String::from_utf8_lossy(&past.stderr);
        assert!(!said.contains("reachable from other machines"), "{said}");
        assert!(said.contains("no-components-here"), "{said}");
    }
}
