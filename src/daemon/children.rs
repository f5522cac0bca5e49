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
use crate::collect::{Probe, SystemProbe, WalkLimits, probe_for};
use crate::control::server::ControlServer;
use crate::model::{MonitorSet, MonitorSpec, ResourceType};

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
    let settings = &deps.settings;
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
            );
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
    let pace = Pace {
        interval: settings.interval,
        stall_after: settings.stall_after,
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
