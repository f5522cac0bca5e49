//! What the daemon's parts report about themselves, as plain data: no actor, no thread.
//!
//! The supervisor's children, the collectors' cycles, the writer and the notification sinks
//! each hand out one of these; the status document, the control protocol and the HTTP
//! listener read them without reaching into `actors`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::rescue::CopyReport;

/// Where a child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildState {
    /// Up and working.
    Running,
    /// Died; a restart is scheduled after a backoff.
    Restarting,
    /// Died too often; waits a long pause before one more try.
    Parked,
}

/// One child as `status --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorReport {
    /// The child's name: `system`, `writer`, `agent:<id>`, `workspace:<id>`...
    pub name: String,
    /// Whether it runs, waits to restart or is parked.
    pub state: ChildState,
    /// Times it was restarted since the daemon started.
    pub restarts: u32,
}

/// One collector's latest cycle, as the status document and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CycleStat {
    /// Wall time of the last finished measurement, from its start to its readings.
    pub last_seconds: f64,
}

/// A point-in-time copy of [`WriterStats`], as shown by `status --json`.
///
/// [`WriterStats`]: crate::actors::writer::WriterStats
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct WriterReport {
    /// Messages waiting in the channel.
    pub queue_depth: u64,
    /// Rows accepted but not yet committed.
    pub buffered_rows: u64,
    /// Rows committed to the database since the daemon started.
    pub rows_written: u64,
    /// Metric rows dropped because the buffer hit its memory cap.
    pub rows_dropped: u64,
    /// Rows refused because the channel was full.
    pub rows_refused: u64,
    /// Rows deleted for being past their retention.
    #[serde(default)]
    pub rows_pruned: u64,
    /// Commits that failed since start, each retry counted.
    pub commit_failures: u64,
    /// True while commits fail (locked, full or broken database).
    pub failing: bool,
    /// True while the failure calls for an alert: at once for a full disk or an I/O error,
    /// after [`LOCK_GRACE`] for a database another process keeps locked.
    ///
    /// [`LOCK_GRACE`]: crate::actors::writer::LOCK_GRACE
    pub failing_alertable: bool,
    /// Failure episodes that called for an alert since start.
    pub alerted_episodes: u64,
    /// The latest commit or open error, kept after writes recover; `None` if none since start.
    pub last_error: Option<String>,
    /// The latest time the database path lost the writer's file (deleted or replaced).
    #[serde(default)]
    pub database_file: Option<FileIncident>,
    /// Such incidents since start.
    #[serde(default)]
    pub file_incidents: u64,
}

/// How the path lost our file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Nothing was at the path any more.
    Deleted,
    /// Another file had the path.
    Replaced,
}

/// The latest database file incident, as `status --json` and `/healthz` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileIncident {
    /// Whether the file was deleted or replaced.
    pub kind: IncidentKind,
    /// When it was noticed.
    pub at: DateTime<Utc>,
    /// Writing has not resumed yet: rows are held in memory.
    pub ongoing: bool,
    /// What happened and what the daemon did, in words.
    pub message: String,
    /// What the copy out of the old file kept and lost, once made.
    pub copy: Option<CopyReport>,
    /// Where our rows wait while another file has the path.
    pub saved_copy: Option<String>,
}

/// What a sink has done so far, for `status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SinkReport {
    /// `exec:/path/prog`, `webhook:URL`, `alertmanager:URL` or `escalate:prog`.
    pub sink: String,
    /// Notices delivered (after retries, if any); notices a sink skips are not counted.
    pub sent: u64,
    /// Notices given up on after every retry.
    pub failed: u64,
    /// Retry attempts made.
    pub retries: u64,
    /// Notices refused because the sink's queue was full (or the sink had stopped).
    pub dropped: u64,
    /// Notices waiting in the queue now.
    pub queued: usize,
    /// The latest failure, attempt or re-send, if any.
    pub last_error: Option<String>,
}
