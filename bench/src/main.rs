//! `saga-bench`: measures saga-host the way its users load it.
//!
//! - `saga-bench http`: starts the release `saga-host` binary with the bundled components on a
//!   fresh SQLite file (durable commits), drives `POST /exams` over loopback with a fresh user
//!   per request at 1 and at 32 concurrent clients, and reports completed sagas per second and
//!   p50/p99 latency.
//! - `saga-bench instantiate`: the cost of one instantiate-and-call of a no-op handler.
//! - `saga-bench all`: both.
//!
//! Medians and ratios are what to compare: the machine is shared and noisy.

mod load;
mod server;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "saga-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /exams load against a host started for the run.
    Http(HttpArgs),
    /// Instantiate-and-call cost of a no-op handler.
    Instantiate(InstantiateArgs),
    /// Both, with their defaults.
    All,
}

#[derive(clap::Args, Clone)]
struct HttpArgs {
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Seconds of measurement per concurrency level (after a warm-up of a quarter of that).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Benchmark a host already running at this address instead of starting one.
    #[arg(long)]
    target: Option<String>,
}

#[derive(clap::Args, Clone)]
struct InstantiateArgs {
    /// Calls to time.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// The component to call (default: the test probe built by `make components`).
    #[arg(long)]
    component: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Http(args) => http(args).await,
            Command::Instantiate(args) => load::instantiate(args.calls, args.component).await,
            Command::All => {
                load::instantiate(20_000, None).await?;
                http(HttpArgs {
                    clients: vec![1, 32],
                    seconds: 10,
                    target: None,
                })
                .await
            }
        }
    })
}

async fn http(args: HttpArgs) -> anyhow::Result<()> {
    let (server, target) = match args.target {
        Some(target) => (None, target),
        None => {
            let server = server::Server::start(&[])?;
            let addr = server.addr.clone();
            (Some(server), addr)
        }
    };
    println!(
        "POST /exams on http://{target} (fresh user per request, SQLite with synchronous=FULL)"
    );
    println!(
        "{:>8} {:>14} {:>10} {:>10} {:>8}",
        "clients", "sagas/s", "p50 ms", "p99 ms", "errors"
    );
    for clients in args.clients {
        let report = load::exams(&target, clients, Duration::from_secs(args.seconds)).await?;
        println!(
            "{:>8} {:>14.0} {:>10.2} {:>10.2} {:>8}",
            clients,
            report.per_second(),
            report.latency.percentile(50.0).as_secs_f64() * 1e3,
            report.latency.percentile(99.0).as_secs_f64() * 1e3,
            report.errors
        );
    }
    drop(server);
    Ok(())
}
