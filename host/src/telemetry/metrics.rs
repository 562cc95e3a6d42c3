//! The host's metrics, in one place: their names, help and labels, and a function for each
//! thing worth counting, called where it happens. They go through the `metrics` facade to the
//! Prometheus recorder that `install` sets up, and `GET /metrics` renders them in the text
//! format. Without the recorder (the library used alone, benchmarks) recording does nothing.
//!
//! Names follow Prometheus conventions (`saga_host_…_total` for counters, base units such as
//! `_seconds`). Labels are service, saga and topic names, route templates, statuses and limit
//! keys — never ids, payloads or anything a request chooses freely.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds of the latency histograms, in seconds: from a fraction of a millisecond (one
/// component call) to a minute (a saga that waited for a retry).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds of the transactions per group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the Prometheus recorder for this process (once; later calls reuse it).
pub fn install() -> Result<(), String> {
    if RECORDER.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(BATCH_TRANSACTIONS.into()), BATCH_BUCKETS)
        })
        .map_err(|e| format!("the metrics recorder could not be configured: {e}"))?
        .install_recorder()
        .map_err(|e| format!("the metrics recorder could not be installed: {e}"))?;
    // Histograms keep their samples until upkeep folds them into the buckets: without it a
    // host nobody scrapes would grow without bound.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| format!("the metrics upkeep thread could not start: {e}"))?;
    let _ = RECORDER.set(handle);
    describe();
    Ok(())
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Every metric in the Prometheus text format; none when no recorder is installed.
pub fn render() -> Option<String> {
    RECORDER.get().map(PrometheusHandle::render)
}

const SAGAS_STARTED: &str = "saga_host_sagas_started_total";
const SAGAS_ENDED: &str = "saga_host_sagas_ended_total";
const SAGA_DURATION: &str = "saga_host_saga_duration_seconds";
const SAGAS_OPEN: &str = "saga_host_sagas_open";
const STEP_DISPATCHES: &str = "saga_host_step_dispatches_total";
const STEP_REPLIES: &str = "saga_host_step_replies_total";
const STEP_RETRIES: &str = "saga_host_step_retries_total";
const STEP_TIMEOUTS: &str = "saga_host_step_timeouts_total";
const STEP_LATENCY: &str = "saga_host_step_latency_seconds";
const COMPENSATIONS: &str = "saga_host_compensations_total";
const CALLS: &str = "saga_host_component_calls_total";
const CALL_WALL: &str = "saga_host_component_call_seconds";
const CALL_CPU: &str = "saga_host_component_cpu_seconds";
const REFUSALS: &str = "saga_host_component_refusals_total";
const TRAPS: &str = "saga_host_component_traps_total";
const HTTP_REQUESTS: &str = "saga_host_http_requests_total";
const HTTP_DURATION: &str = "saga_host_http_request_duration_seconds";
const COMMIT_DURATION: &str = "saga_host_storage_commit_seconds";
const CHECKPOINT_DURATION: &str = "saga_host_storage_checkpoint_seconds";
const BATCH_TRANSACTIONS: &str = "saga_host_storage_batch_transactions";
const COMMITS: &str = "saga_host_storage_commits_total";
const CONFLICTS: &str = "saga_host_storage_conflicts_total";
const READS: &str = "saga_host_storage_reads_total";
const RERUNS: &str = "saga_host_call_reruns_total";
const LOCK_WAITS: &str = "saga_host_lock_waits_total";
const QUEUE_DEPTH: &str = "saga_host_queue_depth";
const QUEUE_OLDEST: &str = "saga_host_queue_oldest_message_age_seconds";
const DEAD_LETTERS: &str = "saga_host_dead_letters";
const DEAD_LETTERED: &str = "saga_host_dead_lettered_total";
const RELAY_LAG: &str = "saga_host_nats_relay_lag_seconds";
const REDELIVERIES: &str = "saga_host_redeliveries_total";
const HOSTS_ALIVE: &str = "saga_host_cluster_hosts_alive";
const DEPLOYS: &str = "saga_host_deploys_total";
const COMPILE: &str = "saga_host_component_compile_seconds";
const COMPILE_CACHE: &str = "saga_host_compile_cache_total";

