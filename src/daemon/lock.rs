//! One daemon per database: an exclusive `flock` on the database file itself, whatever name it
//! is reached by (see [`crate::store::file`]), and one on `<db-path>.lock`, which also records
//! the holder's pid. The kernel releases both even after `kill -9`, so a stale lock file never
//! blocks the next start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::store::file::{DatabaseFile, lock_path};

/// Held for as long as the daemon (or an offline write) runs.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    _path_lock: Flock<File>,
    file: DatabaseFile,
}

impl InstanceLock {
    /// Takes both locks for `db_path` without waiting, recording our pid in the lock file.
    pub(crate) fn acquire(db_path: &Path) -> anyhow::Result<InstanceLock> {
        // The file first, when there is one: a daemon that reached it by another name has
        // another lock file, and a refused start must not leave its own pid in one. A missing
        // file is created only once the lock file is ours too: a second start must not put an
        // empty file where a running daemon's database was just deleted (it recreates it).
        let early = DatabaseFile::lock_existing(db_path)?;
        let path = lock_path(db_path);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        let mut locked = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                bail!(
                    "another health-monitor is already running on {}{who}; stop it with `health-monitor stop` or use another --db-path",
                    db_path.display()
                );
            }
            Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
        };
        // On a full disk even these few bytes may not fit: the pid is for messages only, and
        // `/proc/locks` names the holder as well.
        let recorded = locked
            .set_len(0)
            .and_then(|()| locked.rewind().map(|_| ()))
            .and_then(|()| writeln!(locked, "{}", std::process::id()));
        if let Err(e) = recorded {
            tracing::warn!(lock = %path.display(), "cannot record our pid in the lock file: {e}");
        }
        let file = match early {
            Some(file) => file,
            None => DatabaseFile::lock(db_path)?,
        };
        Ok(InstanceLock {
            _path_lock: locked,
            file,
        })
    }

    /// The lock on the database file, for the writer to keep as long as its connection lives;
    /// the lock file's own lock goes with `self`.
    pub(crate) fn into_database_file(self) -> (PathLock, DatabaseFile) {
        (PathLock(self._path_lock), self.file)
    }
}

/// The lock on `<db-path>.lock` alone, held by the daemon while the writer holds the file's.
#[derive(Debug)]
pub(crate) struct PathLock(#[allow(dead_code)] Flock<File>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::holder_pid;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let first = InstanceLock::acquire(&db).unwrap();
        let err = InstanceLock::acquire(&db).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert_eq!(holder_pid(&db), Some(std::process::id()));
        // Through a symlink the lock file is another one, but the database file is the same.
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let err = InstanceLock::acquire(&link).unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert_eq!(holder_pid(&link), Some(std::process::id()));
        drop(first);
        InstanceLock::acquire(&db).unwrap();
    }
}
