//! Workspaces: existence, readability, writability, size and file count, git health, and the
//! SQLite databases inside.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::{AccessFlags, eaccess};

use super::dirwalk::SizeReading;
use super::shared_size::SharedSizer;
use super::{Probe, WalkLimits, flag, git, sqlite_probe};
use crate::catalog::{
    DATABASE_CONNECTIVITY, DATABASE_LATENCY_MS, GIT_REPOSITORY_VALID, UNIT_BOOL, UNIT_COUNT,
    UNIT_MB, UNIT_MS, WORKSPACE_EXISTS, WORKSPACE_FILE_COUNT, WORKSPACE_READABLE,
    WORKSPACE_SCAN_COMPLETE, WORKSPACE_SIZE_MB, WORKSPACE_WRITABLE,
};
use crate::model::{Measurement, ResourceType};

/// How long a database check waits on another process's lock.
const DB_BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `PRAGMA quick_check` may run.
const DB_CHECK_CAP: Duration = Duration::from_secs(5);

/// The start of this process's writability probe files' names.
fn probe_file_prefix() -> &'static str {
    static PREFIX: LazyLock<String> =
        LazyLock::new(|| format!(".health-monitor-probe-{}-", std::process::id()));
    &PREFIX
}

/// True for the name of a file [`writable`] creates (and removes at once) in this process:
/// the inotify-kept totals ignore them, or every cycle's probe would cost a re-read.
pub(crate) fn is_own_probe_file(name: &OsStr) -> bool {
    name.as_encoded_bytes()
        .starts_with(probe_file_prefix().as_bytes())
}

/// How often a real file is created and removed while the permission check keeps saying yes.
const WRITE_PROBE_EVERY: Duration = Duration::from_secs(60);

/// Whether a workspace can be written, cheaply enough for every cycle: the kernel's permission
/// check each time (a read-only mount, lost permissions or an immutable directory show at
/// once), and a real file created and removed at first, then at most every
/// [`WRITE_PROBE_EVERY`] while the answer is yes (a full disk or an exhausted quota show then),
/// and on every cycle while it is no. Profiled, creating and removing the file every cycle was
/// a sixth of a workspace probe's cost, and file watchers in the workspace saw it.
#[derive(Debug, Default)]
pub(crate) struct WritableCheck {
    /// When the last real probe ran, and what it said.
    last_probe: Option<(Instant, bool)>,
    /// Real probes run so far (for tests).
    probes: u64,
}

impl WritableCheck {
    /// Can `dir` be written?
    pub fn check(&mut self, dir: &Path) -> bool {
        self.check_at(dir, Instant::now())
    }

    fn check_at(&mut self, dir: &Path, now: Instant) -> bool {
        if eaccess(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
            // Probe for real again as soon as permission comes back.
            self.last_probe = None;
            return false;
        }
        if let Some((at, true)) = self.last_probe
            && now.saturating_duration_since(at) < WRITE_PROBE_EVERY
        {
            return true;
        }
        let ok = writable(dir);
        self.probes += 1;
        self.last_probe = Some((now, ok));
        ok
    }
}

/// Creates and removes a uniquely named probe file: can the workspace be written?
pub fn writable(dir: &Path) -> bool {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}{}",
        probe_file_prefix(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let probe = dir.join(name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(file) => {
            drop(file);
            std::fs::remove_file(&probe).is_ok()
        }
        Err(_) => false,
    }
}

/// One workspace directory.
pub struct WorkspaceProbe {
    id: String,
    path: PathBuf,
    dbs: Vec<PathBuf>,
    discovery: sqlite_probe::Discovery,
    writable: WritableCheck,
    /// Shared with the agent whose workspace this is, if there is one.
    sizer: SharedSizer,
    limits: WalkLimits,
    /// Why the workspace could not be read, as last logged: logged again only when it changes.
    unreadable: Option<String>,
    /// The root watched for deletion, moves and permission changes.
    watches: crate::watch::Watches,
}

impl WorkspaceProbe {
    /// A probe for workspace `id` at `path`, checking `dbs` (relative) besides those it finds.
    pub fn new(id: &str, path: PathBuf, dbs: Vec<PathBuf>, limits: WalkLimits) -> Self {
        WorkspaceProbe {
            id: id.to_string(),
            sizer: SharedSizer::new(&path, limits.cap),
            path,
            dbs,
            discovery: sqlite_probe::Discovery::default(),
            writable: WritableCheck::default(),
            limits,
            unreadable: None,
            watches: Default::default(),
        }
    }

    fn reading(&self, metric: &'static str, value: f64, unit: &'static str) -> Measurement {
        Measurement::now(ResourceType::Workspace, &self.id, metric, value, unit)
    }

