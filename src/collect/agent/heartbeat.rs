//! Reading a heartbeat file: its timestamp and state, else its mtime and why that stood in.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};

use super::small_file::{SMALL_FILE, read_small_file};

/// A heartbeat time more than this far ahead of the clock is clock skew, not a beat: it would
/// read as age 0 for ever.
pub const HEARTBEAT_SKEW: Duration = Duration::from_secs(60);

/// What a heartbeat file says.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Seconds from `at` to the time it was read at; 0 when `at` is later.
    pub age_seconds: f64,
    /// Its JSON `state` (`working`, `stuck`...), if it is a string.
    pub state: Option<String>,
    /// When it beat: its timestamp, else its mtime.
    pub at: DateTime<Utc>,
    /// Why the mtime stood in for the timestamp, when that is worth telling the operator.
    pub fallback: Option<BeatFallback>,
}

/// Why a heartbeat's mtime was used instead of its timestamp.
#[derive(Debug, Clone, PartialEq)]
pub enum BeatFallback {
    /// The timestamp (as written) is this many seconds ahead of the clock.
    Skew {
        /// The timestamp as the file wrote it.
        timestamp: String,
        /// How far ahead of the clock, in seconds.
        ahead_seconds: f64,
    },
    /// The file was not read: not a regular file, or over the size cap.
    NotRead(String),
    /// Read, but without a usable timestamp: not JSON, no `timestamp`, or a bad one.
    Unparsable(String),
}

impl BeatFallback {
    /// The kind, to say each once.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            BeatFallback::Skew { .. } => "skew",
            BeatFallback::NotRead(_) => "not read",
            BeatFallback::Unparsable(_) => "unparsable",
        }
    }
}

/// Reads a heartbeat: its JSON `timestamp` (and `state`) if it has them, else its mtime. A
/// timestamp without a zone is local time; one more than [`HEARTBEAT_SKEW`] ahead of `now` is
/// clock skew, and the mtime is used. An empty file is a plain mtime beat (`touch`); anything
/// else without a usable timestamp says why in `fallback`.
pub fn read_heartbeat(path: &Path, now: DateTime<Utc>) -> std::io::Result<Heartbeat> {
    let meta = std::fs::metadata(path)?;
    let mtime = DateTime::<Utc>::from(meta.modified()?);
    let mut fallback = None;
    let text = if !meta.is_file() {
        fallback = Some(BeatFallback::NotRead("is not a regular file".into()));
        String::new()
    } else if meta.len() > SMALL_FILE {
        fallback = Some(BeatFallback::NotRead(format!(
            "is {} bytes, over the {} KiB a heartbeat may have",
            meta.len(),
            SMALL_FILE / 1024
        )));
        String::new()
    } else {
        match read_small_file(path)? {
            Some(text) => text,
            None => {
                fallback = Some(BeatFallback::Unparsable("is not UTF-8 text".into()));
                String::new()
            }
        }
    };
    let json = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => Some(json),
        Err(_) if text.trim().is_empty() => None,
        Err(e) => {
            fallback = Some(BeatFallback::Unparsable(format!("is not JSON ({e})")));
            None
        }
    };
    let state = json
        .as_ref()
        .and_then(|j| j.get("state")?.as_str().map(str::to_string));
    let stamped = match json.as_ref().map(|j| j.get("timestamp")) {
        None => None,
        Some(None) => {
            fallback = Some(BeatFallback::Unparsable("has no \"timestamp\"".into()));
            None
        }
        Some(Some(serde_json::Value::String(s))) => match parse_beat_time(s) {
            Some(t) => Some((t, s)),
            None => {
                fallback = Some(BeatFallback::Unparsable(format!(
                    "has a timestamp {s:?} that is not an RFC 3339 or ISO 8601 time"
                )));
                None
            }
        },
        Some(Some(other)) => {
            fallback = Some(BeatFallback::Unparsable(format!(
                "has a timestamp {other} that is not a string"
            )));
            None
        }
    };
    let at = match stamped {
        Some((t, written)) => {
            let ahead = seconds(t - now);
            if ahead > HEARTBEAT_SKEW.as_secs_f64() {
                fallback = Some(BeatFallback::Skew {
                    timestamp: written.clone(),
                    ahead_seconds: ahead,
                });
                mtime
            } else {
                t
            }
        }
        None => mtime,
    };
    Ok(Heartbeat {
        age_seconds: seconds(now - at).max(0.0),
        state,
        at,
        fallback,
    })
}

