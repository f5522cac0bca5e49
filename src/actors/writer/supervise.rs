//! The writer thread's supervision: opening (and reopening) the connection, waiting out a full
//! disk or a crash, and holding rows while the database path is not the writer's file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{Connection, ErrorCode};

use super::file_watch::{FileWatch, Resume};
use super::handle::{WriterConfig, WriterMsg, WriterStats, state_code};
use super::thread::{MAX_BACKOFF, MIN_BACKOFF, PendingState, RunEnd, SHUTDOWN_GRACE, Writer};
use super::{
    Opener,
    restart::{ChildState, RestartTracker},
};
use crate::config::RestartPolicy;
use crate::store::file::PathState;

pub(super) fn supervise(
    open: Opener,
    mut conn: Option<Connection>,
    mut watch: FileWatch,
    rx: Receiver<WriterMsg>,
    stats: Arc<WriterStats>,
    config: WriterConfig,
    policy: RestartPolicy,
) {
    let mut state = PendingState::default();
    let mut tracker = RestartTracker::new(policy);
    let mut open_backoff = MIN_BACKOFF;
    let mut shutdown_deadline: Option<Instant> = None;
    loop {
        if state.shutdown.is_some() && shutdown_deadline.is_none() {
            shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        }
        if conn.is_none() {
            // Nothing open to save rows from: the path must lead to our file before it is
            // opened, or writing waits.
            let mut resume = watch.before_open();
            while let Resume::Wait = resume {
                if !wait_for_file(&rx, &mut state, &stats, &mut watch, config) {
                    return;
                }
                resume = watch.try_resume();
            }
        }
        let connection = match conn.take() {
            Some(c) => c,
            None => match open() {
                Ok(c) => {
                    open_backoff = MIN_BACKOFF;
                    c
                }
                Err(e)
                    if opening_can_wait(&e)
                        && shutdown_deadline.is_none_or(|d| Instant::now() < d) =>
                {
                    // What waiting may cure (a full disk: SQLite cannot size its WAL or shared
                    // memory; a lock; a file that cannot be opened yet) is waited out like a
                    // failing commit, alerted on, not counted as a crash: rows are held.
                    open_failed(&stats, &e, state.buffer.rows());
                    wait_accepting(&rx, &mut state, &stats, config, open_backoff);
                    open_backoff = (open_backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) if state.shutdown.is_some() => {
                    // Nobody waits for another try: say what could not be written, and end.
                    let lost = state.buffer.rows();
                    tracing::error!(lost, "writer cannot reopen the database at shutdown: {e:#}");
                    let result = Err(format!("{lost} rows could not be written: {e:#}"));
                    for ack in state.acks.drain(..) {
                        let _ = ack.send(result.clone());
                    }
                    for (_, reply) in state.maintenance.drain(..) {
                        let _ = reply.send(Err(format!("the database cannot be opened: {e:#}")));
                    }
                    if let Some(ack) = state.shutdown.take() {
                        let _ = ack.send(result);
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!("writer cannot reopen the database: {e:#}");
                    wait_restart(&mut tracker, &stats, &rx, &mut state, config);
                    continue;
                }
            },
        };
        let mut writer = Writer::new(connection, rx.clone(), stats.clone(), config);
        match catch_unwind(AssertUnwindSafe(|| writer.run(&mut state, &mut watch))) {
            Ok(RunEnd::Finished) => return,
            Ok(RunEnd::Lost(path_state)) => {
                if !lost_file(
                    writer, path_state, &rx, &mut state, &stats, &mut watch, config,
                ) {
                    return;
                }
            }
            Err(panic) => {
                let what = crate::util::panic_message(&*panic);
                tracing::error!(
                    buffered_rows = state.buffer.rows(),
                    "writer panicked ({what}); the uncommitted rows are kept for the next writer"
                );
                // Closing a connection whose path lost its file would checkpoint and delete
                // the WAL at the path: the file is saved first, as after any other turn.
                if let Some(path_state) = watch.lost() {
                    if !lost_file(
                        writer, path_state, &rx, &mut state, &stats, &mut watch, config,
                    ) {
                        return;
                    }
                    continue;
                }
                drop(writer);
                wait_restart(&mut tracker, &stats, &rx, &mut state, config);
            }
        }
    }
}

/// Waits out the backoff (or the park pause) while still accepting messages, so senders are not
/// refused meanwhile; a shutdown request cuts the wait short.
fn wait_restart(
    tracker: &mut RestartTracker,
    stats: &WriterStats,
    rx: &Receiver<WriterMsg>,
    state: &mut PendingState,
    config: WriterConfig,
) {
    let delay = tracker.exited(Instant::now());
    stats
        .state
        .store(state_code(tracker.state), Ordering::Relaxed);
    if tracker.state == ChildState::Parked {
        tracing::error!(
            restarts = tracker.restarts,
            pause_secs = delay.as_secs_f64(),
            "writer keeps failing: parked before the next try"
        );
    }
    let until = Instant::now() + delay;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(msg) => {
                state.accept(msg, &stats.rows_dropped, config);
                stats
                    .buffered_rows
                    .store(state.buffer.rows() as u64, Ordering::Relaxed);
                if state.shutdown.is_some() {
                    break; // Shutting down: one more try now rather than after the pause.
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(left);
                break;
            }
        }
    }
    tracker.restarted(Instant::now());
    stats.restarts.store(tracker.restarts, Ordering::Relaxed);
    stats
        .state
        .store(state_code(ChildState::Running), Ordering::Relaxed);
    tracing::info!(restarts = tracker.restarts, "writer restarted");
}

/// True when an error opening the database is one that waiting may cure.
fn opening_can_wait(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<rusqlite::Error>())
        .any(is_transient)
}