    /// `database` readings for every SQLite file of the workspace, with id `<workspace>/<path>`.
    fn databases(&mut self, out: &mut Vec<Measurement>) {
        for rel in self.discovery.discover(&self.path, &self.dbs) {
            let check =
                sqlite_probe::check_database(&self.path.join(&rel), DB_BUSY_TIMEOUT, DB_CHECK_CAP);
            let id = format!("{}/{}", self.id, rel.display());
            if let Some(problem) = &check.problem {
                tracing::debug!(database = %id, "database check failed: {problem}");
            }
            out.push(Measurement::now(
                ResourceType::Database,
                &id,
                DATABASE_CONNECTIVITY,
                flag(check.ok),
                UNIT_BOOL,
            ));
            out.push(Measurement::now(
                ResourceType::Database,
                &id,
                DATABASE_LATENCY_MS,
                check.latency_ms,
                UNIT_MS,
            ));
        }
    }
}

impl Probe for WorkspaceProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let out = self.readings();
        let wanted = crate::watch::Wanted {
            process: None,
            paths: vec![crate::watch::PathWatch::Root(self.path.clone())],
        };
        self.watches.want(&wanted);
        out
    }

    fn attach(&mut self, poke: crate::watch::Poke) {
        self.watches.attach(poke);
    }
}

impl WorkspaceProbe {
    /// One cycle's readings.
    fn readings(&mut self) -> Vec<Measurement> {
        let exists = self.path.is_dir();
        let mut out = vec![self.reading(WORKSPACE_EXISTS, flag(exists), UNIT_BOOL)];
        if !exists {
            return out;
        }
        // The root's readability comes from the walk (or the watch, which re-reads the root when
        // its permissions change): no extra system call per cycle.
        let reading = self.sizer.poll(self.limits.wait);
        let readable = match &reading.size {
            SizeReading::Known(_) => Some(true),
            // No complete walk yet; one that could not read part of the tree read the root.
            SizeReading::Pending => reading.incomplete.then_some(true),
            SizeReading::Failed(e) => {
                if self.unreadable.as_deref() != Some(e.as_str()) {
                    tracing::warn!(workspace = %self.id, path = %self.path.display(), "cannot read workspace: {e}");
                    self.unreadable = Some(e.clone());
                }
                Some(false)
            }
        };
        if let Some(readable) = readable {
            if readable && self.unreadable.take().is_some() {
                tracing::info!(workspace = %self.id, path = %self.path.display(), "workspace can be read again");
            }
            out.push(self.reading(WORKSPACE_READABLE, flag(readable), UNIT_BOOL));
        }
        if let SizeReading::Known(stats) = reading.size {
            out.push(self.reading(WORKSPACE_SIZE_MB, stats.megabytes(), UNIT_MB));
            out.push(self.reading(WORKSPACE_FILE_COUNT, stats.files as f64, UNIT_COUNT));
        }
        // A walk that failed, hit its cap or could not read part of the tree is not complete.
        let failed = matches!(reading.size, SizeReading::Failed(_));
        let complete = !failed && !reading.timed_out && !reading.incomplete;
        out.push(self.reading(WORKSPACE_SCAN_COMPLETE, flag(complete), UNIT_BOOL));
        let writable = self.writable.check(&self.path);
        out.push(self.reading(WORKSPACE_WRITABLE, flag(writable), UNIT_BOOL));
        if let Some(valid) = git::repository_valid(&self.path) {
            out.push(self.reading(GIT_REPOSITORY_VALID, flag(valid), UNIT_BOOL));
        }
        self.databases(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_write_probe_runs_first_then_once_a_minute_while_writable() {
        let dir = tempfile::tempdir().unwrap();
        let mut check = WritableCheck::default();
        let t0 = Instant::now();
        assert!(check.check_at(dir.path(), t0));
        assert_eq!(check.probes, 1);
        assert!(check.check_at(dir.path(), t0 + Duration::from_secs(30)));
        assert_eq!(check.probes, 1, "a yes is trusted for a while");
        assert!(check.check_at(dir.path(), t0 + WRITE_PROBE_EVERY));
        assert_eq!(check.probes, 2, "then probed again");
        // Nothing left behind by the probes.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Gone: no at once, whatever the last probe said; back: probed for real again.
        let path = dir.path().to_path_buf();
        std::fs::remove_dir(&path).unwrap();
        assert!(!check.check_at(&path, t0 + WRITE_PROBE_EVERY + Duration::from_secs(1)));
        std::fs::create_dir(&path).unwrap();
        assert!(check.check_at(&path, t0 + WRITE_PROBE_EVERY + Duration::from_secs(2)));
        assert_eq!(check.probes, 3);
    }

    #[test]
    fn a_directory_that_cannot_take_a_file_is_not_writable() {
        // A regular file passes no directory check; creating inside it fails.
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut check = WritableCheck::default();
        assert!(!check.check(file.path()));
        assert!(!writable(file.path()));
    }

    #[test]
    fn own_probe_files_are_recognized_by_name() {
        assert!(is_own_probe_file(OsStr::new(&format!(
            "{}7",
            probe_file_prefix()
        ))));
        assert!(
            !is_own_probe_file(OsStr::new(".health-monitor-probe-1-7")) || std::process::id() == 1
        );
        assert!(!is_own_probe_file(OsStr::new("notes.txt")));
    }
}
