//! The one thread that waits on the kernel: an `epoll` set holding one inotify instance and
//! every watched agent's pidfd, and the table that routes each event to whoever asked for it.
//!
//! Why one instance: a user gets 128 inotify instances by default, so an instance per tree or
//! per agent runs out on a fleet. Many subscribers may watch the same directory; the kernel
//! hands them one watch descriptor, so the table keeps, per descriptor, who watches it and for
//! which events, adds masks with `IN_MASK_ADD` (the kernel would otherwise replace the mask)
//! and removes the kernel's watch only when its last subscriber leaves.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

use super::{Cause, Poke};
use crate::util::lock;

/// After a wake-up the thread waits this long before the next, so that a burst of events (a
/// build writing thousands of files in a watched tree) costs at most 100 wake-ups a second: the
/// kernel queues, and merges repeats of the same event, meanwhile. It is also the most a
/// notification is delayed by.
const GATHER: Duration = Duration::from_millis(10);

/// Events a tree's queue holds between two of its reads before it counts as overflowed, like
/// the kernel's own queue (`fs.inotify.max_queued_events`, 16384 by default).
pub const QUEUE_CAP: usize = 16_384;

/// The epoll token of the inotify instance; pidfds get the others.
const INOTIFY_TOKEN: u64 = 0;

/// What the kernel thread has seen, for the status document.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) events: AtomicU64,
    pub(super) overflows: AtomicU64,
    pub(super) pokes: AtomicU64,
    pub(super) exits: AtomicU64,
}

/// Events a tree watch has not read yet.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) events: Vec<(WatchDescriptor, AddWatchFlags)>,
    /// Events were lost (the kernel's queue, or this one, overflowed): only a rebuild can tell.
    pub(super) overflowed: bool,
}

/// `IN_MASK_ADD` (linux/inotify.h), which nix does not name: adds to a watch's mask instead
/// of replacing it, so another subscriber's events are not taken away.
fn in_mask_add() -> AddWatchFlags {
    AddWatchFlags::from_bits_retain(0x2000_0000)
}

/// Which events of a path a probe cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A file created, rewritten (closed after writing, or renamed over) or removed.
    File,
    /// Any write to a file, as well as its creation or removal (an appended log).
    Appended,
    /// A heartbeat file whose state changed: read at each rewrite, poked when its `state` is
    /// not what it was.
    Heartbeat,
    /// A directory deleted, moved, or its permissions changed.
    Root,
}

impl Kind {
    /// What the kernel is asked for: a file's events come from its directory (writers replace
    /// files by rename), a root's from itself.
    fn mask(self) -> AddWatchFlags {
        use AddWatchFlags as F;
        let named = F::IN_CLOSE_WRITE | F::IN_MOVED_TO | F::IN_MOVED_FROM | F::IN_DELETE;
        match self {
            Kind::File => named | F::IN_CREATE | F::IN_ONLYDIR,
            Kind::Appended => named | F::IN_CREATE | F::IN_MODIFY | F::IN_ONLYDIR,
            Kind::Heartbeat => named | F::IN_ONLYDIR,
            Kind::Root => F::IN_DELETE_SELF | F::IN_MOVE_SELF | F::IN_ATTRIB | F::IN_ONLYDIR,
        }
    }
}

/// One probe's interest in one path.
pub(super) struct Interest {
    pub(super) kind: Kind,
    /// The file's name in the watched directory; `None` for a root (events on itself).
    pub(super) name: Option<OsString>,
    /// The file itself (a heartbeat is read at each rewrite).
    pub(super) path: PathBuf,
    pub(super) poke: Poke,
    /// A heartbeat's state as last read: `None` before any read, `Some(None)` when unreadable.
    pub(super) last_state: Mutex<Option<Option<String>>>,
    /// The kernel dropped the watch (the directory went away): added again at the next
    /// measurement.
    pub(super) lost: std::sync::atomic::AtomicBool,
}

