//! `saga-host new`: the services it writes build with their own build.sh and run in a real host
//! as their README says — a participant, and an orchestrator whose saga invokes it, in Rust, in
//! Python with a JavaScript participant, and in JavaScript with a Python participant — and what
//! it refuses writes nothing.
//!
//! The Rust builds share `target/scaffold` (their dependencies compile once); the Python and
//! JavaScript builds use the componentize-py and componentize-js that `make examples` installed
//! in examples/, when it did (else each build.sh installs its own, from the network).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::{Host, Http, TempDir, components_dir_of};
use serde_json::{Value, json};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// `saga-host new ARGS…` run in `cwd`.
fn new(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .arg("new")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run saga-host new")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Everything under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read a directory") {
            let path = entry.expect("an entry").path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(root, &path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}

/// A tool `make examples` installed, if it is there.
fn installed(path: &str) -> Option<PathBuf> {
    let path = repository().join(path);
    path.exists().then_some(path)
}

/// Writes the service `name` into `dir/name` with `saga-host new LANGUAGE NAME EXTRA…`, checks
/// the project's shape, builds it with its build.sh and returns the component.
fn write_and_build(dir: &TempDir, language: &str, name: &str, extra: &[&str]) -> PathBuf {
    let project = dir.path().join(name);
    let mut args = vec![language, name, "--dir", project.to_str().unwrap()];
    args.extend(extra);
    let output = new(dir.path(), &args);
    assert!(
        output.status.success(),
        "saga-host new {args:?} failed:\n{}",
        text(&output.stderr)
    );
    let said = text(&output.stdout);
    assert!(
        said.contains("./build.sh"),
        "new did not say what next:\n{said}"
    );

    let orchestrator = extra.contains(&"--orchestrator");
    let smoke: Value = serde_json::from_str(
        &std::fs::read_to_string(project.join("tests/smoke.json")).expect("tests/smoke.json"),
    )
    .expect("tests/smoke.json is JSON");
    assert_eq!(smoke["components"], json!([format!("../{name}.wasm")]));
    assert_eq!(smoke["stubs"].is_object(), orchestrator, "{smoke}");
    for file in ["README.md", ".gitignore", "build.sh"] {
        assert!(project.join(file).is_file(), "{name}: no {file}");
    }
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.contains("saga-host serve --components"), "{readme}");
    let sdk = repository().display().to_string();
    let source = match language {
        "rust" => {
            let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
            assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
            assert!(manifest.contains(&format!("{sdk}/guest-sdk")), "{manifest}");
            "src/lib.rs"
        }
        "python" => "app.py",
        _ => "service.js",
    };
    let world = if orchestrator {
        "orchestrator"
    } else {
        "participant"
    };
    let build_script = std::fs::read_to_string(project.join("build.sh")).unwrap();
    assert!(build_script.contains(&format!("world `{world}`")));
    if language != "rust" {
        assert!(
            build_script.contains(&sdk),
            "absolute SDK path:\n{build_script}"
        );
    }
    assert!(project.join(source).is_file(), "{name}: no {source}");

    // `build.sh test` builds, then runs the project's tests/smoke.json in `saga-host test-run`.
    let mut build = Command::new(project.join("build.sh"));
    build
        .arg("test")
        .env("SAGA_HOST", env!("CARGO_BIN_EXE_saga-host"));
    match language {
        "rust" => {
            build.env("CARGO_TARGET_DIR", repository().join("target/scaffold"));
        }
        "python" => {
            let tool = installed("examples/python-tutorial/.venv/bin/componentize-py")
                .or_else(|| installed("examples/python-grader/.venv/bin/componentize-py"));
            if let Some(tool) = tool {
                build.env("COMPONENTIZE_PY", tool);
            }
        }
        _ => {
            let modules = ["examples/js-tutorial", "examples/js-notifier"]
                .iter()
                .find(|example| {
                    installed(&format!(
                        "{example}/node_modules/@bytecodealliance/componentize-js"
                    ))
                    .is_some()
                })
                .map(|example| repository().join(example).join("node_modules"));
            if let Some(modules) = modules {
                build.env("COMPONENTIZE_JS_MODULES", modules);
            }
        }
    }
    let started = Instant::now();
    let output = build.output().expect("run build.sh");
    assert!(
        output.status.success(),
        "{name}/build.sh failed:\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    println!("{language} {name}: built in {:?}", started.elapsed());
    let component = project.join(format!("{name}.wasm"));
    assert!(
        component.is_file(),
        "build.sh wrote no {}",
        component.display()
    );
    component
}

/// The request steps at the start of a participant's tests/smoke.json, run against the real
/// host too: the script and the component agree (`build.sh test` ran all of it in the harness).
async fn replay_smoke_requests(http: &Http, project: &Path) {
    let smoke: Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("tests/smoke.json")).unwrap())
            .unwrap();
    let mut answers: Vec<Value> = Vec::new();
    for step in smoke["steps"].as_array().unwrap() {
        let Some(request) = step.get("request") else {
            break;
        };
        let mut path = request["path"].as_str().unwrap().to_string();
        for (index, answer) in answers.iter().enumerate() {
            if let Some(uuid) = answer["uuid"].as_str() {
                path = path.replace(&format!("${{steps.{index}.body.uuid}}"), uuid);
            }
        }
        assert!(
            !path.contains("${"),
            "{path}: a reference this replay cannot fill"
        );
        let method = request["method"].as_str().unwrap();
        let answer = match request.get("body") {
            Some(body) => {
                http.send(
                    method,
                    &path,
                    Some("application/json"),
                    body.to_string().into_bytes(),
                )
                .await
            }
            None => http.send(method, &path, None, Vec::new()).await,
        };
        let expect = &step["expect"];
        assert_eq!(
            u64::from(answer.status),
            expect["status"].as_u64().unwrap(),
            "smoke step {}: {}",
            step["name"],
            answer.body
        );
        if let Some(fields) = expect["body"].as_object() {
            let body = answer.json();
            for (field, value) in fields {
                assert_eq!(&body[field], value, "smoke step {}: {body}", step["name"]);
            }
        }
        answers.push(serde_json::from_str(&answer.body).unwrap_or(Value::Null));
    }
    assert!(answers.len() >= 2, "the smoke script starts with requests");
}

