//! The command line's remote commands: `sagas`, `components`, `dead-letters` and `deploy` talk
//! to a running host's operator API (`client.rs`) and print what it answers as a table, or as
//! its JSON with `--json`. Exit codes: 0 done, 1 the host refused or failed (its words on
//! stderr), 2 bad usage, 3 the host could not be reached.

pub mod client;
mod show;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use client::{Client, ClientError};
use saga_core::request::{path_segment, query_string};

/// Where the host is and how to talk to it.
#[derive(Args, Clone)]
pub struct Remote {
    /// The host's URL.
    #[arg(
        long = "host",
        env = "SAGA_HOST_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// The host's admin token.
    #[arg(
        long,
        env = "SAGA_HOST_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Trust the https host's certificate when a CA of this PEM file signed it (instead of
    /// the CAs the system trusts).
    #[arg(long, env = "SAGA_HOST_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print the host's JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
}

/// Which sagas: every flag left out selects all. Times are RFC 3339 or ms since the epoch.
#[derive(Args, Clone, Default)]
pub struct Filter {
    #[arg(long)]
    pub service: Option<String>,
    /// The saga definition's name.
    #[arg(long)]
    pub name: Option<String>,
    /// created, running, paused, compensating, finished, errored, compensation-failed.
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub created_from: Option<String>,
    #[arg(long)]
    pub created_to: Option<String>,
    #[arg(long)]
    pub updated_from: Option<String>,
    #[arg(long)]
    pub updated_to: Option<String>,
    /// The start of the saga's id.
    #[arg(long)]
    pub id_prefix: Option<String>,
}

impl Filter {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("service", &self.service),
            ("name", &self.name),
            ("status", &self.status),
            ("created_from", &self.created_from),
            ("created_to", &self.created_to),
            ("updated_from", &self.updated_from),
            ("updated_to", &self.updated_to),
            ("id_prefix", &self.id_prefix),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
        .collect()
    }
}

