//! Our supervisor: owns every child, starts and stops them as monitors come and go, and restarts
//! whatever dies (stop or panic) with backoff and an intensity limit, in the OTP manner.
//!
//! actix's own `Supervisor` does not restart an actor that panics (docs/ARCHITECTURE.md, "Why not
//! the actix Supervisor"); ours learns of every death from the child's [`ExitGuard`], with a poll
//! of `connected()` as a backstop. The bookkeeping (generations, backoff, parking) is the plain
//! [`engine::Children`]; this actor schedules what it decides and builds the children.

pub mod engine;
pub mod handle;

pub use handle::SupervisorHandle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::analyzer::{AnalyzerHandle, Drain};
use super::collector::CycleTimes;
use super::writer::WriterHandle;
use super::{ChildExited, ChildRef, ExitGuard};
use crate::alerts::Condition;
use crate::config::Settings;
use crate::model::{AddOutcome, MonitorKind, MonitorSet, MonitorSpec, ResourceType};
use crate::store::write::WriteOp;

pub use super::restart::ChildState;
pub use crate::report::ActorReport;

pub use crate::model::monitor_child_name;

/// What a child is for in the supervisor's shutdown order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Feeds the analyzer: stopped first.
    Collector,
    /// Drained once no collector can queue anything more (brought back for it if down).
    Analyzer,
    /// Anything else: stopped last.
    Service,
}

/// Starts a fresh instance of a child, with fresh state, reporting its end through the guard.
pub type Start =
    Arc<dyn Fn(ExitGuard, SupervisorHandle) -> Result<Box<dyn ChildRef>, String> + Send + Sync>;

/// A child as the supervisor knows it: how to start it again, its role at shutdown, and the
/// resource a failure is reported on. What it is, only the wiring that made it knows
/// (`daemon::children`).
#[derive(Clone)]
pub struct ChildSpec {
    /// Its part in the shutdown order.
    pub role: Role,
    /// The resource its `collector_failed` alert goes on, if it watches one.
    pub resource: Option<(ResourceType, String)>,
    /// Builds and starts it.
    pub start: Start,
}

/// The name and spec of the collector for a monitor, for monitors added while running.
pub type MonitorChild = Arc<dyn Fn(&MonitorSpec) -> (String, ChildSpec) + Send + Sync>;

/// What the supervisor itself uses of the daemon's shared parts.
#[derive(Clone)]
pub struct SupervisorParts {
    /// The daemon's settings: the restart policy and `stable_after`.
    pub settings: Arc<Settings>,
    /// Where `collector_failed` goes, and what is drained at shutdown.
    pub analyzer: AnalyzerHandle,
    /// Where monitor changes are persisted; its own supervision is reported with the children.
    pub writer: WriterHandle,
    /// Each collector's latest cycle time, forgotten with its monitor.
    pub cycles: CycleTimes,
}

/// The supervisor actor.
pub struct Supervisor {
    deps: SupervisorParts,
    /// The children to start first, in order (taken at start).
    initial: Vec<(String, ChildSpec)>,
    monitor_child: MonitorChild,
    monitors: MonitorSet,
    children: engine::Children<ChildSpec, Box<dyn ChildRef>>,
    stopping: bool,
    /// Told once every child is down and the analyzer is drained.
    stopped: Option<oneshot::Sender<()>>,
}

impl Supervisor {
    /// A supervisor that will start `initial` in order (the daemon registers the analyzer,
    /// the collectors and the servers) and a child from `monitor_child` per monitor added later.
    pub fn new(
        deps: SupervisorParts,
        initial: Vec<(String, ChildSpec)>,
        monitor_child: MonitorChild,
        monitors: MonitorSet,
        stopped: oneshot::Sender<()>,
    ) -> Self {
        let policy = deps.settings.restart;
        Supervisor {
            deps,
            initial,
            monitor_child,
            monitors,
            children: engine::Children::new(policy),
            stopping: false,
            stopped: Some(stopped),
        }
    }

