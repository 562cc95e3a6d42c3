//! The SQL backend: SQLite (a file, WAL, durable commits) or PostgreSQL, through sqlx's `Any`
//! driver so that both run the same statements. Reads use a connection pool; writes go through
//! one writer task that commits many transactions per database commit (group commit), each in
//! its own savepoint so that one transaction's conflict does not undo the others.

use std::path::Path;
use std::sync::Arc;

use saga_core::ids::SagaId;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use super::condition::{FieldPath, Prefilter};
use super::{
    Action, AggregateRecord, Committed, Consumes, Found, NewMessage, QueuedMessage, Resolve,
    SagaRow, Snapshot, StorageError, Transaction, Write,
};

/// How many transactions one database commit takes at most.
const MAX_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    reads: AnyPool,
    writer: mpsc::Sender<Job>,
    dialect: Dialect,
}

struct Job {
    transaction: Transaction,
    done: oneshot::Sender<Result<Committed, StorageError>>,
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

impl Storage {
    /// Opens (creating if needed) the database at `url` — `sqlite://PATH` or `postgres://…` —
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Storage> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StorageError::Open {
                url: url.to_string(),
                source: sqlx::Error::Configuration(
                    "the database URL must start with sqlite:// or postgres://".into(),
                ),
            });
        };
        let open_error = |source| StorageError::Open {
            url: url.to_string(),
            source,
        };
        if dialect == Dialect::Sqlite {
            create_sqlite_parent(url).map_err(|e| open_error(sqlx::Error::Io(e)))?;
        }
        let options: AnyConnectOptions = url.parse().map_err(open_error)?;
        let reads = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| Box::pin(async move { configure(conn, dialect).await }))
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&reads).await?,
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&reads).await?,
        }
        let mut writer_conn = AnyConnection::connect_with(&options)
            .await
            .map_err(open_error)?;
        configure(&mut writer_conn, dialect)
            .await
            .map_err(open_error)?;
        let (writer, jobs) = mpsc::channel(4096);
        tokio::spawn(write_loop(writer_conn, jobs, dialect));
        Ok(Storage {
            inner: Arc::new(Inner {
                reads,
                writer,
                dialect,
            }),
        })
    }

    /// Commits a transaction durably. Many callers' transactions share one database commit.
    pub async fn commit(&self, transaction: Transaction) -> Result<Committed> {
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

    /// The state of one aggregate a reader sees: the saga's staged state when `saga` wrote it,
    /// else the committed one; deleted or not. One round trip.
    pub async fn get(
        &self,
        service: &str,
        aggregate: &str,
        uuid: &str,
        saga: Option<SagaId>,
    ) -> Result<Option<Snapshot>> {
        let rows = sqlx::query(
            "SELECT uuid, version, created_at, updated_at, data, deleted, 1 AS staged FROM staged_snapshots \
             WHERE service = $1 AND uuid = $2 AND aggregate = $3 AND saga = $4 \
             UNION ALL \
             SELECT uuid, version, created_at, updated_at, data, deleted, 0 AS staged FROM snapshots \
             WHERE service = $1 AND uuid = $2 AND aggregate = $3",
        )
        .bind(service)
        .bind(uuid)
        .bind(aggregate)
        .bind(saga.map(|s| s.to_string()).unwrap_or_default())
        .fetch_all(&self.inner.reads)
        .await?;
        let preferred = rows
            .iter()
            .max_by_key(|row| row.try_get::<i64, _>(6).unwrap_or(0));
        preferred.map(snapshot_from_row).transpose()
    }

    /// Aggregates of a type that satisfy the prefilter, in creation order (committed), and,
    /// for a saga, every aggregate of the type it has staged (to overlay). One round trip. With
    /// `limit`, the prefilter must be exact and there must be no saga.
    pub async fn find(
        &self,
        service: &str,
        aggregate: &str,
        prefilter: &Prefilter,
        limit: Option<u32>,
        saga: Option<SagaId>,
    ) -> Result<Found> {
        let mut sql = String::from(
            "SELECT uuid, version, created_at, updated_at, data, deleted, 0 AS staged FROM snapshots \
             WHERE service = $1 AND aggregate = $2 AND deleted = 0",
        );
        let first_equality = if saga.is_some() { 4 } else { 3 };
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
                 WHERE saga = $3 AND service = $1 AND aggregate = $2"
            );
        }
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(service)
            .bind(aggregate);
        if let Some(saga) = saga {
            query = query.bind(saga.to_string());
        }
        for (_, value) in &prefilter.equalities {
            query = query.bind(value.as_str());
        }
        let rows = query.fetch_all(&self.inner.reads).await?;
        let mut found = Found::default();
        for row in &rows {
            if row.try_get::<i64, _>(6)? == 1 {
                found.staged.push(snapshot_from_row(row)?);
            } else {
                found.committed.push(record_from_row(row, 0)?);
            }
        }
        Ok(found)
    }

    /// Makes equality conditions on `field` of `aggregate` use an index. The index also holds
    /// the creation order, so that `find` reads matches already sorted.
    pub async fn ensure_index(
        &self,
        service: &str,
        aggregate: &str,
        field: &FieldPath,
    ) -> Result<()> {
        use sha2::Digest;
        let key = format!(
            "{service}\u{0}{aggregate}\u{0}{}",
            field.segments().join(".")
        );
        let digest = sha2::Sha256::digest(key.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        // The field path is validated to [A-Za-z0-9_-] segments, so it is safe in SQL text.
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS ix_field_{name} ON snapshots (service, aggregate, {}, created_at, uuid)",
            self.json_field(field)
        );
        self.inner.reads.execute(AssertSqlSafe(sql)).await?;
        Ok(())
    }

    pub async fn load_saga(&self, id: &str) -> Result<Option<SagaRow>> {
        let row = sqlx::query(
            "SELECT id, service, name, status, state, created_at, updated_at, revision, timer_at, version, owner FROM sagas WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.reads)
        .await?;
        row.map(|row| saga_from_row(&row)).transpose()
    }

    /// The history of a saga: each stored transition's entries (a JSON array), oldest first.
    pub async fn saga_history(&self, id: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT entries FROM saga_history WHERE saga = $1 ORDER BY revision")
                .bind(id)
                .fetch_all(&self.inner.reads)
                .await?;
        rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
    }

    /// Forgets sagas that ended before `before` (ms since the epoch), with their history, at
    /// most `limit` of them; returns how many. A saga that has not ended is never forgotten.
    pub async fn prune_ended_sagas(&self, before: i64, limit: u32) -> Result<u64> {
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

    /// Sagas, newest first, optionally of one status.
    pub async fn list_sagas(&self, status: Option<&str>, limit: u32) -> Result<Vec<SagaRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, service, name, status, state, created_at, updated_at, revision, timer_at, version, owner FROM sagas \
             WHERE ($1 = '' OR status = $1) ORDER BY created_at DESC, id LIMIT {limit}"
        )))
        .bind(status.unwrap_or(""))
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter().map(saga_from_row).collect()
    }

    /// Every message still in the queue, oldest first: what a restarted host must deliver.
    pub async fn queued_messages(&self) -> Result<Vec<QueuedMessage>> {
        let rows = sqlx::query(
            "SELECT seq, id, consumer, body, attempts, available_at FROM queue ORDER BY seq",
        )
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter().map(queued_from_row).collect()
    }

    /// Queued messages enqueued before `before` (ms since the epoch), oldest first, at most
    /// `limit`: what a relay left behind (a host that died before handing them on).
    pub async fn queued_before(&self, before: i64, limit: u32) -> Result<Vec<QueuedMessage>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, id, consumer, body, attempts, available_at FROM queue \
             WHERE available_at < $1 ORDER BY seq LIMIT {limit}"
        )))
        .bind(before)
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter().map(queued_from_row).collect()
    }

    /// Removes queue entries that were handed on (to the external broker).
    pub async fn remove_queued(&self, seqs: &[i64]) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM queue WHERE seq IN ({})",
                list.join(",")
            )))
            .execute(&self.inner.reads)
            .await?;
        }
        Ok(())
    }

    /// Records a failed attempt at a queued message and when to try again.
    pub async fn defer_message(&self, seq: i64, attempts: u32, available_at: i64) -> Result<()> {
        sqlx::query("UPDATE queue SET attempts = $1, available_at = $2 WHERE seq = $3")
            .bind(attempts as i64)
            .bind(available_at)
            .bind(seq)
            .execute(&self.inner.reads)
            .await?;
        Ok(())
    }

    /// Takes over the sagas whose owner is not a live host (silent since `alive_since`, or gone
    /// with a restart) and that have a timer: returns them with when they are due, for `me` to
    /// schedule. Sagas of live hosts are left to them.
    pub async fn claim_orphaned_sagas(
        &self,
        me: &str,
        alive_since: i64,
    ) -> Result<Vec<(String, i64)>> {
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
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// Records that host `me` is alive, and, when given, what its services consume (replacing
    /// what it said before). One transaction.
    pub async fn heartbeat(&self, me: &str, consumes: Option<&[Consumes]>) -> Result<()> {
        let now = super::now_ms();
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
                .bind(&entry.kind)
                .bind(&entry.topic)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the services of the hosts alive since `alive_since` consume.
    pub async fn cluster_consumes(&self, alive_since: i64) -> Result<Vec<Consumes>> {
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
                    service: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    topic: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// Forgets the hosts silent since before `before`, and what they consumed.
    pub async fn forget_hosts(&self, before: i64) -> Result<()> {
        let mut tx = self.inner.reads.begin().await?;
        sqlx::query(
            "DELETE FROM host_topics WHERE host IN (SELECT id FROM hosts WHERE heartbeat_at < $1)",
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

    /// Unfinished sagas by the component version they run on: (service, version, count).
    pub async fn running_versions(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT service, version, COUNT(*) FROM sagas \
             WHERE status IN ('created', 'running', 'paused', 'compensating') GROUP BY service, version",
        )
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<super::DeadLetter>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT seq, message_id, consumer, body, attempts, error, failed_at FROM dead_letters \
             ORDER BY seq LIMIT {limit}"
        )))
        .fetch_all(&self.inner.reads)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(super::DeadLetter {
                    seq: row.try_get(0)?,
                    message_id: row.try_get(1)?,
                    consumer: row.try_get(2)?,
                    body: row.try_get(3)?,
                    attempts: row.try_get::<i64, _>(4)? as u32,
                    error: row.try_get(5)?,
                    failed_at: row.try_get(6)?,
                })
            })
            .collect()
    }

    /// The reply sent when `consumer` consumed `message_id`, if it consumed it and replied.
    pub async fn stored_reply(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> Result<Option<NewMessage>> {
        let row = sqlx::query(
            "SELECT reply_id, reply_consumer, reply_body FROM consumed \
             WHERE consumer = $1 AND message_id = $2 AND reply_id IS NOT NULL",
        )
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(&self.inner.reads)
        .await?;
        row.map(|row| {
            Ok(NewMessage {
                id: row.try_get(0)?,
                consumer: row.try_get(1)?,
                body: row.try_get(2)?,
                staged_under: None,
            })
        })
        .transpose()
    }

    /// Forgets consumed-message records older than `before` (ms since the epoch); returns how
    /// many.
    pub async fn prune_consumed(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM consumed WHERE at < $1")
            .bind(before)
            .execute(&self.inner.reads)
            .await?;
        Ok(done.rows_affected())
    }

    fn json_field(&self, field: &FieldPath) -> String {
        json_field(self.inner.dialect, field)
    }
}

