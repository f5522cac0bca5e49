//! Kernel notifications that bring a measurement forward: an agent's root process ending (its
//! pidfd), a heartbeat's state or a pid file changing, a workspace root deleted, moved or made
//! unreadable, a new line in Gas Town's events file (inotify). One thread waits on all of them
//! (see [`kernel`]) and pokes the collector each concerns; the collector measures at once,
//! out of its cycle. Polling stays the backstop: whatever the kernel cannot tell (a kernel
//! without pidfds, a process not ours to see, a directory that cannot be watched) is measured
//! at the next cycle as before.
//!
//! Probes say what they want watched after each measurement ([`Watches::want`]), on their own
//! thread: adding an inotify watch resolves a path, which may block on a hung mount, and must
//! not do so on the event loop.

mod kernel;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::inotify::WatchDescriptor;
use serde::{Deserialize, Serialize};

pub use kernel::QUEUE_CAP as TREE_QUEUE_CAP;
use kernel::{Interest, Kind, kernel};
pub use tree::{TreeChanges, TreeEvents};

/// Why a measurement was brought forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The agent's root process ended (its pidfd became readable).
    ProcessExited,
    /// A watched file (a pid file, an events file) was created, rewritten or removed.
    FileChanged,
    /// A heartbeat was rewritten with another state.
    Heartbeat,
    /// A workspace root was deleted, moved, or its permissions changed.
    RootChanged,
    /// The kernel's event queue overflowed: events were lost, so everything is measured again.
    Overflow,
}

impl Cause {
    /// The cause as the log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ProcessExited => "process exited",
            Cause::FileChanged => "file changed",
            Cause::Heartbeat => "heartbeat state changed",
            Cause::RootChanged => "root deleted, moved or changed permissions",
            Cause::Overflow => "inotify queue overflow",
        }
    }
}

/// Tells a collector to measure now. Called on the kernel thread: it must only send.
pub type Poke = Arc<dyn Fn(Cause) + Send + Sync>;

/// One path a probe wants to hear about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathWatch {
    /// A file that appears, is rewritten or disappears (a pid file).
    File(PathBuf),
    /// A file written to at all (an appended events file).
    Appended(PathBuf),
    /// A heartbeat file: told when its `state` changes.
    Heartbeat(PathBuf),
    /// A directory deleted, moved or made unreadable (a workspace root).
    Root(PathBuf),
}

impl PathWatch {
    fn kind(&self) -> Kind {
        match self {
            PathWatch::File(_) => Kind::File,
            PathWatch::Appended(_) => Kind::Appended,
            PathWatch::Heartbeat(_) => Kind::Heartbeat,
            PathWatch::Root(_) => Kind::Root,
        }
    }

    fn path(&self) -> &Path {
        match self {
            PathWatch::File(p)
            | PathWatch::Appended(p)
            | PathWatch::Heartbeat(p)
            | PathWatch::Root(p) => p,
        }
    }
}

/// What a probe wants watched, as of its latest measurement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The agent's root process, as `(pid, start time in clock ticks after boot)`: the start
    /// time tells the process from a later one given the same pid.
    pub process: Option<(u32, u64)>,
    /// Paths.
    pub paths: Vec<PathWatch>,
}

/// One path watched for a probe.
struct HeldPath {
    /// Its subscriber id in the kernel's table: one per path, since two of a probe's paths may
    /// share a directory (a heartbeat inside the workspace root) and so a descriptor.
    id: u64,
    interest: Arc<Interest>,
    /// `None` while the directory cannot be watched (missing): tried again at each measurement.
    wd: Option<WatchDescriptor>,
}

/// The kernel watches a probe holds; dropped with the probe, they go.
#[derive(Default)]
pub struct Watches {
    poke: Option<Poke>,
    paths: HashMap<PathWatch, HeldPath>,
    /// The process asked for last, and its token while its pidfd is waited on.
    process: Option<((u32, u64), Option<u64>)>,
}

impl HeldPath {
    /// Gives the path's watch back to the kernel's table.
    fn release(&self, kernel: &kernel::Kernel) {
        if let Some(wd) = self.wd {
            kernel.remove(self.id, wd);
        }
        kernel.forget(self.id);
    }
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("attached", &self.poke.is_some())
            .field("paths", &self.paths.keys().collect::<Vec<_>>())
            .field("process", &self.process)
            .finish()
    }
}

