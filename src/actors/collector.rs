//! A collector actor: ticks on its interval and runs its probe on the blocking pool, never on
//! the event loop, then hands the readings to the analyzer.

use std::time::Duration;

use actix::prelude::*;

use super::analyzer::AnalyzerHandle;
use super::{ExitGuard, StopChild};
use crate::collect::Probe;

/// One collector: the system, an agent or a workspace, depending on its probe.
pub struct Collector {
    name: String,
    /// Taken while a measurement runs on the blocking pool, put back when it returns.
    probe: Option<Box<dyn Probe>>,
    interval: Duration,
    analyzer: AnalyzerHandle,
    /// Ticks skipped because the previous measurement was still running.
    overruns: u64,
    /// Ticks since this instance started (for fault injection).
    ticks: u64,
    _guard: ExitGuard,
}

impl Collector {
    /// A collector named `name` (e.g. `workspace:w1`) measuring `probe` every `interval`.
    pub fn new(
        name: &str,
        probe: Box<dyn Probe>,
        interval: Duration,
        analyzer: AnalyzerHandle,
        guard: ExitGuard,
    ) -> Self {
        Collector {
            name: name.to_string(),
            probe: Some(probe),
            interval,
            analyzer,
            overruns: 0,
            ticks: 0,
            _guard: guard,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        crate::faults::check(&self.name, self.ticks);
        let Some(mut probe) = self.probe.take() else {
            self.overruns += 1;
            tracing::debug!(collector = %self.name, overruns = self.overruns, "previous measurement still running; tick skipped");
            return;
        };
        let task = actix_rt::task::spawn_blocking(move || {
            let readings = probe.measure();
            (probe, readings)
        });
        ctx.spawn(task.into_actor(self).map(|result, act, ctx| match result {
            Ok((probe, readings)) => {
                act.probe = Some(probe);
                act.analyzer.send_metrics(readings);
            }
            Err(e) => {
                // The probe is lost with the panic; stopping lets the supervisor build a fresh one.
                tracing::error!(collector = %act.name, "measuring failed: {e}");
                ctx.stop();
            }
        }));
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}

impl Handler<StopChild> for Collector {
    type Result = ();
    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
