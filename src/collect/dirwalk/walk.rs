//! The directory walk: threads take directories from a shared stack and total their entries.
//!
//! A walk is bound by the kernel: one `statx` per entry (std's `DirEntry::metadata`, relative to
//! the open directory, so each entry is looked up once and its path never resolved again) and
//! one `getdents` per few hundred entries. A single thread therefore runs at `du -sb`'s speed
//! at best; what makes it faster is reading directories on several threads at once. Each
//! worker takes a directory from a shared stack, totals its entries in local counters and
//! hands back the subdirectories it found, so the only shared state is touched once per
//! directory. jwalk (now unmaintained) and dua-core were measured against this and cost more
//! CPU per entry: they hand every entry with its metadata to a consumer thread.

use std::fs::{self, DirEntry, ReadDir};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::inotify::WatchDescriptor;

use super::watch::{OverWatchLimit, Recorder};
use super::{DirStats, WalkOutcome, WalkReport};

/// Threads per walk unless the caller says otherwise: this machine has two cores, and a walk
/// spends nearly all its time in the kernel, so more threads than cores only add contention.
pub const DEFAULT_WALK_THREADS: usize = 2;

/// Entries a worker totals between two looks at the clock: reading it for every entry costs
/// more than the stat itself on warm trees.
pub(super) const CLOCK_EVERY: u64 = 256;

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
/// (mount points) count as directories but are not entered. A directory below the root that
/// cannot be read counts as a directory and an error; [`walk_report`] names it.
pub fn walk_with(root: &Path, cap: Duration, threads: usize) -> io::Result<WalkOutcome> {
    walk_report(root, cap, threads).map(|report| report.outcome)
}

/// As [`walk_with`], naming the directories that could not be read.
pub fn walk_report(root: &Path, cap: Duration, threads: usize) -> io::Result<WalkReport> {
    walk_until(root, deadline_after(cap), threads)
}

pub(super) fn walk_until(
    root: &Path,
    deadline: Option<Instant>,
    threads: usize,
) -> io::Result<WalkReport> {
    let meta = root_meta(root)?;
    let first = fs::read_dir(root)?;
    let start = Job {
        path: root.to_path_buf(),
        ino: meta.ino(),
        seq: 0,
        parent: None,
        opened: Some((first, None)),
    };
    let (totals, mut unreadable, ended) = run_walk(start, meta.dev(), deadline, threads, None);
    unreadable.sort();
    let outcome = match ended {
        Ended::Complete => WalkOutcome::Complete(totals),
        // Without a recorder there is no watch limit to reach.
        Ended::TimedOut | Ended::OverWatchLimit => WalkOutcome::TimedOut(totals),
    };
    Ok(WalkReport {
        outcome,
        unreadable,
    })
}

/// True when a directory that could not be opened or looked at is a hole in the totals (no
/// permission, an I/O error), not an entry that went away since it was listed.
pub(super) fn cannot_read(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// A cap too large for the clock is no cap.
pub(super) fn deadline_after(cap: Duration) -> Option<Instant> {
    Instant::now().checked_add(cap)
}

pub(super) fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// The root's metadata: it may itself be a symlink to a directory (a workspace on another
/// disk), which is followed; below it, nothing is.
pub(super) fn root_meta(root: &Path) -> io::Result<fs::Metadata> {
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    Ok(meta)
}

/// A directory for a worker to read.
pub(super) struct Job {
    pub(super) path: PathBuf,
    pub(super) ino: u64,
    /// Numbers the directories of one walk, so that a recorder can tell parents from children
    /// without comparing paths; the walk's root is 0.
    pub(super) seq: u64,
    pub(super) parent: Option<u64>,
    /// Already opened (the root, whose failure to open is the walk's error), with its watch.
    pub(super) opened: Option<(ReadDir, Option<WatchDescriptor>)>,
}

/// How the workers of one walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Complete,
    TimedOut,
    OverWatchLimit,
}

/// Directories waiting to be read, shared by the workers of one walk.
struct Queue {
    jobs: Vec<Job>,
    /// Workers reading a directory: the walk is over when none is and `jobs` is empty.
    busy: usize,
    /// Set by the first worker to see the deadline pass (or the watch limit); everyone stops.
    stopped: Option<Ended>,
}

