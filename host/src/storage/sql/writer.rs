//! The writer: one task per database commits transactions in batches (group commit). A batch
//! is first applied whole; if one transaction fails, it is applied again with each transaction
//! in its own savepoint, so that only the failing one fails. The statements go through `Exec`
//! (see `exec.rs` for why SQLite's writer owns its handle on a thread of its own).

use std::sync::{Arc, Mutex};

use saga_core::ids::SagaId;
use tokio::sync::{mpsc, oneshot};

use super::checkpoint;
use super::exec::{Exec, Row, args, begin, commit, rollback};
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

/// How often the writer tries to connect again while it has no connection.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the writer of the database at `url` on its first connection: SQLite's on a thread of
/// its own, PostgreSQL's as a task of the host's runtime.
pub(super) async fn start(
    url: &str,
    dialect: Dialect,
    jobs: mpsc::Receiver<Job>,
    lost: Arc<Mutex<Option<String>>>,
) -> Result<()> {
    let url = url.to_string();
    match dialect {
        Dialect::Postgres => {
            let conn = <sqlx::PgConnection as Exec>::connect_writer(&url).await?;
            tokio::spawn(write_loop(conn, url, jobs, lost, || ()));
        }
        Dialect::Sqlite => {
            let conn = <rusqlite::Connection as Exec>::connect_writer(&url).await?;
            let checkpointer =
                checkpoint::start(<rusqlite::Connection as Exec>::connect(&url).await?)
                    .map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || {
                    let committed = move || checkpointer.committed();
                    runtime.block_on(write_loop(conn, url, jobs, lost, committed))
                })
                .map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
        }
    }
    Ok(())
}

/// Commits what arrives, batch after batch. A connection the database dropped (a server
/// restart), or that failed on a full disk, is not used again: the writer connects again — before the next batch, and every
/// second while it has no connection, whether or not anything waits to be written — so that
/// the host recovers by itself once the database is back. Meanwhile `lost` says why it has
/// none, and each batch fails as unreachable. `committed` runs after each batch.
async fn write_loop<C: Exec>(
    conn: C,
    url: String,
    mut jobs: mpsc::Receiver<Job>,
    lost: Arc<Mutex<Option<String>>>,
    committed: impl Fn(),
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
                    match C::connect_writer(&url).await {
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
            None => C::connect_writer(&url).await,
        };
        let (results, way) = match connection {
            Ok(mut conn) => {
                let (results, way) = commit_batch(&mut conn, &batch).await;
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
                (results, way)
            }
            Err(error) => {
                note(Some(error.to_string()));
                (fail_all(&batch, &error), Way::OneByOne)
            }
        };
        metrics::commit(batch.len(), way.as_str(), started.elapsed());
        committed();
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

/// How a group commit's transactions were applied.
#[derive(Clone, Copy)]
enum Way {
    /// With one statement per table (`Exec::commit_together`).
    Together,
    /// Each transaction's statements in turn.
    OneByOne,
    /// Again, each transaction in a savepoint of its own, after one was refused.
    Isolated,
}

impl Way {
    fn as_str(self) -> &'static str {
        match self {
            Way::Together => "together",
            Way::OneByOne => "one_by_one",
            Way::Isolated => "isolated",
        }
    }
}

/// Commits a batch in one database transaction. Conflicts are rare, so the batch is first
/// applied whole — together, where the database does that for less (`Exec::commit_together`) —
/// and if any job fails it is rolled back and applied again with each job in its own
/// savepoint, so that the failing job fails alone.
async fn commit_batch(conn: &mut impl Exec, batch: &[Job]) -> (Vec<Result<Committed>>, Way) {
    let transactions: Vec<&Transaction> = batch.iter().map(|job| &job.transaction).collect();
    match conn.commit_together(&transactions).await {
        Some(Ok(())) => {
            let results = batch.iter().map(|_| Ok(Committed::default())).collect();
            return (results, Way::Together);
        }
        Some(Err(error)) if error.outage().is_some() => {
            return (fail_all(batch, &error), Way::Together);
        }
        // Refused (a conflict): one by one, which finds the job refused and says why.
        Some(Err(error)) => tracing::debug!(%error, "a batch did not commit together"),
        None => {}
    }
    match commit_whole(conn, batch).await {
        Ok(results) => (results, Way::OneByOne),
        Err(results) if batch.len() == 1 => (results, Way::OneByOne),
        Err(_) => (commit_isolated(conn, batch).await, Way::Isolated),
    }
}

/// The same failure for every job of a batch.
fn fail_all(batch: &[Job], error: &StorageError) -> Vec<Result<Committed>> {
    tracing::error!(%error, "storage commit failed");
    batch
        .iter()
        .map(|_| {
            Err(match error {
                StorageError::Unavailable { outage, detail } => StorageError::Unavailable {
                    outage: *outage,
                    detail: detail.clone(),
                },
                other => StorageError::Database(sqlx::Error::Protocol(other.to_string())),
            })
        })
        .collect()
}

