//! `POST /exams` with many exams stored: measured on a fresh database, then again once the
//! database holds `exams` exams, with the time of a `find` on an indexed field before and after
//! and the query plan of that find.
//!
//! The database is filled with copies of what the host itself wrote for one real `POST /exams`:
//! the Exam's and the Attempt's snapshot and events, and the saga's row with its history (ended
//! sagas are kept for 7 days by default). Each copy is inserted with SQL into the schema the host
//! created, with ids of its own (a fresh user, exam, aggregate uuids and saga id, replaced
//! wherever the template's text holds them; the saga's packed record is copied as it is) and
//! times spread over the last 5 days. The indexes of those three tables (the host's, and the
//! field indexes the services declared) are dropped before the copy and created again after it,
//! which builds the same entries much faster than inserting into them row by row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use crate::load::{self, Report};
use crate::server::{Server, component};
use crate::stats::Samples;
use crate::swap::{Http, send};
use crate::{Load, disk, exam_workload};

/// Copies inserted per transaction.
const CHUNK: usize = 100_000;

/// A fresh random UUID (version 4 form) in SQL.
const SQL_UUID: &str = "lower(printf('%s-%s-4%s-8%s-%s', hex(randomblob(4)), hex(randomblob(2)), \
                        substr(hex(randomblob(2)), 2), substr(hex(randomblob(2)), 2), \
                        hex(randomblob(6))))";

