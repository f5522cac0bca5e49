//! Agents: finding the root process (pid, pid file, command-line match, tmux pane), measuring
//! its tree, remembering its members to catch orphans, and reading its heartbeat.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};

use super::dirwalk::{DirSizer, SizeReading};
use super::process::{self, Machine, Member, TreeSampler};
use super::{Probe, WalkLimits, flag};
use crate::catalog::{
    AGENT_ACTIVE, AGENT_CPU_PERCENT, AGENT_MEMORY_MB, AGENT_OPEN_FILES, AGENT_ORPHAN_COUNT,
    AGENT_ORPHAN_MEMORY_MB, AGENT_PROCESS_COUNT, HEARTBEAT_AGE_SECONDS, HEARTBEAT_STUCK, UNIT_BOOL,
    UNIT_COUNT, UNIT_MB, UNIT_PERCENT, UNIT_SECONDS, WORKSPACE_SIZE_MB,
};
use crate::model::{AgentOptions, Measurement, ResourceType, parse_timestamp};

/// How long `tmux` may take to answer.
const TMUX_TIMEOUT: Duration = Duration::from_secs(2);
/// Members remembered per agent for orphan detection, at most.
const MAX_REMEMBERED: usize = 20_000;

/// Where an agent's root process comes from; resolved again every cycle.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// No process: the agent is alive while its workspace exists (the original's rule).
    None,
    Pid(u32),
    PidFile(PathBuf),
    Match(regex::Regex),
    Tmux(String),
}

/// The root found this cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Root {
    pub pid: u32,
    /// When the root must have started (from a `pid|starttime` pid file), seconds since the epoch.
    pub expected_start: Option<f64>,
}

impl RootSource {
    /// The source named by an agent's options.
    pub fn from_options(options: &AgentOptions) -> Result<RootSource, String> {
        Ok(if let Some(pid) = options.pid {
            RootSource::Pid(pid)
        } else if let Some(file) = &options.pid_file {
            RootSource::PidFile(file.clone())
        } else if let Some(pattern) = &options.pattern {
            RootSource::Match(regex::Regex::new(pattern).map_err(|e| format!("bad --match: {e}"))?)
        } else if let Some(session) = &options.tmux_session {
            RootSource::Tmux(session.clone())
        } else {
            RootSource::None
        })
    }

    /// Finds the root now; `None` when there is none (missing pid file, no match, no session).
    pub fn resolve(&self, scan_max_age: Duration) -> Option<Root> {
        match self {
            RootSource::None => None,
            RootSource::Pid(pid) => Some(Root {
                pid: *pid,
                expected_start: None,
            }),
            RootSource::PidFile(path) => {
                let text = std::fs::read_to_string(path).ok()?;
                match parse_pid_file(&text) {
                    Ok(root) => Some(root),
                    Err(e) => {
                        tracing::warn!(pid_file = %path.display(), "{e}");
                        None
                    }
                }
            }
            RootSource::Match(pattern) => {
                let scan = process::scan_all(scan_max_age);
                process::find_match(pattern, &scan).map(|pid| Root {
                    pid,
                    expected_start: None,
                })
            }
            RootSource::Tmux(session) => tmux_pane_pid(session).map(|pid| Root {
                pid,
                expected_start: None,
            }),
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
    })
}

/// `Fri Nov 27 18:26:20 2026` (local time, single-digit days space-padded) to epoch seconds.
pub fn parse_lstart(s: &str) -> Result<f64, String> {
    let normalized = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let naive = NaiveDateTime::parse_from_str(&normalized, "%a %b %e %H:%M:%S %Y")
        .map_err(|e| format!("start time {s:?} is not like `Fri Nov 27 18:26:20 2026`: {e}"))?;
    let local = Local
        .from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| format!("start time {s:?} does not exist in the local time zone"))?;
    Ok(local.timestamp() as f64)
}

/// The pid of the first pane of a tmux session (the session name is matched exactly).
fn tmux_pane_pid(session: &str) -> Option<u32> {
    let mut child = Command::new("tmux")
        .args([
            "list-panes",
            "-s",
            "-t",
            &format!("={session}"),
            "-F",
            "#{pane_pid}",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + TMUX_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return None,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(session, "tmux did not answer in time");
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    out.lines().next()?.trim().parse().ok()
}

/// What a heartbeat file says.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub age_seconds: f64,
    pub state: Option<String>,
}

/// Reads a heartbeat: its JSON `timestamp` (and `state`) if it has them, else its mtime.
pub fn read_heartbeat(path: &Path, now: DateTime<Utc>) -> std::io::Result<Heartbeat> {
    let text = std::fs::read_to_string(path)?;
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let state = json
        .as_ref()
        .and_then(|j| j.get("state")?.as_str().map(str::to_string));
    let stamped = json
        .as_ref()
        .and_then(|j| j.get("timestamp")?.as_str().and_then(parse_timestamp));
    let beat = match stamped {
        Some(t) => t,
        None => DateTime::<Utc>::from(std::fs::metadata(path)?.modified()?),
    };
    Ok(Heartbeat {
        age_seconds: ((now - beat).num_milliseconds() as f64 / 1000.0).max(0.0),
        state,
    })
}

/// Remembers which processes were in an agent's tree, under which root, to find the ones that
/// outlive it.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    members: HashMap<Member, Member>,
}