fn json_field(dialect: Dialect, field: &FieldPath) -> String {
    match dialect {
        Dialect::Sqlite => {
            let path: String = field
                .segments()
                .iter()
                .map(|s| format!(".\"{s}\""))
                .collect();
            format!("json_extract(data, '${path}')")
        }
        Dialect::Postgres => format!("(data::jsonb #>> '{{{}}}')", field.segments().join(",")),
    }
}

/// True when the field holds a JSON string: SQL text equality alone would also match numbers
/// (PostgreSQL) or objects (SQLite) whose text happens to be equal.
fn json_is_string(dialect: Dialect, field: &FieldPath) -> String {
    match dialect {
        Dialect::Sqlite => {
            let path: String = field
                .segments()
                .iter()
                .map(|s| format!(".\"{s}\""))
                .collect();
            format!("json_type(data, '${path}') = 'text'")
        }
        Dialect::Postgres => format!(
            "jsonb_typeof(data::jsonb #> '{{{}}}') = 'string'",
            field.segments().join(",")
        ),
    }
}

fn create_sqlite_parent(url: &str) -> std::io::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    Ok(())
}

async fn configure(conn: &mut AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    if dialect == Dialect::Sqlite {
        // WAL lets readers run beside the writer; synchronous=FULL makes every commit durable
        // (fsync of the WAL) before the host reports success.
        conn.execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
        )
        .await?;
    }
    Ok(())
}

