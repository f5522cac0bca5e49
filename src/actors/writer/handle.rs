//! The stable way to reach the writer: its messages, its tuning, the counters it shares, and
//! the handle every sender holds (the channel outlives any one writer thread).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::file_watch::FileIncident;
use super::restart::ChildState;
use crate::store::maintenance::{MaintenanceOutcome, MaintenanceTask};
use crate::store::write::WriteOp;

pub use crate::report::WriterReport;

/// Messages the writer thread accepts.
#[derive(Debug)]
pub enum WriterMsg {
    /// Changes to commit, in order.
    Ops(Vec<WriteOp>),
    /// Answered once everything sent before it is committed (or with the error that stops it).
    Flush(oneshot::Sender<Result<(), String>>),
    /// Commit what is left, checkpoint the WAL and end the thread.
    Shutdown(oneshot::Sender<Result<(), String>>),
    /// Run an operator's upkeep task once everything sent before it is committed.
    Maintenance(MaintenanceTask, MaintenanceReply),
}

/// Where the outcome of a maintenance task goes.
pub type MaintenanceReply = oneshot::Sender<Result<MaintenanceOutcome, String>>;

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Messages the channel holds before senders are refused.
    pub channel_capacity: usize,
    /// Rows per transaction at most; bigger batches amortise index updates.
    pub batch_rows: usize,
    /// Memory the buffer of uncommitted ops may use before the oldest metric rows are dropped.
    pub buffer_cap_bytes: usize,
    /// How long rows are kept; `None` keeps everything.
    pub retention: Option<Retention>,
    /// How often to look for rows past their retention.
    pub prune_every: Duration,
}

/// How long rows are kept before the writer prunes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Metric rows, counted from their timestamp.
    pub metrics: Duration,
    /// Resolved alerts, counted from their resolution; active alerts are never pruned.
    pub resolved_alerts: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            channel_capacity: 4096,
            batch_rows: 10_000,
            buffer_cap_bytes: 64 * 1024 * 1024,
            retention: None,
            prune_every: Duration::from_secs(60),
        }
    }
}

/// Counters shared between the writer thread and everyone who reports on it.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub(super) rows_written: AtomicU64,
    pub(super) rows_dropped: AtomicU64,
    pub(super) rows_refused: AtomicU64,
    pub(super) rows_pruned: AtomicU64,
    pub(super) commit_failures: AtomicU64,
    pub(super) buffered_rows: AtomicU64,
    pub(super) failing: AtomicBool,
    /// The current failure has lasted long enough (or is serious enough) to alert on.
    pub(super) failing_alertable: AtomicBool,
    /// Failure episodes that called for an alert, so a brief one is not missed between polls.
    pub(super) alerted_episodes: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) restarts: AtomicU32,
    /// A [`ChildState`] as a number (0 running, 1 restarting, 2 parked).
    pub(super) state: AtomicU8,
    /// The latest time the database path lost the writer's file.
    pub(super) file_incident: Mutex<Option<FileIncident>>,
    /// Such incidents since start, so one that began and ended between polls still alerts.
    pub(super) file_incidents: AtomicU64,
}

pub(super) fn state_code(state: ChildState) -> u8 {
    match state {
        ChildState::Running => 0,
        ChildState::Restarting => 1,
        ChildState::Parked => 2,
    }
}

/// The stable way to reach the writer: the channel outlives any one writer thread.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    pub(super) tx: Sender<WriterMsg>,
    pub(super) stats: Arc<WriterStats>,
}

