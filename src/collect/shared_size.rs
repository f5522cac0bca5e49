//! Directory sizes shared by every probe watching the same directory: an agent and the
//! workspace monitor of its directory (Gas Town sets up both for every agent) get one walk per
//! cycle between them, not one each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::dirwalk::{DirSizer, SizeReading};

/// One directory's sizer and its latest reading.
struct Shared {
    sizer: DirSizer,
    cap: Duration,
    /// The latest reading and when it was taken.
    latest: Option<(Instant, SizeReading)>,
}

impl Shared {
    fn new(cap: Duration) -> Self {
        Shared {
            // The workspace probe's writability file comes and goes every cycle: no re-read.
            sizer: DirSizer::new(cap).ignoring(super::workspace::is_own_probe_file),
            cap,
            latest: None,
        }
    }
}

/// Every directory some probe watches, by path and walk cap.
type Registry = HashMap<(PathBuf, Duration), Weak<Mutex<Shared>>>;

static SIZERS: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// A probe's handle on the size of one directory.
pub(crate) struct SharedSizer {
    path: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

/// A size, whether the latest finished walk gave up at its cap, and whether it could not read
/// part of the tree (then the size is the last complete one, if there was one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedReading {
    /// The newest complete totals, or that the first walk is still running or failed.
    pub size: SizeReading,
    /// The latest finished walk gave up at its time cap.
    pub timed_out: bool,
    /// The latest finished walk (or watch update) could not read part of the tree.
    pub incomplete: bool,
}

impl SharedSizer {
    /// The sizer of `path` (walks capped at `cap`), shared with the other probes of that path.
    pub fn new(path: &Path, cap: Duration) -> Self {
        let mut sizers = crate::util::lock(&SIZERS);
        sizers.retain(|_, shared| shared.strong_count() > 0);
        let key = (path.to_path_buf(), cap);
        let shared = match sizers.get(&key).and_then(Weak::upgrade) {
            Some(shared) => shared,
            None => {
                let shared = Arc::new(Mutex::new(Shared::new(cap)));
                sizers.insert(key, Arc::downgrade(&shared));
                shared
            }
        };
        SharedSizer {
            path: path.to_path_buf(),
            shared,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| {
            // A probe panicked while polling: start this directory over, as a restarted probe
            // with its own sizer would.
            let mut shared = poisoned.into_inner();
            *shared = Shared::new(shared.cap);
            self.shared.clear_poison();
            shared
        })
    }

    /// What [`DirSizer::poll`] says with `wait`, unless another probe of this directory asked
    /// less than `wait` ago: then its reading. `wait` is at most half an interval, so every
    /// probe's reading is from this cycle, and the directory is walked once per cycle.
    pub fn poll(&self, wait: Duration) -> SharedReading {
        let mut shared = self.lock();
        if let Some((at, size)) = &shared.latest
            && at.elapsed() < wait
        {
            return SharedReading {
                size: size.clone(),
                timed_out: shared.sizer.timed_out(),
                incomplete: shared.sizer.incomplete(),
            };
        }
        let size = shared.sizer.poll(&self.path, wait);
        shared.latest = Some((Instant::now(), size.clone()));
        SharedReading {
            size,
            timed_out: shared.sizer.timed_out(),
            incomplete: shared.sizer.incomplete(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(reading: &SharedReading) -> u64 {
        match reading.size {
            SizeReading::Known(stats) => stats.files,
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn probes_of_one_directory_share_one_walk_per_cycle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        let cap = Duration::from_secs(10);
        let wait = Duration::from_millis(500);
        let agent = SharedSizer::new(dir.path(), cap);
        let workspace = SharedSizer::new(dir.path(), cap);
        let first = agent.poll(wait);
        assert_eq!(files(&first), 1);
        assert!(!first.timed_out);
        // A file appears between the two probes of the same cycle: the second gets the first's
        // reading, not a walk of its own.
        std::fs::write(dir.path().join("b"), b"b").unwrap();
        assert_eq!(workspace.poll(wait), first);
        // Next cycle: a new walk.
        std::thread::sleep(wait);
        assert_eq!(files(&workspace.poll(wait)), 2);
        // Another directory, or another cap, is not shared.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(files(&SharedSizer::new(other.path(), cap).poll(wait)), 0);
        let capped = SharedSizer::new(dir.path(), cap * 2);
        std::fs::write(dir.path().join("c"), b"c").unwrap();
        assert_eq!(files(&capped.poll(wait)), 3);
    }

    #[test]
    fn a_directory_nobody_watches_any_more_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let key = (dir.path().to_path_buf(), Duration::from_secs(7));
        let sizer = SharedSizer::new(dir.path(), Duration::from_secs(7));
        drop(sizer);
        // The next registration sweeps it.
        let _other = SharedSizer::new(tempfile::tempdir().unwrap().path(), Duration::from_secs(7));
        assert!(!SIZERS.lock().unwrap().contains_key(&key));
    }
}
