//! What an operator sees of a running host: `GET /metrics` after the exam flow (the counts match
//! what was done, the text passes `promtool check metrics`, and a real Prometheus server scrapes
//! it and answers PromQL), request ids and the access log, and one OpenTelemetry trace for a saga
//! whose steps run on two hosts (PostgreSQL and NATS needed), received by an OTLP endpoint inside
//! this test.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Host, Http, NatsCluster, PgDatabase, TempDir, cluster_host, component};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{Value, json};
use uuid::Uuid;

const BUNDLED: [&str; 2] = ["guest_exam", "guest_attempt"];

fn submission(user: Uuid, exam: Uuid) -> Value {
    json!({"user_uuid": user, "exam_uuid": exam})
}

/// One sample line of the Prometheus text format: its name, labels and value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line without a value: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("{line}: the value does not parse ({e})"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("{line}: a label without a value"));
                    (key.to_string(), value.trim_end_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value,
            }
        })
        .collect()
}

/// The sum of the series called `name` whose labels include all of `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

async fn scrape(http: &Http) -> String {
    let answer = http.get("/metrics").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        answer.headers
    );
    answer.body
}

/// Three accepted submissions and a refused fourth, then a look at one exam.
async fn exam_flow(http: &Http, user: Uuid, exam: Uuid) {
    for attempt in 1..=3 {
        let answer = http.post_json("/exams", &submission(user, exam)).await;
        assert_eq!(answer.status, 200, "submission {attempt}: {}", answer.body);
        let uuid = answer.json()["uuid"].as_str().expect("a uuid").to_string();
        let fetched = http.get(&format!("/exams/{uuid}")).await;
        assert_eq!(fetched.status, 200, "{}", fetched.body);
    }
    let refused = http.post_json("/exams", &submission(user, exam)).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
}

#[tokio::test]
async fn metrics_count_the_exam_flow_and_pass_promtool() {
    let dir = TempDir::new("metrics");
    let host = Host::start(&dir, &BUNDLED);
    let http = host.http();
    let (user, exam) = (Uuid::new_v4(), Uuid::new_v4());
    exam_flow(http, user, exam).await;

    let text = scrape(http).await;
    let metrics = samples(&text);
    let saga = [("saga", "GET_USER_ATTEMPTS")];
    assert_eq!(total(&metrics, "saga_host_sagas_started_total", &saga), 4.0);
    let ended = |status| {
        total(
            &metrics,
            "saga_host_sagas_ended_total",
            &[("saga", "GET_USER_ATTEMPTS"), ("status", status)],
        )
    };
    assert_eq!(ended("finished"), 3.0, "{text}");
    assert_eq!(ended("errored"), 1.0, "{text}");
    assert_eq!(
        total(&metrics, "saga_host_saga_duration_seconds_count", &saga),
        4.0
    );
    let step = [("topic", "GetUserAttempts")];
    assert_eq!(
        total(&metrics, "saga_host_step_dispatches_total", &step),
        4.0
    );
    assert_eq!(total(&metrics, "saga_host_step_replies_total", &step), 4.0);
    assert_eq!(
        total(&metrics, "saga_host_step_latency_seconds_count", &step),
        4.0
    );
    assert!(
        total(
            &metrics,
            "saga_host_component_calls_total",
            &[("export", "handle"), ("outcome", "ok")]
        ) >= 8.0,
        "four POSTs and three GETs on exam, four commands on attempt: {text}"
    );
    assert!(total(&metrics, "saga_host_component_cpu_seconds_count", &[]) >= 8.0);
    assert!(total(&metrics, "saga_host_component_cpu_seconds_sum", &[]) > 0.0);
    assert!(total(&metrics, "saga_host_storage_commit_seconds_count", &[]) >= 4.0);
    // SQLite's checkpointer copies those commits into the database file moments later.
    let deadline = Instant::now() + Duration::from_secs(5);
    let checkpoints = loop {
        let copies = total(
            &samples(&scrape(http).await),
            "saga_host_storage_checkpoint_seconds_count",
            &[],
        );
        if copies >= 1.0 || Instant::now() > deadline {
            break copies;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        checkpoints >= 1.0,
        "no checkpoint within 5 s of the commits"
    );
    assert_eq!(
        total(&metrics, "saga_host_sagas_open", &[]),
        0.0,
        "no saga is left open: {text}"
    );
    let posts = |status| {
        total(
            &metrics,
            "saga_host_http_requests_total",
            &[("route", "/exams"), ("method", "POST"), ("status", status)],
        )
    };
    assert_eq!(posts("200"), 3.0, "{text}");
    assert_eq!(posts("400"), 1.0, "{text}");
    assert_eq!(
        total(
            &metrics,
            "saga_host_http_requests_total",
            &[("route", "/exams/{uuid}"), ("method", "GET")]
        ),
        3.0,
        "a path with an id is counted under its route template: {text}"
    );
    assert!(
        !text.contains(&user.to_string()) && !text.contains(&exam.to_string()),
        "an id from a request is in a metric label:\n{text}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is installed by the test setup (Debian package prometheus; make test-tools)",
        );
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let prometheus = Prometheus::start(&dir, &host.addr);
    let finished = prometheus
        .query_until(
            r#"sum(saga_host_sagas_ended_total{saga="GET_USER_ATTEMPTS",status="finished"})"#,
            "3",
        )
        .await;
    assert_eq!(finished, "3");
    prometheus.answers_the_dashboards_queries().await;
}

/// A Prometheus server of this test's own on loopback, scraping one host every half second.
struct Prometheus {
    child: Child,
    http: Http,
}

impl Prometheus {
    fn start(dir: &TempDir, target: &str) -> Prometheus {
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n\
                 scrape_configs:\n  - job_name: saga-host\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("write the Prometheus configuration");
        let addr = free_loopback_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by the test setup (Debian package prometheus)");
        Prometheus {
            child,
            http: Http::new(&addr),
        }
    }

    /// Asks `query` until its one result's value is `expected` (or 60 s have passed) and
    /// returns the last value seen.
    async fn query_until(&self, query: &str, expected: &str) -> String {
        let path = format!("/api/v1/query?query={}", percent_encoded(query));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(answer) = self.try_get(&path).await {
                let value = &answer["data"]["result"][0]["value"][1];
                if let Some(value) = value.as_str() {
                    last = value.to_string();
                    if last == expected {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        last
    }

    /// Every query of ops/grafana-dashboard.json is valid PromQL and reads only metrics the
    /// host defines.
    async fn answers_the_dashboards_queries(&self) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("ops/grafana-dashboard.json"))
                .expect("read the dashboard"),
        )
        .expect("the dashboard is JSON");
        let defined = std::fs::read_to_string(root.join("host/src/telemetry/metrics.rs"))
            .expect("read the metric definitions");
        let panels = dashboard["panels"].as_array().expect("panels");
        let queries: Vec<&str> = panels
            .iter()
            .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
            .filter_map(|target| target["expr"].as_str())
            .collect();
        assert!(queries.len() >= 10, "{queries:?}");
        for query in queries {
            for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("saga_host_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    assert!(
                        defined.contains(&format!("\"saga_host_{base}\"")),
                        "the dashboard reads saga_host_{base}, which the host does not define"
                    );
                }
            }
            let query = query.replace("$__rate_interval", "1m");
            let path = format!("/api/v1/query?query={}", percent_encoded(&query));
            let answer = self
                .try_get(&path)
                .await
                .unwrap_or_else(|| panic!("Prometheus refused the dashboard's query {query}"));
            assert_eq!(answer["status"], "success", "{query}: {answer}");
        }
    }

    async fn try_get(&self, path: &str) -> Option<Value> {
        let answer = self
            .http
            .try_send_with("GET", path, &[], Vec::new(), Duration::from_secs(2))
            .await
            .ok()?;
        (answer.status == 200).then(|| answer.json())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_loopback_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port on loopback");
    listener
        .local_addr()
        .expect("the port's address")
        .to_string()
}

