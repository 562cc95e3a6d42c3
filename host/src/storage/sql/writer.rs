//! The writer: one task per database commits transactions in batches (group commit). A batch
//! is first applied whole; if one transaction fails, it is applied again with each transaction
//! in its own savepoint, so that only the failing one fails.

use std::sync::{Arc, Mutex};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection, Row};

use saga_core::ids::SagaId;
use tokio::sync::{mpsc, oneshot};

use super::writes::{apply_write, discard, enqueue, promote, stage_message, stage_write};
use super::{Dialect, Result, Storage};
use crate::storage::{
    Committed, NewMessage, Outage, Resolve, SagaRow, StorageError, Transaction, Transactions,
    now_ms,
};
use crate::telemetry::metrics;

/// How many transactions one database commit takes at most.
const MAX_BATCH: usize = 256;

pub(super) struct Job {
    transaction: Transaction,
    done: oneshot::Sender<Result<Committed, StorageError>>,
}

impl Transactions for Storage {
    async fn commit(&self, transaction: Transaction) -> Result<Committed> {
        if transaction.is_empty() {
            return Ok(Committed::default());
        }
        let (done, result) = oneshot::channel();
        self.inner
            .writer
            .send(Job { transaction, done })
            .await
            .map_err(|_| StorageError::WriterGone)?;
        result.await.map_err(|_| StorageError::WriterGone)?
    }
}

/// Opens and configures the writer's connection.
pub(super) async fn connect(
    options: &AnyConnectOptions,
    dialect: Dialect,
) -> Result<AnyConnection, sqlx::Error> {
    let mut conn =
        tokio::time::timeout(super::CONNECT_TIMEOUT, AnyConnection::connect_with(options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
    super::configure(&mut conn, dialect).await?;
    Ok(conn)
}

/// How often the writer tries to connect again while it has no connection.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Commits what arrives, batch after batch. A connection the database dropped (a server
/// restart), or that failed on a full disk, is not used again: the writer connects again — before the next batch, and every
/// second while it has no connection, whether or not anything waits to be written — so that
/// the host recovers by itself once the database is back. Meanwhile `lost` says why it has
/// none, and each batch fails as unreachable.
pub(super) async fn write_loop(
    conn: AnyConnection,
    options: AnyConnectOptions,
    mut jobs: mpsc::Receiver<Job>,
    dialect: Dialect,
    lost: Arc<Mutex<Option<String>>>,
) {
    let mut kept = Some(conn);
    let note = |why: Option<String>| {
        let mut lost = lost.lock().expect("lost lock");
        match (&*lost, &why) {
            (None, Some(why)) => {
                tracing::error!(error = %why, "lost the connection to the database; reconnecting every second");
            }
            (Some(_), None) => tracing::info!("connected to the database again"),
            _ => {}
        }
        *lost = why;
    };
    loop {
        let next = if kept.is_some() {
            jobs.recv().await
        } else {
            match tokio::time::timeout(RECONNECT_EVERY, jobs.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    match connect(&options, dialect).await {
                        Ok(conn) => {
                            kept = Some(conn);
                            note(None);
                        }
                        Err(error) => note(Some(error.to_string())),
                    }
                    continue;
                }
            }
        };
        let Some(first) = next else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let connection = match kept.take() {
            Some(conn) => Ok(conn),
            None => connect(&options, dialect).await,
        };
        let results = match connection {
            Ok(mut conn) => {
                let results = commit_batch(&mut conn, &batch, dialect).await;
                let outage = results.iter().find_map(|r| match r {
                    Err(e) => e.outage().map(|outage| (outage, e.to_string())),
                    Ok(_) => None,
                });
                // A connection that failed so is not used again: it is dead (the server went
                // away), or it may be left inside a transaction whose COMMIT failed (SQLite on
                // a full disk), which would fail every later batch.
                if outage.is_none() {
                    kept = Some(conn);
                }
                note(
                    outage
                        .filter(|(outage, _)| *outage == Outage::Unreachable)
                        .map(|(_, why)| why),
                );
                results
            }
            Err(error) => {
                note(Some(error.to_string()));
                fail_all(&batch, &error)
            }
        };
        metrics::commit(batch.len(), started.elapsed());
        for (job, result) in batch.into_iter().zip(results) {
            if let Err(refused) = &result
                && let Some(kind) = refused.refusal()
            {
                metrics::storage_refused(kind);
            }
            let _ = job.done.send(result);
        }
    }
}

/// Commits a batch in one database transaction. Conflicts are rare, so the batch is first
/// applied whole; if any job fails it is rolled back and applied again with each job in its own
/// savepoint, so that the failing job fails alone.
async fn commit_batch(
    conn: &mut AnyConnection,
    batch: &[Job],
    dialect: Dialect,
) -> Vec<Result<Committed>> {
    match commit_whole(conn, batch, dialect).await {
        Ok(results) => results,
        Err(results) if batch.len() == 1 => results,
        Err(_) => commit_isolated(conn, batch, dialect).await,
    }
}

fn fail_all(batch: &[Job], error: &sqlx::Error) -> Vec<Result<Committed>> {
    tracing::error!(%error, "storage commit failed");
    batch
        .iter()
        .map(|_| {
            Err(match Outage::of(error) {
                Some(outage) => StorageError::Unavailable {
                    outage,
                    detail: error.to_string(),
                },
                None => StorageError::Database(sqlx::Error::Protocol(error.to_string())),
            })
        })
        .collect()
}

/// Begins the writer's transaction. On SQLite it takes the write lock at once (`IMMEDIATE`):
/// a deferred transaction that read first could not wait for a maintenance write on another
/// connection (its snapshot would be stale) and would fail with "database is locked"; this one
/// waits its turn (`busy_timeout`).
async fn begin(
    conn: &mut AnyConnection,
    dialect: Dialect,
) -> Result<sqlx::Transaction<'_, sqlx::Any>, sqlx::Error> {
    match dialect {
        Dialect::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
        Dialect::Postgres => conn.begin().await,
    }
}

