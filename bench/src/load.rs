//! The measurements: HTTP load (a request factory, run by concurrent clients for a while), and
//! one instantiate-and-call.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use saga_host::runtime::bindings::types as wit;
use saga_host::runtime::{Access, CallContext, Runtime, RuntimeConfig, Scope};

use crate::stats::Samples;

pub struct Report {
    pub completed: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latency: Samples,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Makes the body of each request.
pub type BodyFn = Box<dyn Fn() -> String + Send + Sync>;
/// Tells whether an answer (status, body) counts as a completed saga.
pub type CompletedFn = Box<dyn Fn(u16, &[u8]) -> bool + Send + Sync>;

/// One kind of request: where to POST, a fresh body each time, and whether an answer counts as
/// completed.
pub struct Workload {
    pub path: String,
    pub body: BodyFn,
    pub completed: CompletedFn,
}

/// `clients` loops sending the workload; a quarter of `duration` warms up first.
pub async fn run(
    target: &str,
    workload: Arc<Workload>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(clients)
        .build_http::<Full<Bytes>>();
    let url: hyper::Uri = format!("http://{target}{}", workload.path).parse()?;
    phase(&client, &url, &workload, clients, duration / 4).await?;
    phase(&client, &url, &workload, clients, duration).await
}

async fn phase(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &hyper::Uri,
    workload: &Arc<Workload>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, stop, workload) =
                (client.clone(), url.clone(), stop.clone(), workload.clone());
            tokio::spawn(async move {
                let mut latency = Samples::default();
                let mut errors = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = hyper::Request::post(url.clone())
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from((workload.body)())))
                        .expect("a valid request");
                    let sent = Instant::now();
                    let completed = match client.request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            (workload.completed)(status, &body)
                        }
                        Err(_) => false,
                    };
                    if completed {
                        latency.push(sent.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latency, errors)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut report = Report {
        completed: 0,
        errors: 0,
        elapsed,
        latency: Samples::default(),
    };
    for task in tasks {
        let (latency, errors) = task.await.context("a client task")?;
        report.completed += latency.len();
        report.errors += errors;
        report.latency.extend(latency);
    }
    Ok(report)
}

/// Times instantiate-and-call of a no-op handler through the host's runtime, one call at a time.
pub async fn instantiate(calls: usize, component: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match component {
        Some(path) => path,
        None => crate::server::component("test_probe")?,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let runtime = Runtime::new(RuntimeConfig::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = Instant::now();
    let version = runtime.load(bytes, path.display().to_string()).await?;
    let load_time = loaded.elapsed();
    let handler = version
        .manifest
        .handlers
        .iter()
        .find(|h| h.name == "GET /probe/noop")
        .context("the component has no GET /probe/noop handler")?;
    let request = wit::Request {
        handler: handler.name.clone(),
        trigger: handler.triggers[0].clone(),
        payload: "null".into(),
        params: Vec::new(),
        query: Vec::new(),
        headers: Vec::new(),
        user: None,
    };
    let call = || async {
        let context = CallContext::new(version.clone(), None, Scope::Direct, Access::ReadOnly);
        let (result, _) = runtime.handle(&version, context, request.clone()).await;
        result
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    };
    for _ in 0..calls / 10 {
        call().await?;
    }
    let mut samples = Samples::default();
    let started = Instant::now();
    for _ in 0..calls {
        let one = Instant::now();
        call().await?;
        samples.push(one.elapsed());
    }
    let total = started.elapsed();
    println!(
        "instantiate-and-call of a no-op handler ({}): {calls} calls, p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs; load (compile) {:.0} ms; pooling allocator: {}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        samples.percentile(50.0).as_secs_f64() * 1e6,
        samples.percentile(99.0).as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e6 / calls as f64,
        load_time.as_secs_f64() * 1e3,
        runtime.uses_pooling(),
    );
    Ok(())
}