struct Shared<'a> {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Workers waiting for a directory: a busy one shares what it found at once when any is.
    idle: AtomicUsize,
    next_seq: AtomicU64,
    root_dev: u64,
    deadline: Option<Instant>,
    /// Set when the walk builds a tree watch.
    recorder: Option<&'a Recorder<'a>>,
}

impl Shared<'_> {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Workers do not panic while holding the lock; should one, the counts are still sane.
        crate::util::lock(&self.queue)
    }

    fn past_deadline(&self) -> bool {
        past(self.deadline)
    }

    /// The next directory to read, or `None` when the walk is over or has stopped.
    fn next_job(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.stopped.is_some() {
                return None;
            }
            if let Some(job) = q.jobs.pop() {
                q.busy += 1;
                return Some(job);
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
    fn share(&self, found: &mut Vec<Job>) {
        self.lock().jobs.append(found);
        self.wake.notify_all();
    }

    /// Ends the current directory: hands over what it found, and why to stop if it must.
    fn finish_dir(&self, found: &mut Vec<Job>, stop: Option<Ended>) {
        let mut q = self.lock();
        q.busy -= 1;
        if q.stopped.is_none() {
            q.stopped = stop;
        }
        let wake = !found.is_empty() || q.busy == 0 || q.stopped.is_some();
        q.jobs.append(found);
        drop(q);
        if wake {
            self.wake.notify_all();
        }
    }
}

/// Reads the tree below `start` on `threads` threads (the calling one included) and returns
/// the totals of what it read and the directories it could not read, however it ended.
pub(super) fn run_walk(
    start: Job,
    root_dev: u64,
    deadline: Option<Instant>,
    threads: usize,
    recorder: Option<&Recorder>,
) -> (DirStats, Vec<PathBuf>, Ended) {
    let shared = Shared {
        queue: Mutex::new(Queue {
            jobs: Vec::new(),
            // The calling thread starts out busy with the first directory.
            busy: 1,
            stopped: None,
        }),
        wake: Condvar::new(),
        idle: AtomicUsize::new(0),
        next_seq: AtomicU64::new(start.seq + 1),
        root_dev,
        deadline,
        recorder,
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
        let (mut totals, mut unreadable) = work(&shared, Some(start));
        for helper in helpers {
            match helper.join() {
                Ok((stats, theirs)) => {
                    totals.add(stats);
                    unreadable.extend(theirs);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (totals, unreadable)
    });
    let ended = shared.lock().stopped.unwrap_or(Ended::Complete);
    (totals.0, totals.1, ended)
}

/// One worker: reads directories until none are left (or the walk stops) and returns its
/// share of the totals and of the directories that could not be read. `first` is a directory
/// this worker is already counted busy with.
fn work(shared: &Shared, mut first: Option<Job>) -> (DirStats, Vec<PathBuf>) {
    let mut stats = DirStats::default();
    let mut unreadable = Vec::new();
    let mut found = Vec::new();
    let mut seen = 0u64;
    loop {
        let Some(mut job) = first.take().or_else(|| shared.next_job()) else {
            break;
        };
        let (entries, wd) = match job.opened.take() {
            Some((entries, wd)) => (Ok(entries), wd),
            None => {
                // The watch goes on before the directory is read: a change after the read is
                // then always reported, and one before it is seen by the read.
                let wd = match shared.recorder.map(|r| r.watch(&job.path, false)) {
                    Some(Err(OverWatchLimit)) => {
                        shared.finish_dir(&mut found, Some(Ended::OverWatchLimit));
                        continue;
                    }
                    Some(Ok(wd)) => wd,
                    None => None,
                };
                (fs::read_dir(&job.path), wd)
            }
        };
        let mut own = DirStats::default();
        let mut blocked = false;
        let stop = match entries {
            Ok(entries) => total_dir(
                entries,
                &job,
                shared,
                &mut own,
                &mut blocked,
                &mut found,
                &mut seen,
            ),
            Err(e) => {
                // Unreadable or vanished since its parent was read: counted as a directory
                // already, its contents are unknown.
                own.errors += 1;
                blocked = cannot_read(&e);
                shared.past_deadline().then_some(Ended::TimedOut)
            }
        };
        stats.add(own);
        if blocked {
            unreadable.push(job.path.clone());
        }
        if let Some(recorder) = shared.recorder {
            recorder.record(job, wd, own, blocked);
        }
        shared.finish_dir(&mut found, stop);
    }
    (stats, unreadable)
}

/// What one directory entry adds to its directory's totals.
pub(super) enum Seen {
    File {
        bytes: u64,
    },
    Dir {
        ino: u64,
        same_fs: bool,
    },
    /// Vanished between listing and stat, or could not be looked at (`unreadable`: no search
    /// permission on its directory, an I/O error): it still counts as what the listing said
    /// it was.
    Unknown {
        dir: bool,
        unreadable: bool,
    },
}

/// One stat per entry, relative to the open directory and never following a symlink; its type
/// decides the rest, so a filesystem without types in its directory entries costs no second
/// call.
pub(super) fn look(entry: &DirEntry, root_dev: u64) -> Seen {
    match entry.metadata() {
        Ok(meta) if meta.is_dir() => Seen::Dir {
            ino: meta.ino(),
            same_fs: meta.dev() == root_dev,
        },
        Ok(meta) => Seen::File { bytes: meta.len() },
        Err(e) => Seen::Unknown {
            dir: entry.file_type().is_ok_and(|t| t.is_dir()),
            unreadable: cannot_read(&e),
        },
    }
}

/// Adds what one entry is to `own`, and sets `blocked` when it could not be looked at; returns
/// the inode of a subdirectory to enter.
pub(super) fn count(seen: Seen, own: &mut DirStats, blocked: &mut bool) -> Option<u64> {
    match seen {
        Seen::File { bytes } => {
            own.files += 1;
            own.bytes += bytes;
            None
        }
        // A mount point counts as a directory, but what is mounted there is not ours.
        Seen::Dir { ino, same_fs } => {
            own.dirs += 1;
            same_fs.then_some(ino)
        }
        Seen::Unknown { dir, unreadable } => {
            own.errors += 1;
            *blocked |= unreadable;
            if dir {
                own.dirs += 1;
            } else {
                own.files += 1;
            }
            None
        }
    }
}

/// Adds one directory's entries to `own` and its same-filesystem subdirectories to `found`,
/// and sets `blocked` when some of them could not be read. Returns why to stop when the
/// deadline passed before the directory was done.
fn total_dir(
    entries: ReadDir,
    dir: &Job,
    shared: &Shared,
    own: &mut DirStats,
    blocked: &mut bool,
    found: &mut Vec<Job>,
    seen: &mut u64,
) -> Option<Ended> {
    if shared.past_deadline() {
        return Some(Ended::TimedOut);
    }
    for entry in entries {
        *seen += 1;
        if seen.is_multiple_of(CLOCK_EVERY) && shared.past_deadline() {
            return Some(Ended::TimedOut);
        }
        let Ok(entry) = entry else {
            // The listing itself failed part way (an I/O error).
            own.errors += 1;
            *blocked = true;
            continue;
        };
        if let Some(ino) = count(look(&entry, shared.root_dev), own, blocked) {
            found.push(Job {
                path: entry.path(),
                ino,
                seq: shared.next_seq.fetch_add(1, Ordering::Relaxed),
                parent: Some(dir.seq),
                opened: None,
            });
            if shared.idle.load(Ordering::Relaxed) > 0 {
                shared.share(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::dirwalk::tests::{known, make_tree};
    use crate::collect::dirwalk::{DirSizer, SizeReading};
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
        // Watched, the mount point is not: what happens behind it is not ours.
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        let before = known(&mut sizer, dir.path());
        assert_eq!(sizer.watches(), 1);
        fs::write(mnt.join("sub/more"), vec![0u8; 500]).unwrap();
        assert_eq!(
            sizer.poll(dir.path(), Duration::ZERO),
            SizeReading::Known(before)
        );
        // Walked from inside, the other filesystem is the root's own.
        let inside = walk_with(&mnt, Duration::from_secs(10), 2).unwrap();
        assert!(
            matches!(inside, WalkOutcome::Complete(s) if s.files == 2 && s.bytes == 1500),
            "{inside:?}"
        );
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
}
