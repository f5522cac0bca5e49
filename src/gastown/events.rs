//! Following `<town>/.events.jsonl`: from its end (no replay of old history), through
//! truncation and rotation, holding partial lines until they are complete, skipping malformed
//! ones with a warning.
//!
//! Gas Town rewrites the file in place of itself: its hourly pruner writes the events it keeps
//! to a temporary file and renames that over `.events.jsonl`, and a truncate-and-rewrite has the
//! same effect. The follower then has to read the new file from its start, and most of what it
//! finds there was yielded already (or happened before the follower started). So, beside the
//! byte offset, the follower keeps a high-water mark of what it yielded:
//!
//! - the newest `ts` yielded, to the second (at first: the start time given to
//!   [`EventFollower::from_end`]), and fingerprints of the lines yielded at that second, since
//!   several events share one second;
//! - a line older than the start is history and skipped;
//! - re-read in a rewritten file, a line older than the mark is skipped, and a line at the
//!   mark's second is skipped when its fingerprint was yielded;
//! - a newer line is yielded and moves the mark. An appended line older than the mark is still
//!   yielded: appended bytes are read once, and writers stamp `ts` before taking the lock.
//!
//! Lines without a parseable `ts` (Gas Town
//! always writes one) cannot be placed: they are yielded when appended, and skipped while
//! *replaying*, that is while reading a rewritten, rotated or truncated file from its start up
//! to its first line not yielded before (even across polls: a truncate and the rewrite after it
//! may be seen apart).
//! Skipped lines are counted in [`EventFollower::replayed`].

use std::collections::HashSet;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;

/// Longest line accepted; a longer one is skipped (the follower resynchronises at its end).
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most bytes read in one poll, so a burst cannot hold the caller for long.
const MAX_READ_PER_POLL: u64 = 8 * 1024 * 1024;

/// One line of the events file (`{ts, source, type, actor, payload, visibility}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TownEvent {
    /// When Gas Town logged it: RFC 3339 in UTC, whole seconds (`2026-04-30T13:00:02Z`).
    #[serde(default)]
    pub ts: Option<String>,
    /// What wrote the line; `gt` for everything Gas Town's own commands log.
    #[serde(default)]
    pub source: Option<String>,
    /// The event type (`type` in the file): `spawn`, `session_start`, `session_death`, `done`...
    #[serde(rename = "type")]
    pub kind: String,
    /// Who it is about or from: an agent address (`acme/polecats/quartz`), a tmux session
    /// (`ac-onyx`), or `gt`/`daemon`.
    #[serde(default)]
    pub actor: Option<String>,
    /// The type's own fields (e.g. `session`, `agent`, `reason` of a death); `Null` when absent.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Where Gas Town shows it: `audit` (this raw log only), `feed` or `both`.
    #[serde(default)]
    pub visibility: Option<String>,
}

/// Tails one JSONL file across truncation and rotation, yielding each event once.
#[derive(Debug)]
pub(crate) struct EventFollower {
    path: PathBuf,
    /// The file being read, held open so a rotated file's last lines are still read.
    file: Option<File>,
    /// Its identity (device, inode) and how far it was read.
    ident: Option<(u64, u64)>,
    offset: u64,
    /// Bytes of a line whose newline has not arrived yet.
    partial: Vec<u8>,
    /// True while skipping the rest of an over-long line.
    skipping: bool,
    /// True once a file has been followed: any file read from its start after that is a
    /// rewrite or a rotation, whose lines may have been yielded already.
    followed: bool,
    /// The start, to the second: anything older is history.
    started: DateTime<Utc>,
    /// The high-water mark: the newest second yielded (or the start, to the second)...
    mark: DateTime<Utc>,
    /// ...and the fingerprints of the lines yielded at that second.
    at_mark: HashSet<u64>,
    /// True while re-reading a replaced or truncated file from its start, up to its first line
    /// not yielded before or its end; lines without a `ts` are skipped meanwhile.
    replaying: bool,
    /// Lines skipped in the current replay, logged once when it ends.
    replay_skipped: u64,
    /// Malformed lines skipped since start.
    pub malformed: u64,
    /// Lines skipped since start as history: older than the mark, already yielded, or without
    /// a `ts` (or malformed) while replaying a rewritten file.
    pub replayed: u64,
}

