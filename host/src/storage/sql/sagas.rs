//! Saga executions and their history, as the orchestrator and the operator API read them; the
//! rows are written by the writer, with the transitions.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Result, Storage};
use saga_core::engine::Status;

use crate::storage::{
    Durations, Executions, SagaCount, SagaFilter, SagaKey, SagaRow, StorageError,
};

const SAGA_COLUMNS: &str =
    "id, service, name, status, record, created_at, updated_at, revision, timer_at, version, owner";

/// A value bound to a numbered parameter.
enum Bound {
    Int(i64),
    Text(String),
}

/// The WHERE clause of a filtered listing, with its parameters (numbered, never spliced in).
struct Where {
    conditions: Vec<String>,
    binds: Vec<Bound>,
}

impl Where {
    fn of(filter: &SagaFilter) -> Where {
        let mut clause = Where {
            conditions: Vec::new(),
            binds: Vec::new(),
        };
        let texts = [
            ("service =", filter.service.clone()),
            ("name =", filter.name.clone()),
            ("status =", filter.status.map(|s| s.as_str().to_string())),
            // The prefix is hex digits and dashes (checked by the caller): no LIKE wildcard.
            (
                "id LIKE",
                filter.id_prefix.as_ref().map(|p| format!("{p}%")),
            ),
        ];
        for (test, value) in texts {
            if let Some(value) = value {
                let at = clause.bind(Bound::Text(value));
                clause.push(format!("{test} {at}"));
            }
        }
        let ranges = [
            ("created_at >=", filter.created_from),
            ("created_at <", filter.created_to),
            ("updated_at >=", filter.updated_from),
            ("updated_at <", filter.updated_to),
        ];
        for (test, value) in ranges {
            if let Some(value) = value {
                let at = clause.bind(Bound::Int(value));
                clause.push(format!("{test} {at}"));
            }
        }
        clause
    }

    /// Binds a value; returns its placeholder.
    fn bind(&mut self, value: Bound) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn push(&mut self, condition: String) {
        self.conditions.push(condition);
    }

    fn text(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn bound<'q>(
        self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for value in self.binds {
            query = match value {
                Bound::Int(value) => query.bind(value),
                Bound::Text(value) => query.bind(value),
            };
        }
        query
    }
}

impl Executions for Storage {
    async fn load_saga(&self, id: &str) -> Result<Option<SagaRow>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.inner.reads)
        .await?;
        row.map(|row| saga_from_row(&row)).transpose()
    }

    async fn prune_ended_sagas(&self, before: i64, limit: u32) -> Result<u64> {
        let pruned = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM sagas WHERE id IN (SELECT id FROM sagas \
             WHERE status IN ('finished', 'errored', 'compensation-failed') \
             AND updated_at < $1 ORDER BY updated_at LIMIT {limit})"
        )))
        .bind(before)
        .execute(&self.inner.reads)
        .await?;
        Ok(pruned.rows_affected())
    }

    async fn list_sagas(
        &self,
        filter: &SagaFilter,
        after: Option<&SagaKey>,
        limit: u32,
    ) -> Result<Vec<SagaRow>> {
        let mut clause = Where::of(filter);
        if let Some(key) = after {
            let at = clause.bind(Bound::Int(key.created_at));
            let id = clause.bind(Bound::Text(key.id.clone()));
            clause.push(format!(
                "(created_at < {at} OR (created_at = {at} AND id < {id}))"
            ));
        }
        let sql = format!(
            "SELECT {SAGA_COLUMNS} FROM sagas {} ORDER BY created_at DESC, id DESC LIMIT {limit}",
            clause.text()
        );
        let rows = clause
            .bound(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(&self.inner.reads)
            .await?;
        rows.iter().map(saga_from_row).collect()
    }

    async fn count_sagas(&self, filter: &SagaFilter) -> Result<Vec<SagaCount>> {
        let clause = Where::of(filter);
        let sql = format!(
            "SELECT service, name, status, COUNT(*) AS n FROM sagas {} \
             GROUP BY service, name, status ORDER BY service, name, status",
            clause.text()
        );
        let rows = clause
            .bound(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(&self.inner.reads)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SagaCount {
                    service: row.try_get("service")?,
                    name: row.try_get("name")?,
                    status: status_from_row(row)?,
                    count: row.try_get("n")?,
                })
            })
            .collect()
    }

    async fn finished_durations(&self, since: i64) -> Result<Vec<Durations>> {
        let rows = sqlx::query(
            "SELECT service, name, updated_at - created_at AS took FROM sagas \
             WHERE status = 'finished' AND updated_at >= $1 ORDER BY service, name, took",
        )
        .bind(since)
        .fetch_all(&self.inner.reads)
        .await?;
        let mut all: Vec<Durations> = Vec::new();
        for row in &rows {
            let (service, name): (String, String) = (row.try_get("service")?, row.try_get("name")?);
            let took: i64 = row.try_get("took")?;
            match all.last_mut() {
                Some(last) if last.service == service && last.name == name => {
                    last.took_ms.push(took)
                }
                _ => all.push(Durations {
                    service,
                    name,
                    took_ms: vec![took],
                }),
            }
        }
        Ok(all)
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
        record: row.try_get("record")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
        timer_at: row.try_get("timer_at")?,
        version: row.try_get("version")?,
        owner: row.try_get("owner")?,
    })
}

fn status_from_row(row: &AnyRow) -> Result<Status> {
    let text: String = row.try_get("status")?;
    Status::parse(&text)
        .ok_or_else(|| StorageError::Corrupt(format!("a saga has an unknown status {text:?}")))
}
