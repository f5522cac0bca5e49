//! The Gas Town actor: follows the town's events file, starts and retires monitors as sessions
//! come and go, raises the crashes Gas Town reports, picks up sessions that appear in the
//! layout, and measures the town itself (its daemon, its orphaned agent processes).
//!
//! File, tmux and `/proc` work runs off the event loop (`spawn_blocking`), one poll at a time,
//! and never under the lock the event loop takes: the reader's state has a lock of its own.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::analyzer::{AnalyzerHandle, Snapshot};
use super::collector::trigger_wait;
use super::supervisor::SupervisorHandle;
use super::{ExitGuard, StopChild};
use crate::catalog;
use crate::collect::agent::{pid_file_is_live, read_small_file, tmux_pane_pids};
use crate::collect::process;
use crate::config::GastownSettings;
use crate::gastown::events::EventFollower;
use crate::gastown::layout::{MANAGED_BY, Town, reconcile};
use crate::gastown::lifecycle::{
    Action, EVENT_ALERT_HOLD, IdleSessions, Lifecycle, TOWN_RESOURCE, TownFact, is_event_alert,
    read_event,
};
use crate::gastown::orphans::{self, OrphanScan};
use crate::model::{HealthMetric, Measurement, MonitorKind, MonitorSpec, ResourceType};
use crate::watch::{PathWatch, Wanted, Watches};

/// How often the events file is read.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the layout is read again for sessions no event announced.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// How often watched sessions' liveness, retiring agents and aging death alerts are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A retiring agent never measured is retired after this long.
const UNMEASURED_WAIT: Duration = Duration::from_secs(120);
/// The collector name the town's own measurements are sent under.
const SOURCE: &str = "gastown";

/// What Gas Town's daemon was last seen doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum DaemonSeen {
    /// No pid file seen yet (or the town was stopped on purpose since).
    #[default]
    Unknown,
    /// Its pid file (`daemon/daemon.pid`) named a running process.
    Alive,
    /// Its pid file named a dead process.
    Dead,
}

/// `town_daemon_alive` from what `daemon/daemon.pid` says now (`None`: no file) and what was
/// seen before. Gas Town removes a stale pid file whenever a `gt` command asks whether its
/// daemon runs, so a death seen once stays a death until the daemon runs again or `gt down`
/// stops the town on purpose (`stopped`). A missing file never seen stale is a clean stop.
pub(crate) fn daemon_reading(
    file: Option<bool>,
    seen: DaemonSeen,
    stopped: bool,
) -> (Option<bool>, DaemonSeen) {
    match (file, seen) {
        (Some(true), _) => (Some(true), DaemonSeen::Alive),
        (Some(false), _) if stopped => (None, DaemonSeen::Unknown),
        (Some(false), _) => (Some(false), DaemonSeen::Dead),
        (None, DaemonSeen::Dead) if !stopped => (Some(false), DaemonSeen::Dead),
        (None, _) => (None, DaemonSeen::Unknown),
    }
}

/// What only the blocking poll touches: the events file's reader and the town's own readings.
struct Reader {
    follower: EventFollower,
    last_rescan: Option<Instant>,
    last_measure: Option<Instant>,
    last_orphan_scan: Option<Instant>,
    orphans: Option<OrphanScan>,
    daemon: DaemonSeen,
}

/// What the poll and the event loop decide together, behind a lock taken only briefly.
struct Decisions {
    lifecycle: Lifecycle,
    /// Sessions waiting for their last orphan check, and since when.
    retiring: BTreeMap<String, Instant>,
    /// Each watched town agent's worktree (from its monitor), to tell its orphans from the
    /// town's.
    worktrees: BTreeMap<String, PathBuf>,
    last_check: Option<Instant>,
    /// A `gt down` (sentinel or halt) was seen since Gas Town's daemon last ran.
    town_stopped: bool,
}

/// What must survive a restart of the actor.
pub struct TownState {
    reader: Mutex<Reader>,
    decisions: Mutex<Decisions>,
    idle: IdleSessions,
}

