//! A group commit's plain transactions applied together on PostgreSQL: one statement per table
//! for the whole batch, each row set passed as arrays (`unnest`), instead of a statement per
//! row. Every PostgreSQL statement is a round trip to the server and a wake-up on both sides;
//! a `POST /exams` saga takes eight of them one by one. This way a batch takes `BEGIN`, five or
//! six for each part of about 12 KiB of rows (`parts`: about eight such sagas), and `COMMIT`.
//!
//! Only transactions that commit aggregate writes and store a saga go here (`plain`), and only
//! when no two of them touch the same aggregate or saga: their order within the batch cannot
//! matter. Any refusal (an aggregate held or changed, a saga stored meanwhile) makes the whole
//! attempt fail: the writer rolls it back and applies the batch one transaction at a time,
//! which finds the one refused and says why. SQLite's statements are calls inside the process,
//! so it always takes that way.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::Result;
use crate::storage::{Action, SagaRow, StorageError, Transaction, Write};

/// Whether `tx` only writes aggregates outside any saga and stores a saga.
fn plain(tx: &Transaction) -> bool {
    tx.key.is_none()
        && tx.consumed.is_empty()
        && tx.ack.is_none()
        && tx.dead_letter.is_none()
        && tx.redrive.is_none()
        && tx.resolve.is_none()
        && tx.messages.is_empty()
        && tx.writes.iter().all(|w| w.staged_under.is_none())
}

/// Whether the batch can be applied together: every transaction plain, and no aggregate or
/// saga in two of them.
pub(super) fn applies_together(batch: &[&Transaction]) -> bool {
    let mut aggregates = HashSet::new();
    let mut sagas = HashSet::new();
    batch.iter().all(|tx| {
        plain(tx)
            && tx
                .writes
                .iter()
                .all(|w| aggregates.insert((w.service.as_str(), w.uuid.as_str())))
            && tx.saga.as_ref().is_none_or(|s| sagas.insert(s.id.as_str()))
    })
}

/// Why applying together did not go through; the writer then applies one by one.
fn refused(what: &str) -> StorageError {
    StorageError::Database(sqlx::Error::Protocol(format!(
        "applied together: {what}; applying one by one"
    )))
}

/// Checks that a statement changed `expected` rows.
fn changed(done: sqlx::postgres::PgQueryResult, expected: usize, what: &str) -> Result<()> {
    if done.rows_affected() == expected as u64 {
        Ok(())
    } else {
        Err(refused(what))
    }
}

/// One column of a row set, for an array argument.
fn column<'a, R, T>(rows: &[&'a R], field: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(|row| field(row)).collect()
}

/// Applies `batch`, together, within the transaction the caller began (`exec.rs`); `Err` when
/// any of it was refused or failed, and then the caller rolls it all back. Only for a batch
/// that `applies_together`.
pub(super) async fn apply_all(conn: &mut PgConnection, batch: &[&Transaction]) -> Result<()> {
    for part in parts(batch) {
        apply(conn, part).await?;
    }
    Ok(())
}

/// The most bytes of rows one statement of a part of a batch carries. A statement that fits in
/// one TLS record (16 KiB) leaves in one write. A larger one leaves in several, and the socket's
/// Nagle algorithm (sqlx does not set `TCP_NODELAY`) holds each further one back until the
/// server's delayed acknowledgement, up to 40 ms: with TLS on, whole batches in one statement
/// were slower than a statement per row.
const PART_BYTES: usize = 12 << 10;