/// All jobs in one transaction; `Err` (nothing committed) as soon as one fails.
async fn commit_whole(
    conn: &mut AnyConnection,
    batch: &[Job],
    dialect: Dialect,
) -> Result<Vec<Result<Committed>>, Vec<Result<Committed>>> {
    let mut tx = begin(conn, dialect)
        .await
        .map_err(|e| fail_all(batch, &e))?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match apply(&mut tx, &job.transaction, dialect).await {
            Ok(committed) => results.push(Ok(committed)),
            Err(error) => {
                let _ = tx.rollback().await;
                return Err(vec![Err(error)]);
            }
        }
    }
    match tx.commit().await {
        Ok(()) => Ok(results),
        Err(error) => Err(fail_all(batch, &error)),
    }
}

/// Each job in its own savepoint of one transaction.
async fn commit_isolated(
    conn: &mut AnyConnection,
    batch: &[Job],
    dialect: Dialect,
) -> Vec<Result<Committed>> {
    let mut tx = match begin(conn, dialect).await {
        Ok(tx) => tx,
        Err(error) => return fail_all(batch, &error),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut savepoint = match tx.begin().await {
            Ok(savepoint) => savepoint,
            Err(error) => return fail_all(batch, &error),
        };
        let result = apply(&mut savepoint, &job.transaction, dialect).await;
        let ended = if result.is_ok() {
            savepoint.commit().await
        } else {
            savepoint.rollback().await
        };
        if let Err(error) = ended {
            return fail_all(batch, &error);
        }
        results.push(result);
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(error) => fail_all(batch, &error),
    }
}