impl OrphanTracker {
    /// Records this cycle's tree (if the root lives) and counts orphans: remembered processes
    /// still running whose root is dead or no longer the agent's root. Returns the count and
    /// their resident memory in MB.
    pub fn update(
        &mut self,
        live_root: Option<Member>,
        tree: &[Member],
        machine: &Machine,
    ) -> (u64, f64) {
        if let Some(root) = live_root {
            for m in tree {
                if self.members.len() >= MAX_REMEMBERED && !self.members.contains_key(m) {
                    break;
                }
                self.members.insert(*m, root);
            }
        }
        let (mut count, mut pages) = (0u64, 0u64);
        self.members.retain(|member, root| {
            if Some(*root) == live_root {
                // Still under a living root: in the tree, or gone from it (not an orphan).
                return tree.contains(member);
            }
            match process::read_stat(member.pid) {
                Some(stat) if stat.is_running() && stat.start_ticks == member.start_ticks => {
                    count += 1;
                    pages += stat.rss_pages;
                    true
                }
                _ => false, // Exited, or the pid now belongs to someone else.
            }
        });
        (count, machine.megabytes(pages))
    }
}

/// One agent: its process tree, orphans, heartbeat and workspace.
pub struct AgentProbe {
    id: String,
    source: RootSource,
    workspace: PathBuf,
    heartbeat: Option<PathBuf>,
    machine: Machine,
    tree: TreeSampler,
    orphans: OrphanTracker,
    sizer: DirSizer,
    limits: WalkLimits,
    scan_max_age: Duration,
}

impl AgentProbe {
    /// A probe for agent `id`. `scan_max_age` bounds how stale a shared process scan (for
    /// `--match`) may be: about one interval.
    pub fn new(
        id: &str,
        source: RootSource,
        workspace: PathBuf,
        heartbeat: Option<PathBuf>,
        limits: WalkLimits,
        scan_max_age: Duration,
    ) -> Self {
        let machine = Machine::current();
        AgentProbe {
            id: id.to_string(),
            source,
            workspace,
            heartbeat,
            machine,
            tree: TreeSampler::new(machine),
            orphans: OrphanTracker::default(),
            sizer: DirSizer::new(limits.cap),
            limits,
            scan_max_age,
        }
    }

    fn reading(&self, metric: &'static str, value: f64, unit: &'static str) -> Measurement {
        Measurement::now(ResourceType::Agent, &self.id, metric, value, unit)
    }
}

impl Probe for AgentProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let mut out = Vec::with_capacity(10);
        let workspace_exists = self.workspace.is_dir();
        if matches!(self.source, RootSource::None) {
            out.push(self.reading(AGENT_ACTIVE, flag(workspace_exists), UNIT_BOOL));
        } else {
            let sample = match self.source.resolve(self.scan_max_age) {
                Some(root) => self.tree.sample(root.pid, root.expected_start),
                None => process::TreeSample::dead(),
            };
            out.push(self.reading(AGENT_ACTIVE, flag(sample.alive), UNIT_BOOL));
            if let Some(cpu) = sample.cpu_percent {
                out.push(self.reading(
                    AGENT_PROCESS_COUNT,
                    sample.process_count as f64,
                    UNIT_COUNT,
                ));
                out.push(self.reading(AGENT_CPU_PERCENT, cpu, UNIT_PERCENT));
                out.push(self.reading(AGENT_MEMORY_MB, sample.memory_mb, UNIT_MB));
                out.push(self.reading(AGENT_OPEN_FILES, sample.open_files as f64, UNIT_COUNT));
            }
            let live_root = sample.members.first().copied().filter(|_| sample.alive);
            let (orphans, orphan_mb) =
                self.orphans
                    .update(live_root, &sample.members, &self.machine);
            out.push(self.reading(AGENT_ORPHAN_COUNT, orphans as f64, UNIT_COUNT));
            out.push(self.reading(AGENT_ORPHAN_MEMORY_MB, orphan_mb, UNIT_MB));
        }
        if let Some(path) = &self.heartbeat {
            match read_heartbeat(path, Utc::now()) {
                Ok(hb) => {
                    let stuck = hb.state.as_deref() == Some("stuck");
                    out.push(self.reading(HEARTBEAT_AGE_SECONDS, hb.age_seconds, UNIT_SECONDS));
                    out.push(self.reading(HEARTBEAT_STUCK, flag(stuck), UNIT_BOOL));
                }
                Err(e) => {
                    tracing::debug!(agent = %self.id, heartbeat = %path.display(), "no heartbeat: {e}")
                }
            }
        }
        if workspace_exists
            && let SizeReading::Known(stats) = self.sizer.poll(&self.workspace, self.limits.wait)
        {
            out.push(self.reading(WORKSPACE_SIZE_MB, stats.megabytes(), UNIT_MB));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_hold_a_pid_or_pid_and_start_time() {
        assert_eq!(
            parse_pid_file(" 4242\n").unwrap(),
            Root {
                pid: 4242,
                expected_start: None
            }
        );
        let root = parse_pid_file("4242|Fri Nov 27 18:26:20 2026\n").unwrap();
        assert_eq!(root.pid, 4242);
        let local = Local.with_ymd_and_hms(2026, 11, 27, 18, 26, 20).unwrap();
        assert_eq!(root.expected_start, Some(local.timestamp() as f64));
        // ps pads single-digit days with a space.
        let padded = parse_pid_file("7|Sat Nov  7 01:02:03 2026").unwrap();
        let local = Local.with_ymd_and_hms(2026, 11, 7, 1, 2, 3).unwrap();
        assert_eq!(padded.expected_start, Some(local.timestamp() as f64));
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
        let expected = parse_lstart(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let machine = Machine::current();
        let ours = machine.start_epoch(&process::read_stat(me).unwrap());
        assert!((ours - expected).abs() <= 2.0, "{ours} vs {expected}");
    }

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