impl Watches {
    /// Whom to poke. Until attached, [`Watches::want`] watches nothing (events are off).
    pub fn attach(&mut self, poke: Poke) {
        self.poke = Some(poke);
    }

    /// Brings the watches in line with `wanted`: new ones added, old ones dropped, lost ones
    /// (their directory went away) tried again. Cheap when nothing changed.
    pub fn want(&mut self, wanted: &Wanted) {
        let (Some(poke), Some(kernel)) = (self.poke.clone(), kernel()) else {
            return;
        };
        self.want_process(kernel, &poke, wanted.process);
        self.paths.retain(|watch, held| {
            let keep = wanted.paths.contains(watch)
                && held.wd.is_some()
                && !held.interest.lost.load(Ordering::Relaxed);
            if !keep {
                held.release(kernel);
            }
            keep
        });
        for watch in &wanted.paths {
            if self.paths.contains_key(watch) {
                continue;
            }
            let path = watch.path();
            let (dir, name) = match watch.kind() {
                Kind::Root => (path, None),
                _ => match (path.parent(), path.file_name()) {
                    (Some(dir), Some(name)) => (dir, Some(name.to_owned())),
                    _ => continue,
                },
            };
            let interest = Arc::new(Interest {
                kind: watch.kind(),
                name,
                path: path.to_path_buf(),
                poke: poke.clone(),
                last_state: Mutex::new(None),
                lost: AtomicBool::new(false),
            });
            // A heartbeat's state now, which a rewrite is compared with.
            if interest.kind == Kind::Heartbeat {
                let _ = interest.state_changed();
            }
            // A directory that is not there (yet) is tried again at the next measurement.
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let id = kernel.next_id();
            let wd = kernel.add_interest(id, dir, &interest).ok();
            self.paths
                .insert(watch.clone(), HeldPath { id, interest, wd });
        }
    }

    fn want_process(&mut self, kernel: &kernel::Kernel, poke: &Poke, process: Option<(u32, u64)>) {
        if self.process.map(|(p, _)| p) == process {
            return;
        }
        if let Some((_, Some(token))) = self.process.take() {
            kernel.unwait(token);
        }
        let Some((pid, start_ticks)) = process else {
            return;
        };
        let token = match open_pidfd(pid, start_ticks) {
            Ok(fd) => match kernel.wait_exit(fd, poke.clone()) {
                Ok(token) => Some(token),
                Err(e) => {
                    tracing::debug!(pid, "cannot wait on the pidfd: {e}; the process is polled");
                    None
                }
            },
            // Ended (or its pid reused) since it was measured: measure again now.
            Err(PidfdError::Gone) => {
                poke(Cause::ProcessExited);
                None
            }
            Err(PidfdError::Unsupported(e)) => {
                note_no_pidfd(&e);
                None
            }
        };
        self.process = Some(((pid, start_ticks), token));
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        let Some(kernel) = kernel() else {
            return;
        };
        for held in self.paths.values() {
            held.release(kernel);
        }
        if let Some((_, Some(token))) = self.process {
            kernel.unwait(token);
        }
    }
}

/// Why no pidfd could be had.
#[derive(Debug)]
enum PidfdError {
    /// The process has ended, or its pid belongs to another process now.
    Gone,
    /// No pidfds here (a kernel before 5.3, a seccomp filter) or none left (file limit).
    Unsupported(std::io::Error),
}

/// A pidfd for `pid`, checked to be the process that started at `start_ticks`: opened first,
/// then checked, so a pid reused in between is caught (the pidfd then names the newcomer, whose
/// start time differs).
fn open_pidfd(pid: u32, start_ticks: u64) -> Result<std::os::fd::OwnedFd, PidfdError> {
    let raw = i32::try_from(pid).map_err(|_| PidfdError::Gone)?;
    let target = rustix::process::Pid::from_raw(raw).ok_or(PidfdError::Gone)?;
    let fd = match rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Err(PidfdError::Gone),
        Err(e) => return Err(PidfdError::Unsupported(e.into())),
    };
    match crate::collect::process::read_stat(pid) {
        Some(stat) if stat.is_running() && stat.start_ticks == start_ticks => Ok(fd),
        _ => Err(PidfdError::Gone),
    }
}

/// Logs once per daemon that processes are polled because pidfds are not available.
fn note_no_pidfd(e: &std::io::Error) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "pidfd_open failed ({e}): agents' processes are polled at each cycle instead of \
             being told of at once (said once)"
        );
    }
}

