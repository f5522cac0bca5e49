//! The Gas Town actor: follows the town's events file, starts and retires monitors as sessions
//! come and go, decides which deaths are incidents, picks up sessions that appear in the
//! layout, and measures the town itself (its daemon, its orphaned agent processes).
//!
//! File, tmux and `/proc` work runs off the event loop (`spawn_blocking`), one at a time.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use super::analyzer::AnalyzerHandle;
use super::supervisor::{AddOwnedMonitor, GetLive, RemoveOwnedMonitor, Supervisor};
use super::{ExitGuard, StopChild};
use crate::catalog;
use crate::collect::agent::{pid_file_is_live, read_small_file, tmux_pane_pids};
use crate::collect::process;
use crate::config::GastownSettings;
use crate::gastown::events::EventFollower;
use crate::gastown::layout::{MANAGED_BY, Town, reconcile};
use crate::gastown::lifecycle::{
    Action, EVENT_ALERT_HOLD, Lifecycle, TOWN_RESOURCE, is_event_alert,
};
use crate::gastown::orphans::{self, OrphanScan};
use crate::model::{HealthMetric, Measurement, MonitorKind, MonitorSpec, ResourceType};

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

/// What must survive a restart of the actor: where it is in the events file, what it remembers
/// of sessions, and which agents wait for their last orphan check (and since when).
pub struct TownState {
    follower: EventFollower,
    lifecycle: Lifecycle,
    retiring: BTreeMap<String, Instant>,
    /// Sessions an event started, and when: a rescan does not remove them before their grace.
    starting: BTreeMap<String, Instant>,
    last_rescan: Option<Instant>,
    last_check: Option<Instant>,
    last_measure: Option<Instant>,
    last_orphan_scan: Option<Instant>,
    orphans: Option<OrphanScan>,
}

impl TownState {
    /// The state for following `town` from the current end of its events file.
    pub fn new(town: &Town, settings: &GastownSettings) -> Self {
        TownState {
            follower: EventFollower::from_end(&town.events_file(), Utc::now()),
            lifecycle: Lifecycle::new(town.clone(), settings.death_confirm),
            retiring: BTreeMap::new(),
            starting: BTreeMap::new(),
            last_rescan: None,
            last_check: None,
            last_measure: None,
            last_orphan_scan: None,
            orphans: None,
        }
    }
}

/// Shared, restart-proof town state.
pub type SharedTownState = Arc<Mutex<TownState>>;

fn lock(state: &SharedTownState) -> std::sync::MutexGuard<'_, TownState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The actor.
pub struct TownWatcher {
    town: Town,
    settings: GastownSettings,
    /// The daemon's interval: the town's own measurements are taken as often.
    interval: Duration,
    state: SharedTownState,
    supervisor: Addr<Supervisor>,
    analyzer: AnalyzerHandle,
    /// A poll is running (it runs off the event loop).
    busy: bool,
    _guard: ExitGuard,
}

/// What a retiring agent's latest measurements say.
#[derive(Debug, PartialEq)]
pub enum Retirement {
    /// Its process is gone and left no orphans: stop watching it.
    Done,
    /// Still running, or orphans remain: keep watching.
    Wait,
    /// Nothing measured yet: wait a little, then retire it anyway.
    Unknown,
}

/// The latest value of an agent's metric in a snapshot.
fn latest_value(latest: &[HealthMetric], session: &str, metric: &str) -> Option<f64> {
    latest
        .iter()
        .find(|m| {
            m.resource_type == ResourceType::Agent
                && m.resource_id == session
                && m.metric_name == metric
        })
        .map(|m| m.value)
}

