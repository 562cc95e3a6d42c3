//! `saga-bench`: measures saga-host the way its users load it, over HTTP on loopback against
//! the release `saga-host` binary (started for the run on a fresh SQLite file, durable commits).
//!
//! - `saga-bench http`: `POST /exams` (the bundled Exam and Attempt services), a fresh user per
//!   request, at 1 and 32 concurrent clients: completed sagas per second, p50 and p99, and the
//!   host's CPU time per saga (utime + stime from /proc); the host's resident memory idle and at
//!   its peak under 32 clients; then the bytes of each table and index per finished saga.
//! - `saga-bench sagas`: sagas of 1, 3 and 9 remote steps with no-op participants (the test
//!   orchestrator and participant), and the compensating path (the last step fails).
//! - `saga-bench swap`: hot-loading — the time from deploying a new Exam component to the first
//!   response it serves (compile cache cold and warm), and `POST /exams` throughput during a
//!   series of swaps against steady state.
//! - `saga-bench instantiate`: the cost of one instantiate-and-call of a no-op handler.
//! - `saga-bench cluster`: `POST /exams` on PostgreSQL + NATS JetStream with one and two host
//!   processes, next to the embedded default.
//! - `saga-bench neighbour`: `POST /exams` throughput at 32 clients while another service's
//!   calls loop without end (until `cpu-ms` stops them), against the same load on a quiet host.
//! - `saga-bench console`: the console's pages and the `/sagas` queries, one request at a time,
//!   with 100,000 sagas stored: p50 and p99 per page.
//! - `saga-bench fill`: `POST /exams` on a fresh database and again with 1,000,000 exams
//!   stored (`--exams N`), and a find by an indexed field before and after.
//! - `saga-bench all`: all of them, with their defaults.
//!
//! Medians and ratios are what to compare: the machine is shared and noisy.

mod cluster;
mod console;
mod disk;
mod fill;
mod host_proc;
mod load;
mod server;
mod stats;
mod swap;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use load::Workload;
use server::{Server, component};

#[derive(Parser)]
#[command(name = "saga-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /exams load.
    Http(Load),
    /// Sagas of 1, 3 and 9 no-op remote steps, and the compensating path.
    Sagas(SagaLoad),
    /// Deploy-to-first-response time and throughput during swaps.
    Swap(SwapArgs),
    /// Load time and instantiate-and-call cost of Rust, Python and JavaScript components.
    Instantiate(InstantiateArgs),
    /// POST /exams/graded: the exam saga with the Python and JavaScript participants.
    Polyglot(Load),
    /// POST /exams served by the tutorial's services written with the SDKs: the Python pair,
    /// and the JavaScript Exam with the Rust Attempt.
    Tutorial(Load),
    /// POST /exams on PostgreSQL + NATS with one and two hosts, next to the embedded default.
    Cluster(ClusterArgs),
    /// POST /exams next to a service whose calls loop, against a quiet host.
    Neighbour(NeighbourArgs),
    /// The console's pages and the /sagas queries with many sagas stored.
    Console(ConsoleArgs),
    /// POST /exams on a fresh database, then with many exams stored.
    Fill(FillArgs),
    /// Everything, with the defaults.
    All,
}

/// Exams stored for the fill bench of `saga-bench all`: all of `fill`'s default 1,000,000 (the
/// whole fill bench took 2.5 minutes here, 1.7 of them filling).
const ALL_FILL_EXAMS: usize = 1_000_000;

#[derive(clap::Args, Clone)]
struct FillArgs {
    /// Exams stored for the second measurement.
    #[arg(long, default_value_t = 1_000_000)]
    exams: usize,
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Seconds of measurement per point (after a warm-up of a quarter of that).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Finds by an indexed field timed, before and after the fill.
    #[arg(long, default_value_t = 50)]
    requests: usize,
}

#[derive(clap::Args, Clone)]
struct ConsoleArgs {
    /// Sagas stored before the pages are timed.
    #[arg(long, default_value_t = 100_000)]
    sagas: usize,
    /// Requests timed per page.
    #[arg(long, default_value_t = 50)]
    requests: usize,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Seconds of measurement per point (after a warm-up of a quarter of that).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Extra arguments for `saga-host serve`, e.g. --host-arg=--inline-steps=false.
    #[arg(long = "host-arg", allow_hyphen_values = true)]
    host_args: Vec<String>,
}

