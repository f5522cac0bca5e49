//! Directory sizes: walks that never follow symlinks or leave the filesystem, with a time cap,
//! run in the background so a slow walk never holds up a cycle.
//!
//! A walk is bound by the kernel: one `statx` per entry (std's `DirEntry::metadata`, relative to
//! the open directory, so each entry is looked up once and its path never resolved again) and
//! one `getdents` per few hundred entries. A single thread therefore runs at `du -sb`'s speed
//! at best; what makes it faster is reading directories on several threads at once. Each
//! worker takes a directory from a shared stack, totals its entries in local counters and
//! hands back the subdirectories it found, so the only shared state is touched once per
//! directory. jwalk (now unmaintained) and dua-core were measured against this and cost more
//! CPU per entry: they hand every entry with its metadata to a consumer thread.

use std::fs::{self, ReadDir};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// Threads per walk unless the caller says otherwise: this machine has two cores, and a walk
/// spends nearly all its time in the kernel, so more threads than cores only add contention.
pub const DEFAULT_WALK_THREADS: usize = 2;

/// Entries a worker totals between two looks at the clock: reading it for every entry costs
/// more than the stat itself on warm trees.
const CLOCK_EVERY: u64 = 256;

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

    fn add(&mut self, other: DirStats) {
        self.bytes += other.bytes;
        self.files += other.files;
        self.dirs += other.dirs;
        self.errors += other.errors;
    }
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkOutcome {
    Complete(DirStats),
    /// The time cap hit first: these partial totals must not be taken for the real size.
    TimedOut(DirStats),
}

/// Walks `root` on [`DEFAULT_WALK_THREADS`] threads until done or until `cap` has passed.
/// Errors only when `root` itself cannot be read.
pub fn walk(root: &Path, cap: Duration) -> io::Result<WalkOutcome> {
    walk_with(root, cap, DEFAULT_WALK_THREADS)
}

/// Walks `root` on `threads` threads (the calling one included; 0 counts as 1) until done or
/// until `cap` has passed. Errors only when `root` itself cannot be read.
///
/// Hidden entries count like any other; symlinks count as non-directories of their own
/// (link-text) size and are never followed; directories on another filesystem than the root's
/// (mount points) count as directories but are not entered.
pub fn walk_with(root: &Path, cap: Duration, threads: usize) -> io::Result<WalkOutcome> {
    // The root may itself be a symlink to a directory (a workspace on another disk); below
    // it, nothing is followed.
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let first = fs::read_dir(root)?;
    let shared = Shared {
        queue: Mutex::new(Queue {
            dirs: Vec::new(),
            // The calling thread starts out busy with the root.
            busy: 1,
            timed_out: false,
        }),
        wake: Condvar::new(),
        idle: AtomicUsize::new(0),
        root_dev: meta.dev(),
        // A cap too large for the clock is no cap.
        deadline: Instant::now().checked_add(cap),
    };
    let totals = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads.max(1))
            .filter_map(|_| {
                // A helper that cannot be started leaves its share to the others.
                std::thread::Builder::new()
                    .name("dirwalk-worker".into())
                    .spawn_scoped(scope, || work(&shared, None))
                    .ok()
            })
            .collect();
        let mut totals = work(&shared, Some(first));
        for helper in helpers {
            match helper.join() {
                Ok(stats) => totals.add(stats),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        totals
    });
    Ok(if shared.lock().timed_out {
        WalkOutcome::TimedOut(totals)
    } else {
        WalkOutcome::Complete(totals)
    })
}