/// `saga-host sagas …`
#[derive(Subcommand)]
pub enum Sagas {
    /// Lists sagas, newest first, a page at a time.
    List {
        #[command(flatten)]
        filter: Filter,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where the page starts: the `next` the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One saga: its context, error, and steps as a timeline.
    Show { id: String },
    /// Everything that happened to one saga, oldest first.
    History { id: String },
    /// Cancels a running or paused saga (or, without ID, every saga the filter selects): what
    /// its steps did is compensated, and it ends errored.
    Cancel(Act),
    /// Retries a compensation-failed saga's compensations (or with --now a paused step at
    /// once); without ID, every saga the filter selects.
    Retry {
        #[command(flatten)]
        act: Act,
        /// Retry the paused step (or compensation) now, instead of the failed compensations.
        #[arg(long)]
        now: bool,
    },
    /// Counts by service, definition and status; p50/p99 durations per definition.
    Stats {
        /// The durations' window: sagas finished since then (default: the last 24 hours).
        #[arg(long)]
        since: Option<String>,
    },
}

/// An action on one saga, or on every saga a filter selects.
#[derive(Args)]
pub struct Act {
    /// The saga; leave it out to act on every saga the filter selects.
    pub id: Option<String>,
    /// Why (kept in the saga's history).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub filter: Filter,
    /// With a filter: list what would happen, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `saga-host components …`
#[derive(Subcommand)]
pub enum Components {
    /// Each service: its current version, routes and sagas, and the versions sagas still run on.
    List,
    /// Deploys a component (.wasm) under the name it gives itself, replacing the current
    /// version of that service; sagas running on the old version finish on it.
    Deploy { file: PathBuf },
    /// Removes a service; sagas running on it finish on it.
    Remove { name: String },
}

/// `saga-host dead-letters …`
#[derive(Subcommand)]
pub enum DeadLetters {
    /// Messages whose handling kept failing, with their last error.
    List,
    /// Queues a dead letter again (once its handler is fixed).
    Redrive { id: i64 },
}

/// What a remote command does.
pub enum Command {
    Sagas(Box<Sagas>),
    Components(Components),
    DeadLetters(DeadLetters),
    /// `saga-host deploy FILE --to URL`: like `components deploy`, printing the host's JSON.
    Deploy(PathBuf),
}

/// Runs a remote command; returns the process's exit code.
pub async fn run(remote: &Remote, command: Command) -> i32 {
    let client = match Client::new(&remote.url, remote.token.clone(), remote.ca_cert.as_deref()) {
        Ok(client) => client,
        Err(problem) => {
            eprintln!("error: {problem}");
            return 2;
        }
    };
    let outcome = match command {
        Command::Sagas(sagas) => run_sagas(&client, remote.json, *sagas).await,
        Command::Components(components) => run_components(&client, remote.json, components).await,
        Command::DeadLetters(DeadLetters::List) => client
            .get("/admin/dead-letters")
            .await
            .map(|v| printed(remote.json, &v, show::dead_letters)),
        Command::DeadLetters(DeadLetters::Redrive { id }) => client
            .send("POST", &format!("/admin/dead-letters/{id}/redrive"), None)
            .await
            .map(|v| {
                printed(remote.json, &v, |v| {
                    format!("redriven: dead letter {}", v["redriven"])
                })
            }),
        Command::Deploy(file) => deploy(&client, &file).await.map(|v| v.to_string()),
    };
    match outcome {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(ClientError::Refused { status, message }) => {
            eprintln!("error ({status}): {message}");
            1
        }
        Err(ClientError::Incomplete(what)) => {
            eprintln!("error: {what}");
            1
        }
        Err(unreachable @ ClientError::Unreachable(_)) => {
            eprintln!("error: {unreachable}");
            3
        }
    }
}

/// The JSON as it came, or the table `render` makes of it.
fn printed(json: bool, value: &Value, render: impl Fn(&Value) -> String) -> String {
    if json {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        render(value)
    }
}

async fn run_sagas(client: &Client, json: bool, command: Sagas) -> Result<String, ClientError> {
    match command {
        Sagas::List {
            filter,
            limit,
            cursor,
        } => {
            let mut pairs = filter.pairs();
            pairs.push(("limit", limit.to_string()));
            pairs.extend(cursor.map(|c| ("cursor", c)));
            let page = client.get(&format!("/sagas{}", query(&pairs))).await?;
            Ok(printed(json, &page, show::saga_list))
        }
        Sagas::Show { id } => {
            let saga = client.get(&format!("/sagas/{}", path_segment(&id))).await?;
            Ok(printed(json, &saga, show::saga))
        }
        Sagas::History { id } => {
            let history = client
                .get(&format!("/sagas/{}/history", path_segment(&id)))
                .await?;
            Ok(printed(json, &history, show::history))
        }
        Sagas::Cancel(act) => action(client, json, "cancel", act).await,
        Sagas::Retry { act, now } => {
            let name = if now {
                "retry-now"
            } else {
                "retry-compensations"
            };
            action(client, json, name, act).await
        }
        Sagas::Stats { since } => {
            let pairs: Vec<_> = since.map(|s| ("since", s)).into_iter().collect();
            let stats = client
                .get(&format!("/sagas/stats{}", query(&pairs)))
                .await?;
            Ok(printed(json, &stats, show::stats))
        }
    }
}

async fn action(client: &Client, json: bool, name: &str, act: Act) -> Result<String, ClientError> {
    let Some(id) = act.id else {
        let filter: serde_json::Map<String, Value> = act
            .filter
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        let body =
            json!({"action": name, "filter": filter, "reason": act.reason, "dry_run": act.dry_run});
        let done = client.post_json("/sagas/actions", &body).await?;
        return Ok(printed(json, &done, show::bulk));
    };
    let path = format!("/sagas/{}/{name}", path_segment(&id));
    let saga = client
        .post_json(&path, &json!({"reason": act.reason}))
        .await?;
    Ok(printed(json, &saga, |s| {
        format!(
            "saga {}: {} ({name} accepted)",
            s["id"].as_str().unwrap_or(&id),
            s["status"].as_str().unwrap_or("?")
        )
    }))
}

async fn run_components(
    client: &Client,
    json: bool,
    command: Components,
) -> Result<String, ClientError> {
    match command {
        Components::List => {
            let list = client.get("/admin/components").await?;
            Ok(printed(json, &list, show::components))
        }
        Components::Deploy { file } => {
            let deployed = deploy(client, &file).await?;
            Ok(printed(json, &deployed, show::deployed))
        }
        Components::Remove { name } => {
            let path = format!("/admin/components/{}", path_segment(&name));
            let removed = client.send("DELETE", &path, None).await?;
            Ok(printed(json, &removed, |v| {
                format!("removed {}", v["removed"].as_str().unwrap_or(&name))
            }))
        }
    }
}

async fn deploy(client: &Client, file: &std::path::Path) -> Result<Value, ClientError> {
    let bytes = std::fs::read(file)
        .map_err(|e| ClientError::Unreachable(format!("cannot read {}: {e}", file.display())))?;
    client
        .send(
            "POST",
            "/admin/components",
            Some(("application/wasm", bytes)),
        )
        .await
        .map_err(|error| match error {
            ClientError::Refused { status, message } => {
                let reason = hyper::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or_default();
                ClientError::Refused {
                    status,
                    message: format!(
                        "the host refused the component ({status} {reason}): {message}"
                    ),
                }
            }
            other => other,
        })
        .and_then(|answer| {
            // On a cluster: every host that runs the service must have made it current.
            let behind = answer["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|host| host["result"] != "current");
            if behind {
                return Err(ClientError::Incomplete(format!(
                    "{}\nthe version is not current on every host that runs the service; \
                     mend what each failed host says (or start the silent ones) and deploy again",
                    show::deployed(&answer)
                )));
            }
            Ok(answer)
        })
}

/// `?k=v&…`; empty without pairs.
fn query(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    format!(
        "?{}",
        query_string(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    )
}
