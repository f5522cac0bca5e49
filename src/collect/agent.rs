//! Agents: finding the root process (pid, pid file, command-line match, tmux pane), measuring
//! its tree, remembering its members to catch orphans, and reading its heartbeat.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};

use super::dirwalk::SizeReading;
use super::process::{self, Machine, Member, TreeSampler};
use super::shared_size::SharedSizer;
use super::{Probe, WalkLimits, flag};
use crate::catalog::{
    AGENT_ACTIVE, AGENT_CPU_PERCENT, AGENT_MEMORY_MB, AGENT_OPEN_FILES, AGENT_ORPHAN_COUNT,
    AGENT_ORPHAN_MEMORY_MB, AGENT_PROCESS_COUNT, AGENT_STALLED, HEARTBEAT_AGE_SECONDS,
    HEARTBEAT_STUCK, UNIT_BOOL, UNIT_COUNT, UNIT_MB, UNIT_PERCENT, UNIT_SECONDS, WORKSPACE_SIZE_MB,
};
use crate::model::{AgentOptions, Judgement, Measurement, ResourceType};

/// How long `tmux` may take to answer.
const TMUX_TIMEOUT: Duration = Duration::from_secs(2);
/// Members remembered per agent for orphan detection, at most.
const MAX_REMEMBERED: usize = 20_000;

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
    PidFile(PathBuf),
    Match(regex::Regex),
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

/// A tmux session on a given server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmuxTarget {
    pub session: String,
    /// `tmux -L NAME`; `None` is tmux's default server.
    pub socket: Option<String>,
}

/// The root found this cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Root {
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
    Found(Root),
    /// Definitely none: no pid file, no match, no such session.
    Gone,
    /// Could not tell this time (a pid file being rewritten, tmux slow to answer): the previous
    /// root stands for one more cycle.
    Unknown,
}

