//! The database file itself, as opposed to its name: its identity (device and inode), an
//! exclusive lock on that identity, and whether its path still leads to it.
//!
//! A name is not a file. A symlink or a hard link gives one file a second name, and a cleanup
//! script or an `mv` gives the name to another file while the daemon writes. SQLite finds its WAL
//! and shared-memory files by name (`<path>-wal`, `<path>-shm`), so every one of these splits
//! or mixes databases ("How To Corrupt An SQLite Database File", §2.4 and §2.5). The lock here
//! is taken on the file, so a second daemon through any name is refused, and the writer checks
//! before each batch of writes that the path still names the file it has open.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Which file a name leads to: the same pair for every name of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    /// The device the file lives on (`st_dev`).
    pub dev: u64,
    /// The file's inode number on that device (`st_ino`).
    pub ino: u64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of the file `path` leads to (symlinks followed); `None` when there is none.
    pub(crate) fn of_path(path: &Path) -> io::Result<Option<FileIdentity>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(FileIdentity::of(&meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dev = nix::sys::stat::major(self.dev);
        let min = nix::sys::stat::minor(self.dev);
        write!(f, "device {dev}:{min} inode {}", self.ino)
    }
}

/// What the database path leads to now, compared with the file the daemon has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathState {
    /// The path still names our file.
    Ours,
    /// Nothing is at the path: the file was deleted (or renamed away).
    Missing,
    /// Another file has the path: moved or copied over it, or a symlink pointed elsewhere.
    Replaced(FileIdentity),
}

/// The database file, open and exclusively locked (`flock`) for as long as this lives.
///
/// Keep it alive as long as any SQLite connection to the file is open: closing any descriptor
/// of a file drops every POSIX lock the process holds on it, SQLite's own included. `flock`
/// locks are separate from those (on Linux, for a local file system), so the two never meet.
#[derive(Debug)]
pub struct DatabaseFile {
    path: PathBuf,
    identity: FileIdentity,
    _lock: Flock<File>,
}

impl DatabaseFile {
    /// Opens (creating it empty if need be) and locks the file `path` leads to, without waiting.
    /// Another process holding it is named by its pid, whatever name it opened the file by.
    pub fn lock(path: &Path) -> anyhow::Result<DatabaseFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        Self::lock_open(path, file)
    }

    /// Like [`DatabaseFile::lock`], but creates nothing: `Ok(None)` when there is no file.
    pub(crate) fn lock_existing(path: &Path) -> anyhow::Result<Option<DatabaseFile>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open database {}", path.display()));
            }
        };
        Self::lock_open(path, file).map(Some)
    }

    fn lock_open(path: &Path, file: File) -> anyhow::Result<DatabaseFile> {
        let identity = FileIdentity::of(&file.metadata()?);
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => {
                let who = match flock_holder(identity) {
                    Some(pid) => format!(" (pid {pid})"),
                    None => String::new(),
                };
                bail!(
                    "another health-monitor is already running on {}{who}, perhaps through another \
                     name for the same file (a symlink or a hard link); stop it with \
                     `health-monitor stop` or use another --db-path",
                    path.display()
                );
            }
            Err((_, e)) => bail!("cannot lock database {}: {e}", path.display()),
        };
        Ok(DatabaseFile {
            path: path.to_path_buf(),
            identity,
            _lock: locked,
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's identity.
    pub(crate) fn identity(&self) -> FileIdentity {
        self.identity
    }

    /// Copies the file's bytes, as they are now, to `dest` (created, never replaced) and syncs
    /// it: the file read through the descriptor, so it works whatever its name became. SQLite
    /// cannot be pointed at `/proc/self/fd/N`: it resolves the link to the old name.
    pub(crate) fn copy_bytes_to(&self, dest: &Path) -> io::Result<u64> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let source: &File = &self._lock;
        let mut out = OpenOptions::new().write(true).create_new(true).open(dest)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut offset = 0u64;
        let copied = (|| -> io::Result<u64> {
            loop {
                let n = source.read_at(&mut buf, offset)?;
                if n == 0 {
                    out.sync_all()?;
                    return Ok(offset);
                }
                out.write_all(&buf[..n])?;
                offset += n as u64;
            }
        })();
        if copied.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        copied
    }

    /// Whether the path still leads to this file.
    pub(crate) fn path_state(&self) -> io::Result<PathState> {
        Ok(match FileIdentity::of_path(&self.path)? {
            Some(id) if id == self.identity => PathState::Ours,
            Some(id) => PathState::Replaced(id),
            None => PathState::Missing,
        })
    }
}