impl Interest {
    /// Whether `event` (on the watched directory) is about this interest.
    fn wants(&self, event: &InotifyEvent) -> bool {
        if !event
            .mask
            .intersects(self.kind.mask() | AddWatchFlags::IN_IGNORED)
        {
            return false;
        }
        match (&self.name, &event.name) {
            (Some(want), Some(got)) => want == got,
            // A root's own events carry no name; the watched directory going away concerns
            // every interest in it.
            (None, None) => true,
            (_, None) => event.mask.contains(AddWatchFlags::IN_IGNORED),
            (None, Some(_)) => false,
        }
    }

    /// A heartbeat's state now; the interest is poked only when it changed.
    pub(super) fn state_changed(&self) -> bool {
        if self.kind != Kind::Heartbeat {
            return true;
        }
        let now = crate::collect::agent::read_heartbeat(&self.path, chrono::Utc::now())
            .ok()
            .map(|hb| hb.state.unwrap_or_else(|| "working".into()));
        let mut last = lock(&self.last_state);
        let changed = last.as_ref() != Some(&now);
        *last = Some(now);
        changed
    }
}

/// Who receives a descriptor's events.
#[derive(Clone)]
enum Sink {
    /// A tree watch, which reads its queue when it measures; `ignore` names files whose events
    /// change none of its totals.
    Tree(Arc<Mutex<Queue>>, fn(&OsStr) -> bool),
    /// A probe's interest in a path.
    Interest(Arc<Interest>),
}

/// One subscriber of a descriptor.
#[derive(Clone)]
struct Subscriber {
    id: u64,
    mask: AddWatchFlags,
    sink: Sink,
}

/// A pidfd waited on, and whom to tell when its process ends.
struct PidEntry {
    fd: OwnedFd,
    poke: Poke,
}

/// The routing table.
#[derive(Default)]
struct Table {
    by_wd: HashMap<WatchDescriptor, Vec<Subscriber>>,
    /// Every subscriber's sink, for an overflow (which names no descriptor).
    sinks: HashMap<u64, Sink>,
    pids: HashMap<u64, PidEntry>,
    next: u64,
}

/// The kernel side: the instance, the epoll set, the table, the thread.
pub(super) struct Kernel {
    inotify: Inotify,
    epoll: Epoll,
    table: Mutex<Table>,
    /// Held while reading the instance and routing what was read, so events reach each queue
    /// in the kernel's order whichever thread reads (the kernel thread, or a tree about to be
    /// measured, which must see every event that happened before).
    reading: Mutex<()>,
    pub(super) counters: Counters,
}

/// The process's kernel watcher, started on first use; `None` when inotify or epoll cannot be
/// had (everything is then polled, as before).
static KERNEL: LazyLock<Option<&'static Kernel>> = LazyLock::new(|| match Kernel::start() {
    Ok(kernel) => Some(kernel),
    Err(e) => {
        tracing::warn!("no kernel notifications (inotify/epoll): {e}; everything is polled");
        None
    }
});

/// The kernel watcher, if there is one.
pub(super) fn kernel() -> Option<&'static Kernel> {
    *KERNEL
}

