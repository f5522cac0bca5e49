//! Checking a SQLite database someone else owns: read-only, with a busy timeout and a time cap,
//! never writing to it, never leaving a file behind, never holding it open between checks.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

use crate::store::read_only_uri as uri;

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DbCheck {
    /// Opened read-only and `PRAGMA quick_check` said ok.
    pub ok: bool,
    /// How long the whole check took, in milliseconds, including any wait for a lock.
    pub latency_ms: f64,
    /// Why the check failed, in words; `None` when it passed.
    pub problem: Option<String>,
}

/// The daemon's own database (device, inode): never checked here. Opening and closing a raw
/// descriptor of it would drop the writer's POSIX locks (they are per process, per file).
static OWN_DATABASE: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// Checks in this process run one at a time, for the same reason: one check's raw header read
/// must not drop another check's locks on the same file.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Records the daemon's own database, so a workspace that contains it does not check it; again
/// whenever the writer moves to a new file (its database was deleted or replaced).
pub(crate) fn set_own_database(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path)
        && let Ok(mut own) = OWN_DATABASE.lock()
    {
        *own = Some((meta.dev(), meta.ino()));
    }
}

/// True for the daemon's own database (found by `stat`, which opens nothing).
pub(crate) fn is_own_database(path: &Path) -> bool {
    let Some(own) = OWN_DATABASE.lock().ok().and_then(|o| *o) else {
        return false;
    };
    std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == own)
}

/// A sidecar file SQLite uses next to a database.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Opens `path` read-only and runs `PRAGMA quick_check`, giving up after `cap`.
///
/// A WAL database needs its `-shm` file to be read. When nobody has it open (no `-shm`), it is
/// opened `immutable`, which creates nothing; when someone does, the files already exist.
pub(crate) fn check_database(path: &Path, busy_timeout: Duration, cap: Duration) -> DbCheck {
    let _one = crate::util::lock(&ONE_AT_A_TIME);
    let started = Instant::now();
    let result = check(path, busy_timeout, cap);
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(()) => DbCheck {
            ok: true,
            latency_ms,
            problem: None,
        },
        Err(problem) => DbCheck {
            ok: false,
            latency_ms,
            problem: Some(problem),
        },
    }
}

fn check(path: &Path, busy_timeout: Duration, cap: Duration) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot open: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into()); // A FIFO would block the open for ever.
    }
    let mut header = [0u8; 100];
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    file.read_exact(&mut header)
        .map_err(|_| "too short to be a SQLite database".to_string())?;
    drop(file);
    if &header[..16] != b"SQLite format 3\0" {
        return Err("not a SQLite database".into());
    }
    let wal = header[18] == 2 || header[19] == 2;
    let immutable = wal && !sidecar(path, "-shm").exists();
    let mut conn = Connection::open_with_flags(
        uri(path, immutable),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open read-only: {e}"))?;
    conn.busy_timeout(busy_timeout).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + cap;
    conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
        .map_err(|e| e.to_string())?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| {
            if Instant::now() > deadline {
                format!("quick_check took longer than {} s", cap.as_secs_f64())
            } else {
                e.to_string()
            }
        })?;
    if verdict != "ok" {
        return Err(format!("quick_check: {verdict}"));
    }
    Ok(())
}

/// The directories of a workspace searched for databases, relative to it.
const DB_DIRS: [&str; 2] = ["", ".beads"];

/// A listing trusted only while its directory's modification time is older than this, at the
/// time it was made: a file created in the same clock tick as the listing (the kernel's file
/// times are coarse) must not be missed for good.
const LISTING_SETTLE: Duration = Duration::from_secs(2);

/// The SQLite files of one directory as last listed, and what the directory looked like then.
#[derive(Debug, Clone)]
struct Listing {
    ino: u64,
    mtime: SystemTime,
    /// The listing is reusable while the directory still has this inode and mtime.
    settled: bool,
    names: Vec<std::ffi::OsString>,
}

/// Finds a workspace's SQLite files cycle after cycle, listing a directory again only when
/// it changed (its mtime moves when an entry is added, removed or renamed): one `stat` per
/// directory per cycle instead of a listing.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    listings: [Option<Listing>; 2],
}