    fn add_child(&mut self, name: String, kind: ChildSpec, ctx: &mut Context<Self>) {
        self.children.insert(&name, kind);
        self.start(&name, ctx);
    }

    /// Builds a fresh child from its kind (the factory) and starts it.
    fn start(&mut self, name: &str, ctx: &mut Context<Self>) {
        let Some((generation, kind)) = self.children.next_start(name) else {
            return;
        };
        let guard = ExitGuard::new(name, generation, ctx.address().recipient());
        let supervisor = SupervisorHandle::new(ctx.address());
        match (kind.start)(guard, supervisor) {
            Ok(handle) => self.children.started(name, generation, handle),
            Err(e) => {
                tracing::error!(actor = name, "cannot start: {e}");
                self.exited(name, generation, false, ctx);
                return;
            }
        }
        if kind.resource.is_some() {
            // Also after a daemon restart, when a collector_failed alert read back from the
            // database has no in-memory flag: a run that holds clears it either way.
            let stable_after = self.deps.settings.restart.stable_after;
            let name = name.to_string();
            ctx.run_later(stable_after, move |act, _| {
                act.check_stable(&name, generation)
            });
        }
    }

    /// Resolves a child's `collector_failed` alert (if any) once its run has held.
    fn check_stable(&mut self, name: &str, generation: u64) {
        let Some(failure_raised) = self.children.held(name, generation) else {
            return;
        };
        if failure_raised {
            tracing::info!(
                actor = name,
                "actor has held since its restart; failure resolved"
            );
        }
        if let Some(kind) = self.children.kind(name).cloned() {
            self.set_failed(&kind, None);
        }
    }

    /// Raises (`Some`) or clears (`None`) the `collector_failed` alert of a child's resource.
    fn set_failed(&self, kind: &ChildSpec, condition: Option<Condition>) {
        if let Some(resource) = kind.resource.clone() {
            let key = crate::conditions::collector_failed_key(resource);
            self.deps.analyzer.set_condition(key, condition);
        }
    }

    /// A child died: schedule its restart, or park it past the intensity limit.
    fn exited(&mut self, name: &str, generation: u64, panicked: bool, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        // None: removed on purpose, a stale notice, or the poll already saw it.
        let Some(death) = self.children.exited(name, generation, Instant::now()) else {
            return;
        };
        let Some(kind) = self.children.kind(name).cloned() else {
            return;
        };
        let (delay, restarts) = (death.delay, death.restarts);
        if death.parked {
            tracing::error!(
                actor = name,
                panicked,
                restarts,
                pause_secs = delay.as_secs_f64(),
                "actor keeps failing: parked before the next try"
            );
            if kind.resource.is_some() {
                self.children.failure_raised(name);
            }
            let policy = self.deps.settings.restart;
            self.set_failed(
                &kind,
                Some(crate::conditions::collector_failed(
                    name, &policy, restarts, delay, panicked,
                )),
            );
        } else {
            tracing::warn!(
                actor = name,
                panicked,
                restarts,
                delay_ms = delay.as_millis() as u64,
                "actor stopped; restarting"
            );
        }
        let name = name.to_string();
        ctx.run_later(delay, move |act, ctx| act.restart(&name, generation, ctx));
    }

    fn restart(&mut self, name: &str, dead_generation: u64, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        // None: replaced meanwhile (the monitor was updated or re-added).
        let Some(restarts) = self
            .children
            .restart_due(name, dead_generation, Instant::now())
        else {
            return;
        };
        self.start(name, ctx);
        tracing::info!(actor = name, restarts, "actor restarted");
    }

    /// Stops a child on purpose and forgets it; returns its handle to watch it go.
    fn stop_child(&mut self, name: &str) -> Option<Box<dyn ChildRef>> {
        let child = self.children.remove(name)?;
        if let Some(handle) = &child.handle {
            handle.stop();
        }
        if child.failure_raised {
            self.set_failed(&child.kind, None);
        }
        child.handle
    }

    fn reports(&self) -> Vec<ActorReport> {
        self.reports_where(|_| true)
    }

