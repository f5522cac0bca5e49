//! What the daemon's children are made of: the factory the supervisor calls to build (and
//! rebuild) each one, wired here where the program starts rather than inside the supervisor.

use actix::Actor;

use crate::actors::analyzer::Analyzer;
use crate::actors::collector::{Collector, Pace};
use std::sync::Arc;

use crate::actors::deps::DaemonDeps;
use crate::actors::supervisor::{
    ChildSpec, MonitorChild, Role, SupervisorHandle, monitor_child_name,
};
use crate::actors::town::TownWatcher;
use crate::actors::{ChildRef, ExitGuard};
use std::time::Duration;

use crate::collect::{AgentProbe, Probe, RootSource, SystemProbe, WalkLimits, WorkspaceProbe};
use crate::config::Settings;
use crate::control::server::ControlServer;
use crate::gastown::lifecycle::IdleSessions;
use crate::model::{Judgement, MonitorSet, MonitorSpec, ResourceType};

/// What each of the daemon's children is, which is also how to build it again.
#[derive(Debug, Clone)]
pub(crate) enum ChildKind {
    /// The analyzer, which turns readings into metric rows and alerts (child `analyzer`).
    Analyzer,
    /// The collector of machine-wide CPU, memory and filesystem readings (child `system`).
    System,
    /// The control server on the Unix socket (child `control`).
    Control,
    /// The Gas Town follower.
    Town,
    /// The collector of one agent or workspace monitor (child `<kind>:<id>`).
    Monitor(Box<MonitorSpec>),
}

/// The resource a child's failure is reported on, if it watches one.
fn watched_resource(kind: &ChildKind) -> Option<(ResourceType, String)> {
    match kind {
        // A check's own failures are the check's, even when it reports on an agent.
        ChildKind::Monitor(spec) => Some((spec.kind().resource_type(), spec.id().to_string())),
        ChildKind::System => Some((ResourceType::Cpu, "system".into())),
        ChildKind::Town => Some((
            ResourceType::Agent,
            crate::gastown::lifecycle::TOWN_RESOURCE.into(),
        )),
        ChildKind::Analyzer | ChildKind::Control => None,
    }
}

/// Its part in the supervisor's shutdown order.
fn role(kind: &ChildKind) -> Role {
    match kind {
        ChildKind::System | ChildKind::Monitor(_) => Role::Collector,
        ChildKind::Analyzer => Role::Analyzer,
        ChildKind::Control | ChildKind::Town => Role::Service,
    }
}

/// The supervisor's spec for the child `name` of `kind`: it starts with [`build_child`].
fn spec(name: &str, kind: ChildKind, deps: &DaemonDeps) -> ChildSpec {
    let (name, deps) = (name.to_string(), deps.clone());
    ChildSpec {
        role: role(&kind),
        resource: watched_resource(&kind),
        start: Arc::new(move |guard, supervisor| {
            build_child(&name, &kind, &deps, guard, supervisor)
        }),
    }
}

/// The children the daemon starts with, in order: the analyzer, the system collector, one
/// collector per monitor, the control server (with a socket) and the Gas Town follower (with a
/// town).
pub(crate) fn initial(deps: &DaemonDeps, monitors: &MonitorSet) -> Vec<(String, ChildSpec)> {
    let mut children = vec![
        (
            "analyzer".to_string(),
            spec("analyzer", ChildKind::Analyzer, deps),
        ),
        (
            "system".to_string(),
            spec("system", ChildKind::System, deps),
        ),
    ];
    children.extend(monitors.iter().map(|m| monitor(m, deps)));
    if deps.listener.is_some() {
        children.push(("control".into(), spec("control", ChildKind::Control, deps)));
    }
    if deps.town.is_some() {
        children.push(("gastown".into(), spec("gastown", ChildKind::Town, deps)));
    }
    children
}

/// The collector of monitor `m`, with its name.
fn monitor(m: &MonitorSpec, deps: &DaemonDeps) -> (String, ChildSpec) {
    let name = monitor_child_name(m.kind(), m.id());
    let child = spec(&name, ChildKind::Monitor(Box::new(m.clone())), deps);
    (name, child)
}

/// How the supervisor makes the collector of a monitor added while the daemon runs.
pub(crate) fn monitor_child(deps: &DaemonDeps) -> MonitorChild {
    let deps = deps.clone();
    Arc::new(move |m| monitor(m, &deps))
}

