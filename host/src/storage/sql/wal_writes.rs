//! The SQLite writer's WAL writes, gathered: one `pwrite` per commit instead of two per page.
//!
//! SQLite writes a commit's pages to the WAL one frame at a time, and each frame as two writes (its
//! 24-byte header, then the page): a `POST /exams` saga cost the writer about 24 `pwrite` calls,
//! each of which, the frames being 4,120 bytes long, also touches two pages of the file in the
//! kernel. This VFS sits over SQLite's default one and, for WAL files only, gathers writes that
//! follow one another in the file and hands them to the default VFS as one, before anything that
//! must see them: a sync, a read, the file's size, a truncation, a file control, closing.
//!
//! Why holding them is safe: the writer's connection runs with `synchronous = FULL`, so every
//! commit syncs the WAL before it publishes its frames to readers (the WAL index), and with
//! `cache_spill = false`, so SQLite writes frames only in a commit, never for a transaction that
//! may still roll back. Every frame gathered is therefore on disk before any reader,
//! checkpointer or later writer can look for it, exactly as without this layer; a crash loses
//! only frames whose commit had not returned. `connect_writer` (exec.rs) opens the writer's
//! connection with this VFS and both pragmas.

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub(super) const VFS_NAME: &CStr = c"saga-host-gathered-wal";

/// Gathered bytes are written once they would pass this much. The default VFS writes less than
/// 128 KiB in one call (its unix `seekAndWriteFd` keeps the low 17 bits of a length, and a longer
/// write fails as if the disk were full), so a write of gathered frames must stay below that.
const GATHER_AT_MOST: usize = 64 << 10;

/// A WAL file of this VFS: SQLite's `sqlite3_file` header, then what it gathered; the default
/// VFS's own file follows it in the same allocation (`real`).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// The offset in the file of `pending[0]`.
    start: i64,
    pending: Vec<u8>,
}

/// The default VFS this one wraps, once `register` has registered this one; SQLite's error if
/// it could not.
static REGISTERED: OnceLock<Result<usize, String>> = OnceLock::new();

/// Registers the VFS (once per process); the error is SQLite's.
pub(super) fn register() -> Result<(), String> {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find only reads SQLite's list of VFSes; the copy of the default
            // VFS is leaked, as registered VFSes must live as long as the process.
            unsafe {
                let default = ffi::sqlite3_vfs_find(std::ptr::null());
                if default.is_null() {
                    return Err("SQLite has no default VFS".into());
                }
                // The default VFS's other methods ignore the VFS they are given, or read only
                // the fields copied with them (its unix implementation), so a copy can stand in.
                let mut vfs = *default;
                vfs.zName = VFS_NAME.as_ptr();
                vfs.pNext = std::ptr::null_mut();
                vfs.szOsFile = (*default).szOsFile + std::mem::size_of::<WalFile>() as c_int;
                vfs.xOpen = Some(open);
                let rc = ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0);
                if rc == ffi::SQLITE_OK {
                    Ok(default as usize)
                } else {
                    Err(format!("SQLite refused the WAL-gathering VFS (code {rc})"))
                }
            }
        })
        .clone()
        .map(drop)
}

/// The default VFS; only this VFS's own methods ask, so it was registered.
fn default_vfs() -> *mut ffi::sqlite3_vfs {
    let registered = REGISTERED.get().and_then(|r| r.as_ref().ok());
    *registered.expect("registered before use") as *mut ffi::sqlite3_vfs
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = default_vfs();
    // SAFETY: SQLite gives `file` szOsFile bytes, 8-aligned: room for a WalFile and, after it
    // (a multiple of 8 bytes), the default VFS's file; any other file is the default's alone.
    unsafe {
        let default_open = (*default).xOpen.expect("a VFS opens files");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return default_open(default, name, file, flags, out_flags);
        }
        let real = file
            .cast::<u8>()
            .add(std::mem::size_of::<WalFile>())
            .cast::<ffi::sqlite3_file>();
        let rc = default_open(default, name, real, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite does not close a file whose open failed.
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        file.cast::<WalFile>().write(WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            real,
            start: 0,
            pending: Vec::new(),
        });
        ffi::SQLITE_OK
    }
}

/// Version 1 methods: SQLite maps and locks shared memory through the database file, never the
/// WAL's.
static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The WalFile behind `file`, and the default VFS's methods of its real file.
///
/// # Safety
/// `file` is a file `open` made a WalFile of, not yet closed.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (&'a mut WalFile, &'a ffi::sqlite3_io_methods) {
    // SAFETY: as the function's contract says.
    unsafe {
        let wal = &mut *file.cast::<WalFile>();
        let methods = &*(*wal.real).pMethods;
        (wal, methods)
    }
}

/// Writes what was gathered. The bytes are dropped whatever the outcome: SQLite answers a failed
/// write by failing the commit, and writes the frames again in the next one.
fn flush(wal: &mut WalFile, methods: &ffi::sqlite3_io_methods) -> c_int {
    if wal.pending.is_empty() {
        return ffi::SQLITE_OK;
    }
    let write = methods.xWrite.expect("a file writes");
    // SAFETY: `real` is the open file of the default VFS; `pending` outlives the call.
    let rc = unsafe {
        write(
            wal.real,
            wal.pending.as_ptr().cast(),
            wal.pending.len() as c_int,
            wal.start,
        )
    };
    wal.pending.clear();
    rc
}

