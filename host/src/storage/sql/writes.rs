//! How one transaction's writes reach the tables: committed writes with their version check,
//! writes staged under a saga (which hold the aggregate), events, queued and held messages, and
//! a saga's promotion or discard.

use super::exec::{Exec, Row, args};
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
    conn: &mut impl Exec,
    write: &Write,
) -> Result<(Option<(String, i64)>, Option<(i64, i64)>)> {
    let rows = conn
        .fetch(
            "SELECT 1 AS staged, saga, version, 0 AS deleted FROM staged_snapshots WHERE service = $1 AND uuid = $2 \
             UNION ALL \
             SELECT 0 AS staged, '' AS saga, version, deleted FROM snapshots WHERE service = $1 AND uuid = $2",
            args![&write.service, &write.uuid],
        )
        .await?;
    let (mut holder, mut committed) = (None, None);
    for row in rows {
        if row.int(0)? == 1 {
            holder = Some((row.text(1)?, row.int(2)?));
        } else {
            committed = Some((row.int(2)?, row.int(3)?));
        }
    }
    Ok((holder, committed))
}

/// A committed write: the aggregate must be at the expected version and not held by a saga.
pub(super) async fn apply_write(conn: &mut impl Exec, write: &Write) -> Result<()> {
    if let (Some((holder, _)), _) = current_state(conn, write).await? {
        return Err(conflict(write, "is held by a running saga", Some(holder)));
    }
    let deleted = i64::from(write.action == Action::Delete);
    let changed = if write.action == Action::Create {
        conn.execute(
            "INSERT INTO snapshots (service, uuid, aggregate, version, data, deleted, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT (service, uuid) DO NOTHING",
            args![
                &write.service,
                &write.uuid,
                &write.aggregate,
                write.version as i64,
                &write.data,
                write.created_at,
                write.updated_at,
            ],
        )
        .await?
    } else {
        conn.execute(
            "UPDATE snapshots SET version = $1, data = $2, deleted = $3, updated_at = $4 \
             WHERE service = $5 AND uuid = $6 AND version = $7 AND deleted = 0",
            args![
                write.version as i64,
                &write.data,
                deleted,
                write.updated_at,
                &write.service,
                &write.uuid,
                write.version as i64 - 1,
            ],
        )
        .await?
    };
    if changed == 0 {
        return Err(conflict(
            write,
            match write.action {
                Action::Create => "already exists (the uuid is taken)",
                _ => "changed since it was read (version conflict)",
            },
            None,
        ));
    }
    insert_event(conn, EventTable::Committed, write, None).await
}

/// A write staged under a saga: takes the aggregate's lock for the saga, or extends it.
pub(super) async fn stage_write(conn: &mut impl Exec, write: &Write, saga: &str) -> Result<()> {
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
            conn.execute(
                "UPDATE staged_snapshots SET version = $1, data = $2, deleted = $3, updated_at = $4 \
                 WHERE service = $5 AND uuid = $6 AND saga = $7",
                args![
                    write.version as i64,
                    &write.data,
                    deleted,
                    write.updated_at,
                    &write.service,
                    &write.uuid,
                    saga,
                ],
            )
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
            let inserted = conn
                .execute(
                    "INSERT INTO staged_snapshots (service, uuid, saga, aggregate, base_version, version, data, \
                     deleted, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (service, uuid) DO NOTHING",
                    args![
                        &write.service,
                        &write.uuid,
                        saga,
                        &write.aggregate,
                        base,
                        write.version as i64,
                        &write.data,
                        deleted,
                        write.created_at,
                        write.updated_at,
                    ],
                )
                .await?;
            if inserted == 0 {
                return Err(conflict(write, "is held by another running saga", None));
            }
        }
    }
    insert_event(conn, EventTable::Staged, write, Some(saga)).await
}

/// Where an event goes: with the committed ones, or staged under its saga.
enum EventTable {
    Committed,
    Staged,
}