/// What the kernel notifications have done, for the status document and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchStats {
    /// The kernel thread runs (false: inotify or epoll could not be had; everything is polled).
    pub available: bool,
    /// inotify watch descriptors held (shared by everyone watching the same directory).
    pub watches: usize,
    /// Agents' root processes held by a pidfd.
    pub pidfds: usize,
    /// inotify events read.
    pub events: u64,
    /// Times the kernel's inotify queue overflowed.
    pub overflows: u64,
    /// Measurements asked for out of cycle.
    pub pokes: u64,
    /// Root processes whose end a pidfd told.
    pub exits: u64,
}

/// The kernel notifications' figures now. Starts the kernel thread if it has not started.
pub fn stats() -> WatchStats {
    let Some(kernel) = kernel() else {
        return WatchStats::default();
    };
    let (watches, pidfds) = kernel.held();
    let c = &kernel.counters;
    WatchStats {
        available: true,
        watches,
        pidfds,
        events: c.events.load(Ordering::Relaxed),
        overflows: c.overflows.load(Ordering::Relaxed),
        pokes: c.pokes.load(Ordering::Relaxed),
        exits: c.exits.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Watches attached to a channel, and the channel's end.
    fn watched() -> (Watches, mpsc::Receiver<Cause>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let mut watches = Watches::default();
        watches.attach(Arc::new(move |cause| {
            let _ = crate::util::lock(&tx).send(cause);
        }));
        (watches, rx)
    }

    fn next(rx: &mpsc::Receiver<Cause>) -> Option<Cause> {
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// Nothing comes within a while (for what must not poke).
    fn quiet(rx: &mpsc::Receiver<Cause>) -> bool {
        rx.recv_timeout(Duration::from_millis(300)).is_err()
    }

    fn beat(path: &Path, state: &str) {
        std::fs::write(
            path,
            format!(r#"{{"timestamp":"2026-12-02T10:00:00Z","state":"{state}"}}"#),
        )
        .unwrap();
    }

    #[test]
    fn a_heartbeat_pokes_when_its_state_changes_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("a1.json");
        beat(&hb, "working");
        let (mut watches, rx) = watched();
        watches.want(&Wanted {
            process: None,
            paths: vec![PathWatch::Heartbeat(hb.clone())],
        });
        beat(&hb, "working");
        std::fs::write(dir.path().join("other.json"), "{}").unwrap();
        assert!(quiet(&rx), "the same state, or another file, pokes no one");
        beat(&hb, "stuck");
        assert_eq!(next(&rx), Some(Cause::Heartbeat));
        // Replaced by rename, as some writers do.
        let tmp = dir.path().join(".a1.json.tmp");
        beat(&tmp, "exiting");
        std::fs::rename(&tmp, &hb).unwrap();
        assert_eq!(next(&rx), Some(Cause::Heartbeat));
        std::fs::remove_file(&hb).unwrap();
        assert_eq!(next(&rx), Some(Cause::Heartbeat), "gone is a change too");
        drop(watches);
        beat(&hb, "stuck");
        assert!(quiet(&rx), "dropped watches tell nothing");
    }

    #[test]
    fn a_pid_file_pokes_when_it_appears_changes_or_goes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a1.pid");
        let (mut watches, rx) = watched();
        watches.want(&Wanted {
            process: None,
            paths: vec![PathWatch::File(file.clone())],
        });
        std::fs::write(&file, "42\n").unwrap();
        assert_eq!(next(&rx), Some(Cause::FileChanged));
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
        std::fs::remove_file(&file).unwrap();
        assert_eq!(next(&rx), Some(Cause::FileChanged));
    }

    #[test]
    fn a_root_made_unreadable_removed_or_moved_pokes_and_is_watched_again_once_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let (mut watches, rx) = watched();
        let wanted = Wanted {
            process: None,
            paths: vec![PathWatch::Root(root.clone())],
        };
        watches.want(&wanted);
        std::fs::write(root.join("file"), "x").unwrap();
        assert!(quiet(&rx), "what happens inside a root is not a root event");
        // Made unreadable (root still reads it, but its permissions changed).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert_eq!(next(&rx), Some(Cause::RootChanged));
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(next(&rx), Some(Cause::RootChanged));
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
        // Measured meanwhile: the root is missing, so it is not watched...
        watches.want(&wanted);
        // ...until it is back.
        std::fs::create_dir(&root).unwrap();
        watches.want(&wanted);
        std::fs::rename(&root, dir.path().join("elsewhere")).unwrap();
        assert_eq!(next(&rx), Some(Cause::RootChanged));
    }

    #[test]
    fn two_watchers_of_one_directory_each_keep_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let (hb, pid) = (dir.path().join("a.json"), dir.path().join("a.pid"));
        beat(&hb, "working");
        let (mut beats, beats_rx) = watched();
        beats.want(&Wanted {
            process: None,
            paths: vec![PathWatch::Heartbeat(hb.clone())],
        });
        // The same directory, another mask: the kernel hands back the same descriptor.
        let (mut files, files_rx) = watched();
        files.want(&Wanted {
            process: None,
            paths: vec![PathWatch::File(pid.clone())],
        });
        beat(&hb, "stuck");
        assert_eq!(next(&beats_rx), Some(Cause::Heartbeat));
        std::fs::write(&pid, "1\n").unwrap();
        assert_eq!(next(&files_rx), Some(Cause::FileChanged));
        // One leaves; the other still hears.
        drop(files);
        beat(&hb, "working");
        assert_eq!(next(&beats_rx), Some(Cause::Heartbeat));
    }

    #[test]
    fn a_probes_paths_in_one_directory_are_each_told() {
        // A heartbeat inside the workspace root: one directory, one descriptor, two paths.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        let (hb, pid) = (root.join(".heartbeat"), root.join(".pid"));
        beat(&hb, "working");
        let (mut watches, rx) = watched();
        watches.want(&Wanted {
            process: None,
            paths: vec![
                PathWatch::Root(root.clone()),
                PathWatch::Heartbeat(hb.clone()),
                PathWatch::File(pid.clone()),
            ],
        });
        beat(&hb, "stuck");
        assert_eq!(next(&rx), Some(Cause::Heartbeat));
        std::fs::write(&pid, "1\n").unwrap();
        assert_eq!(next(&rx), Some(Cause::FileChanged));
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
        std::fs::rename(&root, dir.path().join("elsewhere")).unwrap();
        assert_eq!(next(&rx), Some(Cause::RootChanged));
    }

    #[test]
    fn a_root_process_ending_pokes_and_a_reused_pid_is_caught_at_once() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id();
        let ticks = crate::collect::process::read_stat(pid).unwrap().start_ticks;
        let (mut watches, rx) = watched();
        watches.want(&Wanted {
            process: Some((pid, ticks)),
            paths: Vec::new(),
        });
        assert!(stats().pidfds >= 1, "{:?}", stats());
        assert!(quiet(&rx));
        child.kill().unwrap();
        assert_eq!(next(&rx), Some(Cause::ProcessExited));
        child.wait().unwrap();
        // A start time that is not the process's: another process has the pid, poked at once.
        let other = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let (mut watches, rx) = watched();
        watches.want(&Wanted {
            process: Some((other.id(), ticks.wrapping_sub(1))),
            paths: Vec::new(),
        });
        assert_eq!(next(&rx), Some(Cause::ProcessExited));
        let mut other = other;
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_tree_reads_its_events_in_order_and_overflows_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let tree = TreeEvents::new(|name| name == "ignored").unwrap();
        let mask = nix::sys::inotify::AddWatchFlags::IN_CREATE;
        let wa = tree.add_watch(&a, mask).unwrap();
        let wb = tree.add_watch(&b, mask).unwrap();
        std::fs::write(a.join("1"), "").unwrap();
        std::fs::write(a.join("2"), "").unwrap();
        std::fs::write(a.join("ignored"), "").unwrap();
        std::fs::write(b.join("1"), "").unwrap();
        let changes = tree.take();
        assert!(!changes.overflowed);
        // Read at once (not left to the kernel thread), the repeat merged, the ignored left out.
        let wds: Vec<_> = changes.events.iter().map(|(wd, _)| *wd).collect();
        assert_eq!(wds, [wa, wb]);
        for i in 0..TREE_QUEUE_CAP / 2 + 10 {
            std::fs::write(a.join(format!("x{i}")), "").unwrap();
            std::fs::write(b.join(format!("x{i}")), "").unwrap();
        }
        let changes = tree.take();
        assert!(changes.overflowed && changes.events.is_empty());
        assert!(!tree.take().overflowed, "said once");
        tree.rm_watch(wa);
        std::fs::write(a.join("after"), "").unwrap();
        assert!(tree.take().events.is_empty());
    }
}
