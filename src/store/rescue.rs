//! Getting the daemon's rows out of a database file that lost its name (deleted, or another
//! file moved over it) through the connection that still has it open.
//!
//! SQLite names a database's WAL by path, so once the path leads elsewhere the WAL beside it
//! is shared with whatever file is there now. The order is therefore: first move every frame of
//! ours out of that WAL into our own file ([`empty_wal`]), then copy our file to a new one
//! ([`copy_out`]), and only then let go of the old connection.

use std::path::Path;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

/// Room kept free beyond a whole copy's size, so the copy never fills the disk to the last byte.
const COPY_HEADROOM_BYTES: u64 = 8 * 1024 * 1024;

/// What [`copy_out`] saved and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyReport {
    /// Everything was copied; otherwise only the state (monitors, active alerts, silences,
    /// open escalations), for lack of room.
    pub whole: bool,
    /// `health_metrics` rows in the copy (0 when only the state was copied).
    pub metric_rows_kept: u64,
    /// `health_alerts` rows in the copy (only the active ones when not `whole`).
    pub alert_rows_kept: u64,
    /// Rows that were only in the old file and are not in the copy.
    pub metric_rows_lost: u64,
    /// Alert rows (the resolved ones) left behind in the old file.
    pub alert_rows_lost: u64,
}

/// Checkpoints every frame of the WAL into the database file and truncates the WAL to zero
/// bytes. `Ok(false)` when a reader of the WAL kept part of it from being moved.
pub(crate) fn empty_wal(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, _log, _moved): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0)
}