impl TownState {
    /// The state for following `town` from the current end of its events file.
    pub fn new(town: &Town, settings: &GastownSettings) -> Self {
        let lifecycle = Lifecycle::new(town.clone(), settings.death_confirm, settings.spawn_grace);
        let idle = lifecycle.idle_sessions();
        TownState {
            reader: Mutex::new(Reader {
                follower: EventFollower::from_end(&town.events_file(), Utc::now()),
                last_rescan: None,
                last_measure: None,
                last_orphan_scan: None,
                orphans: None,
                daemon: DaemonSeen::Unknown,
            }),
            decisions: Mutex::new(Decisions {
                lifecycle,
                retiring: BTreeMap::new(),
                worktrees: BTreeMap::new(),
                last_check: None,
                town_stopped: false,
            }),
            idle,
        }
    }

    /// The polecats idle since their `gt done`, for the probes that judge stalls.
    pub(crate) fn idle_sessions(&self) -> IdleSessions {
        self.idle.clone()
    }

    fn decisions(&self) -> MutexGuard<'_, Decisions> {
        crate::util::lock(&self.decisions)
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        crate::util::lock(&self.reader)
    }
}

/// Shared, restart-proof town state.
pub(crate) type SharedTownState = Arc<TownState>;

/// The actor.
pub(crate) struct TownWatcher {
    town: Town,
    settings: GastownSettings,
    /// The daemon's interval: the town's own measurements are taken as often.
    interval: Duration,
    state: SharedTownState,
    supervisor: SupervisorHandle,
    analyzer: AnalyzerHandle,
    /// A poll is running (it runs off the event loop).
    busy: bool,
    /// The events file watched, so a new line is read when written; taken by a running poll,
    /// which brings it up to date off the event loop. `None` with events off.
    watches: Option<Watches>,
    /// The events file was written to while a poll ran, or too soon after one began.
    written: bool,
    /// A timer is set to poll for `written`.
    written_timer: bool,
    /// When the latest poll began.
    last_poll: Option<Instant>,
    _guard: ExitGuard,
}

/// The town's events file was written to: read it now (see [`crate::watch`]).
#[derive(Message)]
#[rtype(result = "()")]
struct EventsWritten;

/// What a retiring agent's latest measurements say.
#[derive(Debug, PartialEq)]
pub(crate) enum Retirement {
    /// Its process is gone and left no orphans: stop watching it.
    Done,
    /// Still running, or orphans remain: keep watching.
    Wait,
    /// Nothing measured yet: wait a little, then retire it anyway.
    Unknown,
}

/// The agents watched for the town: the sessions it manages.
fn watched_sessions(monitors: &[MonitorSpec]) -> Vec<String> {
    monitors
        .iter()
        .filter(|m| m.kind() == MonitorKind::Agent && m.managed_by() == Some(MANAGED_BY))
        .map(|m| m.id().to_string())
        .collect()
}

/// The latest reading of an agent's metric in a snapshot.
fn latest<'a>(latest: &'a [HealthMetric], session: &str, metric: &str) -> Option<&'a HealthMetric> {
    latest.iter().find(|m| {
        m.resource_type == ResourceType::Agent
            && m.resource_id == session
            && m.metric_name == metric
    })
}

/// Decides whether an agent can be retired from its latest metrics.
pub(crate) fn retirement(session: &str, snapshot: &[HealthMetric]) -> Retirement {
    let value = |metric: &str| latest(snapshot, session, metric).map(|m| m.value);
    match (
        value(catalog::AGENT_ACTIVE),
        value(catalog::AGENT_ORPHAN_COUNT),
    ) {
        (None, _) => Retirement::Unknown,
        (Some(active), orphans) if active < 0.5 && orphans.unwrap_or(0.0) < 0.5 => Retirement::Done,
        _ => Retirement::Wait,
    }
}

/// What one poll of the town found, computed off the event loop.
struct PollResult {
    actions: Vec<Action>,
    /// When it was time to read the layout again: the monitors the town wants, and every
    /// session the layout knows.
    rescan: Option<(Vec<MonitorSpec>, HashSet<String>)>,
    /// The town's own measurements, when they were due.
    measurements: Vec<Measurement>,
}

