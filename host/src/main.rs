//! The `saga-host` command line: `serve` runs a host; the other commands talk to a running
//! one over its operator API (`cli/`).

mod cli;
mod scaffold;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use saga_host::Config;
use saga_host::broker::RetryPolicy;
use saga_host::http::Settings;
use saga_host::runtime::{LimitTable, Limits, RuntimeConfig, limits};
use saga_host::saga::{Rules, SagaConfig};
use saga_host::telemetry::{self, LogFormat};
use saga_host::tls::TlsFiles;

#[global_allocator]
static ALLOCATOR: saga_host::allocator::Allocator = saga_host::allocator::Allocator {};

/// The allocator's options, set before anything is allocated.
#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = saga_host::allocator::configure;

#[derive(Parser)]
#[command(
    name = "saga-host",
    version,
    about = "Runs saga-orchestrated services compiled to WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Loads the components and serves their routes, commands and sagas.
    Serve(Box<Serve>),
    /// Deploys a component to a running host through its admin API (replacing the current
    /// version of its service).
    Deploy(Deploy),
    /// Sees and steers a running host's sagas.
    Sagas {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: Box<cli::Sagas>,
    },
    /// A running host's components.
    Components {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::Components,
    },
    /// A running host's dead letters: messages whose handling kept failing.
    DeadLetters {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::DeadLetters,
    },
    /// Writes a ready-to-build service (rust, python or js): its source, build script, README
    /// and a test script for `test-run`.
    New(scaffold::New),
    /// Runs a test script (JSON) against components in a host inside this process, with
    /// stubbed participants and a clock the script moves; prints a JSON report and exits 1 when
    /// an expectation failed, 2 when the script could not run.
    TestRun {
        /// The script: {"components": [...], "stubs": {...}, "steps": [...]}.
        script: PathBuf,
    },
    /// Explores every path of a component's sagas with stubbed participants, running its real
    /// callbacks, and checks on each that what acted is compensated once, in reverse, and that
    /// a failed saga leaves nothing behind; exits 1 when a path breaks one.
    Check(Check),
}

#[derive(Args)]
struct Check {
    /// The component (.wasm) to check.
    component: PathBuf,
    /// Only this saga; default: every saga the component defines.
    #[arg(long)]
    saga: Option<String>,
    /// The context the sagas start with (a JSON object).
    #[arg(long, default_value = "{}")]
    context: String,
    /// The payload of a participant's SUCCESS reply on TOPIC (default null): TOPIC=JSON,
    /// repeatable.
    #[arg(long = "reply", value_name = "TOPIC=JSON")]
    replies: Vec<String>,
    /// Paths explored per saga at most.
    #[arg(long, default_value_t = 500)]
    max_paths: usize,
}

