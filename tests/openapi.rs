//! The host's OpenAPI document (`host/openapi.json`, served at `GET /openapi.json`) against the
//! code and a real host: it is OpenAPI 3.1 with every `$ref` resolving; it documents exactly the
//! routes the code registers (read from the sources of `host/src/http`, methods included); and
//! the JSON a real host answers fits its response schemas — checked by a small checker of the
//! part of JSON Schema the document uses (type, enum, properties, required,
//! additionalProperties, items, minItems, maxItems, anyOf, $ref).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{Answer, Host, TempDir};
use serde_json::{Value, json};
use uuid::Uuid;

const BUNDLED: [&str; 2] = ["guest_exam", "guest_attempt"];
const TOKEN: &str = "s3cret";
const METHODS: [&str; 8] = [
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

fn host_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn document_text() -> String {
    std::fs::read_to_string(host_dir().join("openapi.json")).expect("read host/openapi.json")
}

fn document() -> Value {
    serde_json::from_str(&document_text()).expect("host/openapi.json is JSON")
}

/// What a local `$ref` ("#/components/schemas/Execution") points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    reference
        .strip_prefix('#')
        .and_then(|pointer| doc.pointer(pointer))
        .unwrap_or_else(|| panic!("$ref {reference} does not resolve"))
}

/// Every `$ref` anywhere in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(fields) => {
            if let Some(reference) = fields.get("$ref").and_then(Value::as_str) {
                found.push(reference);
            }
            fields.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_every_ref_resolves() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi is {version:?}");
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        resolve(&doc, reference);
    }
    assert!(
        doc["info"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Component routes")),
        "info.description says where the components' routes are"
    );
}

/// The text between an opening parenthesis (already read) and its closing one.
fn parenthesized(text: &str) -> &str {
    let mut depth = 1;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after .route(");
}

/// The HTTP methods a `.route(…)` call's method router names: `get(…)`, `.post(…)`,
/// `axum::routing::put(…)`.
fn methods_in(router: &str) -> Vec<String> {
    let bytes = router.as_bytes();
    let mut found = Vec::new();
    for method in METHODS.iter().chain(&["any"]) {
        for (at, _) in router.match_indices(method) {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(at + method.len());
            let word_start = before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'));
            if word_start && after == Some(&b'(') {
                assert_ne!(
                    *method, "any",
                    "an any(…) route: register each method, so that each can be documented"
                );
                found.push(method.to_uppercase());
            }
        }
    }
    found
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Every (method, path) the HTTP front registers, read from the sources of `host/src/http`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(&host_dir().join("src/http"), &mut files);
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(
            !code.contains(".nest(") && !code.contains(".nest_service("),
            "{}: a nested router; teach tests/openapi.rs its prefix",
            file.display()
        );
        for (at, call) in code.match_indices(".route(") {
            let args = parenthesized(&code[at + call.len()..]);
            let literal = args
                .trim_start()
                .strip_prefix('"')
                .and_then(|rest| rest.split_once('"'));
            let Some((path, router)) = literal else {
                // Another type's `route` method (the registry's), unless it names HTTP methods.
                assert!(
                    methods_in(args).is_empty(),
                    "{}: a route whose path is not a literal: .route({args})",
                    file.display()
                );
                continue;
            };
            let methods = methods_in(router);
            assert!(
                !methods.is_empty(),
                "{}: {path} has no method",
                file.display()
            );
            for method in methods {
                routes.insert((method, path.to_string()));
            }
        }
    }
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn the_document_has_every_route_the_code_registers_and_no_other() {
    let doc = document();
    let code = registered_routes();
    let documented = documented_routes(&doc);
    assert!(
        code.contains(&("GET".into(), "/sagas/{id}".into())),
        "{code:?}"
    );
    let show = |routes: Vec<&(String, String)>| {
        routes
            .iter()
            .map(|(method, path)| format!("{method} {path}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let undocumented: Vec<_> = code.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes the code registers that host/openapi.json does not document: {}",
        show(undocumented)
    );
    let gone: Vec<_> = documented.difference(&code).collect();
    assert!(
        gone.is_empty(),
        "routes host/openapi.json documents that the code does not register: {}",
        show(gone)
    );

    // Each operation declares exactly the parameters its path has.
    for (method, path) in &documented {
        let item = &doc["paths"][path];
        let operation = &item[method.to_lowercase()];
        let declared: BTreeSet<&str> = [&item["parameters"], &operation["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| match p["$ref"].as_str() {
                Some(reference) => resolve(&doc, reference),
                None => p,
            })
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().expect("a parameter's name"))
            .collect();
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, in_path, "the path parameters of {method} {path}");
    }
}

/// What `value` at `at` does not fit of `schema`: a checker of the part of JSON Schema the
/// document uses.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        check(doc, resolve(doc, reference), value, at, problems);
    }
    if let Some(alternatives) = schema["anyOf"].as_array() {
        let mut closest: Option<Vec<String>> = None;
        for alternative in alternatives {
            let mut found = Vec::new();
            check(doc, alternative, value, at, &mut found);
            if found.is_empty() {
                closest = None;
                break;
            }
            if closest.as_ref().is_none_or(|c| found.len() < c.len()) {
                closest = Some(found);
            }
        }
        if let Some(closest) = closest {
            problems.push(format!(
                "{at}: fits none of the alternatives; the closest: {}",
                closest.join("; ")
            ));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("the checker does not know type {other:?}"),
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        problems.push(format!("{at}: {value} is not of type {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(fields) = value.as_object() {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().expect("a required field's name");
            if !fields.contains_key(name) {
                problems.push(format!("{at}: the required field {name:?} is missing"));
            }
        }
        for (name, field) in fields {
            let at = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(property) => check(doc, property, field, &at, problems),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => {
                        problems.push(format!("{at}: a field the schema does not know"))
                    }
                    extra @ Value::Object(_) => check(doc, extra, field, &at, problems),
                    _ => {}
                },
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(doc, item_schema, item, &format!("{at}[{i}]"), problems);
            }
        }
        let count = items.len() as u64;
        if schema["minItems"].as_u64().is_some_and(|min| count < min)
            || schema["maxItems"].as_u64().is_some_and(|max| count > max)
        {
            problems.push(format!("{at}: {count} items is not what the schema allows"));
        }
    }
}

