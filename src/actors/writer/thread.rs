//! The writer thread's loop on one connection: receive, commit in batches, prune, run upkeep
//! tasks, and finish with a checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{Connection, ErrorCode};
use tokio::sync::oneshot;

use super::PendingBuffer;
use super::file_watch::FileWatch;
use super::handle::{MaintenanceReply, WriterConfig, WriterMsg, WriterStats};
use super::supervise::is_transient;
use crate::faults;
use crate::store::file::PathState;
use crate::store::maintenance::{self, MaintenanceOutcome, MaintenanceTask};
use crate::store::write::{apply, prune};

/// How a writer's run ended.
pub(super) enum RunEnd {
    /// Shut down, or nobody is left to send anything.
    Finished,
    /// The database path no longer leads to the connection's file.
    Lost(PathState),
}

pub(super) type Ack = oneshot::Sender<Result<(), String>>;

/// Everything accepted but not yet committed: it outlives any one [`Writer`], so a panic in the
/// commit path loses none of it.
#[derive(Default)]
pub(super) struct PendingState {
    pub(super) buffer: PendingBuffer,
    /// Flushes waiting for the buffer to empty.
    pub(super) acks: Vec<Ack>,
    /// Upkeep tasks waiting for the buffer to empty.
    pub(super) maintenance: Vec<(MaintenanceTask, MaintenanceReply)>,
    pub(super) shutdown: Option<Ack>,
}

impl PendingState {
    pub(super) fn accept(
        &mut self,
        msg: WriterMsg,
        dropped_counter: &AtomicU64,
        config: WriterConfig,
    ) {
        match msg {
            WriterMsg::Ops(ops) => {
                for op in ops {
                    let dropped = self.buffer.push(op, config.buffer_cap_bytes);
                    if dropped > 0 {
                        let total = dropped_counter.fetch_add(dropped as u64, Ordering::Relaxed);
                        tracing::warn!(
                            dropped,
                            total_dropped = total + dropped as u64,
                            "writer buffer is full: dropped the oldest metric rows"
                        );
                    }
                }
            }
            WriterMsg::Flush(ack) => self.acks.push(ack),
            WriterMsg::Shutdown(ack) => self.shutdown = Some(ack),
            WriterMsg::Maintenance(task, reply) => self.maintenance.push((task, reply)),
        }
    }
}

/// One writer thread's turn with a connection: replaced (its connection reopened) after a
/// panic, while the [`PendingState`] it works on lives on.
pub(super) struct Writer {
    pub(super) conn: Connection,
    rx: Receiver<WriterMsg>,
    stats: Arc<WriterStats>,
    config: WriterConfig,
    /// Commit attempts by this writer (for fault injection).
    commits: u64,
    /// When the current run of failed commits began.
    failing_since: Option<Instant>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Every handle is gone.
    disconnected: bool,
    /// When to look for rows past their retention next.
    next_prune: Instant,
    /// An operator's prune, done one batch per turn so new rows keep landing meanwhile.
    pub(super) prune_job: Option<PruneJob>,
}

