//! `saga-bench cluster`: `POST /exams` on PostgreSQL + NATS JetStream with one and with two host
//! processes (the clients spread over them), next to the embedded default (SQLite file,
//! in-process broker). Each configuration gets a fresh database and its own stream, removed
//! afterwards.

use sqlx::{Connection, Executor};

use crate::server::{Server, component};
use crate::{Load, exam_workload, header, host_args, measure};

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
        let measured = measure(&targets, &name, exam_workload(), load).await;
        drop(servers);
        database.drop_now().await?;
        delete_stream(nats, &cluster).await?;
        measured?;
    }
    Ok(())
}