/// The batch in consecutive parts whose statements carry at most `PART_BYTES` of rows each (or
/// one transaction).
fn parts<'b, 't>(batch: &'b [&'t Transaction]) -> impl Iterator<Item = &'b [&'t Transaction]> {
    // What the transaction adds to the largest statement: the aggregates' (snapshots) or the
    // saga's record (sagas); ids and numbers rounded up.
    let bytes = |tx: &Transaction| {
        let writes: usize = tx.writes.iter().map(|w| w.data.len() + 128).sum();
        let record = tx.saga.as_ref().map_or(0, |s| s.record.len());
        writes.max(record + 256)
    };
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut total = 0;
        let end = rest
            .iter()
            .position(|tx| {
                total += bytes(tx);
                total > PART_BYTES
            })
            .unwrap_or(rest.len())
            .max(1);
        let (part, after) = rest.split_at(end);
        rest = after;
        Some(part)
    })
}

/// Applies `batch` inside the open transaction.
async fn apply(conn: &mut PgConnection, batch: &[&Transaction]) -> Result<()> {
    let writes: Vec<&Write> = batch.iter().flat_map(|tx| &tx.writes).collect();
    let (creates, updates): (Vec<&Write>, Vec<&Write>) = writes
        .iter()
        .copied()
        .partition(|w| w.action == Action::Create);
    if !writes.is_empty() {
        let held = sqlx::query(
            "SELECT 1 FROM staged_snapshots s \
             JOIN unnest($1::text[], $2::text[]) AS w(service, uuid) \
             ON s.service = w.service AND s.uuid = w.uuid LIMIT 1",
        )
        .bind(column(&writes, |w| w.service.as_str()))
        .bind(column(&writes, |w| w.uuid.as_str()))
        .fetch_optional(&mut *conn)
        .await?;
        if held.is_some() {
            return Err(refused("an aggregate is held by a running saga"));
        }
    }
    if !creates.is_empty() {
        let done = sqlx::query(
            "INSERT INTO snapshots (service, uuid, aggregate, version, data, deleted, created_at, updated_at) \
             SELECT service, uuid, aggregate, version, data, 0, created_at, updated_at \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[]) \
             AS w(service, uuid, aggregate, version, data, created_at, updated_at) \
             ON CONFLICT (service, uuid) DO NOTHING",
        )
        .bind(column(&creates, |w| w.service.as_str()))
        .bind(column(&creates, |w| w.uuid.as_str()))
        .bind(column(&creates, |w| w.aggregate.as_str()))
        .bind(column(&creates, |w| w.version as i64))
        .bind(column(&creates, |w| w.data.as_str()))
        .bind(column(&creates, |w| w.created_at))
        .bind(column(&creates, |w| w.updated_at))
        .execute(&mut *conn)
        .await?;
        changed(done, creates.len(), "an aggregate created already exists")?;
    }
    if !updates.is_empty() {
        let done = sqlx::query(
            "UPDATE snapshots AS s SET version = w.version, data = w.data, deleted = w.deleted, \
             updated_at = w.updated_at \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[]) \
             AS w(service, uuid, version, data, deleted, updated_at) \
             WHERE s.service = w.service AND s.uuid = w.uuid AND s.version = w.version - 1 \
             AND s.deleted = 0",
        )
        .bind(column(&updates, |w| w.service.as_str()))
        .bind(column(&updates, |w| w.uuid.as_str()))
        .bind(column(&updates, |w| w.version as i64))
        .bind(column(&updates, |w| w.data.as_str()))
        .bind(column(&updates, |w| i64::from(w.action == Action::Delete)))
        .bind(column(&updates, |w| w.updated_at))
        .execute(&mut *conn)
        .await?;
        changed(
            done,
            updates.len(),
            "an aggregate changed since it was read",
        )?;
    }
    if !writes.is_empty() {
        sqlx::query(
            "INSERT INTO events (saga, service, uuid, version, aggregate, action, diff, created_at) \
             SELECT NULL, service, uuid, version, aggregate, action, diff, created_at \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[]) \
             AS w(service, uuid, version, aggregate, action, diff, created_at)",
        )
        .bind(column(&writes, |w| w.service.as_str()))
        .bind(column(&writes, |w| w.uuid.as_str()))
        .bind(column(&writes, |w| w.version as i64))
        .bind(column(&writes, |w| w.aggregate.as_str()))
        .bind(column(&writes, |w| w.action.as_str()))
        .bind(column(&writes, |w| w.diff.as_str()))
        .bind(column(&writes, |w| w.updated_at))
        .execute(&mut *conn)
        .await?;
    }
    save_sagas(conn, batch).await
}

