//! Workspaces: existence, readability, writability, size and file count, git health, and the
//! SQLite databases inside.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// Creates and removes a uniquely named probe file: can the workspace be written?
pub fn writable(dir: &Path) -> bool {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".health-monitor-probe-{}-{}",
        std::process::id(),
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
    /// Shared with the agent whose workspace this is, if there is one.
    sizer: SharedSizer,
    limits: WalkLimits,
}

impl WorkspaceProbe {
    /// A probe for workspace `id` at `path`, checking `dbs` (relative) besides those it finds.
    pub fn new(id: &str, path: PathBuf, dbs: Vec<PathBuf>, limits: WalkLimits) -> Self {
        WorkspaceProbe {
            id: id.to_string(),
            sizer: SharedSizer::new(&path, limits.cap),
            path,
            dbs,
            limits,
        }
    }

    fn reading(&self, metric: &'static str, value: f64, unit: &'static str) -> Measurement {
        Measurement::now(ResourceType::Workspace, &self.id, metric, value, unit)
    }

    /// `database` readings for every SQLite file of the workspace, with id `<workspace>/<path>`.
    fn databases(&self, out: &mut Vec<Measurement>) {
        for rel in sqlite_probe::discover(&self.path, &self.dbs) {
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
        let exists = self.path.is_dir();
        let mut out = vec![self.reading(WORKSPACE_EXISTS, flag(exists), UNIT_BOOL)];
        if !exists {
            return out;
        }
        let reading = self.sizer.poll(self.limits.wait);
        match reading.size {
            SizeReading::Known(stats) => {
                out.push(self.reading(WORKSPACE_READABLE, 1.0, UNIT_BOOL));
                out.push(self.reading(WORKSPACE_SIZE_MB, stats.megabytes(), UNIT_MB));
                out.push(self.reading(WORKSPACE_FILE_COUNT, stats.files as f64, UNIT_COUNT));
            }
            SizeReading::Pending => {}
            SizeReading::Failed(e) => {
                tracing::warn!(workspace = %self.id, path = %self.path.display(), "cannot read workspace: {e}");
                out.push(self.reading(WORKSPACE_READABLE, 0.0, UNIT_BOOL));
            }
        }
        let complete = !reading.timed_out;
        out.push(self.reading(WORKSPACE_SCAN_COMPLETE, flag(complete), UNIT_BOOL));
        out.push(self.reading(WORKSPACE_WRITABLE, flag(writable(&self.path)), UNIT_BOOL));
        if let Some(valid) = git::repository_valid(&self.path) {
            out.push(self.reading(GIT_REPOSITORY_VALID, flag(valid), UNIT_BOOL));
        }
        self.databases(&mut out);
        out
    }
}
