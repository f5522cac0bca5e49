//! The sizer: chooses between a full walk and the watch, runs it, and keeps the last good totals.
//!
//! Past a watch limit, after an event queue overflow, or when inotify is not available, a
//! [`DirSizer`] falls back to full walks, and it rebuilds from a full walk every so often
//! anyway, since some changes raise no event (writes through a hard link elsewhere or through
//! a shared memory map). Nor does a watch answer for a tree that has grown past what a full walk
//! could do within the cap (estimated from the building walk's time per entry): a full walk
//! then shows whether it still can, so a tree too big to walk is reported as such, as before.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::walk::{DEFAULT_WALK_THREADS, deadline_after, walk_until};
use super::watch::{Built, Stale, TreeWatch};
use super::{DirStats, WalkOutcome, WalkReport};

/// Most inotify watches (one per directory) a [`DirSizer`] keeps for one tree by default;
/// bigger trees get full walks. Watches are counted per user across all processes, so one
/// tree must not take many of them.
pub const DEFAULT_WATCH_LIMIT: usize = 8192;

/// How often a [`DirSizer`] replaces its watched totals by a full walk by default, to correct
/// what no event reported.
pub const DEFAULT_REBUILD_EVERY: Duration = Duration::from_secs(600);

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
/// 1000 workspaces (when each tree had its own inotify instance, so that past the 128 a user
/// gets most were walked every cycle), a thread started per walk cost more than the walks: a
/// third of the probes' time.
const INLINE_WALK_UNDER: Duration = Duration::from_millis(2);

/// What a background measurement hands back.
pub(super) struct Measured {
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
    /// What a watch built now ignores.
    ignore: fn(&OsStr) -> bool,
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
            match TreeWatch::build(
                &self.root,
                deadline,
                self.threads,
                self.watch_limit,
                self.ignore,
            ) {
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
    pub(super) reported: HashSet<PathBuf>,
    /// After a walk hits the cap, the next one waits: a tree too big to walk in time would
    /// otherwise be walked back to back forever.
    next_walk_at: Option<Instant>,
    pub(super) running: Option<(PathBuf, mpsc::Receiver<Measured>, Instant)>,
    /// The tree being watched, between measurements.
    pub(super) watch: Option<TreeWatch>,
    /// After a watch was refused (too many directories), none is tried again before this.
    no_watch_until: Option<Instant>,
    /// How long the latest plain (unwatched) walk took, when it completed.
    last_walk: Option<Duration>,
    /// Names of non-directories whose events a watch ignores.
    ignore: fn(&OsStr) -> bool,
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
            ignore: |_| false,
        }
    }

    /// Keeps at most `limit` inotify watches per tree (0: full walks only) and replaces the
    /// watched totals by a full walk every `rebuild_every`.
    pub fn watching(mut self, limit: usize, rebuild_every: Duration) -> Self {
        self.watch_limit = limit;
        self.rebuild_every = rebuild_every;
        self
    }

    /// Has watches drop events on non-directories whose names `ignore` accepts: files this
    /// process creates and removes at once (a writability probe) then cost no re-read. By
    /// default none. A walk still counts such a file if it is there.
    pub(crate) fn ignoring(mut self, ignore: fn(&OsStr) -> bool) -> Self {
        self.ignore = ignore;
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
                ignore: self.ignore,
            };
            if plan.watch_limit == 0
                && plan.watch.is_none()
                && self.last_walk.is_some_and(|took| took < INLINE_WALK_UNDER)
            {
                // A small unwatched tree (past the watch limit, say) is walked
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
    pub(crate) fn timed_out(&self) -> bool {
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
    use crate::collect::dirwalk::tests::{fresh, known, make_tree};
    use crate::collect::dirwalk::walk;
    use std::fs;

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
        // More events than a tree's queue holds between two measurements: it overflows. (The
        // same event over and over is merged, as the kernel does: files are created in two
        // directories in turn, so that no event repeats the one before.)
        fs::create_dir(dir.path().join("e")).unwrap();
        known(&mut sizer, dir.path());
        let built_at = sizer.watch.as_ref().unwrap().built_at;
        for i in 0..crate::watch::TREE_QUEUE_CAP / 2 + 100 {
            fs::File::create(dir.path().join(format!("d/f{i}"))).unwrap();
            fs::File::create(dir.path().join(format!("e/f{i}"))).unwrap();
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
