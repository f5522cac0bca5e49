//! The Gas Town actor: follows the town's events file, starts and retires monitors as agents
//! come and go, raises death alerts, and picks up agents that appear in the layout.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use super::analyzer::AnalyzerHandle;
use super::supervisor::{AddMonitor, RemoveMonitor, Supervisor};
use super::writer::WriterHandle;
use super::{ExitGuard, StopChild};
use crate::catalog;
use crate::config::GastownSettings;
use crate::gastown::events::EventFollower;
use crate::gastown::layout::{Role, Town};
use crate::gastown::lifecycle::{Action, Lifecycle};
use crate::model::{HealthMetric, MonitorKind, ResourceType, Silence};
use crate::store::write::WriteOp;

/// How often the events file is read.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the layout is read again for agents no event announced.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// How long a retiring agent's expected silence (no process, no heartbeat) is kept from sinks.
const RETIRE_QUIET: chrono::Duration = chrono::Duration::minutes(10);

/// What must survive a restart of the actor: where it is in the events file, what it remembers
/// of endings, and which agents wait for their last orphan check.
pub struct TownState {
    follower: EventFollower,
    lifecycle: Lifecycle,
    retiring: BTreeSet<String>,
    last_rescan: Option<Instant>,
}

impl TownState {
    /// The state for following `town` from the current end of its events file.
    pub fn new(town: &Town) -> Self {
        TownState {
            follower: EventFollower::from_end(&town.events_file()),
            lifecycle: Lifecycle::new(town.clone()),
            retiring: BTreeSet::new(),
            last_rescan: None,
        }
    }
}

/// Shared, restart-proof town state.
pub type SharedTownState = Arc<Mutex<TownState>>;

/// The actor.
pub struct TownWatcher {
    town: Town,
    settings: GastownSettings,
    state: SharedTownState,
    supervisor: Addr<Supervisor>,
    analyzer: AnalyzerHandle,
    writer: WriterHandle,
    _guard: ExitGuard,
}

/// What a retiring agent's latest measurements say.
#[derive(Debug, PartialEq)]
pub enum Retirement {
    /// Its process is gone and left no orphans: stop watching it.
    Done,
    /// Still running, or orphans remain: keep watching.
    Wait,
    /// Not monitored (no measurements at all): nothing to retire.
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
            _guard: guard,
        }
    }

    /// Reads new events and acts on them.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let now = Utc::now();
        let (actions, rescan) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut actions = Vec::new();
            for event in state.follower.poll() {
                tracing::debug!(kind = %event.kind, actor = ?event.actor, "town event");
                actions.extend(state.lifecycle.on_event(&event, now));
            }
            actions.extend(state.lifecycle.on_tick(now));
            for action in &actions {
                match action {
                    Action::Watch(agent) => {
                        state.retiring.remove(&agent.session);
                    }
                    Action::Retire(session) => {
                        state.retiring.insert(session.clone());
                    }
                    _ => {}
                }
            }
            let rescan = state
                .last_rescan
                .is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
            if rescan {
                state.last_rescan = Some(Instant::now());
            }
            (actions, rescan)
        };
        for action in actions {
            self.act(action, ctx);
        }
        if rescan {
            self.rescan();
        }
        self.check_retiring(ctx);
    }

    fn act(&mut self, action: Action, _ctx: &mut Context<Self>) {
        let now = Utc::now();
        match action {
            Action::Watch(agent) => {
                tracing::info!(session = %agent.session, rig = %agent.rig, "town agent started: watching it");
                // A fresh session may not have its process or heartbeat yet.
                let grace = chrono::Duration::from_std(self.settings.spawn_grace)
                    .unwrap_or(chrono::Duration::minutes(2));
                self.quiet(
                    &agent.session,
                    &[catalog::AGENT_ACTIVE],
                    now + grace,
                    "starting",
                );
                for spec in agent.monitors(&self.town, true) {
                    self.supervisor.do_send(AddMonitor(spec));
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
            }
            Action::Raise(key, condition) => {
                tracing::warn!(resource_id = %key.resource_id, alert_type = %key.alert_type, "{}", condition.message);
                self.analyzer.set_condition(key, Some(condition));
            }
            Action::Clear(key) => self.analyzer.set_condition(key, None),
        }
    }

    /// Keeps the expected alerts of a starting or ending agent from the sinks for a while
    /// (they are still recorded): planned lifecycle is not an incident.
    fn quiet(&self, session: &str, metrics: &[&str], until: chrono::DateTime<Utc>, why: &str) {
        let now = Utc::now();
        let ops: Vec<WriteOp> = metrics
            .iter()
            .map(|metric| {
                let silence = Silence {
                    resource_type: ResourceType::Agent,
                    resource_id: session.to_string(),
                    metric: Some(metric.to_string()),
                    created_at: now,
                    expires_at: until,
                    comment: Some(format!("gastown: {why}")),
                };
                self.analyzer.memory().add_silence(silence.clone());
                WriteOp::SilenceSaved(silence)
            })
            .collect();
        self.analyzer.submit_in_order(&self.writer, ops);
    }

    /// Adds monitors for agents the layout has and no event announced (crew added by hand).
    fn rescan(&self) {
        match self.town.agents() {
            Ok(agents) => {
                for agent in agents {
                    for spec in agent.monitors(&self.town, false) {
                        self.supervisor.do_send(AddMonitor(spec));
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read the town's layout: {e:#}"),
        }
    }

    /// Retires the agents whose process is gone without orphans.
    fn check_retiring(&self, ctx: &mut Context<Self>) {
        let sessions: Vec<String> = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.retiring.iter().cloned().collect()
        };
        if sessions.is_empty() {
            return;
        }
        let analyzer = self.analyzer.clone();
        let check = async move { analyzer.snapshot().await.map(|s| s.latest) };
        ctx.spawn(check.into_actor(self).map(move |latest, act, _| {
            let Some(latest) = latest else { return };
            for session in sessions {
                let verdict = retirement(&session, &latest);
                if verdict == Retirement::Wait {
                    continue;
                }
                act.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retiring
                    .remove(&session);
                if verdict == Retirement::Done {
                    tracing::info!(%session, "town agent gone without orphans: no longer watched");
                    // A crew member's clone stays: only its session ended.
                    let crew_clone_stays = act.town.agents().is_ok_and(|agents| {
                        agents
                            .iter()
                            .any(|a| a.session == session && a.role == Role::Crew)
                    });
                    let kinds: &[MonitorKind] = if crew_clone_stays {
                        &[MonitorKind::Agent]
                    } else {
                        &[MonitorKind::Agent, MonitorKind::Workspace]
                    };
                    for &kind in kinds {
                        act.supervisor.do_send(RemoveMonitor {
                            kind,
                            id: session.clone(),
                        });
                    }
                }
            }
        }));
    }
}

impl Actor for TownWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(POLL_EVERY, |act, ctx| act.poll(ctx));
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