#[derive(Args)]
#[command(args_override_self = true)]
struct Serve {
    /// Address to serve HTTP on.
    #[arg(long, env = "SAGA_HOST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (the host's certificate first); needs
    /// --tls-key.
    #[arg(long, env = "SAGA_HOST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC; not encrypted).
    #[arg(long, env = "SAGA_HOST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Directory for the host's data (the SQLite database, the compiled-component cache).
    #[arg(long, env = "SAGA_HOST_DATA", default_value = "./data")]
    data: PathBuf,
    /// Directory for compiled components, reused across restarts; default: DATA/cache.
    #[arg(long, env = "SAGA_HOST_CACHE")]
    cache: Option<PathBuf>,
    /// The compile cache's size at most, in MiB: past it the least recently used artifacts
    /// are removed (never a loaded version's).
    #[arg(long, env = "SAGA_HOST_CACHE_MAX_MB", default_value_t = 1024)]
    cache_max_mb: u64,
    /// Directory whose *.wasm components are loaded at start.
    #[arg(long, env = "SAGA_HOST_COMPONENTS", default_value = "./components")]
    components: PathBuf,
    /// Database URL: sqlite://PATH or postgres://…; default: a SQLite file in the data directory.
    #[arg(long, env = "SAGA_HOST_DATABASE")]
    database: Option<String>,
    /// Broker URL: nats://[USER:PASSWORD@ or TOKEN@]HOST:PORT[/CLUSTER-NAME][?OPTIONS] to
    /// share the work with the other hosts on the same database and NATS JetStream (tls://
    /// requires TLS; options: replicas=N, creds=FILE, nkey=FILE, ca=FILE, cert=FILE&key=FILE);
    /// default: the in-process broker (one host).
    #[arg(long, env = "SAGA_HOST_BROKER", hide_env_values = true)]
    broker: Option<String>,
    /// With NATS: how long a host may stay silent before the others count it dead and take its
    /// sagas over, in seconds.
    #[arg(long, env = "SAGA_HOST_LEASE_S", default_value_t = 5)]
    lease_s: u64,
    /// Linear memory one component instance may use, in MiB.
    #[arg(long, env = "SAGA_HOST_MEMORY_MB", default_value_t = 256)]
    memory_mb: usize,
    /// CPU time one component call may use, in milliseconds.
    #[arg(long, env = "SAGA_HOST_CPU_MS", default_value_t = 5_000)]
    cpu_ms: u64,
    /// Wall-clock time one component call may take, waiting included, in seconds.
    #[arg(long, env = "SAGA_HOST_CALL_TIMEOUT_S", default_value_t = 60)]
    call_timeout_s: u64,
    /// Limits of one service's calls, overriding the defaults: NAME:key=value,… (repeatable;
    /// in the environment, separated by ';'). Keys: memory-mb, cpu-ms, call-timeout-s,
    /// max-writes, max-messages, max-find, max-value-kb, max-response-kb, max-host-calls,
    /// max-log-lines, concurrency, clock.
    #[arg(long, env = "SAGA_HOST_COMPONENT_LIMITS", value_delimiter = ';')]
    component_limits: Vec<String>,
    /// How long one HTTP request may take before it is answered 504, in seconds.
    #[arg(long, env = "SAGA_HOST_REQUEST_TIMEOUT_S", default_value_t = 120)]
    request_timeout_s: u64,
    /// How long a write waits for aggregates held by a running saga, in seconds.
    #[arg(long, env = "SAGA_HOST_LOCK_WAIT_S", default_value_t = 30)]
    lock_wait_s: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SAGA_HOST_MAX_BODY", default_value_t = 1 << 20)]
    max_body: usize,
    /// Bearer token of the operator API (/admin, /sagas). Without it /admin is off.
    #[arg(long, env = "SAGA_HOST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve the operator API (/sagas, its actions) without a token on an address other
    /// machines can reach. Without this, such a start is refused: anyone who reaches the port
    /// could list, cancel and retry sagas.
    #[arg(long, env = "SAGA_HOST_INSECURE_OPEN_OPERATOR_API")]
    insecure_open_operator_api: bool,
    /// Threads of the async runtime, which serve requests and run components; default: one
    /// per core (the README's Configuration says when fewer serve better).
    #[arg(long, env = "SAGA_HOST_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Run saga steps whose participant is loaded in this host within the saga's own
    /// transaction (one commit instead of two per step); false: always through the queue.
    #[arg(long, env = "SAGA_HOST_INLINE_STEPS", default_value_t = true, action = clap::ArgAction::Set)]
    inline_steps: bool,
    /// How long a saga step waits for its reply before it is sent again, in seconds (a saga
    /// definition may say otherwise).
    #[arg(long, env = "SAGA_HOST_STEP_TIMEOUT_S", default_value_t = 30)]
    step_timeout_s: u64,
    /// How long a whole saga may take, in seconds (0: no limit; a definition may say otherwise).
    #[arg(long, env = "SAGA_HOST_SAGA_TIMEOUT_S", default_value_t = 600)]
    saga_timeout_s: u64,
    /// Attempts of a saga step or compensation that fails with a system error or gets no reply.
    #[arg(long, env = "SAGA_HOST_STEP_ATTEMPTS", default_value_t = 3)]
    step_attempts: u32,
    /// Delay before the second attempt of a step or a delivery, in milliseconds; it doubles
    /// with each attempt.
    #[arg(long, env = "SAGA_HOST_RETRY_DELAY_MS", default_value_t = 100)]
    retry_delay_ms: u64,
    /// Attempts at delivering a message whose handler fails before it goes to the dead letters.
    #[arg(long, env = "SAGA_HOST_DELIVERY_ATTEMPTS", default_value_t = 5)]
    delivery_attempts: u32,
    /// How often to look for new, changed or removed files in the components directory, in
    /// milliseconds (0: never).
    #[arg(long, env = "SAGA_HOST_WATCH_MS", default_value_t = 1000)]
    watch_ms: u64,
    /// Log lines on stderr: human (one readable line per event) or json (one object per line).
    #[arg(long, env = "SAGA_HOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Write an access log line per HTTP request (method, route, status, duration, request id).
    /// Off by default: at thousands of requests per second it would be most of the log, and
    /// the metrics count the requests anyway.
    #[arg(long, env = "SAGA_HOST_ACCESS_LOG", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    access_log: bool,
    /// Export traces over OTLP (HTTP/protobuf) to this collector, e.g. http://127.0.0.1:4318;
    /// none: no traces are exported. `OTEL_SERVICE_NAME` names this process in them.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Bearer token `GET /metrics` requires; none: it is open, like /health.
    #[arg(long, env = "SAGA_HOST_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// How long ended sagas and their history are kept, in days (running sagas are kept until
    /// they end).
    #[arg(long, env = "SAGA_HOST_HISTORY_DAYS", default_value_t = 7)]
    history_days: u64,
    /// How long a request's Idempotency-Key and the answer a repeat gets are kept, in hours.
    #[arg(long, env = "SAGA_HOST_IDEMPOTENCY_HOURS", default_value_t = 24)]
    idempotency_hours: u64,
    /// Largest component the admin API accepts, in MiB.
    #[arg(long, env = "SAGA_HOST_MAX_COMPONENT_MB", default_value_t = 64)]
    max_component_mb: usize,
}