impl RootSource {
    /// The source named by an agent's options.
    pub fn from_options(options: &AgentOptions) -> Result<RootSource, String> {
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

impl TmuxTarget {
    fn of(session: &str, options: &AgentOptions) -> Self {
        TmuxTarget {
            session: session.to_string(),
            socket: options.tmux_socket.clone(),
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

/// Files read by a probe (pid files, heartbeats) are small: more than this is not read.
const SMALL_FILE: u64 = 64 * 1024;

/// Reads a small regular file. `Ok(None)` for something that is not a regular file or is too
/// big (a FIFO would block the read for ever); `Err` when it is not there.
pub fn read_small_file(path: &Path) -> std::io::Result<Option<String>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() || meta.len() > SMALL_FILE {
        return Ok(None);
    }
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    match std::io::Read::read_to_string(&mut std::io::Read::take(file, SMALL_FILE), &mut text) {
        Ok(_) => Ok(Some(text)),
        Err(_) => Ok(None),
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

/// What tmux said about a session.
enum TmuxAnswer {
    Pane(u32),
    NoSession,
    NoAnswer,
}

/// What one tmux command gave.
enum TmuxRun {
    Output(String),
    /// It ran and said no (no such session, no server), or there is no tmux.
    Failed,
    /// It did not answer within [`TMUX_TIMEOUT`].
    NoAnswer,
}

/// Runs `tmux [-L SOCKET] ARGS` with a time limit (a wedged tmux server must not hold a cycle).
fn run_tmux(socket: Option<&str>, args: &[&str]) -> TmuxRun {
    let mut command = Command::new("tmux");
    if let Some(socket) = socket {
        command.args(["-L", socket]);
    }
    let Ok(mut child) = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return TmuxRun::Failed;
    };
    let deadline = Instant::now() + TMUX_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return TmuxRun::Failed,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return TmuxRun::NoAnswer;
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    TmuxRun::Output(out)
}

/// The pid of the first pane of a tmux session (the session name is matched exactly).
fn tmux_pane_pid(target: &TmuxTarget) -> TmuxAnswer {
    let name = format!("={}", target.session);
    let args = ["list-panes", "-s", "-t", &name, "-F", "#{pane_pid}"];
    match run_tmux(target.socket.as_deref(), &args) {
        TmuxRun::Output(out) => match out.lines().next().and_then(|l| l.trim().parse().ok()) {
            Some(pid) => TmuxAnswer::Pane(pid),
            None => TmuxAnswer::NoSession,
        },
        TmuxRun::Failed => TmuxAnswer::NoSession,
        TmuxRun::NoAnswer => {
            tracing::warn!(session = %target.session, socket = ?target.socket, "tmux did not answer in time");
            TmuxAnswer::NoAnswer
        }
    }
}

/// The names of the running sessions of a tmux server (`None`: the default one); empty with no
/// server or no tmux; `None` when tmux does not answer in time.
pub fn tmux_sessions(socket: Option<&str>) -> Option<std::collections::HashSet<String>> {
    match run_tmux(socket, &["list-sessions", "-F", "#{session_name}"]) {
        TmuxRun::Output(out) => Some(out.lines().map(|l| l.trim().to_string()).collect()),
        TmuxRun::Failed => Some(Default::default()),
        TmuxRun::NoAnswer => None,
    }
}

/// The process of every pane of every session of a tmux server; empty with no server; `None`
/// when tmux does not answer in time.
pub fn tmux_pane_pids(socket: Option<&str>) -> Option<Vec<u32>> {
    match run_tmux(socket, &["list-panes", "-a", "-F", "#{pane_pid}"]) {
        TmuxRun::Output(out) => Some(out.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        TmuxRun::Failed => Some(Vec::new()),
        TmuxRun::NoAnswer => None,
    }
}

/// A heartbeat time more than this far ahead of the clock is clock skew, not a beat: it would
/// read as age 0 for ever.
pub const HEARTBEAT_SKEW: Duration = Duration::from_secs(60);

/// What a heartbeat file says.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub age_seconds: f64,
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
        timestamp: String,
        ahead_seconds: f64,
    },
    /// The file was not read: not a regular file, or over the size cap.
    NotRead(String),
    /// Read, but without a usable timestamp: not JSON, no `timestamp`, or a bad one.
    Unparsable(String),
}

impl BeatFallback {
    /// The kind, to say each once.
    fn kind(&self) -> &'static str {
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
fn seconds(d: chrono::TimeDelta) -> f64 {
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

/// Seconds since the epoch as an RFC 3339 time, for the log.
fn epoch_text(epoch: f64) -> String {
    DateTime::<Utc>::from_timestamp_millis((epoch * 1000.0) as i64)
        .map_or_else(|| format!("{epoch}"), crate::model::format_timestamp)
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
            let under_live_root = Some(*root) == live_root;
            if under_live_root && tree.contains(member) {
                return true;
            }
            // Left the tree (exited, or detached like a daemon) or its root is gone: still the
            // same process? One that detached counts once its root dies.
            match process::read_stat(member.pid) {
                Some(stat) if stat.is_running() && stat.start_ticks == member.start_ticks => {
                    if !under_live_root {
                        count += 1;
                        pages += stat.rss_pages;
                    }
                    true
                }
                _ => false, // Exited, or the pid now belongs to someone else.
            }
        });
        (count, machine.megabytes(pages))
    }
}

/// Below this share of one core, averaged over the stall window, a tree counts as idle: an agent
/// waiting at a prompt uses next to nothing, one that compiles or thinks uses far more.
pub const STALL_CPU_CORES: f64 = 0.01;

/// Tells a stalled agent (heartbeat says `working` but has not moved, tree idle) from a busy or
/// an idle one, from the tree's CPU over the last `window`.
#[derive(Debug)]
pub struct StallWatch {
    window: Duration,
    /// Each cycle: when, and the CPU the tree used since the previous one, in core-seconds.
    samples: std::collections::VecDeque<(Instant, f64)>,
    /// When watching began (or the root last changed): a verdict needs a whole window seen.
    since: Option<Instant>,
}

impl StallWatch {
    /// A watch over `window`.
    pub fn new(window: Duration) -> Self {
        StallWatch {
            window,
            samples: Default::default(),
            since: None,
        }
    }

    /// Records one cycle: `busy_cores` is the tree's CPU in cores (0.5 = half a core) over
    /// `elapsed`; `None` when the root is not alive (history starts again).
    pub fn observe(&mut self, now: Instant, busy_cores: Option<f64>, elapsed: Duration) {
        let Some(busy) = busy_cores else {
            self.samples.clear();
            self.since = None;
            return;
        };
        self.since.get_or_insert(now);
        self.samples.push_back((now, busy * elapsed.as_secs_f64()));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// True when the heartbeat says working (`None` or empty state, as Gas Town reads it), has
    /// not moved for the window, the tree was watched for the whole window and used at most
    /// [`STALL_CPU_CORES`] on average meanwhile.
    pub fn stalled(&self, now: Instant, heartbeat_age: f64, state: Option<&str>) -> bool {
        let working = matches!(state, None | Some("") | Some("working"));
        let watched = self
            .since
            .is_some_and(|since| now.duration_since(since) >= self.window);
        let used: f64 = self.samples.iter().map(|(_, cpu)| cpu).sum();
        working
            && watched
            && heartbeat_age >= self.window.as_secs_f64()
            && used <= STALL_CPU_CORES * self.window.as_secs_f64()
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
    /// Shared with the workspace monitor of the same directory, if there is one.
    sizer: SharedSizer,
    limits: WalkLimits,
    scan_max_age: Duration,
    /// The root of the last cycle, standing in when resolution cannot tell.
    last_root: Option<Root>,
    /// The last heartbeat read: while the file is missing, its age keeps growing.
    last_beat: Option<(DateTime<Utc>, Option<String>)>,
    /// A heartbeat whose own time is ahead of the clock (its mtime too): that time, and when it
    /// was first read, which its age counts from.
    future_beat: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The heartbeat problems already logged (each is said once, not every cycle).
    beat_notes: std::collections::HashSet<&'static str>,
    /// The reuse of the root's pid was logged (again once the root is itself or gone).
    reuse_logged: bool,
    /// Gas Town's rule: `stuck` counts only while the heartbeat is younger than this.
    stuck_fresh_for: Option<Duration>,
    /// Stall detection, with `stall_after`.
    stall: Option<StallWatch>,
    /// Says when the agent is known to be idle (a Gas Town polecat after `gt done`), which
    /// looks just like a stall.
    known_idle: Option<Box<dyn Fn() -> bool + Send>>,
    /// When the previous cycle measured, for the stall watch's CPU seconds.
    last_measured: Option<Instant>,
    /// Metrics judged otherwise than by their thresholds.
    judgements: Vec<(&'static str, Judgement)>,
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
            sizer: SharedSizer::new(&workspace, limits.cap),
            workspace,
            heartbeat,
            machine,
            tree: TreeSampler::new(machine),
            orphans: OrphanTracker::default(),
            limits,
            scan_max_age,
            last_root: None,
            last_beat: None,
            future_beat: None,
            beat_notes: Default::default(),
            reuse_logged: false,
            stuck_fresh_for: None,
            stall: None,
            known_idle: None,
            last_measured: None,
            judgements: Vec::new(),
        }
    }

    /// Counts a `stuck` heartbeat only while it is younger than `fresh` (Gas Town's witness
    /// ignores the state of a stale heartbeat: the agent may have moved on without a gt call).
    pub fn with_stuck_fresh_for(mut self, fresh: Duration) -> Self {
        self.stuck_fresh_for = Some(fresh);
        self
    }

    /// Reports `agent_stalled` (see [`StallWatch`]) over `window`.
    pub fn with_stall_after(mut self, window: Duration) -> Self {
        self.stall = Some(StallWatch::new(window));
        self
    }

    /// Never reports a stall while `idle` says the agent is known to be idle.
    pub fn with_known_idle(mut self, idle: impl Fn() -> bool + Send + 'static) -> Self {
        self.known_idle = Some(Box::new(idle));
        self
    }

    fn reading(&self, metric: &'static str, value: f64, unit: &'static str) -> Measurement {
        let judgement = self
            .judgements
            .iter()
            .find(|(name, _)| *name == metric)
            .map_or(Judgement::Alerts, |(_, j)| *j);
        Measurement::now(ResourceType::Agent, &self.id, metric, value, unit).judged(judgement)
    }

    /// Logs, once per agent, that the pid it was added with belongs to another process now.
    fn note_reuse(&mut self, root: Option<Root>, sample: &process::TreeSample) {
        let earlier_boot = matches!(
            self.source,
            RootSource::PidStarted(_, RecordedStart::EarlierBoot)
        );
        if !(sample.reused || earlier_boot) {
            self.reuse_logged = false;
            return;
        }
        if std::mem::replace(&mut self.reuse_logged, true) {
            return;
        }
        let by_pid = matches!(self.source, RootSource::Pid(_) | RootSource::PidStarted(..));
        let (pid, recorded) = match (&self.source, root) {
            (RootSource::PidStarted(pid, _), _) => (*pid, true),
            (_, Some(root)) => (root.pid, root.start_ticks.is_some()),
            _ => return,
        };
        let now_started = process::read_stat(pid)
            .filter(process::ProcStat::is_running)
            .map(|stat| epoch_text(self.machine.start_epoch(&stat)));
        let expected = match self.source {
            RootSource::PidStarted(_, RecordedStart::Ticks(ticks)) => {
                epoch_text(self.machine.boot_time + ticks as f64 / self.machine.ticks_per_second)
            }
            RootSource::PidStarted(_, RecordedStart::EarlierBoot) => "in an earlier boot".into(),
            _ if recorded => "at another time".into(),
            _ => "before it (first seen then)".into(),
        };
        let Some(now_started) = now_started else {
            if earlier_boot {
                tracing::warn!(
                    agent = %self.id,
                    pid,
                    "the agent's process (pid {pid}) was recorded in an earlier boot: it is \
                     gone, and the agent counts as dead"
                );
            } else {
                // The other process ended meanwhile: said next time, if it is reused again.
                self.reuse_logged = false;
            }
            return;
        };
        if by_pid {
            tracing::warn!(
                agent = %self.id,
                pid,
                agent_started = %expected,
                pid_started = %now_started,
                "pid {pid} was reused: the process holding it is not the agent's, which is gone; \
                 the agent counts as dead"
            );
        } else {
            tracing::debug!(
                agent = %self.id,
                pid,
                agent_started = %expected,
                pid_started = %now_started,
                "pid {pid} of the pid file belongs to another process now: the agent counts as dead"
            );
        }
    }

    /// Logs a heartbeat problem once per agent (its file), not every cycle.
    fn note_beat(&mut self, path: &Path, fallback: Option<&BeatFallback>) {
        let Some(fallback) = fallback else {
            return;
        };
        if !self.beat_notes.insert(fallback.kind()) {
            return;
        }
        let file = path.display();
        match fallback {
            BeatFallback::Skew {
                timestamp,
                ahead_seconds,
            } => tracing::warn!(
                agent = %self.id,
                heartbeat = %file,
                timestamp = %timestamp,
                ahead_seconds,
                "heartbeat clock skew: its timestamp {timestamp} is {ahead_seconds:.0} s ahead of \
                 the clock, so its mtime is used instead (said once)"
            ),
            BeatFallback::NotRead(why) | BeatFallback::Unparsable(why) => tracing::warn!(
                agent = %self.id,
                heartbeat = %file,
                "heartbeat {file} {why}: its mtime is used instead (said once)"
            ),
        }
    }

    /// The age of a heartbeat just read. A beat whose time is ahead of the clock even by its
    /// mtime (a file written under a clock since set back) ages from when it was first read.
    fn beat_age(&mut self, path: &Path, hb: &Heartbeat, now: DateTime<Utc>) -> f64 {
        let ahead = seconds(hb.at - now);
        if ahead <= HEARTBEAT_SKEW.as_secs_f64() {
            self.future_beat = None;
            return hb.age_seconds;
        }
        if self.beat_notes.insert("mtime ahead") {
            tracing::warn!(
                agent = %self.id,
                heartbeat = %path.display(),
                ahead_seconds = ahead,
                "heartbeat clock skew: the file's mtime is {ahead:.0} s ahead of the clock too, \
                 so its age counts from when it was first read (said once)"
            );
        }
        let first_read = match self.future_beat {
            Some((at, first)) if at == hb.at => first,
            _ => self.future_beat.insert((hb.at, now)).1,
        };
        seconds(now - first_read).max(0.0)
    }

    /// Has the analyzer judge `metric` of this agent as `judgement` (see [`Judgement`]).
    pub fn with_judgement(mut self, metric: &'static str, judgement: Judgement) -> Self {
        self.judgements.push((metric, judgement));
        self
    }
}

impl Probe for AgentProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let mut out = Vec::with_capacity(10);
        let measured_at = Instant::now();
        let elapsed = self
            .last_measured
            .replace(measured_at)
            .map_or(Duration::ZERO, |then| measured_at.duration_since(then));
        let workspace_exists = self.workspace.is_dir();
        // Whether the root lives, when there is a root to ask about.
        let mut alive = None;
        if matches!(self.source, RootSource::None) {
            out.push(self.reading(AGENT_ACTIVE, flag(workspace_exists), UNIT_BOOL));
        } else {
            let root = match self.source.resolve(self.scan_max_age) {
                Resolution::Found(root) => Some(root),
                Resolution::Gone => None,
                Resolution::Unknown => self.last_root,
            };
            self.last_root = root;
            let sample = match root {
                Some(root) => {
                    self.tree
                        .sample(root.pid, root.expected_start, root.start_ticks, root.pinned)
                }
                None => process::TreeSample::dead(),
            };
            self.note_reuse(root, &sample);
            out.push(self.reading(AGENT_ACTIVE, flag(sample.alive), UNIT_BOOL));
            alive = Some(sample.alive);
            if let Some(stall) = self.stall.as_mut() {
                let cores = sample
                    .cpu_percent
                    .map(|cpu| cpu / 100.0 * self.machine.cpus as f64);
                stall.observe(measured_at, cores, elapsed);
            }
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
        if let Some(path) = self.heartbeat.clone() {
            let now = Utc::now();
            let beat = match read_heartbeat(&path, now) {
                Ok(hb) => {
                    self.note_beat(&path, hb.fallback.as_ref());
                    let age = self.beat_age(&path, &hb, now);
                    let at = now - chrono::Duration::milliseconds((age * 1000.0) as i64);
                    self.last_beat = Some((at, hb.state.clone()));
                    Some((age, hb.state))
                }
                // Gone or unreadable: the last beat keeps ageing, so a vanished heartbeat turns
                // stale instead of silently clearing its alert.
                Err(e) => {
                    tracing::debug!(agent = %self.id, heartbeat = %path.display(), "no heartbeat: {e}");
                    self.last_beat.as_ref().map(|(at, state)| {
                        (
                            ((now - *at).num_milliseconds() as f64 / 1000.0).max(0.0),
                            state.clone(),
                        )
                    })
                }
            };
            if let Some((age, state)) = beat {
                let fresh = self
                    .stuck_fresh_for
                    .is_none_or(|fresh| age < fresh.as_secs_f64());
                let stuck = fresh && state.as_deref() == Some("stuck");
                out.push(self.reading(HEARTBEAT_AGE_SECONDS, age, UNIT_SECONDS));
                out.push(self.reading(HEARTBEAT_STUCK, flag(stuck), UNIT_BOOL));
                if let (Some(stall), Some(true)) = (&self.stall, alive) {
                    let idle = self.known_idle.as_ref().is_some_and(|idle| idle());
                    let stalled = !idle && stall.stalled(measured_at, age, state.as_deref());
                    out.push(self.reading(AGENT_STALLED, flag(stalled), UNIT_BOOL));
                }
            }
        }
        if workspace_exists
            && let SizeReading::Known(stats) = self.sizer.poll(self.limits.wait).size
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
    fn orphans_include_children_that_detached_before_their_root_died() {
        let machine = Machine::current();
        let mut root = process::tests::spawn_sleep();
        let mut detached = process::tests::spawn_sleep();
        let member = |pid: u32| Member {
            pid,
            start_ticks: process::read_stat(pid).unwrap().start_ticks,
        };
        let (r, d) = (member(root.id()), member(detached.id()));
        let mut tracker = OrphanTracker::default();
        // Seen in the tree once, then no longer in it while the root lives: not an orphan yet.
        assert_eq!(tracker.update(Some(r), &[r, d], &machine).0, 0);
        assert_eq!(tracker.update(Some(r), &[r], &machine).0, 0);
        root.kill().unwrap();
        root.wait().unwrap();
        let (count, mb) = tracker.update(None, &[], &machine);
        assert_eq!(count, 1);
        assert!(mb > 0.0);
        detached.kill().unwrap();
        detached.wait().unwrap();
        assert_eq!(tracker.update(None, &[], &machine).0, 0);
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

    fn probe(source: RootSource, heartbeat: Option<PathBuf>) -> AgentProbe {
        let limits = WalkLimits {
            wait: Duration::from_secs(10),
            cap: Duration::from_secs(10),
        };
        AgentProbe::new(
            "a1",
            source,
            PathBuf::from("/nonexistent/ws"),
            heartbeat,
            limits,
            Duration::ZERO,
        )
    }

    fn value(ms: &[Measurement], name: &str) -> Option<f64> {
        ms.iter().find(|m| m.metric_name == name).map(|m| m.value)
    }

    /// Sets a file's mtime `ago` seconds in the past (negative: in the future).
    fn age_file(path: &Path, ago: i64) {
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
    fn a_recorded_start_time_tells_the_agent_from_a_reused_pid() {
        let mut child = process::tests::spawn_sleep();
        let pid = child.id();
        let start = process::process_start(pid).unwrap();
        let options = |start| AgentOptions {
            pid: Some(pid),
            pid_start: Some(start),
            ..AgentOptions::default()
        };
        // The right start: the agent.
        let source = RootSource::from_options(&options(start.clone())).unwrap();
        assert!(
            matches!(source, RootSource::PidStarted(p, RecordedStart::Ticks(t)) if p == pid && t == start.ticks),
            "{source:?}"
        );
        let mut agent = probe(source, None);
        assert_eq!(value(&agent.measure(), AGENT_ACTIVE), Some(1.0));
        assert!(!agent.reuse_logged);
        // Another start time (the pid was reused after a restart): dead, and said.
        let reused = crate::model::PidStart {
            ticks: start.ticks.saturating_sub(100),
            ..start.clone()
        };
        let mut agent = probe(RootSource::from_options(&options(reused)).unwrap(), None);
        let ms = agent.measure();
        assert_eq!(value(&ms, AGENT_ACTIVE), Some(0.0));
        assert_eq!(value(&ms, AGENT_CPU_PERCENT), None);
        assert!(agent.reuse_logged);
        // Recorded in another boot: gone, whatever holds the pid.
        let other_boot = crate::model::PidStart {
            boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
            ..start.clone()
        };
        let source = RootSource::from_options(&options(other_boot)).unwrap();
        if process::boot_id().is_some() {
            assert!(
                matches!(source, RootSource::PidStarted(p, RecordedStart::EarlierBoot) if p == pid),
                "{source:?}"
            );
            let mut agent = probe(source, None);
            assert_eq!(value(&agent.measure(), AGENT_ACTIVE), Some(0.0));
            assert!(agent.reuse_logged);
        }
        // Saved without a start time (before it was recorded): pins the first process seen.
        let legacy = AgentOptions {
            pid: Some(pid),
            ..AgentOptions::default()
        };
        assert!(
            matches!(RootSource::from_options(&legacy).unwrap(), RootSource::Pid(p) if p == pid)
        );
        let mut agent = probe(RootSource::Pid(pid), None);
        assert_eq!(value(&agent.measure(), AGENT_ACTIVE), Some(1.0));
        child.kill().unwrap();
        child.wait().unwrap();
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

    #[test]
    fn heartbeat_problems_are_noted_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("hb.json");
        std::fs::write(&hb, r#"{"timestamp":"2100-01-01T00:00:00Z"}"#).unwrap();
        age_file(&hb, 200);
        let mut agent = probe(RootSource::None, Some(hb.clone()));
        for _ in 0..3 {
            let age = value(&agent.measure(), HEARTBEAT_AGE_SECONDS).unwrap();
            assert!((age - 200.0).abs() < 5.0, "{age}");
        }
        assert_eq!(agent.beat_notes.len(), 1);
        assert!(agent.beat_notes.contains("skew"));
        std::fs::write(&hb, "garbage").unwrap();
        agent.measure();
        agent.measure();
        assert_eq!(agent.beat_notes.len(), 2);
    }

    #[test]
    fn a_heartbeat_whose_mtime_is_ahead_too_ages_from_when_it_was_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let hb = dir.path().join("hb.json");
        std::fs::write(&hb, r#"{"timestamp":"2100-01-01T00:00:00Z"}"#).unwrap();
        age_file(&hb, -3600);
        let mut agent = probe(RootSource::None, Some(hb.clone()));
        let now = Utc::now();
        let beat = read_heartbeat(&hb, now).unwrap();
        assert_eq!(beat.age_seconds, 0.0, "clamped: {beat:?}");
        assert_eq!(agent.beat_age(&hb, &beat, now), 0.0);
        let later = now + chrono::Duration::seconds(700);
        let beat = read_heartbeat(&hb, later).unwrap();
        assert!((agent.beat_age(&hb, &beat, later) - 700.0).abs() < 0.01);
        // Rewritten (a new mtime): a new beat.
        age_file(&hb, -7200);
        let beat = read_heartbeat(&hb, later).unwrap();
        assert_eq!(agent.beat_age(&hb, &beat, later), 0.0);
    }
}