impl Discovery {
    /// What [`discover`] returns, from the listings kept where the directories did not change.
    pub fn discover(&mut self, workspace: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for (dir, kept) in DB_DIRS.iter().zip(self.listings.iter_mut()) {
            let path = workspace.join(dir);
            let Ok(meta) = std::fs::metadata(&path) else {
                *kept = None;
                continue;
            };
            let (ino, mtime) = (meta.ino(), meta.modified().unwrap_or(UNIX_EPOCH));
            let reuse = kept
                .as_ref()
                .is_some_and(|l| l.settled && l.ino == ino && l.mtime == mtime);
            if !reuse {
                let names = list_databases(&path);
                let settled = SystemTime::now()
                    .duration_since(mtime)
                    .is_ok_and(|age| age >= LISTING_SETTLE);
                *kept = Some(Listing {
                    ino,
                    mtime,
                    settled,
                    names,
                });
            }
            if let Some(listing) = kept {
                found.extend(listing.names.iter().map(|n| Path::new(dir).join(n)));
            }
        }
        finish(workspace, found, extra)
    }
}

/// The names of the SQLite files directly in `dir` (not following symlinks).
fn list_databases(dir: &Path) -> Vec<std::ffi::OsString> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let is_db = Path::new(&name)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "db" | "sqlite" | "sqlite3"));
            // Symlinks are not followed out of the workspace.
            is_db && entry.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|entry| entry.file_name())
        .collect()
}

/// SQLite files in a workspace: `*.db`, `*.sqlite`, `*.sqlite3` at the top level and in
/// `.beads/`, plus the `extra` ones given (relative to the workspace). Paths are relative.
pub fn discover(workspace: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    Discovery::default().discover(workspace, extra)
}

