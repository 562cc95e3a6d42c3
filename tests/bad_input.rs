//! Bad input gets a clear 4xx JSON error and changes nothing: no aggregate, no event, no saga,
//! no message.

mod common;

use common::{Answer, Host, TempDir};
use serde_json::json;
use uuid::Uuid;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    error_contains: &'static str,
}

fn json_body(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[tokio::test]
async fn every_bad_request_is_refused_and_changes_nothing() {
    let dir = TempDir::new("bad-input");
    let host = Host::start(&dir, &["guest_exam", "guest_attempt"]);
    let http = host.http();
    // One good submission first, so that "nothing changed" is checked against real rows.
    let good = http
        .post_json(
            "/exams",
            &json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(good.status, 200, "{}", good.body);
    let before = host.table_counts().await;
    assert!(before["snapshots"] > 0 && before["sagas"] > 0, "{before:?}");

    let user = Uuid::new_v4().to_string();
    let cases = vec![
        Case {
            name: "a host route asked with a method it does not take",
            method: "DELETE",
            path: "/health",
            content_type: None,
            body: Vec::new(),
            status: 405,
            error_contains: "DELETE is not allowed on /health; see the Allow header",
        },
        Case {
            name: "malformed JSON",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: br#"{"user_uuid": "#.to_vec(),
            status: 400,
            error_contains: "the request body is not valid JSON",
        },
        Case {
            name: "missing user_uuid",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: json_body(json!({"exam_uuid": Uuid::new_v4()})),
            status: 400,
            error_contains: "missing field `user_uuid`",
        },
        Case {
            name: "missing exam_uuid",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: json_body(json!({"user_uuid": user})),
            status: 400,
            error_contains: "missing field `exam_uuid`",
        },
        Case {
            name: "user_uuid is not a UUID",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: json_body(json!({"user_uuid": "not-a-uuid", "exam_uuid": Uuid::new_v4()})),
            status: 400,
            error_contains: "user_uuid: UUID parsing failed",
        },
        Case {
            name: "exam_uuid has the wrong type",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: json_body(json!({"user_uuid": user, "exam_uuid": 42})),
            status: 400,
            error_contains: "exam_uuid: invalid type: integer `42`",
        },
        Case {
            name: "the body is not an object",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: json_body(json!([1, 2, 3])),
            status: 400,
            error_contains: "invalid request body: [0]: invalid type: integer `1`, expected a formatted UUID string",
        },
        Case {
            name: "no body",
            method: "POST",
            path: "/exams",
            content_type: None,
            body: Vec::new(),
            status: 400,
            error_contains: "the request has no body",
        },
        Case {
            name: "wrong content type",
            method: "POST",
            path: "/exams",
            content_type: Some("text/plain"),
            body: json_body(json!({"user_uuid": user, "exam_uuid": Uuid::new_v4()})),
            status: 415,
            error_contains: "send the body as application/json",
        },
        Case {
            name: "a body but no content type",
            method: "POST",
            path: "/exams",
            content_type: None,
            body: json_body(json!({"user_uuid": user, "exam_uuid": Uuid::new_v4()})),
            status: 415,
            error_contains: "no Content-Type",
        },
        Case {
            name: "a body over 1 MiB",
            method: "POST",
            path: "/exams",
            content_type: Some("application/json"),
            body: json_body(
                json!({"user_uuid": user, "exam_uuid": Uuid::new_v4(), "padding": "x".repeat(1 << 20)}),
            ),
            status: 413,
            error_contains: "larger than the limit of 1048576 bytes",
        },
        Case {
            name: "an unknown route",
            method: "GET",
            path: "/no/such/route",
            content_type: None,
            body: Vec::new(),
            status: 404,
            error_contains: "no route for GET /no/such/route",
        },
        Case {
            name: "a method the route does not take",
            method: "DELETE",
            path: "/exams",
            content_type: None,
            body: Vec::new(),
            status: 405,
            error_contains: "DELETE is not allowed on /exams; it accepts GET, POST",
        },
        Case {
            name: "a path parameter that is not a UUID",
            method: "GET",
            path: "/exams/not-a-uuid",
            content_type: None,
            body: Vec::new(),
            status: 400,
            error_contains: "path parameter uuid = \"not-a-uuid\" is invalid",
        },
        Case {
            name: "an exam that does not exist",
            method: "GET",
            path: "/exams/00000000-0000-0000-0000-000000000000",
            content_type: None,
            body: Vec::new(),
            status: 404,
            error_contains: "Exam 00000000-0000-0000-0000-000000000000 does not exist",
        },
    ];
    for case in cases {
        let answer: Answer = http
            .send(case.method, case.path, case.content_type, case.body)
            .await;
        assert_eq!(answer.status, case.status, "{}: {}", case.name, answer.body);
        let error = answer.error();
        assert!(
            error.contains(case.error_contains),
            "{}: the error {error:?} should contain {:?}",
            case.name,
            case.error_contains
        );
        if case.status == 405 {
            // The host's own routes (axum's list) and the components' routes (the registry's).
            let allowed = if case.path == "/health" {
                "GET,HEAD"
            } else {
                "GET, POST"
            };
            assert_eq!(answer.header("allow"), Some(allowed), "{}", case.name);
        }
        assert_eq!(
            host.table_counts().await,
            before,
            "{} changed the database",
            case.name
        );
    }
}
