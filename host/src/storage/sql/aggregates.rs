//! Reading aggregates: one by uuid, many by condition (narrowed in SQL by the condition's
//! prefilter, answered from indexes on the fields a service declares).

use sqlx::{AssertSqlSafe, Executor};

use super::exec::{Arg, Row, args};
use super::{Result, Storage, json_is_string};
use crate::storage::condition::{FieldPath, Prefilter};
use crate::storage::{AggregateRecord, Aggregates, Found, Snapshot, StorageError};
use crate::telemetry::metrics;
use saga_core::ids::SagaId;

impl Aggregates for Storage {
    async fn get(
        &self,
        service: &str,
        aggregate: &str,
        uuid: &str,
        saga: Option<SagaId>,
    ) -> Result<Option<Snapshot>> {
        // By the primary key alone, (service, uuid): given the aggregate too, PostgreSQL's
        // cached generic plan chose an index led by (service, aggregate) and read every
        // snapshot of the type (about 1,300 rows a lookup in `saga-bench cluster`). A uuid
        // is one aggregate's, so the type is checked on the row.
        // Outside a saga there is nothing staged to prefer: the committed row alone.
        const COMMITTED: &str = "SELECT uuid, version, created_at, updated_at, data, deleted, 0 AS staged, aggregate \
             FROM snapshots WHERE service = $1 AND uuid = $2";
        const STAGED_FIRST: &str = "SELECT uuid, version, created_at, updated_at, data, deleted, 1 AS staged, aggregate \
             FROM staged_snapshots WHERE service = $1 AND uuid = $2 AND saga = $3 \
             UNION ALL \
             SELECT uuid, version, created_at, updated_at, data, deleted, 0 AS staged, aggregate \
             FROM snapshots WHERE service = $1 AND uuid = $2";
        metrics::storage_read("get");
        let saga = saga.map(|s| s.to_string());
        let (sql, args): (&'static str, &[Arg]) = match &saga {
            Some(saga) => (STAGED_FIRST, args![service, uuid, saga.as_str()]),
            None => (COMMITTED, args![service, uuid]),
        };
        match &self.inner.point_reads {
            Some(point_reads) => {
                let rows = point_reads.fetch(sql, args).await?;
                preferred_snapshot(&rows, aggregate)
            }
            None => {
                let mut query = sqlx::query(sql).bind(service).bind(uuid);
                if let Some(saga) = &saga {
                    query = query.bind(saga);
                }
                let rows = query.fetch_all(&self.inner.reads).await?;
                preferred_snapshot(&rows, aggregate)
            }
        }
    }

    async fn find(
        &self,
        service: &str,
        aggregate: &str,
        prefilter: &Prefilter,
        limit: Option<u32>,
        saga: Option<SagaId>,
    ) -> Result<Found> {
        // The service and the type as literals: a field's index holds only their snapshots
        // (`ensure_index`), and a partial index serves only a query that names its terms.
        let of_type = format!(
            "service = {} AND aggregate = {}",
            sql_literal(service),
            sql_literal(aggregate)
        );
        let mut sql = format!(
            "SELECT uuid, version, created_at, updated_at, data, deleted, 0 AS staged FROM snapshots \
             WHERE {of_type} AND deleted = 0"
        );
        let first_equality = if saga.is_some() { 2 } else { 1 };
        for (i, (field, _)) in prefilter.equalities.iter().enumerate() {
            let param = i + first_equality;
            match field.metadata() {
                Some("uuid") => sql.push_str(&format!(" AND uuid = ${param}")),
                _ => sql.push_str(&format!(
                    " AND {} = ${param} AND {}",
                    self.json_field(field),
                    json_is_string(self.inner.dialect, field)
                )),
            }
        }
        sql.push_str(" ORDER BY created_at, uuid");
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        if saga.is_some() {
            sql = format!(
                "SELECT * FROM ({sql}) AS committed UNION ALL \
                 SELECT uuid, version, created_at, updated_at, data, deleted, 1 AS staged FROM staged_snapshots \
                 WHERE saga = $1 AND {of_type}"
            );
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(saga) = saga {
            query = query.bind(saga.to_string());
        }
        for (_, value) in &prefilter.equalities {
            query = query.bind(value.as_str());
        }
        metrics::storage_read("find");
        let rows = query.fetch_all(&self.inner.reads).await?;
        let mut found = Found::default();
        for row in &rows {
            if is_staged(row)? {
                found.staged.push(snapshot_from_row(row)?);
            } else {
                found.committed.push(record_from_row(row)?);
            }
        }
        Ok(found)
    }

    async fn ensure_index(&self, service: &str, aggregate: &str, field: &FieldPath) -> Result<()> {
        let name = |form: &str| {
            use sha2::Digest;
            let key = format!(
                "{service}\u{0}{aggregate}\u{0}{}{form}",
                field.segments().join(".")
            );
            let digest = sha2::Sha256::digest(key.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("ix_field_{hex}")
        };
        // Partial: only the live snapshots of the service's type, on the terms `find` names.
        // The field path is validated to [A-Za-z0-9_-] segments, so it is safe in SQL text.
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS {} ON snapshots ({}, created_at, uuid) \
             WHERE service = {} AND aggregate = {} AND deleted = 0",
            name("\u{0}partial"),
            self.json_field(field),
            sql_literal(service),
            sql_literal(aggregate),
        );
        self.inner.reads.execute(AssertSqlSafe(sql)).await?;
        // The index of the same field before it was partial, on (service, aggregate, field):
        // it held every service's snapshots, and each write paid for its entry.
        let earlier = format!("DROP INDEX IF EXISTS {}", name(""));
        self.inner.reads.execute(AssertSqlSafe(earlier)).await?;
        Ok(())
    }
}

/// A string as an SQL literal.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The saga's staged state of an aggregate when it has one, else the committed one; none when
/// the uuid is another type's.
fn preferred_snapshot(rows: &[impl Row], aggregate: &str) -> Result<Option<Snapshot>> {
    let mut preferred = None;
    for row in rows {
        if row.text(7)? != aggregate {
            continue;
        }
        if preferred.is_none() || is_staged(row)? {
            preferred = Some(row);
        }
    }
    preferred.map(snapshot_from_row).transpose()
}

// The columns of every query here: uuid, version, created_at, updated_at, data, deleted, staged
// (and, for `get`, aggregate).

fn record_from_row(row: &impl Row) -> Result<AggregateRecord> {
    let data = row.text(4)?;
    Ok(AggregateRecord {
        uuid: row.text(0)?,
        version: row.int(1)? as u64,
        created_at: row.int(2)?,
        updated_at: row.int(3)?,
        data: serde_json::from_str(&data)
            .map_err(|e| StorageError::Corrupt(format!("aggregate data is not JSON: {e}")))?,
    })
}

fn snapshot_from_row(row: &impl Row) -> Result<Snapshot> {
    Ok(Snapshot {
        record: record_from_row(row)?,
        deleted: row.int(5)? != 0,
    })
}

/// Whether a row of a `UNION` of committed and staged state comes from the saga's staging.
fn is_staged(row: &impl Row) -> Result<bool> {
    Ok(row.int(6)? == 1)
}