#[derive(clap::Args, Clone)]
struct ClusterArgs {
    #[command(flatten)]
    load: Load,
    /// An administrative PostgreSQL URL: a database is created on it for each configuration.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// The NATS server (with JetStream).
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: String,
}

#[derive(clap::Args, Clone)]
struct SagaLoad {
    #[command(flatten)]
    load: Load,
    /// Saga lengths to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3,9")]
    steps: Vec<usize>,
}

#[derive(clap::Args, Clone)]
struct SwapArgs {
    /// Warm deploys to time.
    #[arg(long, default_value_t = 20)]
    swaps: usize,
    /// Clients posting exams while the throughput is measured.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of steady state, and of swapping, measured.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

#[derive(clap::Args, Clone)]
struct NeighbourArgs {
    /// Clients posting exams.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Calls of the looping handler in flight at once.
    #[arg(long, default_value_t = 4)]
    loops: usize,
    /// Seconds measured, quiet and with the loops.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(clap::Args, Clone)]
struct InstantiateArgs {
    /// Calls to time (a tenth of that for the Python and JavaScript components).
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Only these components (rust, rust-sdk, python, javascript); default: all four.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// The host's allocator, so that `instantiate` (calls made in this process) costs what a
/// call costs in the host.
#[global_allocator]
static ALLOCATOR: saga_host::allocator::Allocator = saga_host::allocator::Allocator {};

/// The allocator's options, set before anything is allocated.
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = saga_host::allocator::configure;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!("machine: {}", machine());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Http(load) => exams(&load).await,
            Command::Sagas(load) => sagas(&load).await,
            Command::Swap(args) => {
                swap::run(args.swaps, args.clients, Duration::from_secs(args.seconds)).await
            }
            Command::Instantiate(args) => load::instantiate(args.calls, &probes(&args.only)?).await,
            Command::Polyglot(load) => polyglot(&load).await,
            Command::Tutorial(load) => tutorial(&load).await,
            Command::Neighbour(args) => neighbour(&args).await,
            Command::Console(args) => console::run(args.sagas, args.requests).await,
            Command::Fill(args) => {
                let load = Load {
                    clients: args.clients,
                    seconds: args.seconds,
                    host_args: Vec::new(),
                };
                fill::run(args.exams, &load, args.requests).await
            }
            Command::Cluster(args) => cluster::run(&args.load, &args.postgres, &args.nats).await,
            Command::All => {
                let load = Load {
                    clients: vec![1, 32],
                    seconds: 10,
                    host_args: Vec::new(),
                };
                load::instantiate(20_000, &probes(&[])?).await?;
                exams(&load).await?;
                sagas(&SagaLoad {
                    load: load.clone(),
                    steps: vec![1, 3, 9],
                })
                .await?;
                sagas(&SagaLoad {
                    load: Load {
                        host_args: vec!["--inline-steps=false".into()],
                        ..load.clone()
                    },
                    steps: vec![1, 3, 9],
                })
                .await?;
                cluster::run(
                    &load,
                    "postgres://postgres@127.0.0.1:5432/postgres",
                    "127.0.0.1:4222",
                )
                .await?;
                swap::run(20, 8, Duration::from_secs(5)).await?;
                tutorial(&load).await?;
                polyglot(&Load {
                    clients: vec![1, 32],
                    seconds: 10,
                    host_args: Vec::new(),
                })
                .await?;
                neighbour(&NeighbourArgs {
                    clients: 32,
                    loops: 4,
                    seconds: 10,
                })
                .await?;
                console::run(100_000, 50).await?;
                fill::run(
                    ALL_FILL_EXAMS,
                    &Load {
                        clients: vec![1, 32],
                        seconds: 10,
                        host_args: Vec::new(),
                    },
                    50,
                )
                .await
            }
        }
    })
}

/// The processor and its cores, for reading the figures: machines of one kind differ (the same
/// build ran 1.6 times faster on one 2-core machine than on another).
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} at {} MHz, {cores} cores",
        field("model name"),
        field("cpu MHz")
    )
}

fn header() {
    println!(
        "{:<26} {:>8} {:>10} {:>9} {:>9} {:>7}",
        "workload", "clients", "sagas/s", "p50 ms", "p99 ms", "errors"
    );
}

