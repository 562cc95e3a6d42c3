//! SQLite's checkpointer: a thread of its own copies the pages that the writer's commits put in
//! the WAL into the database file, beside the writer, so that no commit waits for the copy.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the WAL past 1,000 frames:
//! that commit, and every transaction of its group, waits while the pages are copied and the
//! database file is synced — the slowest commits of the host. Here the writer only wakes the
//! checkpointer after each commit; the checkpointer lets commits gather for a moment, then
//! copies them (a passive checkpoint: it never blocks the writer or a reader), pass after pass
//! until a pass finds nothing new.
//!
//! SQLite starts the WAL over from its beginning only in a commit that begins with every frame
//! copied. An idle host gives the checkpointer that moment; under a steady load, even from one
//! client, a commit comes while it copies, so the WAL grows until a commit checkpoints by
//! itself, past 10,000 frames (40 MiB, `SQLITE_PRAGMAS`) — the bound on the WAL. That commit
//! copies only what the checkpointer has not yet, the frames of a few milliseconds.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use crate::telemetry::metrics;

/// How long the checkpointer lets commits gather before it copies them, the database file
/// synced once for all of them. Measured with `saga-bench http` (see the README's Benchmarks):
/// 1 ms cost more CPU a saga, 20 and 50 ms gave a longer tail of latency under load.
const GATHER: Duration = Duration::from_millis(5);

/// At most this many passes one after another: the first copies what gathered, each next one
/// what the writer committed during the one before, until none is left to copy.
const PASSES: usize = 4;

/// Wakes the checkpointer: the writer committed.
pub(super) struct Wake(SyncSender<()>);

impl Wake {
    pub(super) fn committed(&self) {
        // A wake already waiting covers this commit too.
        let _ = self.0.try_send(());
    }
}

/// Starts the checkpointer on `conn`, a connection to the writer's database of its own. It
/// stops once the writer, and so its `Wake`, is gone.
pub(super) fn start(conn: rusqlite::Connection) -> std::io::Result<Wake> {
    let (wake, woken) = sync_channel(1);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || run(&conn, &woken))?;
    Ok(Wake(wake))
}

fn run(conn: &rusqlite::Connection, woken: &Receiver<()>) {
    let mut failing = false;
    while woken.recv().is_ok() {
        std::thread::sleep(GATHER);
        // The commits that woke it while it waited are among those it copies now.
        let _ = woken.try_recv();
        let started = std::time::Instant::now();
        match catch_up(conn) {
            Ok(()) => {
                metrics::checkpoint(started.elapsed());
                if failing {
                    tracing::info!("the WAL is copied into the database file again");
                }
                failing = false;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "could not copy the WAL into the database file; until this works again, a commit does it once the WAL is past 10,000 frames");
                }
                failing = true;
            }
        }
    }
}

/// Copies the WAL into the database file, pass after pass, until a pass finds nothing new, a
/// reader still needs the WAL, or `PASSES` passes are made.
fn catch_up(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let mut seen = None;
    for _ in 0..PASSES {
        // The frames in the WAL when the pass began, and how many of them are in the file now.
        let (log, checkpointed): (i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(1)?, row.get(2)?))
            })?;
        if checkpointed < log || seen == Some(log) {
            break;
        }
        seen = Some(log);
    }
    Ok(())
}
