//! A collector actor: ticks on the daemon's beat and runs its probe on a [`ProbeRunner`] thread,
//! never on the event loop, then hands the readings to the analyzer. A measurement that does
//! not come back (a hung network mount) is reported as `collector_stalled`.
//!
//! Between beats, the kernel may tell of a change ([`MeasureNow`], see [`crate::watch`]): the
//! collector then measures at once, out of its cycle, but at most once per [`TRIGGER_GAP`], and
//! within a daemon-wide budget, so that a storm of events neither floods the probe threads nor
//! delays a beat. A beat that comes while such a measurement runs is measured right after it.

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
use crate::watch::{Cause, Poke};

pub use crate::report::CycleStat;

/// How a collector is paced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Time between two measurements, on the daemon's shared beat (`interval`, default 30 s).
    pub interval: Duration,
    /// A measurement running longer than this raises `collector_stalled`.
    pub stall_after: Duration,
    /// Kernel notifications may bring a measurement forward (`events`, default on).
    pub events: bool,
}

/// Two measurements brought forward for one resource start at least this far apart: a burst of
/// events gives at most one extra measurement per 100 ms.
pub(crate) const TRIGGER_GAP: Duration = Duration::from_millis(100);

/// Measurements brought forward, across the daemon, per second (and at most at once): a storm
/// over many resources is spread out instead of taking the probe threads from the beat.
const TRIGGER_BUDGET: f64 = 200.0;

/// The kernel told of a change to what the collector measures: measure now.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct MeasureNow(pub Cause);

/// The daemon-wide budget of measurements brought forward: a token bucket, refilled at
/// [`TRIGGER_BUDGET`] a second. Collectors share their event loop's.
#[derive(Debug)]
pub(crate) struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn full(now: Instant) -> Self {
        Budget {
            tokens: TRIGGER_BUDGET,
            at: now,
        }
    }

    /// Takes one measurement's worth at `now`; false when the budget is spent.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * TRIGGER_BUDGET;
        self.tokens = (self.tokens + refill).min(TRIGGER_BUDGET);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

thread_local! {
    /// This event loop's budget.
    static BUDGET: std::cell::RefCell<Budget> = std::cell::RefCell::new(Budget::full(Instant::now()));
}

