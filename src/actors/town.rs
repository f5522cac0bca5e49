//! The Gas Town actor: follows the town's events file, starts and retires monitors as agents
//! come and go, raises death alerts, and picks up agents that appear in the layout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use super::analyzer::AnalyzerHandle;
use super::supervisor::{AddOwnedMonitor, GetLive, RemoveOwnedMonitor, Supervisor};
use super::writer::WriterHandle;
use super::{ExitGuard, StopChild};
use crate::catalog;
use crate::config::GastownSettings;
use crate::gastown::events::EventFollower;
use crate::gastown::layout::{MANAGED_BY, Town, reconcile};
use crate::gastown::lifecycle::{Action, EVENT_ALERT_HOLD, Lifecycle, is_event_alert};
use crate::model::{HealthMetric, MonitorKind, MonitorSpec, ResourceType, Silence};
use crate::store::write::WriteOp;

/// How often the events file is read.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the layout is read again for agents no event announced.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// How long a retiring agent's expected silence (no process, no heartbeat) is kept from sinks.
const RETIRE_QUIET: chrono::Duration = chrono::Duration::minutes(10);
/// How often retiring agents and aging death alerts are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A retiring agent never measured is retired after this long.
const UNMEASURED_WAIT: Duration = Duration::from_secs(120);

/// What must survive a restart of the actor: where it is in the events file, what it remembers
/// of endings, and which agents wait for their last orphan check (and since when).
pub struct TownState {
    follower: EventFollower,
    lifecycle: Lifecycle,
    retiring: BTreeMap<String, Instant>,
    last_rescan: Option<Instant>,
    last_check: Option<Instant>,
}