/// Whether `daemon/daemon.pid` names a running process (first line) that started before the
/// file was written (a later process with the same pid is a reuse); `None` without the file.
pub fn town_daemon_alive(town: &Town) -> Option<bool> {
    let path = town.daemon_pid_file();
    let text = read_small_file(&path).ok()??;
    let written = std::fs::metadata(&path).ok()?.modified().ok()?;
    let written = written
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Some(false);
    };
    let alive = process::read_stat(pid)
        .filter(process::ProcStat::is_running)
        .is_some_and(|stat| process::Machine::current().start_epoch(&stat) <= written + 2.0);
    Some(alive)
}

/// The pids that own agent processes in the town: every pane of its tmux server, and the live
/// processes of its pid files. `None` when tmux does not answer (a scan would then count every
/// agent as an orphan).
fn owned_roots(town: &Town) -> Option<Vec<u32>> {
    let mut roots = tmux_pane_pids(Some(town.tmux_socket()))?;
    let pids = std::fs::read_dir(town.root.join(".runtime/pids"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| pid_file_is_live(p));
    for path in pids {
        if let Ok(Some(text)) = read_small_file(&path)
            && let Ok(root) = crate::collect::agent::parse_pid_file(&text)
        {
            roots.push(root.pid);
        }
    }
    Some(roots)
}

/// The town's own readings: its daemon, and the orphans of the last scan (made again when
/// `orphan_scan_every` has passed). Processes working in a retiring agent's worktree are that
/// agent's orphans, not the town's.
fn measure_town(
    reader: &mut Reader,
    town: &Town,
    settings: &GastownSettings,
    retiring_worktrees: &[PathBuf],
    town_stopped: bool,
) -> Vec<Measurement> {
    let due = reader
        .last_orphan_scan
        .is_none_or(|t| t.elapsed() >= settings.orphan_scan_every);
    if due {
        reader.last_orphan_scan = Some(Instant::now());
        match owned_roots(town) {
            Some(roots) => {
                let started = Instant::now();
                let scan = orphans::scan(
                    &town.root,
                    &roots,
                    retiring_worktrees,
                    settings.orphan_min_age,
                );
                tracing::debug!(
                    orphans = scan.count,
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "town orphan scan"
                );
                let changed = reader
                    .orphans
                    .as_ref()
                    .is_none_or(|o| o.count != scan.count);
                if scan.count > 0 && changed {
                    let shown: Vec<String> = scan
                        .examples
                        .iter()
                        .map(|o| format!("{} {} ({:.0} MB)", o.pid, o.comm, o.memory_mb))
                        .collect();
                    tracing::warn!(
                        count = scan.count,
                        memory_mb = scan.memory_mb,
                        "agent processes in the town that no session owns: {}",
                        shown.join(", ")
                    );
                }
                reader.orphans = Some(scan);
            }
            None => tracing::warn!("tmux did not answer: town orphan scan skipped"),
        }
    }
    let reading = |metric: &'static str, value: f64, unit: &'static str| {
        Measurement::now(ResourceType::Agent, TOWN_RESOURCE, metric, value, unit)
    };
    let mut out = Vec::with_capacity(3);
    // While `gt down` runs, its daemon may die a moment before its pid file goes.
    let file = town_daemon_alive(town).filter(|alive| *alive || !town.shutting_down());
    let (alive, seen) = daemon_reading(file, reader.daemon, town_stopped);
    if seen == DaemonSeen::Dead && reader.daemon != DaemonSeen::Dead {
        tracing::error!(
            pid_file = %town.daemon_pid_file().display(),
            "Gas Town's daemon died: nothing restarts the town's sessions or detects their crashes"
        );
    }
    reader.daemon = seen;
    if let Some(alive) = alive {
        out.push(reading(
            catalog::TOWN_DAEMON_ALIVE,
            crate::collect::flag(alive),
            catalog::UNIT_BOOL,
        ));
    }
    if let Some(scan) = &reader.orphans {
        out.push(reading(
            catalog::TOWN_ORPHAN_COUNT,
            scan.count as f64,
            catalog::UNIT_COUNT,
        ));
        out.push(reading(
            catalog::TOWN_ORPHAN_MEMORY_MB,
            scan.memory_mb,
            catalog::UNIT_MB,
        ));
    }
    out
}

/// Reads new events, the layout every [`RESCAN_EVERY`] and the town's own state every
/// `interval`. The file, tmux and `/proc` work happens with only the reader's lock held; the
/// decisions' lock, which the event loop also takes, is held just to apply what was read.
fn poll_town(
    state: &TownState,
    town: &Town,
    settings: &GastownSettings,
    interval: Duration,
) -> PollResult {
    let now = Utc::now();
    let mut reader = state.reader();
    let facts: Vec<TownFact> = reader
        .follower
        .poll()
        .iter()
        .inspect(|e| tracing::debug!(kind = %e.kind, actor = ?e.actor, "town event"))
        .map(|e| read_event(town, e))
        .collect();
    let shutting_down = town.shutting_down();
    let self_terminate = town.polecats_self_terminate();
    let (actions, retiring_worktrees, town_stopped) = {
        let mut d = state.decisions();
        let halted = facts.iter().any(|f| matches!(f, TownFact::Halted(_)));
        let mut actions = Vec::new();
        for fact in facts {
            actions.extend(d.lifecycle.apply(fact, now));
        }
        d.lifecycle.on_tick(now, shutting_down, self_terminate);
        for action in &actions {
            match action {
                Action::Watch(agent) => {
                    d.retiring.remove(&agent.session);
                }
                Action::Retire(session, _) => {
                    d.retiring
                        .entry(session.clone())
                        .or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
        if halted || shutting_down {
            d.town_stopped = true;
        }
        let worktrees: Vec<PathBuf> = d
            .retiring
            .keys()
            .filter_map(|s| d.worktrees.get(s).cloned())
            .collect();
        (actions, worktrees, d.town_stopped)
    };
    let measurements = if reader.last_measure.is_none_or(|t| t.elapsed() >= interval) {
        reader.last_measure = Some(Instant::now());
        let readings = measure_town(
            &mut reader,
            town,
            settings,
            &retiring_worktrees,
            town_stopped,
        );
        if reader.daemon == DaemonSeen::Alive {
            state.decisions().town_stopped = false;
        }
        readings
    } else {
        Vec::new()
    };
    let due = reader
        .last_rescan
        .is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
    if !due {
        return PollResult {
            actions,
            rescan: None,
            measurements,
        };
    }
    reader.last_rescan = Some(Instant::now());
    drop(reader);
    // tmux not answering: skip this rescan rather than guess which sessions run.
    let rescan = town.tmux_sessions().and_then(|sessions| {
        let known = town
            .agents()
            .map(|agents| agents.into_iter().map(|a| a.session).collect())
            .unwrap_or_default();
        town.wanted_monitors(&sessions)
            .map_err(|e| tracing::warn!("cannot read the town's layout: {e:#}"))
            .ok()
            .map(|wanted| (wanted, known))
    });
    PollResult {
        actions,
        rescan,
        measurements,
    }
}

impl TownWatcher {
    /// A watcher over shared state that outlives it; the town is measured every `interval`.
    pub fn new(
        settings: GastownSettings,
        interval: Duration,
        state: SharedTownState,
        supervisor: SupervisorHandle,
        analyzer: AnalyzerHandle,
        guard: ExitGuard,
    ) -> Self {
        TownWatcher {
            town: Town::of(&settings),
            settings,
            interval,
            state,
            supervisor,
            analyzer,
            busy: false,
            watches: None,
            written: false,
            written_timer: false,
            last_poll: None,
            _guard: guard,
        }
    }

    /// With `events`, a line written to the events file is read at once, not at the next poll.
    pub fn with_events(mut self, events: bool) -> Self {
        self.watches = events.then(Watches::default);
        self
    }

    /// Polls for a write to the events file, at most once per [`TRIGGER_GAP`](super::collector::TRIGGER_GAP).
    fn poll_written(&mut self, ctx: &mut Context<Self>) {
        if !self.written || self.busy || self.written_timer {
            return;
        }
        let wait = trigger_wait(self.last_poll, Instant::now());
        if !wait.is_zero() {
            self.written_timer = true;
            ctx.run_later(wait, |act, ctx| {
                act.written_timer = false;
                act.poll_written(ctx);
            });
            return;
        }
        self.poll(ctx);
    }

    /// Reads new events (and now and then the layout) off the event loop, then acts.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        self.written = false;
        self.last_poll = Some(Instant::now());
        let state = self.state.clone();
        let town = self.town.clone();
        let settings = self.settings.clone();
        let interval = self.interval;
        let mut watches = self.watches.take();
        let work = actix_rt::task::spawn_blocking(move || {
            let result = poll_town(&state, &town, &settings, interval);
            if let Some(watches) = watches.as_mut() {
                watches.want(&Wanted {
                    process: None,
                    paths: vec![PathWatch::Appended(town.events_file())],
                });
            }
            (result, watches)
        });
        ctx.spawn(work.into_actor(self).map(|outcome, act, ctx| {
            act.busy = false;
            let Ok((result, watches)) = outcome else {
                return;
            };
            act.watches = watches;
            act.poll_written(ctx);
            for action in result.actions {
                act.act(action);
            }
            act.analyzer.send_metrics(SOURCE, result.measurements);
            if let Some((wanted, known)) = result.rescan {
                act.rescan(wanted, known, ctx);
            }
            act.check(ctx);
        }));
    }

    fn add(&self, spec: MonitorSpec) {
        self.supervisor.add_owned_monitor(spec);
    }

    fn remove(&self, kind: MonitorKind, id: &str) {
        self.supervisor
            .remove_owned_monitor(kind, id.to_string(), MANAGED_BY.into());
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Watch(agent) => {
                tracing::info!(session = %agent.session, rig = %agent.rig, role = agent.role.as_str(), "town session started: watching it");
                for spec in agent.monitors(&self.town, true) {
                    self.add(spec);
                }
            }
            Action::Retire(session, ending) => {
                // The worktree stays watched: an idle polecat keeps it for its next task, and
                // the layout says when it goes. The agent goes after its last orphan check.
                tracing::info!(%session, ending = ending.as_str(), "town session ended: retiring it after a last orphan check");
            }
            Action::Raise(key, condition) => {
                tracing::warn!(resource_id = %key.resource_id, alert_type = %key.alert_type, "{}", condition.message);
                self.analyzer.set_condition(key, Some(condition));
            }
            Action::Clear(key) => self.analyzer.set_condition(key, None),
        }
    }

    /// Brings the town's monitors in line with the layout read off the event loop: new
    /// worktrees and running sessions are added; worktrees and sessions gone are removed,
    /// except agents waiting for their orphan check, just started, whose death is being
    /// confirmed, or whose crash Gas Town reported (while the layout still has them). Operators'
    /// monitors are never touched.
    fn rescan(&self, wanted: Vec<MonitorSpec>, known: HashSet<String>, ctx: &mut Context<Self>) {
        let supervisor = self.supervisor.clone();
        let get = async move { supervisor.live().await.ok() };
        ctx.spawn(get.into_actor(self).map(move |live, act, _| {
            let Some(live) = live else { return };
            let now = Utc::now();
            let (add, remove) = reconcile(&live.monitors, &wanted);
            tracing::debug!(
                wanted = wanted.len(),
                add = add.len(),
                remove = remove.len(),
                "town layout read again"
            );
            let mut d = act.state.decisions();
            for spec in add {
                // A session that just ended is not started again by its leftover tmux pane.
                let ended = d.lifecycle.recently_ended(spec.id(), now);
                if !(spec.kind() == MonitorKind::Agent && ended) {
                    act.add(spec);
                }
            }
            for spec in remove {
                let id = spec.id();
                let is_agent = spec.kind() == MonitorKind::Agent;
                let keep = is_agent
                    && (d.retiring.contains_key(id)
                        || (d.lifecycle.keep_watching(id) && known.contains(id)));
                if keep {
                    continue;
                }
                if is_agent {
                    d.lifecycle.forget(id);
                }
                act.remove(spec.kind(), id);
            }
        }));
    }

    /// Every few seconds: what the watched sessions' processes say (a death being confirmed,
    /// a return), agents to retire, and death alerts past their hold.
    fn check(&self, ctx: &mut Context<Self>) {
        {
            let mut d = self.state.decisions();
            if d.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
                return;
            }
            d.last_check = Some(Instant::now());
        }
        let analyzer = self.analyzer.clone();
        let supervisor = self.supervisor.clone();
        let both = async move {
            let live = supervisor.live().await.ok()?;
            // Only what the check reads, read in place on the analyzer: a snapshot would copy
            // every latest value of the daemon every few seconds.
            let watched = watched_sessions(&live.monitors);
            let sessions = watched.clone();
            let snapshot = analyzer
                .inspect(move |core| {
                    let Some(core) = core else {
                        return Snapshot::default();
                    };
                    Snapshot {
                        latest: sessions
                            .iter()
                            .flat_map(|s| core.latest_of(ResourceType::Agent, s))
                            .cloned()
                            .collect(),
                        active_alerts: core
                            .active_alerts()
                            .filter(|a| a.resource_type == ResourceType::Agent)
                            .cloned()
                            .collect(),
                    }
                })
                .await?;
            Some((live, watched, snapshot))
        };
        ctx.spawn(both.into_actor(self).map(move |both, act, _| {
            let Some((live, watched, snapshot)) = both else { return };
            let now = Utc::now();
            let mut actions = Vec::new();
            {
                let mut d = act.state.decisions();
                for session in &watched {
                    if let Some(reading) = latest(&snapshot.latest, session, catalog::AGENT_ACTIVE)
                    {
                        let at: DateTime<Utc> = reading.timestamp;
                        actions.extend(d.lifecycle.observe(session, reading.value >= 0.5, at, now));
                    }
                }
                for action in &actions {
                    if let Action::Retire(session, _) = action {
                        d.retiring
                            .entry(session.clone())
                            .or_insert_with(Instant::now);
                    }
                }
                d.worktrees = live
                    .monitors
                    .iter()
                    .filter_map(|m| match m {
                        MonitorSpec::Agent { id, options }
                            if options.managed_by.as_deref() == Some(MANAGED_BY) =>
                        {
                            Some((id.clone(), options.workspace.clone()?))
                        }
                        _ => None,
                    })
                    .collect();
            }
            for action in actions {
                act.act(action);
            }
            // Alerts about sessions nobody watches report an event: they resolve after a while.
            // A watched session's crash lasts while it stays dead.
            for alert in &snapshot.active_alerts {
                if alert.resource_type == ResourceType::Agent
                    && is_event_alert(&alert.alert_type)
                    && !watched.contains(&alert.resource_id)
                    && now - alert.timestamp >= EVENT_ALERT_HOLD
                {
                    act.analyzer.set_condition(alert.key(), None);
                }
            }
            let retiring: Vec<(String, Instant)> = act
                .state
                .decisions()
                .retiring
                .iter()
                .map(|(s, t)| (s.clone(), *t))
                .collect();
            for (session, since) in retiring {
                let done = !watched.contains(&session)
                    || match retirement(&session, &snapshot.latest) {
                        Retirement::Done => true,
                        Retirement::Wait => false,
                        // Never measured (it ended before its first cycle): retire it after a while.
                        Retirement::Unknown => since.elapsed() >= UNMEASURED_WAIT,
                    };
                if !done {
                    continue;
                }
                let mut d = act.state.decisions();
                // Still retiring? A new spawn may have taken it back meanwhile.
                if d.retiring.remove(&session).is_none() {
                    continue;
                }
                d.lifecycle.forget(&session);
                drop(d);
                if watched.contains(&session) {
                    tracing::info!(%session, "town session gone without orphans: no longer watched");
                    act.remove(MonitorKind::Agent, &session);
                }
            }
        }));
    }
}

impl Actor for TownWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(watches) = self.watches.as_mut() {
            // Weak: the watches (which the watcher holds) must not keep the watcher alive.
            let me = ctx.address().downgrade();
            watches.attach(Arc::new(move |_| {
                if let Some(me) = me.upgrade() {
                    me.do_send(EventsWritten);
                }
            }));
        }
        super::cadence::run_on_beat(ctx, POLL_EVERY, Duration::ZERO, |act, ctx| act.poll(ctx));
    }
}

