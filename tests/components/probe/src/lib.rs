//! A service for tests and benchmarks: `GET /probe/noop` does nothing (what one
//! instantiate-and-call costs); every other handler misbehaves the way a hostile or buggy
//! component would, and the host must stop or refuse it with an error that names the limit.

use saga_sdk::bindings::saga::host::{broker, logging, storage};
use saga_sdk::prelude::*;

/// What the write flood stores.
#[derive(Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Junk {
    n: u64,
}

impl Aggregate for Junk {
    const NAME: &'static str = "Junk";
}

fn noop(_request: Request) -> Result<Response> {
    Ok(Response::empty())
}

fn trap(_request: Request) -> Result<Response> {
    panic!("the probe panics on purpose")
}

fn endless_loop(_request: Request) -> Result<Response> {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn memory_bomb(_request: Request) -> Result<Response> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// `?mb=N`: allocates and frees N MiB through buffers of 64 KiB while it keeps a small string
/// from every round (so that what it frees is not the latest allocation), checks every buffer's
/// bytes, and answers how large its memory grew: a call's allocator must reuse what is freed
/// once the call has churned through more than its arena.
fn churn(request: Request) -> Result<Response> {
    let mib: usize = request.query("mb").unwrap_or("64").parse().unwrap_or(64);
    let mut kept = Vec::new();
    for round in 0..mib * 16 {
        let fill = round as u8;
        let buffer = vec![fill; 64 << 10];
        kept.push(round.to_string());
        let grown = [buffer.as_slice(), &[fill; 4096]].concat();
        if grown.iter().any(|&b| b != fill) {
            return Err(Error::system(format!(
                "round {round}: a buffer lost its bytes"
            )));
        }
    }
    if kept
        .iter()
        .enumerate()
        .any(|(round, text)| *text != round.to_string())
    {
        return Err(Error::system("a kept string lost its bytes"));
    }
    let memory_bytes = core::arch::wasm32::memory_size(0) << 16;
    Ok(Response::new(
        json!({ "memory_mib": memory_bytes >> 20, "kept": kept.len() }),
    ))
}

/// `?mb=N`: answers N MiB.
fn huge_output(request: Request) -> Result<Response> {
    let mib: usize = request.query("mb").unwrap_or("64").parse().unwrap_or(64);
    Ok(Response::new("x".repeat(mib << 20)))
}

fn deep_recursion(_request: Request) -> Result<Response> {
    fn descend(depth: u64) -> u64 {
        if depth == u64::MAX {
            return 0;
        }
        std::hint::black_box(descend(std::hint::black_box(depth + 1))) + 1
    }
    Ok(Response::new(descend(0)))
}

/// `?count=N`: creates N aggregates; `&ignore-errors=true` keeps going when the host refuses.
fn write_flood(request: Request) -> Result<Response> {
    let count: u64 = request
        .query("count")
        .unwrap_or("1000000")
        .parse()
        .unwrap_or(1_000_000);
    let ignore_errors = request.query("ignore-errors") == Some("true");
    let mut stored = 0;
    for n in 0..count {
        match (Junk { n }).create() {
            Ok(_) => stored += 1,
            Err(_) if ignore_errors => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Response::new(json!({"stored": stored})))
}

/// Tries to read the Exam service's aggregates by their type name.
fn foreign_read(request: Request) -> Result<Response> {
    let uuid = request.param("uuid")?;
    let get = storage::get("Exam", uuid).map(|found| found.data);
    let find = storage::find("Exam", &[storage::ConditionNode::AlwaysTrue], &[], None)
        .map(|found| found.len());
    Ok(Response::new(json!({
        "get": format!("{get:?}"),
        "find": format!("{find:?}"),
    })))
}

/// Tries to speak for other services: publish their aggregates' events and have replies sent to
/// a topic another service handles.
fn impersonate(_request: Request) -> Result<Response> {
    let forged_event = broker::publish("ExamCreated", r#"{"uuid":"forged"}"#);
    let stolen_reply = broker::send("GetUserAttempts", "{}", Some("GetUserAttempts"));
    Ok(Response::new(json!({
        "publish": format!("{forged_event:?}"),
        "send": format!("{stolen_reply:?}"),
    })))
}

/// Looks for anything outside the sandbox: files, environment, network, clock.
fn escape(request: Request) -> Result<Response> {
    let port = request.query("port").unwrap_or("80");
    let files = std::fs::read_dir("/").map(|entries| entries.count());
    let passwd = std::fs::read_to_string("/etc/passwd").map(|text| text.len());
    let network = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).map(|_| "connected");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    Ok(Response::new(json!({
        "files": format!("{files:?}"),
        "passwd": format!("{passwd:?}"),
        "environment": std::env::vars().count(),
        "arguments": std::env::args().count(),
        "network": format!("{network:?}"),
        "unix_seconds": now,
    })))
}

/// `?lines=N`: writes N log lines.
fn log_spam(request: Request) -> Result<Response> {
    let lines: u64 = request
        .query("lines")
        .unwrap_or("100000")
        .parse()
        .unwrap_or(100_000);
    for n in 0..lines {
        logging::log(logging::Level::Info, &format!("probe log line {n}"));
    }
    Ok(Response::new(json!({"lines": lines})))
}

fn stderr_spam(_request: Request) -> Result<Response> {
    let line = "e".repeat(1023);
    for _ in 0..(64 << 10) {
        eprintln!("{line}");
    }
    Ok(Response::empty())
}

/// `?limit=KEY`: makes one write and sends one message, then breaks the limit KEY (max-writes,
/// max-messages, max-find or max-value-kb), ignores the refusal and answers success. The host
/// must fail the call anyway, taking back the write and the message.
fn ignore_refusal(request: Request) -> Result<Response> {
    let limit = request.query("limit").unwrap_or_default().to_string();
    (Junk { n: 0 }).create()?;
    broker::send("ProbeNoop", "{}", None)?;
    let refused = match limit.as_str() {
        "max-writes" => (1..100_000u64)
            .map(|n| storage::create("Junk", None, &format!(r#"{{"n":{n}}}"#)))
            .find_map(Result::err)
            .map(|e| format!("{e:?}")),
        "max-messages" => (0..100_000)
            .map(|_| broker::send("ProbeNoop", "{}", None))
            .find_map(Result::err)
            .map(|e| format!("{e:?}")),
        "max-find" => storage::find("Junk", &[storage::ConditionNode::AlwaysTrue], &[], None)
            .err()
            .map(|e| format!("{e:?}")),
        "max-value-kb" => {
            let big = format!(r#"{{"n":1,"pad":"{}"}}"#, "x".repeat(64 << 10));
            storage::create("Junk", None, &big)
                .err()
                .map(|e| format!("{e:?}"))
        }
        other => return Err(Error::business(format!("unknown limit {other:?}"))),
    };
    Ok(Response::new(json!({"ignored": refused})))
}

/// Calls the host without end, ignoring every answer.
fn host_call_flood(_request: Request) -> Result<Response> {
    let uuid = Uuid::nil().to_string();
    loop {
        let _ = std::hint::black_box(storage::get("Junk", &uuid));
    }
}

fn service() -> Service {
    Service::new("probe")
        .aggregate::<Junk>()
        .rest_query(Method::Get, "/probe/noop", noop)
        .broker_command("ProbeNoop", noop)
        .rest_query(Method::Get, "/probe/trap", trap)
        .rest_query(Method::Get, "/probe/loop", endless_loop)
        .rest_query(Method::Get, "/probe/memory", memory_bomb)
        .rest_query(Method::Get, "/probe/huge", huge_output)
        .rest_query(Method::Get, "/probe/churn", churn)
        .rest_query(Method::Get, "/probe/recursion", deep_recursion)
        .rest_command(Method::Post, "/probe/flood", write_flood)
        .rest_query(Method::Get, "/probe/foreign/{uuid}", foreign_read)
        .rest_command(Method::Post, "/probe/impersonate", impersonate)
        .rest_query(Method::Get, "/probe/escape", escape)
        .rest_query(Method::Get, "/probe/log", log_spam)
        .rest_query(Method::Get, "/probe/stderr", stderr_spam)
        .rest_query(Method::Get, "/probe/host-calls", host_call_flood)
        .rest_command(Method::Post, "/probe/ignore-refusal", ignore_refusal)
}

saga_sdk::export_participant!(service);