/// A `db prune` in progress.
pub(super) struct PruneJob {
    metrics_before: chrono::DateTime<chrono::Utc>,
    alerts_before: chrono::DateTime<chrono::Utc>,
    pub(super) deleted: u64,
    started: Instant,
    pub(super) reply: MaintenanceReply,
}

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Rows deleted per pruning transaction: small enough never to stall new writes.
const PRUNE_BATCH: usize = 5000;
/// How long another process may hold the database locked before it is alerted on: short lock
/// waits (a `sqlite3` session, a backup) are normal.
pub const LOCK_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown keeps retrying a failing database before giving up on the rest.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Writer {
    pub(super) fn new(
        conn: Connection,
        rx: Receiver<WriterMsg>,
        stats: Arc<WriterStats>,
        config: WriterConfig,
    ) -> Self {
        Writer {
            conn,
            rx,
            stats,
            config,
            commits: 0,
            failing_since: None,
            backoff: MIN_BACKOFF,
            retry_at: None,
            disconnected: false,
            next_prune: Instant::now(),
            prune_job: None,
        }
    }

    pub(super) fn run(&mut self, state: &mut PendingState, watch: &mut FileWatch) -> RunEnd {
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            self.receive(state);
            // Before anything goes through the connection (a commit, a checkpoint, a task):
            // the path must still lead to the file it has open.
            if let Some(lost) = watch.lost() {
                return RunEnd::Lost(lost);
            }
            if state.shutdown.is_some() && shutdown_deadline.is_none() {
                shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            if self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.commit_some(state);
            }
            // Upkeep runs between batches, or at once while commits fail (a prune may be what
            // frees the space), so an operator never waits on a buffer that cannot drain.
            if state.buffer.is_empty() || self.failing_since.is_some() {
                for (task, reply) in std::mem::take(&mut state.maintenance) {
                    self.maintain(task, reply);
                }
                self.prune_job_step();
            }
            if state.buffer.is_empty() {
                for ack in state.acks.drain(..) {
                    let _ = ack.send(Ok(()));
                }
                if state.shutdown.is_none()
                    && self.prune_job.is_none()
                    && Instant::now() >= self.next_prune
                {
                    self.prune_step();
                }
            }
            if let Some(deadline) = shutdown_deadline
                && (state.buffer.is_empty() || Instant::now() >= deadline)
            {
                self.finish(state);
                return RunEnd::Finished;
            }
            if self.disconnected && state.buffer.is_empty() && state.shutdown.is_none() {
                // Every handle is gone and nothing is left: nobody can ask for anything more.
                return RunEnd::Finished;
            }
        }
    }

    /// Waits for work (not longer than the next retry), then drains the channel into the buffer.
    fn receive(&mut self, state: &mut PendingState) {
        let wait = if state.buffer.is_empty() {
            let until_prune = self.next_prune.saturating_duration_since(Instant::now());
            // An operator's prune goes on at least once a second; otherwise nothing is due
            // before the next prune (a wake-up of this thread on a timer of its own would cost
            // as much as a commit: see `cadence`).
            if self.prune_job.is_some() {
                until_prune.min(Duration::from_secs(1))
            } else {
                until_prune
            }
        } else {
            self.retry_at.map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(Instant::now())
            })
        };
        match self.rx.recv_timeout(wait) {
            Ok(msg) => state.accept(msg, &self.stats.rows_dropped, self.config),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // No sender left: with rows still to commit, wait out the retry delay instead
                // of spinning; with none, the loop ends at once (the wait would be until the
                // next prune).
                self.disconnected = true;
                if !state.buffer.is_empty() {
                    std::thread::sleep(wait);
                }
            }
        }
        while state.buffer.rows() < self.config.batch_rows * 4 {
            match self.rx.try_recv() {
                Ok(msg) => state.accept(msg, &self.stats.rows_dropped, self.config),
                Err(_) => break,
            }
        }
        self.stats
            .buffered_rows
            .store(state.buffer.rows() as u64, Ordering::Relaxed);
    }

    /// Commits batches until the buffer is empty or a commit fails.
    fn commit_some(&mut self, state: &mut PendingState) {
        while !state.buffer.is_empty() {
            self.commits += 1;
            // An injected panic here leaves the batch in the buffer, as a real one would.
            faults::check("writer", self.commits);
            let batch = state.buffer.front_batch(self.config.batch_rows);
            let n = batch.len();
            match apply(&mut self.conn, batch) {
                Ok(()) => {
                    let rows = state.buffer.pop_front(n);
                    self.stats
                        .rows_written
                        .fetch_add(rows as u64, Ordering::Relaxed);
                    if self.stats.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("database writes recovered");
                        self.stats.failing_alertable.store(false, Ordering::Relaxed);
                        self.failing_since = None;
                    }
                    self.backoff = MIN_BACKOFF;
                    self.retry_at = None;
                }
                Err(e) if is_transient(&e) => {
                    self.failed(&e, state.buffer.rows());
                    if e.sqlite_error_code() == Some(ErrorCode::DiskFull) {
                        // Rows past their retention are the space we can give back ourselves.
                        self.prune_step();
                    }
                    return;
                }
                Err(e) => {
                    // Not something waiting fixes: isolate the op that fails, keep the rest.
                    self.failed(&e, state.buffer.rows());
                    self.quarantine(state, n);
                }
            }
        }
        self.stats
            .buffered_rows
            .store(state.buffer.rows() as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, e: &rusqlite::Error, buffered_rows: usize) {
        self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        let lock_wait = matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        );
        if (!lock_wait || now.duration_since(since) >= LOCK_GRACE)
            && !self.stats.failing_alertable.swap(true, Ordering::Relaxed)
        {
            self.stats.alerted_episodes.fetch_add(1, Ordering::Relaxed);
        }
        let message = e.to_string();
        if !self.stats.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                error = %message,
                buffered_rows,
                "database write failed; keeping the rows and retrying"
            );
        }
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = Some(message);
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Starts an upkeep task: a prune becomes a job done in batches; a vacuum runs whole (it
    /// needs the database to itself), new rows waiting in the channel meanwhile.
    fn maintain(&mut self, task: MaintenanceTask, reply: MaintenanceReply) {
        if let MaintenanceTask::Prune {
            metrics_before,
            alerts_before,
        } = task
        {
            if let Some(running) = self.prune_job.take() {
                let _ = running
                    .reply
                    .send(Err("superseded by a newer prune".into()));
            }
            self.prune_job = Some(PruneJob {
                metrics_before,
                alerts_before,
                deleted: 0,
                started: Instant::now(),
                reply,
            });
            return;
        }
        let started = Instant::now();
        let outcome = maintenance::run(&mut self.conn, task).map_err(|e| e.to_string());
        match &outcome {
            Ok(MaintenanceOutcome::Prune { rows_deleted }) => {
                self.stats
                    .rows_pruned
                    .fetch_add(*rows_deleted, Ordering::Relaxed);
                tracing::info!(
                    rows_deleted,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "pruned on request"
                );
            }
            Ok(MaintenanceOutcome::Vacuum {
                bytes_before,
                bytes_after,
            }) => tracing::info!(
                bytes_before,
                bytes_after,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "vacuumed on request"
            ),
            Err(e) => tracing::warn!("maintenance {task:?} failed: {e}"),
        }
        let _ = reply.send(outcome);
    }

    /// One batch of an operator's prune; answers once nothing past the cutoff is left.
    fn prune_job_step(&mut self) {
        let Some(job) = self.prune_job.as_mut() else {
            return;
        };
        match prune(
            &mut self.conn,
            job.metrics_before,
            job.alerts_before,
            maintenance::PRUNE_BATCH,
        ) {
            Ok(n) => {
                job.deleted += n as u64;
                self.stats
                    .rows_pruned
                    .fetch_add(n as u64, Ordering::Relaxed);
                if n < maintenance::PRUNE_BATCH
                    && let Some(job) = self.prune_job.take()
                {
                    tracing::info!(
                        rows_deleted = job.deleted,
                        elapsed_ms = job.started.elapsed().as_millis() as u64,
                        "pruned on request"
                    );
                    let _ = job.reply.send(Ok(MaintenanceOutcome::Prune {
                        rows_deleted: job.deleted,
                    }));
                }
            }
            Err(e) => {
                if let Some(job) = self.prune_job.take() {
                    tracing::warn!("prune on request failed: {e}");
                    let _ = job
                        .reply
                        .send(Err(format!("prune failed after {} rows: {e}", job.deleted)));
                }
            }
        }
    }

    /// Deletes one small batch of rows past their retention; comes back at once while a
    /// backlog remains, otherwise after `prune_every`. Only runs between batches of new rows.
    fn prune_step(&mut self) {
        let Some(retention) = self.config.retention else {
            self.next_prune = Instant::now() + Duration::from_secs(3600);
            return;
        };
        let now = chrono::Utc::now();
        match prune(
            &mut self.conn,
            maintenance::cutoff(now, retention.metrics),
            maintenance::cutoff(now, retention.resolved_alerts),
            PRUNE_BATCH,
        ) {
            Ok(n) => {
                self.stats
                    .rows_pruned
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.next_prune = if n >= PRUNE_BATCH {
                    Instant::now()
                } else {
                    Instant::now() + self.config.prune_every
                };
            }
            Err(e) => {
                tracing::debug!("pruning postponed: {e}");
                self.next_prune = Instant::now() + self.config.prune_every;
            }
        }
    }

    /// Applies the first `n` ops one by one, dropping (and logging) those that fail for good.
    fn quarantine(&mut self, state: &mut PendingState, n: usize) {
        for _ in 0..n {
            let batch = state.buffer.front_batch(0);
            match apply(&mut self.conn, batch) {
                Ok(()) => {
                    let rows = state.buffer.pop_front(1);
                    self.stats
                        .rows_written
                        .fetch_add(rows as u64, Ordering::Relaxed);
                }
                Err(e) if is_transient(&e) => return,
                Err(e) => {
                    tracing::error!(error = %e, op = ?batch[0], "dropping a write the database rejects");
                    let rows = state.buffer.pop_front(1);
                    self.stats
                        .rows_dropped
                        .fetch_add(rows as u64, Ordering::Relaxed);
                }
            }
        }
        self.retry_at = None;
    }

    fn finish(&mut self, state: &mut PendingState) {
        let result = if state.buffer.is_empty() {
            if let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                tracing::warn!("WAL checkpoint at shutdown failed: {e}");
            }
            Ok(())
        } else {
            let lost = state.buffer.rows();
            tracing::error!(lost, "shutting down with rows the database would not take");
            Err(format!("{lost} rows could not be written"))
        };
        for ack in state.acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        if let Some(ack) = state.shutdown.take() {
            let _ = ack.send(result);
        }
    }
}