/// How long until a measurement brought forward may start, given when the latest one started;
/// zero when it may start now.
pub(crate) fn trigger_wait(last_start: Option<Instant>, now: Instant) -> Duration {
    last_start.map_or(Duration::ZERO, |then| {
        (then + TRIGGER_GAP).saturating_duration_since(now)
    })
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
    /// When the latest measurement started, beat or not.
    last_start: Option<Instant>,
    /// The running measurement was brought forward (not a beat's).
    running_early: bool,
    /// A beat came while a measurement brought forward ran: it is measured when that returns.
    beat_waiting: bool,
    /// A change the kernel told of, not yet measured (the probe was busy, or the last
    /// measurement too recent, or the budget spent).
    early_waiting: Option<Cause>,
    /// A timer is set to measure `early_waiting`.
    early_timer: bool,
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
            last_start: None,
            running_early: false,
            beat_waiting: false,
            early_waiting: None,
            early_timer: false,
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

    /// A beat of the collector's cycle.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.ticks += 1;
        crate::faults::check(&self.name, self.ticks);
        if self.probe.is_none() && self.running_early {
            // A measurement brought forward is running (it takes milliseconds): the beat's
            // comes right after, not a whole interval later. One that hangs is a stall all
            // the same.
            self.beat_waiting = true;
            self.check_stalled();
            return;
        }
        self.measure(ctx, false);
    }

    /// Raises `collector_stalled` once the running measurement has been out too long.
    fn check_stalled(&mut self) {
        if crate::conditions::is_stalled(
            self.busy_since.map(|t| t.elapsed()),
            self.pace.stall_after,
        ) {
            self.set_stalled(true);
        }
    }

    /// Measures brought forward, once allowed: not while the probe is out, at most once per
    /// [`TRIGGER_GAP`], within the event loop's budget. Otherwise waits (a timer, or the
    /// running measurement's return) and tries again.
    fn measure_early(&mut self, ctx: &mut Context<Self>) {
        let Some(cause) = self.early_waiting else {
            return;
        };
        if self.probe.is_none() || self.early_timer {
            return;
        }
        let now = Instant::now();
        let mut wait = trigger_wait(self.last_start, now);
        if wait.is_zero() && !BUDGET.with(|b| b.borrow_mut().take(now)) {
            wait = TRIGGER_GAP;
        }
        if !wait.is_zero() {
            self.early_timer = true;
            ctx.run_later(wait, |act, ctx| {
                act.early_timer = false;
                act.measure_early(ctx);
            });
            return;
        }
        self.early_waiting = None;
        tracing::debug!(collector = %self.name, cause = cause.as_str(), "measuring out of cycle");
        self.measure(ctx, true);
    }

    /// What comes after a measurement returned: a beat that waited, or a change told meanwhile.
    fn after_measure(&mut self, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.beat_waiting) {
            self.measure(ctx, false);
        } else {
            self.measure_early(ctx);
        }
    }

    /// Starts a measurement on a probe thread (`early`: brought forward, not a beat's).
    fn measure(&mut self, ctx: &mut Context<Self>, early: bool) {
        let Some(mut probe) = self.probe.take() else {
            self.overruns += 1;
            tracing::debug!(collector = %self.name, overruns = self.overruns, "previous measurement still running; tick skipped");
            self.check_stalled();
            return;
        };
        self.busy_since = Some(Instant::now());
        self.last_start = self.busy_since;
        self.running_early = early;
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
                act.after_measure(ctx);
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
        if self.pace.events
            && let Some(probe) = self.probe.as_mut()
        {
            // Weak: the probe (which the collector holds) must not keep the collector alive.
            let me = ctx.address().downgrade();
            let poke: Poke = Arc::new(move |cause| {
                if let Some(me) = me.upgrade() {
                    me.do_send(MeasureNow(cause));
                }
            });
            probe.attach(poke);
        }
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

impl Handler<MeasureNow> for Collector {
    type Result = ();
    fn handle(&mut self, msg: MeasureNow, ctx: &mut Self::Context) {
        if !self.pace.events {
            return; // Off (`events = false`): the cycle measures, nothing else.
        }
        self.early_waiting.get_or_insert(msg.0);
        self.measure_early(ctx);
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

    #[test]
    fn measurements_brought_forward_keep_their_gap_and_the_daemons_budget() {
        let now = Instant::now();
        assert_eq!(trigger_wait(None, now), Duration::ZERO);
        assert_eq!(
            trigger_wait(Some(now), now + Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        assert_eq!(trigger_wait(Some(now), now + TRIGGER_GAP), Duration::ZERO);
        let mut budget = Budget::full(now);
        let taken = (0..1000).filter(|_| budget.take(now)).count();
        assert_eq!(
            taken, TRIGGER_BUDGET as usize,
            "a burst takes the whole budget, no more"
        );
        // A tenth of a second refills a tenth of it.
        let later = now + Duration::from_millis(100);
        let refilled = (0..1000).filter(|_| budget.take(later)).count();
        assert_eq!(refilled, (TRIGGER_BUDGET / 10.0) as usize);
    }

    /// Counts its measurements; a change is told by the test through the collector's poke.
    struct Counting {
        measured: Arc<std::sync::atomic::AtomicUsize>,
        poke: Arc<Mutex<Option<Poke>>>,
    }

    impl Probe for Counting {
        fn measure(&mut self) -> Vec<Measurement> {
            self.measured
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Vec::new()
        }

        fn attach(&mut self, poke: Poke) {
            *lock(&self.poke) = Some(poke);
        }
    }

    #[actix_rt::test]
    async fn a_burst_of_pokes_gives_one_measurement_per_gap_and_none_with_events_off() {
        for events in [true, false] {
            let measured = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let poke = Arc::new(Mutex::new(None));
            let pace = Pace {
                interval: Duration::from_secs(3600),
                stall_after: Duration::from_secs(3600),
                events,
            };
            let probe = Counting {
                measured: Arc::clone(&measured),
                poke: Arc::clone(&poke),
            };
            let collector = Collector::new(
                "workspace:c1",
                Some((ResourceType::Workspace, "c1".into())),
                Box::new(probe),
                pace,
                AnalyzerHandle::default(),
                CycleTimes::default(),
                ExitGuard::detached("workspace:c1"),
            )
            .start();
            let count = || measured.load(std::sync::atomic::Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(10);
            while count() < 1 {
                assert!(Instant::now() < deadline, "no first measurement");
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            let Some(poke) = lock(&poke).clone() else {
                assert!(!events, "events on: the probe was attached");
                collector.do_send(MeasureNow(Cause::FileChanged));
                actix_rt::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(count(), 1, "events off: a poke measures nothing");
                continue;
            };
            // 1000 pokes over about 500 ms (from another thread, as the kernel's).
            let began = Instant::now();
            let storm = std::thread::spawn(move || {
                for _ in 0..1000 {
                    poke(Cause::Heartbeat);
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
            while !storm.is_finished() {
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
            actix_rt::time::sleep(2 * TRIGGER_GAP).await;
            let spent = began.elapsed().as_secs_f64();
            let extra = count() - 1;
            let most = (spent / TRIGGER_GAP.as_secs_f64()).ceil() as usize + 1;
            assert!(
                (2..=most).contains(&extra),
                "{extra} measurements in {spent:.2} s (at most {most})"
            );
            collector.do_send(StopChild);
        }
    }

    #[actix_rt::test]
    async fn a_probe_that_panics_stops_its_collector_for_the_supervisor() {
        let pace = Pace {
            interval: Duration::from_millis(20),
            stall_after: Duration::from_secs(10),
            events: false,
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
            events: false,
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