fn count(conn: &Connection, sql: &str) -> rusqlite::Result<u64> {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// Bytes a whole copy needs: the pages in use.
fn bytes_in_use(conn: &Connection) -> rusqlite::Result<u64> {
    let pages = count(conn, "PRAGMA page_count")?;
    let free = count(conn, "PRAGMA freelist_count")?;
    let size = count(conn, "PRAGMA page_size")?;
    Ok(pages.saturating_sub(free) * size)
}

/// Bytes free to this user on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Copies the database open on `conn` to `dest`, which must not exist: whole (`VACUUM INTO`)
/// when the file system has room for it, else only the state the daemon cannot rebuild
/// (monitors, active alerts, silences, open escalations). A failed copy leaves no file behind.
pub(crate) fn copy_out(conn: &Connection, dest: &Path) -> anyhow::Result<CopyReport> {
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    let metrics = count(conn, "SELECT count(*) FROM health_metrics")?;
    let alerts = count(conn, "SELECT count(*) FROM health_alerts")?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let needed = bytes_in_use(conn)? + COPY_HEADROOM_BYTES;
    let whole_fits = free_bytes(dir).is_none_or(|free| free >= needed);
    if whole_fits {
        match copy_whole(conn, dest) {
            Ok(()) => {
                return Ok(CopyReport {
                    whole: true,
                    metric_rows_kept: metrics,
                    alert_rows_kept: alerts,
                    ..CopyReport::default()
                });
            }
            Err(e) => {
                remove_with_journals(dest);
                tracing::warn!(dest = %dest.display(), "a whole copy failed ({e:#}); copying the state only");
            }
        }
    }
    match copy_state(conn, dest) {
        Ok(kept_alerts) => Ok(CopyReport {
            whole: false,
            metric_rows_kept: 0,
            alert_rows_kept: kept_alerts,
            metric_rows_lost: metrics,
            alert_rows_lost: alerts.saturating_sub(kept_alerts),
        }),
        Err(e) => {
            remove_with_journals(dest);
            Err(e)
        }
    }
}

/// Copies our database file itself, through its descriptor, as of its last checkpoint (the
/// WAL is not read): for a file whose WAL another process shares. Needs room for the whole
/// file.
pub(crate) fn copy_out_of_file(
    file: &super::file::DatabaseFile,
    dest: &Path,
) -> anyhow::Result<CopyReport> {
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    file.copy_bytes_to(dest)
        .with_context(|| format!("cannot copy the database file to {}", dest.display()))?;
    let counted = (|| -> anyhow::Result<(u64, u64)> {
        let copy = Connection::open_with_flags(
            super::read_only_uri(dest, true),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok((
            count(&copy, "SELECT count(*) FROM health_metrics")?,
            count(&copy, "SELECT count(*) FROM health_alerts")?,
        ))
    })();
    match counted {
        Ok((metrics, alerts)) => Ok(CopyReport {
            whole: true,
            metric_rows_kept: metrics,
            alert_rows_kept: alerts,
            ..CopyReport::default()
        }),
        Err(e) => {
            remove_with_journals(dest);
            Err(e.context("the copy of the database file cannot be read"))
        }
    }
}

/// Moves `from` to `to` without ever replacing a file at `to` (`renameat2` with
/// `RENAME_NOREPLACE`; a hard link and an unlink where the file system lacks it).
pub fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            let _ = std::fs::remove_file(from);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn copy_whole(conn: &Connection, dest: &Path) -> anyhow::Result<()> {
    let dest_str = dest
        .to_str()
        .with_context(|| format!("{} is not UTF-8", dest.display()))?;
    conn.execute("VACUUM INTO ?1", [dest_str])
        .with_context(|| format!("cannot copy the database to {}", dest.display()))?;
    Ok(())
}

/// The tables of the state, with the rows of each that are still in force.
const STATE: &[(&str, &str)] = &[
    ("monitors", "1"),
    ("health_alerts", "resolved = 0"),
    ("silences", "1"),
    ("gastown_escalations", "closed_at IS NULL"),
    ("pushed_series", "1"),
];

/// Creates `dest` with the schema and copies the state into it; returns the alert rows copied.
fn copy_state(conn: &Connection, dest: &Path) -> anyhow::Result<u64> {
    let dest_str = dest
        .to_str()
        .with_context(|| format!("{} is not UTF-8", dest.display()))?;
    {
        let fresh =
            Connection::open(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        super::schema::migrate(&fresh)
            .with_context(|| format!("cannot prepare {}", dest.display()))?;
    }
    conn.execute("ATTACH DATABASE ?1 AS rescue", [dest_str])?;
    let copied = (|| -> anyhow::Result<u64> {
        conn.execute_batch("BEGIN")?;
        let mut alerts = 0;
        for (table, rows) in STATE {
            // The columns both sides have, so an older file's missing column is no error.
            let columns: Vec<String> = {
                let mut stmt = conn.prepare(&format!("PRAGMA rescue.table_info({table})"))?;
                stmt.query_map([], |r| r.get::<_, String>(1))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let theirs: Vec<String> = {
                let mut stmt = conn.prepare(&format!("PRAGMA main.table_info({table})"))?;
                stmt.query_map([], |r| r.get::<_, String>(1))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let shared: Vec<String> = columns
                .into_iter()
                .filter(|c| theirs.contains(c))
                .map(|c| format!("\"{c}\""))
                .collect();
            if shared.is_empty() {
                continue;
            }
            let list = shared.join(", ");
            let n = conn.execute(
                &format!(
                    "INSERT INTO rescue.{table} ({list}) SELECT {list} FROM main.{table} WHERE {rows}"
                ),
                [],
            )?;
            if *table == "health_alerts" {
                alerts = n as u64;
            }
        }
        conn.execute_batch("COMMIT")?;
        Ok(alerts)
    })();
    if copied.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let detached = conn.execute_batch("DETACH DATABASE rescue");
    let alerts = copied?;
    detached?;
    Ok(alerts)
}

/// Removes `path` and the journal, WAL and shared-memory files SQLite may have left beside it.
pub(crate) fn remove_with_journals(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_for_writing;

    fn populated(path: &Path) -> Connection {
        let conn = open_for_writing(path).unwrap();
        conn.execute_batch(
            "INSERT INTO monitors (kind, id, options, added_at) VALUES ('agent', 'a1', '{}', 't');
             INSERT INTO health_metrics (resource_type, resource_id, metric_name, value, timestamp, status)
                 VALUES ('agent', 'a1', 'cpu_percent', 1.0, 't', 'healthy'),
                        ('agent', 'a1', 'cpu_percent', 2.0, 't', 'healthy');
             INSERT INTO health_alerts (resource_type, resource_id, alert_type, severity, message, timestamp, resolved)
                 VALUES ('agent', 'a1', 'agent_alive', 'critical', 'gone', 't', 0),
                        ('agent', 'a1', 'cpu_percent', 'warning', 'hot', 't', 1);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_deleted_file_is_copied_whole_from_the_open_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hm.db");
        let conn = populated(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(empty_wal(&conn).unwrap());
        let wal = dir.path().join("hm.db-wal");
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "no frame of ours left"
        );
        let dest = dir.path().join("copy.db");
        let report = copy_out(&conn, &dest).unwrap();
        assert!(report.whole);
        assert_eq!((report.metric_rows_kept, report.alert_rows_kept), (2, 2));
        let copy = Connection::open(&dest).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM health_metrics", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn the_state_alone_is_copied_into_a_fresh_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hm.db");
        let conn = populated(&path);
        let dest = dir.path().join("state.db");
        let alerts = copy_state(&conn, &dest).unwrap();
        assert_eq!(alerts, 1, "only the active alert");
        let copy = open_for_writing(&dest).unwrap();
        let row: (String, String, i64) = copy
            .query_row(
                "SELECT m.id, a.alert_type, (SELECT count(*) FROM health_metrics)
                 FROM monitors m, health_alerts a",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, ("a1".into(), "agent_alive".into(), 0));
        // The old connection is as it was: nothing attached, writable.
        conn.execute_batch("DELETE FROM health_metrics").unwrap();
    }

    #[test]
    fn a_file_is_copied_as_of_its_last_checkpoint_through_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hm.db");
        let file = crate::store::file::DatabaseFile::lock(&path).unwrap();
        let conn = populated(&path);
        empty_wal(&conn).unwrap();
        // Committed after the checkpoint: only in the WAL, which the copy does not read.
        conn.execute_batch(
            "INSERT INTO monitors (kind, id, options, added_at) VALUES ('agent', 'late', '{}', 't')",
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let copy_path = dir.path().join("copy.db");
        let report = copy_out_of_file(&file, &copy_path).unwrap();
        assert!(report.whole);
        assert_eq!((report.metric_rows_kept, report.alert_rows_kept), (2, 2));
        let copy = Connection::open(&copy_path).unwrap();
        let ids: Vec<String> = copy
            .prepare("SELECT id FROM monitors")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ids, vec!["a1".to_string()]);
        assert!(
            copy_out_of_file(&file, &copy_path).is_err(),
            "never over a file"
        );
    }

    #[test]
    fn placing_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"ours").unwrap();
        std::fs::write(&b, b"theirs").unwrap();
        assert!(place(&a, &b).is_err());
        assert_eq!(std::fs::read(&b).unwrap(), b"theirs");
        std::fs::remove_file(&b).unwrap();
        place(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"ours");
        assert!(!a.exists());
    }

    #[test]
    fn a_copy_over_an_existing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = populated(&dir.path().join("hm.db"));
        let dest = dir.path().join("taken");
        std::fs::write(&dest, b"mine").unwrap();
        assert!(copy_out(&conn, &dest).is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"mine");
    }
}