/// All jobs in one transaction; `Err` (nothing committed) as soon as one fails.
async fn commit_whole(
    conn: &mut impl Exec,
    batch: &[Job],
) -> Result<Vec<Result<Committed>>, Vec<Result<Committed>>> {
    begin(conn).await.map_err(|e| fail_all(batch, &e))?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        match apply(conn, &job.transaction).await {
            Ok(committed) => results.push(Ok(committed)),
            Err(error) => {
                rollback(conn).await;
                return Err(vec![Err(error)]);
            }
        }
    }
    match commit(conn).await {
        Ok(()) => Ok(results),
        Err(error) => Err(fail_all(batch, &error)),
    }
}

/// Each job in its own savepoint of one transaction.
async fn commit_isolated(conn: &mut impl Exec, batch: &[Job]) -> Vec<Result<Committed>> {
    if let Err(error) = begin(conn).await {
        return fail_all(batch, &error);
    }
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(error) = conn.control("SAVEPOINT job").await {
            rollback(conn).await;
            return fail_all(batch, &error);
        }
        let result = apply(conn, &job.transaction).await;
        // A savepoint rolled back stays open, nested under the next job's; the COMMIT ends
        // them all.
        let ended = match result {
            Ok(_) => conn.control("RELEASE SAVEPOINT job").await,
            Err(_) => conn.control("ROLLBACK TO SAVEPOINT job").await,
        };
        if let Err(error) = ended {
            rollback(conn).await;
            return fail_all(batch, &error);
        }
        results.push(result);
    }
    match commit(conn).await {
        Ok(()) => results,
        Err(error) => fail_all(batch, &error),
    }
}

async fn apply(conn: &mut impl Exec, tx: &Transaction) -> Result<Committed> {
    let mut committed = Committed::default();
    let now = now_ms();
    if let Some(used) = &tx.key {
        super::idempotency::apply(conn, used, now).await?;
    }
    for consumed in &tx.consumed {
        let reply = consumed.reply.as_ref();
        let recorded = conn
            .execute(
                "INSERT INTO consumed (consumer, message_id, at, reply_id, reply_consumer, reply_body) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, message_id) DO NOTHING",
                args![
                    &consumed.consumer,
                    &consumed.message_id,
                    now,
                    reply.map(|r| r.id.as_str()),
                    reply.map(|r| r.consumer.as_str()),
                    reply.map(|r| r.body.as_str()),
                ],
            )
            .await?;
        if recorded == 0 {
            return Err(StorageError::Duplicate(consumed.message_id.clone()));
        }
    }
    if let Some(seq) = tx.ack {
        conn.execute("DELETE FROM queue WHERE seq = $1", args![seq])
            .await?;
    }
    if let Some(letter) = &tx.dead_letter {
        conn.execute(
            "INSERT INTO dead_letters (message_id, consumer, body, attempts, error, failed_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            args![
                &letter.message_id,
                &letter.consumer,
                &letter.body,
                i64::from(letter.attempts),
                &letter.error,
                now,
            ],
        )
        .await?;
        if let Some(seq) = letter.queued {
            conn.execute("DELETE FROM queue WHERE seq = $1", args![seq])
                .await?;
        }
    }
    if let Some(seq) = tx.redrive {
        let rows = conn
            .fetch(
                "DELETE FROM dead_letters WHERE seq = $1 RETURNING message_id, consumer, body",
                args![seq],
            )
            .await?;
        if let Some(row) = rows.first() {
            let message = NewMessage {
                id: row.text(0)?,
                consumer: row.text(1)?,
                body: row.text(2)?,
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
        promote(conn, &saga.to_string(), &mut committed).await?;
    }
    Ok(committed)
}

/// The sagas this transaction stages writes or messages under that have already ended: nothing
/// may be staged under them any more.
async fn ended_sagas(conn: &mut impl Exec, tx: &Transaction) -> Result<Vec<SagaId>> {
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
        let rows = conn
            .fetch(
                "SELECT status FROM sagas WHERE id = $1",
                args![saga.to_string().as_str()],
            )
            .await?;
        let status = rows.first().map(|row| row.text(0)).transpose()?;
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

async fn save_saga(conn: &mut impl Exec, saga: &SagaRow) -> Result<()> {
    let saved = if saga.revision == 0 {
        conn.execute(
            "INSERT INTO sagas (id, service, name, status, record, created_at, updated_at, revision, timer_at, version, owner) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            args![
                &saga.id,
                &saga.service,
                &saga.name,
                saga.status.as_str(),
                saga.record.as_slice(),
                saga.created_at,
                saga.updated_at,
                saga.timer_at,
                &saga.version,
                saga.owner.as_deref(),
            ],
        )
        .await?
    } else {
        conn.execute(
            "UPDATE sagas SET status = $1, record = $2, updated_at = $3, revision = revision + 1, \
             timer_at = $6, owner = $7 WHERE id = $4 AND revision = $5",
            args![
                saga.status.as_str(),
                saga.record.as_slice(),
                saga.updated_at,
                &saga.id,
                saga.revision,
                saga.timer_at,
                saga.owner.as_deref(),
            ],
        )
        .await?
    };
    if saved == 0 {
        return Err(StorageError::SagaChanged(saga.id.clone()));
    }
    Ok(())
}