/// The sagas of `service` the host stored, newest first.
async fn sagas(http: &Http, service: &str) -> Vec<Value> {
    let answer = http.get(&format!("/sagas?service={service}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["sagas"].as_array().unwrap().clone()
}

/// The participant and the orchestrator, loaded together, answer as their READMEs say: the
/// participant's routes; the orchestrator's route runs its saga, which reserves from the
/// participant and commits, or fails with the participant's refusal and changes nothing; bad
/// input is refused before any saga starts.
async fn run_as_documented(
    dir: &TempDir,
    participant: &str,
    orchestrator: &str,
    components: &[PathBuf],
) {
    let components = components_dir_of(dir, components);
    let host = Host::launch(dir, &components, &[])
        .unwrap_or_else(|failure| panic!("the host did not start:\n{}", failure.stderr));
    let http = host.http();
    let saga = format!("CREATE_{}", orchestrator.to_uppercase().replace('-', "_"));

    replay_smoke_requests(http, &dir.path().join(participant)).await;

    // The participant.
    let created = http
        .post_json(
            &format!("/{participant}"),
            &json!({"name": "widget", "quantity": 5}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let item = created.json();
    assert_eq!(
        (&item["name"], &item["quantity"]),
        (&json!("widget"), &json!(5))
    );
    let uuid = item["uuid"].as_str().expect("a uuid").to_string();
    let read = http.get(&format!("/{participant}/{uuid}")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["quantity"], 5);
    let refused = http
        .post_json(&format!("/{participant}"), &json!({"name": "widget"}))
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.error().contains("quantity"), "{}", refused.body);
    let refused = http
        .post_json(
            &format!("/{participant}"),
            &json!({"name": " ", "quantity": 1}),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.error().contains("name"), "{}", refused.body);
    let missing = http
        .get(&format!(
            "/{participant}/6f1c2a3b-0d4e-4f50-8a61-7b8c9d0e1f20"
        ))
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let not_uuid = http.get(&format!("/{participant}/widget")).await;
    assert_eq!(not_uuid.status, 400, "{}", not_uuid.body);

    // The orchestrator's saga commits: the order, and the reservation in the participant.
    let ordered = http
        .post_json(
            &format!("/{orchestrator}"),
            &json!({"item": uuid, "quantity": 2}),
        )
        .await;
    assert_eq!(ordered.status, 201, "{}", ordered.body);
    let order = ordered.json();
    assert_eq!(
        (&order["item"], &order["quantity"]),
        (&json!(uuid), &json!(2))
    );
    let order_uuid = order["uuid"].as_str().expect("a uuid");
    let read = http.get(&format!("/{orchestrator}/{order_uuid}")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["quantity"], 2);
    assert_eq!(
        http.get(&format!("/{participant}/{uuid}")).await.json()["quantity"],
        3
    );
    let stored = sagas(http, orchestrator).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        (&stored[0]["name"], &stored[0]["status"]),
        (&json!(saga), &json!("finished")),
        "{stored:?}"
    );

    // The participant refuses: the saga fails with its reason, and nothing changed.
    let refused = http
        .post_json(
            &format!("/{orchestrator}"),
            &json!({"item": uuid, "quantity": 9}),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.error().contains("only 3 of widget left"),
        "{}",
        refused.body
    );
    assert_eq!(
        http.get(&format!("/{participant}/{uuid}")).await.json()["quantity"],
        3
    );
    let stored = sagas(http, orchestrator).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0]["status"], "errored", "{stored:?}");
    let unknown = http
        .post_json(
            &format!("/{orchestrator}"),
            &json!({"item": "6f1c2a3b-0d4e-4f50-8a61-7b8c9d0e1f20", "quantity": 1}),
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // Bad input is refused before a saga starts.
    for body in [
        json!({"item": "widget", "quantity": 1}),
        json!({"item": uuid, "quantity": 0}),
        json!({"item": uuid}),
        json!([1, 2]),
    ] {
        let refused = http.post_json(&format!("/{orchestrator}"), &body).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
    }
    let not_json = http
        .send(
            "POST",
            &format!("/{orchestrator}"),
            Some("application/json"),
            b"{".to_vec(),
        )
        .await;
    assert_eq!(not_json.status, 400, "{}", not_json.body);
    assert_eq!(sagas(http, orchestrator).await.len(), 3);
    assert_eq!(
        http.get(&format!("/{participant}/{uuid}")).await.json()["quantity"],
        3
    );
    host.stop();
}

#[tokio::test]
async fn a_rust_participant_and_orchestrator_build_and_run() {
    let dir = TempDir::new("scaffold-rust");
    let participant = write_and_build(&dir, "rust", "stock", &[]);
    let orchestrator = write_and_build(
        &dir,
        "rust",
        "orders",
        &["--orchestrator", "--participant", "stock"],
    );
    run_as_documented(&dir, "stock", "orders", &[participant, orchestrator]).await;
}

#[tokio::test]
async fn a_python_orchestrator_runs_with_a_javascript_participant() {
    let dir = TempDir::new("scaffold-python");
    let participant = write_and_build(&dir, "js", "pantry", &[]);
    let orchestrator = write_and_build(
        &dir,
        "python",
        "meals",
        &["--orchestrator", "--participant", "pantry"],
    );
    run_as_documented(&dir, "pantry", "meals", &[participant, orchestrator]).await;
}

#[tokio::test]
async fn a_javascript_orchestrator_runs_with_a_python_participant() {
    let dir = TempDir::new("scaffold-js");
    let participant = write_and_build(&dir, "python", "shelf", &[]);
    let orchestrator = write_and_build(
        &dir,
        "js",
        "loans",
        &["--orchestrator", "--participant", "shelf"],
    );
    run_as_documented(&dir, "shelf", "loans", &[participant, orchestrator]).await;
}

#[test]
fn new_refuses_what_it_cannot_write_and_writes_nothing() {
    let dir = TempDir::new("scaffold-refusals");
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    std::fs::write(dir.path().join("a-file"), "mine").unwrap();
    let before = listing(dir.path());

    let refusals: &[(&[&str], &str)] = &[
        (
            &["rust", "stock", "--dir", "taken"],
            "exists and is not empty",
        ),
        (&["rust", "stock", "--dir", "a-file"], "is not a directory"),
        (&["rust", "Stock"], "is not a service name"),
        (&["python", "my stock"], "is not a service name"),
        (&["js", "1stock"], "is not a service name"),
        (&["rust", "order--items"], "is not a service name"),
        (&["rust", "stock_items"], "is not a service name"),
        (&["rust", "fn"], "already uses"),
        (&["python", "request"], "already uses"),
        (&["js", "number"], "already uses"),
        (&["go", "stock"], "invalid value 'go'"),
        (
            &["rust", "stock", "--participant", "shelf"],
            "--orchestrator",
        ),
        (
            &["rust", "stock", "--orchestrator", "--participant", "stock"],
            "the orchestrator's own name",
        ),
        (
            &["rust", "orders", "--orchestrator", "--participant", "Shelf"],
            "is not a service name",
        ),
        (
            &["rust", "stock", "--sdk-root", "taken"],
            "is not a saga-host repository",
        ),
    ];
    for (args, reason) in refusals {
        let output = new(dir.path(), args);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        if !args.contains(&"go") && !args.contains(&"shelf") {
            assert!(stderr.contains("nothing was written"), "{args:?}: {stderr}");
        }
        assert_eq!(listing(dir.path()), before, "{args:?} wrote something");
    }
    let unknown = text(&new(dir.path(), &["go", "stock"]).stderr);
    assert!(unknown.contains("rust, python, js"), "{unknown}");

    // The default directory is ./NAME; an empty directory is taken as it is.
    let written = new(dir.path(), &["rust", "stock"]);
    assert!(written.status.success(), "{}", text(&written.stderr));
    assert!(dir.path().join("stock/src/lib.rs").is_file());
    let again = new(dir.path(), &["rust", "stock"]);
    assert!(!again.status.success(), "it wrote over ./stock");
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let written = new(dir.path(), &["js", "pantry", "--dir", "empty"]);
    assert!(written.status.success(), "{}", text(&written.stderr));
    assert!(dir.path().join("empty/service.js").is_file());
    let mut expected = before.clone();
    expected.extend(
        listing(&dir.path().join("stock"))
            .into_iter()
            .map(|p| format!("stock/{p}")),
    );
    expected.extend(
        listing(&dir.path().join("empty"))
            .into_iter()
            .map(|p| format!("empty/{p}")),
    );
    expected.extend(["empty".to_string(), "stock".to_string()]);
    expected.sort();
    assert_eq!(
        listing(dir.path()),
        expected,
        "no staging directory is left"
    );
}