impl TownState {
    /// The state for following `town` from the current end of its events file.
    pub fn new(town: &Town) -> Self {
        TownState {
            follower: EventFollower::from_end(&town.events_file()),
            lifecycle: Lifecycle::new(town.clone()),
            retiring: BTreeMap::new(),
            last_rescan: None,
            last_check: None,
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
    state: SharedTownState,
    supervisor: Addr<Supervisor>,
    analyzer: AnalyzerHandle,
    writer: WriterHandle,
    /// A poll, rescan or check is running (they run off the event loop, one at a time).
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

/// Decides whether an agent can be retired from its latest metrics.
pub fn retirement(session: &str, latest: &[HealthMetric]) -> Retirement {
    let value = |metric: &str| {
        latest
            .iter()
            .find(|m| {
                m.resource_type == ResourceType::Agent
                    && m.resource_id == session
                    && m.metric_name == metric
            })
            .map(|m| m.value)
    };
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
    /// The town's wanted monitors, when it was time to read the layout again.
    rescan: Option<Vec<MonitorSpec>>,
}

/// Reads new events and, every [`RESCAN_EVERY`], the layout (blocking file and tmux work).
fn poll_town(state: &SharedTownState, town: &Town) -> PollResult {
    let now = Utc::now();
    let mut st = lock(state);
    let mut actions = Vec::new();
    for event in st.follower.poll() {
        tracing::debug!(kind = %event.kind, actor = ?event.actor, "town event");
        actions.extend(st.lifecycle.on_event(&event, now));
    }
    st.lifecycle.on_tick(now);
    for action in &actions {
        match action {
            Action::Watch(agent) => {
                st.retiring.remove(&agent.session);
            }
            Action::Retire(session) => {
                st.retiring
                    .entry(session.clone())
                    .or_insert_with(Instant::now);
            }
            _ => {}
        }
    }
    let due = st.last_rescan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
    if !due {
        return PollResult {
            actions,
            rescan: None,
        };
    }
    st.last_rescan = Some(Instant::now());
    drop(st);
    // tmux not answering: skip this rescan rather than guess which sessions run.
    let rescan = crate::collect::agent::tmux_sessions().and_then(|sessions| {
        town.wanted_monitors(&sessions)
            .map_err(|e| tracing::warn!("cannot read the town's layout: {e:#}"))
            .ok()
    });
    PollResult { actions, rescan }
}

impl TownWatcher {
    /// A watcher over shared state that outlives it.
    pub fn new(
        settings: GastownSettings,
        state: SharedTownState,
        supervisor: Addr<Supervisor>,
        analyzer: AnalyzerHandle,
        writer: WriterHandle,
        guard: ExitGuard,
    ) -> Self {
        TownWatcher {
            town: Town::new(&settings.root),
            settings,
            state,
            supervisor,
            analyzer,
            writer,
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
        let work = actix_rt::task::spawn_blocking(move || poll_town(&state, &town));
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            let Ok(result) = result else { return };
            for action in result.actions {
                act.act(action);
            }
            if let Some(wanted) = result.rescan {
                act.rescan(wanted, ctx);
            }
            act.check_retiring(ctx);
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
        let now = Utc::now();
        match action {
            Action::Watch(agent) => {
                tracing::info!(session = %agent.session, rig = %agent.rig, "town agent started: watching it");
                // A fresh session may not have its process yet: its first notice waits.
                let grace = chrono::Duration::from_std(self.settings.spawn_grace)
                    .unwrap_or(chrono::Duration::minutes(2));
                self.quiet(
                    &agent.session,
                    &[catalog::AGENT_ACTIVE],
                    now + grace,
                    "starting",
                );
                for spec in agent.monitors(&self.town, true) {
                    self.add(spec);
                }
            }
            Action::Retire(session) => {
                tracing::info!(%session, "town agent ended: retiring it after a last orphan check");
                self.quiet(
                    &session,
                    &[
                        catalog::AGENT_ACTIVE,
                        catalog::HEARTBEAT_AGE_SECONDS,
                        catalog::HEARTBEAT_STUCK,
                    ],
                    now + RETIRE_QUIET,
                    "retiring",
                );
                // A polecat's worktree goes with it (the witness may remove it any moment); a
                // crew clone stays. The agent stays until its last orphan check.
                if !self.is_crew(&session) {
                    self.remove(MonitorKind::Workspace, &session);
                }
            }
            Action::Raise(key, condition) => {
                tracing::warn!(resource_id = %key.resource_id, alert_type = %key.alert_type, "{}", condition.message);
                self.analyzer.set_condition(key, Some(condition));
            }
            Action::Clear(key) => self.analyzer.set_condition(key, None),
        }
    }

    fn is_crew(&self, session: &str) -> bool {
        session.contains("-crew-")
    }

    /// Keeps the expected alerts of a starting or ending agent from the sinks for a while
    /// (they are still recorded): planned lifecycle is not an incident. An alert that fires
    /// meanwhile and is still firing afterwards goes out then. A longer silence stays.
    fn quiet(&self, session: &str, metrics: &[&str], until: chrono::DateTime<Utc>, why: &str) {
        let now = Utc::now();
        let ops: Vec<WriteOp> = metrics
            .iter()
            .filter_map(|metric| {
                let silence = Silence {
                    resource_type: ResourceType::Agent,
                    resource_id: session.to_string(),
                    metric: Some(metric.to_string()),
                    created_at: now,
                    expires_at: until,
                    comment: Some(format!("gastown: {why}")),
                };
                self.analyzer
                    .memory()
                    .extend_silence(silence.clone())
                    .then_some(WriteOp::SilenceSaved(silence))
            })
            .collect();
        if !ops.is_empty() {
            self.analyzer.submit_in_order(&self.writer, ops);
        }
    }

    /// Brings the town's monitors in line with the layout read off the event loop: new
    /// worktrees and running sessions are added; worktrees and sessions gone are removed,
    /// except agents waiting for their orphan check. Operators' monitors are never touched.
    fn rescan(&self, wanted: Vec<MonitorSpec>, ctx: &mut Context<Self>) {
        let supervisor = self.supervisor.clone();
        let get = async move { supervisor.send(GetLive).await.ok() };
        ctx.spawn(get.into_actor(self).map(move |live, act, _| {
            let Some(live) = live else { return };
            let now = Utc::now();
            let (retiring, ended): (Vec<String>, Vec<String>) = {
                let st = lock(&act.state);
                let ended = wanted
                    .iter()
                    .map(|w| w.id().to_string())
                    .filter(|id| st.lifecycle.recently_ended(id, now))
                    .collect();
                (st.retiring.keys().cloned().collect(), ended)
            };
            let (add, remove) = reconcile(&live.monitors, &wanted);
            tracing::debug!(
                wanted = wanted.len(),
                add = add.len(),
                remove = remove.len(),
                "town layout read again"
            );
            for spec in add {
                // A session that just ended is not started again by its leftover tmux pane.
                if !(spec.kind() == MonitorKind::Agent && ended.iter().any(|e| e == spec.id())) {
                    act.add(spec);
                }
            }
            for spec in remove {
                if !retiring.iter().any(|r| r == spec.id()) {
                    act.remove(spec.kind(), spec.id());
                }
            }
        }));
    }

    /// Every few seconds: retires agents whose process is gone without orphans, and resolves
    /// death alerts past their hold (also ones restored after a restart).
    fn check_retiring(&self, ctx: &mut Context<Self>) {
        {
            let mut st = lock(&self.state);
            if st.last_check.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
                return;
            }
            st.last_check = Some(Instant::now());
        }
        let analyzer = self.analyzer.clone();
        let snapshot = async move { analyzer.snapshot().await };
        ctx.spawn(snapshot.into_actor(self).map(move |snapshot, act, _| {
            let Some(snapshot) = snapshot else { return };
            let now = Utc::now();
            for alert in &snapshot.active_alerts {
                if alert.resource_type == ResourceType::Agent
                    && is_event_alert(&alert.alert_type)
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
                let done = match retirement(&session, &snapshot.latest) {
                    Retirement::Done => true,
                    Retirement::Wait => false,
                    // Never measured (it ended before its first cycle): retire it after a while.
                    Retirement::Unknown => since.elapsed() >= UNMEASURED_WAIT,
                };
                if !done {
                    continue;
                }
                // Still retiring? A new spawn may have taken it back meanwhile.
                if lock(&act.state).retiring.remove(&session).is_none() {
                    continue;
                }
                tracing::info!(%session, "town agent gone without orphans: no longer watched");
                act.remove(MonitorKind::Agent, &session);
                if !act.is_crew(&session) {
                    act.remove(MonitorKind::Workspace, &session);
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
    use crate::model::Measurement;

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
}
