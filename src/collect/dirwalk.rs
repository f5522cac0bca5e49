//! Directory sizes: walks that never follow symlinks or leave the filesystem, with a time cap,
//! run in the background so a slow walk never holds up a cycle, and kept up to date by inotify
//! in between so that measuring an unchanged tree again costs next to nothing.
//!
//! A walk is bound by the kernel: one `statx` per entry (std's `DirEntry::metadata`, relative to
//! the open directory, so each entry is looked up once and its path never resolved again) and
//! one `getdents` per few hundred entries. A single thread therefore runs at `du -sb`'s speed
//! at best; what makes it faster is reading directories on several threads at once. Each
//! worker takes a directory from a shared stack, totals its entries in local counters and
//! hands back the subdirectories it found, so the only shared state is touched once per
//! directory. jwalk (now unmaintained) and dua-core were measured against this and cost more
//! CPU per entry: they hand every entry with its metadata to a consumer thread.
//!
//! Between walks, a [`DirSizer`] keeps a tree watch: one inotify watch per directory and the
//! totals of each directory's own entries. Measuring again reads the pending events, re-reads
//! only the directories they name, and adds up the per-directory totals; with no events it
//! reads nothing at all. Past a watch limit, after an event queue overflow, or when inotify is
//! not available, it falls back to full walks, and it rebuilds from a full walk every so often
//! anyway, since some changes raise no event (writes through a hard link elsewhere or through
//! a shared memory map). Nor does a watch answer for a tree that has grown past what a full walk
//! could do within the cap (estimated from the building walk's time per entry): a full walk
//! then shows whether it still can, so a tree too big to walk is reported as such, as before.
//!
//! A directory that cannot be read (no permission, an I/O error) leaves a hole in the totals:
//! the walk names it, and a [`DirSizer`] then keeps the last complete totals rather than the
//! smaller ones. A watch sees permissions change (`IN_ATTRIB` on the directory and on its
//! parent), so a directory that turns unreadable, or readable again, is re-read at once; a root
//! that turns unreadable drops the watch, and the full walk that follows fails as it would at
//! start.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, DirEntry, ReadDir};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Threads per walk unless the caller says otherwise: this machine has two cores, and a walk
/// spends nearly all its time in the kernel, so more threads than cores only add contention.
pub const DEFAULT_WALK_THREADS: usize = 2;

/// Most inotify watches (one per directory) a [`DirSizer`] keeps for one tree by default;
/// bigger trees get full walks. Watches are counted per user across all processes, so one
/// tree must not take many of them.
pub const DEFAULT_WATCH_LIMIT: usize = 8192;

/// How often a [`DirSizer`] replaces its watched totals by a full walk by default, to correct
/// what no event reported.
pub const DEFAULT_REBUILD_EVERY: Duration = Duration::from_secs(600);

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
    /// The walk went through every directory it could read; [`WalkReport::unreadable`] names
    /// those it could not, whose contents these totals leave out.
    Complete(DirStats),
    /// The time cap hit first: these partial totals must not be taken for the real size.
    TimedOut(DirStats),
}

/// A walk's outcome and the directories it could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkReport {
    pub outcome: WalkOutcome,
    /// Directories (the root included) that could not be listed, or whose entries could not be
    /// looked at: no permission, or an I/O error. What is inside them is not in the totals.
    /// Sorted. Entries that merely vanished mid-walk are counted in `errors` but not named.
    pub unreadable: Vec<PathBuf>,
}