    /// [`Supervisor::reports`] of the children (and the writer) whose state `keep` accepts.
    fn reports_where(&self, keep: impl Fn(ChildState) -> bool) -> Vec<ActorReport> {
        let mut reports = self.children.reports_where(&keep);
        let (state, restarts) = self.deps.writer.supervision();
        if keep(state) {
            reports.push(ActorReport {
                name: "writer".into(),
                state,
                restarts,
            });
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }

    fn begin_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!("stopping: collectors first, then draining the analyzer");
        let collectors = self.children.names_where(|k| k.role == Role::Collector);
        let stopping: Vec<Box<dyn ChildRef>> = collectors
            .iter()
            .filter_map(|name| self.stop_child(name))
            .collect();
        // An analyzer that is down (restarting, parked) is brought back to drain its queue.
        for analyzer in self.children.names_where(|k| k.role == Role::Analyzer) {
            if self.children.revive(&analyzer, Instant::now()) {
                self.start(&analyzer, ctx);
            }
        }
        let analyzer = self.deps.analyzer.addr();
        let drain = async move {
            // Only once no collector can queue anything more is the analyzer's queue final.
            wait_stopped(&stopping, Duration::from_secs(5)).await;
            if let Some(addr) = analyzer {
                let _ = tokio::time::timeout(Duration::from_secs(10), addr.send(Drain)).await;
            }
        };
        ctx.spawn(drain.into_actor(self).map(|_, act, _| {
            let rest = act.children.names_where(|_| true);
            for name in rest {
                act.stop_child(&name);
            }
            act.deps.analyzer.set(None);
            if let Some(tx) = act.stopped.take() {
                let _ = tx.send(());
            }
        }));
    }
}

/// Waits until every child in `children` is gone, or `limit` passes.
async fn wait_stopped(children: &[Box<dyn ChildRef>], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while children.iter().any(|c| c.alive()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for (name, spec) in std::mem::take(&mut self.initial) {
            self.add_child(name, spec, ctx);
        }
        // Backstop for deaths whose notice got lost: a dead address is a dead child.
        super::cadence::run_on_beat(ctx, Duration::from_secs(1), Duration::ZERO, |act, ctx| {
            for (name, generation) in act.children.silently_dead() {
                act.exited(&name, generation, false, ctx);
            }
        });
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        self.exited(&msg.name, msg.generation, msg.panicked, ctx);
    }
}

/// Adds (or replaces) a monitor, persists it and starts its collector.
#[derive(Message, Debug)]
#[rtype(result = "Result<AddOutcome, String>")]
pub(crate) struct AddMonitor(pub MonitorSpec);

impl Handler<AddMonitor> for Supervisor {
    type Result = Result<AddOutcome, String>;
    fn handle(&mut self, msg: AddMonitor, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err("the daemon is shutting down".into());
        }
        let spec = msg.0;
        if self.monitors.get(spec.kind(), spec.id()) == Some(&spec) {
            return Ok(AddOutcome::Unchanged);
        }
        refuse_config_managed(self.monitors.get(spec.kind(), spec.id()))?;
        if let Some(other) = crate::model::conflicting_check(self.monitors.iter(), &spec) {
            return Err(crate::model::conflict_message(&spec, other));
        }
        // Persist first: a monitor the database does not hold would vanish at the next start.
        self.deps
            .writer
            .submit(vec![WriteOp::MonitorSaved(spec.clone())])
            .map_err(|_| "the database writer is overloaded; try again".to_string())?;
        let (name, child) = (self.monitor_child)(&spec);
        let outcome = self.monitors.add(spec);
        self.stop_child(&name);
        tracing::info!(monitor = %name, ?outcome, "monitor added");
        self.add_child(name, child, ctx);
        Ok(outcome)
    }
}

/// The config was reloaded: children to rebuild on the new settings, and the config's checks.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Reconfigured {
    /// Rebuild every collector (a new interval, walk limit or path template).
    pub restart_collectors: bool,
    /// Rebuild the Gas Town follower.
    pub restart_town: bool,
    /// The config file's checks now, when they changed.
    pub checks: Option<Vec<MonitorSpec>>,
}

