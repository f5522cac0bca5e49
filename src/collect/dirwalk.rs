//! Directory sizes: walks that never follow symlinks or leave the filesystem, with a time cap,
//! run in the background so a slow walk never holds up a cycle.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use walkdir::WalkDir;

/// Totals of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirStats {
    /// Apparent size of everything that is not a directory, like `du -sb` without directories.
    pub bytes: u64,
    /// Regular files, symlinks and other non-directories, hidden ones included.
    pub files: u64,
    /// Directories below the root.
    pub dirs: u64,
    /// Entries that could not be read (permissions, vanished mid-walk).
    pub errors: u64,
}

impl DirStats {
    /// Size in MB of 1024 × 1024 bytes.
    pub fn megabytes(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0)
    }
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkOutcome {
    Complete(DirStats),
    /// The time cap hit first: these partial totals must not be taken for the real size.
    TimedOut(DirStats),
}

/// Walks `root` until done or until `cap` has passed. Errors only when `root` itself cannot be read.
pub fn walk(root: &Path, cap: Duration) -> io::Result<WalkOutcome> {
    // The root may itself be a symlink to a directory (a workspace on another disk); below
    // it, nothing is followed.
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    std::fs::read_dir(root)?;
    let deadline = Instant::now() + cap;
    let mut stats = DirStats::default();
    let walker = WalkDir::new(root)
        .follow_links(false)
        .same_file_system(true);
    for (n, entry) in walker.into_iter().enumerate() {
        // Checking the clock every entry costs more than the stat itself on warm trees.
        if n % 256 == 0 && Instant::now() >= deadline {
            return Ok(WalkOutcome::TimedOut(stats));
        }
        let entry = match entry {
            Ok(e) => e,
            Err(_) => {
                stats.errors += 1;
                continue;
            }
        };
        if entry.depth() == 0 {
            continue; // The root itself (possibly a symlink to it) is not content.
        }
        if entry.file_type().is_dir() {
            stats.dirs += 1;
            continue;
        }
        stats.files += 1;
        match entry.metadata() {
            Ok(m) => stats.bytes += m.len(),
            Err(_) => stats.errors += 1,
        }
    }
    Ok(WalkOutcome::Complete(stats))
}

/// What [`DirSizer::poll`] knows about a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeReading {
    /// The newest complete totals (possibly from an earlier walk while a new one runs).
    Known(DirStats),
    /// The first walk has not finished yet.
    Pending,
    /// The directory is missing or unreadable.
    Failed(String),
}

/// After a walk hits its cap, the next starts no sooner than this many caps later.
const WALK_REST_FACTOR: u32 = 4;

/// Keeps one background walk per directory and the last good totals.
#[derive(Debug)]
pub struct DirSizer {
    cap: Duration,
    last: Option<DirStats>,
    /// The latest finished walk hit the time cap.
    timed_out: bool,
    /// After a walk hits the cap, the next one waits: a tree too big to walk in time would
    /// otherwise be walked back to back forever.
    next_walk_at: Option<Instant>,
    running: Option<(PathBuf, mpsc::Receiver<io::Result<WalkOutcome>>, Instant)>,
}

impl DirSizer {
    /// A sizer whose walks give up after `cap`.
    pub fn new(cap: Duration) -> Self {
        DirSizer {
            cap,
            last: None,
            timed_out: false,
            next_walk_at: None,
            running: None,
        }
    }