async fn apply(conn: &mut AnyConnection, tx: &Transaction, dialect: Dialect) -> Result<Committed> {
    let mut committed = Committed::default();
    let now = now_ms();
    if let Some(used) = &tx.key {
        super::idempotency::apply(conn, used, now).await?;
    }
    for consumed in &tx.consumed {
        let reply = consumed.reply.as_ref();
        let recorded = sqlx::query(
            "INSERT INTO consumed (consumer, message_id, at, reply_id, reply_consumer, reply_body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(&consumed.consumer)
        .bind(&consumed.message_id)
        .bind(now)
        .bind(reply.map(|r| r.id.as_str()))
        .bind(reply.map(|r| r.consumer.as_str()))
        .bind(reply.map(|r| r.body.as_str()))
        .execute(&mut *conn)
        .await?;
        if recorded.rows_affected() == 0 {
            return Err(StorageError::Duplicate(consumed.message_id.clone()));
        }
    }
    if let Some(seq) = tx.ack {
        sqlx::query("DELETE FROM queue WHERE seq = $1")
            .bind(seq)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(letter) = &tx.dead_letter {
        sqlx::query(
            "INSERT INTO dead_letters (message_id, consumer, body, attempts, error, failed_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&letter.message_id)
        .bind(&letter.consumer)
        .bind(&letter.body)
        .bind(letter.attempts as i64)
        .bind(&letter.error)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if let Some(seq) = letter.queued {
            sqlx::query("DELETE FROM queue WHERE seq = $1")
                .bind(seq)
                .execute(&mut *conn)
                .await?;
        }
    }
    if let Some(seq) = tx.redrive {
        let row = sqlx::query(
            "DELETE FROM dead_letters WHERE seq = $1 RETURNING message_id, consumer, body",
        )
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            let message = NewMessage {
                id: row.try_get(0)?,
                consumer: row.try_get(1)?,
                body: row.try_get(2)?,
                staged_under: None,
            };
            committed.queued.push(enqueue(conn, &message).await?);
        }
    }
    if let Some(Resolve::Discard(saga)) = &tx.resolve {
        discard(conn, &saga.to_string(), true).await?;
    }
    let ended = ended_sagas(conn, tx).await?;
    for write in &tx.writes {
        match &write.staged_under {
            None => apply_write(conn, write).await?,
            // A participant answering after its saga ended: what it staged would never be
            // promoted or discarded, so it is dropped (the saga's outcome is decided).
            Some(saga) if ended.contains(saga) => {}
            Some(saga) => stage_write(conn, write, &saga.to_string()).await?,
        }
    }
    for message in &tx.messages {
        match &message.staged_under {
            None => committed.queued.push(enqueue(conn, message).await?),
            Some(saga) if ended.contains(saga) => {}
            Some(saga) => stage_message(conn, message, &saga.to_string()).await?,
        }
    }
    if let Some(saga) = &tx.saga {
        save_saga(conn, saga).await?;
    }
    if let Some(Resolve::Promote(saga)) = &tx.resolve {
        promote(conn, &saga.to_string(), dialect, &mut committed).await?;
    }
    Ok(committed)
}

/// The sagas this transaction stages writes or messages under that have already ended: nothing
/// may be staged under them any more.
async fn ended_sagas(conn: &mut AnyConnection, tx: &Transaction) -> Result<Vec<SagaId>> {
    let mut sagas: Vec<SagaId> = tx
        .writes
        .iter()
        .filter_map(|w| w.staged_under)
        .chain(tx.messages.iter().filter_map(|m| m.staged_under))
        .collect();
    sagas.sort_unstable();
    sagas.dedup();
    let mut ended = Vec::new();
    for saga in sagas {
        let status: Option<String> = sqlx::query("SELECT status FROM sagas WHERE id = $1")
            .bind(saga.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        // A failing saga stays open while it compensates: its compensations' writes are staged
        // under it too (and vanish with the rest when it ends).
        if status.is_some_and(|s| {
            !matches!(
                s.as_str(),
                "created" | "running" | "paused" | "compensating"
            )
        }) {
            ended.push(saga);
        }
    }
    Ok(ended)
}

async fn save_saga(conn: &mut AnyConnection, saga: &SagaRow) -> Result<()> {
    let saved = if saga.revision == 0 {
        sqlx::query(
            "INSERT INTO sagas (id, service, name, status, state, created_at, updated_at, revision, timer_at, version, owner) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&saga.id)
        .bind(&saga.service)
        .bind(&saga.name)
        .bind(saga.status.as_str())
        .bind(&saga.state)
        .bind(saga.created_at)
        .bind(saga.updated_at)
        .bind(saga.timer_at)
        .bind(&saga.version)
        .bind(&saga.owner)
        .execute(&mut *conn)
        .await?
    } else {
        sqlx::query(
            "UPDATE sagas SET status = $1, state = $2, updated_at = $3, revision = revision + 1, \
             timer_at = $6, owner = $7 WHERE id = $4 AND revision = $5",
        )
        .bind(saga.status.as_str())
        .bind(&saga.state)
        .bind(saga.updated_at)
        .bind(&saga.id)
        .bind(saga.revision)
        .bind(saga.timer_at)
        .bind(&saga.owner)
        .execute(&mut *conn)
        .await?
    };
    if saved.rows_affected() == 0 {
        return Err(StorageError::SagaChanged(saga.id.clone()));
    }
    if let Some(entries) = &saga.history {
        sqlx::query("INSERT INTO saga_history (saga, revision, entries) VALUES ($1, $2, $3)")
            .bind(&saga.id)
            .bind(saga.revision + 1)
            .bind(entries)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
