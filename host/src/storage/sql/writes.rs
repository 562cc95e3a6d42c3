//! How one transaction's writes reach the tables: committed writes with their version check,
//! writes staged under a saga (which hold the aggregate), events, queued and held messages, and
//! a saga's promotion or discard.

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Dialect, Result};
use crate::storage::{Action, Committed, NewMessage, QueuedMessage, StorageError, Write, now_ms};

fn conflict(write: &Write, reason: impl Into<String>, holder: Option<String>) -> StorageError {
    StorageError::Conflict {
        service: write.service.clone(),
        aggregate: write.aggregate.clone(),
        uuid: write.uuid.clone(),
        reason: reason.into(),
        holder,
    }
}

/// Who holds an aggregate (the saga and its staged version) and its committed state (version,
/// deleted), read in one round trip.
async fn current_state(
    conn: &mut AnyConnection,
    write: &Write,
) -> Result<(Option<(String, i64)>, Option<(i64, i64)>)> {
    let rows = sqlx::query(
        "SELECT 1 AS staged, saga, version, 0 AS deleted FROM staged_snapshots WHERE service = $1 AND uuid = $2 \
         UNION ALL \
         SELECT 0 AS staged, '' AS saga, version, deleted FROM snapshots WHERE service = $1 AND uuid = $2",
    )
    .bind(&write.service)
    .bind(&write.uuid)
    .fetch_all(&mut *conn)
    .await?;
    let (mut holder, mut committed) = (None, None);
    for row in rows {
        if row.try_get::<i64, _>(0)? == 1 {
            holder = Some((row.try_get(1)?, row.try_get(2)?));
        } else {
            committed = Some((row.try_get(2)?, row.try_get(3)?));
        }
    }
    Ok((holder, committed))
}

/// A committed write: the aggregate must be at the expected version and not held by a saga.
pub(super) async fn apply_write(conn: &mut AnyConnection, write: &Write) -> Result<()> {
    if let (Some((holder, _)), _) = current_state(conn, write).await? {
        return Err(conflict(write, "is held by a running saga", Some(holder)));
    }
    let deleted = i64::from(write.action == Action::Delete);
    let changed = if write.action == Action::Create {
        sqlx::query(
            "INSERT INTO snapshots (service, uuid, aggregate, version, data, deleted, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT (service, uuid) DO NOTHING",
        )
        .bind(&write.service)
        .bind(&write.uuid)
        .bind(&write.aggregate)
        .bind(write.version as i64)
        .bind(&write.data)
        .bind(write.created_at)
        .bind(write.updated_at)
        .execute(&mut *conn)
        .await?
    } else {
        sqlx::query(
            "UPDATE snapshots SET version = $1, data = $2, deleted = $3, updated_at = $4 \
             WHERE service = $5 AND uuid = $6 AND version = $7 AND deleted = 0",
        )
        .bind(write.version as i64)
        .bind(&write.data)
        .bind(deleted)
        .bind(write.updated_at)
        .bind(&write.service)
        .bind(&write.uuid)
        .bind(write.version as i64 - 1)
        .execute(&mut *conn)
        .await?
    };
    if changed.rows_affected() == 0 {
        return Err(conflict(
            write,
            match write.action {
                Action::Create => "already exists (the uuid is taken)",
                _ => "changed since it was read (version conflict)",
            },
            None,
        ));
    }
    insert_event(conn, "events", write, None).await
}

/// A write staged under a saga: takes the aggregate's lock for the saga, or extends it.
pub(super) async fn stage_write(conn: &mut AnyConnection, write: &Write, saga: &str) -> Result<()> {
    let base = write.version as i64 - 1;
    let deleted = i64::from(write.action == Action::Delete);
    let (holder, committed) = current_state(conn, write).await?;
    match holder {
        Some((holder, _)) if holder != saga => {
            return Err(conflict(
                write,
                "is held by another running saga",
                Some(holder),
            ));
        }
        Some((_, staged_version)) => {
            if staged_version != base {
                return Err(conflict(
                    write,
                    "changed since it was read (version conflict)",
                    None,
                ));
            }
            sqlx::query(
                "UPDATE staged_snapshots SET version = $1, data = $2, deleted = $3, updated_at = $4 \
                 WHERE service = $5 AND uuid = $6 AND saga = $7",
            )
            .bind(write.version as i64)
            .bind(&write.data)
            .bind(deleted)
            .bind(write.updated_at)
            .bind(&write.service)
            .bind(&write.uuid)
            .bind(saga)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            let ok = match (write.action, committed) {
                (Action::Create, None) => true,
                (Action::Create, Some(_)) => false,
                (_, Some((version, 0))) => version == base,
                _ => false,
            };
            if !ok {
                return Err(conflict(
                    write,
                    match write.action {
                        Action::Create => "already exists (the uuid is taken)",
                        _ => "changed since it was read (version conflict)",
                    },
                    None,
                ));
            }
            let inserted = sqlx::query(
                "INSERT INTO staged_snapshots (service, uuid, saga, aggregate, base_version, version, data, \
                 deleted, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (service, uuid) DO NOTHING",
            )
            .bind(&write.service)
            .bind(&write.uuid)
            .bind(saga)
            .bind(&write.aggregate)
            .bind(base)
            .bind(write.version as i64)
            .bind(&write.data)
            .bind(deleted)
            .bind(write.created_at)
            .bind(write.updated_at)
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(conflict(write, "is held by another running saga", None));
            }
        }
    }
    insert_event(conn, "staged_events", write, Some(saga)).await
}

