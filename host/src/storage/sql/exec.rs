//! The writer's connection, one statement at a time, the same way on both databases: the
//! transaction logic (`writer.rs`, `writes.rs`, `idempotency.rs`) is written once against
//! `Exec`.
//!
//! - PostgreSQL: sqlx's `PgConnection`, on the host's runtime.
//! - SQLite: a `rusqlite` handle that the writer owns on a thread of its own. sqlx's SQLite
//!   driver runs each statement on its worker thread and crosses a channel both ways for it:
//!   about ten round trips per saga, each a futex wake on both sides. Owning the handle makes a
//!   whole group commit one hop from the host's tasks to the writer and back, whatever the
//!   number of statements. Reads, migrations and maintenance stay on sqlx's pool, but for the
//!   point reads every request makes (`PointReads`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, PgConnection};

use super::{Dialect, Result, together};
use crate::storage::{StorageError, Transaction};

/// A statement's argument: `$1` is the first.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Blob(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Arg::Int(Some(value))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(value: Option<i64>) -> Self {
        Arg::Int(value)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(value: &'a str) -> Self {
        Arg::Text(Some(value))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(value: &'a String) -> Self {
        Arg::Text(Some(value))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Arg::Text(value)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(value: &'a [u8]) -> Self {
        Arg::Blob(value)
    }
}

/// The arguments of a statement, in `$n` order: `args![a, b]`.
macro_rules! args {
    ($($arg:expr),* $(,)?) => { &[$($crate::storage::sql::exec::Arg::from($arg)),*] };
}
pub(super) use args;

/// A row a statement returned.
pub(super) trait Row: Send {
    fn int(&self, column: usize) -> Result<i64>;
    fn text(&self, column: usize) -> Result<String>;
}

/// A connection the writer commits through.
pub(super) trait Exec: Send + Sized + 'static {
    type Row: Row;
    const DIALECT: Dialect;

    /// Opens and configures a connection to the database at `url`.
    fn connect(url: &str) -> impl Future<Output = Result<Self>> + Send;

    /// Opens the writer's connection (`writer.rs`): by default as `connect` does; a database
    /// whose writer is better served otherwise says how.
    fn connect_writer(url: &str) -> impl Future<Output = Result<Self>> + Send {
        Self::connect(url)
    }

    /// Runs a statement; how many rows it changed.
    fn execute(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Runs a statement; the rows it returned.
    fn fetch(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;

    /// Runs a statement that begins or ends a transaction or savepoint.
    fn control(&mut self, sql: &'static str) -> impl Future<Output = Result<()>> + Send;

    /// Commits a group commit's transactions with one statement per table instead of one per
    /// row, where a statement costs a round trip (PostgreSQL, `together.rs`): `Some(Ok)`
    /// committed, `Some(Err)` nothing committed, `None` when this batch or this database does
    /// not commit so (the writer then applies the transactions one by one).
    fn commit_together(
        &mut self,
        _batch: &[&Transaction],
    ) -> impl Future<Output = Option<Result<()>>> + Send {
        std::future::ready(None)
    }
}

/// Begins the writer's transaction. On SQLite it takes the write lock at once (`IMMEDIATE`):
/// a deferred transaction that read first could not wait for a maintenance write on another
/// connection (its snapshot would be stale) and would fail with "database is locked"; this one
/// waits its turn (`busy_timeout`).
pub(super) async fn begin<C: Exec>(conn: &mut C) -> Result<()> {
    let begin = match C::DIALECT {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    conn.control(begin).await
}

/// Ends the transaction: committed, or (when `commit` failed) rolled back, so that the
/// connection is never left inside one.
pub(super) async fn commit(conn: &mut impl Exec) -> Result<()> {
    let committed = conn.control("COMMIT").await;
    if committed.is_err() {
        rollback(conn).await;
    }
    committed
}

/// Rolls the transaction back. If that fails too the connection is broken, and the next
/// statement says so.
pub(super) async fn rollback(conn: &mut impl Exec) {
    let _ = conn.control("ROLLBACK").await;
}

impl Row for PgRow {
    fn int(&self, column: usize) -> Result<i64> {
        use sqlx::Row as _;
        // A literal (`SELECT 1 AS staged`) is an INT4; the schema's columns are BIGINT.
        match self.try_get::<i64, _>(column) {
            Ok(value) => Ok(value),
            Err(_) => Ok(i64::from(self.try_get::<i32, _>(column)?)),
        }
    }

    fn text(&self, column: usize) -> Result<String> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
}

impl Row for sqlx::any::AnyRow {
    fn int(&self, column: usize) -> Result<i64> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }

    fn text(&self, column: usize) -> Result<String> {
        use sqlx::Row as _;
        Ok(self.try_get(column)?)
    }
}

fn pg_query<'q>(
    sql: &'static str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    args.iter().fold(sqlx::query(sql), |query, arg| match *arg {
        Arg::Int(value) => query.bind(value),
        Arg::Text(value) => query.bind(value),
        Arg::Blob(value) => query.bind(value),
    })
}

