//! Database upkeep on demand: prune past retention, vacuum, integrity check, online backup.
//! Plain functions on a connection; the writer thread runs the writing ones while a daemon
//! holds the database, the CLI runs them directly otherwise.

use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::write::prune;

/// Rows deleted per transaction while pruning on demand.
pub(crate) const PRUNE_BATCH: usize = 5000;

/// What `db prune` or `db vacuum` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum MaintenanceOutcome {
    /// Rows past their retention deleted (metrics and resolved alerts together).
    Prune {
        /// Metric, resolved-alert and closed-escalation rows deleted, all counted together.
        rows_deleted: u64,
    },
    /// The file's size before and after (database plus WAL).
    Vacuum {
        /// Bytes before the VACUUM (page count × page size).
        bytes_before: u64,
        /// Bytes after the VACUUM and WAL checkpoint.
        bytes_after: u64,
    },
}

/// A writing task for whoever holds the database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaintenanceTask {
    /// Delete metric rows older than `metrics_before` and alerts resolved before `alerts_before`.
    Prune {
        /// Metric rows stamped before this time go.
        metrics_before: DateTime<Utc>,
        /// Alerts resolved (and escalations closed) before this time go.
        alerts_before: DateTime<Utc>,
    },
    /// Rebuild the file to give free pages back to the filesystem.
    Vacuum,
}

/// The time `keep` before `now`, or the earliest time there is when `keep` reaches past it.
pub(crate) fn cutoff(now: DateTime<Utc>, keep: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(keep)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Runs a task on a connection that may write.
pub fn run(conn: &mut Connection, task: MaintenanceTask) -> rusqlite::Result<MaintenanceOutcome> {
    match task {
        MaintenanceTask::Prune {
            metrics_before,
            alerts_before,
        } => prune_all(conn, metrics_before, alerts_before),
        MaintenanceTask::Vacuum => vacuum(conn),
    }
}

/// Prunes in small transactions until nothing past retention is left.
pub(crate) fn prune_all(
    conn: &mut Connection,
    metrics_before: DateTime<Utc>,
    alerts_before: DateTime<Utc>,
) -> rusqlite::Result<MaintenanceOutcome> {
    let mut total = 0u64;
    loop {
        let n = prune(conn, metrics_before, alerts_before, PRUNE_BATCH)?;
        total += n as u64;
        if n < PRUNE_BATCH {
            return Ok(MaintenanceOutcome::Prune {
                rows_deleted: total,
            });
        }
    }
}

/// Bytes the database and its WAL take on disk, as SQLite counts them.
fn file_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((pages * size) as u64)
}

/// VACUUM, then a truncating checkpoint so the WAL gives its space back too.
pub fn vacuum(conn: &mut Connection) -> rusqlite::Result<MaintenanceOutcome> {
    let bytes_before = file_bytes(conn)?;
    conn.execute_batch("VACUUM")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(MaintenanceOutcome::Vacuum {
        bytes_before,
        bytes_after: file_bytes(conn)?,
    })
}

/// `PRAGMA integrity_check` on a read-only connection: an empty list means the file is sound.
pub(crate) fn integrity_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    Ok(if rows == ["ok"] { Vec::new() } else { rows })
}

/// What a backup produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupReport {
    /// Where the copy was written, as given.
    pub path: String,
    /// Size of the copy on disk, in bytes.
    pub bytes: u64,
    /// Rows in the copy's `health_metrics` table.
    pub metric_rows: u64,
    /// Rows in the copy's `health_alerts` table (active and resolved).
    pub alert_rows: u64,
}

