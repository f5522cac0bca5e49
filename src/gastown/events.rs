//! Following `<town>/.events.jsonl`: from its end (no replay of old history), through
//! truncation and rotation, holding partial lines until they are complete, skipping malformed
//! ones with a warning.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Longest line accepted; a longer one is skipped (the follower resynchronises at its end).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most bytes read in one poll, so a burst cannot hold the caller for long.
const MAX_READ_PER_POLL: u64 = 8 * 1024 * 1024;

/// One line of the events file (`{ts, source, type, actor, payload, visibility}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TownEvent {
    #[serde(default)]
    pub ts: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub payload: serde_json::Value,
    #[serde(default)]
    pub visibility: Option<String>,
}

/// Tails one JSONL file across truncation and rotation.
#[derive(Debug)]
pub struct EventFollower {
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
    /// Malformed lines skipped since start.
    pub malformed: u64,
}

impl EventFollower {
    /// A follower that starts at the current end of `path` (or at its start, once it appears).
    pub fn from_end(path: &Path) -> Self {
        let mut f = EventFollower {
            path: path.to_path_buf(),
            file: None,
            ident: None,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
            malformed: 0,
        };
        if let Ok(file) = File::open(path)
            && let Ok(meta) = file.metadata()
        {
            f.ident = Some((meta.dev(), meta.ino()));
            f.offset = meta.len();
            f.file = Some(file);
        }
        f
    }

    /// Reads what was appended since the last poll and returns the complete events.
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
            self.partial.clear();
            self.skipping = false;
            match current {
                Some((file, meta)) => {
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
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        self.read_available(&mut events);
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
    /// what was read, even when a read fails part way.
    fn read_available(&mut self, events: &mut Vec<TownEvent>) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut chunk = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while (chunk.len() as u64) < MAX_READ_PER_POLL {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => chunk.extend_from_slice(&buf[..n]),
            }
        }
        self.offset += chunk.len() as u64;
        self.feed(&chunk, events);
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
            Ok(event) => events.push(event),
            Err(e) => {
                self.malformed += 1;
                let shown: String = text.chars().take(200).collect();
                tracing::warn!(path = %self.path.display(), "skipping malformed event line ({e}): {shown}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn kinds(events: &[TownEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn starts_at_the_end_and_reads_only_what_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        append(
            &path,
            "{\"type\":\"spawn\",\"payload\":{\"rig\":\"r\",\"polecat\":\"old\"}}\n",
        );
        let mut f = EventFollower::from_end(&path);
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
        let mut f = EventFollower::from_end(&path);
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
        let mut f = EventFollower::from_end(&path);
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".events.jsonl");
        append(&path, "{\"type\":\"a\"}\n{\"type\":\"b\"}\n");
        let mut f = EventFollower::from_end(&path);
        // Truncated and rewritten shorter: read from the start.
        std::fs::write(&path, "{\"type\":\"c\"}\n").unwrap();
        assert_eq!(kinds(&f.poll()), ["c"]);
        // Truncated and regrown past where we were between two polls: noticed, read whole.
        append(&path, "{\"type\":\"c2\"}\n");
        assert_eq!(kinds(&f.poll()), ["c2"]);
        std::fs::write(&path, "{\"type\":\"long-enough-to-pass-the-old-offset\"}\n").unwrap();
        assert_eq!(kinds(&f.poll()), ["long-enough-to-pass-the-old-offset"]);
        // Rotated with lines the follower had not read yet: they are read before the new file.
        append(&path, "{\"type\":\"late-in-old\"}\n");
        // Rotated: renamed away, a new file in its place.
        std::fs::rename(&path, dir.path().join(".events.jsonl.1")).unwrap();
        assert_eq!(
            kinds(&f.poll()),
            ["late-in-old"],
            "the old file's last lines"
        );
        assert!(f.poll().is_empty(), "nothing there mid-rotation");
        append(&path, "{\"type\":\"d\"}\n");
        assert_eq!(kinds(&f.poll()), ["d"]);
        // A file that did not exist at start is read from its beginning.
        let late = dir.path().join("late.jsonl");
        let mut g = EventFollower::from_end(&late);
        append(&late, "{\"type\":\"e\"}\n");
        assert_eq!(kinds(&g.poll()), ["e"]);
    }
}