impl Exec for PgConnection {
    type Row = PgRow;
    const DIALECT: Dialect = Dialect::Postgres;

    async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        let connecting = PgConnection::connect_with(&options);
        match tokio::time::timeout(super::CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => Ok(connected?),
            Err(_) => Err(sqlx::Error::PoolTimedOut.into()),
        }
    }

    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64> {
        Ok(pg_query(sql, args).execute(self).await?.rows_affected())
    }

    async fn fetch(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<PgRow>> {
        Ok(pg_query(sql, args).fetch_all(self).await?)
    }

    /// As sqlx's own transactions do: a simple query, not a prepared statement.
    async fn control(&mut self, sql: &'static str) -> Result<()> {
        sqlx::Executor::execute(self, sql).await?;
        Ok(())
    }

    async fn commit_together(&mut self, batch: &[&Transaction]) -> Option<Result<()>> {
        if !together::applies_together(batch) {
            return None;
        }
        let committed = async {
            begin(self).await?;
            if let Err(error) = together::apply_all(self, batch).await {
                rollback(self).await;
                return Err(error);
            }
            commit(self).await
        };
        Some(committed.await)
    }
}

/// How many distinct statements the SQLite writer keeps prepared: all of them.
const PREPARED_STATEMENTS: usize = 64;

/// The `$n` names of SQLite's parameters: a statement may use them in any order (`$6` before
/// `$4`), so each argument is bound to the index SQLite gave its name.
const PARAMETER_NAMES: [&str; 12] = [
    "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12",
];

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Arg::Int(value) => value.to_sql(),
            Arg::Text(value) => value.to_sql(),
            Arg::Blob(value) => value.to_sql(),
        }
    }
}

impl Row for Vec<rusqlite::types::Value> {
    fn int(&self, column: usize) -> Result<i64> {
        match self.get(column) {
            Some(rusqlite::types::Value::Integer(value)) => Ok(*value),
            other => Err(StorageError::Corrupt(format!(
                "column {column} holds {other:?} where an integer belongs"
            ))),
        }
    }

    fn text(&self, column: usize) -> Result<String> {
        match self.get(column) {
            Some(rusqlite::types::Value::Text(value)) => Ok(value.clone()),
            other => Err(StorageError::Corrupt(format!(
                "column {column} holds {other:?} where text belongs"
            ))),
        }
    }
}

/// A statement's text, by its address and length.
type StatementText = (usize, usize);

thread_local! {
    /// The SQLite index of each argument of the statements bound on this thread, by the address
    /// and length of their text (`'static`: one address is one text). SQLite numbers `$n`
    /// parameters in the order they are first used (`$3` is index 1 in a statement that uses it
    /// first), and finding one by name costs a C string and a scan of the names, per argument.
    static PARAMETER_INDEXES: RefCell<HashMap<StatementText, Box<[usize]>>> = RefCell::default();
}

/// Prepares (once) and binds a statement.
fn sqlite_statement<'c>(
    conn: &'c rusqlite::Connection,
    sql: &'static str,
    args: &[Arg<'_>],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    if args.len() > PARAMETER_NAMES.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            args.len(),
            PARAMETER_NAMES.len(),
        ));
    }
    let mut statement = conn.prepare_cached(sql)?;
    PARAMETER_INDEXES.with_borrow_mut(|known| {
        let indexes = match known.entry((sql.as_ptr() as usize, sql.len())) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(unknown) => unknown.insert(
                PARAMETER_NAMES[..args.len()]
                    .iter()
                    .map(|name| {
                        statement
                            .parameter_index(name)?
                            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_string()))
                    })
                    .collect::<rusqlite::Result<_>>()?,
            ),
        };
        if indexes.len() != args.len() {
            return Err(rusqlite::Error::InvalidParameterCount(
                args.len(),
                indexes.len(),
            ));
        }
        for (index, arg) in indexes.iter().zip(args) {
            statement.raw_bind_parameter(*index, arg)?;
        }
        Ok(())
    })?;
    Ok(statement)
}

impl Exec for rusqlite::Connection {
    type Row = Vec<rusqlite::types::Value>;
    const DIALECT: Dialect = Dialect::Sqlite;

    async fn connect(url: &str) -> Result<Self> {
        open_sqlite(url, None)
    }