async fn insert_event(
    conn: &mut AnyConnection,
    table: &str,
    write: &Write,
    saga: Option<&str>,
) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (saga, service, uuid, version, aggregate, action, diff, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(saga)
    .bind(&write.service)
    .bind(&write.uuid)
    .bind(write.version as i64)
    .bind(&write.aggregate)
    .bind(write.action.as_str())
    .bind(&write.diff)
    .bind(write.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    message: &NewMessage,
) -> Result<QueuedMessage> {
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO queue (id, consumer, body, attempts, available_at) VALUES ($1, $2, $3, 0, $4) \
         RETURNING seq",
    )
    .bind(&message.id)
    .bind(&message.consumer)
    .bind(&message.body)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(QueuedMessage {
        seq: row.try_get(0)?,
        id: message.id.clone(),
        consumer: message.consumer.clone(),
        body: message.body.clone(),
        attempts: 0,
        available_at: now,
    })
}

pub(super) async fn stage_message(
    conn: &mut AnyConnection,
    message: &NewMessage,
    saga: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO staged_messages (saga, id, consumer, body) VALUES ($1, $2, $3, $4)")
        .bind(saga)
        .bind(&message.id)
        .bind(&message.consumer)
        .bind(&message.body)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Makes a finished saga's staged writes visible and queues its held messages. The committed
/// version of each aggregate must still be the one the saga based its writes on; otherwise the
/// saga conflicts and must fail rather than overwrite.
pub(super) async fn promote(
    conn: &mut AnyConnection,
    saga: &str,
    dialect: Dialect,
    committed: &mut Committed,
) -> Result<()> {
    let lock = if dialect == Dialect::Postgres {
        " FOR UPDATE OF s"
    } else {
        ""
    };
    let stale = sqlx::query(AssertSqlSafe(format!(
        "SELECT s.service, s.aggregate, s.uuid FROM staged_snapshots s \
         LEFT JOIN snapshots c ON c.service = s.service AND c.uuid = s.uuid \
         WHERE s.saga = $1 AND COALESCE(c.version, 0) <> s.base_version LIMIT 1{lock}"
    )))
    .bind(saga)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = stale {
        return Err(StorageError::Overwritten {
            service: row.try_get(0)?,
            aggregate: row.try_get(1)?,
            uuid: row.try_get(2)?,
        });
    }
    sqlx::query(
        "INSERT INTO snapshots (service, uuid, aggregate, version, data, deleted, created_at, updated_at) \
         SELECT service, uuid, aggregate, version, data, deleted, created_at, updated_at \
         FROM staged_snapshots WHERE saga = $1 \
         ON CONFLICT (service, uuid) DO UPDATE SET version = excluded.version, data = excluded.data, \
         deleted = excluded.deleted, updated_at = excluded.updated_at",
    )
    .bind(saga)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO events (saga, service, uuid, version, aggregate, action, diff, created_at) \
         SELECT saga, service, uuid, version, aggregate, action, diff, created_at \
         FROM staged_events WHERE saga = $1 ORDER BY seq",
    )
    .bind(saga)
    .execute(&mut *conn)
    .await?;
    let mut held = sqlx::query(
        "DELETE FROM staged_messages WHERE saga = $1 RETURNING seq, id, consumer, body",
    )
    .bind(saga)
    .fetch_all(&mut *conn)
    .await?;
    held.sort_by_key(|row| row.try_get::<i64, _>(0).unwrap_or(0));
    for row in held {
        let message = NewMessage {
            id: row.try_get(1)?,
            consumer: row.try_get(2)?,
            body: row.try_get(3)?,
            staged_under: None,
        };
        committed.queued.push(enqueue(conn, &message).await?);
    }
    discard(conn, saga, false).await
}

/// Drops a saga's staged writes and, unless promotion already took them, its held messages.
pub(super) async fn discard(conn: &mut AnyConnection, saga: &str, messages: bool) -> Result<()> {
    let tables: &[&str] = if messages {
        &["staged_snapshots", "staged_events", "staged_messages"]
    } else {
        &["staged_snapshots", "staged_events"]
    };
    for table in tables {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE saga = $1"
        )))
        .bind(saga)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
