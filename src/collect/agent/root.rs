//! Which process is the agent: where its root comes from, and whether it is still that process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{Local, NaiveDateTime, TimeZone};

use super::small_file::read_small_file;
use super::tmux::{TmuxAnswer, TmuxTarget, tmux_pane_pid};
use crate::collect::process::{self, Machine};
use crate::model::AgentOptions;

/// Where an agent's root process comes from; resolved again every cycle.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// No process: the agent is alive while its workspace exists (the original's rule).
    None,
    /// A pid saved without a start time (before it was recorded): the first process seen with
    /// it is the agent.
    Pid(u32),
    /// A pid with the start time recorded when the monitor was added.
    PidStarted(u32, RecordedStart),
    /// The process a pid file names (a bare pid, or `pid|starttime`), read every cycle.
    PidFile(PathBuf),
    /// The oldest process whose command line matches and whose parent's does not.
    Match(regex::Regex),
    /// The process of the session's first pane.
    Tmux(TmuxTarget),
    /// The pid file, or the tmux session while the file is missing (Gas Town writes the file
    /// once the session runs; it never removes it when the session ends, so a file naming a
    /// dead process reads as dead, as it should).
    PidFileOrTmux(PathBuf, TmuxTarget),
}

/// What a recorded start time (see [`crate::model::PidStart`]) says in this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedStart {
    /// The root must have started at this clock tick after boot.
    Ticks(u64),
    /// It was recorded in an earlier boot: the agent's process is gone, whatever has its pid now.
    EarlierBoot,
}

impl RecordedStart {
    /// Reads a recorded start against this boot.
    pub fn of(start: &crate::model::PidStart) -> Self {
        match (start.boot_id.as_deref(), process::boot_id()) {
            (Some(then), Some(now)) if then != now => RecordedStart::EarlierBoot,
            _ => RecordedStart::Ticks(start.ticks),
        }
    }
}

/// The root found this cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Root {
    /// The process whose tree is the agent's.
    pub pid: u32,
    /// When the root must have started (from a `pid|starttime` pid file), seconds since the
    /// epoch: the earliest and latest readings of a local time (they differ in the hour a DST
    /// change repeats).
    pub expected_start: Option<(f64, f64)>,
    /// The exact start (clock ticks after boot) recorded when the monitor was added.
    pub start_ticks: Option<u64>,
    /// The pid is given, not found: the process first seen with it is the agent, and a later
    /// one with the same pid is a reuse. A found root (match, tmux) is whatever is found.
    pub pinned: bool,
}

/// What resolving a root gave this cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolution {
    /// This root is the agent's this cycle (whether it runs is for the tree sample to say).
    Found(Root),
    /// Definitely none: no pid file, no match, no such session.
    Gone,
    /// Could not tell this time (a pid file being rewritten, tmux slow to answer): the previous
    /// root stands for one more cycle.
    Unknown,
}

impl RootSource {
    /// The source named by an agent's options.
    pub(crate) fn from_options(options: &AgentOptions) -> Result<RootSource, String> {
        Ok(if let Some(pid) = options.pid {
            match &options.pid_start {
                Some(start) => RootSource::PidStarted(pid, RecordedStart::of(start)),
                None => RootSource::Pid(pid),
            }
        } else if let (Some(file), Some(session)) = (&options.pid_file, &options.tmux_session) {
            RootSource::PidFileOrTmux(file.clone(), TmuxTarget::of(session, options))
        } else if let Some(file) = &options.pid_file {
            RootSource::PidFile(file.clone())
        } else if let Some(pattern) = &options.pattern {
            RootSource::Match(regex::Regex::new(pattern).map_err(|e| format!("bad --match: {e}"))?)
        } else if let Some(session) = &options.tmux_session {
            RootSource::Tmux(TmuxTarget::of(session, options))
        } else {
            RootSource::None
        })
    }

    /// Finds the root now.
    pub fn resolve(&self, scan_max_age: Duration) -> Resolution {
        let found = |pid| {
            Resolution::Found(Root {
                pid,
                expected_start: None,
                start_ticks: None,
                pinned: false,
            })
        };
        match self {
            RootSource::None => Resolution::Gone,
            RootSource::Pid(pid) => Resolution::Found(Root {
                pid: *pid,
                expected_start: None,
                start_ticks: None,
                pinned: true,
            }),
            RootSource::PidStarted(pid, RecordedStart::Ticks(ticks)) => Resolution::Found(Root {
                pid: *pid,
                expected_start: None,
                start_ticks: Some(*ticks),
                pinned: false,
            }),
            RootSource::PidStarted(_, RecordedStart::EarlierBoot) => Resolution::Gone,
            RootSource::PidFile(path) => match read_small_file(path) {
                Ok(Some(text)) => match parse_pid_file(&text) {
                    Ok(root) => Resolution::Found(root),
                    Err(e) => {
                        tracing::debug!(pid_file = %path.display(), "{e}");
                        Resolution::Unknown
                    }
                },
                Ok(None) => Resolution::Unknown,
                Err(_) => Resolution::Gone,
            },
            RootSource::Match(pattern) => {
                let scan = process::scan_all(scan_max_age);
                process::find_match(pattern, &scan).map_or(Resolution::Gone, found)
            }
            RootSource::Tmux(target) => match tmux_pane_pid(target) {
                TmuxAnswer::Pane(pid) => found(pid),
                TmuxAnswer::NoSession => Resolution::Gone,
                TmuxAnswer::NoAnswer => Resolution::Unknown,
            },
            // Gas Town writes the pid file when a session starts, and neither removes it when
            // the session ends nor rewrites it when the pane's process is respawned (`gt
            // handoff`, a restart): a file whose process is gone gives way to the session's
            // pane while the session is up.
            RootSource::PidFileOrTmux(file, target) => {
                match RootSource::PidFile(file.clone()).resolve(scan_max_age) {
                    Resolution::Gone => RootSource::Tmux(target.clone()).resolve(scan_max_age),
                    Resolution::Found(root) if !root_runs(&root) => match tmux_pane_pid(target) {
                        TmuxAnswer::Pane(pid) => found(pid),
                        TmuxAnswer::NoSession => Resolution::Found(root),
                        TmuxAnswer::NoAnswer => Resolution::Unknown,
                    },
                    other => other,
                }
            }
        }
    }
}