pub async fn run(exams: usize, load: &Load, requests: usize) -> anyhow::Result<()> {
    let server = Server::start(
        &[component("guest_exam")?, component("guest_attempt")?],
        &[],
    )?;
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    let addr = server.addr.as_str();
    let template = seed(&client, addr).await?;
    let find_path = format!("/exams?user_uuid={}", template.user);
    let mut db = disk::open(&server.database()).await?;
    let template = template.rows(&mut db).await?;

    let workload = Arc::new(exam_workload());
    let mut before = Vec::new();
    for &clients in &load.clients {
        before.push(measure(&server, &workload, clients, load.seconds).await?);
    }
    let find_before = time_find(&client, addr, &find_path, requests).await?;
    let stored_before = stored_exams(&mut db).await?;

    let copies = exams.saturating_sub(stored_before as usize);
    let started = Instant::now();
    fill(&mut db, &template, copies).await?;
    let filled_in = started.elapsed();
    let stored_after = stored_exams(&mut db).await?;

    let mut after = Vec::new();
    for &clients in &load.clients {
        after.push(measure(&server, &workload, clients, load.seconds).await?);
    }
    let find_after = time_find(&client, addr, &find_path, requests).await?;
    let plan = find_plan(&mut db).await?;
    let file = std::fs::metadata(server.database())?.len();

    println!(
        "POST /exams with many exams stored, SQLite synchronous=FULL: {stored_before} exams \
         stored after the first measurement, then {copies} copies of one real POST /exams's rows \
         (Exam and Attempt snapshots and events, the saga with its history) inserted with SQL in {:.1} s \
         → {stored_after} exams, file {:.2} GB",
        filled_in.as_secs_f64(),
        file as f64 / 1e9
    );
    println!(
        "{:<8} {:>11} {:>11} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9} {:>12}",
        "clients",
        "exams",
        "sagas/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "ratio",
        "errors",
        "CPU ms",
        "CPU ms/saga"
    );
    for (i, &clients) in load.clients.iter().enumerate() {
        for (stored, report, base) in [
            (stored_before, &before[i], None),
            (stored_after, &after[i], Some(&before[i])),
        ] {
            let ratio = |f: fn(&Report) -> f64| {
                base.map(|b| format!("{:.2}", f(report) / f(b)))
                    .unwrap_or_default()
            };
            println!(
                "{:<8} {:>11} {:>11.0} {:>7} {:>9.2} {:>9.2} {:>7} {:>9} {:>9.0} {:>12.2}",
                clients,
                stored,
                report.per_second(),
                ratio(Report::per_second),
                ms(report.latency.percentile(50.0)),
                ms(report.latency.percentile(99.0)),
                ratio(|r| ms(r.latency.percentile(50.0))),
                report.errors,
                ms(report.host_cpu.unwrap_or_default()),
                report.cpu_ms_per_saga().unwrap_or_default(),
            );
        }
    }
    println!(
        "GET {find_path} (find by the indexed field user_uuid), {requests} requests one at a \
         time: p50 {:.2} → {:.2} ms, p99 {:.2} → {:.2} ms",
        ms(find_before.percentile(50.0)),
        ms(find_after.percentile(50.0)),
        ms(find_before.percentile(99.0)),
        ms(find_after.percentile(99.0)),
    );
    println!("its query plan (EXPLAIN QUERY PLAN of the host's find SQL):");
    for line in plan {
        println!("  {line}");
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

async fn measure(
    server: &Server,
    workload: &Arc<load::Workload>,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Report> {
    load::run_watched(
        &[server.addr.as_str()],
        workload.clone(),
        clients,
        Duration::from_secs(seconds),
        Some(server.pid()),
    )
    .await
}

/// One real `POST /exams`, whose rows the copies are made of.
struct Seed {
    user: uuid::Uuid,
    exam: uuid::Uuid,
}

/// The rows the host wrote for the seed: their rowids per table, and the ids each copy replaces.
struct Template {
    rowids: Vec<(&'static str, Vec<i64>)>,
    /// user, exam, the Exam aggregate's uuid, the Attempt's uuid, the saga's id.
    ids: [String; 5],
}

async fn seed(client: &Http, addr: &str) -> anyhow::Result<Seed> {
    let seed = Seed {
        user: uuid::Uuid::new_v4(),
        exam: uuid::Uuid::new_v4(),
    };
    let request = hyper::Request::post(format!("http://{addr}/exams"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"user_uuid": seed.user, "exam_uuid": seed.exam}).to_string(),
        )))?;
    let (status, body) = send(client, request).await?;
    ensure!(
        status == 200,
        "the seed POST /exams answered {status}: {body}"
    );
    Ok(seed)
}

impl Seed {
    async fn rows(&self, db: &mut SqliteConnection) -> anyhow::Result<Template> {
        let (user, exam) = (self.user.to_string(), self.exam.to_string());
        let aggregates: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT rowid, service, uuid FROM snapshots \
             WHERE (service = 'exam' AND json_extract(data, '$.user_uuid') = ?1) \
                OR (service = 'attempt' AND json_extract(data, '$.user') = ?1)",
        )
        .bind(&user)
        .fetch_all(&mut *db)
        .await?;
        let uuid_of = |service: &str| {
            aggregates
                .iter()
                .find(|(_, s, _)| s == service)
                .map(|(_, _, uuid)| uuid.clone())
                .with_context(|| format!("the seed's {service} snapshot"))
        };
        let (exam_uuid, attempt_uuid) = (uuid_of("exam")?, uuid_of("attempt")?);
        ensure!(
            aggregates.len() == 2,
            "the seed has {aggregates:?} snapshots"
        );
        let events: Vec<i64> =
            sqlx::query_scalar("SELECT rowid FROM events WHERE uuid IN (?1, ?2)")
                .bind(&exam_uuid)
                .bind(&attempt_uuid)
                .fetch_all(&mut *db)
                .await?;
        // The seed ran alone, after the load: its saga is the newest.
        let sagas: Vec<(i64, String)> = sqlx::query_as(
            "SELECT rowid, id FROM sagas ORDER BY created_at DESC, rowid DESC LIMIT 1",
        )
        .fetch_all(&mut *db)
        .await?;
        let [(saga_rowid, saga)] = sagas.as_slice() else {
            bail!("the seed's saga: found {sagas:?}");
        };
        ensure!(!events.is_empty(), "the seed has {} events", events.len());
        Ok(Template {
            rowids: vec![
                ("snapshots", aggregates.iter().map(|(r, _, _)| *r).collect()),
                ("events", events),
                ("sagas", vec![*saga_rowid]),
            ],
            ids: [user, exam, exam_uuid, attempt_uuid, saga.clone()],
        })
    }
}

/// Exams stored (committed Exam snapshots).
async fn stored_exams(db: &mut SqliteConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM snapshots WHERE service = 'exam' AND aggregate = 'Exam'",
    )
    .fetch_one(db)
    .await?)
}

