//! `saga-bench cluster`: `POST /exams` on PostgreSQL + NATS JetStream with one and with two host
//! processes (the clients spread over them), next to the embedded default (SQLite file,
//! in-process broker). Each configuration gets a fresh database and its own stream, removed
//! afterwards. On PostgreSQL it also reports what each saga cost the database: the CPU time of
//! its processes (read from /proc: the server runs on this machine), and its transactions and
//! rows (`pg_stat_database`).

use sqlx::{Connection, Executor, Row};

use crate::server::{Server, component};
use crate::{Load, exam_workload, header, host_args, measure, measure_watched};

/// A fresh PostgreSQL database for one configuration, dropped at the end.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin: &str, label: &str) -> anyhow::Result<Database> {
        let name = format!("saga_bench_{}_{label}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(admin).await.map_err(|e| {
            anyhow::anyhow!(
                "PostgreSQL is not reachable at {admin} ({e}); start it or pass --postgres"
            )
        })?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .await?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(admin);
        Ok(Database {
            admin: admin.to_string(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// What the database server has done so far for this database: the CPU time of its processes
    /// (the backends connected to it, and the shared WAL writer, checkpointer and background
    /// writer), its committed transactions and rows, and the sagas stored in it.
    async fn usage(&self) -> anyhow::Result<Usage> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE (datname = current_database() \
             AND pid <> pg_backend_pid()) \
             OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
        )
        .fetch_all(&mut conn)
        .await?;
        let cpu = pids
            .iter()
            .map(|&pid| {
                (
                    pid,
                    crate::host_proc::cpu_time(pid as u32).unwrap_or_default(),
                )
            })
            .collect();
        let row = sqlx::query(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, tup_returned + tup_fetched, \
             (SELECT count(*) FROM sagas) FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await?;
        Ok(Usage {
            cpu,
            transactions: row.try_get(0)?,
            written: row.try_get(1)?,
            read: row.try_get(2)?,
            sagas: row.try_get(3)?,
        })
    }

    /// Writes every dirty page to disk (`CHECKPOINT`, which waits for it). Before a window it
    /// keeps what earlier work left the checkpointer out of the window's figure; at the window's
    /// end it puts in the writing of the pages the window dirtied, which a checkpoint would
    /// otherwise do at some time after it.
    async fn checkpoint(&self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
        conn.execute("CHECKPOINT").await.map_err(|e| {
            anyhow::anyhow!("CHECKPOINT failed ({e}): --postgres must name a superuser or a member of pg_checkpoint")
        })?;
        Ok(())
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .await?;
        Ok(())
    }
}

/// A reading of `Database::usage`.
struct Usage {
    cpu: Vec<(i32, std::time::Duration)>,
    transactions: i64,
    written: i64,
    read: i64,
    sagas: i64,
}

impl Usage {
    /// What was done between `before` and `self`, per saga stored meanwhile (the warm-up's
    /// included, on both sides): the CPU of the processes seen both times, transactions, rows.
    fn per_saga_since(&self, before: &Usage) -> String {
        let sagas = (self.sagas - before.sagas).max(1) as f64;
        let cpu: std::time::Duration = self
            .cpu
            .iter()
            .filter_map(|(pid, now)| {
                let (_, then) = before.cpu.iter().find(|(p, _)| p == pid)?;
                Some(now.saturating_sub(*then))
            })
            .sum();
        format!(
            "  PostgreSQL per saga ({} sagas): {:.2} ms CPU, {:.1} transactions (the statistics reader's own included), {:.1} rows written, {:.1} rows read",
            self.sagas - before.sagas,
            cpu.as_secs_f64() * 1e3 / sagas,
            (self.transactions - before.transactions) as f64 / sagas,
            (self.written - before.written) as f64 / sagas,
            (self.read - before.read) as f64 / sagas,
        )
    }
}

/// Deletes the stream of a benchmark's cluster name.
async fn delete_stream(nats: &str, cluster: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats).await?;
    let _ = async_nats::jetstream::new(client)
        .delete_stream(format!("SAGA_HOST_{cluster}"))
        .await;
    Ok(())
}

pub async fn run(load: &Load, postgres: &str, nats: &str) -> anyhow::Result<()> {
    async_nats::connect(nats).await.map_err(|e| {
        anyhow::anyhow!("NATS is not reachable at {nats} ({e}); start it with -js or pass --nats")
    })?;
    let components = [component("guest_exam")?, component("guest_attempt")?];
    println!(
        "POST /exams, fresh user per request; every host loads Exam and Attempt {:?}",
        load.host_args
    );
    header();
    {
        let server = Server::start(&components, &host_args(load))?;
        measure(
            &[server.addr.as_str()],
            "SQLite, in process",
            exam_workload(),
            load,
        )
        .await?;
    }
    for hosts in [1, 2] {
        let database = Database::create(postgres, &format!("{hosts}hosts")).await?;
        let cluster = format!("bench-{}-{hosts}", std::process::id());
        let broker = format!("nats://{nats}/{cluster}");
        let mut args = vec![
            "--database",
            database.url.as_str(),
            "--broker",
            broker.as_str(),
        ];
        args.extend(host_args(load));
        let servers = (0..hosts)
            .map(|_| Server::start(&components, &args))
            .collect::<anyhow::Result<Vec<Server>>>()?;
        let targets: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
        let name = format!(
            "PostgreSQL+NATS, {hosts} host{}",
            if hosts > 1 { "s" } else { "" }
        );
        let mut measured = Ok(());
        for &clients in &load.clients {
            let one = Load {
                clients: vec![clients],
                ..load.clone()
            };
            database.checkpoint().await?;
            let before = database.usage().await?;
            let pid = (hosts == 1).then(|| servers[0].pid());
            if let Err(error) = measure_watched(&targets, &name, exam_workload(), &one, pid).await {
                measured = Err(error);
                break;
            }
            database.checkpoint().await?;
            println!("{}", database.usage().await?.per_saga_since(&before));
        }
        drop(servers);
        database.drop_now().await?;
        delete_stream(nats, &cluster).await?;
        measured?;
    }
    Ok(())
}
