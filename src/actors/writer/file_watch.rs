//! Keeping the writer on its own database file: noticing that its path was deleted or given to
//! another file, saving what the old file holds, and getting back to writing.
//!
//! Deleted: the rows are copied out of the still-open file (whole when there is room, else the
//! state alone) into a new file at the path, and writing goes on there.
//! Replaced: the other file is never written or checkpointed, and no frame of ours is left in
//! the WAL beside it. Our rows are set aside in `<path>.displaced-<time>`, new rows are held in
//! memory (within the buffer's cap, alerts never dropped), and writing resumes when the path is
//! ours again: the other file moved away (our copy is put back) or our copy moved back over it.
//!
//! SQLite names the WAL and shared memory after the path, so they are shared with whatever
//! file has the path now; everything below follows from that (sqlite3.c: `sqlite3WalClose`
//! checkpoints and deletes the WAL by name on the last close; `unixShmMap` trusts a
//! shared-memory file another connection holds locked).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, FileControl};

use super::WriterStats;
use crate::store::file::{DatabaseFile, FileIdentity, PathState, other_lock_holders};
use crate::store::rescue::{self, CopyReport};

pub use crate::report::{FileIncident, IncidentKind};

impl IncidentKind {
    fn word(self) -> &'static str {
        match self {
            IncidentKind::Deleted => "deleted",
            IncidentKind::Replaced => "replaced",
        }
    }
}

/// What the writer does after an incident.
pub(crate) enum Resume {
    /// A file of ours is at the path again: open it.
    Reopen,
    /// Hold rows in memory and keep looking.
    Wait,
}

/// The old connection, kept while its rows could not be copied out yet.
struct Held {
    conn: Connection,
    file: DatabaseFile,
    kind: IncidentKind,
}

/// How long another process's connection to the shared WAL is waited out before the old
/// connection is given up as it stands (a `status` reader goes in milliseconds).
const SHARED_WAL_GRACE: Duration = Duration::from_secs(2);

