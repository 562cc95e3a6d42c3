//! The operator's pages at scale: a fresh host's SQLite database filled with 100,000 sagas,
//! then the console's pages and the `/sagas` queries timed one request at a time (the issue's
//! target: each under 100 ms).
//!
//! The sagas are copies of a few real ones (finished, errored and paused, of two definitions)
//! the host ran first: each copy gets an id and times of its own (spread over the last days)
//! and is inserted with SQL into the schema the host created, so that the pages read rows the
//! host itself wrote.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sqlx::Connection;

use crate::server::{Server, component};
use crate::stats::Samples;
use crate::swap::{Http, send};

const TOKEN: &str = "bench";

/// A request's headers, as (name, value) pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Fills a fresh host with `sagas` sagas and times each page `requests` times.
pub async fn run(sagas: usize, requests: usize) -> anyhow::Result<()> {
    let server = Server::start(
        &[
            component("test_orchestrator")?,
            component("test_participant")?,
        ],
        &["--admin-token", TOKEN, "--retry-delay-ms", "3600000"],
    )?;
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let addr = server.addr.as_str();
    let one = seed(&client, addr).await?;
    let started = Instant::now();
    fill(&server, sagas).await?;
    println!(
        "console and /sagas with {sagas} sagas in SQLite (filled in {:.1} s), {requests} requests a page, one at a time",
        started.elapsed().as_secs_f64()
    );
    let cookie = log_in(&client, addr).await?;
    let console = [("cookie", cookie.as_str())];
    let bearer = format!("Bearer {TOKEN}");
    let api = [("authorization", bearer.as_str())];
    let saga_page = format!("/console/sagas/{one}");
    let pages: [(&str, &str, Headers); 8] = [
        ("console list", "/console", &console),
        ("console list, paused", "/console?status=paused", &console),
        (
            "console list, THREE",
            "/console?service=orchestrator&name=THREE",
            &console,
        ),
        ("console saga", saga_page.as_str(), &console),
        ("console components", "/console/components", &console),
        ("GET /sagas", "/sagas", &api),
        ("GET /sagas?status=errored", "/sagas?status=errored", &api),
        ("GET /sagas/stats", "/sagas/stats", &api),
    ];
    println!("{:<28} {:>9} {:>9}", "page", "p50 ms", "p99 ms");
    for (label, path, headers) in pages {
        let samples = time_page(&client, addr, path, headers, requests).await?;
        println!(
            "{label:<28} {:>9.2} {:>9.2}",
            ms(samples.percentile(50.0)),
            ms(samples.percentile(99.0))
        );
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Runs the sagas the copies are made of — each definition finished, errored and paused —;
/// answers the id of a paused one (its page is timed).
async fn seed(client: &Http, addr: &str) -> anyhow::Result<String> {
    let mut paused = String::new();
    for saga in ["THREE", "MAIN"] {
        // The second step of THREE is "s2", of MAIN "b".
        for (kind, context, expected) in [
            ("run", json!({}), "finished"),
            (
                "run",
                json!({"behaviors": {"s2": "business", "b": "business"},
                       "on_error": {"s2": "fail", "b": "fail"}}),
                "errored",
            ),
            (
                "start",
                json!({"behaviors": {"s2": "system", "b": "system"}}),
                "paused",
            ),
        ] {
            let mut body = context;
            body["key"] = json!(format!("seed-{saga}-{expected}"));
            let request = hyper::Request::post(format!("http://{addr}/{kind}/{saga}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))?;
            let (status, answer) = send(client, request).await?;
            if status != 200 || answer["status"] != expected {
                bail!(
                    "seeding a {expected} {saga} saga gave {status}: {answer}; did the test \
                     orchestrator or participant change? (rebuild with `make components`)"
                );
            }
            if expected == "paused" {
                paused = answer["id"].as_str().unwrap_or_default().to_string();
            }
        }
    }
    Ok(paused)
}

/// Inserts `count` copies of the host's sagas, each with an id and times of its own.
async fn fill(server: &Server, count: usize) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", server.database().display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .with_context(|| format!("open the host's database {url}"))?;
    sqlx::query("PRAGMA busy_timeout = 10000")
        .execute(&mut db)
        .await?;
    let inserted = sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1),
              t AS (SELECT *, row_number() OVER (ORDER BY id) - 1 AS k,
                           count(*) OVER () AS templates FROM sagas)
         INSERT INTO sagas (id, service, name, version, status, record, created_at, updated_at,
                            revision, timer_at)
         SELECT printf('%08x-0000-4000-8000-%012x', n.i, n.i), t.service, t.name, t.version,
                t.status, t.record,
                t.created_at - n.i * 3000, t.updated_at - n.i * 3000, t.revision, NULL
         FROM n JOIN t ON t.k = n.i % t.templates",
    )
    .bind(count as i64)
    .execute(&mut db)
    .await
    .context("insert the copies")?;
    if inserted.rows_affected() != count as u64 {
        bail!(
            "inserted {} sagas instead of {count}",
            inserted.rows_affected()
        );
    }
    Ok(())
}

/// The console's session cookie for the admin token.
async fn log_in(client: &Http, addr: &str) -> anyhow::Result<String> {
    let request = hyper::Request::post(format!("http://{addr}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("token={TOKEN}"))))?;
    let response = client.request(request).await?;
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the console's login answered without a session cookie")?;
    Ok(cookie.to_string())
}

/// `requests` GETs of `path`, one at a time, after a warm-up; each must answer 200.
async fn time_page(
    client: &Http,
    addr: &str,
    path: &str,
    headers: Headers<'_>,
    requests: usize,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for n in 0..requests + 3 {
        let mut request = hyper::Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let sent = Instant::now();
        let (status, body) = send(client, request.body(Full::new(Bytes::new()))?).await?;
        if status != 200 {
            bail!("GET {path} answered {status}: {body}");
        }
        if n >= 3 {
            samples.push(sent.elapsed());
        }
    }
    Ok(samples)
}