    /// Starts a walk of `root` unless one is running, waits at most `wait` for it, and reports
    /// the freshest complete totals.
    pub fn poll(&mut self, root: &Path, wait: Duration) -> SizeReading {
        if self.running.as_ref().is_some_and(|(p, _, _)| p != root) {
            // The directory changed: the old walk's answer no longer applies.
            self.running = None;
            self.last = None;
        }
        let resting = self.next_walk_at.is_some_and(|t| Instant::now() < t);
        if self.running.is_none() && resting {
            return self.last.map_or(SizeReading::Pending, SizeReading::Known);
        }
        if self.running.is_none() {
            let (tx, rx) = mpsc::channel();
            let (path, cap) = (root.to_path_buf(), self.cap);
            let spawned = std::thread::Builder::new()
                .name("dirwalk".into())
                .spawn(move || {
                    let _ = tx.send(walk(&path, cap));
                });
            if let Err(e) = spawned {
                return SizeReading::Failed(format!("cannot start a walk: {e}"));
            }
            self.running = Some((root.to_path_buf(), rx, Instant::now()));
        }
        let Some((_, rx, started)) = &self.running else {
            return SizeReading::Pending;
        };
        let result = match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A walk stuck in a system call (a hung network mount) never reaches its own
                // deadline check: past the cap, it counts as timed out all the same.
                if started.elapsed() > self.cap + Duration::from_secs(1) {
                    self.timed_out = true;
                }
                return self.last.map_or(SizeReading::Pending, SizeReading::Known);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(io::Error::other("the walk thread died"))
            }
        };
        self.running = None;
        match result {
            Ok(WalkOutcome::Complete(stats)) => {
                self.last = Some(stats);
                self.timed_out = false;
                self.next_walk_at = None;
                SizeReading::Known(stats)
            }
            Ok(WalkOutcome::TimedOut(partial)) => {
                self.timed_out = true;
                self.next_walk_at = Some(Instant::now() + self.cap * WALK_REST_FACTOR);
                tracing::warn!(
                    path = %root.display(),
                    cap_secs = self.cap.as_secs_f64(),
                    files_seen = partial.files,
                    "directory walk hit its time cap; keeping the last complete size"
                );
                self.last.map_or(SizeReading::Pending, SizeReading::Known)
            }
            Err(e) => {
                self.last = None;
                SizeReading::Failed(e.to_string())
            }
        }
    }

    /// True when the latest finished walk gave up at its time cap.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn sizes_count_hidden_files_and_do_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        fs::write(dir.path().join(".hidden"), vec![0u8; 500]).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b"), vec![0u8; 24]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![0u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();
        let WalkOutcome::Complete(s) = walk(dir.path(), Duration::from_secs(10)).unwrap() else {
            panic!("walk timed out")
        };
        assert_eq!(s.files, 5, "{s:?}");
        let link_bytes = fs::symlink_metadata(dir.path().join("link")).unwrap().len()
            + fs::symlink_metadata(dir.path().join("sub/loop"))
                .unwrap()
                .len();
        assert_eq!(s.bytes, 1524 + link_bytes);
        assert_eq!(s.dirs, 1);
    }

    #[test]
    fn a_symlinked_root_is_walked() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("real")).unwrap();
        fs::write(dir.path().join("real/a"), vec![0u8; 10]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let outcome = walk(&dir.path().join("link"), Duration::from_secs(10)).unwrap();
        assert!(
            matches!(outcome, WalkOutcome::Complete(s) if s.files == 1 && s.bytes == 10),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(walk(&dir.path().join("nope"), Duration::from_secs(1)).is_err());
        let mut sizer = DirSizer::new(Duration::from_secs(1));
        let reading = sizer.poll(&dir.path().join("nope"), Duration::from_secs(5));
        assert!(matches!(reading, SizeReading::Failed(_)), "{reading:?}");
    }

    #[test]
    fn a_zero_cap_times_out_and_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..300 {
            fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        assert!(matches!(
            walk(dir.path(), Duration::ZERO).unwrap(),
            WalkOutcome::TimedOut(_)
        ));
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        let good = sizer.poll(dir.path(), Duration::from_secs(10));
        assert!(
            matches!(good, SizeReading::Known(s) if s.files == 300),
            "{good:?}"
        );
        assert!(!sizer.timed_out());
        sizer.cap = Duration::ZERO;
        let again = sizer.poll(dir.path(), Duration::from_secs(10));
        assert_eq!(again, good);
        assert!(sizer.timed_out());
        // Resting after a timed-out walk: no new walk, the last good value again.
        sizer.cap = Duration::from_secs(10);
        sizer.next_walk_at = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(sizer.poll(dir.path(), Duration::from_secs(10)), good);
        assert!(sizer.running.is_none());
    }

    #[test]
    fn a_slow_walk_reports_pending_then_the_result() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"abc").unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        let first = sizer.poll(dir.path(), Duration::ZERO);
        assert!(
            matches!(first, SizeReading::Pending | SizeReading::Known(_)),
            "{first:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let SizeReading::Known(s) = sizer.poll(dir.path(), Duration::from_millis(50)) {
                assert_eq!(s.bytes, 3);
                break;
            }
            assert!(Instant::now() < deadline);
        }
    }
}