#[derive(Args)]
struct Deploy {
    /// The component (.wasm) to deploy.
    file: PathBuf,
    /// The host to deploy to, e.g. http://127.0.0.1:8080 or https://saga.example.com.
    #[arg(long)]
    to: String,
    /// The host's admin token.
    #[arg(long, env = "SAGA_HOST_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust the https host's certificate when a CA of this PEM file signed it.
    #[arg(long, env = "SAGA_HOST_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (log_format, otlp_endpoint) = match &cli.command {
        Command::Serve(serve) => (serve.log_format, serve.otlp_endpoint.clone()),
        _ => (LogFormat::Human, None),
    };
    // Before the async runtime: the trace exporter runs on threads of its own.
    let _telemetry =
        telemetry::init(log_format, otlp_endpoint.as_deref()).map_err(anyhow::Error::msg)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(serve) = &cli.command
        && let Some(workers) = serve.workers
    {
        runtime.worker_threads(workers.into());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (remote, command) = match cli.command {
        Command::Serve(serve) => return runtime.block_on(run(*serve)),
        Command::New(new) => return scaffold::run(new),
        Command::TestRun { script } => {
            let code = runtime.block_on(test_run(&script));
            drop(runtime);
            std::process::exit(code);
        }
        Command::Check(check) => {
            let code = runtime.block_on(check_paths(check))?;
            drop(runtime);
            std::process::exit(code);
        }
        Command::Deploy(deploy) => {
            let remote = cli::Remote {
                url: deploy.to,
                token: deploy.token,
                ca_cert: deploy.ca_cert,
                json: false,
            };
            (remote, cli::Command::Deploy(deploy.file))
        }
        Command::Sagas { remote, command } => (remote, cli::Command::Sagas(command)),
        Command::Components { remote, command } => (remote, cli::Command::Components(command)),
        Command::DeadLetters { remote, command } => (remote, cli::Command::DeadLetters(command)),
    };
    std::process::exit(runtime.block_on(cli::run(&remote, command)))
}

