//! The writer: one thread owning the only write connection, fed by a bounded channel, committing
//! in batches and keeping every accepted row until it lands.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use rusqlite::{Connection, ErrorCode};
use serde::Serialize;
use tokio::sync::oneshot;

use super::restart::{ChildState, RestartTracker};
use crate::config::RestartPolicy;
use crate::faults;
use crate::store::maintenance::{self, MaintenanceOutcome, MaintenanceTask};
use crate::store::open_for_writing;
use crate::store::write::{WriteOp, apply, prune};

pub mod buffer;
pub mod file_watch;

pub use buffer::PendingBuffer;
use file_watch::{FileIncident, FileWatch, Resume};

use crate::store::file::{DatabaseFile, PathState};

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
    rows_written: AtomicU64,
    rows_dropped: AtomicU64,
    rows_refused: AtomicU64,
    rows_pruned: AtomicU64,
    commit_failures: AtomicU64,
    buffered_rows: AtomicU64,
    failing: AtomicBool,
    /// The current failure has lasted long enough (or is serious enough) to alert on.
    failing_alertable: AtomicBool,
    /// Failure episodes that called for an alert, so a brief one is not missed between polls.
    alerted_episodes: AtomicU64,
    last_error: Mutex<Option<String>>,
    restarts: AtomicU32,
    /// A [`ChildState`] as a number (0 running, 1 restarting, 2 parked).
    state: AtomicU8,
    /// The latest time the database path lost the writer's file.
    file_incident: Mutex<Option<FileIncident>>,
    /// Such incidents since start, so one that began and ended between polls still alerts.
    file_incidents: AtomicU64,
}

fn state_code(state: ChildState) -> u8 {
    match state {
        ChildState::Running => 0,
        ChildState::Restarting => 1,
        ChildState::Parked => 2,
    }
}

/// A point-in-time copy of [`WriterStats`], as shown by `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WriterReport {
    /// Messages waiting in the channel.
    pub queue_depth: u64,
    /// Rows accepted but not yet committed.
    pub buffered_rows: u64,
    pub rows_written: u64,
    /// Metric rows dropped because the buffer hit its memory cap.
    pub rows_dropped: u64,
    /// Rows refused because the channel was full.
    pub rows_refused: u64,
    /// Rows deleted for being past their retention.
    #[serde(default)]
    pub rows_pruned: u64,
    pub commit_failures: u64,
    /// True while commits fail (locked, full or broken database).
    pub failing: bool,
    /// True while the failure calls for an alert: at once for a full disk or an I/O error,
    /// after [`LOCK_GRACE`] for a database another process keeps locked.
    pub failing_alertable: bool,
    /// Failure episodes that called for an alert since start.
    pub alerted_episodes: u64,
    pub last_error: Option<String>,
    /// The latest time the database path lost the writer's file (deleted or replaced).
    #[serde(default)]
    pub database_file: Option<FileIncident>,
    /// Such incidents since start.
    #[serde(default)]
    pub file_incidents: u64,
}

/// The stable way to reach the writer: the channel outlives any one writer thread.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: Sender<WriterMsg>,
    stats: Arc<WriterStats>,
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
    pub fn maintain(
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
    pub fn supervision(&self) -> (ChildState, u32) {
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
pub(crate) fn detached_handle(capacity: usize) -> (WriterHandle, Receiver<WriterMsg>) {
    let (tx, rx) = bounded(capacity);
    let handle = WriterHandle {
        tx,
        stats: Arc::new(WriterStats::default()),
    };
    (handle, rx)
}

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
            supervise(open, conn, watch, rx, stats, config, policy)
        })?;
    Ok((handle, thread))
}

/// Opens a fresh write connection, for a writer restarted after a panic.
pub type Opener = Box<dyn Fn() -> anyhow::Result<Connection> + Send>;

/// An opener for a plain database file, without a size cap.
pub fn opener(db_path: PathBuf) -> Opener {
    Box::new(move || open_for_writing(&db_path))
}

fn supervise(
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
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
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

/// How a writer's run ended.
enum RunEnd {
    /// Shut down, or nobody is left to send anything.
    Finished,
    /// The database path no longer leads to the connection's file.
    Lost(PathState),
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
fn is_transient(e: &rusqlite::Error) -> bool {
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

type Ack = oneshot::Sender<Result<(), String>>;

/// Everything accepted but not yet committed: it outlives any one [`Writer`], so a panic in the
/// commit path loses none of it.
#[derive(Default)]
struct PendingState {
    buffer: PendingBuffer,
    /// Flushes waiting for the buffer to empty.
    acks: Vec<Ack>,
    /// Upkeep tasks waiting for the buffer to empty.
    maintenance: Vec<(MaintenanceTask, MaintenanceReply)>,
    shutdown: Option<Ack>,
}

impl PendingState {
    fn accept(&mut self, msg: WriterMsg, dropped_counter: &AtomicU64, config: WriterConfig) {
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

struct Writer {
    conn: Connection,
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
    prune_job: Option<PruneJob>,
}

/// A `db prune` in progress.
struct PruneJob {
    metrics_before: chrono::DateTime<chrono::Utc>,
    alerts_before: chrono::DateTime<chrono::Utc>,
    deleted: u64,
    started: Instant,
    reply: MaintenanceReply,
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Rows deleted per pruning transaction: small enough never to stall new writes.
const PRUNE_BATCH: usize = 5000;
/// How long another process may hold the database locked before it is alerted on: short lock
/// waits (a `sqlite3` session, a backup) are normal.
pub const LOCK_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown keeps retrying a failing database before giving up on the rest.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Writer {
    fn new(
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

    fn run(&mut self, state: &mut PendingState, watch: &mut FileWatch) -> RunEnd {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_for_writing;
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