impl Handler<Reconfigured> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Reconfigured, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        let mut fresh: Vec<String> = Vec::new();
        if let Some(wanted) = msg.checks {
            let config = Some(crate::config::custom::CONFIG_MANAGED);
            let current: Vec<MonitorSpec> = self
                .monitors
                .iter()
                .filter(|m| m.managed_by() == config)
                .cloned()
                .collect();
            for old in current.iter().filter(|old| !wanted.contains(old)) {
                let name = monitor_child_name(old.kind(), old.id());
                self.monitors.remove(old.kind(), old.id());
                let stopping: Vec<_> = self.stop_child(&name).into_iter().collect();
                let analyzer = self.deps.analyzer.clone();
                let cycles = self.deps.cycles.clone();
                let id = old.id().to_string();
                ctx.spawn(
                    async move {
                        wait_stopped(&stopping, Duration::from_secs(5)).await;
                        analyzer.forget_with_source(ResourceType::Check, &id, Some(name.clone()));
                        cycles.forget(&name);
                    }
                    .into_actor(self),
                );
                tracing::info!(check = old.id(), "config reload: check removed");
            }
            for spec in wanted.into_iter().filter(|w| !current.contains(w)) {
                if let Some(other) = crate::model::conflicting_check(self.monitors.iter(), &spec) {
                    tracing::error!(
                        "config reload: {}; not running it",
                        crate::model::conflict_message(&spec, other)
                    );
                    continue;
                }
                let (name, child) = (self.monitor_child)(&spec);
                self.monitors.add(spec);
                self.stop_child(&name);
                tracing::info!(monitor = %name, "config reload: check added");
                self.add_child(name.clone(), child, ctx);
                fresh.push(name);
            }
        }
        let mut rebuild = Vec::new();
        if msg.restart_collectors {
            rebuild.extend(self.children.names_where(|k| k.role == Role::Collector));
        }
        if msg.restart_town && self.children.kind("gastown").is_some() {
            rebuild.push("gastown".to_string());
        }
        for name in rebuild.into_iter().filter(|n| !fresh.contains(n)) {
            let Some(spec) = self.children.kind(&name).cloned() else {
                continue;
            };
            self.stop_child(&name);
            self.add_child(name, spec, ctx);
        }
    }
}

/// Refuses to change a monitor of the config file (a `[[check]]`): it is the file's to change.
fn refuse_config_managed(current: Option<&MonitorSpec>) -> Result<(), String> {
    match current {
        Some(spec) if spec.managed_by() == Some(crate::config::custom::CONFIG_MANAGED) => {
            Err(format!(
                "{} {} comes from the config file's [[check]]; change it there",
                spec.kind(),
                spec.id()
            ))
        }
        _ => Ok(()),
    }
}

/// Removes a monitor: stops its collector, forgets it in the database, resolves its alerts.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct RemoveMonitor {
    /// Agent or workspace.
    pub kind: MonitorKind,
    /// The monitor's id, as given when it was added.
    pub id: String,
}

impl Handler<RemoveMonitor> for Supervisor {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: RemoveMonitor, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err("the daemon is shutting down".into());
        }
        let Some(removed) = self.monitors.get(msg.kind, &msg.id) else {
            return Err(format!("{} {} is not monitored", msg.kind, msg.id));
        };
        refuse_config_managed(Some(removed))?;
        // A check may report on another monitor's resource: its series go, not that resource.
        let (resource_type, resource_id) = (msg.kind.resource_type(), msg.id.clone());
        let source =
            (msg.kind == MonitorKind::Check).then(|| monitor_child_name(msg.kind, &msg.id));
        self.deps
            .writer
            .submit(vec![
                WriteOp::MonitorDeleted(msg.kind, msg.id.clone()),
                // Resolved in the database even if the analyzer is restarting right now.
                WriteOp::ResourceAlertsResolved(
                    resource_type,
                    resource_id.clone(),
                    chrono::Utc::now(),
                ),
            ])
            .map_err(|_| "the database writer is overloaded; try again".to_string())?;
        self.monitors.remove(msg.kind, &msg.id);
        let name = monitor_child_name(msg.kind, &msg.id);
        let stopping: Vec<_> = self.stop_child(&name).into_iter().collect();
        let analyzer = self.deps.analyzer.clone();
        let cycles = self.deps.cycles.clone();
        let collector = name.clone();
        // Forget only after the collector is gone, so nothing it queued revives the resource.
        ctx.spawn(
            async move {
                wait_stopped(&stopping, Duration::from_secs(5)).await;
                analyzer.forget_with_source(resource_type, &resource_id, source);
                cycles.forget(&collector);
            }
            .into_actor(self),
        );
        tracing::info!(monitor = %name, "monitor removed");
        Ok(())
    }
}