/// The other processes holding any lock (POSIX, `flock` or open-file-description) on the file
/// `path` leads to, from `/proc/locks`; empty when there is no such file. For a WAL's
/// shared-memory file, a process in the list has a connection to a database of that name.
pub(crate) fn other_lock_holders(path: &Path) -> Vec<i64> {
    let Ok(Some(identity)) = FileIdentity::of_path(path) else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let ours = i64::from(std::process::id());
    let mut pids: Vec<i64> = parse_locks(&locks, identity)
        .filter(|(_, pid)| *pid != ours)
        .map(|(_, pid)| pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `(kind, pid)` of every lock on the file with `identity` in `/proc/locks` text: lines such
/// as `1: FLOCK  ADVISORY  WRITE 14433 fe:00:10010626 0 EOF` (fs/locks.c prints the device as
/// hex `major:minor`; `->` lines are waiters, not holders; OFD locks show pid -1).
fn parse_locks(locks: &str, identity: FileIdentity) -> impl Iterator<Item = (String, i64)> + '_ {
    let major = nix::sys::stat::major(identity.dev);
    let minor = nix::sys::stat::minor(identity.dev);
    locks.lines().filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || fields[1] == "->" {
            return None;
        }
        let mut place = fields[5].split(':');
        let maj = u64::from_str_radix(place.next()?, 16).ok()?;
        let min = u64::from_str_radix(place.next()?, 16).ok()?;
        let ino: u64 = place.next()?.parse().ok()?;
        (maj == major && min == minor && ino == identity.ino)
            .then(|| {
                Some((
                    format!("{} {}", fields[1], fields[3]),
                    fields[4].parse().ok()?,
                ))
            })
            .flatten()
    })
}

/// The pid holding an exclusive `flock` on the file with `identity`, from `/proc/locks`.
pub(crate) fn flock_holder(identity: FileIdentity) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    parse_flock_holder(&locks, identity)
}

fn parse_flock_holder(locks: &str, identity: FileIdentity) -> Option<u32> {
    parse_locks(locks, identity)
        .find(|(kind, pid)| kind == "FLOCK WRITE" && *pid > 0)
        .and_then(|(_, pid)| u32::try_from(pid).ok())
}

/// The lock file that goes with a database.
pub(crate) fn lock_path(db_path: &Path) -> PathBuf {
    let mut s = db_path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The pid of the daemon holding `db_path` (from `/proc/locks`, else from its lock file), if
/// that process still exists: for messages about a daemon that does not answer (stopped, stuck).
pub(crate) fn holder_pid(db_path: &Path) -> Option<u32> {
    // The kernel's word first: it holds for every name of the file.
    let pid = FileIdentity::of_path(db_path)
        .ok()
        .flatten()
        .and_then(flock_holder)
        .or_else(|| {
            let text = std::fs::read_to_string(lock_path(db_path)).ok()?;
            text.trim().parse::<u32>().ok()
        })?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_of_one_file_is_refused_while_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let first = DatabaseFile::lock(&db).unwrap();
        let symlink = dir.path().join("sym.db");
        std::os::unix::fs::symlink(&db, &symlink).unwrap();
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&db, &hard).unwrap();
        for name in [&db, &symlink, &hard] {
            let err = DatabaseFile::lock(name).unwrap_err().to_string();
            assert!(err.contains("already running"), "{err}");
            // The real kernel's /proc/locks names this process.
            assert!(
                err.contains(&format!("pid {}", std::process::id())),
                "{err}"
            );
        }
        assert_eq!(
            flock_holder(first.identity()),
            Some(std::process::id()),
            "{}",
            std::fs::read_to_string("/proc/locks").unwrap()
        );
        drop(first);
        DatabaseFile::lock(&hard).unwrap();
    }

    #[test]
    fn the_path_state_follows_deletion_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let file = DatabaseFile::lock(&db).unwrap();
        assert_eq!(file.path_state().unwrap(), PathState::Ours);
        let aside = dir.path().join("aside.db");
        std::fs::rename(&db, &aside).unwrap();
        assert_eq!(file.path_state().unwrap(), PathState::Missing);
        std::fs::write(&db, b"").unwrap();
        let other = FileIdentity::of_path(&db).unwrap().unwrap();
        assert_eq!(file.path_state().unwrap(), PathState::Replaced(other));
        std::fs::rename(&aside, &db).unwrap();
        assert_eq!(file.path_state().unwrap(), PathState::Ours);
    }

    #[test]
    fn waiters_and_other_files_in_proc_locks_are_not_holders() {
        let id = FileIdentity {
            dev: nix::sys::stat::makedev(0xfe, 0),
            ino: 10010626,
        };
        let locks = "1: POSIX  ADVISORY  WRITE 10 fe:00:10010626 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 11 fe:00:99 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 12 fe:00:10010626 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 13 fe:00:10010626 0 EOF\n";
        assert_eq!(parse_flock_holder(locks, id), Some(12));
        assert_eq!(parse_flock_holder("", id), None);
        let all: Vec<_> = parse_locks(locks, id).map(|(_, pid)| pid).collect();
        assert_eq!(all, vec![10, 12]);
    }

    #[test]
    fn another_process_with_a_sqlite_connection_shows_as_a_lock_holder_of_the_shm() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        drop(crate::store::open_for_writing(&db).unwrap());
        let shm = dir.path().join("w.db-shm");
        // A real sqlite3 process holding a connection: its locks on the -shm name it.
        let Ok(mut child) = std::process::Command::new("sqlite3")
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
        else {
            eprintln!("skipping: no sqlite3 here");
            return;
        };
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "SELECT count(*) FROM monitors;").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pid = i64::from(child.id());
        while !other_lock_holders(&shm).contains(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "sqlite3's lock never showed"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(stdin);
        child.wait().unwrap();
        assert!(!other_lock_holders(&shm).contains(&pid));
    }
}
