//! A misbehaving component gets a 500 with a clear error while the host keeps serving, and a
//! missing or invalid component stops the host at start with the file and the cause named.

mod common;

use common::{Host, TempDir, components_dir};
use serde_json::json;
use uuid::Uuid;

async fn exam_flow_still_works(host: &Host) {
    let answer = host
        .http()
        .post_json(
            "/exams",
            &json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(
        answer.status, 200,
        "the exam flow after a misbehaving call: {}",
        answer.body
    );
}

#[tokio::test]
async fn traps_loops_and_memory_bombs_get_a_500_and_the_host_keeps_serving() {
    let dir = TempDir::new("limits");
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt", "test_probe"],
        &["--cpu-ms", "300", "--memory-mb", "64"],
    );
    let http = host.http();
    assert_eq!(http.get("/probe/noop").await.status, 200);

    let trapped = http.get("/probe/trap").await;
    assert_eq!(trapped.status, 500, "{}", trapped.body);
    let error = trapped.error();
    assert!(error.contains("component probe trapped"), "{error}");
    assert!(
        error.contains("the probe panics on purpose"),
        "the guest's panic message is shown: {error}"
    );
    exam_flow_still_works(&host).await;

    let looped = http.get("/probe/loop").await;
    assert_eq!(looped.status, 500, "{}", looped.body);
    let error = looped.error();
    assert!(
        error.contains("component probe exceeded a limit"),
        "{error}"
    );
    assert!(error.contains("more than 300 ms of CPU time"), "{error}");
    exam_flow_still_works(&host).await;

    let bombed = http.get("/probe/memory").await;
    assert_eq!(bombed.status, 500, "{}", bombed.body);
    let error = bombed.error();
    assert!(
        error.contains("component probe exceeded a limit"),
        "{error}"
    );
    assert!(error.contains("the limit is 64 MiB"), "{error}");
    exam_flow_still_works(&host).await;
    assert_eq!(
        http.get("/probe/noop").await.status,
        200,
        "the probe itself still serves"
    );
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
