//! The hosts of a cluster: who is alive, and what each one's services consume.

use sqlx::Row;

use super::{Result, Storage};
use crate::storage::{Consumes, Hosts, StorageError, TopicKind, now_ms};

impl Hosts for Storage {
    async fn heartbeat(&self, me: &str, consumes: Option<&[Consumes]>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.inner.reads.begin().await?;
        sqlx::query(
            "INSERT INTO hosts (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(me)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(consumes) = consumes {
            sqlx::query("DELETE FROM host_topics WHERE host = $1")
                .bind(me)
                .execute(&mut *tx)
                .await?;
            for entry in consumes {
                sqlx::query(
                    "INSERT INTO host_topics (host, service, kind, topic) VALUES ($1, $2, $3, $4)",
                )
                .bind(me)
                .bind(&entry.service)
                .bind(entry.kind.as_str())
                .bind(&entry.topic)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn cluster_consumes(&self, alive_since: i64) -> Result<Vec<Consumes>> {
        let rows = sqlx::query(
            "SELECT DISTINCT t.service, t.kind, t.topic FROM host_topics t \
             JOIN hosts h ON h.id = t.host WHERE h.heartbeat_at >= $1 \
             ORDER BY t.service, t.kind, t.topic",
        )
        .bind(alive_since)
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Consumes {
                    service: row.try_get("service")?,
                    kind: kind_from_row(row)?,
                    topic: row.try_get("topic")?,
                })
            })
            .collect()
    }

    async fn hosts_alive(&self, alive_since: i64) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS alive FROM hosts WHERE heartbeat_at >= $1")
            .bind(alive_since)
            .fetch_one(&self.inner.reads)
            .await?;
        Ok(row.try_get::<i64, _>("alive")? as u64)
    }

    async fn forget_hosts(&self, before: i64) -> Result<()> {
        let mut tx = self.inner.reads.begin().await?;
        sqlx::query(
            "DELETE FROM host_topics WHERE host IN (SELECT id FROM hosts WHERE heartbeat_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM host_components WHERE host IN (SELECT id FROM hosts WHERE heartbeat_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM hosts WHERE heartbeat_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn kind_from_row(row: &sqlx::any::AnyRow) -> Result<TopicKind> {
    let text: String = row.try_get("kind")?;
    TopicKind::parse(&text).ok_or_else(|| {
        StorageError::Corrupt(format!("a consumed topic has an unknown kind {text:?}"))
    })
}