/// A fresh actor for a child, with fresh state.
fn build_child(
    name: &str,
    kind: &ChildKind,
    deps: &DaemonDeps,
    guard: ExitGuard,
    supervisor: SupervisorHandle,
) -> Result<Box<dyn ChildRef>, String> {
    // As last (re)loaded: a child rebuilt after a reload runs on the new settings.
    let settings = &deps.current();
    let probe: Box<dyn Probe> = match kind {
        ChildKind::Analyzer => {
            let analyzer = Analyzer::new(
                settings.clone(),
                deps.analyzer.clone(),
                deps.writer.clone(),
                deps.notifier.clone(),
                guard,
            );
            let addr = analyzer.start();
            deps.analyzer.set(Some(addr.clone()));
            return Ok(Box::new(addr));
        }
        ChildKind::Town => {
            let town = settings.gastown.clone().ok_or("no town configured")?;
            let state = deps.town.clone().ok_or("no town state")?;
            let watcher = TownWatcher::new(
                town,
                settings.interval,
                state,
                supervisor,
                deps.analyzer.clone(),
                guard,
            )
            .with_events(settings.events);
            return Ok(Box::new(watcher.start()));
        }
        ChildKind::Control => {
            let listener = deps.listener.clone().ok_or("no control socket")?;
            let server = ControlServer::new(listener, supervisor, deps.clone(), guard);
            return Ok(Box::new(server.start()));
        }
        ChildKind::System => Box::new(SystemProbe::new(settings.filesystems.clone())?),
        ChildKind::Monitor(spec) => {
            let idle = deps.town.as_ref().map(|t| t.idle_sessions());
            probe_for(
                spec,
                settings,
                WalkLimits::from_settings(settings),
                idle.as_ref(),
            )?
        }
    };
    let pace = match kind {
        // A check runs on its own interval, and is stalled only past its own timeout.
        ChildKind::Monitor(spec) if let MonitorSpec::Check { options, .. } = spec.as_ref() => {
            let timeout = options
                .timeout
                .unwrap_or(crate::model::DEFAULT_CHECK_TIMEOUT_SECS);
            Pace {
                interval: options
                    .interval
                    .map_or(settings.interval, Duration::from_secs),
                stall_after: settings.stall_after.max(Duration::from_secs(timeout + 5)),
                events: settings.events,
            }
        }
        _ => Pace {
            interval: settings.interval,
            stall_after: settings.stall_after,
            events: settings.events,
        },
    };
    let actor = Collector::new(
        name,
        watched_resource(kind),
        probe,
        pace,
        deps.analyzer.clone(),
        deps.cycles.clone(),
        guard,
    );
    Ok(Box::new(actor.start()))
}

/// The probe for a monitor, with default paths resolved from `settings` and, for a Gas Town
/// session, the town's knowledge (idle polecats, heartbeat staleness): wiring, kept here so the
/// collectors need not know Gas Town.
///
/// `idle` lists the Gas Town polecats idle since their `gt done` (when a town is followed).
pub(crate) fn probe_for(
    spec: &MonitorSpec,
    settings: &Settings,
    limits: WalkLimits,
    idle: Option<&IdleSessions>,
) -> Result<Box<dyn Probe>, String> {
    Ok(match spec {
        MonitorSpec::Agent { id, options } => {
            let workspace = options
                .workspace
                .clone()
                .unwrap_or_else(|| settings.default_agent_workspace(id));
            let mut probe = AgentProbe::new(
                id,
                RootSource::from_options(options)?,
                workspace,
                options.heartbeat.clone(),
                limits,
                settings.interval / 2,
            );
            if let Some(secs) = options.stall_after {
                probe = probe.with_stall_after(Duration::from_secs(secs));
            }
            if let Some(idle) = idle.filter(|_| options.managed_by.is_some()) {
                let (idle, id) = (idle.clone(), id.clone());
                probe =
                    probe.with_known_idle(move || crate::gastown::lifecycle::is_idle(&idle, &id));
            }
            if options.managed_by.as_deref() == Some(crate::gastown::layout::MANAGED_BY) {
                // Gas Town's witness reads a stale heartbeat's state as nothing.
                let stale = settings.gastown.as_ref().map_or(
                    Duration::from_secs_f64(crate::config::gastown::DEFAULT_HEARTBEAT_STALE_SECS),
                    |town| town.heartbeat_stale,
                );
                // The town watcher tells a reap from a crash; a death alone is not an alert.
                probe = probe
                    .with_stuck_fresh_for(stale)
                    .with_judgement(crate::catalog::AGENT_ACTIVE, Judgement::StatusOnly);
                // Every gt command rewrites a session heartbeat: an old one means idle. The
                // deacon's is written by its patrol loop, and old means stuck (its thresholds
                // are the town's, see config).
                if options.role.as_deref() != Some("deacon") {
                    probe = probe.with_judgement(
                        crate::catalog::HEARTBEAT_AGE_SECONDS,
                        Judgement::Informational,
                    );
                }
            }
            Box::new(probe)
        }
        MonitorSpec::Workspace { id, options } => {
            let path = options
                .path
                .clone()
                .unwrap_or_else(|| settings.default_workspace_path(id));
            Box::new(WorkspaceProbe::new(id, path, options.dbs.clone(), limits))
        }
        MonitorSpec::Check { id, options } => {
            let (resource_type, resource_id) = options.target(id);
            Box::new(crate::checks::CheckProbe::new(
                id,
                resource_type,
                &resource_id,
                options.command.clone(),
                Duration::from_secs(
                    options
                        .timeout
                        .unwrap_or(crate::model::DEFAULT_CHECK_TIMEOUT_SECS),
                ),
            ))
        }
    })
}