async fn measure(
    targets: &[&str],
    name: &str,
    workload: Workload,
    load: &Load,
) -> anyhow::Result<()> {
    measure_watched(targets, name, workload, load, None).await?;
    Ok(())
}

/// `measure`, also reading the CPU time and memory of the host process `host_pid` (when given)
/// over each measured window: CPU ms per completed saga is printed as an extra column. Answers
/// each client count's report.
async fn measure_watched(
    targets: &[&str],
    name: &str,
    workload: Workload,
    load: &Load,
    host_pid: Option<u32>,
) -> anyhow::Result<Vec<(usize, load::Report)>> {
    let workload = Arc::new(workload);
    let mut reports = Vec::new();
    for &clients in &load.clients {
        let report = load::run_watched(
            targets,
            workload.clone(),
            clients,
            Duration::from_secs(load.seconds),
            host_pid,
        )
        .await?;
        let cpu = report
            .cpu_ms_per_saga()
            .map(|ms| format!(" {ms:>12.2}"))
            .unwrap_or_default();
        println!(
            "{:<26} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>7}{cpu}",
            name,
            clients,
            report.per_second(),
            report.latency.percentile(50.0).as_secs_f64() * 1e3,
            report.latency.percentile(99.0).as_secs_f64() * 1e3,
            report.errors
        );
        reports.push((clients, report));
    }
    Ok(reports)
}

fn host_args(load: &Load) -> Vec<&str> {
    load.host_args.iter().map(String::as_str).collect()
}

/// `POST /exams` for a fresh user; an answer counts when it is a 200.
pub fn exam_workload() -> Workload {
    Workload {
        path: "/exams".into(),
        body: Box::new(|| {
            serde_json::json!({"user_uuid": uuid::Uuid::new_v4(), "exam_uuid": uuid::Uuid::new_v4()}).to_string()
        }),
        completed: Box::new(|status, _| status == 200),
    }
}

async fn exams(load: &Load) -> anyhow::Result<()> {
    let components = [component("guest_exam")?, component("guest_attempt")?];
    // The disk report reads the host's own SQLite file: none when `--database` names another.
    match database_arg(load) {
        Some(url) if url.starts_with("postgres") => {
            post_exams("PostgreSQL (--database)", &components, load, false).await
        }
        Some(_) => post_exams("SQLite (--database)", &components, load, false).await,
        None => post_exams("SQLite synchronous=FULL", &components, load, true).await,
    }
}

/// The database the `--host-arg`s give the host (`--database=URL` or `--database URL`), if any.
fn database_arg(load: &Load) -> Option<&str> {
    let args = &load.host_args;
    args.iter().enumerate().find_map(|(i, arg)| {
        arg.strip_prefix("--database=").or_else(|| {
            (arg == "--database")
                .then(|| args.get(i + 1).map(String::as_str))
                .flatten()
        })
    })
}

async fn tutorial(load: &Load) -> anyhow::Result<()> {
    let python = [
        server::example("python-tutorial", "exam")?,
        server::example("python-tutorial", "attempt")?,
    ];
    post_exams("the Python pair", &python, load, false).await?;
    let javascript = [
        server::example("js-tutorial", "exam")?,
        component("guest_attempt")?,
    ];
    post_exams(
        "the JavaScript Exam, the Rust Attempt",
        &javascript,
        load,
        false,
    )
    .await
}

/// Requests sent one at a time before the host's idle memory is read.
const IDLE_WARM_UP: usize = 20;

