//! The inotify tree watch: one watch per directory and its own entries' totals, kept by events.
//!
//! Between walks, a [`DirSizer`](super::DirSizer) keeps a tree watch: one inotify watch per
//! directory and the totals of each directory's own entries. Measuring again reads the pending
//! events, re-reads only the directories they name, and adds up the per-directory totals; with
//! no events it reads nothing at all. Every tree's watches live on the daemon's one inotify
//! instance ([`TreeEvents`]), so a fleet of trees is not limited by the 128 instances a user
//! gets.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};

use super::walk::{CLOCK_EVERY, Ended, Job, cannot_read, count, look, past, root_meta, run_walk};
use super::{DirStats, WalkOutcome, WalkReport};
use crate::watch::TreeEvents;

/// The watch limit was reached (ours, or the kernel's `fs.inotify.max_user_watches`).
pub(super) struct OverWatchLimit;

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
pub(super) struct Recorder<'a> {
    inotify: &'a TreeEvents,
    limit: usize,
    watches: AtomicUsize,
    records: Mutex<Vec<DirRecord>>,
}

impl<'a> Recorder<'a> {
    fn new(inotify: &'a TreeEvents, limit: usize, watches: usize) -> Self {
        Recorder {
            inotify,
            limit,
            watches: AtomicUsize::new(watches),
            records: Mutex::new(Vec::new()),
        }
    }

    /// Watches `dir`; `None` when it cannot be (unreadable, vanished: its read will tell).
    pub(super) fn watch(
        &self,
        dir: &Path,
        root: bool,
    ) -> Result<Option<WatchDescriptor>, OverWatchLimit> {
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

    pub(super) fn record(
        &self,
        job: Job,
        wd: Option<WatchDescriptor>,
        own: DirStats,
        unreadable: bool,
    ) {
        let mut records = crate::util::lock(&self.records);
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
pub(super) enum Stale {
    /// The deadline passed: the totals are half updated.
    TimedOut,
    /// Events were lost (queue overflow), the root went away, or the watch limit was reached:
    /// only a new full walk can tell.
    Broken,
}

/// A tree's totals kept up to date by inotify: one watch per directory, and the totals of each
/// directory's own entries, so that a change costs a re-read of the directories it touched.
#[derive(Debug)]
pub(super) struct TreeWatch {
    inotify: TreeEvents,
    pub(super) root: PathBuf,
    dev: u64,
    limit: usize,
    nodes: HashMap<u64, Node>,
    by_wd: HashMap<WatchDescriptor, u64>,
    next_id: u64,
    /// Directories named by events since the last update.
    dirty: HashSet<u64>,
    broken: bool,
    pub(super) built_at: Instant,
    /// Seconds per entry the building walk took: what a full walk of the tree as it is now
    /// would take is estimated from it.
    pub(super) walk_cost: f64,
    pub(super) totals: DirStats,
    /// Directories marked unreadable, as of the latest sum: while there are any, `totals` are
    /// not the tree's.
    pub(super) unreadable: usize,
}

/// What building a tree watch gave.
pub(super) enum Built {
    Watching(Box<TreeWatch>),
    TimedOut(DirStats),
    /// Over the watch limit, or inotify not available: full walks it is.
    Refused,
    /// The root cannot be watched (unreadable, gone): a full walk tells why.
    Unwatchable,
}

impl TreeWatch {
    /// Walks `root` on `threads` threads, watching every directory, with at most `limit`
    /// watches; events on non-directories named as `ignore` accepts are dropped. Errors only
    /// when `root` itself cannot be read.
    pub(super) fn build(
        root: &Path,
        deadline: Option<Instant>,
        threads: usize,
        limit: usize,
        ignore: fn(&OsStr) -> bool,
    ) -> io::Result<Built> {
        let started = Instant::now();
        let meta = root_meta(root)?;
        let Some(inotify) = TreeEvents::new(ignore) else {
            // No inotify instance for the daemon: full walks still work.
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
    pub(super) fn watches(&self) -> usize {
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
                    self.inotify.rm_watch(wd);
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
    pub(super) fn unreadable_paths(&self) -> Vec<PathBuf> {
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
    pub(super) fn report(&self) -> WalkReport {
        WalkReport {
            outcome: WalkOutcome::Complete(self.totals),
            unreadable: self.unreadable_paths(),
        }
    }

    /// Reads pending events and notes the directories they name. Never blocks. (Files the
    /// caller said to ignore, such as our own writability probe, were left out as they came.)
    pub(super) fn drain(&mut self) {
        let changes = self.inotify.take();
        if changes.overflowed {
            self.broken = true;
            return;
        }
        for (wd, mask) in changes.events {
            self.note(wd, mask);
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

    /// True while the tree is young enough (see [`DirSizer::watching`](super::DirSizer::watching)) and small enough that a
    /// full walk would still end within `cap`. A watch must not answer for a tree that has
    /// outgrown its walk: a full walk would hit the cap, so a size would no longer be known
    /// for sure, and the periodic rebuild that corrects drift would never end.
    pub(super) fn trusted(&self, now: Instant, rebuild_every: Duration, cap: Duration) -> bool {
        self.built_at
            .checked_add(rebuild_every)
            .is_none_or(|due| now < due)
            && self.entries() as f64 * self.walk_cost <= cap.as_secs_f64()
    }

    /// True when the totals need no work: no event since the last update.
    pub(super) fn current(&self) -> bool {
        !self.broken && self.dirty.is_empty()
    }

    /// Brings the totals up to date: re-reads the directories events named since the last
    /// update, and walks new subdirectories.
    pub(super) fn update(&mut self, deadline: Option<Instant>) -> Result<DirStats, Stale> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::dirwalk::tests::{fresh, known, make_tree};
    use crate::collect::dirwalk::{DirSizer, SizeReading};
    use std::fs;

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
}