/// Adds or updates a monitor on behalf of its `managed_by` owner (the town follower): one that
/// someone else added, an operator say, is left as it is.
#[derive(Message, Debug)]
#[rtype(result = "Result<AddOutcome, String>")]
pub(crate) struct AddOwnedMonitor(pub MonitorSpec);

impl Handler<AddOwnedMonitor> for Supervisor {
    type Result = Result<AddOutcome, String>;
    fn handle(&mut self, msg: AddOwnedMonitor, ctx: &mut Self::Context) -> Self::Result {
        let spec = msg.0;
        if let Some(existing) = self.monitors.get(spec.kind(), spec.id())
            && existing.managed_by() != spec.managed_by()
        {
            tracing::debug!(kind = %spec.kind(), id = spec.id(), "left as its owner set it");
            return Ok(AddOutcome::Unchanged);
        }
        self.handle(AddMonitor(spec), ctx)
    }
}

/// Removes a monitor only if `owner` manages it.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct RemoveOwnedMonitor {
    /// Agent or workspace.
    pub kind: MonitorKind,
    /// The monitor's id, as given when it was added.
    pub id: String,
    /// The `managed_by` mark it must carry (e.g. `gastown`), else it is left alone.
    pub owner: String,
}

impl Handler<RemoveOwnedMonitor> for Supervisor {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: RemoveOwnedMonitor, ctx: &mut Self::Context) -> Self::Result {
        match self.monitors.get(msg.kind, &msg.id) {
            Some(existing) if existing.managed_by() == Some(msg.owner.as_str()) => self.handle(
                RemoveMonitor {
                    kind: msg.kind,
                    id: msg.id,
                },
                ctx,
            ),
            _ => Ok(()),
        }
    }
}

/// Asks for the monitors and the actors' states.
#[derive(Message, Debug)]
#[rtype(result = "LiveInfo")]
pub(crate) struct GetLive;

/// The supervisor's view for status and list.
#[derive(Debug, Clone, MessageResponse)]
pub struct LiveInfo {
    /// Every monitor the daemon has now (shared, not copied, until the monitors change).
    pub monitors: std::sync::Arc<[MonitorSpec]>,
    /// Every child's state and restart count, and the writer's, sorted by name.
    pub actors: Vec<ActorReport>,
}

impl Handler<GetLive> for Supervisor {
    type Result = LiveInfo;
    fn handle(&mut self, _: GetLive, _: &mut Self::Context) -> LiveInfo {
        LiveInfo {
            monitors: self.monitors.shared(),
            actors: self.reports(),
        }
    }
}

/// Asks for what the dashboard's cycle needs, every second: [`LiveInfo`] with only the
/// children that do not run now (usually none: nothing is copied but the shared monitors).
#[derive(Message)]
#[rtype(result = "LiveInfo")]
pub(crate) struct GetImpaired;

impl Handler<GetImpaired> for Supervisor {
    type Result = LiveInfo;
    fn handle(&mut self, _: GetImpaired, _: &mut Self::Context) -> LiveInfo {
        LiveInfo {
            monitors: self.monitors.shared(),
            actors: self.reports_where(|state| state != ChildState::Running),
        }
    }
}

/// Graceful shutdown: collectors stop, the analyzer drains, then the daemon is told.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        self.begin_shutdown(ctx);
    }
}