impl Handler<EventsWritten> for TownWatcher {
    type Result = ();
    fn handle(&mut self, _: EventsWritten, ctx: &mut Self::Context) {
        self.written = true;
        self.poll_written(ctx);
    }
}

impl Handler<StopChild> for TownWatcher {
    type Result = ();
    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(id: &str, name: &'static str, value: f64) -> HealthMetric {
        HealthMetric::from_measurement(
            Measurement::now(ResourceType::Agent, id, name, value, ""),
            None,
        )
    }

    #[test]
    fn an_agent_retires_once_gone_without_orphans() {
        let gone = [
            metric("s", "agent_active", 0.0),
            metric("s", "agent_orphan_count", 0.0),
        ];
        assert_eq!(retirement("s", &gone), Retirement::Done);
        let orphans = [
            metric("s", "agent_active", 0.0),
            metric("s", "agent_orphan_count", 3.0),
        ];
        assert_eq!(retirement("s", &orphans), Retirement::Wait);
        let alive = [metric("s", "agent_active", 1.0)];
        assert_eq!(retirement("s", &alive), Retirement::Wait);
        assert_eq!(retirement("other", &gone), Retirement::Unknown);
    }

    #[test]
    fn a_dead_daemon_stays_dead_when_gas_town_removes_its_stale_pid_file() {
        use DaemonSeen::*;
        assert_eq!(daemon_reading(None, Unknown, false), (None, Unknown));
        assert_eq!(
            daemon_reading(Some(true), Unknown, false),
            (Some(true), Alive)
        );
        // A clean stop removes the file: nothing to say.
        assert_eq!(daemon_reading(None, Alive, false), (None, Unknown));
        assert_eq!(
            daemon_reading(Some(false), Alive, false),
            (Some(false), Dead)
        );
        // `gt status` ran IsRunning, which deleted the stale file: still dead.
        assert_eq!(daemon_reading(None, Dead, false), (Some(false), Dead));
        // Until it runs again, or `gt down` stopped the town on purpose.
        assert_eq!(daemon_reading(Some(true), Dead, false), (Some(true), Alive));
        assert_eq!(daemon_reading(None, Dead, true), (None, Unknown));
        assert_eq!(daemon_reading(Some(false), Alive, true), (None, Unknown));
    }

    #[test]
    fn the_town_daemon_is_alive_only_behind_a_fresh_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let town = Town::new(dir.path());
        assert_eq!(town_daemon_alive(&town), None, "no file");
        std::fs::create_dir_all(dir.path().join("daemon")).unwrap();
        let pid_file = town.daemon_pid_file();
        // Gas Town's format: "<pid>\n<nonce>", no trailing newline.
        std::fs::write(
            &pid_file,
            format!("{}\n9f2c4e1a7b3d5f60", std::process::id()),
        )
        .unwrap();
        assert_eq!(town_daemon_alive(&town), Some(true));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&pid_file, format!("{dead}\n9f2c4e1a7b3d5f60")).unwrap();
        assert_eq!(town_daemon_alive(&town), Some(false), "a dead pid: it died");
        // A pid file older than its process: the pid was reused by something else.
        let mut later = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, format!("{}\n9f2c4e1a7b3d5f60", later.id())).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&pid_file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(town_daemon_alive(&town), Some(false));
        later.kill().unwrap();
        later.wait().unwrap();
        std::fs::write(&pid_file, "garbage").unwrap();
        assert_eq!(town_daemon_alive(&town), Some(false));
    }
}