async fn run(serve: Serve) -> anyhow::Result<()> {
    if !serve.listen.ip().is_loopback()
        && serve.admin_token.is_none()
        && !serve.insecure_open_operator_api
    {
        anyhow::bail!(
            "--listen {} is reachable from other machines, and without an admin token the operator \
             API (/sagas: list, cancel, retry) would be open to anyone who reaches it; give \
             --admin-token TOKEN (or SAGA_HOST_ADMIN_TOKEN), listen on 127.0.0.1, or accept it \
             with --insecure-open-operator-api",
            serve.listen
        );
    }
    let defaults = Limits {
        memory_bytes: serve.memory_mb << 20,
        cpu_time: Duration::from_millis(serve.cpu_ms),
        wall_time: Duration::from_secs(serve.call_timeout_s),
        ..Limits::default()
    };
    let mut overrides = std::collections::HashMap::new();
    for spec in &serve.component_limits {
        let (service, limits) = limits::parse_override(spec, &defaults)
            .map_err(|e| anyhow::anyhow!("--component-limits {e}"))?;
        overrides.insert(service, limits);
    }
    let config = Config {
        listen: serve.listen,
        tls: serve
            .tls_cert
            .zip(serve.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
        runtime: RuntimeConfig {
            limits: LimitTable {
                defaults,
                overrides,
            },
            cache_dir: Some(serve.cache.unwrap_or_else(|| serve.data.join("cache"))),
            cache_max_bytes: serve.cache_max_mb << 20,
            ..RuntimeConfig::default()
        },
        data_dir: serve.data,
        components_dir: serve.components,
        database_url: serve.database,
        broker_url: serve.broker,
        lease: Duration::from_secs(serve.lease_s.max(1)),
        sagas: SagaConfig {
            inline_steps: serve.inline_steps,
            lock_wait: Duration::from_secs(serve.lock_wait_s),
            rules: Rules {
                step_timeout: Duration::from_secs(serve.step_timeout_s),
                saga_timeout: (serve.saga_timeout_s > 0)
                    .then(|| Duration::from_secs(serve.saga_timeout_s)),
                max_attempts: serve.step_attempts.max(1),
                first_retry_delay: Duration::from_millis(serve.retry_delay_ms),
                ..Rules::default()
            },
        },
        delivery: RetryPolicy {
            max_attempts: serve.delivery_attempts.max(1),
            first_delay: Duration::from_millis(serve.retry_delay_ms),
            ..RetryPolicy::default()
        },
        http: Settings {
            max_body_bytes: serve.max_body,
            request_timeout: Duration::from_secs(serve.request_timeout_s),
            max_component_bytes: serve.max_component_mb << 20,
            admin_token: serve.admin_token.filter(|token| !token.is_empty()),
            metrics_token: serve.metrics_token.filter(|token| !token.is_empty()),
            access_log: serve.access_log,
        },
        watch: (serve.watch_ms > 0).then(|| Duration::from_millis(serve.watch_ms)),
        history_retention: Duration::from_secs(serve.history_days * 24 * 3600),
        idempotency_retention: Duration::from_secs(serve.idempotency_hours * 3600),
    };
    telemetry::metrics::install().map_err(anyhow::Error::msg)?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = saga_host::start(config)
        .await
        .context("saga-host could not start")?;
    saga_host::allocator::start_serving().context("the memory release thread could not start")?;
    let services = running.services();
    tracing::info!(
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "serving requests and component calls on the async runtime's worker threads (--workers)"
    );
    println!(
        "saga-host listening on {scheme}://{} (services: {})",
        running.addr,
        services.join(", ")
    );
    tokio::select! {
        result = shutdown_signal() => result?,
    }
    tracing::info!("shutting down: finishing requests in flight");
    running.stop().await.context("the HTTP server failed")?;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// `saga-host test-run`: 0 when every expectation held, 1 when one failed, 2 when the script
/// could not run.
async fn test_run(script: &std::path::Path) -> i32 {
    match saga_host::harness::script::run(script).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.json).unwrap_or_default()
            );
            if report.passed { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            2
        }
    }
}

/// `saga-host check`: 0 when every path keeps the rules, 1 when one breaks them.
async fn check_paths(args: Check) -> anyhow::Result<i32> {
    let context: serde_json::Value = serde_json::from_str(&args.context)
        .with_context(|| format!("--context {:?} is not JSON", args.context))?;
    let mut replies = std::collections::BTreeMap::new();
    for reply in &args.replies {
        let (topic, json) = reply
            .split_once('=')
            .with_context(|| format!("--reply {reply:?} must read TOPIC=JSON"))?;
        let payload = serde_json::from_str(json)
            .with_context(|| format!("--reply {reply:?}: {json:?} is not JSON"))?;
        replies.insert(topic.to_string(), payload);
    }
    let options = saga_host::check::Options {
        component: args.component,
        saga: args.saga,
        context,
        replies,
        max_paths: args.max_paths,
    };
    let report = saga_host::check::run(&options).await?;
    print!("{}", report.table());
    Ok(if report.passed() { 0 } else { 1 })
}
