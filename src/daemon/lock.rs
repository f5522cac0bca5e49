//! One daemon per database: an exclusive `flock` on `<db-path>.lock`, released by the kernel even
//! after `kill -9`, so a stale lock file never blocks the next start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held for as long as the daemon (or an offline write) runs.
#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
}

/// The lock file that goes with a database.
pub fn lock_path(db_path: &Path) -> PathBuf {
    let mut s = db_path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl InstanceLock {
    /// Takes the lock for `db_path` without waiting, recording our pid in it.
    pub fn acquire(db_path: &Path) -> anyhow::Result<InstanceLock> {
        let path = lock_path(db_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
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
        locked.set_len(0)?;
        locked.rewind()?;
        writeln!(locked, "{}", std::process::id())?;
        Ok(InstanceLock { _file: locked })
    }
}

/// The pid a running daemon recorded in the lock file of `db_path`, if that process still
/// exists: for messages about a daemon that does not answer (stopped, stuck).
pub fn holder_pid(db_path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(lock_path(db_path)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let first = InstanceLock::acquire(&db).unwrap();
        let err = InstanceLock::acquire(&db).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert_eq!(holder_pid(&db), Some(std::process::id()));
        drop(first);
        InstanceLock::acquire(&db).unwrap();
    }
}