impl EventFollower {
    /// A follower that starts at the current end of `path` (or at its start, once it appears).
    /// Events older than `started` (to the second) are history: never yielded, even when a
    /// rewrite of the file brings them back after the start.
    pub(crate) fn from_end(path: &Path, started: DateTime<Utc>) -> Self {
        let mut f = EventFollower {
            path: path.to_path_buf(),
            file: None,
            ident: None,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
            followed: false,
            // `ts` has whole seconds, so events in the start's own second are not history.
            started: started.trunc_subsecs(0),
            mark: started.trunc_subsecs(0),
            at_mark: HashSet::new(),
            replaying: false,
            replay_skipped: 0,
            malformed: 0,
            replayed: 0,
        };
        if let Ok(file) = File::open(path)
            && let Ok(meta) = file.metadata()
        {
            f.ident = Some((meta.dev(), meta.ino()));
            f.offset = meta.len();
            f.file = Some(file);
            f.followed = true;
        }
        f
    }

    /// Reads what was appended since the last poll and returns the complete events not
    /// yielded before.
    pub fn poll(&mut self) -> Vec<TownEvent> {
        let mut events = Vec::new();
        let current = File::open(&self.path)
            .ok()
            .and_then(|f| f.metadata().ok().map(|m| (f, m)));
        let same_file = match (&current, self.ident) {
            (Some((_, m)), Some(ident)) => (m.dev(), m.ino()) == ident,
            _ => false,
        };
        if !same_file {
            // Rotated (or gone): what the old file still holds comes first.
            if self.file.is_some() {
                self.read_available(&mut events);
                if self.ident.is_some() && current.is_some() {
                    tracing::info!(path = %self.path.display(), "events file rotated; following the new one");
                }
            }
            self.end_replay();
            self.partial.clear();
            self.skipping = false;
            match current {
                Some((file, meta)) => {
                    // A file in place of one followed before may repeat it (the pruner's
                    // rename); one appearing where there never was one is new.
                    if self.followed {
                        self.begin_replay();
                    }
                    self.followed = true;
                    self.ident = Some((meta.dev(), meta.ino()));
                    self.offset = 0;
                    self.file = Some(file);
                }
                None => {
                    self.file = None;
                    self.ident = None;
                    return events;
                }
            }
        } else if self.truncated() {
            tracing::info!(path = %self.path.display(), "events file truncated; reading it from the start");
            self.begin_replay();
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        if self.read_available(&mut events) {
            // The rewritten file was read to its end. The replay goes on until a line not seen
            // before: a truncate and the rewrite after it may come in separate polls, and the
            // rewrite's old lines then read as appended ones.
            self.report_replay();
        }
        events
    }

    /// True when the file shrank below what was read, or was rewritten so that the byte before
    /// the read position is no longer the end of a line (truncated and regrown between polls).
    fn truncated(&mut self) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            return true;
        }
        if self.offset == 0 || !self.partial.is_empty() || self.skipping {
            return false;
        }
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(self.offset - 1)).is_ok()
            && file.read_exact(&mut last).is_ok()
            && last[0] != b'\n'
    }

    /// Reads from the held file up to its end (at most a burst's worth), advancing by exactly
    /// what was read, even when a read fails part way. True when the end was reached.
    fn read_available(&mut self, events: &mut Vec<TownEvent>) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut chunk = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let mut at_end = false;
        while (chunk.len() as u64) < MAX_READ_PER_POLL {
            match file.read(&mut buf) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Err(_) => break,
                Ok(n) => chunk.extend_from_slice(&buf[..n]),
            }
        }
        self.offset += chunk.len() as u64;
        self.feed(&chunk, events);
        at_end
    }

    /// Splits bytes into lines, keeping an unfinished last line for the next poll.
    fn feed(&mut self, bytes: &[u8], events: &mut Vec<TownEvent>) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.skipping {
                self.skipping = false;
                continue;
            }
            self.partial.extend_from_slice(line);
            let line = std::mem::take(&mut self.partial);
            self.parse_line(&line, events);
        }
        if !self.skipping {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > MAX_LINE_BYTES {
                tracing::warn!(
                    path = %self.path.display(),
                    "events line longer than {MAX_LINE_BYTES} bytes; skipping it"
                );
                self.malformed += 1;
                self.partial.clear();
                self.skipping = true;
            }
        }
    }

    fn parse_line(&mut self, line: &[u8], events: &mut Vec<TownEvent>) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match serde_json::from_str::<TownEvent>(text) {
            Ok(event) => {
                if self.is_new(event_second(event.ts.as_deref()), fingerprint(text)) {
                    events.push(event);
                } else {
                    self.skipped_as_history();
                }
            }
            // A malformed line in a replayed file was warned about when it was appended (or
            // predates the start): warning again after every hourly prune is noise.
            Err(_) if self.replaying => self.skipped_as_history(),
            Err(e) => {
                self.malformed += 1;
                let shown: String = text.chars().take(200).collect();
                tracing::warn!(path = %self.path.display(), "skipping malformed event line ({e}): {shown}");
            }
        }
    }

    /// Whether a line at `second` (None: no parseable `ts`) with `fingerprint` is to be
    /// yielded, moving the high-water mark when it is.
    fn is_new(&mut self, second: Option<DateTime<Utc>>, fingerprint: u64) -> bool {
        let Some(second) = second else {
            // Cannot be placed: trusted as new only when appended.
            return !self.replaying;
        };
        if second < self.started {
            return false;
        }
        if second < self.mark {
            // Appended bytes are read once, so an appended line is never a repeat. Writers stamp
            // `ts` before they take the file's lock, so one stamped a second earlier can land
            // after a later one: appended, it is news. Re-read in a rewrite, it was yielded.
            return !self.replaying;
        }
        if second == self.mark {
            if !self.at_mark.insert(fingerprint) {
                return false;
            }
        } else {
            self.mark = second;
            self.at_mark.clear();
            self.at_mark.insert(fingerprint);
        }
        // The file is in time order: from its first unseen line on, a rewrite holds new lines.
        self.end_replay();
        true
    }

    fn skipped_as_history(&mut self) {
        self.replayed += 1;
        if self.replaying {
            self.replay_skipped += 1;
        }
    }

    /// Starts reading a replaced or truncated file from its start.
    fn begin_replay(&mut self) {
        self.end_replay();
        self.replaying = true;
    }

    /// Ends a replay, saying once how many old lines it skipped.
    fn end_replay(&mut self) {
        self.report_replay();
        self.replaying = false;
    }

    /// Says how many old lines the replay skipped so far, once.
    fn report_replay(&mut self) {
        if self.replaying && self.replay_skipped > 0 {
            tracing::info!(
                path = %self.path.display(),
                "events file rewritten (pruned?); skipped {} events already seen",
                self.replay_skipped
            );
        }
        self.replay_skipped = 0;
    }
}

