//! The agent probe: each cycle, its root, tree, orphans, stall, heartbeat and workspace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::heartbeat::{BeatFallback, HEARTBEAT_SKEW, Heartbeat, read_heartbeat, seconds};
use super::root::{RecordedStart, Resolution, Root, RootSource};
use super::tree::{OrphanTracker, StallWatch};
use crate::catalog::{
    AGENT_ACTIVE, AGENT_CPU_PERCENT, AGENT_MEMORY_MB, AGENT_OPEN_FILES, AGENT_ORPHAN_COUNT,
    AGENT_ORPHAN_MEMORY_MB, AGENT_PROCESS_COUNT, AGENT_STALLED, HEARTBEAT_AGE_SECONDS,
    HEARTBEAT_STUCK, UNIT_BOOL, UNIT_COUNT, UNIT_MB, UNIT_PERCENT, UNIT_SECONDS, WORKSPACE_SIZE_MB,
};
use crate::collect::dirwalk::SizeReading;
use crate::collect::process::{self, Machine, TreeSampler};
use crate::collect::shared_size::SharedSizer;
use crate::collect::{Probe, WalkLimits, flag};
use crate::model::{Judgement, Measurement, ResourceType};

/// Seconds since the epoch as an RFC 3339 time, for the log.
fn epoch_text(epoch: f64) -> String {
    DateTime::<Utc>::from_timestamp_millis((epoch * 1000.0) as i64)
        .map_or_else(|| format!("{epoch}"), crate::model::format_timestamp)
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
    /// The live root's pidfd, and the heartbeat, pid file and workspace root, watched.
    watches: crate::watch::Watches,
    /// The live root as of the latest measurement, for its pidfd.
    live_root: Option<(u32, u64)>,
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
            watches: Default::default(),
            live_root: None,
        }
    }

    /// Counts a `stuck` heartbeat only while it is younger than `fresh` (Gas Town's witness
    /// ignores the state of a stale heartbeat: the agent may have moved on without a gt call).
    pub(crate) fn with_stuck_fresh_for(mut self, fresh: Duration) -> Self {
        self.stuck_fresh_for = Some(fresh);
        self
    }

    /// Reports `agent_stalled` (see [`StallWatch`]) over `window`.
    pub(crate) fn with_stall_after(mut self, window: Duration) -> Self {
        self.stall = Some(StallWatch::new(window));
        self
    }

    /// Never reports a stall while `idle` says the agent is known to be idle.
    pub(crate) fn with_known_idle(mut self, idle: impl Fn() -> bool + Send + 'static) -> Self {
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
    pub(crate) fn with_judgement(mut self, metric: &'static str, judgement: Judgement) -> Self {
        self.judgements.push((metric, judgement));
        self
    }
}

impl Probe for AgentProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let out = self.readings();
        let mut paths = vec![crate::watch::PathWatch::Root(self.workspace.clone())];
        if let Some(path) = &self.heartbeat {
            paths.push(crate::watch::PathWatch::Heartbeat(path.clone()));
        }
        if let RootSource::PidFile(path) | RootSource::PidFileOrTmux(path, _) = &self.source {
            paths.push(crate::watch::PathWatch::File(path.clone()));
        }
        let wanted = crate::watch::Wanted {
            process: self.live_root,
            paths,
        };
        self.watches.want(&wanted);
        out
    }

    fn attach(&mut self, poke: crate::watch::Poke) {
        self.watches.attach(poke);
    }
}

impl AgentProbe {
    /// One cycle's readings.
    fn readings(&mut self) -> Vec<Measurement> {
        self.live_root = None;
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
            self.live_root = live_root.map(|m| (m.pid, m.start_ticks));
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
    use super::super::heartbeat::tests::age_file;
    use super::*;
    use crate::model::AgentOptions;

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