/// True when the pid file names a running process that is the one it was written for (its
/// start time matches, when the file gives one): a live session, not a stale runtime file.
pub fn pid_file_is_live(path: &Path) -> bool {
    let Ok(Some(text)) = read_small_file(path) else {
        return false;
    };
    parse_pid_file(&text).is_ok_and(|root| root_runs(&root))
}

/// True when the root's process runs and, when a start time is expected, started then.
fn root_runs(root: &Root) -> bool {
    let Some(stat) = process::read_stat(root.pid).filter(process::ProcStat::is_running) else {
        return false;
    };
    if let Some(ticks) = root.start_ticks {
        return stat.start_ticks == ticks;
    }
    match root.expected_start {
        None => true,
        Some((early, late)) => {
            let started = Machine::current().start_epoch(&stat);
            (started - early).abs() <= 2.0 || (started - late).abs() <= 2.0
        }
    }
}

/// Parses a pid file: a bare pid, or `pid|starttime` with the start time as
/// `LC_ALL=C ps -o lstart=` prints it (`Fri Nov 27 18:26:20 2026`, local time).
pub fn parse_pid_file(text: &str) -> Result<Root, String> {
    let text = text.trim();
    let (pid, start) = match text.split_once('|') {
        Some((pid, start)) => (pid.trim(), Some(start.trim())),
        None => (text, None),
    };
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("pid file holds {text:?}, not a pid or pid|starttime"))?;
    let expected_start = match start {
        Some(s) => Some(parse_lstart(s)?),
        None => None,
    };
    Ok(Root {
        pid,
        expected_start,
        start_ticks: None,
        // A bare pid in a file is trusted like --pid; with a start time it is checked instead.
        pinned: expected_start.is_none(),
    })
}

/// `Fri Nov 27 18:26:20 2026` (local time, single-digit days space-padded) to epoch seconds:
/// the earliest and latest meaning (equal except in the hour a DST change repeats).
pub fn parse_lstart(s: &str) -> Result<(f64, f64), String> {
    let normalized = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let naive = NaiveDateTime::parse_from_str(&normalized, "%a %b %e %H:%M:%S %Y")
        .map_err(|e| format!("start time {s:?} is not like `Fri Nov 27 18:26:20 2026`: {e}"))?;
    let local = Local.from_local_datetime(&naive);
    match (local.earliest(), local.latest()) {
        (Some(a), Some(b)) => Ok((a.timestamp() as f64, b.timestamp() as f64)),
        _ => Err(format!(
            "start time {s:?} does not exist in the local time zone"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Instant;

    use super::*;

    #[test]
    fn pid_files_hold_a_pid_or_pid_and_start_time() {
        assert_eq!(
            parse_pid_file(" 4242\n").unwrap(),
            Root {
                pid: 4242,
                expected_start: None,
                start_ticks: None,
                pinned: true,
            }
        );
        let root = parse_pid_file("4242|Fri Nov 27 18:26:20 2026\n").unwrap();
        assert_eq!(root.pid, 4242);
        assert!(!root.pinned);
        let local = Local.with_ymd_and_hms(2026, 11, 27, 18, 26, 20).unwrap();
        let t = local.timestamp() as f64;
        assert_eq!(root.expected_start, Some((t, t)));
        // ps pads single-digit days with a space.
        let padded = parse_pid_file("7|Sat Nov  7 01:02:03 2026").unwrap();
        let local = Local.with_ymd_and_hms(2026, 11, 7, 1, 2, 3).unwrap();
        let t = local.timestamp() as f64;
        assert_eq!(padded.expected_start, Some((t, t)));
        for bad in ["", "abc", "0", "12|yesterday", "-3"] {
            assert!(parse_pid_file(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lstart_from_ps_matches_our_start_time() {
        let me = std::process::id();
        let out = Command::new("ps")
            .args(["-o", "lstart=", "-p", &me.to_string()])
            .env("LC_ALL", "C")
            .output()
            .expect("ps runs");
        let (expected, _) = parse_lstart(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let machine = Machine::current();
        let ours = machine.start_epoch(&process::read_stat(me).unwrap());
        assert!((ours - expected).abs() <= 2.0, "{ours} vs {expected}");
    }

    #[test]
    fn a_fifo_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pid");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_small_file(&fifo).unwrap(), None);
        let source = RootSource::PidFile(fifo);
        assert_eq!(source.resolve(Duration::ZERO), Resolution::Unknown);
    }

    #[test]
    fn a_match_finds_the_matching_process() {
        let mut child = Command::new("sleep").arg("31.4159265").spawn().unwrap();
        let pattern = regex::Regex::new(r"^sleep 31\.4159265$").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scan = process::scan_all(Duration::ZERO);
            if process::find_match(&pattern, &scan) == Some(child.id()) {
                break;
            }
            assert!(Instant::now() < deadline, "the sleep was never matched");
            std::thread::sleep(Duration::from_millis(10));
        }
        let none = regex::Regex::new("no-such-command-anywhere-4242").unwrap();
        assert_eq!(
            process::find_match(&none, &process::scan_all(Duration::ZERO)),
            None
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