/// Adds the `extra` databases to those found, in order, without the daemon's own.
fn finish(workspace: &Path, mut found: Vec<PathBuf>, extra: &[PathBuf]) -> Vec<PathBuf> {
    for e in extra {
        // `./a.db` and `a.db` are one file.
        let e: PathBuf = e.components().filter(|c| *c != Component::CurDir).collect();
        if !found.contains(&e) {
            found.push(e);
        }
    }
    found.sort();
    // The daemon's own database may live in a workspace: it is watched as the writer's health.
    found.retain(|rel| !is_own_database(&workspace.join(rel)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let bytes = if e.path().is_file() {
                    std::fs::read(e.path()).unwrap()
                } else {
                    Vec::new()
                };
                (e.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect();
        out.sort();
        out
    }

    fn make_db(path: &Path, wal: bool) {
        let conn = Connection::open(path).unwrap();
        if wal {
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        }
        conn.execute_batch(
            "CREATE TABLE t (x TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t SELECT hex(randomblob(50)) FROM n;",
        )
        .unwrap();
    }

    const T: Duration = Duration::from_millis(300);

    #[test]
    fn valid_databases_pass_and_nothing_is_written_or_left_behind() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("beads.db");
            make_db(&db, wal);
            let before = listing(dir.path());
            let check = check_database(&db, T, Duration::from_secs(10));
            assert!(check.ok, "wal={wal}: {check:?}");
            assert!(check.latency_ms > 0.0);
            assert_eq!(listing(dir.path()), before, "wal={wal}");
        }
    }

    #[test]
    fn a_wal_database_with_a_live_writer_is_read_without_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        make_db(&db, true);
        let writer = Connection::open(&db).unwrap();
        writer
            .execute_batch("INSERT INTO t VALUES ('more')")
            .unwrap();
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let before = names(dir.path());
        assert!(before.len() == 3, "db, -wal and -shm: {before:?}");
        let check = check_database(&db, T, Duration::from_secs(10));
        assert!(check.ok, "{check:?}");
        assert_eq!(names(dir.path()), before);
        drop(writer);
    }

    #[test]
    fn uris_escape_what_sqlite_would_misread() {
        let path = Path::new("/w/a b?c#d%e");
        assert_eq!(uri(path, false), "file:/w/a b%3fc%23d%25e?mode=ro");
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/w/\xff.db");
        assert_eq!(
            uri(Path::new(odd), true),
            "file:/w/%ff.db?mode=ro&immutable=1"
        );
    }

    #[test]
    fn corrupt_files_and_strangers_fail() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        make_db(&db, false);
        let mut bytes = std::fs::read(&db).unwrap();
        for b in &mut bytes[4096..3 * 4096] {
            *b = 0x33;
        }
        std::fs::write(&db, &bytes).unwrap();
        let check = check_database(&db, T, Duration::from_secs(10));
        assert!(!check.ok, "{check:?}");
        assert_eq!(std::fs::read(&db).unwrap(), bytes);
        let text = dir.path().join("notes.db");
        std::fs::write(&text, "hello").unwrap();
        assert!(!check_database(&text, T, T).ok);
        assert!(!check_database(&dir.path().join("missing.db"), T, T).ok);
    }

    #[test]
    fn a_locked_database_fails_after_the_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        make_db(&db, false);
        let locker = Connection::open(&db).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let check = check_database(&db, T, Duration::from_secs(10));
        assert!(!check.ok, "{check:?}");
        assert!(check.latency_ms >= 250.0, "{check:?}");
        locker.execute_batch("COMMIT").unwrap();
        assert!(check_database(&db, T, Duration::from_secs(10)).ok);
    }

    /// Sets a directory's modification time, as adding an entry would (or would not).
    fn set_mtime(dir: &Path, at: SystemTime) {
        std::fs::File::open(dir).unwrap().set_modified(at).unwrap();
    }

    #[test]
    fn discovery_lists_a_directory_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let names = |found: Vec<PathBuf>| -> Vec<String> {
            found.iter().map(|p| p.display().to_string()).collect()
        };
        std::fs::write(dir.path().join("a.db"), "").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        set_mtime(dir.path(), old);
        let mut discovery = Discovery::default();
        assert_eq!(names(discovery.discover(dir.path(), &[])), ["a.db"]);
        // An entry appears but the directory looks unchanged: the kept listing answers (so
        // this shows that no listing was made).
        std::fs::write(dir.path().join("b.db"), "").unwrap();
        set_mtime(dir.path(), old);
        assert_eq!(names(discovery.discover(dir.path(), &[])), ["a.db"]);
        // The directory changed: listed again.
        let now = SystemTime::now();
        set_mtime(dir.path(), now);
        assert_eq!(names(discovery.discover(dir.path(), &[])), ["a.db", "b.db"]);
        // A listing of a directory changed just now is not trusted: an entry added in the same
        // clock tick leaves the time as it was, and is still found.
        std::fs::write(dir.path().join("c.db"), "").unwrap();
        set_mtime(dir.path(), now);
        assert_eq!(
            names(discovery.discover(dir.path(), &[])),
            ["a.db", "b.db", "c.db"]
        );
        // `.beads` appearing later is found, and a vanished one forgotten.
        std::fs::create_dir(dir.path().join(".beads")).unwrap();
        std::fs::write(dir.path().join(".beads/beads.db"), "").unwrap();
        assert_eq!(
            names(discovery.discover(dir.path(), &[])),
            [".beads/beads.db", "a.db", "b.db", "c.db"]
        );
        std::fs::remove_dir_all(dir.path().join(".beads")).unwrap();
        assert_eq!(
            names(discovery.discover(dir.path(), &[])),
            ["a.db", "b.db", "c.db"]
        );
    }

    #[test]
    fn discovery_finds_top_level_and_beads_databases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".beads")).unwrap();
        std::fs::create_dir(dir.path().join("deep")).unwrap();
        for f in [
            "a.db",
            "b.sqlite",
            "c.sqlite3",
            "d.txt",
            ".beads/beads.db",
            "deep/x.db",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let found = discover(
            dir.path(),
            &[PathBuf::from("deep/x.db"), PathBuf::from("./a.db")],
        );
        let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                ".beads/beads.db",
                "a.db",
                "b.sqlite",
                "c.sqlite3",
                "deep/x.db"
            ]
        );
    }
}