/// Records a failed open as the failure of a commit would be: failing, alertable, the error.
fn open_failed(stats: &WriterStats, e: &anyhow::Error, buffered_rows: usize) {
    let message = format!("{e:#}");
    if !stats.failing.swap(true, Ordering::Relaxed) {
        tracing::error!(
            error = %message,
            buffered_rows,
            "cannot open the database for writing; keeping the rows and retrying"
        );
    }
    if !stats.failing_alertable.swap(true, Ordering::Relaxed) {
        stats.alerted_episodes.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut last) = stats.last_error.lock() {
        *last = Some(message);
    }
}

/// Accepts messages for `wait`, then whatever else is waiting, and counts what is held.
fn wait_accepting(
    rx: &Receiver<WriterMsg>,
    state: &mut PendingState,
    stats: &WriterStats,
    config: WriterConfig,
    wait: Duration,
) {
    match rx.recv_timeout(wait) {
        Ok(msg) => state.accept(msg, &stats.rows_dropped, config),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
    }
    while let Ok(msg) = rx.try_recv() {
        state.accept(msg, &stats.rows_dropped, config);
    }
    stats
        .buffered_rows
        .store(state.buffer.rows() as u64, Ordering::Relaxed);
}

/// The path lost the writer's file: saves its rows and waits until the path is ours again;
/// `false` when the writer was shut down meanwhile.
fn lost_file(
    writer: Writer,
    path_state: PathState,
    rx: &Receiver<WriterMsg>,
    state: &mut PendingState,
    stats: &WriterStats,
    watch: &mut FileWatch,
    config: WriterConfig,
) -> bool {
    let Writer {
        conn, prune_job, ..
    } = writer;
    if let Some(job) = prune_job {
        let _ = job.reply.send(Err(format!(
            "stopped after {} rows: the database file was deleted or replaced",
            job.deleted
        )));
    }
    let mut resume = watch.rescue(conn, path_state);
    while let Resume::Wait = resume {
        if !wait_for_file(rx, state, stats, watch, config) {
            return false;
        }
        resume = watch.try_resume();
    }
    true
}

/// While the path is not ours: keeps accepting rows (within the buffer's cap) for
/// [`FILE_RETRY`], answers what cannot wait with the reason, and returns to look at the path
/// again; `false` after a shutdown (once answered) or when no sender is left.
fn wait_for_file(
    rx: &Receiver<WriterMsg>,
    state: &mut PendingState,
    stats: &WriterStats,
    watch: &mut FileWatch,
    config: WriterConfig,
) -> bool {
    let until = Instant::now() + FILE_RETRY;
    let mut disconnected = false;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(msg) => state.accept(msg, &stats.rows_dropped, config),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                disconnected = true;
                break;
            }
        }
        if state.shutdown.is_some() {
            break;
        }
    }
    stats
        .buffered_rows
        .store(state.buffer.rows() as u64, Ordering::Relaxed);
    let reason = watch.reason();
    for ack in state.acks.drain(..) {
        let _ = ack.send(Err(reason.clone()));
    }
    for (_, reply) in state.maintenance.drain(..) {
        let _ = reply.send(Err(reason.clone()));
    }
    if let Some(ack) = state.shutdown.take() {
        let lost = state.buffer.rows();
        let where_ = watch.give_up();
        tracing::error!(
            lost,
            "shutting down while the database file is not ours: the rows held in memory are \
             lost; {where_}"
        );
        let _ = ack.send(Err(format!("{lost} rows could not be written: {reason}")));
        return false;
    }
    if disconnected {
        // Nobody is left to send anything, or to ask for a shutdown.
        let lost = state.buffer.rows();
        let where_ = watch.give_up();
        tracing::error!(
            lost,
            "every sender is gone while the database file is not ours: the rows held in \
             memory are lost; {where_}"
        );
        return false;
    }
    true
}

/// How often a writer whose database path is not its own looks at it again.
const FILE_RETRY: Duration = Duration::from_millis(500);

/// Errors worth waiting out: another process holds the lock, the disk is full, I/O hiccups.
pub(super) fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}