/// The writer's hold on its database file, kept across writer restarts.
pub(crate) struct FileWatch {
    path: PathBuf,
    file: Option<DatabaseFile>,
    held: Option<Held>,
    /// Our copy set aside while another file has the path, with that copy's identity.
    saved: Option<(PathBuf, FileIdentity)>,
    /// The file we put at the path, when locking it failed: locked again on the next try.
    unlocked: Option<FileIdentity>,
    /// Files given up without a close (closing would touch the path's WAL): kept, so their
    /// descriptors and locks are never closed under a connection that still uses them.
    retired: Vec<(Connection, DatabaseFile)>,
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
            unlocked: None,
            retired: Vec::new(),
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
            // Not reachable (`lost` needs a file); never close a connection blind.
            std::mem::forget(conn);
            return Resume::Wait;
        };
        let kind = match state {
            PathState::Missing => IncidentKind::Deleted,
            _ => IncidentKind::Replaced,
        };
        let found = match state {
            PathState::Replaced(id) => format!("another file ({id}) is"),
            _ => "nothing is".to_string(),
        };
        tracing::error!(
            db = %self.path.display(),
            ours = %file.identity(),
            "the database file was {}: {found} at its path now; saving its rows",
            kind.word(),
        );
        let held = Held { conn, file, kind };
        if kind == IncidentKind::Replaced && !self.wal_is_ours_alone() {
            return self.give_up_shared(held);
        }
        // No frame of ours may stay in the WAL beside whatever has the path: into our own
        // file with them. Safe now: no other process has the WAL open.
        match rescue::empty_wal(&held.conn) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                db = %self.path.display(),
                "a reader kept part of the WAL from being checkpointed; copying through the connection"
            ),
            Err(e) => tracing::error!(db = %self.path.display(), "cannot empty the WAL: {e}"),
        }
        self.copy_and_go_on(held, state)
    }

    /// True once no other process holds the shared memory of the path's WAL (waiting out a
    /// short reader); a process that does has a connection that may write our WAL.
    fn wal_is_ours_alone(&self) -> bool {
        let shm = sibling(&self.path, "-shm", false);
        let deadline = std::time::Instant::now() + SHARED_WAL_GRACE;
        loop {
            let others = other_lock_holders(&shm);
            if others.is_empty() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                tracing::error!(
                    db = %self.path.display(),
                    pids = ?others,
                    "other processes have the WAL beside the new file open"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Another process uses the WAL beside the file that has the path: our connection must do
    /// nothing more with it (a checkpoint would move that process's frames into our file, and
    /// mark them done for it). Our rows are copied from our file itself, as of its last
    /// checkpoint, and the connection is retired as it stands.
    fn give_up_shared(&mut self, held: Held) -> Resume {
        let saved = sibling(&self.path, &displaced_suffix(), false);
        let copied = rescue::copy_out_of_file(&held.file, &saved);
        self.retired.push((held.conn, held.file));
        match copied {
            Ok(report) => {
                let note = "rows committed since the last checkpoint were in the WAL the other \
                            process shares, and are not in it";
                self.waiting_beside(saved, report, Some(note))
            }
            Err(e) => {
                let message = format!(
                    "the database file {} was replaced by another file that another process \
                     has open, and our rows could not be copied ({e:#}): they are lost. New \
                     rows are held in memory until the path is free again or the daemon is \
                     restarted to adopt the file at it",
                    self.path.display()
                );
                tracing::error!("{message}");
                self.set(IncidentKind::Replaced, true, message, None, None);
                Resume::Wait
            }
        }
    }

    fn copy_and_go_on(&mut self, held: Held, state: PathState) -> Resume {
        match state {
            PathState::Ours => {
                // Our own file came back (renamed away and back): carry on with it.
                let kind = held.kind;
                self.file = Some(held.file);
                drop(held.conn);
                self.set(
                    kind,
                    false,
                    format!(
                        "the database file {} is back at its path; writing goes on",
                        self.path.display()
                    ),
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
            return self.hold(held, format!("cannot recreate its directory: {e}"));
        }
        let temp = sibling(&self.path, &format!(".rescue-{}", std::process::id()), true);
        rescue::remove_with_journals(&temp);
        let report = match rescue::copy_out(&held.conn, &temp) {
            Ok(r) => r,
            Err(e) => return self.hold(held, format!("cannot copy its rows yet: {e:#}")),
        };
        self.close_orphan(held);
        match rescue::place(&temp, &self.path) {
            Ok(()) => {
                let message = format!(
                    "the database file {} was deleted while in use; recreated it from the copy \
                     still open: {}",
                    self.path.display(),
                    describe(&report)
                );
                tracing::error!("{message}");
                self.set(IncidentKind::Deleted, false, message, Some(report), None);
                self.lock_placed()
            }
            Err(e) => {
                // A file appeared at the path meanwhile (or none can be put there): ours
                // waits beside it.
                let saved = sibling(&self.path, &displaced_suffix(), false);
                match std::fs::rename(&temp, &saved) {
                    Ok(()) => {
                        tracing::error!("cannot put our copy at {}: {e}", self.path.display());
                        self.waiting_beside(saved, report, None)
                    }
                    Err(e2) => {
                        let message = format!(
                            "the database file {} was deleted while in use; its copy could not \
                             be put at the path ({e}) nor beside it ({e2}), and stays at {}",
                            self.path.display(),
                            temp.display()
                        );
                        tracing::error!("{message}");
                        self.saved = FileIdentity::of_path(&temp)
                            .ok()
                            .flatten()
                            .map(|id| (temp.clone(), id));
                        self.set(
                            IncidentKind::Deleted,
                            true,
                            message,
                            Some(report),
                            Some(temp.display().to_string()),
                        );
                        Resume::Wait
                    }
                }
            }
        }
    }

    /// Closes a connection whose file lost its name, when that is safe: with nothing at the
    /// path, and persistent WAL set so the close deletes no WAL or shared memory by name (the
    /// files left are ours and empty). Otherwise it is retired as it stands.
    fn close_orphan(&mut self, held: Held) {
        let free = FileIdentity::of_path(&self.path).is_ok_and(|id| id.is_none());
        let mut persist = 1;
        let persisted = held
            .conn
            .file_control(Some("main"), FileControl::PersistWal(&mut persist))
            .is_ok();
        if !(free && persisted) {
            self.retired.push((held.conn, held.file));
            return;
        }
        match held.conn.close() {
            Ok(()) => drop(held.file),
            Err((conn, e)) => {
                tracing::warn!("closing the old connection failed: {e}");
                self.retired.push((conn, held.file));
            }
        }
    }

    /// Another file at the path: set our rows aside and never touch that file.
    fn set_aside(&mut self, held: Held) -> Resume {
        let saved = sibling(&self.path, &displaced_suffix(), false);
        match rescue::copy_out(&held.conn, &saved) {
            Ok(report) => {
                // Never closed: closing checkpoints the WAL at the path (now the other file's)
                // into ours and deletes it. Nothing more goes through this connection.
                self.retired.push((held.conn, held.file));
                self.waiting_beside(saved, report, None)
            }
            Err(e) => self.hold(held, format!("cannot save a copy of our rows yet: {e:#}")),
        }
    }

    fn waiting_beside(&mut self, saved: PathBuf, report: CopyReport, note: Option<&str>) -> Resume {
        let note = note.map(|n| format!("; {n}")).unwrap_or_default();
        let message = format!(
            "the database file {} was replaced by another file while in use; that file is not \
             touched. Our rows are in {} ({}{note}); new rows are held in memory until the \
             path is ours again: move the other file away (our copy is put back), move {} over \
             it, or restart the daemon to adopt the file now at the path",
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

    fn hold(&mut self, held: Held, why: String) -> Resume {
        let message = format!(
            "the database file {} was {} while in use and {why}; rows are held in memory and \
             it is tried again",
            self.path.display(),
            held.kind.word(),
        );
        // Said once: the same failure on every retry is no news.
        if self.incident().is_none_or(|i| i.message != message) {
            tracing::error!("{message}");
        }
        let kind = held.kind;
        self.held = Some(held);
        self.set(kind, true, message, None, None);
        Resume::Wait
    }

    /// While waiting: tries again to save what is held, and says whether the path is ours again.
    pub(crate) fn try_resume(&mut self) -> Resume {
        let state = match FileIdentity::of_path(&self.path) {
            Ok(Some(id)) => match &self.held {
                Some(h) if h.file.identity() == id => PathState::Ours,
                _ => PathState::Replaced(id),
            },
            Ok(None) => PathState::Missing,
            Err(_) => return Resume::Wait,
        };
        if let Some(held) = self.held.take() {
            if matches!(state, PathState::Replaced(_)) && !self.wal_is_ours_alone() {
                return self.give_up_shared(held);
            }
            return self.copy_and_go_on(held, state);
        }
        match state {
            PathState::Replaced(id) if self.unlocked == Some(id) => self.lock_placed(),
            PathState::Missing => {
                if let Some((saved, _)) = self.saved.take() {
                    if rescue::place(&saved, &self.path).is_ok() {
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

    /// Locks the file just put at the path; on failure, rows wait and it is tried again (the
    /// watch never runs without a file to watch).
    fn lock_placed(&mut self) -> Resume {
        match DatabaseFile::lock_existing(&self.path) {
            Ok(Some(file)) => {
                self.unlocked = None;
                self.adopt(file);
                Resume::Reopen
            }
            Ok(None) => Resume::Wait,
            Err(e) => {
                tracing::error!("cannot lock {}: {e:#}", self.path.display());
                self.unlocked = FileIdentity::of_path(&self.path).ok().flatten();
                if let Some(i) = self.incident() {
                    self.set(
                        i.kind,
                        true,
                        format!("{} It could not be locked: {e:#}.", i.message),
                        i.copy,
                        i.saved_copy,
                    );
                }
                Resume::Wait
            }
        }
    }

    fn reattached(&mut self, what: String) -> Resume {
        match DatabaseFile::lock(&self.path) {
            Ok(file) => {
                self.adopt(file);
                tracing::warn!("{what}");
                if let Some(mut i) = self.incident() {
                    i.ongoing = false;
                    i.message = format!("{} Since then: {what}.", i.message);
                    if let Ok(mut slot) = self.stats.file_incident.lock() {
                        *slot = Some(i);
                    }
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
    pub(crate) fn before_open(&mut self) -> Resume {
        match self.lost() {
            None => Resume::Reopen,
            Some(PathState::Missing) => {
                let message = format!(
                    "the database file {} was deleted while the writer had no connection to \
                     it (it could not be opened, or the writer restarted); what it held is lost",
                    self.path.display()
                );
                tracing::error!("{message}");
                self.file = None;
                self.set(IncidentKind::Deleted, true, message, None, None);
                self.reattached("writing goes on in a new database".into())
            }
            Some(_) => {
                let message = format!(
                    "the database file {} was replaced by another file while the writer had no \
                     connection to it; that file is not touched, and rows are held in memory \
                     until the path is free again or the daemon is restarted to adopt it",
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
    pub(crate) fn give_up(&mut self) -> String {
        if let Some(held) = self.held.take() {
            self.close_orphan(held);
        }
        match &self.saved {
            Some((saved, _)) => format!("our earlier rows are in {}", saved.display()),
            None => "the database file was lost".into(),
        }
    }

    fn incident(&self) -> Option<FileIncident> {
        self.stats.file_incident.lock().ok()?.clone()
    }

    /// Records the incident; one still going on keeps its first time and its count.
    fn set(
        &self,
        kind: IncidentKind,
        ongoing: bool,
        message: String,
        copy: Option<CopyReport>,
        saved_copy: Option<String>,
    ) {
        let previous = self.incident();
        let continues = previous.as_ref().is_some_and(|i| i.ongoing);
        if !continues {
            self.stats
                .file_incidents
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let at = previous
            .filter(|_| continues)
            .map_or_else(Utc::now, |i| i.at);
        if let Ok(mut slot) = self.stats.file_incident.lock() {
            *slot = Some(FileIncident {
                kind,
                at,
                ongoing,
                message,
                copy,
                saved_copy,
            });
        }
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        // The retired connections end with the process, never closed: see `close_orphan`.
        for (conn, file) in self.retired.drain(..) {
            std::mem::forget(conn);
            std::mem::forget(file);
        }
        if let Some(held) = self.held.take() {
            std::mem::forget(held.conn);
            std::mem::forget(held.file);
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
