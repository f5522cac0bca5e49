//! The writer: one thread owning the only write connection, fed by a bounded channel, committing
//! in batches and keeping every accepted row until it lands.
//!
//! [`handle`] is what senders hold, [`supervise`] keeps the thread going (crashes, a full disk,
//! a lost database file), [`thread`] is its loop on one connection, [`buffer`] what it holds,
//! and [`file_watch`] what it does when the database path stops leading to its file.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::bounded;
use rusqlite::Connection;

use super::restart;
use crate::config::RestartPolicy;
use crate::store::file::DatabaseFile;
use crate::store::open_for_writing;

pub mod buffer;
pub mod file_watch;
pub mod handle;
mod supervise;
mod thread;

pub use buffer::PendingBuffer;
use file_watch::FileWatch;
#[cfg(test)]
pub(crate) use handle::detached_handle;
pub use handle::{
    MaintenanceReply, Retention, WriterConfig, WriterHandle, WriterMsg, WriterReport, WriterStats,
};
pub use thread::LOCK_GRACE;

/// Starts the writer thread on an open connection (`None`: the database could not be opened
/// yet, as on a full disk, and `open` is tried until it can); returns its handle and join
/// handle. `file`, the locked database file, is watched: see [`file_watch`].
///
/// The thread supervises itself: a panic is caught, the connection is reopened with `open`
/// (fresh state) after a backoff, and the uncommitted rows, which live outside the code that
/// panicked, are committed by the next writer.
pub fn spawn(
    open: Opener,
    conn: Option<Connection>,
    file: Option<DatabaseFile>,
    config: WriterConfig,
    policy: RestartPolicy,
) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (tx, rx) = bounded(config.channel_capacity);
    let stats = Arc::new(WriterStats::default());
    let handle = WriterHandle {
        tx,
        stats: stats.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            let watch = FileWatch::new(file, stats.clone());
            supervise::supervise(open, conn, watch, rx, stats, config, policy)
        })?;
    Ok((handle, thread))
}

/// Opens a fresh write connection, for a writer restarted after a panic.
pub(crate) type Opener = Box<dyn Fn() -> anyhow::Result<Connection> + Send>;

/// An opener for a plain database file, without a size cap.
pub fn opener(db_path: PathBuf) -> Opener {
    Box::new(move || open_for_writing(&db_path))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::write::WriteOp;
    use buffer::tests::rows;

    fn start(path: &std::path::Path, config: WriterConfig) -> (WriterHandle, JoinHandle<()>) {
        let file = DatabaseFile::lock(path).unwrap();
        let conn = open_for_writing(path).unwrap();
        spawn(
            opener(path.to_path_buf()),
            Some(conn),
            Some(file),
            config,
            RestartPolicy::default(),
        )
        .unwrap()
    }

    fn count(path: &std::path::Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row("SELECT count(*) FROM health_metrics", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn everything_submitted_is_written_by_flush_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (handle, thread) = start(&path, WriterConfig::default());
        for _ in 0..50 {
            handle.submit(vec![rows(100)]).unwrap();
        }
        handle.flush_blocking(Duration::from_secs(10)).unwrap();
        assert_eq!(count(&path), 5000);
        handle.submit(vec![rows(7)]).unwrap();
        handle.shutdown_blocking(Duration::from_secs(10)).unwrap();
        thread.join().unwrap();
        assert_eq!(count(&path), 5007);
        let report = handle.report();
        assert_eq!(report.rows_written, 5007);
        assert!(!report.failing);
        // The WAL was checkpointed into the main file.
        let wal = dir.path().join("t.db-wal");
        assert!(!wal.exists() || std::fs::metadata(wal).unwrap().len() == 0);
    }

    #[test]
    fn a_writer_without_a_connection_never_opens_a_file_that_replaced_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open_for_writing(&path).unwrap());
        let file = DatabaseFile::lock(&path).unwrap();
        // Another application's database is moved over ours before the writer got to open it.
        let theirs = dir.path().join("theirs.db");
        Connection::open(&theirs)
            .unwrap()
            .execute_batch("CREATE TABLE notes (x); INSERT INTO notes VALUES (1);")
            .unwrap();
        let their_bytes = std::fs::read(&theirs).unwrap();
        std::fs::rename(&theirs, &path).unwrap();
        let (handle, thread) = spawn(
            opener(path.clone()),
            None,
            Some(file),
            WriterConfig::default(),
            RestartPolicy::default(),
        )
        .unwrap();
        handle.submit(vec![rows(10)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while handle.report().database_file.is_none_or(|i| !i.ongoing)
            || handle.report().buffered_rows != 10
        {
            assert!(Instant::now() < deadline, "the replacement was not noticed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let flushed = handle.flush_blocking(Duration::from_secs(10)).unwrap_err();
        assert!(flushed.contains("replaced"), "{flushed}");
        assert_eq!(std::fs::read(&path).unwrap(), their_bytes);
        assert!(!dir.path().join("t.db-wal").exists());
        // Their file goes: the path is free, and a new database takes the rows.
        std::fs::remove_file(&path).unwrap();
        while handle.report().database_file.is_some_and(|i| i.ongoing) {
            assert!(Instant::now() < deadline, "the free path was not taken");
            std::thread::sleep(Duration::from_millis(10));
        }
        handle.flush_blocking(Duration::from_secs(10)).unwrap();
        assert_eq!(count(&path), 10);
        handle.shutdown_blocking(Duration::from_secs(10)).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn a_locked_database_delays_rows_but_loses_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (handle, thread) = start(&path, WriterConfig::default());
        let locker = Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        handle.submit(vec![rows(10)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !handle.report().failing {
            assert!(Instant::now() < deadline, "writer never noticed the lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        handle.submit(vec![rows(5)]).unwrap();
        assert!(handle.report().last_error.unwrap().contains("locked"));
        locker.execute_batch("COMMIT").unwrap();
        handle.flush_blocking(Duration::from_secs(10)).unwrap();
        assert_eq!(count(&path), 15);
        assert!(!handle.report().failing);
        handle.shutdown_blocking(Duration::from_secs(10)).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn the_writer_prunes_rows_past_their_retention_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let config = WriterConfig {
            retention: Some(Retention {
                metrics: Duration::from_secs(86_400),
                resolved_alerts: Duration::from_secs(86_400),
            }),
            prune_every: Duration::from_millis(50),
            ..WriterConfig::default()
        };
        let (handle, thread) = start(&path, config);
        let mut old = rows(12_000);
        if let WriteOp::Metrics(ms) = &mut old {
            for m in ms {
                m.timestamp = chrono::Utc::now() - chrono::Duration::days(3);
            }
        }
        handle.submit(vec![old, rows(7)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while count(&path) != 7 {
            assert!(Instant::now() < deadline, "old rows were not pruned");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(handle.report().rows_pruned, 12_000);
        handle.shutdown_blocking(Duration::from_secs(10)).unwrap();
        thread.join().unwrap();
    }
}
