//! SQLite storage: opening the database safely, the schema, the write batches and the read-side queries.

pub mod file;
pub mod maintenance;
pub mod query;
pub mod rescue;
pub mod schema;
pub mod write;

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

/// Every SQLite file starts with these 16 bytes.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long one statement waits on another process's lock before the writer retries on its own.
/// Kept short so the writer thread keeps draining its channel while the database is locked.
pub(crate) const WRITER_BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// How long read-side queries wait on a lock.
pub(crate) const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses a file that exists, is not empty and is not SQLite, before SQLite ever touches it.
///
/// Only for a process that has no SQLite connection to `path` open: closing any descriptor of
/// a file drops all of the process's POSIX locks on it, SQLite's included. The daemon calls it
/// once, at start; the CLI before its own reads.
pub(crate) fn check_is_database(path: &Path) -> anyhow::Result<()> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    if read == 0 {
        return Ok(());
    }
    if read < header.len() || header != *SQLITE_HEADER {
        bail!(
            "{} is not a SQLite database; refusing to touch it (move it away or pass another --db-path)",
            path.display()
        );
    }
    Ok(())
}

/// Gives clear errors for a database the daemon could not write: a read-only file, or a
/// directory where it cannot create the database, its WAL and its lock file.
pub(crate) fn check_writable(path: &Path) -> anyhow::Result<()> {
    use nix::unistd::{AccessFlags, access};
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "directory {} does not exist (for database {})",
            dir.display(),
            path.display()
        );
    }
    if path.exists()
        && let Err(e) = access(path, AccessFlags::R_OK | AccessFlags::W_OK)
    {
        bail!(
            "database {} is read-only for this user ({}): the daemon must write it",
            path.display(),
            e.desc()
        );
    }
    if let Err(e) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        bail!(
            "cannot create files in {} ({}): the database, its WAL and its lock file live there",
            dir.display(),
            e.desc()
        );
    }
    Ok(())
}

/// Refuses a corrupt database before anything is written to it, leaving the file as it is.
/// Reads every page (`PRAGMA quick_check`), so it runs once, at start.
pub(crate) fn verify_integrity(path: &Path) -> anyhow::Result<()> {
    check_is_database(path)?;
    let Some(conn) = open_read_only(path)? else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let verdict: rusqlite::Result<String> =
        conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0));
    match verdict {
        Ok(v) if v == "ok" => {
            tracing::debug!(
                secs = started.elapsed().as_secs_f64(),
                "database quick_check ok"
            );
            Ok(())
        }
        Ok(v) => bail!(
            "database {} is corrupt (quick_check: {v}); refusing to touch it: restore a backup or move it away",
            path.display()
        ),
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            bail!(
                "database {} is corrupt ({e}); refusing to touch it: restore a backup or move it away",
                path.display()
            )
        }
        Err(e) => {
            // E.g. a hot rollback journal only a writer can replay: let the writer open it.
            tracing::warn!(db = %path.display(), "could not check the database read-only: {e}");
            Ok(())
        }
    }
}

/// Opens (creating if needed) the database for writing, in WAL mode, with the schema migrated.
/// Callers check a file they have not seen yet with [`check_is_database`] first.
pub fn open_for_writing(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .with_context(|| format!("cannot use database {}", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(db = %path.display(), mode, "database is not in WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    schema::migrate(&conn)
        .with_context(|| format!("cannot prepare database {}", path.display()))?;
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Caps the database file at about `max_bytes` (`PRAGMA max_page_count`): past it, writes fail
/// with "database or disk is full", as on a full disk. A database already bigger keeps its size.
pub(crate) fn apply_size_cap(conn: &Connection, max_bytes: u64) -> anyhow::Result<()> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages = max_bytes.div_ceil(page_size.max(1) as u64).max(1);
    let set: i64 = conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
        r.get(0)
    })?;
    let set = set as u64;
    if set > pages {
        tracing::warn!(
            max_pages = pages,
            current_pages = set,
            "the database is already bigger than max_db_size_mb; it will not grow further"
        );
    }
    Ok(())
}

/// Opens an existing database read-only; `Ok(None)` when there is no database file yet.
pub(crate) fn open_read_only(path: &Path) -> anyhow::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    Ok(Some(conn))
}

/// Opens an existing database as immutable: no locks, no WAL, no shared memory, so it works
/// where nothing can be written. It sees what the file holds, not frames still in a WAL: only
/// for reading the state when nothing better opens (a full disk), under the daemon's lock.
pub(crate) fn open_immutable(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        read_only_uri(path, true),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .with_context(|| format!("cannot open database {} as immutable", path.display()))?;
    Ok(conn)
}

/// Runs `read` on a read-only connection to `path`; where none opens for lack of space (SQLite
/// cannot size the shared memory on a full disk), on an immutable one. `Ok(None)` when there is
/// no database yet.
pub(crate) fn read_even_when_full<T>(
    path: &Path,
    read: impl Fn(&Connection) -> rusqlite::Result<T>,
) -> anyhow::Result<Option<T>> {
    let plain = open_read_only(path).and_then(|c| match c {
        Some(c) => Ok(Some(read(&c)?)),
        None => Ok(None),
    });
    let err = match plain {
        Ok(found) => return Ok(found),
        Err(e) => e,
    };
    let full = err
        .chain()
        .filter_map(|c| c.downcast_ref::<rusqlite::Error>())
        .filter_map(rusqlite::Error::sqlite_error_code)
        .any(|code| {
            matches!(
                code,
                rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::DiskFull
            )
        });
    if !full {
        return Err(err);
    }
    tracing::warn!(db = %path.display(), "cannot read the database read-only ({err:#}); reading it as immutable");
    let conn = open_immutable(path)?;
    Ok(Some(read(&conn)?))
}

/// The read-only `file:` URI for a path: the characters URIs reserve and any byte outside printable
/// ASCII are percent-encoded, so no path is mangled.
pub(crate) fn read_only_uri(path: &Path, immutable: bool) -> String {
    let mut escaped = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') || b == b' ' {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02x}"));
        }
    }
    if immutable {
        format!("file:{escaped}?mode=ro&immutable=1")
    } else {
        format!("file:{escaped}?mode=ro")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.db");
        let content = b"these are my notes, not a database\n".repeat(100);
        std::fs::write(&path, &content).unwrap();
        let err = check_is_database(&path).unwrap_err().to_string();
        assert!(err.contains("is not a SQLite database"), "{err}");
        assert!(open_for_writing(&path).is_err(), "SQLite refuses it too");
        assert_eq!(std::fs::read(&path).unwrap(), content);
        assert!(!dir.path().join("notes.db-wal").exists());
    }

    #[test]
    fn a_corrupt_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let conn = open_for_writing(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE filler (x TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO filler SELECT hex(randomblob(100)) FROM n;
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
        }
        verify_integrity(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // Garbage over pages 3..6, keeping the header: a structurally broken database.
        for b in &mut bytes[2 * 4096..6 * 4096] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", verify_integrity(&path).unwrap_err());
        assert!(err.contains("corrupt"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = check_writable(Path::new("/nonexistent-dir/x.db")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    }

    #[test]
    fn an_empty_file_becomes_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.db");
        std::fs::write(&path, b"").unwrap();
        open_for_writing(&path).unwrap();
        check_is_database(&path).unwrap();
    }

    #[test]
    fn read_only_open_of_a_missing_file_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        assert!(open_read_only(&path).unwrap().is_none());
        assert!(!path.exists());
    }
}