#[tokio::test]
async fn a_request_id_is_returned_and_on_its_log_lines() {
    let dir = TempDir::new("request-id");
    let host = Host::start_with(
        &dir,
        &BUNDLED,
        &[
            "--access-log",
            "--log-format",
            "json",
            "--metrics-token",
            "m3trics-token",
        ],
    );
    let http = host.http();
    let body = submission(Uuid::new_v4(), Uuid::new_v4()).to_string();
    let answer = http
        .send_with(
            "POST",
            "/exams",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "abc"),
                ("authorization", "Bearer s3cret-client-token"),
            ],
            body.into_bytes(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-request-id"), Some("abc"));
    let generated = http.get("/health").await;
    let generated = generated
        .header("x-request-id")
        .expect("a request without an id gets one");
    assert_eq!(
        Uuid::parse_str(generated).map(|u| u.to_string()).ok(),
        Some(generated.to_string())
    );

    let refused = http.get("/metrics").await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.error().contains("metrics token"),
        "{}",
        refused.body
    );
    let scraped = http.admin("GET", "/metrics", Some("m3trics-token")).await;
    assert_eq!(scraped.status, 200, "{}", scraped.body);

    // The access line may follow the response by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let access = loop {
        let lines: Vec<Value> = host
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let access: Vec<Value> = lines
            .into_iter()
            .filter(|line| line["span"]["request_id"] == "abc")
            .collect();
        if access
            .iter()
            .any(|line| line["target"] == "saga_host::access")
            || Instant::now() > deadline
        {
            break access;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line = access
        .iter()
        .find(|line| line["target"] == "saga_host::access")
        .unwrap_or_else(|| panic!("no access log line with request id abc:\n{}", host.log()));
    assert_eq!(line["fields"]["route"], "/exams", "{line}");
    assert_eq!(line["fields"]["status"], 200, "{line}");
    assert_eq!(line["span"]["method"], "POST", "{line}");
    assert!(line["fields"]["ms"].as_f64().is_some(), "{line}");
    let log = host.log();
    for secret in ["s3cret-client-token", "m3trics-token"] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

/// A span as the test's OTLP endpoint received it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    host: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP endpoint inside the test: `POST /{host}/v1/traces` with a protobuf
/// `ExportTraceServiceRequest`; it keeps every span with the host it came from.
struct OtlpReceiver {
    addr: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        use axum::body::Bytes;
        use axum::extract::{Path, State};
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        async fn receive(
            State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>,
            Path(host): Path<String>,
            body: Bytes,
        ) -> (axum::http::StatusCode, Vec<u8>) {
            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
            };
            let mut spans = spans.lock().expect("spans lock");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        let attributes = span
                            .attributes
                            .iter()
                            .map(|kv| {
                                let value = kv
                                    .value
                                    .as_ref()
                                    .and_then(|v| v.value.as_ref())
                                    .map(|v| format!("{v:?}"))
                                    .unwrap_or_default();
                                (kv.key.clone(), value)
                            })
                            .collect();
                        spans.push(ReceivedSpan {
                            host: host.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            name: span.name,
                            attributes,
                        });
                    }
                }
            }
            (axum::http::StatusCode::OK, Vec::new())
        }
        let app = axum::Router::new()
            .route("/{host}/v1/traces", axum::routing::post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the OTLP receiver");
        let addr = listener.local_addr().expect("its address").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        OtlpReceiver { addr, spans }
    }

    fn endpoint(&self, host: &str) -> String {
        format!("http://{}/{host}", self.addr)
    }

    fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .expect("spans lock")
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_saga_across_two_hosts_is_one_trace() {
    let database = PgDatabase::create("traces").await;
    let nats = NatsCluster::create("traces").await;
    let receiver = OtlpReceiver::start().await;
    let (exam_dir, attempt_dir) = (TempDir::new("trace-exam"), TempDir::new("trace-attempt"));
    let exam_endpoint = receiver.endpoint("exam-host");
    let attempt_endpoint = receiver.endpoint("attempt-host");
    // The participant's host first: the Exam host learns what it consumes when it joins.
    let _attempt_host = cluster_host(
        &attempt_dir,
        &[component("guest_attempt")],
        &database,
        &nats,
        &["--otlp-endpoint", &attempt_endpoint],
    );
    let exam_host = cluster_host(
        &exam_dir,
        &[component("guest_exam")],
        &database,
        &nats,
        &["--otlp-endpoint", &exam_endpoint],
    );

    let trace_id = Uuid::new_v4().simple().to_string();
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let body = submission(Uuid::new_v4(), Uuid::new_v4()).to_string();
    let answer = exam_host
        .http()
        .send_with(
            "POST",
            "/exams",
            &[
                ("content-type", "application/json"),
                ("traceparent", &traceparent),
            ],
            body.into_bytes(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Spans are exported in batches (every few seconds): wait for both hosts' parts.
    let deadline = Instant::now() + Duration::from_secs(40);
    let spans = loop {
        let spans = receiver.trace(&trace_id);
        let hosts: HashSet<&str> = spans.iter().map(|span| span.host.as_str()).collect();
        let saga_ended = spans
            .iter()
            .filter(|span| span.host == "exam-host" && span.name == "saga")
            .count()
            >= 2;
        if (hosts.len() == 2 && saga_ended) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let described: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {} {} <- {}", s.host, s.name, s.span_id, s.parent))
        .collect();
    let names = |host: &str| -> HashSet<&str> {
        spans
            .iter()
            .filter(|span| span.host == host)
            .map(|span| span.name.as_str())
            .collect()
    };
    for name in ["request", "handler", "call", "saga", "commit"] {
        assert!(
            names("exam-host").contains(name),
            "no {name} span from the Exam host: {described:#?}"
        );
    }
    for name in ["deliver", "handler", "call", "commit"] {
        assert!(
            names("attempt-host").contains(name),
            "no {name} span from the Attempt host: {described:#?}"
        );
    }

    // One tree: the request's span is the child of the client's, every other span's parent
    // is a span of the same trace.
    let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let request = spans
        .iter()
        .find(|span| span.name == "request")
        .expect("the request span");
    assert_eq!(request.parent, client_span, "{described:#?}");
    for span in &spans {
        if span.span_id != request.span_id {
            assert!(
                ids.contains(span.parent.as_str()),
                "{} {} has a parent outside the trace: {described:#?}",
                span.host,
                span.name
            );
        }
    }
    let by_id: HashMap<&str, &ReceivedSpan> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let delivered = spans
        .iter()
        .find(|span| span.host == "attempt-host" && span.name == "deliver")
        .expect("the command's delivery");
    let sender = by_id[delivered.parent.as_str()];
    assert_eq!(
        sender.host, "exam-host",
        "the Attempt host's delivery continues the Exam host's span: {described:#?}"
    );
    let calls: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.host == "attempt-host" && span.name == "call")
        .collect();
    assert!(
        calls.iter().any(|call| call
            .attributes
            .get("service")
            .is_some_and(|s| s.contains("attempt"))),
        "the participant's call names its service: {calls:#?}"
    );
}
