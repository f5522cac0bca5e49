//! A collector actor: ticks on the daemon's beat and runs its probe on a [`ProbeRunner`] thread,
//! never on the event loop, then hands the readings to the analyzer. A measurement that does
//! not come back (a hung network mount) is reported as `collector_stalled`.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::analyzer::AnalyzerHandle;
use super::probe_runner::{Delivery, Destination, Job, ProbeRunner, QUICK_JOB};
use super::{ExitGuard, StopChild};
use crate::collect::Probe;
use crate::model::{AlertKey, ResourceType};
use crate::util::lock;

pub use crate::report::CycleStat;

/// How a collector is paced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Time between two measurements, on the daemon's shared beat (`interval`, default 30 s).
    pub interval: Duration,
    /// A measurement running longer than this raises `collector_stalled`.
    pub stall_after: Duration,
}

/// Every collector's latest cycle, shared by the collectors (which record) and the status
/// document (which reads). Keyed by collector name (`system`, `workspace:w1`...).
#[derive(Debug, Clone, Default)]
pub struct CycleTimes(Arc<Mutex<HashMap<String, CycleStat>>>);

impl CycleTimes {
    /// Records that `collector`'s cycle took `took`.
    pub fn record(&self, collector: &str, took: Duration) {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        let mut map = lock(&self.0);
        let stat = CycleStat {
            last_seconds: took.as_secs_f64(),
        };
        map.insert(collector.to_string(), stat);
    }

    /// Forgets a collector that is gone for good (its monitor was removed).
    pub(crate) fn forget(&self, collector: &str) {
        let mut map = lock(&self.0);
        map.remove(collector);
    }