/// Copies the database to `dest` (which must not exist) with SQLite's online backup API, then
/// checks the copy. The copy is taken in one step, so it is one consistent snapshot even while
/// the daemon writes (readers never block a WAL writer).
pub fn backup(source: &Path, dest: &Path) -> anyhow::Result<BackupReport> {
    if dest.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            dest.display()
        );
    }
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", source.display()))?;
    src.busy_timeout(super::READER_BUSY_TIMEOUT)?;
    // Written to a fresh temporary file next to the destination, then linked into place (which
    // fails rather than replace a file that appeared meanwhile), so a failed backup never looks
    // like a good one and no other file is ever touched.
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".health-monitor-backup-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let partial = temp.path().to_path_buf();
    let result = (|| -> anyhow::Result<BackupReport> {
        let mut dst = Connection::open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
            backup.step(-1).context("backup failed")?;
        }
        let problems = integrity_problems(&dst)?;
        if !problems.is_empty() {
            bail!(
                "the copy failed its integrity check: {}",
                problems.join("; ")
            );
        }
        let count = |table: &str| -> rusqlite::Result<u64> {
            dst.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0).map(|n| n as u64)
            })
        };
        let report = BackupReport {
            path: dest.display().to_string(),
            bytes: std::fs::metadata(&partial)?.len(),
            metric_rows: count("health_metrics")?,
            alert_rows: count("health_alerts")?,
        };
        drop(dst);
        std::fs::hard_link(&partial, dest).with_context(|| {
            format!(
                "cannot put the copy at {} (does it exist now?)",
                dest.display()
            )
        })?;
        Ok(report)
    })();
    // The temporary name goes either way (after a success the copy lives on at `dest`), and
    // with it whatever SQLite left beside it: a backup that failed part way (a full disk)
    // leaves its rollback journal.
    drop(temp);
    super::rescue::remove_with_journals(&partial);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthMetric, Measurement, ResourceType, Thresholds};
    use crate::store::write::{WriteOp, apply};

    fn db_with_rows(path: &Path, old: usize, new: usize) -> Connection {
        let mut conn = crate::store::open_for_writing(path).unwrap();
        let now = Utc::now();
        let rows = (0..old + new)
            .map(|i| {
                let mut m =
                    Measurement::now(ResourceType::Cpu, "system", "cpu_usage_percent", 1.0, "%");
                if i < old {
                    m.timestamp = now - chrono::Duration::days(30);
                }
                HealthMetric::from_measurement(m, Some(Thresholds::new(80.0, 95.0)))
            })
            .collect();
        apply(&mut conn, &[WriteOp::Metrics(rows)]).unwrap();
        conn
    }

    #[test]
    fn prune_removes_every_old_row_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = db_with_rows(&dir.path().join("h.db"), PRUNE_BATCH * 2 + 10, 7);
        let cutoff = Utc::now() - chrono::Duration::days(7);
        let outcome = prune_all(&mut conn, cutoff, cutoff).unwrap();
        assert_eq!(
            outcome,
            MaintenanceOutcome::Prune {
                rows_deleted: (PRUNE_BATCH * 2 + 10) as u64
            }
        );
        let left: i64 = conn
            .query_row("SELECT count(*) FROM health_metrics", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 7);
    }

    #[test]
    fn vacuum_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = db_with_rows(&dir.path().join("h.db"), 20_000, 0);
        conn.execute("DELETE FROM health_metrics", []).unwrap();
        let MaintenanceOutcome::Vacuum {
            bytes_before,
            bytes_after,
        } = vacuum(&mut conn).unwrap()
        else {
            panic!("not a vacuum outcome")
        };
        assert!(
            bytes_after < bytes_before / 4,
            "{bytes_before} -> {bytes_after}"
        );
    }

    #[test]
    fn backup_copies_a_consistent_checked_database_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("h.db");
        let _conn = db_with_rows(&src, 0, 123);
        let dest = dir.path().join("copy.db");
        let report = backup(&src, &dest).unwrap();
        assert_eq!(report.metric_rows, 123);
        let copy = Connection::open(&dest).unwrap();
        assert!(integrity_problems(&copy).unwrap().is_empty());
        let err = backup(&src, &dest).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        // An unrelated file that looks like a temporary is left alone, and no temporary stays.
        let bystander = dir.path().join("copy2.partial");
        std::fs::write(&bystander, "mine").unwrap();
        backup(&src, &dir.path().join("copy2.db")).unwrap();
        assert_eq!(std::fs::read_to_string(&bystander).unwrap(), "mine");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".health-monitor-backup-")
            })
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn integrity_check_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = db_with_rows(&path, 0, 5000);
        assert!(integrity_problems(&conn).unwrap().is_empty());
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        // Scribble over the middle of the file: pages of the table's b-tree.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 8192] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        match integrity_problems(&conn) {
            Ok(problems) => assert!(!problems.is_empty()),
            Err(e) => assert!(e.to_string().contains("malformed"), "{e}"),
        }
    }
}