/// Asserts that `answer` is a response `method path` documents for its status, with JSON that
/// fits the documented schema; returns the JSON.
fn fits(doc: &Value, method: &str, path: &str, answer: &Answer) -> Value {
    let operation = &doc["paths"][path][method.to_lowercase()];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let status = answer.status.to_string();
    let mut response = &operation["responses"][&status];
    if let Some(reference) = response["$ref"].as_str() {
        response = resolve(doc, reference);
    }
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {}",
        answer.body
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{method} {path}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema"
    );
    let body = answer.json();
    let mut problems = Vec::new();
    check(doc, schema, &body, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "{method} {path} answered {status} with JSON the document does not describe:\n{}\n{body:#}",
        problems.join("\n")
    );
    body
}

#[test]
fn the_checker_refuses_what_the_schemas_do_not_say() {
    let doc = document();
    let execution = json!({"$ref": "#/components/schemas/Execution"});
    let mut problems = Vec::new();
    check(
        &doc,
        &execution,
        &json!({"id": 1, "surprise": true}),
        "$",
        &mut problems,
    );
    let said = problems.join("\n");
    for expected in [
        "$.id: 1 is not",
        "$.surprise: a field",
        "\"status\" is missing",
    ] {
        assert!(said.contains(expected), "{expected}: {said}");
    }
}

#[tokio::test]
async fn a_real_host_serves_the_document_and_answers_as_it_says() {
    let doc = document();
    let dir = TempDir::new("openapi");
    let host = Host::start_with(&dir, &BUNDLED, &["--admin-token", TOKEN]);
    let http = host.http();

    let served = http.get("/openapi.json").await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("content-type"), Some("application/json"));
    assert_eq!(
        served.body,
        document_text(),
        "GET /openapi.json is host/openapi.json"
    );

    fits(&doc, "GET", "/health", &http.get("/health").await);
    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let documented = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .expect("the metrics' content");
    assert!(
        documented.contains_key(metrics.header("content-type").unwrap_or_default()),
        "{:?}",
        metrics.header("content-type")
    );

    // Three submissions finish their saga; the fourth one's saga fails.
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    for attempt in 1..=4 {
        let submission = json!({"user_uuid": user, "exam_uuid": exam});
        let answer = http.post_json("/exams", &submission).await;
        let expected = if attempt <= 3 { 200 } else { 400 };
        assert_eq!(
            answer.status, expected,
            "submission {attempt}: {}",
            answer.body
        );
    }

    let get = |path: String| async move { http.admin("GET", &path, Some(TOKEN)).await };
    let page = fits(&doc, "GET", "/sagas", &get("/sagas".into()).await);
    let ids: Vec<String> = page["sagas"]
        .as_array()
        .expect("sagas")
        .iter()
        .map(|saga| saga["id"].as_str().expect("an id").to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{page}");
    let first = fits(&doc, "GET", "/sagas", &get("/sagas?limit=1".into()).await);
    assert!(first["next"].is_string(), "{first}");
    let errored = fits(
        &doc,
        "GET",
        "/sagas",
        &get("/sagas?status=errored".into()).await,
    );
    assert_eq!(
        errored["sagas"].as_array().map(Vec::len),
        Some(1),
        "{errored}"
    );

    for id in &ids {
        let saga = fits(
            &doc,
            "GET",
            "/sagas/{id}",
            &get(format!("/sagas/{id}")).await,
        );
        assert_eq!(saga["id"], id.as_str());
        let history = get(format!("/sagas/{id}/history")).await;
        fits(&doc, "GET", "/sagas/{id}/history", &history);
    }
    fits(
        &doc,
        "GET",
        "/sagas/stats",
        &get("/sagas/stats".into()).await,
    );
    let components = fits(
        &doc,
        "GET",
        "/admin/components",
        &get("/admin/components".into()).await,
    );
    assert_eq!(components.as_array().map(Vec::len), Some(2), "{components}");
    fits(
        &doc,
        "GET",
        "/admin/dead-letters",
        &get("/admin/dead-letters".into()).await,
    );

    // A dry run (each saga ended: each refused), and the refusals as the document says.
    let dry_run = json!({"action": "cancel", "filter": {"service": "exam"}, "dry_run": true});
    let bulk = http
        .admin_json("POST", "/sagas/actions", Some(TOKEN), &dry_run)
        .await;
    let bulk = fits(&doc, "POST", "/sagas/actions", &bulk);
    assert_eq!(bulk["matched"], 4, "{bulk}");
    let cancel = http
        .admin_json(
            "POST",
            &format!("/sagas/{}/cancel", ids[0]),
            Some(TOKEN),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status, 409, "{}", cancel.body);
    fits(&doc, "POST", "/sagas/{id}/cancel", &cancel);
    fits(
        &doc,
        "GET",
        "/sagas/{id}",
        &get("/sagas/not-a-saga".into()).await,
    );
    fits(
        &doc,
        "GET",
        "/sagas",
        &get("/sagas?colour=blue".into()).await,
    );
    let anonymous = http.get("/admin/components").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    fits(&doc, "GET", "/admin/components", &anonymous);
}
