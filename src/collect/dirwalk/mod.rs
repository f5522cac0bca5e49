//! Directory sizes: the public surface, and the totals the walk, the watch and the sizer share.
//!
//! Walks never follow symlinks or leave the filesystem and have a time cap (`walk`); between
//! walks, an inotify watch keeps a tree's totals up to date so that measuring an unchanged tree
//! again costs next to nothing (`watch`); a [`DirSizer`] chooses between the two and runs them
//! in the background so a slow walk never holds up a cycle (`sizer`).
//!
//! A directory that cannot be read (no permission, an I/O error) leaves a hole in the totals:
//! the walk names it, and a [`DirSizer`] then keeps the last complete totals rather than the
//! smaller ones. A watch sees permissions change (`IN_ATTRIB` on the directory and on its
//! parent), so a directory that turns unreadable, or readable again, is re-read at once; a root
//! that turns unreadable drops the watch, and the full walk that follows fails as it would at
//! start.

mod sizer;
mod walk;
mod watch;

use std::path::PathBuf;

pub use sizer::{DEFAULT_REBUILD_EVERY, DEFAULT_WATCH_LIMIT, DirSizer, SizeReading};
pub use walk::{DEFAULT_WALK_THREADS, walk, walk_report, walk_with};

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
    pub(crate) fn megabytes(&self) -> f64 {
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
    /// Whether the walk finished or hit its time cap, with the totals it reached.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io;
    use std::path::Path;
    use std::time::Duration;

    /// A tree of 3 × 4 directories (one hidden at each level), each holding a few files of
    /// known sizes (one hidden), a symlink out of the tree and one back to the root. Returns
    /// the totals a correct walk must find.
    pub(super) fn make_tree(root: &Path, outside: &Path) -> DirStats {
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

    /// The totals a fresh full walk finds.
    pub(super) fn fresh(root: &Path) -> DirStats {
        match walk_with(root, Duration::from_secs(10), 2).unwrap() {
            WalkOutcome::Complete(s) => s,
            other => panic!("{other:?}"),
        }
    }

    pub(super) fn known(sizer: &mut DirSizer, root: &Path) -> DirStats {
        match sizer.poll(root, Duration::from_secs(10)) {
            SizeReading::Known(s) => s,
            other => panic!("{other:?}"),
        }
    }
}