    /// A copy of every collector's latest cycle, in name order.
    pub fn snapshot(&self) -> BTreeMap<String, CycleStat> {
        let map = lock(&self.0);
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// What a measurement sends back: the probe and its readings, or the panic that lost them.
/// A measurement's result: the probe back, its readings and how long measuring took.
type Outcome = Result<(Box<dyn Probe>, Vec<crate::model::Measurement>, Duration), String>;

/// One collector: the system, an agent or a workspace, depending on its probe.
pub(crate) struct Collector {
    name: String,
    /// The resource a stall is reported on.
    resource: Option<(ResourceType, String)>,
    /// Taken while a measurement runs on the blocking pool, put back when it returns.
    probe: Option<Box<dyn Probe>>,
    pace: Pace,
    analyzer: AnalyzerHandle,
    cycles: CycleTimes,
    /// When the running measurement began.
    busy_since: Option<Instant>,
    /// How long the last measurement ran on its thread, once one has returned.
    last_took: Option<Duration>,
    stall_raised: bool,
    /// Ticks skipped because the previous measurement was still running.
    overruns: u64,
    /// Ticks since this instance started (for fault injection).
    ticks: u64,
    runner: Arc<ProbeRunner>,
    /// Where results come back: this actor's event loop (set once it runs there).
    destination: Destination,
    _guard: ExitGuard,
}

impl Collector {
    /// A collector named `name` (e.g. `workspace:w1`) measuring `probe` at `pace`.
    pub fn new(
        name: &str,
        resource: Option<(ResourceType, String)>,
        probe: Box<dyn Probe>,
        pace: Pace,
        analyzer: AnalyzerHandle,
        cycles: CycleTimes,
        guard: ExitGuard,
    ) -> Self {
        Collector {
            name: name.to_string(),
            resource,
            probe: Some(probe),
            pace,
            analyzer,
            cycles,
            busy_since: None,
            last_took: None,
            stall_raised: false,
            overruns: 0,
            ticks: 0,
            runner: ProbeRunner::shared(),
            destination: Destination::InPlace,
            _guard: guard,
        }
    }

    fn stall_key(&self) -> Option<AlertKey> {
        Some(crate::conditions::collector_stalled_key(
            self.resource.clone()?,
        ))
    }

    fn set_stalled(&mut self, stalled: bool) {
        if stalled == self.stall_raised {
            return;
        }
        self.stall_raised = stalled;
        let Some(key) = self.stall_key() else {
            return;
        };
        let condition = stalled.then(|| {
            let secs = self.busy_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            tracing::error!(collector = %self.name, secs, "measurement has not returned");
            crate::conditions::collector_stalled(&self.name, secs)
        });
        self.analyzer.set_condition(key, condition);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        crate::faults::check(&self.name, self.ticks);
        let Some(mut probe) = self.probe.take() else {
            self.overruns += 1;
            tracing::debug!(collector = %self.name, overruns = self.overruns, "previous measurement still running; tick skipped");
            if crate::conditions::is_stalled(
                self.busy_since.map(|t| t.elapsed()),
                self.pace.stall_after,
            ) {
                self.set_stalled(true);
            }
            return;
        };
        self.busy_since = Some(Instant::now());
        let (tx, rx) = tokio::sync::oneshot::channel::<Outcome>();
        let job: Job = Box::new(move || -> Delivery {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(move || {
                let began = Instant::now();
                let readings = probe.measure();
                (probe, readings, began.elapsed())
            }))
            .map_err(|panic| {
                crate::util::panic_text(&*panic)
                    .unwrap_or("panic")
                    .to_string()
            });
            Box::new(move || {
                let _ = tx.send(outcome);
            })
        });
        let quick = self.last_took.is_some_and(|took| took < QUICK_JOB);
        self.runner.submit(job, self.destination.clone(), quick);
        // Waited for with a check that the job is not stuck behind (or held behind) one that
        // hangs: a probe on a dead mount must not hold up the other collectors' results.
        let runner = Arc::clone(&self.runner);
        let outcome = async move { runner.wait_for(rx).await };
        ctx.spawn(outcome.into_actor(self).map(|result, act, ctx| match result {
            Ok(Ok((probe, readings, took))) => {
                act.probe = Some(probe);
                act.last_took = Some(took);
                if let Some(began) = act.busy_since.take() {
                    act.cycles.record(&act.name, began.elapsed());
                }
                act.set_stalled(false);
                act.analyzer.send_metrics(&act.name, readings);
            }
            Ok(Err(panic)) => {
                // The probe is lost with the panic; stopping lets the supervisor build a fresh one.
                tracing::error!(collector = %act.name, "measuring failed: the probe panicked: {panic}");
                ctx.stop();
            }
            Err(_) => {
                tracing::error!(collector = %act.name, "measuring failed: the runner dropped it");
                ctx.stop();
            }
        }));
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.destination = Destination::this_event_loop();
        // Measure at once, then on the daemon's beat: every collector ticks in the same wake-up
        // of the event loop, whenever it started (at least half an interval from now, so a
        // collector started just before a beat does not measure twice in a row).
        self.tick(ctx);
        let interval = self.pace.interval;
        super::cadence::run_on_beat(ctx, interval, interval / 2, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Removed or restarted: a stall alert must not outlive the collector that raised it.
        // (No panic here: this may run while a panic unwinds.)
        self.set_stalled(false);
    }
}

impl Handler<StopChild> for Collector {
    type Result = ();
    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Measurement;

    struct Stuck;

    impl Probe for Stuck {
        fn measure(&mut self) -> Vec<Measurement> {
            std::thread::sleep(Duration::from_millis(800));
            Vec::new()
        }
    }

    struct Panicky;

    impl Probe for Panicky {
        fn measure(&mut self) -> Vec<Measurement> {
            panic!("probe broke");
        }
    }

    #[actix_rt::test]
    async fn a_probe_that_panics_stops_its_collector_for_the_supervisor() {
        let pace = Pace {
            interval: Duration::from_millis(20),
            stall_after: Duration::from_secs(10),
        };
        let collector = Collector::new(
            "workspace:p1",
            Some((ResourceType::Workspace, "p1".into())),
            Box::new(Panicky),
            pace,
            AnalyzerHandle::default(),
            CycleTimes::default(),
            ExitGuard::detached("workspace:p1"),
        )
        .start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while collector.connected() {
            assert!(
                Instant::now() < deadline,
                "the collector outlived its probe"
            );
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix_rt::test]
    async fn a_measurement_that_does_not_return_raises_collector_stalled_then_clears() {
        let handle = AnalyzerHandle::default();
        let key = AlertKey {
            resource_type: ResourceType::Workspace,
            resource_id: "w1".into(),
            alert_type: crate::catalog::COLLECTOR_STALLED.into(),
        };
        let pace = Pace {
            interval: Duration::from_millis(20),
            stall_after: Duration::from_millis(200),
        };
        let cycles = CycleTimes::default();
        let collector = Collector::new(
            "workspace:w1",
            Some((ResourceType::Workspace, "w1".into())),
            Box::new(Stuck),
            pace,
            handle.clone(),
            cycles.clone(),
            ExitGuard::detached("workspace:w1"),
        )
        .start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(handle.condition(&key), Some(Some(_))) {
            assert!(Instant::now() < deadline, "no stall raised");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        // The measurement comes back: the stall clears.
        while !matches!(handle.condition(&key), Some(None)) {
            assert!(Instant::now() < deadline, "the stall never cleared");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        // The slow cycle's wall time is recorded under the collector's name.
        let took = cycles.snapshot()["workspace:w1"].last_seconds;
        assert!((0.8..10.0).contains(&took), "{took}");
        cycles.forget("workspace:w1");
        assert!(cycles.snapshot().is_empty());
        collector.do_send(StopChild);
    }
}