    /// The writer's WAL writes gathered (`wal_writes.rs`), which holds only because every
    /// commit syncs (synchronous = FULL, `SQLITE_PRAGMAS`) and no page is written before its
    /// transaction commits (`cache_spill = false`: a batch's pages stay in memory until then).
    async fn connect_writer(url: &str) -> Result<Self> {
        super::wal_writes::register()
            .map_err(|e| StorageError::Database(sqlx::Error::Configuration(e.into())))?;
        let conn = open_sqlite(url, Some(super::wal_writes::VFS_NAME))?;
        conn.execute_batch("PRAGMA cache_spill = false;")?;
        Ok(conn)
    }

    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64> {
        Ok(sqlite_statement(self, sql, args)?.raw_execute()? as u64)
    }

    async fn fetch(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Vec<rusqlite::types::Value>>> {
        let mut statement = sqlite_statement(self, sql, args)?;
        let columns = statement.column_count();
        let mut rows = statement.raw_query();
        let mut fetched = Vec::new();
        while let Some(row) = rows.next()? {
            fetched.push(
                (0..columns)
                    .map(|column| row.get(column))
                    .collect::<rusqlite::Result<_>>()?,
            );
        }
        Ok(fetched)
    }

    async fn control(&mut self, sql: &'static str) -> Result<()> {
        Exec::execute(self, sql, &[]).await.map(drop)
    }
}

/// Opens the SQLite database at `url` (the read pool opened and created the file first, and
/// brought its schema up to date) with the host's settings.
fn open_sqlite(url: &str, vfs: Option<&std::ffi::CStr>) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match vfs {
        Some(vfs) => {
            rusqlite::Connection::open_with_flags_and_vfs(options.get_filename(), flags, vfs)?
        }
        None => rusqlite::Connection::open_with_flags(options.get_filename(), flags)?,
    };
    // As every connection of the host: see `super::configure`.
    conn.execute_batch(super::SQLITE_PRAGMAS)?;
    conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
    Ok(conn)
}

/// How many idle SQLite connections `PointReads` keeps.
const IDLE_POINT_READERS: usize = 4;

/// SQLite connections for the reads of one aggregate by uuid that every handler makes, run on
/// the caller's thread. Such a read is a few index pages, in the page cache: about as long as
/// the hop to sqlx's worker thread and back that it saves (each a futex wake on both sides).
/// A connection is taken for the one statement and put back, so calls at once use several.
pub(super) struct PointReads {
    url: String,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl PointReads {
    pub(super) fn new(url: &str) -> PointReads {
        PointReads {
            url: url.to_string(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(super) async fn fetch(
        &self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Vec<rusqlite::types::Value>>> {
        let idle = self.idle.lock().expect("point readers lock").pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => <rusqlite::Connection as Exec>::connect(&self.url).await?,
        };
        let rows = conn.fetch(sql, args).await?;
        let mut idle = self.idle.lock().expect("point readers lock");
        if idle.len() < IDLE_POINT_READERS {
            idle.push(conn);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn sqlite_binds_each_argument_to_its_dollar_name_whatever_the_order_of_use() {
        let mut conn = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        block_on(async {
            conn.control("CREATE TABLE t (a TEXT, b INTEGER, c TEXT)")
                .await
                .expect("create");
            // $3 is used before $1 and $2, as in `UPDATE sagas … WHERE id = $4`.
            // `Exec::execute`, not rusqlite's own `execute`; twice, the second time with the
            // indexes found the first.
            for (a, b) in [("first", 2), ("second", 3)] {
                let inserted = Exec::execute(
                    &mut conn,
                    "INSERT INTO t (c, a, b) VALUES ($3, $1, $2)",
                    args![a, b, None::<&str>],
                )
                .await
                .expect("insert");
                assert_eq!(inserted, 1);
            }
            let rows = conn
                .fetch("SELECT a, b, c IS NULL FROM t ORDER BY b", &[])
                .await
                .expect("select");
            assert_eq!(rows.len(), 2);
            for (row, (a, b)) in rows.iter().zip([("first", 2), ("second", 3)]) {
                assert_eq!(row.text(0).expect("a"), a);
                assert_eq!(row.int(1).expect("b"), b);
                assert_eq!(row.int(2).expect("c is null"), 1);
            }
            assert!(rows[0].text(1).is_err(), "an integer is not read as text");
        });
    }

    #[test]
    fn sqlite_refuses_an_argument_its_statement_does_not_name() {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        let refused = sqlite_statement(&conn, "SELECT $1", args![1, 2]).map(drop);
        assert!(
            matches!(&refused, Err(rusqlite::Error::InvalidParameterName(name)) if name == "$2"),
            "{refused:?}"
        );
    }

    #[test]
    fn sqlite_refuses_more_arguments_than_it_can_name() {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        let args: Vec<Arg> = (0..13).map(Arg::from).collect();
        assert!(sqlite_statement(&conn, "SELECT $1", &args).is_err());
    }
}
