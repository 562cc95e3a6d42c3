//! The SQL backend: SQLite (a file, WAL, durable commits) or PostgreSQL, through sqlx's `Any`
//! driver so that both run the same statements. Reads use a connection pool; writes go through
//! one writer that commits many transactions per database commit (group commit), each in its
//! own savepoint so that one transaction's conflict does not undo the others. The writer runs
//! its statements through `exec.rs`, on a SQLite handle of its own or a PostgreSQL connection.

use std::path::Path;
use std::sync::{Arc, Mutex};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor};
use tokio::sync::mpsc;

mod aggregates;
mod checkpoint;
mod deploys;
mod exec;
mod idempotency;
mod membership;
mod queue;
mod sagas;
mod together;
mod wal_writes;
mod writer;
mod writes;

use super::StorageError;
use super::condition::FieldPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
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
    /// SQLite: the reads of one aggregate, on the caller's thread (see `exec::PointReads`).
    point_reads: Option<exec::PointReads>,
    writer: mpsc::Sender<writer::Job>,
    dialect: Dialect,
    /// Why the writer has no connection to the database, while it has none.
    lost: Arc<Mutex<Option<String>>>,
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// How long getting a connection may take (the read pool's, the writer's): beyond it the
/// database counts as unreachable, and a request fails with a clear 503 rather than waiting.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _| Box::pin(async move { configure(conn, dialect).await }))
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&reads).await?,
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&reads).await?,
        }
        let (writer, jobs) = mpsc::channel(4096);
        let lost = Arc::new(Mutex::new(None));
        writer::start(url, dialect, jobs, lost.clone()).await?;
        Ok(Storage {
            inner: Arc::new(Inner {
                reads,
                point_reads: (dialect == Dialect::Sqlite).then(|| exec::PointReads::new(url)),
                writer,
                dialect,
                lost,
            }),
        })
    }

    /// The database is unreachable, as far as the writer knows: it lost its connection and has
    /// not connected again yet (it tries every second). A request that would only wait for
    /// it and fail is refused with this at once.
    pub fn unreachable(&self) -> Option<StorageError> {
        let lost = self.inner.lost.lock().expect("lost lock");
        lost.as_ref().map(|detail| StorageError::Unavailable {
            outage: super::Outage::Unreachable,
            detail: detail.clone(),
        })
    }

    fn json_field(&self, field: &FieldPath) -> String {
        json_field(self.inner.dialect, field)
    }
}

/// SQLite's JSON path of a field: `$."a"."b"`.
fn sqlite_path(field: &FieldPath) -> String {
    let segments: String = field
        .segments()
        .iter()
        .map(|s| format!(".\"{s}\""))
        .collect();
    format!("${segments}")
}

pub(super) fn json_field(dialect: Dialect, field: &FieldPath) -> String {
    match dialect {
        Dialect::Sqlite => format!("json_extract(data, '{}')", sqlite_path(field)),
        Dialect::Postgres => format!("(data::jsonb #>> '{{{}}}')", field.segments().join(",")),
    }
}

/// True when the field holds a JSON string: SQL text equality alone would also match numbers
/// (PostgreSQL) or objects (SQLite) whose text happens to be equal.
pub(super) fn json_is_string(dialect: Dialect, field: &FieldPath) -> String {
    match dialect {
        Dialect::Sqlite => format!("json_type(data, '{}') = 'text'", sqlite_path(field)),
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

/// How every SQLite connection of the host is set up. WAL lets readers run beside the writer;
/// synchronous=FULL makes every commit durable (fsync of the WAL) before the host reports
/// success; a connection waits up to 10 s for another's write lock. A commit checkpoints the
/// WAL itself only once it is past 10,000 frames (40 MiB): the checkpointer does it beside the
/// writer long before (`checkpoint.rs`).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 10000; PRAGMA wal_autocheckpoint = 10000;";

async fn configure(conn: &mut AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    if dialect == Dialect::Sqlite {
        conn.execute(SQLITE_PRAGMAS).await?;
    }
    Ok(())
}
