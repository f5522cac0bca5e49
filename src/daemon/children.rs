//! What the daemon's children are made of: the factory the supervisor calls to build (and
//! rebuild) each one, wired here where the program starts rather than inside the supervisor.

use actix::Actor;

use crate::actors::analyzer::Analyzer;
use crate::actors::collector::{Collector, Pace};
use crate::actors::supervisor::{ChildKind, SupervisorDeps, SupervisorHandle, watched_resource};
use crate::actors::town::TownWatcher;
use crate::actors::{ChildRef, ExitGuard};
use crate::collect::{Probe, SystemProbe, WalkLimits, probe_for};
use crate::control::server::ControlServer;

/// The daemon's [`ChildFactory`](crate::actors::supervisor::ChildFactory): a fresh actor for a
/// child, with fresh state.
pub(crate) fn build_child(
    name: &str,
    kind: &ChildKind,
    deps: &SupervisorDeps,
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