impl Kernel {
    fn start() -> std::io::Result<&'static Kernel> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            inotify.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_TOKEN),
        )?;
        let kernel: &'static Kernel = Box::leak(Box::new(Kernel {
            inotify,
            epoll,
            table: Mutex::new(Table {
                next: INOTIFY_TOKEN + 1,
                ..Table::default()
            }),
            reading: Mutex::new(()),
            counters: Counters::default(),
        }));
        std::thread::Builder::new()
            .name("kernel-events".into())
            .spawn(move || kernel.run())?;
        Ok(kernel)
    }

    /// A fresh subscriber id.
    pub(super) fn next_id(&self) -> u64 {
        let mut table = lock(&self.table);
        table.next += 1;
        table.next
    }

    /// Watches `dir` for `sink`'s events. The table is held across the system call, so that no
    /// event of a new descriptor can be routed before its subscriber is known.
    fn add(
        &self,
        id: u64,
        dir: &Path,
        mask: AddWatchFlags,
        sink: Sink,
    ) -> nix::Result<WatchDescriptor> {
        let mut table = lock(&self.table);
        let wd = self.inotify.add_watch(dir, mask | in_mask_add())?;
        let subscribers = table.by_wd.entry(wd).or_default();
        match subscribers.iter_mut().find(|s| s.id == id) {
            Some(s) => s.mask |= mask,
            None => subscribers.push(Subscriber {
                id,
                mask,
                sink: sink.clone(),
            }),
        }
        table.sinks.insert(id, sink);
        Ok(wd)
    }

    /// Watches a tree's directory: its events go to `queue`.
    pub(super) fn add_tree(
        &self,
        id: u64,
        dir: &Path,
        mask: AddWatchFlags,
        queue: &Arc<Mutex<Queue>>,
        ignore: fn(&OsStr) -> bool,
    ) -> nix::Result<WatchDescriptor> {
        self.add(id, dir, mask, Sink::Tree(Arc::clone(queue), ignore))
    }

    /// Watches the directory an interest's events come from.
    pub(super) fn add_interest(
        &self,
        id: u64,
        dir: &Path,
        interest: &Arc<Interest>,
    ) -> nix::Result<WatchDescriptor> {
        self.add(
            id,
            dir,
            interest.kind.mask(),
            Sink::Interest(Arc::clone(interest)),
        )
    }

    /// Drops subscriber `id` from `wd`, and the kernel's watch with its last subscriber.
    pub(super) fn remove(&self, id: u64, wd: WatchDescriptor) {
        let mut table = lock(&self.table);
        let Some(subscribers) = table.by_wd.get_mut(&wd) else {
            return; // The kernel dropped it already (the directory is gone).
        };
        subscribers.retain(|s| s.id != id);
        if subscribers.is_empty() {
            table.by_wd.remove(&wd);
            // Gone already when its directory was deleted meanwhile: nothing to undo then.
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// Forgets subscriber `id` for overflows (its descriptors are removed one by one).
    pub(super) fn forget(&self, id: u64) {
        lock(&self.table).sinks.remove(&id);
    }

    /// Waits on `fd`, a pidfd: `poke` is called once, when its process ends. Returns the token
    /// that [`Kernel::unwait`] takes.
    pub(super) fn wait_exit(&self, fd: OwnedFd, poke: Poke) -> std::io::Result<u64> {
        let mut table = lock(&self.table);
        table.next += 1;
        let token = table.next;
        self.epoll
            .add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        table.pids.insert(token, PidEntry { fd, poke });
        Ok(token)
    }

    /// Stops waiting on a pidfd (its agent's root changed, or the agent went).
    pub(super) fn unwait(&self, token: u64) {
        let mut table = lock(&self.table);
        if let Some(entry) = table.pids.remove(&token) {
            let _ = self.epoll.delete(entry.fd.as_fd());
        }
    }

    /// Descriptors and pidfds held now.
    pub(super) fn held(&self) -> (usize, usize) {
        let table = lock(&self.table);
        (table.by_wd.len(), table.pids.len())
    }

    fn run(&self) {
        let mut ready = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut ready, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(
                        "kernel notifications stopped: epoll failed: {e}; everything is polled"
                    );
                    return;
                }
            };
            for event in &ready[..n] {
                match event.data() {
                    INOTIFY_TOKEN => self.read_inotify(),
                    token => self.exited(token),
                }
            }
            std::thread::sleep(GATHER);
        }
    }

    /// A pidfd became readable: its process ended. Told once, then forgotten.
    fn exited(&self, token: u64) {
        let entry = {
            let mut table = lock(&self.table);
            let Some(entry) = table.pids.remove(&token) else {
                return;
            };
            let _ = self.epoll.delete(entry.fd.as_fd());
            entry
        };
        self.counters.exits.fetch_add(1, Ordering::Relaxed);
        self.counters.pokes.fetch_add(1, Ordering::Relaxed);
        (entry.poke)(Cause::ProcessExited);
    }

    /// Reads what the instance has queued and routes it; pokes each interest at most once.
    /// Called by the kernel thread when epoll says there is something, and by a tree before it
    /// takes its events.
    pub(super) fn read_inotify(&self) {
        let reading = lock(&self.reading);
        let mut poked: HashMap<*const Interest, (Arc<Interest>, Cause)> = HashMap::new();
        // Bounded, so a flood cannot keep the thread here: epoll wakes it again at once.
        for _ in 0..64 {
            let events = match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("reading inotify events failed: {e}");
                    break;
                }
            };
            self.counters
                .events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            let mut table = lock(&self.table);
            for event in &events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    self.overflowed(&table, &mut poked);
                    continue;
                }
                route(&mut table, event, &mut poked);
            }
        }
        drop(reading);
        for (interest, cause) in poked.into_values() {
            if cause == Cause::Overflow || interest.state_changed() {
                self.counters.pokes.fetch_add(1, Ordering::Relaxed);
                (interest.poke)(cause);
            }
        }
    }

    /// The kernel's queue overflowed: events were lost, for anyone. Every tree rebuilds, and
    /// every interest is poked, so everything watched is measured again once.
    fn overflowed(
        &self,
        table: &Table,
        poked: &mut HashMap<*const Interest, (Arc<Interest>, Cause)>,
    ) {
        let n = self.counters.overflows.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            overflows = n,
            "the kernel's inotify queue overflowed (fs.inotify.max_queued_events): events were \
             lost, so everything watched is measured again"
        );
        for sink in table.sinks.values() {
            match sink {
                Sink::Tree(queue, _) => {
                    let mut queue = lock(queue);
                    queue.overflowed = true;
                    queue.events.clear();
                }
                Sink::Interest(interest) => {
                    poked.insert(
                        Arc::as_ptr(interest),
                        (Arc::clone(interest), Cause::Overflow),
                    );
                }
            }
        }
    }
}