/// A duration in seconds, with milliseconds.
pub(super) fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// RFC 3339, or a naive ISO time taken as local time (as Python's `isoformat()` writes it).
fn parse_beat_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(
        Local
            .from_local_datetime(&naive)
            .earliest()?
            .with_timezone(&Utc),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn heartbeats_use_their_timestamp_else_their_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let json = dir.path().join("hb.json");
        let then = now - chrono::Duration::seconds(200);
        std::fs::write(
            &json,
            format!(
                "{{\"timestamp\":\"{}\",\"state\":\"stuck\",\"context\":\"x\",\"bead\":\"b\"}}",
                then.to_rfc3339()
            ),
        )
        .unwrap();
        let hb = read_heartbeat(&json, now).unwrap();
        assert!((hb.age_seconds - 200.0).abs() < 1.0, "{hb:?}");
        assert_eq!(hb.state.as_deref(), Some("stuck"));
        let plain = dir.path().join("beat");
        std::fs::write(&plain, "alive").unwrap();
        let hb = read_heartbeat(&plain, Utc::now()).unwrap();
        assert!(hb.age_seconds < 5.0, "{hb:?}");
        assert_eq!(hb.state, None);
        assert!(read_heartbeat(&dir.path().join("none"), now).is_err());
        // Naive timestamps are local time.
        let naive = dir.path().join("naive.json");
        let local = (chrono::Local::now() - chrono::Duration::seconds(60)).naive_local();
        std::fs::write(
            &naive,
            format!(
                "{{\"timestamp\":\"{}\"}}",
                local.format("%Y-%m-%dT%H:%M:%S%.6f")
            ),
        )
        .unwrap();
        let hb = read_heartbeat(&naive, Utc::now()).unwrap();
        assert!((hb.age_seconds - 60.0).abs() < 5.0, "{hb:?}");
    }

    /// Sets a file's mtime `ago` seconds in the past (negative: in the future).
    pub(crate) fn age_file(path: &Path, ago: i64) {
        let when = std::time::SystemTime::now() - Duration::from_secs(ago.max(0) as u64)
            + Duration::from_secs((-ago).max(0) as u64);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn a_heartbeat_from_the_future_is_clock_skew_and_its_mtime_counts() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("hb.json");
        std::fs::write(
            &hb,
            r#"{"timestamp":"2100-01-01T00:00:00Z","state":"working"}"#,
        )
        .unwrap();
        age_file(&hb, 300);
        let now = Utc::now();
        let beat = read_heartbeat(&hb, now).unwrap();
        assert!((beat.age_seconds - 300.0).abs() < 5.0, "{beat:?}");
        assert_eq!(beat.state.as_deref(), Some("working"));
        let Some(BeatFallback::Skew {
            timestamp,
            ahead_seconds,
        }) = &beat.fallback
        else {
            panic!("{beat:?}")
        };
        assert_eq!(timestamp, "2100-01-01T00:00:00Z");
        assert!(*ahead_seconds > 365.0 * 86400.0);
        // Up to a minute ahead is the writer's clock being a little off: its timestamp stands.
        let close = (now + chrono::Duration::seconds(30)).to_rfc3339();
        std::fs::write(&hb, format!(r#"{{"timestamp":"{close}"}}"#)).unwrap();
        age_file(&hb, 300);
        let beat = read_heartbeat(&hb, now).unwrap();
        assert_eq!(beat.age_seconds, 0.0);
        assert_eq!(beat.fallback, None);
    }

    #[test]
    fn a_heartbeat_without_a_usable_timestamp_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("hb");
        let cases: [(&[u8], &str); 6] = [
            (b"alive", "not JSON"),
            (b"{\"state\":\"working\"}", "no \"timestamp\""),
            (b"{\"timestamp\":\"yesterday\"}", "\"yesterday\""),
            (b"{\"timestamp\":12}", "not a string"),
            (b"\xff\xfe", "not UTF-8"),
            (&[b' '; 70 * 1024], "over the 64 KiB"),
        ];
        for (text, why) in cases {
            std::fs::write(&hb, text).unwrap();
            age_file(&hb, 120);
            let beat = read_heartbeat(&hb, Utc::now()).unwrap();
            assert!((beat.age_seconds - 120.0).abs() < 5.0, "{why}: {beat:?}");
            let said = match &beat.fallback {
                Some(BeatFallback::Unparsable(w) | BeatFallback::NotRead(w)) => w.clone(),
                other => panic!("{why}: {other:?}"),
            };
            assert!(said.contains(why), "{said} / {why}");
        }
        // An empty file is a plain mtime beat (`touch`): nothing to say.
        std::fs::write(&hb, "").unwrap();
        assert_eq!(read_heartbeat(&hb, Utc::now()).unwrap().fallback, None);
        // A directory is not read.
        let beat = read_heartbeat(dir.path(), Utc::now()).unwrap();
        assert!(matches!(beat.fallback, Some(BeatFallback::NotRead(_))));
    }
}