/// Directories waiting to be read, shared by the workers of one walk.
struct Queue {
    dirs: Vec<PathBuf>,
    /// Workers reading a directory: the walk is over when none is and `dirs` is empty.
    busy: usize,
    /// Set by the first worker to see the deadline pass; everyone stops.
    timed_out: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Workers waiting for a directory: a busy one shares what it found at once when any is.
    idle: AtomicUsize,
    root_dev: u64,
    deadline: Option<Instant>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Workers do not panic while holding the lock; should one, the counts are still sane.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The next directory to read, or `None` when the walk is over or has timed out.
    fn next_dir(&self) -> Option<PathBuf> {
        let mut q = self.lock();
        loop {
            if q.timed_out {
                return None;
            }
            if let Some(dir) = q.dirs.pop() {
                q.busy += 1;
                return Some(dir);
            }
            if q.busy == 0 {
                return None;
            }
            self.idle.fetch_add(1, Ordering::Relaxed);
            q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            self.idle.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hands over subdirectories found so far, while the current directory is still read.
    fn share(&self, found: &mut Vec<PathBuf>) {
        self.lock().dirs.append(found);
        self.wake.notify_all();
    }

    /// Ends the current directory: hands over what it found, and the deadline if it passed.
    fn finish_dir(&self, found: &mut Vec<PathBuf>, timed_out: bool) {
        let mut q = self.lock();
        q.busy -= 1;
        q.timed_out |= timed_out;
        let wake = !found.is_empty() || q.busy == 0 || q.timed_out;
        q.dirs.append(found);
        drop(q);
        if wake {
            self.wake.notify_all();
        }
    }
}

/// One worker: reads directories until none are left (or the deadline passes) and returns its
/// share of the totals. `first` is a directory this worker is already counted busy with.
fn work(shared: &Shared, mut first: Option<ReadDir>) -> DirStats {
    let mut stats = DirStats::default();
    let mut found = Vec::new();
    let mut seen = 0u64;
    loop {
        let entries = match first.take() {
            Some(entries) => Ok(entries),
            None => match shared.next_dir() {
                Some(dir) => fs::read_dir(dir),
                None => break,
            },
        };
        let timed_out = match entries {
            Ok(entries) => !total_dir(entries, shared, &mut stats, &mut found, &mut seen),
            Err(_) => {
                // Unreadable or vanished since its parent was read: counted as a directory
                // already, its contents are unknown.
                stats.errors += 1;
                shared.past_deadline()
            }
        };
        shared.finish_dir(&mut found, timed_out);
    }
    stats
}

/// Adds one directory's entries to `stats` and its same-filesystem subdirectories to `found`.
/// Returns false when the deadline passed before the directory was done.
fn total_dir(
    entries: ReadDir,
    shared: &Shared,
    stats: &mut DirStats,
    found: &mut Vec<PathBuf>,
    seen: &mut u64,
) -> bool {
    if shared.past_deadline() {
        return false;
    }
    for entry in entries {
        *seen += 1;
        if seen.is_multiple_of(CLOCK_EVERY) && shared.past_deadline() {
            return false;
        }
        let Ok(entry) = entry else {
            stats.errors += 1;
            continue;
        };
        // One stat per entry, relative to the open directory and never following a symlink;
        // its type decides the rest, so a filesystem without types in its directory entries
        // costs no second call.
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => {
                stats.dirs += 1;
                // A mount point counts as a directory, but what is mounted there is not ours.
                if meta.dev() == shared.root_dev {
                    found.push(entry.path());
                    if shared.idle.load(Ordering::Relaxed) > 0 {
                        shared.share(found);
                    }
                }
            }
            Ok(meta) => {
                stats.files += 1;
                stats.bytes += meta.len();
            }
            Err(_) => {
                // Vanished between listing and stat: it still counts as what the listing said.
                stats.errors += 1;
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stats.dirs += 1;
                } else {
                    stats.files += 1;
                }
            }
        }
    }
    true
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
    /// Threads per walk.
    threads: usize,
    last: Option<DirStats>,
    /// The latest finished walk hit the time cap.
    timed_out: bool,
    /// After a walk hits the cap, the next one waits: a tree too big to walk in time would
    /// otherwise be walked back to back forever.
    next_walk_at: Option<Instant>,
    running: Option<(PathBuf, mpsc::Receiver<io::Result<WalkOutcome>>, Instant)>,
}

impl DirSizer {
    /// A sizer whose walks give up after `cap` and run on [`DEFAULT_WALK_THREADS`] threads.
    pub fn new(cap: Duration) -> Self {
        Self::with_threads(cap, DEFAULT_WALK_THREADS)
    }