/// Hands one event to the subscribers of its descriptor.
fn route(
    table: &mut Table,
    event: &InotifyEvent,
    poked: &mut HashMap<*const Interest, (Arc<Interest>, Cause)>,
) {
    let ignored = event.mask.contains(AddWatchFlags::IN_IGNORED);
    let Some(subscribers) = table.by_wd.get(&event.wd) else {
        return; // A descriptor already removed: nothing new.
    };
    for subscriber in subscribers {
        if !ignored && !event.mask.intersects(subscriber.mask) {
            continue;
        }
        match &subscriber.sink {
            Sink::Tree(queue, ignore) => {
                // Our own writability probe, say: its creation and removal change no total.
                let skip = !event.mask.contains(AddWatchFlags::IN_ISDIR)
                    && event.name.as_deref().is_some_and(ignore);
                if skip {
                    continue;
                }
                let mut queue = lock(queue);
                if queue.overflowed {
                    continue;
                }
                if queue.events.last() == Some(&(event.wd, event.mask)) {
                    continue; // The same event again: it says nothing new.
                }
                if queue.events.len() >= QUEUE_CAP {
                    queue.overflowed = true;
                    queue.events.clear();
                } else {
                    queue.events.push((event.wd, event.mask));
                }
            }
            Sink::Interest(interest) => {
                if !interest.wants(event) {
                    continue;
                }
                // Deleted, or moved away from its path: the path must be watched anew.
                let gone = AddWatchFlags::IN_IGNORED
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF;
                if event.mask.intersects(gone) {
                    interest.lost.store(true, Ordering::Relaxed);
                }
                let cause = match interest.kind {
                    Kind::Root => Cause::RootChanged,
                    Kind::Heartbeat => Cause::Heartbeat,
                    Kind::File | Kind::Appended => Cause::FileChanged,
                };
                poked
                    .entry(Arc::as_ptr(interest))
                    .or_insert_with(|| (Arc::clone(interest), cause));
            }
        }
    }
    if ignored {
        // The kernel dropped the watch: every subscriber has been told.
        table.by_wd.remove(&event.wd);
    }
}