/// Flushes, then runs `then` on the real file, unless the flush failed.
///
/// # Safety
/// As `parts`.
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
    then: impl FnOnce(*mut ffi::sqlite3_file, &ffi::sqlite3_io_methods) -> c_int,
) -> c_int {
    // SAFETY: as the function's contract says.
    let (wal, methods) = unsafe { parts(file) };
    match flush(wal, methods) {
        ffi::SQLITE_OK => then(wal.real, methods),
        failed => failed,
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made, with `amount` bytes at `data`.
    unsafe {
        let (wal, methods) = parts(file);
        let length = amount as usize;
        let follows = wal.start + wal.pending.len() as i64 == offset;
        if !wal.pending.is_empty() && (!follows || wal.pending.len() + length > GATHER_AT_MOST) {
            let rc = flush(wal, methods);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if length >= GATHER_AT_MOST {
            return methods.xWrite.expect("a file writes")(wal.real, data, amount, offset);
        }
        if wal.pending.is_empty() {
            wal.start = offset;
        }
        wal.pending
            .extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), length));
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file once; the WalFile is dropped in place after the real file is
    // closed, and SQLite frees the allocation.
    unsafe {
        let (wal, methods) = parts(file);
        let flushed = flush(wal, methods);
        let closed = methods.xClose.expect("a file closes")(wal.real);
        std::ptr::drop_in_place(file.cast::<WalFile>());
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        flushed(file, |real, m| {
            m.xRead.expect("read")(real, data, amount, offset)
        })
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe { flushed(file, |real, m| m.xTruncate.expect("truncate")(real, size)) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe { flushed(file, |real, m| m.xSync.expect("sync")(real, flags)) }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe { flushed(file, |real, m| m.xFileSize.expect("size")(real, size)) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        flushed(file, |real, m| {
            m.xFileControl.expect("control")(real, op, arg)
        })
    }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        let (wal, m) = parts(file);
        m.xLock.expect("lock")(wal.real, level)
    }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        let (wal, m) = parts(file);
        m.xUnlock.expect("unlock")(wal.real, level)
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        let (wal, m) = parts(file);
        m.xCheckReservedLock.expect("reserved lock")(wal.real, out)
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        let (wal, m) = parts(file);
        m.xSectorSize.expect("sector size")(wal.real)
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls the methods of a file `open` made.
    unsafe {
        let (wal, m) = parts(file);
        m.xDeviceCharacteristics.expect("characteristics")(wal.real)
    }
}

#[cfg(test)]
mod tests {
    /// A database file in a directory of its own, removed after the test.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("saga-host-wal-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a scratch directory");
            Scratch(dir)
        }

        fn url(&self) -> String {
            format!("sqlite://{}", self.0.join("db.sqlite").display())
        }

        /// A connection of SQLite's default VFS, which made the table `t`.
        fn plain(&self) -> rusqlite::Connection {
            let conn =
                rusqlite::Connection::open(self.0.join("db.sqlite")).expect("a plain connection");
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
            )
            .expect("a table in WAL mode");
            conn
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The writer's connection, as the host opens it.
    fn writer(scratch: &Scratch) -> rusqlite::Connection {
        use super::super::exec::Exec;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(rusqlite::Connection::connect_writer(&scratch.url()))
            .expect("the writer's connection")
    }

    fn integrity(conn: &rusqlite::Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("an integrity check")
    }

    fn count(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("a count")
    }

    #[test]
    fn a_commit_is_in_the_wal_file_when_it_returns_and_other_connections_read_it() {
        // Commits of 24 KB to 480 KB: beyond the largest write the default VFS makes at once.
        let scratch = Scratch::new("commit");
        let reader = scratch.plain();
        let writer = writer(&scratch);
        for round in 0..20 {
            writer
                .execute_batch(&format!(
                    "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                     WHERE i < {}) INSERT INTO t (v) SELECT randomblob(3000) FROM n; COMMIT;",
                    (round + 1) * 8
                ))
                .expect("an insert");
            // A connection of the default VFS reads the frames from the file itself.
            assert_eq!(count(&reader), 8 * (round + 1) * (round + 2) / 2);
        }
        // The frames are whole: the checkpoint copies them and the database checks out.
        reader
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("a checkpoint");
        assert_eq!(integrity(&reader), "ok");
        assert_eq!(count(&reader), 8 * 210);
    }

    #[test]
    fn a_transaction_larger_than_the_page_cache_that_rolls_back_leaves_the_wal_as_it_was() {
        let scratch = Scratch::new("rollback");
        let reader = scratch.plain();
        let writer = writer(&scratch);
        let wal = scratch.0.join("db.sqlite-wal");
        let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // 8 MB of rows, four times SQLite's default page cache: with cache spill on, SQLite
        // would write pages of this transaction to the WAL before it ends.
        writer
            .execute_batch(
                "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                 WHERE i < 2000) INSERT INTO t (v) SELECT randomblob(4000) FROM n;",
            )
            .expect("the inserts");
        assert_eq!(
            std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
            before,
            "nothing of an open transaction reaches the WAL"
        );
        writer.execute_batch("ROLLBACK;").expect("a rollback");
        // Another connection writes next, at the same place in the WAL: nothing the writer held
        // back may land on its frames later.
        reader
            .execute_batch("INSERT INTO t (v) VALUES (x'01'), (x'02')")
            .expect("another connection's commit");
        writer
            .execute_batch("INSERT INTO t (v) VALUES (x'03')")
            .expect("the writer's next commit");
        drop(writer);
        assert_eq!(count(&reader), 3);
        assert_eq!(integrity(&reader), "ok");
    }
}