/// Decides whether an agent can be retired from its latest metrics.
pub fn retirement(session: &str, latest: &[HealthMetric]) -> Retirement {
    let value = |metric: &str| latest_value(latest, session, metric);
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

/// `town_daemon_alive`, when `daemon/daemon.pid` exists: its pid (first line) runs and started
/// before the file was written (a later process with the same pid is a reuse). Gas Town removes
/// the file on a clean stop, so a file naming a dead process means its daemon died.
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
    let mut roots = tmux_pane_pids(Some(&town.tmux_socket()))?;
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
/// `orphan_scan_every` has passed).
fn measure_town(st: &mut TownState, town: &Town, settings: &GastownSettings) -> Vec<Measurement> {
    let due = st
        .last_orphan_scan
        .is_none_or(|t| t.elapsed() >= settings.orphan_scan_every);
    if due {
        st.last_orphan_scan = Some(Instant::now());
        match owned_roots(town) {
            Some(roots) => {
                let started = Instant::now();
                let scan = orphans::scan(&town.root, &roots, settings.orphan_min_age);
                tracing::debug!(
                    orphans = scan.count,
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "town orphan scan"
                );
                if scan.count > 0 && st.orphans.as_ref().is_none_or(|o| o.count != scan.count) {
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
                st.orphans = Some(scan);
            }
            None => tracing::warn!("tmux did not answer: town orphan scan skipped"),
        }
    }
    let reading = |metric: &'static str, value: f64, unit: &'static str| {
        Measurement::now(ResourceType::Agent, TOWN_RESOURCE, metric, value, unit)
    };
    let mut out = Vec::with_capacity(3);
    // While `gt down` runs, its daemon may die a moment before its pid file goes.
    let alive = town_daemon_alive(town).filter(|alive| *alive || !town.shutting_down());
    if let Some(alive) = alive {
        out.push(reading(
            catalog::TOWN_DAEMON_ALIVE,
            crate::collect::flag(alive),
            catalog::UNIT_BOOL,
        ));
    }
    if let Some(scan) = &st.orphans {
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
/// `interval` (blocking file, tmux and `/proc` work).
fn poll_town(
    state: &SharedTownState,
    town: &Town,
    settings: &GastownSettings,
    interval: Duration,
) -> PollResult {
    let now = Utc::now();
    let shutting_down = town.shutting_down();
    let mut st = lock(state);
    let mut actions = Vec::new();
    for event in st.follower.poll() {
        tracing::debug!(kind = %event.kind, actor = ?event.actor, "town event");
        actions.extend(st.lifecycle.on_event(&event, now));
    }
    let self_terminate = town.polecats_self_terminate();
    st.lifecycle.on_tick(now, shutting_down, self_terminate);
    let grace = settings.spawn_grace;
    st.starting.retain(|_, at| at.elapsed() < grace);
    for action in &actions {
        match action {
            Action::Watch(agent) => {
                st.retiring.remove(&agent.session);
                st.starting.insert(agent.session.clone(), Instant::now());
            }
            Action::Retire(session, _) => {
                st.starting.remove(session);
                st.retiring
                    .entry(session.clone())
                    .or_insert_with(Instant::now);
            }
            _ => {}
        }
    }
    let measurements = if st.last_measure.is_none_or(|t| t.elapsed() >= interval) {
        st.last_measure = Some(Instant::now());
        measure_town(&mut st, town, settings)
    } else {
        Vec::new()
    };
    let due = st.last_rescan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
    if !due {
        return PollResult {
            actions,
            rescan: None,
            measurements,
        };
    }
    st.last_rescan = Some(Instant::now());
    drop(st);
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
        supervisor: Addr<Supervisor>,
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
            _guard: guard,
        }
    }

    /// Reads new events (and now and then the layout) off the event loop, then acts.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let state = self.state.clone();
        let town = self.town.clone();
        let settings = self.settings.clone();
        let interval = self.interval;
        let work =
            actix_rt::task::spawn_blocking(move || poll_town(&state, &town, &settings, interval));
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            let Ok(result) = result else { return };
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
        self.supervisor.do_send(AddOwnedMonitor(spec));
    }

    fn remove(&self, kind: MonitorKind, id: &str) {
        self.supervisor.do_send(RemoveOwnedMonitor {
            kind,
            id: id.to_string(),
            owner: MANAGED_BY.into(),
        });
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
    /// except agents waiting for their orphan check, sessions still starting, and sessions whose
    /// death is an open incident (while the layout still has them). Operators' monitors are
    /// never touched.
    fn rescan(&self, wanted: Vec<MonitorSpec>, known: HashSet<String>, ctx: &mut Context<Self>) {
        let supervisor = self.supervisor.clone();
        let get = async move { supervisor.send(GetLive).await.ok() };
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
            let mut st = lock(&act.state);
            for spec in add {
                // A session that just ended is not started again by its leftover tmux pane.
                let ended = st.lifecycle.recently_ended(spec.id(), now);
                if !(spec.kind() == MonitorKind::Agent && ended) {
                    act.add(spec);
                }
            }
            for spec in remove {
                let id = spec.id();
                let keep = spec.kind() == MonitorKind::Agent
                    && (st.retiring.contains_key(id)
                        || st.starting.contains_key(id)
                        || (st.lifecycle.incident(id) && known.contains(id)));
                if !keep {
                    if spec.kind() == MonitorKind::Agent {
                        st.lifecycle.forget(id);
                    }
                    act.remove(spec.kind(), id);
                }
            }
        }));
    }

    /// Every few seconds: what the watched sessions' processes say (a death waiting for its
    /// reason, a crash, a return), agents to retire, and death alerts past their hold.
    fn check(&self, ctx: &mut Context<Self>) {
        {
            let mut st = lock(&self.state);
            if st.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
                return;
            }
            st.last_check = Some(Instant::now());
        }
        let analyzer = self.analyzer.clone();
        let supervisor = self.supervisor.clone();
        let both = async move {
            let live = supervisor.send(GetLive).await.ok()?;
            let snapshot = analyzer.snapshot().await?;
            Some((live, snapshot))
        };
        ctx.spawn(both.into_actor(self).map(move |both, act, _| {
            let Some((live, snapshot)) = both else { return };
            let now = Utc::now();
            let watched: Vec<String> = live
                .monitors
                .iter()
                .filter(|m| m.kind() == MonitorKind::Agent && m.managed_by() == Some(MANAGED_BY))
                .map(|m| m.id().to_string())
                .collect();
            let mut actions = Vec::new();
            {
                let mut st = lock(&act.state);
                for session in &watched {
                    if let Some(active) =
                        latest_value(&snapshot.latest, session, catalog::AGENT_ACTIVE)
                    {
                        actions.extend(st.lifecycle.observe(session, active >= 0.5, now));
                    }
                }
                for action in &actions {
                    if let Action::Retire(session, _) = action {
                        st.retiring
                            .entry(session.clone())
                            .or_insert_with(Instant::now);
                    }
                }
            }
            for action in actions {
                act.act(action);
            }
            // Alerts about sessions nobody watches report an event: they resolve after a while.
            // A watched session's death lasts while it stays dead.
            for alert in &snapshot.active_alerts {
                if alert.resource_type == ResourceType::Agent
                    && is_event_alert(&alert.alert_type)
                    && !watched.contains(&alert.resource_id)
                    && now - alert.timestamp >= EVENT_ALERT_HOLD
                {
                    act.analyzer.set_condition(alert.key(), None);
                }
            }
            let retiring: Vec<(String, Instant)> = lock(&act.state)
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
                let mut st = lock(&act.state);
                // Still retiring? A new spawn may have taken it back meanwhile.
                if st.retiring.remove(&session).is_none() {
                    continue;
                }
                st.lifecycle.forget(&session);
                drop(st);
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
        super::cadence::run_on_beat(ctx, POLL_EVERY, Duration::ZERO, |act, ctx| act.poll(ctx));
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
    fn the_town_daemon_is_alive_only_behind_a_fresh_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let town = Town::new(dir.path());
        assert_eq!(town_daemon_alive(&town), None, "no file: stopped cleanly");
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
