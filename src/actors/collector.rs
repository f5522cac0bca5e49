//! A collector actor: ticks on its interval and runs its probe on the blocking pool, never on
//! the event loop, then hands the readings to the analyzer. A measurement that does not come
//! back (a hung network mount) is reported as `collector_stalled`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::analyzer::AnalyzerHandle;
use super::{ExitGuard, StopChild};
use crate::alerts::Condition;
use crate::collect::Probe;
use crate::model::{AlertKey, HealthStatus, ResourceType};

/// The alert raised while a collector's measurement has not returned for `stall_after`.
pub const COLLECTOR_STALLED: &str = "collector_stalled";

/// How a collector is paced.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub interval: Duration,
    /// A measurement running longer than this raises `collector_stalled`.
    pub stall_after: Duration,
}

/// One collector's latest cycle, as the status document and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CycleStat {
    /// Wall time of the last finished measurement, from its start to its readings.
    pub last_seconds: f64,
}

/// Every collector's latest cycle, shared by the collectors (which record) and the status
/// document (which reads). Keyed by collector name (`system`, `workspace:w1`...).
#[derive(Debug, Clone, Default)]
pub struct CycleTimes(Arc<Mutex<HashMap<String, CycleStat>>>);

impl CycleTimes {
    /// Records that `collector`'s cycle took `took`.
    pub fn record(&self, collector: &str, took: Duration) {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let stat = CycleStat {
            last_seconds: took.as_secs_f64(),
        };
        map.insert(collector.to_string(), stat);
    }

    /// Forgets a collector that is gone for good (its monitor was removed).
    pub fn forget(&self, collector: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(collector);
    }

    /// A copy of every collector's latest cycle, in name order.
    pub fn snapshot(&self) -> BTreeMap<String, CycleStat> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// One collector: the system, an agent or a workspace, depending on its probe.
pub struct Collector {
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
    stall_raised: bool,
    /// Ticks skipped because the previous measurement was still running.
    overruns: u64,
    /// Ticks since this instance started (for fault injection).
    ticks: u64,
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
            stall_raised: false,
            overruns: 0,
            ticks: 0,
            _guard: guard,
        }
    }

    fn stall_key(&self) -> Option<AlertKey> {
        let (resource_type, resource_id) = self.resource.clone()?;
        Some(AlertKey {
            resource_type,
            resource_id,
            alert_type: COLLECTOR_STALLED.into(),
        })
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
            Condition {
                severity: HealthStatus::Critical,
                message: format!(
                    "collector {}: a measurement has not returned for {secs:.0} s (a hung mount or file?)",
                    self.name
                ),
                metadata: json!({"collector": self.name, "seconds": secs}),
            }
        });
        self.analyzer.set_condition(key, condition);
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        crate::faults::check(&self.name, self.ticks);
        let Some(mut probe) = self.probe.take() else {
            self.overruns += 1;
            tracing::debug!(collector = %self.name, overruns = self.overruns, "previous measurement still running; tick skipped");
            if self
                .busy_since
                .is_some_and(|t| t.elapsed() > self.pace.stall_after)
            {
                self.set_stalled(true);
            }
            return;
        };
        self.busy_since = Some(Instant::now());
        let task = actix_rt::task::spawn_blocking(move || {
            let readings = probe.measure();
            (probe, readings)
        });
        ctx.spawn(task.into_actor(self).map(|result, act, ctx| match result {
            Ok((probe, readings)) => {
                act.probe = Some(probe);
                if let Some(began) = act.busy_since.take() {
                    act.cycles.record(&act.name, began.elapsed());
                }
                act.set_stalled(false);
                act.analyzer.send_metrics(&act.name, readings);
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
        ctx.run_interval(self.pace.interval, |act, ctx| act.tick(ctx));
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

    #[actix_rt::test]
    async fn a_measurement_that_does_not_return_raises_collector_stalled_then_clears() {
        let handle = AnalyzerHandle::default();
        let key = AlertKey {
            resource_type: ResourceType::Workspace,
            resource_id: "w1".into(),
            alert_type: COLLECTOR_STALLED.into(),
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
