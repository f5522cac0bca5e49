//! Keeping the writer on its own database file: noticing that its path was deleted or given to
//! another file, saving what the old file holds, and getting back to writing.
//!
//! Deleted: the rows are copied out of the still-open file (whole when there is room, else the
//! state alone) into a new file at the path, and writing goes on there.
//! Replaced: the other file is never written, checkpointed or given a WAL of ours. Our rows are
//! set aside in `<path>.displaced-<time>`, new rows are held in memory (within the buffer's cap,
//! alerts never dropped), and writing resumes when the path is ours again: the other file moved
//! away (our copy is put back) or our copy moved back over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::WriterStats;
use crate::store::file::{DatabaseFile, FileIdentity, PathState};
use crate::store::rescue::{self, CopyReport};

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
    pub kind: IncidentKind,
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

/// What the writer does after an incident.
pub enum Resume {
    /// A file of ours is at the path again: open it.
    Reopen,
    /// Hold rows in memory and keep looking.
    Wait,
}

/// The old connection, kept while its rows could not be copied out yet.
struct Held {
    conn: Connection,
    file: DatabaseFile,
}

/// The writer's hold on its database file, kept across writer restarts.
pub struct FileWatch {
    path: PathBuf,
    file: Option<DatabaseFile>,
    held: Option<Held>,
    /// Our copy set aside while another file has the path, with that copy's identity.
    saved: Option<(PathBuf, FileIdentity)>,
    stats: Arc<WriterStats>,
    /// A path that could not be checked was logged already.
    check_failed: bool,
}

impl FileWatch {
    /// Watches `file` (`None`: nothing to watch, as for a writer on a test database).
    pub fn new(file: Option<DatabaseFile>, stats: Arc<WriterStats>) -> FileWatch {
        FileWatch {
            path: file
                .as_ref()
                .map(|f| f.path().to_path_buf())
                .unwrap_or_default(),
            file,
            held: None,
            saved: None,
            stats,
            check_failed: false,
        }
    }

    /// `Some` when the path no longer leads to the file the writer has open. One `stat`.
    pub fn lost(&mut self) -> Option<PathState> {
        let file = self.file.as_ref()?;
        match file.path_state() {
            Ok(PathState::Ours) => {
                self.check_failed = false;
                None
            }
            Ok(other) => Some(other),
            Err(e) => {
                if !self.check_failed {
                    self.check_failed = true;
                    tracing::warn!(db = %self.path.display(), "cannot check the database path: {e}");
                }
                None
            }
        }
    }