impl WalkReport {
    /// True when the walk ended within its cap and read every directory: its totals are the
    /// tree's.
    pub fn complete(&self) -> bool {
        matches!(self.outcome, WalkOutcome::Complete(_)) && self.unreadable.is_empty()
    }
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
/// (mount points) count as directories but are not entered. A directory below the root that
/// cannot be read counts as a directory and an error; [`walk_report`] names it.
pub fn walk_with(root: &Path, cap: Duration, threads: usize) -> io::Result<WalkOutcome> {
    walk_report(root, cap, threads).map(|report| report.outcome)
}

/// As [`walk_with`], naming the directories that could not be read.
pub fn walk_report(root: &Path, cap: Duration, threads: usize) -> io::Result<WalkReport> {
    walk_until(root, deadline_after(cap), threads)
}

fn walk_until(root: &Path, deadline: Option<Instant>, threads: usize) -> io::Result<WalkReport> {
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
fn cannot_read(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// A cap too large for the clock is no cap.
fn deadline_after(cap: Duration) -> Option<Instant> {
    Instant::now().checked_add(cap)
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// The root's metadata: it may itself be a symlink to a directory (a workspace on another
/// disk), which is followed; below it, nothing is.
fn root_meta(root: &Path) -> io::Result<fs::Metadata> {
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
struct Job {
    path: PathBuf,
    ino: u64,
    /// Numbers the directories of one walk, so that a recorder can tell parents from children
    /// without comparing paths; the walk's root is 0.
    seq: u64,
    parent: Option<u64>,
    /// Already opened (the root, whose failure to open is the walk's error), with its watch.
    opened: Option<(ReadDir, Option<WatchDescriptor>)>,
}

/// How the workers of one walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
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
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
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
fn run_walk(
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
enum Seen {
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
fn look(entry: &DirEntry, root_dev: u64) -> Seen {
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
fn count(seen: Seen, own: &mut DirStats, blocked: &mut bool) -> Option<u64> {
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

/// The watch limit was reached (ours, or the kernel's `fs.inotify.max_user_watches`).
struct OverWatchLimit;

/// Events that can change a directory's totals, or tell that the watch must be rebuilt.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// What a walk that builds a tree watch keeps of each directory.
struct DirRecord {
    job: Job,
    wd: Option<WatchDescriptor>,
    /// Totals of the directory's own entries (and 1 error if it could not be read).
    own: DirStats,
    /// It, or some of its entries, could not be read.
    unreadable: bool,
}

/// Adds a watch before each directory is read and keeps its totals.
struct Recorder<'a> {
    inotify: &'a Inotify,
    limit: usize,
    watches: AtomicUsize,
    records: Mutex<Vec<DirRecord>>,
}

impl<'a> Recorder<'a> {
    fn new(inotify: &'a Inotify, limit: usize, watches: usize) -> Self {
        Recorder {
            inotify,
            limit,
            watches: AtomicUsize::new(watches),
            records: Mutex::new(Vec::new()),
        }
    }

    /// Watches `dir`; `None` when it cannot be (unreadable, vanished: its read will tell).
    fn watch(&self, dir: &Path, root: bool) -> Result<Option<WatchDescriptor>, OverWatchLimit> {
        if self.watches.fetch_add(1, Ordering::Relaxed) >= self.limit {
            return Err(OverWatchLimit);
        }
        let mut mask = watch_mask();
        if !root {
            // Only the root may be a symlink; a directory replaced by one is not followed.
            mask |= AddWatchFlags::IN_DONT_FOLLOW;
        }
        match self.inotify.add_watch(dir, mask) {
            Ok(wd) => Ok(Some(wd)),
            Err(Errno::ENOSPC) => Err(OverWatchLimit),
            Err(_) => {
                self.watches.fetch_sub(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn record(&self, job: Job, wd: Option<WatchDescriptor>, own: DirStats, unreadable: bool) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.push(DirRecord {
            job,
            wd,
            own,
            unreadable,
        });
    }

    fn into_records(self) -> Vec<DirRecord> {
        self.records.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// One watched directory.
#[derive(Debug)]
struct Node {
    path: PathBuf,
    ino: u64,
    /// `None` when the directory could not be watched (unreadable) or its watch went away.
    wd: Option<WatchDescriptor>,
    own: DirStats,
    /// It, or some of its entries, could not be read when it was last read: `own` leaves out
    /// what is inside. A permission change raises `IN_ATTRIB` on it and on its parent, and
    /// either has it read again.
    unreadable: bool,
    parent: Option<u64>,
    /// Same-filesystem subdirectories by name.
    children: HashMap<OsString, u64>,
}

/// Why a tree watch could not bring its totals up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// The deadline passed: the totals are half updated.
    TimedOut,
    /// Events were lost (queue overflow), the root went away, or the watch limit was reached:
    /// only a new full walk can tell.
    Broken,
}

/// A tree's totals kept up to date by inotify: one watch per directory, and the totals of each
/// directory's own entries, so that a change costs a re-read of the directories it touched.
#[derive(Debug)]
struct TreeWatch {
    inotify: Inotify,
    root: PathBuf,
    dev: u64,
    limit: usize,
    nodes: HashMap<u64, Node>,
    by_wd: HashMap<WatchDescriptor, u64>,
    next_id: u64,
    /// Directories named by events since the last update.
    dirty: HashSet<u64>,
    broken: bool,
    built_at: Instant,
    /// Seconds per entry the building walk took: what a full walk of the tree as it is now
    /// would take is estimated from it.
    walk_cost: f64,
    totals: DirStats,
    /// Directories marked unreadable, as of the latest sum: while there are any, `totals` are
    /// not the tree's.
    unreadable: usize,
}

/// What building a tree watch gave.
enum Built {
    Watching(Box<TreeWatch>),
    TimedOut(DirStats),
    /// Over the watch limit, or inotify not available: full walks it is.
    Refused,
    /// The root cannot be watched (unreadable, gone): a full walk tells why.
    Unwatchable,
}

impl TreeWatch {
    /// Walks `root` on `threads` threads, watching every directory, with at most `limit`
    /// watches. Errors only when `root` itself cannot be read.
    fn build(
        root: &Path,
        deadline: Option<Instant>,
        threads: usize,
        limit: usize,
    ) -> io::Result<Built> {
        let started = Instant::now();
        let meta = root_meta(root)?;
        let Ok(inotify) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) else {
            // Out of inotify instances (128 per user by default): full walks still work.
            return Ok(Built::Refused);
        };
        let recorder = Recorder::new(&inotify, limit, 0);
        let wd = match recorder.watch(root, true) {
            Ok(Some(wd)) => wd,
            // Unreadable or gone: a plain walk says which, and the next build may succeed.
            Ok(None) => return Ok(Built::Unwatchable),
            Err(OverWatchLimit) => return Ok(Built::Refused),
        };
        let first = fs::read_dir(root)?;
        let start = Job {
            path: root.to_path_buf(),
            ino: meta.ino(),
            seq: 0,
            parent: None,
            opened: Some((first, Some(wd))),
        };
        let (partial, _, ended) = run_walk(start, meta.dev(), deadline, threads, Some(&recorder));
        match ended {
            Ended::Complete => {}
            Ended::TimedOut => return Ok(Built::TimedOut(partial)),
            Ended::OverWatchLimit => return Ok(Built::Refused),
        }
        let records = recorder.into_records();
        let mut watch = TreeWatch {
            inotify,
            root: root.to_path_buf(),
            dev: meta.dev(),
            limit,
            nodes: HashMap::new(),
            by_wd: HashMap::new(),
            next_id: 0,
            dirty: HashSet::new(),
            broken: false,
            built_at: Instant::now(),
            walk_cost: 0.0,
            totals: DirStats::default(),
            unreadable: 0,
        };
        if watch.insert(records, None).is_none() {
            return Ok(Built::Refused);
        }
        watch.sum();
        watch.walk_cost = started.elapsed().as_secs_f64() / watch.entries() as f64;
        Ok(Built::Watching(Box::new(watch)))
    }

    /// Watches held.
    fn watches(&self) -> usize {
        self.by_wd.len()
    }

    /// Adds the directories a walk recorded; returns the id of the walk's first directory,
    /// which becomes a child of `parent` (`None` if the walk did not record it, which only a
    /// walk that stopped early does).
    fn insert(&mut self, records: Vec<DirRecord>, parent: Option<u64>) -> Option<u64> {
        // A directory moved within the tree keeps its watch: the kernel hands back the same
        // descriptor, so whatever the table says about its old place is stale. Its old node
        // goes, and so does the watch of anything below it that was not seen again.
        let fresh: HashSet<WatchDescriptor> = records.iter().filter_map(|r| r.wd).collect();
        for wd in &fresh {
            if let Some(&old) = self.by_wd.get(wd) {
                self.remove(old, &fresh);
            }
        }
        let mut ids = HashMap::with_capacity(records.len());
        for record in &records {
            ids.insert(record.job.seq, self.next_id);
            self.next_id += 1;
        }
        let mut first = None;
        let mut links = Vec::new();
        for record in records {
            let id = ids[&record.job.seq];
            let node_parent = match record.job.parent.and_then(|seq| ids.get(&seq)) {
                Some(&p) => {
                    let name = record.job.path.file_name().unwrap_or_default().to_owned();
                    links.push((p, name, id));
                    Some(p)
                }
                None => {
                    first = Some(id);
                    parent
                }
            };
            if let Some(wd) = record.wd {
                self.by_wd.insert(wd, id);
            }
            self.nodes.insert(
                id,
                Node {
                    path: record.job.path,
                    ino: record.job.ino,
                    wd: record.wd,
                    own: record.own,
                    unreadable: record.unreadable,
                    parent: node_parent,
                    children: HashMap::new(),
                },
            );
        }
        // Workers record a directory when done with it, so children may come first.
        for (parent, name, id) in links {
            if let Some(parent) = self.nodes.get_mut(&parent) {
                parent.children.insert(name, id);
            }
        }
        first
    }

    /// Forgets the directory `id` and everything below it, and drops their watches except
    /// those in `keep`.
    fn remove(&mut self, id: u64, keep: &HashSet<WatchDescriptor>) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let Some(node) = self.nodes.remove(&id) else {
                continue;
            };
            self.dirty.remove(&id);
            // A descriptor handed to another node since (a directory moved) is not ours to
            // drop any more.
            if let Some(wd) = node.wd
                && self.by_wd.get(&wd) == Some(&id)
            {
                self.by_wd.remove(&wd);
                if !keep.contains(&wd) {
                    // Already gone when the directory was deleted: nothing to undo then.
                    let _ = self.inotify.rm_watch(wd);
                }
            }
            stack.extend(node.children.into_values());
        }
    }

    fn sum(&mut self) {
        let mut totals = DirStats::default();
        let mut unreadable = 0;
        for node in self.nodes.values() {
            totals.add(node.own);
            unreadable += usize::from(node.unreadable);
        }
        self.totals = totals;
        self.unreadable = unreadable;
    }

    /// The directories that could not be read, sorted; empty (and free) when there are none.
    fn unreadable_paths(&self) -> Vec<PathBuf> {
        if self.unreadable == 0 {
            return Vec::new();
        }
        let mut paths: Vec<_> = self
            .nodes
            .values()
            .filter(|n| n.unreadable)
            .map(|n| n.path.clone())
            .collect();
        paths.sort();
        paths
    }

    /// The totals as a walk's report.
    fn report(&self) -> WalkReport {
        WalkReport {
            outcome: WalkOutcome::Complete(self.totals),
            unreadable: self.unreadable_paths(),
        }
    }

    /// Reads pending events and notes the directories they name. Never blocks.
    fn drain(&mut self) {
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => {
                    for event in events {
                        // Our own writability probe leaves nothing behind: its file's
                        // creation and removal change no total.
                        let own_probe = !event.mask.contains(AddWatchFlags::IN_ISDIR)
                            && event
                                .name
                                .as_deref()
                                .is_some_and(super::workspace::is_own_probe_file);
                        if !own_probe {
                            self.note(event.wd, event.mask);
                        }
                    }
                }
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
    }

    fn note(&mut self, wd: WatchDescriptor, mask: AddWatchFlags) {
        if mask.intersects(AddWatchFlags::IN_Q_OVERFLOW | AddWatchFlags::IN_UNMOUNT) {
            self.broken = true;
            return;
        }
        // Events of watches already dropped (a removed subtree) say nothing new.
        let Some(&id) = self.by_wd.get(&wd) else {
            return;
        };
        let parent = self.nodes.get(&id).and_then(|n| n.parent);
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            // The kernel dropped the watch: the directory was deleted. Its parent's listing
            // says what is there now.
            self.by_wd.remove(&wd);
            if let Some(node) = self.nodes.get_mut(&id) {
                node.wd = None;
            }
        }
        if mask.intersects(
            AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF,
        ) {
            match parent {
                Some(parent) => {
                    self.dirty.insert(parent);
                }
                // The root itself went away or moved.
                None => self.broken = true,
            }
            return;
        }
        self.dirty.insert(id);
    }

    /// Files and directories, the root included.
    fn entries(&self) -> u64 {
        self.totals.files + self.totals.dirs + 1
    }

    /// True while the tree is young enough (see [`DirSizer::watching`]) and small enough that a
    /// full walk would still end within `cap`. A watch must not answer for a tree that has
    /// outgrown its walk: a full walk would hit the cap, so a size would no longer be known
    /// for sure, and the periodic rebuild that corrects drift would never end.
    fn trusted(&self, now: Instant, rebuild_every: Duration, cap: Duration) -> bool {
        self.built_at
            .checked_add(rebuild_every)
            .is_none_or(|due| now < due)
            && self.entries() as f64 * self.walk_cost <= cap.as_secs_f64()
    }

    /// True when the totals need no work: no event since the last update.
    fn current(&self) -> bool {
        !self.broken && self.dirty.is_empty()
    }

    /// Brings the totals up to date: re-reads the directories events named since the last
    /// update, and walks new subdirectories.
    fn update(&mut self, deadline: Option<Instant>) -> Result<DirStats, Stale> {
        self.drain();
        while !self.broken {
            let Some(&id) = self.dirty.iter().next() else {
                break;
            };
            self.dirty.remove(&id);
            if past(deadline) {
                return Err(Stale::TimedOut);
            }
            self.reread(id, deadline)?;
        }
        if self.broken {
            return Err(Stale::Broken);
        }
        self.sum();
        Ok(self.totals)
    }

    /// Re-reads one directory's entries and reconciles its subdirectories with the table.
    fn reread(&mut self, id: u64, deadline: Option<Instant>) -> Result<(), Stale> {
        let Some(node) = self.nodes.get(&id) else {
            return Ok(()); // Removed with a subtree since it was named.
        };
        let path = node.path.clone();
        let is_root = node.parent.is_none();
        let mut own = DirStats::default();
        let mut blocked = false;
        let mut subdirs = Vec::new();
        match fs::read_dir(&path) {
            Ok(entries) => {
                for (n, entry) in entries.enumerate() {
                    if (n as u64 + 1).is_multiple_of(CLOCK_EVERY) && past(deadline) {
                        return Err(Stale::TimedOut);
                    }
                    let Ok(entry) = entry else {
                        own.errors += 1;
                        blocked = true;
                        continue;
                    };
                    if let Some(ino) = count(look(&entry, self.dev), &mut own, &mut blocked) {
                        subdirs.push((entry.file_name(), ino));
                    }
                }
            }
            Err(_) if is_root => {
                // The root itself can no longer be read (made unreadable, or gone): a full
                // walk says which, as it would at start.
                self.broken = true;
                return Ok(());
            }
            Err(e) => {
                own.errors += 1;
                blocked = cannot_read(&e);
            }
        }
        let mut old = match self.nodes.get_mut(&id) {
            Some(node) => std::mem::take(&mut node.children),
            None => return Ok(()),
        };
        let mut children = HashMap::with_capacity(subdirs.len());
        for (name, ino) in subdirs {
            let previous = old.remove(&name);
            let kept = previous.filter(|child| {
                // The same directory, still watched; anything else is walked afresh.
                self.nodes
                    .get(child)
                    .is_some_and(|c| c.ino == ino && c.wd.is_some())
            });
            let child = match kept {
                Some(child) => child,
                None => {
                    if let Some(stale) = previous {
                        self.remove(stale, &HashSet::new());
                    }
                    self.walk_new(id, path.join(&name), ino, deadline)?
                }
            };
            children.insert(name, child);
        }
        for (_, gone) in old {
            self.remove(gone, &HashSet::new());
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.own = own;
            node.unreadable = blocked;
            node.children = children;
        }
        Ok(())
    }

    /// Walks a directory new to the table (one thread: the caller is a background thread
    /// already), watching it and everything below it.
    fn walk_new(
        &mut self,
        parent: u64,
        path: PathBuf,
        ino: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, Stale> {
        let recorder = Recorder::new(&self.inotify, self.limit, self.by_wd.len());
        let start = Job {
            path,
            ino,
            seq: 0,
            parent: None,
            opened: None,
        };
        let (_, _, ended) = run_walk(start, self.dev, deadline, 1, Some(&recorder));
        match ended {
            Ended::Complete => match self.insert(recorder.into_records(), Some(parent)) {
                Some(id) => Ok(id),
                None => {
                    self.broken = true;
                    Err(Stale::Broken)
                }
            },
            Ended::TimedOut => Err(Stale::TimedOut),
            Ended::OverWatchLimit => {
                self.broken = true;
                Err(Stale::Broken)
            }
        }
    }
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

/// A plain walk that took less than this last time runs on the measuring thread. Profiled at
/// 1000 workspaces (past the 128 inotify instances a user gets, so most walked every cycle), a
/// thread started per walk cost more than the walks: a third of the probes' time.
const INLINE_WALK_UNDER: Duration = Duration::from_millis(2);

/// What a background measurement hands back.
struct Measured {
    result: io::Result<WalkReport>,
    /// The watch to keep, when the measurement built or updated one.
    watch: Option<TreeWatch>,
    /// No watch could be had (over the limit, no inotify): do not try again for a while.
    refused: bool,
}

/// How to measure a tree in the background.
struct Plan {
    root: PathBuf,
    cap: Duration,
    threads: usize,
    /// 0 when no watch may be built.
    watch_limit: usize,
    watch: Option<TreeWatch>,
}

impl Plan {
    fn run(self) -> Measured {
        let deadline = deadline_after(self.cap);
        if let Some(mut watch) = self.watch {
            match watch.update(deadline) {
                // Grown past what a full walk does within the cap: one is done to see.
                Ok(_) if !watch.trusted(Instant::now(), Duration::MAX, self.cap) => drop(watch),
                Ok(_) => {
                    // Kept even with unreadable parts: their permissions coming back raise
                    // events like any other change.
                    return Measured {
                        result: Ok(watch.report()),
                        watch: Some(watch),
                        refused: false,
                    };
                }
                Err(Stale::TimedOut) => {
                    // Half updated: a later full walk starts over.
                    return Measured {
                        result: Ok(timed_out(watch.totals)),
                        watch: None,
                        refused: false,
                    };
                }
                // Lost track: a new build, in what is left of the cap.
                Err(Stale::Broken) => drop(watch),
            }
        }
        if self.watch_limit > 0 {
            match TreeWatch::build(&self.root, deadline, self.threads, self.watch_limit) {
                Ok(Built::Watching(watch)) => {
                    return Measured {
                        result: Ok(watch.report()),
                        watch: Some(*watch),
                        refused: false,
                    };
                }
                Ok(Built::TimedOut(partial)) => {
                    return Measured {
                        result: Ok(timed_out(partial)),
                        watch: None,
                        refused: false,
                    };
                }
                Ok(built @ (Built::Refused | Built::Unwatchable)) => {
                    return Measured {
                        result: walk_until(&self.root, deadline, self.threads),
                        watch: None,
                        refused: matches!(built, Built::Refused),
                    };
                }
                Err(e) => {
                    return Measured {
                        result: Err(e),
                        watch: None,
                        refused: false,
                    };
                }
            }
        }
        Measured {
            result: walk_until(&self.root, deadline, self.threads),
            watch: None,
            refused: false,
        }
    }
}

/// A walk that hit its cap: what it could not read does not matter, its totals are partial
/// anyway.
fn timed_out(partial: DirStats) -> WalkReport {
    WalkReport {
        outcome: WalkOutcome::TimedOut(partial),
        unreadable: Vec::new(),
    }
}

/// Most unreadable directories one log line names.
const UNREADABLE_LOGGED: usize = 10;

/// Keeps one background walk per directory and the last good totals, and between walks an
/// inotify watch of the tree that makes measuring it again nearly free while it does not change.
#[derive(Debug)]
pub struct DirSizer {
    cap: Duration,
    /// Threads per walk.
    threads: usize,
    /// Most watches per tree; 0 for full walks only.
    watch_limit: usize,
    /// A watch older than this is replaced by a full walk.
    rebuild_every: Duration,
    /// The latest complete totals: of a walk that ended within the cap and read everything.
    last: Option<DirStats>,
    /// The latest finished walk hit the time cap.
    timed_out: bool,
    /// The latest finished walk (or watch update) could not read part of the tree.
    incomplete: bool,
    /// The unreadable directories already named in the log, so that each is named once while
    /// it stays unreadable, not once per walk.
    reported: HashSet<PathBuf>,
    /// After a walk hits the cap, the next one waits: a tree too big to walk in time would
    /// otherwise be walked back to back forever.
    next_walk_at: Option<Instant>,
    running: Option<(PathBuf, mpsc::Receiver<Measured>, Instant)>,
    /// The tree being watched, between measurements.
    watch: Option<TreeWatch>,
    /// After a watch was refused (too many directories), none is tried again before this.
    no_watch_until: Option<Instant>,
    /// How long the latest plain (unwatched) walk took, when it completed.
    last_walk: Option<Duration>,
}

impl DirSizer {
    /// A sizer whose walks give up after `cap` and run on [`DEFAULT_WALK_THREADS`] threads,
    /// with watches as [`DEFAULT_WATCH_LIMIT`] and [`DEFAULT_REBUILD_EVERY`] say.
    pub fn new(cap: Duration) -> Self {
        Self::with_threads(cap, DEFAULT_WALK_THREADS)
    }

    /// A sizer whose walks give up after `cap` and run on `threads` threads.
    pub fn with_threads(cap: Duration, threads: usize) -> Self {
        DirSizer {
            cap,
            threads,
            watch_limit: default_watch_limit(),
            rebuild_every: DEFAULT_REBUILD_EVERY,
            last: None,
            timed_out: false,
            incomplete: false,
            reported: HashSet::new(),
            next_walk_at: None,
            running: None,
            watch: None,
            no_watch_until: None,
            last_walk: None,
        }
    }

    /// Keeps at most `limit` inotify watches per tree (0: full walks only) and replaces the
    /// watched totals by a full walk every `rebuild_every`.
    pub fn watching(mut self, limit: usize, rebuild_every: Duration) -> Self {
        self.watch_limit = limit;
        self.rebuild_every = rebuild_every;
        self
    }

    /// Inotify watches held now.
    pub fn watches(&self) -> usize {
        self.watch.as_ref().map_or(0, TreeWatch::watches)
    }

    /// Starts a walk of `root` unless one is running, waits at most `wait` for it, and reports
    /// the freshest complete totals. A watched tree with no change since the last measurement
    /// is answered at once, without a walk.
    pub fn poll(&mut self, root: &Path, wait: Duration) -> SizeReading {
        if self.running.as_ref().is_some_and(|(p, _, _)| p != root) {
            // The directory changed: the old walk's answer no longer applies.
            self.running = None;
            self.forget();
        }
        if self.watch.as_ref().is_some_and(|w| w.root != root) {
            self.watch = None;
            self.forget();
        }
        let now = Instant::now();
        if self.running.is_none()
            && let Some(watch) = self.watch.as_mut()
            && watch.trusted(now, self.rebuild_every, self.cap)
        {
            watch.drain();
            if watch.current() {
                self.timed_out = false;
                if watch.unreadable == 0 {
                    self.last = Some(watch.totals);
                    return SizeReading::Known(watch.totals);
                }
                // Part of the tree is still unreadable: the last complete totals stand.
                return self.last.map_or(SizeReading::Pending, SizeReading::Known);
            }
        }
        let resting = self.next_walk_at.is_some_and(|t| now < t);
        if self.running.is_none() && resting {
            return self.last.map_or(SizeReading::Pending, SizeReading::Known);
        }
        if self.running.is_none() {
            let watch = self
                .watch
                .take()
                .filter(|w| w.trusted(now, self.rebuild_every, self.cap));
            let may_watch = self.no_watch_until.is_none_or(|t| now >= t);
            let mut plan = Plan {
                root: root.to_path_buf(),
                cap: self.cap,
                threads: self.threads,
                watch_limit: if may_watch { self.watch_limit } else { 0 },
                watch,
            };
            if plan.watch_limit == 0
                && plan.watch.is_none()
                && self.last_walk.is_some_and(|took| took < INLINE_WALK_UNDER)
            {
                // A small unwatched tree (beyond the user's inotify instances, say) is walked
                // right here, on one thread: starting and handing back a thread would cost
                // more than the walk.
                plan.threads = 1;
                let started = Instant::now();
                let measured = plan.run();
                return self.finished(root, measured, started.elapsed());
            }
            let (tx, rx) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("dirwalk".into())
                .spawn(move || {
                    let _ = tx.send(plan.run());
                });
            if let Err(e) = spawned {
                return SizeReading::Failed(format!("cannot start a walk: {e}"));
            }
            self.running = Some((root.to_path_buf(), rx, Instant::now()));
        }
        let Some((_, rx, started)) = &self.running else {
            return SizeReading::Pending;
        };
        let started = *started;
        let measured = match rx.recv_timeout(wait) {
            Ok(measured) => measured,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A walk stuck in a system call (a hung network mount) never reaches its own
                // deadline check: past the cap, it counts as timed out all the same.
                if started.elapsed() > self.cap + Duration::from_secs(1) {
                    self.timed_out = true;
                }
                return self.last.map_or(SizeReading::Pending, SizeReading::Known);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Measured {
                result: Err(io::Error::other("the walk thread died")),
                watch: None,
                refused: false,
            },
        };
        self.running = None;
        self.finished(root, measured, started.elapsed())
    }

    /// Takes in a finished walk (or watch update) that took `took`, and says what it found.
    fn finished(&mut self, root: &Path, measured: Measured, took: Duration) -> SizeReading {
        let plain = measured.watch.is_none();
        self.watch = measured.watch;
        if measured.refused {
            self.no_watch_until = Some(Instant::now() + self.rebuild_every);
        }
        self.last_walk = None;
        let report = match measured.result {
            Ok(report) => report,
            Err(e) => {
                self.forget();
                return SizeReading::Failed(e.to_string());
            }
        };
        match report.outcome {
            WalkOutcome::Complete(stats) => {
                if plain {
                    self.last_walk = Some(took);
                }
                self.timed_out = false;
                self.next_walk_at = None;
                self.note_unreadable(root, report.unreadable, stats);
                if self.incomplete {
                    return self.last.map_or(SizeReading::Pending, SizeReading::Known);
                }
                self.last = Some(stats);
                SizeReading::Known(stats)
            }
            WalkOutcome::TimedOut(partial) => {
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
        }
    }

    /// Notes what a walk that ended within its cap could not read, and names in the log the
    /// directories not named before (and, once, that everything can be read again).
    fn note_unreadable(&mut self, root: &Path, unreadable: Vec<PathBuf>, partial: DirStats) {
        self.incomplete = !unreadable.is_empty();
        if unreadable.is_empty() {
            if !self.reported.is_empty() {
                self.reported.clear();
                tracing::info!(
                    path = %root.display(),
                    files = partial.files,
                    "directory can be read in full again; size and file count are current"
                );
            }
            return;
        }
        let new: Vec<&PathBuf> = unreadable
            .iter()
            .filter(|p| !self.reported.contains(*p))
            .collect();
        if !new.is_empty() {
            let mut named = new
                .iter()
                .take(UNREADABLE_LOGGED)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            if new.len() > UNREADABLE_LOGGED {
                named.push_str(&format!(" and {} more", new.len() - UNREADABLE_LOGGED));
            }
            tracing::warn!(
                path = %root.display(),
                unreadable = %named,
                unreadable_dirs = unreadable.len(),
                files_seen = partial.files,
                "cannot read part of the directory; keeping the last complete size and file count"
            );
        }
        self.reported = unreadable.into_iter().collect();
    }

    /// Forgets everything known of the directory (it failed, or another one is measured).
    fn forget(&mut self) {
        self.last = None;
        self.incomplete = false;
        self.reported.clear();
    }

    /// True when the latest finished walk gave up at its time cap.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// True when the latest finished walk (or watch update) could not read part of the tree:
    /// the size reported is then the last complete one, or none if there never was one.
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }
}

/// [`DEFAULT_WATCH_LIMIT`], or an eighth of the kernel's per-user watch limit when that is
/// smaller: other programs (and other trees) need watches too.
fn default_watch_limit() -> usize {
    fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(DEFAULT_WATCH_LIMIT, |max| DEFAULT_WATCH_LIMIT.min(max / 8))
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

    /// Root reads every directory: as root, runs the test `name` (of this module) again in a
    /// copy of this binary as nobody, where permissions apply, and returns true; the caller
    /// then has nothing left to do. Returns false when permissions apply already.
    fn ran_as_nobody(name: &str) -> bool {
        if !nix::unistd::Uid::effective().is_root() {
            return false;
        }
        use std::os::unix::process::CommandExt;
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("collect::dirwalk::tests::{name}"),
                "--test-threads=1",
            ])
            .env("TMPDIR", "/tmp")
            .uid(65534)
            .gid(65534)
            .output();
        match run {
            Ok(out) => assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "as nobody: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("skipped: cannot run this test as nobody: {e}"),
        }
        true
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn an_unreadable_subdirectory_is_counted_and_reported() {
        if ran_as_nobody("an_unreadable_subdirectory_is_counted_and_reported") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        fs::create_dir(&locked).unwrap();
        fs::write(locked.join("secret"), b"x").unwrap();
        // Listed, but its entries cannot be looked at (no search permission).
        let blind = dir.path().join("blind");
        fs::create_dir(&blind).unwrap();
        fs::write(blind.join("f"), b"12345").unwrap();
        fs::write(dir.path().join("open"), b"abc").unwrap();
        chmod(&locked, 0o000);
        chmod(&blind, 0o444);
        let reports: Vec<_> = [1, 2]
            .into_iter()
            .map(|threads| walk_report(dir.path(), Duration::from_secs(10), threads).unwrap())
            .collect();
        let outcome = walk_with(dir.path(), Duration::from_secs(10), 2).unwrap();
        chmod(&locked, 0o755);
        chmod(&blind, 0o755);
        // `blind/f` counts as the file its listing says it is, of unknown size.
        let want = DirStats {
            bytes: 3,
            files: 2,
            dirs: 2,
            errors: 2,
        };
        assert_eq!(outcome, WalkOutcome::Complete(want));
        for report in reports {
            assert_eq!(report.outcome, WalkOutcome::Complete(want));
            assert_eq!(report.unreadable, vec![blind.clone(), locked.clone()]);
            assert!(!report.complete());
        }
        // Readable again: complete, with the true totals.
        let report = walk_report(dir.path(), Duration::from_secs(10), 2).unwrap();
        assert!(report.complete(), "{report:?}");
        assert_eq!(report.outcome, WalkOutcome::Complete(fresh(dir.path())));
        assert_eq!(fresh(dir.path()).files, 3);
        // A walk whose root cannot be read fails.
        chmod(dir.path(), 0o000);
        let root = walk_report(dir.path(), Duration::from_secs(10), 2);
        chmod(dir.path(), 0o700);
        assert_eq!(
            root.unwrap_err().kind(),
            io::ErrorKind::PermissionDenied,
            "the root is unreadable"
        );
    }

    #[test]
    fn a_watched_directory_that_turns_unreadable_keeps_the_last_complete_totals() {
        if ran_as_nobody("a_watched_directory_that_turns_unreadable_keeps_the_last_complete_totals")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("open"), b"abc").unwrap();
        let sub = root.join("sub");
        fs::create_dir_all(sub.join("deep")).unwrap();
        fs::write(sub.join("a"), vec![0u8; 500]).unwrap();
        fs::write(sub.join("deep/b"), vec![0u8; 700]).unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        let good = known(&mut sizer, root);
        assert_eq!((good.files, good.bytes), (3, 1203));
        assert!(!sizer.incomplete());
        let built_at = sizer.watch.as_ref().unwrap().built_at;
        // Unreadable while watched: the watch sees the permission change, and the last
        // complete totals stand, not the smaller ones.
        chmod(&sub, 0o000);
        assert_eq!(known(&mut sizer, root), good);
        assert!(sizer.incomplete());
        assert!(sizer.reported.contains(&sub), "{:?}", sizer.reported);
        let watch = sizer.watch.as_ref().expect("the watch is kept");
        assert_eq!(watch.unreadable_paths(), vec![sub.clone()]);
        assert_eq!(watch.built_at, built_at);
        // Unchanged since: answered at once, still incomplete.
        assert_eq!(
            sizer.poll(root, Duration::ZERO),
            SizeReading::Known(good),
            "the unchanged incomplete tree"
        );
        assert!(sizer.running.is_none());
        assert!(sizer.incomplete());
        // A change in the part that can be read: still the last complete totals.
        fs::write(root.join("more"), vec![0u8; 40]).unwrap();
        assert_eq!(known(&mut sizer, root), good);
        assert!(sizer.incomplete());
        // Readable again: the true totals at once, from the same watch.
        chmod(&sub, 0o755);
        let now = known(&mut sizer, root);
        assert_eq!(now, fresh(root));
        assert_eq!((now.files, now.bytes), (4, 1243));
        assert!(!sizer.incomplete());
        assert!(sizer.reported.is_empty());
        assert_eq!(sizer.watch.as_ref().unwrap().built_at, built_at);
        assert_eq!(sizer.watches() as u64, now.dirs + 1);
        // Searchable no more (listed, but nothing in it can be looked at): incomplete too.
        chmod(&sub, 0o600);
        assert_eq!(known(&mut sizer, root), now);
        assert!(sizer.incomplete());
        chmod(&sub, 0o755);
        assert_eq!(known(&mut sizer, root), now);
        assert!(!sizer.incomplete());
        // The root itself turns unreadable: a failure, as at start, not a size of 0.
        chmod(root, 0o000);
        let failed = sizer.poll(root, Duration::from_secs(10));
        chmod(root, 0o700);
        assert!(matches!(failed, SizeReading::Failed(_)), "{failed:?}");
        assert_eq!(known(&mut sizer, root), now);
        assert!(sizer.watch.is_some());
    }

    #[test]
    fn a_tree_unreadable_in_part_from_the_start_has_no_size_until_it_can_be_read() {
        if ran_as_nobody(
            "a_tree_unreadable_in_part_from_the_start_has_no_size_until_it_can_be_read",
        ) {
            return;
        }
        for limit in [DEFAULT_WATCH_LIMIT, 0] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let sub = root.join("sub");
            fs::create_dir(&sub).unwrap();
            fs::write(sub.join("a"), vec![0u8; 500]).unwrap();
            fs::write(root.join("open"), b"abc").unwrap();
            chmod(&sub, 0o000);
            let mut sizer =
                DirSizer::new(Duration::from_secs(10)).watching(limit, DEFAULT_REBUILD_EVERY);
            // No complete walk yet: no size at all rather than a part of it.
            for _ in 0..3 {
                assert_eq!(
                    sizer.poll(root, Duration::from_secs(10)),
                    SizeReading::Pending,
                    "watch limit {limit}"
                );
                assert!(sizer.incomplete());
            }
            chmod(&sub, 0o755);
            assert_eq!(known(&mut sizer, root), fresh(root), "watch limit {limit}");
            assert_eq!(fresh(root).files, 2);
            assert!(!sizer.incomplete());
            assert_eq!(sizer.watch.is_some(), limit > 0);
        }
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
        // Full walks only: a watched tree that did not change needs no walk to time out.
        let mut sizer = DirSizer::new(Duration::from_secs(10)).watching(0, DEFAULT_REBUILD_EVERY);
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

    /// The totals a fresh full walk finds.
    fn fresh(root: &Path) -> DirStats {
        match walk_with(root, Duration::from_secs(10), 2).unwrap() {
            WalkOutcome::Complete(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn known(sizer: &mut DirSizer, root: &Path) -> DirStats {
        match sizer.poll(root, Duration::from_secs(10)) {
            SizeReading::Known(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unchanged_watched_tree_is_measured_again_without_a_walk() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let want = make_tree(dir.path(), outside.path());
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        assert_eq!(known(&mut sizer, dir.path()), want);
        // The root and its 15 directories.
        assert_eq!(sizer.watches(), 16);
        let built_at = sizer.watch.as_ref().unwrap().built_at;
        for _ in 0..3 {
            // Answered at once: no background walk is started.
            assert_eq!(
                sizer.poll(dir.path(), Duration::ZERO),
                SizeReading::Known(want)
            );
            assert!(sizer.running.is_none());
        }
        assert_eq!(sizer.watch.as_ref().unwrap().built_at, built_at);
    }

    #[test]
    fn watched_totals_follow_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        make_tree(root, outside.path());
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        assert_eq!(known(&mut sizer, root), fresh(root));
        let built_at = sizer.watch.as_ref().unwrap().built_at;
        type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
        let changes: Vec<Change> = vec![
            (
                "a new file deep down",
                Box::new(|| fs::write(root.join("a/x/new"), vec![0u8; 4321]).unwrap()),
            ),
            (
                "a file grows",
                Box::new(|| {
                    use std::io::Write;
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .open(root.join("b/z/f3"))
                        .unwrap();
                    f.write_all(&[1u8; 999]).unwrap();
                }),
            ),
            (
                "a file is truncated",
                Box::new(|| {
                    fs::File::options()
                        .write(true)
                        .open(root.join(".a/w/.f2"))
                        .unwrap()
                        .set_len(1)
                        .unwrap()
                }),
            ),
            (
                "a file goes",
                Box::new(|| fs::remove_file(root.join("a/x/f1")).unwrap()),
            ),
            (
                "new nested directories",
                Box::new(|| {
                    fs::create_dir_all(root.join("a/x/n1/n2/.n3")).unwrap();
                    fs::write(root.join("a/x/n1/n2/.n3/deep"), vec![0u8; 77]).unwrap();
                    fs::write(root.join("a/x/n1/top"), vec![0u8; 5]).unwrap();
                }),
            ),
            (
                "a directory moves within the tree",
                Box::new(|| fs::rename(root.join("a/x"), root.join("b/moved")).unwrap()),
            ),
            (
                "a file is written in the moved directory",
                Box::new(|| {
                    fs::write(root.join("b/moved/n1/n2/after-move"), vec![0u8; 3]).unwrap()
                }),
            ),
            (
                "a directory moves out",
                Box::new(|| {
                    fs::rename(root.join("b/moved/n1"), outside.path().join("n1")).unwrap()
                }),
            ),
            (
                "a file is written in what moved out",
                Box::new(|| fs::write(outside.path().join("n1/not-ours"), vec![0u8; 100]).unwrap()),
            ),
            (
                "a directory moves in",
                Box::new(|| fs::rename(outside.path().join("n1"), root.join(".a/n1")).unwrap()),
            ),
            (
                "a directory is replaced by another of the same name",
                Box::new(|| {
                    fs::rename(root.join("b/z"), root.join("b/old-z")).unwrap();
                    fs::create_dir(root.join("b/z")).unwrap();
                    fs::write(root.join("b/z/other"), vec![0u8; 11]).unwrap();
                }),
            ),
            (
                "a subtree is deleted",
                Box::new(|| fs::remove_dir_all(root.join("b/old-z")).unwrap()),
            ),
            (
                "a symlink to a directory appears",
                Box::new(|| {
                    std::os::unix::fs::symlink(outside.path(), root.join(".a/link")).unwrap()
                }),
            ),
            (
                "two changes in one directory and one in another",
                Box::new(|| {
                    fs::write(root.join("b/y1"), b"1").unwrap();
                    fs::write(root.join("b/y2"), b"22").unwrap();
                    fs::remove_file(root.join(".a/.y/f3")).unwrap();
                }),
            ),
        ];
        for (what, change) in changes {
            change();
            assert_eq!(known(&mut sizer, root), fresh(root), "after: {what}");
            assert_eq!(
                sizer.watches() as u64,
                fresh(root).dirs + 1,
                "after: {what}"
            );
            assert!(sizer.watch.is_some(), "after: {what}");
        }
        // Every answer came from the watch, never from a rebuild.
        assert_eq!(sizer.watch.as_ref().unwrap().built_at, built_at);
        // And the watch holds no stale directory: a rebuild finds the same table.
        let watch = sizer.watch.as_ref().unwrap();
        let mut paths: Vec<_> = watch.nodes.values().map(|n| n.path.clone()).collect();
        paths.sort();
        let mut rebuilt = DirSizer::new(Duration::from_secs(10));
        known(&mut rebuilt, root);
        let mut want: Vec<_> = rebuilt
            .watch
            .as_ref()
            .unwrap()
            .nodes
            .values()
            .map(|n| n.path.clone())
            .collect();
        want.sort();
        assert_eq!(paths, want);
    }

    #[test]
    fn past_its_watch_limit_a_sizer_walks_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let want = make_tree(dir.path(), outside.path());
        let mut sizer = DirSizer::new(Duration::from_secs(10)).watching(5, DEFAULT_REBUILD_EVERY);
        assert_eq!(known(&mut sizer, dir.path()), want);
        assert_eq!(sizer.watches(), 0);
        assert!(sizer.no_watch_until.is_some());
        // Still right after a change, by full walks.
        fs::write(dir.path().join("b/x/more"), vec![0u8; 10]).unwrap();
        assert_eq!(known(&mut sizer, dir.path()), fresh(dir.path()));
        assert_eq!(sizer.watches(), 0);
        // A limit the tree fits in gives a watch.
        let mut sizer = DirSizer::new(Duration::from_secs(10)).watching(16, DEFAULT_REBUILD_EVERY);
        known(&mut sizer, dir.path());
        assert_eq!(sizer.watches(), 16);
    }

    #[test]
    fn a_small_unwatched_tree_is_walked_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"a").unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(10)).watching(0, DEFAULT_REBUILD_EVERY);
        let files = |reading: SizeReading| match reading {
            SizeReading::Known(stats) => stats.files,
            other => panic!("{other:?}"),
        };
        // The first walk runs on a thread of its own: nothing says yet that the tree is small.
        // (On a loaded machine starting it may take longer than a small walk does: tried again.)
        for _ in 0..100 {
            assert_eq!(files(sizer.poll(dir.path(), Duration::from_secs(10))), 1);
            let took = sizer
                .last_walk
                .expect("a plain walk that completed is timed");
            if took < INLINE_WALK_UNDER {
                break;
            }
        }
        // Then in place: without any wait the answer is this walk's, not the previous one.
        fs::write(dir.path().join("b"), b"b").unwrap();
        assert_eq!(files(sizer.poll(dir.path(), Duration::ZERO)), 2);
        assert!(sizer.running.is_none());
        // A walk that failed says nothing about the next one's size: back to a thread.
        let gone = dir.path().join("gone");
        fs::create_dir(&gone).unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(10)).watching(0, DEFAULT_REBUILD_EVERY);
        for _ in 0..100 {
            files(sizer.poll(&gone, Duration::from_secs(10)));
            if sizer.last_walk.is_some_and(|took| took < INLINE_WALK_UNDER) {
                break;
            }
        }
        fs::remove_dir(&gone).unwrap();
        // (Waited for: on a loaded machine the walk before may have been slow enough that
        // this one runs on a thread after all.)
        assert!(matches!(
            sizer.poll(&gone, Duration::from_secs(10)),
            SizeReading::Failed(_)
        ));
        assert!(sizer.last_walk.is_none());
    }

    #[test]
    fn a_lost_event_queue_or_an_old_watch_means_a_full_walk() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(30));
        known(&mut sizer, dir.path());
        let built_at = sizer.watch.as_ref().unwrap().built_at;
        // More events than the kernel queues (16384 by default): the queue overflows.
        let queued: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .map_or(16384, |s| s.trim().parse().unwrap());
        for i in 0..queued + 100 {
            fs::File::create(dir.path().join(format!("d/f{i}"))).unwrap();
        }
        assert_eq!(known(&mut sizer, dir.path()), fresh(dir.path()));
        let rebuilt_at = sizer.watch.as_ref().unwrap().built_at;
        assert!(rebuilt_at > built_at);
        // A watch older than the rebuild interval is replaced by a full walk too.
        sizer.rebuild_every = Duration::ZERO;
        assert_eq!(known(&mut sizer, dir.path()), fresh(dir.path()));
        assert!(sizer.watch.as_ref().unwrap().built_at > rebuilt_at);
    }

    #[test]
    fn a_watched_tree_grown_past_what_a_full_walk_does_in_time_is_walked_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"a").unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        known(&mut sizer, dir.path());
        let built_at = sizer.watch.as_ref().unwrap().built_at;
        // As if each entry had taken a second to walk: 3 entries, 3 s, within the cap.
        sizer.watch.as_mut().unwrap().walk_cost = 1.0;
        fs::write(dir.path().join("b"), b"b").unwrap();
        assert_eq!(known(&mut sizer, dir.path()), fresh(dir.path()));
        assert_eq!(sizer.watch.as_ref().unwrap().built_at, built_at);
        // 10 more entries: a full walk would take longer than the cap, so one is done to see.
        for i in 0..10 {
            fs::write(dir.path().join(format!("c{i}")), b"c").unwrap();
        }
        assert_eq!(known(&mut sizer, dir.path()), fresh(dir.path()));
        assert!(sizer.watch.as_ref().unwrap().built_at > built_at);
        assert!(sizer.watch.as_ref().unwrap().walk_cost < 1.0);
    }

    #[test]
    fn a_watched_tree_that_vanishes_or_times_out_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/f"), b"abc").unwrap();
        let mut sizer = DirSizer::new(Duration::from_secs(10));
        let good = known(&mut sizer, &root);
        // A change to apply under a zero cap: the update times out, the last good value stays
        // and the half-updated watch is dropped.
        fs::write(root.join("sub/g"), b"defg").unwrap();
        sizer.cap = Duration::ZERO;
        assert_eq!(
            sizer.poll(&root, Duration::from_secs(10)),
            SizeReading::Known(good)
        );
        assert!(sizer.timed_out());
        assert!(sizer.watch.is_none());
        sizer.cap = Duration::from_secs(10);
        sizer.next_walk_at = None;
        assert_eq!(known(&mut sizer, &root), fresh(&root));
        assert!(sizer.watch.is_some());
        // The root goes: no stale totals, a failure.
        fs::remove_dir_all(&root).unwrap();
        let gone = sizer.poll(&root, Duration::from_secs(10));
        assert!(matches!(gone, SizeReading::Failed(_)), "{gone:?}");
        // And comes back.
        fs::create_dir(&root).unwrap();
        assert_eq!(known(&mut sizer, &root), DirStats::default());
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