async fn insert_event(
    conn: &mut impl Exec,
    table: EventTable,
    write: &Write,
    saga: Option<&str>,
) -> Result<()> {
    let sql = match table {
        EventTable::Committed => {
            "INSERT INTO events (saga, service, uuid, version, aggregate, action, diff, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        }
        EventTable::Staged => {
            "INSERT INTO staged_events (saga, service, uuid, version, aggregate, action, diff, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        }
    };
    conn.execute(
        sql,
        args![
            saga,
            &write.service,
            &write.uuid,
            write.version as i64,
            &write.aggregate,
            write.action.as_str(),
            &write.diff,
            write.updated_at,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn enqueue(conn: &mut impl Exec, message: &NewMessage) -> Result<QueuedMessage> {
    let now = now_ms();
    let rows = conn
        .fetch(
            "INSERT INTO queue (id, consumer, body, attempts, available_at) VALUES ($1, $2, $3, 0, $4) \
             RETURNING seq",
            args![&message.id, &message.consumer, &message.body, now],
        )
        .await?;
    let seq = match rows.first() {
        Some(row) => row.int(0)?,
        None => {
            return Err(StorageError::Corrupt(
                "INSERT … RETURNING seq returned no row".into(),
            ));
        }
    };
    Ok(QueuedMessage {
        seq,
        id: message.id.clone(),
        consumer: message.consumer.clone(),
        body: message.body.clone(),
        attempts: 0,
        available_at: now,
    })
}

pub(super) async fn stage_message(
    conn: &mut impl Exec,
    message: &NewMessage,
    saga: &str,
) -> Result<()> {
    conn.execute(
        "INSERT INTO staged_messages (saga, id, consumer, body) VALUES ($1, $2, $3, $4)",
        args![saga, &message.id, &message.consumer, &message.body],
    )
    .await?;
    Ok(())
}

/// Makes a finished saga's staged writes visible and queues its held messages. The committed
/// version of each aggregate must still be the one the saga based its writes on; otherwise the
/// saga conflicts and must fail rather than overwrite.
pub(super) async fn promote<C: Exec>(
    conn: &mut C,
    saga: &str,
    committed: &mut Committed,
) -> Result<()> {
    macro_rules! stale {
        () => {
            "SELECT s.service, s.aggregate, s.uuid FROM staged_snapshots s \
             LEFT JOIN snapshots c ON c.service = s.service AND c.uuid = s.uuid \
             WHERE s.saga = $1 AND COALESCE(c.version, 0) <> s.base_version LIMIT 1"
        };
    }
    let stale = match C::DIALECT {
        Dialect::Sqlite => stale!(),
        // The staged rows stay locked until the transaction ends.
        Dialect::Postgres => concat!(stale!(), " FOR UPDATE OF s"),
    };
    if let Some(row) = conn.fetch(stale, args![saga]).await?.first() {
        return Err(StorageError::Overwritten {
            service: row.text(0)?,
            aggregate: row.text(1)?,
            uuid: row.text(2)?,
        });
    }
    conn.execute(
        "INSERT INTO snapshots (service, uuid, aggregate, version, data, deleted, created_at, updated_at) \
         SELECT service, uuid, aggregate, version, data, deleted, created_at, updated_at \
         FROM staged_snapshots WHERE saga = $1 \
         ON CONFLICT (service, uuid) DO UPDATE SET version = excluded.version, data = excluded.data, \
         deleted = excluded.deleted, updated_at = excluded.updated_at",
        args![saga],
    )
    .await?;
    conn.execute(
        "INSERT INTO events (saga, service, uuid, version, aggregate, action, diff, created_at) \
         SELECT saga, service, uuid, version, aggregate, action, diff, created_at \
         FROM staged_events WHERE saga = $1 ORDER BY seq",
        args![saga],
    )
    .await?;
    let held = conn
        .fetch(
            "DELETE FROM staged_messages WHERE saga = $1 RETURNING seq, id, consumer, body",
            args![saga],
        )
        .await?;
    let mut held = held
        .iter()
        .map(|row| {
            Ok((
                row.int(0)?,
                NewMessage {
                    id: row.text(1)?,
                    consumer: row.text(2)?,
                    body: row.text(3)?,
                    staged_under: None,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    held.sort_by_key(|(seq, _)| *seq);
    for (_, message) in held {
        committed.queued.push(enqueue(conn, &message).await?);
    }
    discard(conn, saga, false).await
}

/// Drops a saga's staged writes and, unless promotion already took them, its held messages.
pub(super) async fn discard(conn: &mut impl Exec, saga: &str, messages: bool) -> Result<()> {
    conn.execute("DELETE FROM staged_snapshots WHERE saga = $1", args![saga])
        .await?;
    conn.execute("DELETE FROM staged_events WHERE saga = $1", args![saga])
        .await?;
    if messages {
        conn.execute("DELETE FROM staged_messages WHERE saga = $1", args![saga])
            .await?;
    }
    Ok(())
}