async fn write_loop(mut conn: AnyConnection, mut jobs: mpsc::Receiver<Job>, dialect: Dialect) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch, dialect).await;
        for (job, result) in batch.into_iter().zip(results) {
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
            Err(StorageError::Database(sqlx::Error::Protocol(
                error.to_string(),
            )))
        })
        .collect()
}

/// All jobs in one transaction; `Err` (nothing committed) as soon as one fails.
async fn commit_whole(
    conn: &mut AnyConnection,
    batch: &[Job],
    dialect: Dialect,
) -> Result<Vec<Result<Committed>>, Vec<Result<Committed>>> {
    let mut tx = conn.begin().await.map_err(|e| fail_all(batch, &e))?;
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
    let mut tx = match conn.begin().await {
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
    let now = super::now_ms();
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
        .bind(&saga.status)
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
        .bind(&saga.status)
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
async fn apply_write(conn: &mut AnyConnection, write: &Write) -> Result<()> {
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
async fn stage_write(conn: &mut AnyConnection, write: &Write, saga: &str) -> Result<()> {
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

async fn enqueue(conn: &mut AnyConnection, message: &NewMessage) -> Result<QueuedMessage> {
    let now = super::now_ms();
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

async fn stage_message(conn: &mut AnyConnection, message: &NewMessage, saga: &str) -> Result<()> {
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
async fn promote(
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
async fn discard(conn: &mut AnyConnection, saga: &str, messages: bool) -> Result<()> {
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

fn record_from_row(row: &AnyRow, first: usize) -> Result<AggregateRecord> {
    let data: String = row.try_get(first + 4)?;
    Ok(AggregateRecord {
        uuid: row.try_get(first)?,
        version: row.try_get::<i64, _>(first + 1)? as u64,
        created_at: row.try_get(first + 2)?,
        updated_at: row.try_get(first + 3)?,
        data: serde_json::from_str(&data)
            .map_err(|e| StorageError::Corrupt(format!("aggregate data is not JSON: {e}")))?,
    })
}

fn snapshot_from_row(row: &AnyRow) -> Result<Snapshot> {
    Ok(Snapshot {
        record: record_from_row(row, 0)?,
        deleted: row.try_get::<i64, _>(5)? != 0,
    })
}

fn saga_from_row(row: &AnyRow) -> Result<SagaRow> {
    Ok(SagaRow {
        id: row.try_get(0)?,
        service: row.try_get(1)?,
        name: row.try_get(2)?,
        status: row.try_get(3)?,
        state: row.try_get(4)?,
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
        revision: row.try_get(7)?,
        timer_at: row.try_get(8)?,
        version: row.try_get(9)?,
        owner: row.try_get(10)?,
        history: None,
    })
}

fn queued_from_row(row: &AnyRow) -> Result<QueuedMessage> {
    Ok(QueuedMessage {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        consumer: row.try_get(2)?,
        body: row.try_get(3)?,
        attempts: row.try_get::<i64, _>(4)? as u32,
        available_at: row.try_get(5)?,
    })
}