/// `POST /exams` for a fresh user per request on a host serving `components`, with the host's
/// CPU per saga and its memory (idle after a few requests, and the peak under load); then, with
/// `disk`, the database's bytes per finished saga.
async fn post_exams(
    label: &str,
    components: &[std::path::PathBuf],
    load: &Load,
    disk: bool,
) -> anyhow::Result<()> {
    let server = Server::start(components, &host_args(load))?;
    let pid = server.pid();
    let started_kb = host_proc::status_kb(pid, "VmRSS")?;
    let warm_up = load::run_count(&server.addr, &exam_workload(), IDLE_WARM_UP).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kb = host_proc::status_kb(pid, "VmRSS")?;
    println!(
        "POST /exams, fresh user per request, {label} {:?}",
        load.host_args
    );
    println!(
        "{:<26} {:>8} {:>10} {:>9} {:>9} {:>7} {:>12}",
        "workload", "clients", "sagas/s", "p50 ms", "p99 ms", "errors", "CPU ms/saga"
    );
    let reports = measure_watched(
        &[server.addr.as_str()],
        "POST /exams",
        exam_workload(),
        load,
        Some(pid),
    )
    .await?;
    let hwm_kb = host_proc::status_kb(pid, "VmHWM")?;
    println!(
        "(CPU: the host process's utime + stime from /proc/{pid}/stat over each measured window, \
         per completed saga)"
    );
    println!(
        "host RSS: {:.1} MB after start, {:.1} MB idle after {warm_up} requests one at a time",
        host_proc::mb(started_kb),
        host_proc::mb(idle_kb)
    );
    for (clients, report) in &reports {
        if let Some((reads, writes)) = report.io_calls_per_saga() {
            println!(
                "host system calls per saga under {clients} clients: {reads:.1} reads, {writes:.1} \
                 writes (/proc/{pid}/io syscr and syscw: files, sockets and wake-ups alike)"
            );
        }
    }
    for (clients, report) in &reports {
        if let Some(peak) = report.peak_rss_kb {
            println!(
                "host RSS under {clients} clients: peak {:.1} MB (VmRSS sampled every 100 ms)",
                host_proc::mb(peak)
            );
        }
    }
    println!(
        "host RSS high-water mark (VmHWM, since start): {:.1} MB",
        host_proc::mb(hwm_kb)
    );
    if disk {
        disk::report(&server.database()).await?;
    }
    Ok(())
}

async fn sagas(load: &SagaLoad) -> anyhow::Result<()> {
    let components = [
        component("test_orchestrator")?,
        component("test_participant")?,
    ];
    let server = Server::start(&components, &host_args(&load.load))?;
    println!(
        "sagas of no-op remote steps (POST /run/SAGA, waits for the end), SQLite synchronous=FULL {:?}",
        load.load.host_args
    );
    header();
    let noop: serde_json::Map<String, serde_json::Value> =
        (1..=9).map(|i| (format!("s{i}"), "noop".into())).collect();
    for &steps in &load.steps {
        let saga = match steps {
            1 => "ONE",
            3 => "THREE",
            9 => "NINE",
            other => anyhow::bail!("there is no saga of {other} steps; use 1, 3 or 9"),
        };
        let behaviors = noop.clone();
        let workload = Workload {
            path: format!("/run/{saga}"),
            body: Box::new(move || {
                serde_json::json!({"key": uuid::Uuid::new_v4(), "behaviors": behaviors, "undo_behaviors": behaviors})
                    .to_string()
            }),
            completed: Box::new(|status, body| status == 200 && finished_as(body, "finished")),
        };
        measure(
            &[server.addr.as_str()],
            &format!("{steps} steps"),
            workload,
            &load.load,
        )
        .await?;
    }
    // The compensating path: the last of 3 steps is refused, the two before are compensated.
    let mut behaviors = noop.clone();
    behaviors.insert("s3".into(), "business".into());
    let workload = Workload {
        path: "/run/THREE".into(),
        body: Box::new(move || {
            serde_json::json!({
                "key": uuid::Uuid::new_v4(),
                "behaviors": behaviors,
                "undo_behaviors": noop,
                "on_error": {"s3": "fail"},
            })
            .to_string()
        }),
        completed: Box::new(|status, body| status == 200 && finished_as(body, "errored")),
    };
    measure(
        &[server.addr.as_str()],
        "3 steps, last fails",
        workload,
        &load.load,
    )
    .await
}

