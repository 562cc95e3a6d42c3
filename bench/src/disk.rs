//! Disk per finished saga: the bytes of each table and index of the host's SQLite file (its
//! `dbstat` virtual table, compiled into the bundled SQLite; the `sqlite3` program otherwise),
//! after a `PRAGMA wal_checkpoint(TRUNCATE)` has moved the write-ahead log into the file,
//! divided by the sagas that finished.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};

/// The bytes of each table's and index's pages, and of the rows' content in them.
const DBSTAT: &str =
    "SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name ORDER BY 2 DESC";

/// Where a table's bytes are counted.
fn group(table: &str) -> &'static str {
    match table {
        "sagas" => "saga bookkeeping (sagas + indexes)",
        "events" | "snapshots" => "aggregates (events, snapshots + indexes)",
        _ => "other (broker, consumed, idempotency, components, schema…)",
    }
}

pub async fn open(database: &Path) -> anyhow::Result<SqliteConnection> {
    let url = format!("sqlite://{}", database.display());
    let mut db = SqliteConnection::connect(&url)
        .await
        .with_context(|| format!("open the host's database {url}"))?;
    sqlx::query("PRAGMA busy_timeout = 10000")
        .execute(&mut db)
        .await?;
    Ok(db)
}

/// Prints the bytes per finished saga of each table and index and of the three groups.
pub async fn report(database: &Path) -> anyhow::Result<()> {
    let mut db = open(database).await?;
    let finished: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE status = 'finished'")
        .fetch_one(&mut db)
        .await?;
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas")
        .fetch_one(&mut db)
        .await?;
    let (busy, log, checkpointed): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut db)
            .await?;
    let wal = std::fs::metadata(database.with_extension("db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    let file = std::fs::metadata(database)?.len();
    let objects = match sqlx::query(DBSTAT).fetch_all(&mut db).await {
        Ok(rows) => {
            println!("(table sizes from the bundled SQLite's dbstat virtual table)");
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get::<i64, _>(1)? as u64,
                        r.try_get::<i64, _>(2)? as u64,
                    ))
                })
                .collect::<anyhow::Result<Vec<(String, u64, u64)>>>()?
        }
        Err(error) => {
            println!("(dbstat is not available here: {error}; table sizes from the sqlite3 CLI)");
            sqlite3_cli(database)?
        }
    };
    // The table each index belongs to.
    let tables: BTreeMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT name, tbl_name FROM sqlite_schema")
            .fetch_all(&mut db)
            .await?
            .into_iter()
            .collect();
    let mut rows = BTreeMap::new();
    for (name, table) in &tables {
        if name == table && !name.starts_with("sqlite_") {
            let count: i64 =
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM \"{name}\"")))
                    .fetch_one(&mut db)
                    .await?;
            rows.insert(name.clone(), count);
        }
    }
    let freelist: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut db)
        .await?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut db)
        .await?;
    db.close().await?;
    let per = |bytes: u64| bytes as f64 / finished.max(1) as f64;
    println!(
        "disk per finished saga: {finished} finished of {all} sagas; WAL checkpointed first \
         (PRAGMA wal_checkpoint(TRUNCATE): busy {busy}, {log} frames, {checkpointed} moved; \
         WAL now {wal} bytes), file {:.1} MB",
        file as f64 / 1e6
    );
    println!(
        "{:<34} {:<14} {:>9} {:>12} {:>12} {:>14}",
        "table or index", "table", "rows", "bytes", "bytes/saga", "content/saga"
    );
    let mut groups: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, bytes, payload) in &objects {
        let table = tables.get(name).unwrap_or(name);
        let rows = match rows.get(name) {
            Some(n) => n.to_string(),
            None => String::new(),
        };
        *groups.entry(group(table)).or_default() += bytes;
        if *bytes >= 4 * page_size as u64 {
            println!(
                "{name:<34} {table:<14} {rows:>9} {bytes:>12} {:>12.0} {:>14.0}",
                per(*bytes),
                per(*payload)
            );
        }
    }
    let free = (freelist * page_size) as u64;
    println!(
        "(tables and indexes of fewer than 4 pages are counted in their group only; free pages: {free} bytes)"
    );
    println!("{:<60} {:>12} {:>12}", "group", "bytes", "bytes/saga");
    let mut total = 0;
    for (group, bytes) in &groups {
        total += bytes;
        println!("{group:<60} {bytes:>12} {:>12.0}", per(*bytes));
    }
    println!(
        "{:<60} {:>12} {:>12.0}",
        "all tables and indexes",
        total,
        per(total)
    );
    Ok(())
}

/// The same query through the `sqlite3` program (`make test-tools` installs it).
fn sqlite3_cli(database: &Path) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let output = std::process::Command::new("sqlite3")
        .args(["-readonly", "-separator", "|"])
        .arg(database)
        .arg(DBSTAT)
        .output()
        .context("run sqlite3 (make test-tools installs it)")?;
    anyhow::ensure!(
        output.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let mut fields = line.rsplitn(3, '|');
            let mut next = || fields.next().context("a row of name|bytes|content");
            let (payload, bytes, name) = (next()?.parse()?, next()?.parse()?, next()?);
            Ok((name.into(), bytes, payload))
        })
        .collect()
}
