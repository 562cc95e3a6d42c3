//! Saga executions and their history, as the orchestrator and the operator API read them; the
//! rows are written by the writer, with the transitions.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Result, Storage};
use saga_core::engine::Status;

use crate::storage::{Executions, SagaRow, StorageError};

impl Executions for Storage {
    async fn load_saga(&self, id: &str) -> Result<Option<SagaRow>> {
        let row = sqlx::query(
            "SELECT id, service, name, status, state, created_at, updated_at, revision, timer_at, version, owner FROM sagas WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.reads)
        .await?;
        row.map(|row| saga_from_row(&row)).transpose()
    }

    async fn saga_history(&self, id: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT entries FROM saga_history WHERE saga = $1 ORDER BY revision")
                .bind(id)
                .fetch_all(&self.inner.reads)
                .await?;
        rows.iter().map(|row| Ok(row.try_get("entries")?)).collect()
    }

    async fn prune_ended_sagas(&self, before: i64, limit: u32) -> Result<u64> {
        let mut tx = self.inner.reads.begin().await?;
        let ended = format!(
            "SELECT id FROM sagas WHERE status IN ('finished', 'errored', 'compensation-failed') \
             AND updated_at < $1 ORDER BY updated_at LIMIT {limit}"
        );
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM saga_history WHERE saga IN ({ended})"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let pruned = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM sagas WHERE id IN ({ended})"
        )))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pruned.rows_affected())
    }

    async fn list_sagas(&self, status: Option<&str>, limit: u32) -> Result<Vec<SagaRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, service, name, status, state, created_at, updated_at, revision, timer_at, version, owner FROM sagas \
             WHERE ($1 = '' OR status = $1) ORDER BY created_at DESC, id LIMIT {limit}"
        )))
        .bind(status.unwrap_or(""))
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn claim_orphaned_sagas(&self, me: &str, alive_since: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "UPDATE sagas SET owner = $1 WHERE timer_at IS NOT NULL \
             AND (owner IS NULL OR owner NOT IN (SELECT id FROM hosts WHERE heartbeat_at >= $2)) \
             RETURNING id, timer_at",
        )
        .bind(me)
        .bind(alive_since)
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("timer_at")?)))
            .collect()
    }

    async fn running_versions(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT service, version, COUNT(*) AS running FROM sagas \
             WHERE status IN ('created', 'running', 'paused', 'compensating') GROUP BY service, version",
        )
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("service")?,
                    row.try_get("version")?,
                    row.try_get("running")?,
                ))
            })
            .collect()
    }

    async fn open_sagas(&self) -> Result<Vec<(Status, u64)>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS open FROM sagas \
             WHERE status IN ('created', 'running', 'paused', 'compensating') GROUP BY status",
        )
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| Ok((status_from_row(row)?, row.try_get::<i64, _>("open")? as u64)))
            .collect()
    }
}

fn saga_from_row(row: &AnyRow) -> Result<SagaRow> {
    Ok(SagaRow {
        id: row.try_get("id")?,
        service: row.try_get("service")?,
        name: row.try_get("name")?,
        status: status_from_row(row)?,
        state: row.try_get("state")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
        timer_at: row.try_get("timer_at")?,
        version: row.try_get("version")?,
        owner: row.try_get("owner")?,
        history: None,
    })
}

fn status_from_row(row: &AnyRow) -> Result<Status> {
    let text: String = row.try_get("status")?;
    Status::parse(&text)
        .ok_or_else(|| StorageError::Corrupt(format!("a saga has an unknown status {text:?}")))
}