/// The second of an RFC 3339 `ts` (Gas Town writes whole seconds; finer ones are cut off so
/// all compare at the same precision as the mark).
fn event_second(ts: Option<&str>) -> Option<DateTime<Utc>> {
    let ts = DateTime::parse_from_rfc3339(ts?.trim()).ok()?;
    Some(ts.with_timezone(&Utc).trunc_subsecs(0))
}

/// Tells apart lines of one second: a hash of the line's trimmed bytes. A rewrite copies lines
/// verbatim, so a line seen before hashes the same.
fn fingerprint(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(text.as_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // Real Gas Town lines (from a town's `.events.jsonl`), some with `ts` moved for the case.
    const SPAWN: &str = r#"{"ts":"2026-04-30T13:00:02Z","source":"gt","type":"spawn","actor":"gt","payload":{"polecat":"quartz","rig":"acme"},"visibility":"feed"}"#;
    const START: &str = r#"{"ts":"2026-04-30T13:00:19Z","source":"gt","type":"session_start","actor":"acme/polecats/quartz","payload":{"actor_pid":"acme/polecats/quartz-48377","cwd":"/home/me/gt/acme/polecats/quartz/acme","role":"acme/polecats/quartz","session_id":"6f1c2a9e-4b7d-4e0a-9a51-2f3c8d7e1b40"},"visibility":"feed"}"#;
    const DEATH_ONYX: &str = r#"{"ts":"2026-04-30T13:45:00Z","source":"gt","type":"session_death","actor":"ac-onyx","payload":{"agent":"acme/polecats/onyx","caller":"daemon","reason":"crash detected by daemon health check","session":"ac-onyx"},"visibility":"feed"}"#;
    /// In the town's file at 13:57:00; here in the same second as `DEATH_ONYX`.
    const DEATH_QUARTZ_SAME_SECOND: &str = r#"{"ts":"2026-04-30T13:45:00Z","source":"gt","type":"session_death","actor":"acme/quartz","payload":{"agent":"acme/polecats/quartz","caller":"daemon","reason":"idle-reap: working, idle 15m3s (threshold 15m0s)","session":"ac-quartz"},"visibility":"feed"}"#;
    const DEATH_QUARTZ: &str = r#"{"ts":"2026-04-30T13:57:00Z","source":"gt","type":"session_death","actor":"acme/quartz","payload":{"agent":"acme/polecats/quartz","caller":"daemon","reason":"idle-reap: working, idle 15m3s (threshold 15m0s)","session":"ac-quartz"},"visibility":"feed"}"#;
    const DEATH_JASPER: &str = r#"{"ts":"2026-04-30T14:02:11Z","source":"gt","type":"session_death","actor":"ac-jasper","payload":{"agent":"unknown","caller":"gt doctor","reason":"zombie cleanup","session":"ac-jasper"},"visibility":"feed"}"#;
    const MASS_DEATH: &str = r#"{"ts":"2026-04-30T14:10:33Z","source":"gt","type":"mass_death","actor":"daemon","payload":{"count":3,"sessions":["ac-onyx","ac-opal","gt-nux"],"window":"30s"},"visibility":"feed"}"#;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// The lines, each ended by a newline, as Gas Town writes them.
    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// What the 1.0.1 pruner does: the kept events to a temporary file, renamed over the path.
    fn prune_to(path: &Path, kept: &[&str]) {
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, lines(kept)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn kinds(events: &[TownEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    fn actors(events: &[TownEvent]) -> Vec<&str> {
        events.iter().filter_map(|e| e.actor.as_deref()).collect()
    }

    fn utc(ts: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A start before every line in these tests.
    fn long_ago() -> DateTime<Utc> {
        utc("2000-01-01T00:00:00Z")
    }

    #[test]
    fn starts_at_the_end_and_reads_only_what_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        append(
            &path,
            "{\"type\":\"spawn\",\"payload\":{\"rig\":\"r\",\"polecat\":\"old\"}}\n",
        );
        let mut f = EventFollower::from_end(&path, long_ago());
        assert!(f.poll().is_empty(), "old history is not replayed");
        append(
            &path,
            "{\"ts\":\"2026-11-27T10:00:00Z\",\"type\":\"done\",\"actor\":\"r/quartz\",\"payload\":{}}\n",
        );
        let got = f.poll();
        assert_eq!(kinds(&got), ["done"]);
        assert_eq!(got[0].actor.as_deref(), Some("r/quartz"));
        assert!(f.poll().is_empty());
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, "{\"type\":\"ki");
        assert!(f.poll().is_empty());
        append(&path, "ll\",\"payload\":{\"target\":\"x\"}}\n{\"type\":");
        assert_eq!(kinds(&f.poll()), ["kill"]);
        append(&path, "\"done\"}\n");
        assert_eq!(kinds(&f.poll()), ["done"]);
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, "not json\n{\"no_type\":1}\n\n{\"type\":\"spawn\"}\n");
        assert_eq!(kinds(&f.poll()), ["spawn"]);
        assert_eq!(f.malformed, 2);
        // An over-long line is dropped whole, and the next line still parses.
        append(&path, &"x".repeat(MAX_LINE_BYTES + 10));
        assert!(f.poll().is_empty());
        append(&path, "yyy\n{\"type\":\"done\"}\n");
        assert_eq!(kinds(&f.poll()), ["done"]);
        assert_eq!(f.malformed, 3);
    }

    #[test]
    fn survives_truncation_and_rotation() {
        // Every file read from its start after a truncation or rotation is replayed, and a
        // replayed line without `ts` counts as history. These lines carry increasing `ts`, as
        // Gas Town's do, so that what is checked here stays that each line is found (read from
        // the right place), not that it is told apart from history.
        let line = |second: u32, kind: &str| {
            format!("{{\"ts\":\"2026-11-27T10:00:{second:02}Z\",\"type\":\"{kind}\"}}\n")
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        append(&path, &(line(0, "a") + &line(1, "b")));
        let mut f = EventFollower::from_end(&path, long_ago());
        // Truncated and rewritten shorter: read from the start.
        std::fs::write(&path, line(2, "c")).unwrap();
        assert_eq!(kinds(&f.poll()), ["c"]);
        // Truncated and regrown past where we were between two polls: noticed, read whole.
        append(&path, &line(3, "c2"));
        assert_eq!(kinds(&f.poll()), ["c2"]);
        let read_so_far = std::fs::metadata(&path).unwrap().len() as usize;
        let long = format!(
            "{{\"ts\":\"2026-11-27T10:00:04Z\",\"type\":\"long-enough-to-pass-the-old-offset\",\"payload\":{{\"pad\":\"{}\"}}}}\n",
            "x".repeat(read_so_far)
        );
        std::fs::write(&path, &long).unwrap();
        assert_eq!(kinds(&f.poll()), ["long-enough-to-pass-the-old-offset"]);
        // Rotated with lines the follower had not read yet: they are read before the new file.
        append(&path, &line(5, "late-in-old"));
        // Rotated: renamed away, a new file in its place.
        std::fs::rename(&path, dir.path().join(".events.jsonl.1")).unwrap();
        assert_eq!(
            kinds(&f.poll()),
            ["late-in-old"],
            "the old file's last lines"
        );
        assert!(f.poll().is_empty(), "nothing there mid-rotation");
        append(&path, &line(6, "d"));
        assert_eq!(kinds(&f.poll()), ["d"]);
        assert_eq!(f.replayed, 0);
        // A file that did not exist at start is read from its beginning, not replayed (so
        // this line needs no `ts`).
        let late = dir.path().join("late.jsonl");
        let mut g = EventFollower::from_end(&late, long_ago());
        append(&late, "{\"type\":\"e\"}\n");
        assert_eq!(kinds(&g.poll()), ["e"]);
    }

    #[test]
    fn a_pruner_rewrite_replays_nothing_and_later_lines_come_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        std::fs::write(&path, "").unwrap();
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, &lines(&[SPAWN, START, DEATH_ONYX]));
        assert_eq!(
            kinds(&f.poll()),
            ["spawn", "session_start", "session_death"]
        );
        // The spawn is pruned; the others are kept in the file renamed over the path.
        prune_to(&path, &[START, DEATH_ONYX]);
        assert!(f.poll().is_empty(), "no old event again");
        assert_eq!(f.replayed, 2);
        append(&path, &lines(&[DEATH_QUARTZ]));
        assert_eq!(actors(&f.poll()), ["acme/quartz"]);
        assert!(f.poll().is_empty());
        assert_eq!(f.replayed, 2);
    }

    #[test]
    fn events_of_one_second_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, &lines(&[SPAWN, DEATH_ONYX]));
        assert_eq!(kinds(&f.poll()), ["spawn", "session_death"]);
        // The rewrite holds a second death of 13:45:00 the follower never read.
        prune_to(&path, &[DEATH_ONYX, DEATH_QUARTZ_SAME_SECOND]);
        assert_eq!(actors(&f.poll()), ["acme/quartz"]);
        assert_eq!(f.replayed, 1);
        // Both were yielded now: another rewrite brings neither back.
        prune_to(&path, &[DEATH_ONYX, DEATH_QUARTZ_SAME_SECOND]);
        assert!(f.poll().is_empty());
        assert_eq!(f.replayed, 3);
    }

    #[test]
    fn an_appended_line_stamped_before_the_last_one_is_still_news_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        let mut f = EventFollower::from_end(&path, long_ago());
        // Two gt processes: the one stamped 14:02:11 took the lock after the one stamped 14:10:33.
        append(&path, &lines(&[MASS_DEATH, DEATH_JASPER]));
        assert_eq!(kinds(&f.poll()), ["mass_death", "session_death"]);
        prune_to(&path, &[DEATH_JASPER, MASS_DEATH]);
        assert!(f.poll().is_empty(), "both were yielded before the rewrite");
    }

    #[test]
    fn events_older_than_the_start_are_never_yielded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        std::fs::write(&path, lines(&[DEATH_ONYX, DEATH_QUARTZ])).unwrap();
        // Started within 14:02:11: an event of that second is not older than the start.
        let mut f = EventFollower::from_end(&path, utc("2026-04-30T14:02:11.600Z"));
        prune_to(&path, &[DEATH_ONYX, DEATH_QUARTZ, DEATH_JASPER, MASS_DEATH]);
        let got = f.poll();
        assert_eq!(kinds(&got), ["session_death", "mass_death"]);
        assert_eq!(actors(&got), ["ac-jasper", "daemon"]);
        assert_eq!(f.replayed, 2);
    }

    #[test]
    fn a_truncate_and_rewrite_yields_only_the_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, &lines(&[SPAWN, START]));
        assert_eq!(kinds(&f.poll()), ["spawn", "session_start"]);
        // Rewritten in one go: the old bytes are where they were, the new line after them.
        std::fs::write(&path, lines(&[SPAWN, START, DEATH_ONYX])).unwrap();
        assert_eq!(actors(&f.poll()), ["ac-onyx"]);
        // Truncated, seen empty, then rewritten: read from the start, old lines skipped.
        std::fs::File::create(&path).unwrap();
        assert!(f.poll().is_empty());
        std::fs::write(&path, lines(&[SPAWN, START, DEATH_ONYX, DEATH_QUARTZ])).unwrap();
        assert_eq!(actors(&f.poll()), ["acme/quartz"]);
        assert_eq!(f.replayed, 3);
    }

    #[test]
    fn a_replaced_files_unread_lines_come_first_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, &lines(&[SPAWN]));
        assert_eq!(kinds(&f.poll()), ["spawn"]);
        // Appended to the old file just before the pruner's rename, and kept by it.
        append(&path, &lines(&[DEATH_ONYX]));
        prune_to(&path, &[SPAWN, DEATH_ONYX]);
        assert_eq!(actors(&f.poll()), ["ac-onyx"]);
        assert!(f.poll().is_empty());
        assert_eq!(f.replayed, 2);
    }

    #[test]
    fn lines_without_ts_are_new_when_appended_and_history_when_replayed() {
        let no_ts = r#"{"source":"gt","type":"spawn","actor":"gt","payload":{"polecat":"quartz","rig":"acme"},"visibility":"feed"}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        std::fs::write(&path, "").unwrap();
        let mut f = EventFollower::from_end(&path, long_ago());
        append(&path, &lines(&[no_ts]));
        assert_eq!(kinds(&f.poll()), ["spawn"]);
        // Re-read from a rewritten file: it cannot be placed, so it is taken as seen.
        prune_to(&path, &[no_ts, "not json"]);
        assert!(f.poll().is_empty());
        assert_eq!((f.replayed, f.malformed), (2, 0));
        // Until a line not seen before ends the replay, one without ts is still taken as seen
        // (Gas Town stamps every line, so this costs nothing real)...
        append(&path, &lines(&[no_ts]));
        assert!(f.poll().is_empty());
        // ...and after it, such lines are new again.
        append(&path, &lines(&[DEATH_ONYX, no_ts]));
        assert_eq!(kinds(&f.poll()), ["session_death", "spawn"]);
    }
}