/// The sagas' rows: new ones inserted, the others updated at the revision they were read at.
async fn save_sagas(conn: &mut PgConnection, batch: &[&Transaction]) -> Result<()> {
    let sagas: Vec<&SagaRow> = batch.iter().filter_map(|tx| tx.saga.as_ref()).collect();
    let (new, stored): (Vec<&SagaRow>, Vec<&SagaRow>) =
        sagas.iter().copied().partition(|s| s.revision == 0);
    if !new.is_empty() {
        let done = sqlx::query(
            "INSERT INTO sagas (id, service, name, status, record, created_at, updated_at, revision, timer_at, version, owner) \
             SELECT id, service, name, status, record, created_at, updated_at, 1, timer_at, version, owner \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::bigint[], \
             $8::bigint[], $9::text[], $10::text[]) \
             AS s(id, service, name, status, record, created_at, updated_at, timer_at, version, owner) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(column(&new, |s| s.id.as_str()))
        .bind(column(&new, |s| s.service.as_str()))
        .bind(column(&new, |s| s.name.as_str()))
        .bind(column(&new, |s| s.status.as_str()))
        .bind(column(&new, |s| s.record.as_slice()))
        .bind(column(&new, |s| s.created_at))
        .bind(column(&new, |s| s.updated_at))
        .bind(column(&new, |s| s.timer_at))
        .bind(column(&new, |s| s.version.as_str()))
        .bind(column(&new, |s| s.owner.as_deref()))
        .execute(&mut *conn)
        .await?;
        changed(done, new.len(), "a saga was stored meanwhile")?;
    }
    if !stored.is_empty() {
        let done = sqlx::query(
            "UPDATE sagas AS t SET status = s.status, record = s.record, updated_at = s.updated_at, \
             revision = t.revision + 1, timer_at = s.timer_at, owner = s.owner \
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[], $6::bigint[], $7::text[]) \
             AS s(id, revision, status, record, updated_at, timer_at, owner) \
             WHERE t.id = s.id AND t.revision = s.revision",
        )
        .bind(column(&stored, |s| s.id.as_str()))
        .bind(column(&stored, |s| s.revision))
        .bind(column(&stored, |s| s.status.as_str()))
        .bind(column(&stored, |s| s.record.as_slice()))
        .bind(column(&stored, |s| s.updated_at))
        .bind(column(&stored, |s| s.timer_at))
        .bind(column(&stored, |s| s.owner.as_deref()))
        .execute(&mut *conn)
        .await?;
        changed(done, stored.len(), "a saga changed since it was read")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writing(bytes: usize) -> Transaction {
        Transaction {
            writes: vec![Write {
                service: "exam".into(),
                aggregate: "Exam".into(),
                uuid: "u".into(),
                action: Action::Create,
                version: 1,
                diff: "{}".into(),
                data: "x".repeat(bytes),
                created_at: 0,
                updated_at: 0,
                staged_under: None,
            }],
            ..Transaction::default()
        }
    }

    #[test]
    fn a_batch_is_cut_into_parts_that_each_fit_a_tls_record() {
        let transactions: Vec<Transaction> = [1_000, 5_000, 5_000, 3_000, 20_000, 100, 100]
            .into_iter()
            .map(writing)
            .collect();
        let batch: Vec<&Transaction> = transactions.iter().collect();
        let sizes: Vec<usize> = parts(&batch).map(<[_]>::len).collect();
        // 1,000 + 5,000 + 5,000 fit; 3,000 starts the next; 20,000 is a part of its own.
        assert_eq!(sizes, [3, 1, 1, 2]);
        assert_eq!(parts(&[]).count(), 0);
    }
}