    /// A sizer whose walks give up after `cap` and run on `threads` threads.
    pub fn with_threads(cap: Duration, threads: usize) -> Self {
        DirSizer {
            cap,
            threads,
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
            let (path, cap, threads) = (root.to_path_buf(), self.cap, self.threads);
            let spawned = std::thread::Builder::new()
                .name("dirwalk".into())
                .spawn(move || {
                    let _ = tx.send(walk_with(&path, cap, threads));
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

    /// A tree of 3 × 4 directories (one hidden at each level), each holding a few files of
    /// known sizes (one hidden), a symlink out of the tree and one back to the root. Returns
    /// the totals a correct walk must find.
    fn make_tree(root: &Path, outside: &Path) -> DirStats {
        let mut want = DirStats::default();
        let link_len = |p: &Path| fs::symlink_metadata(p).unwrap().len();
        for a in ["a", ".a", "b"] {
            fs::create_dir(root.join(a)).unwrap();
            want.dirs += 1;
            for b in ["x", ".y", "z", "w"] {
                let dir = root.join(a).join(b);
                fs::create_dir(&dir).unwrap();
                want.dirs += 1;
                for (i, name) in ["f1", ".f2", "f3"].iter().enumerate() {
                    let len = 100 * i + a.len() + b.len();
                    fs::write(dir.join(name), vec![b'x'; len]).unwrap();
                    want.files += 1;
                    want.bytes += len as u64;
                }
                std::os::unix::fs::symlink(outside, dir.join("out")).unwrap();
                std::os::unix::fs::symlink(root, dir.join(".back")).unwrap();
                want.files += 2;
                want.bytes += link_len(&dir.join("out")) + link_len(&dir.join(".back"));
            }
        }
        want
    }

    #[test]
    fn every_thread_count_finds_the_same_totals() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![0u8; 100_000]).unwrap();
        let want = make_tree(dir.path(), outside.path());
        assert_eq!((want.dirs, want.files), (15, 60));
        for threads in [0, 1, 2, 4, 16] {
            let outcome = walk_with(dir.path(), Duration::from_secs(10), threads).unwrap();
            assert_eq!(outcome, WalkOutcome::Complete(want), "{threads} threads");
        }
        let mut sizer = DirSizer::with_threads(Duration::from_secs(10), 3);
        assert_eq!(
            sizer.poll(dir.path(), Duration::from_secs(10)),
            SizeReading::Known(want)
        );
    }

    #[test]
    fn a_mount_point_counts_as_a_directory_but_is_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        fs::write(dir.path().join("mine"), vec![0u8; 7]).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        // Unmounted however the test ends.
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&mnt);
        fs::create_dir(mnt.join("sub")).unwrap();
        fs::write(mnt.join("sub/theirs"), vec![0u8; 1000]).unwrap();
        for threads in [1, 2] {
            let outcome = walk_with(dir.path(), Duration::from_secs(10), threads).unwrap();
            let want = DirStats {
                bytes: 7,
                files: 1,
                dirs: 1,
                errors: 0,
            };
            assert_eq!(outcome, WalkOutcome::Complete(want), "{threads} threads");
        }
        // Walked from inside, the other filesystem is the root's own.
        let inside = walk_with(&mnt, Duration::from_secs(10), 2).unwrap();
        assert!(
            matches!(inside, WalkOutcome::Complete(s) if s.files == 1 && s.bytes == 1000),
            "{inside:?}"
        );
    }

    #[test]
    fn an_unreadable_subdirectory_is_counted_and_reported() {
        use std::os::unix::fs::PermissionsExt;
        if nix::unistd::Uid::effective().is_root() {
            // Root reads every directory: this test runs again in a copy of this binary as
            // nobody, where permissions apply.
            use std::os::unix::process::CommandExt;
            let run = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "collect::dirwalk::tests::an_unreadable_subdirectory_is_counted_and_reported",
                    "--test-threads=1",
                ])
                .env("TMPDIR", "/tmp")
                .uid(65534)
                .gid(65534)
                .output();
            match run {
                Ok(out) => assert!(
                    out.status.success()
                        && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                    "as nobody: {}\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("skipped: cannot run this test as nobody: {e}"),
            }
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("locked")).unwrap();
        fs::write(dir.path().join("locked/secret"), b"x").unwrap();
        fs::write(dir.path().join("open"), b"abc").unwrap();
        fs::set_permissions(dir.path().join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let outcome = walk_with(dir.path(), Duration::from_secs(10), 2).unwrap();
        fs::set_permissions(dir.path().join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
        let want = DirStats {
            bytes: 3,
            files: 1,
            dirs: 1,
            errors: 1,
        };
        assert_eq!(outcome, WalkOutcome::Complete(want));
    }

    #[test]
    fn a_cap_reached_mid_walk_gives_partial_totals() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let full = make_tree(dir.path(), outside.path());
        for threads in [1, 2] {
            let WalkOutcome::TimedOut(partial) =
                walk_with(dir.path(), Duration::ZERO, threads).unwrap()
            else {
                panic!("a zero cap must time out");
            };
            assert!(partial.files < full.files, "{partial:?}");
        }
        // A deadline seen by one worker stops the others: the walk returns promptly even
        // with more workers than directories.
        let started = Instant::now();
        let outcome = walk_with(dir.path(), Duration::ZERO, 16).unwrap();
        assert!(matches!(outcome, WalkOutcome::TimedOut(_)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
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
