//! A directory tree's share of the one inotify instance: the watches of a size watch (one per
//! directory), and the events for them, kept until the tree is measured again.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};

use super::kernel::{Kernel, Queue, kernel};
use crate::util::lock;

/// One tree's watches on the shared instance. Dropped, they are removed (those no one else
/// shares).
pub struct TreeEvents {
    kernel: &'static Kernel,
    id: u64,
    queue: Arc<Mutex<Queue>>,
    ignore: fn(&OsStr) -> bool,
    wds: Mutex<HashSet<WatchDescriptor>>,
}

impl std::fmt::Debug for TreeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeEvents")
            .field("id", &self.id)
            .field("watches", &lock(&self.wds).len())
            .finish()
    }
}

/// What happened in a tree since its last read.
#[derive(Debug, Default)]
pub struct TreeChanges {
    /// Each event's descriptor and mask, in order (repeats of the same event merged).
    pub events: Vec<(WatchDescriptor, AddWatchFlags)>,
    /// Events were lost: the kernel's queue overflowed, or this tree's (16384 events between
    /// two measurements). Only a new walk can tell what the tree holds.
    pub overflowed: bool,
}

impl TreeEvents {
    /// A tree's share; events on non-directories whose name `ignore` accepts are dropped.
    /// `None` when the daemon has no inotify instance.
    pub fn new(ignore: fn(&OsStr) -> bool) -> Option<TreeEvents> {
        let kernel = kernel()?;
        Some(TreeEvents {
            kernel,
            id: kernel.next_id(),
            queue: Arc::default(),
            ignore,
            wds: Mutex::default(),
        })
    }

    /// Watches `dir` for `mask`.
    pub fn add_watch(&self, dir: &Path, mask: AddWatchFlags) -> nix::Result<WatchDescriptor> {
        let wd = self
            .kernel
            .add_tree(self.id, dir, mask, &self.queue, self.ignore)?;
        lock(&self.wds).insert(wd);
        Ok(wd)
    }

    /// Stops watching through `wd`.
    pub fn rm_watch(&self, wd: WatchDescriptor) {
        if lock(&self.wds).remove(&wd) {
            self.kernel.remove(self.id, wd);
        }
    }

    /// Takes what happened since the last call, up to now: what the kernel has queued is read
    /// first.
    pub fn take(&self) -> TreeChanges {
        self.kernel.read_inotify();
        let mut queue = lock(&self.queue);
        TreeChanges {
            events: std::mem::take(&mut queue.events),
            overflowed: std::mem::take(&mut queue.overflowed),
        }
    }
}

impl Drop for TreeEvents {
    fn drop(&mut self) {
        let wds = std::mem::take(&mut *lock(&self.wds));
        for wd in wds {
            self.kernel.remove(self.id, wd);
        }
        self.kernel.forget(self.id);
    }
}