/// Inserts `copies` copies of the template, in transactions of CHUNK copies.
async fn fill(db: &mut SqliteConnection, template: &Template, copies: usize) -> anyhow::Result<()> {
    if copies == 0 {
        return Ok(());
    }
    for pragma in [
        "PRAGMA cache_size = -1048576",
        "PRAGMA temp_store = MEMORY",
        "CREATE TEMP TABLE IF NOT EXISTS fill_ids (i INTEGER PRIMARY KEY, u TEXT, e TEXT, x TEXT, a TEXT, s TEXT)",
    ] {
        sqlx::query(pragma).execute(&mut *db).await?;
    }
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL \
         AND tbl_name IN ('snapshots', 'events', 'sagas')",
    )
    .fetch_all(&mut *db)
    .await?;
    let mut inserts = Vec::new();
    for (table, rowids) in &template.rowids {
        inserts.push(insert_sql(db, table, rowids).await?);
    }
    // Copies' times go back from the template's, spread over 5 days (ended sagas are pruned
    // after 7).
    let step_ms = (5 * 24 * 3600 * 1000 / copies as i64).max(1);
    let started = Instant::now();
    for (name, _) in &indexes {
        sqlx::query(AssertSqlSafe(format!("DROP INDEX \"{name}\"")))
            .execute(&mut *db)
            .await?;
    }
    let mut done = 0;
    while done < copies {
        let end = (done + CHUNK).min(copies);
        let mut tx = sqlx::Connection::begin(&mut *db).await?;
        sqlx::query("DELETE FROM temp.fill_ids")
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
             INSERT INTO temp.fill_ids SELECT i, {SQL_UUID}, {SQL_UUID}, {SQL_UUID}, {SQL_UUID}, \
             {SQL_UUID} FROM n"
        )))
        .bind(done as i64 + 1)
        .bind(end as i64)
        .execute(&mut *tx)
        .await?;
        for sql in &inserts {
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for id in &template.ids {
                query = query.bind(id);
            }
            query.bind(step_ms).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        done = end;
        eprintln!(
            "  {done} of {copies} copies inserted ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let rows_done = started.elapsed();
    for (_, sql) in &indexes {
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .execute(&mut *db)
            .await
            .with_context(|| format!("create again: {sql}"))?;
    }
    eprintln!(
        "  rows in {:.1} s, {} indexes created again in {:.1} s",
        rows_done.as_secs_f64(),
        indexes.len(),
        (started.elapsed() - rows_done).as_secs_f64()
    );
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// `INSERT INTO table SELECT …` of one copy per row of temp.fill_ids: every text column has the
/// template's ids replaced by the copy's (?1..?5), the times go back by i * ?6 ms. A saga's
/// record is copied as it is (packed, the ids inside it stay the seed's: its size is what a
/// copy needs).
async fn insert_sql(
    db: &mut SqliteConnection,
    table: &str,
    rowids: &[i64],
) -> anyhow::Result<String> {
    let columns = sqlx::query(AssertSqlSafe(format!("PRAGMA table_info({table})")))
        .fetch_all(&mut *db)
        .await?;
    let mut names = Vec::new();
    let mut values = Vec::new();
    for column in &columns {
        let name: String = column.try_get("name")?;
        let kind: String = column.try_get("type")?;
        let value = match (name.as_str(), kind.to_uppercase().as_str()) {
            ("created_at" | "updated_at", _) => format!("t.{name} - f.i * ?6"),
            ("record", _) => format!("t.{name}"),
            (_, "TEXT") => format!(
                "replace(replace(replace(replace(replace(t.{name}, ?1, f.u), ?2, f.e), ?3, f.x), \
                 ?4, f.a), ?5, f.s)"
            ),
            _ => format!("t.{name}"),
        };
        names.push(name);
        values.push(value);
    }
    let rowids: Vec<String> = rowids.iter().map(i64::to_string).collect();
    Ok(format!(
        "INSERT INTO {table} ({}) SELECT {} FROM temp.fill_ids AS f, {table} AS t \
         WHERE t.rowid IN ({})",
        names.join(", "),
        values.join(", "),
        rowids.join(", ")
    ))
}

/// The query plan of the host's `find` of Exams by user_uuid (the SQL of
/// host/src/storage/sql/aggregates.rs for one equality on a declared field).
async fn find_plan(db: &mut SqliteConnection) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT uuid, version, created_at, updated_at, data, deleted, 0 AS staged \
         FROM snapshots WHERE service = ?1 AND aggregate = ?2 AND deleted = 0 \
         AND json_extract(data, '$.\"user_uuid\"') = ?3 AND json_type(data, '$.\"user_uuid\"') = 'text' \
         ORDER BY created_at, uuid LIMIT 100",
    )
    .bind("exam")
    .bind("Exam")
    .bind(uuid::Uuid::new_v4().to_string())
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<String, _>("detail")?))
        .collect()
}

/// `requests` GETs of `path`, one at a time, after a warm-up of 3; each must answer 200.
async fn time_find(
    client: &Http,
    addr: &str,
    path: &str,
    requests: usize,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for n in 0..requests + 3 {
        let request =
            hyper::Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new()))?;
        let sent = Instant::now();
        let (status, body) = send(client, request).await?;
        ensure!(
            status == 200 && body.as_array().is_some_and(|a| a.len() == 1),
            "GET {path} answered {status}: {body}"
        );
        if n >= 3 {
            samples.push(sent.elapsed());
        }
    }
    Ok(samples)
}