    /// Saves what `conn` (open on the file the path lost) holds, then says how to go on.
    pub fn rescue(&mut self, conn: Connection, state: PathState) -> Resume {
        let Some(file) = self.file.take() else {
            return Resume::Reopen;
        };
        let found = match state {
            PathState::Replaced(id) => format!("another file ({id}) is"),
            _ => "nothing is".to_string(),
        };
        tracing::error!(
            db = %self.path.display(),
            ours = %file.identity(),
            "the database file was {}: {found} at its path now; saving its rows",
            if state == PathState::Missing { "deleted" } else { "replaced" },
        );
        // First of all: no frame of ours may stay in the WAL beside whatever has the path.
        match rescue::empty_wal(&conn) {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                db = %self.path.display(),
                "another process was reading the WAL beside the new file: it may have mixed \
                 our pages with that file's"
            ),
            Err(e) => tracing::error!(db = %self.path.display(), "cannot empty the WAL: {e}"),
        }
        self.copy_and_go_on(Held { conn, file }, state)
    }

    fn copy_and_go_on(&mut self, held: Held, state: PathState) -> Resume {
        match state {
            PathState::Ours => {
                // Our own file came back (renamed away and back): carry on with it.
                self.file = Some(held.file);
                drop(held.conn);
                self.set(
                    IncidentKind::Deleted,
                    false,
                    "the database file is back at its path; writing goes on".into(),
                    None,
                    None,
                );
                Resume::Reopen
            }
            PathState::Missing => self.recreate(held),
            PathState::Replaced(_) => self.set_aside(held),
        }
    }

    /// Nothing at the path: copy the old file's rows to a new file there.
    fn recreate(&mut self, held: Held) -> Resume {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            return self.hold(
                held,
                IncidentKind::Deleted,
                format!("cannot recreate its directory: {e}"),
            );
        }
        let temp = sibling(&self.path, &format!(".rescue-{}", std::process::id()), true);
        rescue::remove_with_journals(&temp);
        let report = match rescue::copy_out(&held.conn, &temp) {
            Ok(r) => r,
            Err(e) => {
                return self.hold(
                    held,
                    IncidentKind::Deleted,
                    format!("cannot copy its rows yet: {e:#}"),
                );
            }
        };
        // Closing is safe: nothing is at the path, so the WAL and shared memory SQLite deletes
        // by name are ours. The old file's space goes back to the disk with it.
        if let Err((conn, e)) = held.conn.close() {
            tracing::warn!("closing the old connection failed: {e}");
            std::mem::forget(conn);
        }
        drop(held.file);
        match std::fs::hard_link(&temp, &self.path) {
            Ok(()) => {
                let _ = std::fs::remove_file(&temp);
                match DatabaseFile::lock(&self.path) {
                    Ok(file) => self.adopt(file),
                    Err(e) => tracing::error!("cannot lock the recreated database: {e:#}"),
                }
                let message = format!(
                    "the database file {} was deleted while in use; recreated it from the copy \
                     still open: {}",
                    self.path.display(),
                    describe(&report)
                );
                tracing::error!("{message}");
                self.set(IncidentKind::Deleted, false, message, Some(report), None);
                Resume::Reopen
            }
            Err(e) => {
                // A file appeared at the path meanwhile: ours waits beside it.
                let saved = sibling(&self.path, &displaced_suffix(), false);
                if std::fs::rename(&temp, &saved).is_err() {
                    tracing::error!("cannot put our copy at {}: {e}", self.path.display());
                }
                self.waiting_beside(saved, report)
            }
        }
    }

    /// Another file at the path: set our rows aside and never touch that file.
    fn set_aside(&mut self, held: Held) -> Resume {
        let saved = sibling(&self.path, &displaced_suffix(), false);
        match rescue::copy_out(&held.conn, &saved) {
            Ok(report) => {
                // Never closed: closing checkpoints the WAL at the path (now the other file's)
                // into ours and deletes it. Nothing more goes through this connection; its
                // descriptors and locks end with the process.
                std::mem::forget(held.conn);
                std::mem::forget(held.file);
                self.waiting_beside(saved, report)
            }
            Err(e) => self.hold(
                held,
                IncidentKind::Replaced,
                format!("cannot save a copy of our rows yet: {e:#}"),
            ),
        }
    }

    fn waiting_beside(&mut self, saved: PathBuf, report: CopyReport) -> Resume {
        let message = format!(
            "the database file {} was replaced by another file while in use; that file is not \
             touched. Our rows are in {} ({}); new rows are held in memory until the path is \
             ours again: move the other file away (our copy is put back), move {} over it, or \
             restart the daemon to adopt the file now at the path",
            self.path.display(),
            saved.display(),
            describe(&report),
            saved.display(),
        );
        tracing::error!("{message}");
        self.saved = FileIdentity::of_path(&saved)
            .ok()
            .flatten()
            .map(|id| (saved.clone(), id));
        self.set(
            IncidentKind::Replaced,
            true,
            message,
            Some(report),
            Some(saved.display().to_string()),
        );
        Resume::Wait
    }

    fn hold(&mut self, held: Held, kind: IncidentKind, why: String) -> Resume {
        let message = format!(
            "the database file {} was {} while in use and {why}; rows are held in memory and \
             it is tried again",
            self.path.display(),
            if kind == IncidentKind::Deleted {
                "deleted"
            } else {
                "replaced"
            },
        );
        tracing::error!("{message}");
        self.held = Some(held);
        self.set(kind, true, message, None, None);
        Resume::Wait
    }

    /// While waiting: tries again to save what is held, and says whether the path is ours again.
    pub fn try_resume(&mut self) -> Resume {
        let state = match FileIdentity::of_path(&self.path) {
            Ok(Some(id)) => match &self.held {
                Some(h) if h.file.identity() == id => PathState::Ours,
                _ => PathState::Replaced(id),
            },
            Ok(None) => PathState::Missing,
            Err(_) => return Resume::Wait,
        };
        if let Some(held) = self.held.take() {
            if matches!(state, PathState::Replaced(_)) && !wal_is_empty(&self.path) {
                // The other file's WAL has frames now: a read through the old connection
                // would take them for ours. What it held is lost.
                let message = format!(
                    "the database file {} was replaced while in use, and our rows could not be \
                     copied before the other file was written to: they are lost",
                    self.path.display()
                );
                tracing::error!("{message}");
                std::mem::forget(held.conn);
                std::mem::forget(held.file);
                self.set(IncidentKind::Replaced, true, message, None, None);
                return Resume::Wait;
            }
            return self.copy_and_go_on(held, state);
        }
        match state {
            PathState::Missing => {
                if let Some((saved, _)) = self.saved.take() {
                    if std::fs::hard_link(&saved, &self.path).is_ok() {
                        let _ = std::fs::remove_file(&saved);
                        return self.reattached(format!(
                            "the other file left {}; our copy from {} is back at the path and \
                             writing goes on",
                            self.path.display(),
                            saved.display()
                        ));
                    }
                    self.saved = FileIdentity::of_path(&saved)
                        .ok()
                        .flatten()
                        .map(|id| (saved, id));
                    return Resume::Wait;
                }
                self.reattached(format!(
                    "{} is free again; writing goes on in a new database",
                    self.path.display()
                ))
            }
            PathState::Replaced(id) if self.saved.as_ref().is_some_and(|(_, s)| *s == id) => {
                let saved = self.saved.take().map(|(p, _)| p).unwrap_or_default();
                self.reattached(format!(
                    "our copy {} was moved back to {}; writing goes on",
                    saved.display(),
                    self.path.display()
                ))
            }
            _ => Resume::Wait,
        }
    }

    fn reattached(&mut self, what: String) -> Resume {
        match DatabaseFile::lock(&self.path) {
            Ok(file) => {
                self.adopt(file);
                tracing::warn!("{what}");
                let mut incident = self.incident();
                if let Some(i) = incident.as_mut() {
                    i.ongoing = false;
                    i.message = format!("{} Since then: {what}.", i.message);
                }
                if let (Ok(mut slot), Some(i)) = (self.stats.file_incident.lock(), incident) {
                    *slot = Some(i);
                }
                Resume::Reopen
            }
            Err(e) => {
                tracing::error!("cannot lock {}: {e:#}", self.path.display());
                Resume::Wait
            }
        }
    }

    fn adopt(&mut self, file: DatabaseFile) {
        crate::collect::sqlite_probe::set_own_database(file.path());
        self.file = Some(file);
    }

    /// Before the writer opens the path without a connection to save rows from (at a start on
    /// a full disk, after a crash): the path must still lead to our file, or to none.
    pub fn before_open(&mut self) -> Resume {
        match self.lost() {
            None => Resume::Reopen,
            Some(PathState::Missing) => {
                let message = format!(
                    "the database file {} was deleted while the writer could not open it (a \
                     full disk); what it held is lost, and writing goes on in a new database",
                    self.path.display()
                );
                tracing::error!("{message}");
                self.file = None;
                match DatabaseFile::lock(&self.path) {
                    Ok(file) => self.adopt(file),
                    Err(e) => tracing::error!("cannot lock the new database: {e:#}"),
                }
                self.set(IncidentKind::Deleted, false, message, None, None);
                Resume::Reopen
            }
            Some(_) => {
                let message = format!(
                    "the database file {} was replaced by another file while the writer could \
                     not open it (a full disk); that file is not touched, and rows are held in \
                     memory until the path is free again or the daemon is restarted to adopt it",
                    self.path.display()
                );
                tracing::error!("{message}");
                self.file = None;
                self.set(IncidentKind::Replaced, true, message, None, None);
                Resume::Wait
            }
        }
    }

    /// Why writes wait, for a flush or a task that cannot be answered meanwhile.
    pub fn reason(&self) -> String {
        self.incident()
            .map(|i| i.message)
            .unwrap_or_else(|| "the database file is not ours".into())
    }

    /// At shutdown: lets go of a held connection the safe way, and says where our rows are.
    pub fn give_up(&mut self) -> String {
        if let Some(held) = self.held.take() {
            if FileIdentity::of_path(&self.path).ok().flatten().is_none() {
                drop(held.conn);
            } else {
                std::mem::forget(held.conn);
                std::mem::forget(held.file);
            }
        }
        match &self.saved {
            Some((saved, _)) => format!("our earlier rows are in {}", saved.display()),
            None => "the database file was lost".into(),
        }
    }

    fn incident(&self) -> Option<FileIncident> {
        self.stats.file_incident.lock().ok()?.clone()
    }

    fn set(
        &self,
        kind: IncidentKind,
        ongoing: bool,
        message: String,
        copy: Option<CopyReport>,
        saved_copy: Option<String>,
    ) {
        let fresh = self.incident().is_none_or(|i| !i.ongoing);
        if fresh {
            self.stats
                .file_incidents
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut slot) = self.stats.file_incident.lock() {
            *slot = Some(FileIncident {
                kind,
                at: Utc::now(),
                ongoing,
                message,
                copy,
                saved_copy,
            });
        }
    }
}

/// What a copy kept, in words.
fn describe(report: &CopyReport) -> String {
    if report.whole {
        format!(
            "nothing was lost ({} metric rows and {} alerts carried over)",
            report.metric_rows_kept, report.alert_rows_kept
        )
    } else {
        format!(
            "there was no room for a whole copy, so the monitors, active alerts, silences and \
             open escalations were kept, and {} metric rows and {} resolved alerts that were \
             only in the old file are gone",
            report.metric_rows_lost, report.alert_rows_lost
        )
    }
}

/// `<path><suffix>`, or `.<name><suffix>` (hidden) beside it.
fn sibling(path: &Path, suffix: &str, hidden: bool) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = if hidden {
        format!(".{name}{suffix}")
    } else {
        format!("{name}{suffix}")
    };
    path.with_file_name(name)
}

fn displaced_suffix() -> String {
    format!(".displaced-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"))
}

/// True when no WAL with frames is beside `path`.
fn wal_is_empty(path: &Path) -> bool {
    let wal = sibling(path, "-wal", false);
    std::fs::metadata(wal).map_or(true, |m| m.len() == 0)
}