/// The components `instantiate` measures: a no-op handler in Rust (`rust`: a component with
/// nothing else that imports no function, so that the figure is the host's own cost;
/// `rust-sdk`: the same handler in a service built with the SDK and Rust's standard library,
/// which imports WASI), Python and JavaScript; `only` keeps some (all when empty).
fn probes(only: &[String]) -> anyhow::Result<Vec<load::Probe>> {
    const KINDS: [&str; 4] = ["rust", "rust-sdk", "python", "javascript"];
    if let Some(unknown) = only.iter().find(|kind| !KINDS.contains(&kind.as_str())) {
        anyhow::bail!("--only {unknown}: no such component; choose among {KINDS:?}");
    }
    KINDS
        .into_iter()
        .filter(|kind| only.is_empty() || only.iter().any(|k| k == kind))
        .map(|language| {
            let (path, route) = match language {
                "rust" => (component("test_noop")?, "GET /noop"),
                "rust-sdk" => (component("test_noop_sdk")?, "GET /noop"),
                "python" => (
                    server::example("python-grader", "grader")?,
                    "GET /grader/version",
                ),
                _ => (
                    server::example("js-notifier", "notifier")?,
                    "GET /notifier/version",
                ),
            };
            Ok(load::Probe {
                language,
                path,
                route,
            })
        })
        .collect()
}

/// `POST /exams/graded` for a fresh user: the saga runs the Attempt (Rust), notifier
/// (JavaScript) and grader (Python) participants.
async fn polyglot(load: &Load) -> anyhow::Result<()> {
    let components = [
        component("guest_exam")?,
        component("guest_attempt")?,
        server::example("python-grader", "grader")?,
        server::example("js-notifier", "notifier")?,
    ];
    let server = Server::start(&components, &host_args(load))?;
    let exam = uuid::Uuid::new_v4();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let key = hyper::Request::put(format!("http://{}/answer-keys/{exam}", server.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            r#"{"answers": ["a", "b", "c", "d"]}"#,
        )))?;
    let answer = client.request(key).await?;
    anyhow::ensure!(
        answer.status() == 200,
        "setting the answer key failed: {}",
        answer.status()
    );
    println!(
        "POST /exams/graded (Rust + Python + JavaScript participants), SQLite synchronous=FULL {:?}",
        load.host_args
    );
    header();
    let workload = Workload {
        path: "/exams/graded".into(),
        body: Box::new(move || {
            serde_json::json!({"user_uuid": uuid::Uuid::new_v4(), "exam_uuid": exam, "answers": ["a", "b", "x", "d"]})
                .to_string()
        }),
        completed: Box::new(|status, _| status == 200),
    };
    measure(
        &[server.addr.as_str()],
        "POST /exams/graded",
        workload,
        load,
    )
    .await
}

/// `POST /exams` on a quiet host, then while `loops` calls of the probe's endless loop run at
/// all times (each stopped by `cpu-ms`, then started again).
async fn neighbour(args: &NeighbourArgs) -> anyhow::Result<()> {
    let components = [
        component("guest_exam")?,
        component("guest_attempt")?,
        component("test_probe")?,
    ];
    let server = Server::start(&components, &["--cpu-ms", "2000"])?;
    let duration = Duration::from_secs(args.seconds);
    let workload = Arc::new(exam_workload());
    let targets = [server.addr.as_str()];
    let quiet = load::run(&targets, workload.clone(), args.clients, duration).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..args.loops)
        .map(|_| {
            let (stop, url) = (stop.clone(), format!("http://{}/probe/loop", server.addr));
            tokio::spawn(async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Full<hyper::body::Bytes>>();
                let mut stopped = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = hyper::Request::get(url.as_str())
                        .body(http_body_util::Full::default())
                        .expect("a valid request");
                    if let Ok(answer) = client.request(request).await
                        && answer.status() == 500
                    {
                        stopped += 1;
                    }
                }
                stopped
            })
        })
        .collect();
    let busy = load::run(&targets, workload, args.clients, duration).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stopped = 0;
    for task in loops {
        stopped += task.await?;
    }
    println!(
        "POST /exams at {} clients, quiet and next to {} endless loops of another service (cpu-ms 2000)",
        args.clients, args.loops
    );
    header();
    for (name, report) in [("quiet", &quiet), ("next to the loops", &busy)] {
        println!(
            "{:<26} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            name,
            args.clients,
            report.per_second(),
            report.latency.percentile(50.0).as_secs_f64() * 1e3,
            report.latency.percentile(99.0).as_secs_f64() * 1e3,
            report.errors
        );
    }
    println!(
        "ratio {:.2} (loop calls stopped by cpu-ms meanwhile: {stopped})",
        busy.per_second() / quiet.per_second()
    );
    Ok(())
}

/// Whether a /run answer reports the saga ended with `status`.
fn finished_as(body: &[u8], status: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["status"] == status)
}
