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
use saga_host::runtime::manifest::method_name;
use saga_host::runtime::{Access, CallContext, Runtime, RuntimeConfig, Scope};

use crate::host_proc;
use crate::stats::Samples;

pub struct Report {
    pub completed: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latency: Samples,
    /// The host's CPU time (user + system) over the measured window, when it was watched.
    pub host_cpu: Option<Duration>,
    /// The largest VmRSS of the host sampled every 100 ms over the window, in kB, when watched.
    pub peak_rss_kb: Option<u64>,
    /// The host's read and write system calls over the window, when watched.
    pub host_io_calls: Option<host_proc::IoCalls>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    /// Milliseconds of host CPU per completed saga, when the host was watched.
    pub fn cpu_ms_per_saga(&self) -> Option<f64> {
        let cpu = self.host_cpu?;
        (self.completed > 0).then(|| cpu.as_secs_f64() * 1e3 / self.completed as f64)
    }

    /// The host's read and write system calls per completed saga, when the host was watched.
    pub fn io_calls_per_saga(&self) -> Option<(f64, f64)> {
        let calls = self.host_io_calls?;
        let per = |n: u64| n as f64 / self.completed as f64;
        (self.completed > 0).then(|| (per(calls.reads), per(calls.writes)))
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

/// `clients` loops sending the workload, spread evenly over the `targets` (hosts); a quarter of
/// `duration` warms up first.
pub async fn run(
    targets: &[&str],
    workload: Arc<Workload>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    run_watched(targets, workload, clients, duration, None).await
}

/// `run`, also reading the CPU time and sampling the VmRSS of the host process `host_pid` (when
/// given) over the measured window (not the warm-up).
pub async fn run_watched(
    targets: &[&str],
    workload: Arc<Workload>,
    clients: usize,
    duration: Duration,
    host_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(clients)
        .build_http::<Full<Bytes>>();
    let urls = targets
        .iter()
        .map(|target| format!("http://{target}{}", workload.path).parse())
        .collect::<Result<Vec<hyper::Uri>, _>>()?;
    phase(&client, &urls, &workload, clients, duration / 4).await?;
    let Some(pid) = host_pid else {
        return phase(&client, &urls, &workload, clients, duration).await;
    };
    let cpu_before = host_proc::cpu_time(pid)?;
    let io_before = host_proc::io_calls(pid)?;
    let sampler = host_proc::RssSampler::start(pid);
    let mut report = phase(&client, &urls, &workload, clients, duration).await?;
    report.peak_rss_kb = Some(sampler.finish());
    report.host_cpu = Some(host_proc::cpu_time(pid)?.saturating_sub(cpu_before));
    report.host_io_calls = Some(host_proc::io_calls(pid)?.since(io_before));
    Ok(report)
}

async fn phase(
    client: &Client<HttpConnector, Full<Bytes>>,
    urls: &[hyper::Uri],
    workload: &Arc<Workload>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            let url = urls[n % urls.len()].clone();
            let (client, stop, workload) = (client.clone(), stop.clone(), workload.clone());
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
        host_cpu: None,
        peak_rss_kb: None,
        host_io_calls: None,
    };
    for task in tasks {
        let (latency, errors) = task.await.context("a client task")?;
        report.completed += latency.len();
        report.errors += errors;
        report.latency.extend(latency);
    }
    Ok(report)
}

/// A component to measure, and the handler of it that does nothing.
pub struct Probe {
    pub language: &'static str,
    pub path: PathBuf,
    /// The no-op handler's route: `GET /path` (the handler's name differs by SDK).
    pub route: &'static str,
}

/// For each component: load time with the compile cache cold and warm, and the cost of one
/// instantiate-and-call of its no-op handler through the host's runtime, one call at a time.
pub async fn instantiate(calls: usize, probes: &[Probe]) -> anyhow::Result<()> {
    println!(
        "{:<12} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "component",
        "size KiB",
        "cold ms",
        "warm ms",
        "p50 µs",
        "p99 µs",
        "mean µs",
        "CPU µs",
        "faults/call"
    );
    for probe in probes {
        let bytes =
            std::fs::read(&probe.path).with_context(|| format!("read {}", probe.path.display()))?;
        let cache = std::env::temp_dir().join(format!("saga-bench-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let config = RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        };
        let load = |runtime: Runtime| {
            let bytes = bytes.clone();
            let source = probe.path.display().to_string();
            async move {
                let started = Instant::now();
                let version = runtime.load(bytes, source).await?;
                anyhow::Ok((started.elapsed(), runtime, version))
            }
        };
        let (cold, _, _) =
            load(Runtime::new(config.clone()).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
        let (warm, runtime, version) =
            load(Runtime::new(config).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
        let _ = std::fs::remove_dir_all(&cache);
        let handler = version
            .manifest
            .handlers
            .iter()
            .find(|h| {
                h.triggers.iter().any(|trigger| match trigger {
                    wit::Trigger::RestQuery(route) | wit::Trigger::RestCommand(route) => {
                        format!("{} {}", method_name(route.method), route.path) == probe.route
                    }
                    _ => false,
                })
            })
            .with_context(|| format!("{} has no route {}", probe.path.display(), probe.route))?;
        let trigger = handler
            .triggers
            .iter()
            .find(|t| matches!(t, wit::Trigger::RestQuery(_) | wit::Trigger::RestCommand(_)))
            .cloned()
            .expect("the trigger just found");
        let request = wit::Request {
            handler: handler.name.clone(),
            trigger,
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
        let calls = if probe.language.starts_with("rust") {
            calls
        } else {
            calls / 10
        };
        for _ in 0..calls / 10 {
            call().await?;
        }
        let mut samples = Samples::default();
        let me = std::process::id();
        let (cpu_before, faults_before) = (host_proc::cpu_time(me)?, host_proc::minor_faults(me)?);
        let started = Instant::now();
        for _ in 0..calls {
            let one = Instant::now();
            call().await?;
            samples.push(one.elapsed());
        }
        let elapsed = started.elapsed();
        let cpu = host_proc::cpu_time(me)?.saturating_sub(cpu_before);
        let faults = host_proc::minor_faults(me)? - faults_before;
        println!(
            "{:<12} {:>9} {:>11.0} {:>11.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>11.0}",
            probe.language,
            bytes.len() / 1024,
            cold.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e3,
            samples.percentile(50.0).as_secs_f64() * 1e6,
            samples.percentile(99.0).as_secs_f64() * 1e6,
            elapsed.as_secs_f64() * 1e6 / calls as f64,
            cpu.as_secs_f64() * 1e6 / calls as f64,
            faults as f64 / calls as f64,
        );
    }
    Ok(())
}

/// `count` requests of the workload to `target`, one at a time; answers how many completed.
pub async fn run_count(target: &str, workload: &Workload, count: usize) -> anyhow::Result<usize> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url: hyper::Uri = format!("http://{target}{}", workload.path).parse()?;
    let mut completed = 0;
    for _ in 0..count {
        let request = hyper::Request::post(url.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from((workload.body)())))?;
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        if (workload.completed)(status, &body) {
            completed += 1;
        }
    }
    Ok(completed)
}