/// What kind of metric a name is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric, its kind and its help text.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        SAGAS_STARTED,
        Kind::Counter,
        "Sagas started, by service and saga.",
    ),
    (
        SAGAS_ENDED,
        Kind::Counter,
        "Sagas ended, by service, saga and final status (finished, errored, compensation-failed).",
    ),
    (
        SAGA_DURATION,
        Kind::Histogram,
        "Time from a saga's start to its end, by saga.",
    ),
    (
        SAGAS_OPEN,
        Kind::Gauge,
        "Sagas not ended, by status (created, running, paused, compensating), as stored.",
    ),
    (
        STEP_DISPATCHES,
        Kind::Counter,
        "Commands of saga steps and compensations sent, by topic and mode (inline or queued).",
    ),
    (
        STEP_REPLIES,
        Kind::Counter,
        "Replies to saga commands, by topic and class (success, error, system_error).",
    ),
    (
        STEP_RETRIES,
        Kind::Counter,
        "Saga commands retried after a system error, by topic.",
    ),
    (
        STEP_TIMEOUTS,
        Kind::Counter,
        "Saga commands whose reply did not come in time, by topic.",
    ),
    (
        STEP_LATENCY,
        Kind::Histogram,
        "Time from sending a saga command to its reply, by topic.",
    ),
    (
        COMPENSATIONS,
        Kind::Counter,
        "Compensations, by topic and outcome (sent, done, failed).",
    ),
    (
        CALLS,
        Kind::Counter,
        "Component calls, by service, export (describe, handle, prepare, on-reply, execute, condition) and outcome (ok, error, limit, trap, timeout, missing, raced).",
    ),
    (
        CALL_WALL,
        Kind::Histogram,
        "Wall-clock time of component calls, by service and export.",
    ),
    (
        CALL_CPU,
        Kind::Histogram,
        "CPU time of the component's own code per call, by service and export.",
    ),
    (
        REFUSALS,
        Kind::Counter,
        "Component calls stopped or refused on a limit, by service and limit key.",
    ),
    (
        TRAPS,
        Kind::Counter,
        "Component calls that trapped, by service.",
    ),
    (
        HTTP_REQUESTS,
        Kind::Counter,
        "HTTP requests, by route template, method and status.",
    ),
    (
        HTTP_DURATION,
        Kind::Histogram,
        "HTTP request durations, by route template and method.",
    ),
    (
        COMMIT_DURATION,
        Kind::Histogram,
        "Time of one database commit (a group of transactions).",
    ),
    (
        CHECKPOINT_DURATION,
        Kind::Histogram,
        "Time of one copy of SQLite's WAL into the database file, beside the writer (SQLite).",
    ),
    (
        BATCH_TRANSACTIONS,
        Kind::Histogram,
        "Transactions per group commit.",
    ),
    (
        COMMITS,
        Kind::Counter,
        "Group commits by how their transactions were applied (way: together, one_by_one, isolated).",
    ),
    (
        READS,
        Kind::Counter,
        "Reads of the services' aggregates sent to the database, by kind (get: one by uuid; find: by condition).",
    ),
    (
        CONFLICTS,
        Kind::Counter,
        "Transactions refused by storage, by kind (conflict, saga_changed, overwritten, duplicate).",
    ),
    (
        RERUNS,
        Kind::Counter,
        "Calls and saga transitions run again after colliding with another writer, by what (handler, saga).",
    ),
    (
        LOCK_WAITS,
        Kind::Counter,
        "Writes that waited for aggregates a running saga held.",
    ),
    (
        QUEUE_DEPTH,
        Kind::Gauge,
        "Messages in the in-process queue (or waiting for the relay).",
    ),
    (
        QUEUE_OLDEST,
        Kind::Gauge,
        "Age of the oldest message in the queue.",
    ),
    (DEAD_LETTERS, Kind::Gauge, "Messages in the dead letters."),
    (
        DEAD_LETTERED,
        Kind::Counter,
        "Messages moved to the dead letters.",
    ),
    (
        RELAY_LAG,
        Kind::Histogram,
        "Time from a message's commit to JetStream acknowledging it (NATS broker).",
    ),
    (
        REDELIVERIES,
        Kind::Counter,
        "Messages delivered again after a failed handling, by consumer.",
    ),
    (
        HOSTS_ALIVE,
        Kind::Gauge,
        "Hosts of the cluster that sent a heartbeat within a lease.",
    ),
    (
        DEPLOYS,
        Kind::Counter,
        "Component deploys, by result (ok, invalid, conflict, failed).",
    ),
    (
        COMPILE,
        Kind::Histogram,
        "Time to compile a component (not from the cache).",
    ),
    (
        COMPILE_CACHE,
        Kind::Counter,
        "Component loads, by whether the compile cache had them (hit, miss).",
    ),
];

fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The handles of one metric (or of metrics recorded together), one per set of label values,
/// registered with the recorder the first time those values come: every later recording is a
/// map lookup and atomic adds, where the macros build a label set (a `String` per value), sort
/// it and look it up in the recorder's registry each time. For what every saga, step, call,
/// request and commit records.
struct Registered<H>(LazyLock<RwLock<HashMap<Box<str>, H>>>);

impl<H: Clone> Registered<H> {
    const fn new() -> Self {
        Registered(LazyLock::new(RwLock::default))
    }

    /// The handle for these label values, made by `make` the first time they come. Before the
    /// recorder is installed `make` gives handles that record nothing: those are not kept.
    fn get(&self, values: &[&str], make: impl FnOnce() -> H) -> H {
        if RECORDER.get().is_none() {
            return make();
        }
        let mut key = String::with_capacity(values.iter().map(|v| v.len() + 1).sum());
        for value in values {
            key.push_str(value);
            key.push('\0');
        }
        let known = self
            .0
            .read()
            .ok()
            .and_then(|map| map.get(key.as_str()).cloned());
        if let Some(known) = known {
            return known;
        }
        let made = make();
        if let Ok(mut map) = self.0.write() {
            map.entry(key.into_boxed_str())
                .or_insert_with(|| made.clone());
        }
        made
    }
}

/// A saga started.
pub fn saga_started(service: &str, saga: &str) {
    static STARTED: Registered<Counter> = Registered::new();
    STARTED
        .get(&[service, saga], || {
            counter!(SAGAS_STARTED, "service" => service.to_string(), "saga" => saga.to_string())
        })
        .increment(1);
}

/// A saga ended with `status`, `took` after it started.
pub fn saga_ended(service: &str, saga: &str, status: &'static str, took: Duration) {
    static ENDED: Registered<(Counter, Histogram)> = Registered::new();
    let (ended, duration) = ENDED.get(&[service, saga, status], || {
        (
            counter!(SAGAS_ENDED, "service" => service.to_string(), "saga" => saga.to_string(), "status" => status),
            histogram!(SAGA_DURATION, "saga" => saga.to_string()),
        )
    });
    ended.increment(1);
    duration.record(seconds(took));
}

/// A saga command (a step's or a compensation's) was sent.
pub fn step_dispatched(topic: &str, inline: bool, compensation: bool) {
    static DISPATCHED: Registered<Counter> = Registered::new();
    let mode = if inline { "inline" } else { "queued" };
    DISPATCHED
        .get(
            &[topic, mode],
            || counter!(STEP_DISPATCHES, "topic" => topic.to_string(), "mode" => mode),
        )
        .increment(1);
    if compensation {
        counter!(COMPENSATIONS, "topic" => topic.to_string(), "outcome" => "sent").increment(1);
    }
}

/// A saga command was answered with `status`, `after` it was sent.
pub fn step_replied(topic: &str, status: u16, after: Duration) {
    let class = match status {
        200..=299 => "success",
        400..=499 => "error",
        _ => "system_error",
    };
    static REPLIED: Registered<(Counter, Histogram)> = Registered::new();
    let (replies, latency) = REPLIED.get(&[topic, class], || {
        (
            counter!(STEP_REPLIES, "topic" => topic.to_string(), "class" => class),
            histogram!(STEP_LATENCY, "topic" => topic.to_string()),
        )
    });
    replies.increment(1);
    latency.record(seconds(after));
}

/// A saga command is to be sent again after a system error.
pub fn step_retry(topic: &str) {
    counter!(STEP_RETRIES, "topic" => topic.to_string()).increment(1);
}

/// A saga command's reply did not come in time.
pub fn step_timeout(topic: &str) {
    counter!(STEP_TIMEOUTS, "topic" => topic.to_string()).increment(1);
}

/// A compensation ended: done, or given up on.
pub fn compensation_over(topic: &str, done: bool) {
    let outcome = if done { "done" } else { "failed" };
    counter!(COMPENSATIONS, "topic" => topic.to_string(), "outcome" => outcome).increment(1);
}

/// The sagas not ended, by status, as storage counts them.
pub fn sagas_open(status: &'static str, count: u64) {
    gauge!(SAGAS_OPEN, "status" => status).set(count as f64);
}

