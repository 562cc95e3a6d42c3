//! Hot-loading, measured: how long from `PUT /admin/components/exam` to the first `POST /exams`
//! answered by the new build (compile cache cold, then warm), and the throughput of `POST
//! /exams` while the component is swapped again and again, against steady state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::server::{Server, component};
use crate::stats::Samples;

const TOKEN: &str = "bench";

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub async fn send(
    client: &Http,
    request: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

async fn deploy(client: &Http, addr: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let request = hyper::Request::put(format!("http://{addr}/admin/components/exam"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::copy_from_slice(bytes)))?;
    let (status, body) = send(client, request).await?;
    if status != 200 {
        bail!("the deploy was refused ({status}): {body}");
    }
    Ok(())
}

/// Which build answered a `POST /exams`: "b" for the variant, "a" for the default.
async fn submit(client: &Http, addr: &str) -> anyhow::Result<&'static str> {
    let body =
        serde_json::json!({"user_uuid": uuid::Uuid::new_v4(), "exam_uuid": uuid::Uuid::new_v4()});
    let request = hyper::Request::post(format!("http://{addr}/exams"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let (status, body) = send(client, request).await?;
    if status != 200 {
        bail!("POST /exams failed ({status}): {body}");
    }
    Ok(if body["build"] == "b" { "b" } else { "a" })
}

/// Deploys `bytes` and times until a `POST /exams` is answered by `build`.
async fn time_to_first_response(
    client: &Http,
    addr: &str,
    bytes: &[u8],
    build: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    deploy(client, addr, bytes).await?;
    while submit(client, addr).await? != build {}
    Ok(started.elapsed())
}

pub async fn run(swaps: usize, clients: usize, seconds: Duration) -> anyhow::Result<()> {
    let a = std::fs::read(component("guest_exam")?)?;
    let b = std::fs::read(component("guest_exam_variant_b")?)?;
    let server = Server::start(
        &[component("guest_exam")?, component("guest_attempt")?],
        &["--admin-token", TOKEN, "--watch-ms", "0"],
    )?;
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let addr = server.addr.clone();
    println!(
        "hot-loading the Exam component ({} KiB) while the host serves",
        b.len() / 1024
    );
    let cold = time_to_first_response(&client, &addr, &b, "b").await?;
    println!(
        "deploy to first response, compile cache cold: {:.1} ms",
        cold.as_secs_f64() * 1e3
    );
    let mut warm = Samples::default();
    for swap in 0..swaps {
        let (bytes, build) = if swap.is_multiple_of(2) {
            (&a, "a")
        } else {
            (&b, "b")
        };
        warm.push(time_to_first_response(&client, &addr, bytes, build).await?);
    }
    println!(
        "deploy to first response, compile cache warm: p50 {:.1} ms, p99 {:.1} ms ({swaps} deploys)",
        warm.percentile(50.0).as_secs_f64() * 1e3,
        warm.percentile(99.0).as_secs_f64() * 1e3
    );

    let workload = Arc::new(crate::exam_workload());
    let steady = crate::load::run(&[addr.as_str()], workload.clone(), clients, seconds).await?;
    let swapping = {
        let (client, addr, a, b) = (client.clone(), addr.clone(), a.clone(), b.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut deploys = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    deploy(
                        &client,
                        &addr,
                        if deploys.is_multiple_of(2) { &a } else { &b },
                    )
                    .await?;
                    deploys += 1;
                }
                anyhow::Ok(deploys)
            })
        };
        let report = crate::load::run(&[server.addr.as_str()], workload, clients, seconds).await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let deploys = swapper.await.context("the swapping task")??;
        (report, deploys)
    };
    let (during, deploys) = swapping;
    println!(
        "POST /exams with {clients} clients: steady {:.0}/s (p50 {:.1} ms, {} errors); during {deploys} swaps {:.0}/s (p50 {:.1} ms, {} errors); ratio {:.2}",
        steady.per_second(),
        steady.latency.percentile(50.0).as_secs_f64() * 1e3,
        steady.errors,
        during.per_second(),
        during.latency.percentile(50.0).as_secs_f64() * 1e3,
        during.errors,
        during.per_second() / steady.per_second()
    );
    Ok(())
}