impl WriterHandle {
    /// Queues ops without ever blocking; when the channel is full the rows are counted as refused
    /// and handed back, so the caller can keep what must not be lost.
    pub fn submit(&self, ops: Vec<WriteOp>) -> Result<(), Vec<WriteOp>> {
        if ops.is_empty() {
            return Ok(());
        }
        match self.tx.try_send(WriterMsg::Ops(ops)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(WriterMsg::Ops(ops)))
            | Err(TrySendError::Disconnected(WriterMsg::Ops(ops))) => {
                let rows: usize = ops.iter().map(WriteOp::rows).sum();
                self.stats
                    .rows_refused
                    .fetch_add(rows as u64, Ordering::Relaxed);
                Err(ops)
            }
            Err(_) => unreachable!("try_send hands back the message it was given"),
        }
    }

    /// Queues an upkeep task (prune, vacuum) without blocking; the receiver gets its outcome.
    pub(crate) fn maintain(
        &self,
        task: MaintenanceTask,
    ) -> oneshot::Receiver<Result<MaintenanceOutcome, String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(
            TrySendError::Full(WriterMsg::Maintenance(_, tx))
            | TrySendError::Disconnected(WriterMsg::Maintenance(_, tx)),
        ) = self.tx.try_send(WriterMsg::Maintenance(task, tx))
        {
            let _ = tx.send(Err("the writer queue is full or closed; try again".into()));
        }
        rx
    }

    /// Asks for a flush without blocking; the receiver answers once everything before it landed.
    pub fn flush(&self) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.tx.try_send(WriterMsg::Flush(tx)) {
            let reply = match e {
                TrySendError::Full(WriterMsg::Flush(tx)) => tx,
                TrySendError::Disconnected(WriterMsg::Flush(tx)) => tx,
                _ => unreachable!("try_send hands back the message it was given"),
            };
            let _ = reply.send(Err("the writer queue is full or closed".into()));
        }
        rx
    }

    /// Blocks (outside any event loop) until everything sent so far is committed.
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send_timeout(WriterMsg::Flush(tx), timeout)
            .map_err(|_| "the writer did not accept a flush".to_string())?;
        wait_blocking(rx, timeout)
    }

    /// Asks the thread to commit everything, checkpoint and end; waits up to `timeout`.
    pub fn shutdown_blocking(&self, timeout: Duration) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send_timeout(WriterMsg::Shutdown(tx), timeout)
            .map_err(|_| "the writer did not accept shutdown".to_string())?;
        wait_blocking(rx, timeout)
    }

    /// The writer thread's supervision state and restart count.
    pub(crate) fn supervision(&self) -> (ChildState, u32) {
        let state = match self.stats.state.load(Ordering::Relaxed) {
            0 => ChildState::Running,
            1 => ChildState::Restarting,
            _ => ChildState::Parked,
        };
        (state, self.stats.restarts.load(Ordering::Relaxed))
    }

    /// The counters, with the current queue depth.
    pub fn report(&self) -> WriterReport {
        let s = &self.stats;
        WriterReport {
            queue_depth: self.tx.len() as u64,
            buffered_rows: s.buffered_rows.load(Ordering::Relaxed),
            rows_written: s.rows_written.load(Ordering::Relaxed),
            rows_dropped: s.rows_dropped.load(Ordering::Relaxed),
            rows_refused: s.rows_refused.load(Ordering::Relaxed),
            rows_pruned: s.rows_pruned.load(Ordering::Relaxed),
            commit_failures: s.commit_failures.load(Ordering::Relaxed),
            failing: s.failing.load(Ordering::Relaxed),
            failing_alertable: s.failing_alertable.load(Ordering::Relaxed),
            alerted_episodes: s.alerted_episodes.load(Ordering::Relaxed),
            last_error: s.last_error.lock().map(|e| e.clone()).unwrap_or(None),
            database_file: s.file_incident.lock().map(|e| e.clone()).unwrap_or(None),
            file_incidents: s.file_incidents.load(Ordering::Relaxed),
        }
    }
}

fn wait_blocking(
    rx: oneshot::Receiver<Result<(), String>>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut rx = rx;
    loop {
        match rx.try_recv() {
            Ok(result) => return result,
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err("the writer stopped before answering".into());
            }
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() >= deadline => {
                return Err(format!("the writer did not answer within {timeout:?}"));
            }
            Err(oneshot::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(5))
            }
        }
    }
}

/// A handle whose messages go to the returned receiver instead of a writer thread: tests read
/// what a sender hands the writer.
#[cfg(test)]
pub(crate) fn detached_handle(
    capacity: usize,
) -> (WriterHandle, crossbeam_channel::Receiver<WriterMsg>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let handle = WriterHandle {
        tx,
        stats: Arc::new(WriterStats::default()),
    };
    (handle, rx)
}