/// A component call ended with `outcome`; `refused_on` is the limit key that stopped it.
pub fn component_call(
    service: &str,
    export: &'static str,
    outcome: &'static str,
    wall: Duration,
    cpu: Duration,
    refused_on: Option<&str>,
) {
    static CALLS_OF: Registered<CallHandles> = Registered::new();
    let handles = CALLS_OF.get(&[service, export], || CallHandles {
        ok: counter!(CALLS, "service" => service.to_string(), "export" => export, "outcome" => "ok"),
        wall: histogram!(CALL_WALL, "service" => service.to_string(), "export" => export),
        cpu: histogram!(CALL_CPU, "service" => service.to_string(), "export" => export),
    });
    if outcome == "ok" {
        handles.ok.increment(1);
    } else {
        counter!(CALLS, "service" => service.to_string(), "export" => export, "outcome" => outcome)
            .increment(1);
    }
    handles.wall.record(seconds(wall));
    handles.cpu.record(seconds(cpu));
    if let Some(limit) = refused_on {
        counter!(REFUSALS, "service" => service.to_string(), "limit" => limit.to_string())
            .increment(1);
    }
    if outcome == "trap" {
        counter!(TRAPS, "service" => service.to_string()).increment(1);
    }
}

/// The handles every call of one service's export records.
#[derive(Clone)]
struct CallHandles {
    ok: Counter,
    wall: Histogram,
    cpu: Histogram,
}

/// An HTTP request was answered.
pub fn http_request(route: &str, method: &str, status: axum::http::StatusCode, took: Duration) {
    static ANSWERED: Registered<(Counter, Histogram)> = Registered::new();
    let (requests, duration) = ANSWERED.get(&[route, method, status.as_str()], || {
        let (route, method) = (route.to_string(), method.to_string());
        (
            counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status.as_str().to_string()),
            histogram!(HTTP_DURATION, "route" => route, "method" => method),
        )
    });
    requests.increment(1);
    duration.record(seconds(took));
}

/// A group commit of `transactions`, applied the `way` given, took `took`.
pub fn commit(transactions: usize, way: &'static str, took: Duration) {
    static COMMITTED: Registered<(Histogram, Histogram, Counter)> = Registered::new();
    let (duration, batch, commits) = COMMITTED.get(&[way], || {
        (
            histogram!(COMMIT_DURATION),
            histogram!(BATCH_TRANSACTIONS),
            counter!(COMMITS, "way" => way),
        )
    });
    duration.record(seconds(took));
    batch.record(transactions as f64);
    commits.increment(1);
}

/// SQLite's checkpointer copied the WAL into the database file.
pub fn checkpoint(took: Duration) {
    histogram!(CHECKPOINT_DURATION).record(seconds(took));
}

/// The services' aggregates were read from the database (`kind`: get, find).
pub fn storage_read(kind: &'static str) {
    static READ: Registered<Counter> = Registered::new();
    READ.get(&[kind], || counter!(READS, "kind" => kind))
        .increment(1);
}

/// Storage refused a transaction (`kind`: conflict, saga_changed, overwritten, duplicate).
pub fn storage_refused(kind: &'static str) {
    counter!(CONFLICTS, "kind" => kind).increment(1);
}

/// A call or transition runs again after a collision; `held`: it waits for a saga's lock.
pub fn rerun(what: &'static str, held: bool) {
    counter!(RERUNS, "what" => what).increment(1);
    if held {
        counter!(LOCK_WAITS).increment(1);
    }
}

/// The queue's depth and its oldest message's age; the dead letters.
pub fn backlog(queued: u64, oldest: Option<Duration>, dead_letters: u64) {
    gauge!(QUEUE_DEPTH).set(queued as f64);
    gauge!(QUEUE_OLDEST).set(oldest.map_or(0.0, seconds));
    gauge!(DEAD_LETTERS).set(dead_letters as f64);
}

/// The hosts of the cluster alive at its last heartbeat.
pub fn hosts_alive(hosts: u64) {
    gauge!(HOSTS_ALIVE).set(hosts as f64);
}

/// A message went to the dead letters.
pub fn dead_lettered() {
    counter!(DEAD_LETTERED).increment(1);
}

/// A message is delivered again after a failed handling.
pub fn redelivered(consumer: &str) {
    counter!(REDELIVERIES, "consumer" => consumer.to_string()).increment(1);
}

/// JetStream acknowledged a relayed message `lag` after its commit.
pub fn relayed(lag: Duration) {
    histogram!(RELAY_LAG).record(seconds(lag));
}

/// A deploy ended with `result` (ok, invalid, conflict, failed).
pub fn deploy(result: &'static str) {
    counter!(DEPLOYS, "result" => result).increment(1);
}

/// A component was loaded: from the compile cache, or compiled in `took`.
pub fn component_loaded(cached: bool, took: Duration) {
    let result = if cached { "hit" } else { "miss" };
    counter!(COMPILE_CACHE, "result" => result).increment(1);
    if !cached {
        histogram!(COMPILE).record(seconds(took));
    }
}
