//! The analyzer actor: feeds measurements through `AnalyzerCore`, sends rows to the writer and
//! alert events to the notifier, and answers snapshot requests.
//!
//! Measurements reach it through [`AnalyzerHandle`], whose queue outlives any one analyzer: a
//! panic loses neither what is queued nor the batch being analyzed (it stays in the handle until
//! its rows are handed to the writer), and the next analyzer reads its alert state back from
//! the database.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tokio::sync::oneshot;

use super::alert_memory::AlertMemory;
use super::writer::WriterHandle;
use super::{ExitGuard, StopChild};
use crate::alerts::{AlertEvent, Condition};
use crate::analysis::{AnalyzerCore, write_op};
use crate::config::Settings;
use crate::faults;
use crate::model::{AlertKey, HealthAlert, HealthMetric, Measurement, ResourceType, Silence};
use crate::notify::Notifier;
use crate::store::write::WriteOp;
use crate::store::{self, query};
use crate::util::lock;

/// Batches the queue holds before collectors are refused.
pub(crate) const QUEUE_CAPACITY: usize = 8192;
/// How long a starting analyzer waits for the writer to land a predecessor's alerts.
const FLUSH_WAIT: Duration = Duration::from_secs(3);
/// A batch that took down this many analyzers is dropped rather than tried again.
const MAX_BATCH_ATTEMPTS: u32 = 3;

/// Wakes the analyzer to drain its queue.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct Wake;

/// A monitor was removed: forget its values and resolve its alerts.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ForgetResource {
    /// The removed monitor's resource type (agent or workspace).
    pub resource_type: ResourceType,
    /// The removed monitor's id.
    pub resource_id: String,
    /// The removed collector's name when it is an add-on source (a check, `check:<name>`):
    /// its series go, wherever they are.
    pub source: Option<String>,
}

/// The config was reloaded: new rules and cooldown, the alert state kept.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Reconfigure(pub Arc<Settings>);

/// Pushed series went stale, came back or were removed: apply it now.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct ApplyPushed;

/// Asks for the latest values and active alerts.
#[derive(Message, Debug)]
#[rtype(result = "Snapshot")]
pub(crate) struct GetSnapshot;

/// What [`Inspect`] runs: it reads the analyzer's core in place (`None` while it loads).
type Inspection<R> = Box<dyn FnOnce(Option<&mut AnalyzerCore>) -> R + Send>;

/// Runs a function on the analyzer's core, where it is: a reader that needs the latest values
/// only for a moment (the dashboard's cycle, every second) copies none of them, where
/// [`GetSnapshot`] copies them all, and can ask which of them changed.
pub(crate) struct Inspect<R>(Inspection<R>);

impl<R: Send + 'static> Message for Inspect<R> {
    type Result = R;
}

/// Answered once everything queued before it is analyzed and handed to the writer.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Drain;

/// An operator acknowledges an active alert (by row id).
#[derive(Message, Debug)]
#[rtype(result = "Result<HealthAlert, String>")]
pub(crate) struct Acknowledge {
    /// The alert's `health_alerts` row id, as `alerts` lists it.
    pub id: i64,
    /// Who acknowledged it, as recorded.
    pub by: String,
}

/// What the analyzer knows now.
#[derive(Debug, Clone, Default, MessageResponse)]
pub struct Snapshot {
    /// The newest value of every series seen; empty while the analyzer is loading.
    pub latest: Vec<HealthMetric>,
    /// The alerts open now; empty while the analyzer is loading.
    pub active_alerts: Vec<HealthAlert>,
}

/// A batch being analyzed, kept outside the analyzer so a panic does not lose it.
struct InFlight {
    /// The collector it came from (`workspace:w1`...).
    source: String,
    batch: Vec<Measurement>,
    attempts: u32,
}

struct HandleInner {
    tx: Sender<(String, Vec<Measurement>)>,
    rx: Receiver<(String, Vec<Measurement>)>,
    addr: RwLock<Option<Addr<Analyzer>>>,
    wake_sent: AtomicBool,
    in_flight: Mutex<Option<InFlight>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Conditions other parts of the daemon want raised (`Some`) or cleared (`None`).
    conditions: Mutex<HashMap<AlertKey, Option<Condition>>>,
    /// Alert and monitor changes the writer refused (its queue was full): retried in order,
    /// never dropped, and kept here so an analyzer panic does not lose them either.
    unsent: Mutex<VecDeque<WriteOp>>,
    /// What a drain has analyzed and not yet handed to the writer: one hand-over per drain, so
    /// a cycle's batches wake the writer thread once. Kept here so a panic mid-drain loses
    /// none of it; a new analyzer hands it over before it reads the database back.
    outgoing: Mutex<Vec<WriteOp>>,
    /// Alert ids, announced alerts and silences, for every analyzer in turn.
    memory: AlertMemory,
    /// The pushed series, kept here so they outlive any one analyzer.
    pushed: Mutex<crate::pushed::Registry>,
    /// Every series' open rollup buckets and its main metric's last hour, for charts.
    rollups: Mutex<crate::rollup::Rollups>,
    /// The dashboard's event stream.
    live: crate::live::LiveHub,
}

/// The stable way to reach whichever analyzer is current: collectors keep this, never an `Addr`,
/// so a restarted analyzer is found without them noticing, and nothing queued is lost with it.
#[derive(Clone)]
pub struct AnalyzerHandle {
    inner: Arc<HandleInner>,
}

impl Default for AnalyzerHandle {
    fn default() -> Self {
        let (tx, rx) = bounded(QUEUE_CAPACITY);
        AnalyzerHandle {
            inner: Arc::new(HandleInner {
                tx,
                rx,
                addr: RwLock::new(None),
                wake_sent: AtomicBool::new(false),
                in_flight: Mutex::new(None),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                conditions: Mutex::new(HashMap::new()),
                unsent: Mutex::new(VecDeque::new()),
                outgoing: Mutex::new(Vec::new()),
                memory: AlertMemory::default(),
                pushed: Mutex::new(crate::pushed::Registry::default()),
                rollups: Mutex::new(crate::rollup::Rollups::default()),
                live: crate::live::LiveHub::default(),
            }),
        }
    }
}

impl AnalyzerHandle {
    /// Points the handle at a new analyzer.
    pub fn set(&self, addr: Option<Addr<Analyzer>>) {
        if let Ok(mut slot) = self.inner.addr.write() {
            *slot = addr;
        }
    }

    /// The current analyzer, if one runs.
    pub fn addr(&self) -> Option<Addr<Analyzer>> {
        self.inner.addr.read().ok().and_then(|s| s.clone())
    }

    /// Queues one collector cycle (`source` names the collector) without blocking; refused
    /// measurements (queue full) are counted.
    pub fn send_metrics(&self, source: &str, batch: Vec<Measurement>) {
        self.try_send_metrics(source, batch);
    }

    /// The dashboard's event stream.
    pub(crate) fn live(&self) -> &crate::live::LiveHub {
        &self.inner.live
    }

    /// Every series' open rollup buckets and recent history.
    pub(crate) fn rollups(&self) -> std::sync::MutexGuard<'_, crate::rollup::Rollups> {
        lock(&self.inner.rollups)
    }

    /// The pushed series.
    pub(crate) fn pushed(&self) -> std::sync::MutexGuard<'_, crate::pushed::Registry> {
        lock(&self.inner.pushed)
    }

    /// Takes a report of pushed metrics: what passes is queued for analysis and new or changed
    /// series are stored; the rest is refused, each with its reason. When the queue is full,
    /// the whole report is refused (the reporter can send it again).
    pub(crate) fn report(
        &self,
        writer: &WriterHandle,
        items: &[crate::pushed::ReportItem],
    ) -> crate::pushed::ReportOutcome {
        let mut registry = self.pushed();
        let accepted = registry.accept(items, Utc::now());
        let mut outcome = accepted.outcome;
        if !accepted.measurements.is_empty()
            && !self.try_send_metrics(crate::analysis::PUSHED_SOURCE, accepted.measurements)
        {
            outcome.refused.push(crate::pushed::Refusal {
                index: 0,
                error: format!(
                    "the analyzer's queue is full: {} metrics not taken; send them again",
                    outcome.accepted
                ),
            });
            outcome.accepted = 0;
        }
        if !accepted.changed.is_empty() {
            self.submit_in_order(writer, vec![WriteOp::PushedSaved(accepted.changed)]);
        }
        outcome
    }

    /// Retires a pushed series on purpose, with its alerts; `false` when no such series is
    /// pushed.
    pub(crate) fn remove_pushed(
        &self,
        writer: &WriterHandle,
        key: crate::pushed::SeriesKey,
    ) -> bool {
        if !self.pushed().remove(&key) {
            return false;
        }
        self.submit_in_order(writer, vec![WriteOp::PushedDeleted(key)]);
        self.wake_for_pushed();
        true
    }

    /// Asks the analyzer to apply the pushed series' changes now rather than at its next beat.
    fn wake_for_pushed(&self) {
        if let Some(addr) = self.addr() {
            addr.do_send(ApplyPushed);
        }
    }

    /// [`send_metrics`](Self::send_metrics), saying whether the batch was queued.
    fn try_send_metrics(&self, source: &str, batch: Vec<Measurement>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let n = batch.len() as u64;
        match self.inner.tx.try_send((source.to_string(), batch)) {
            Ok(()) => {
                self.inner.accepted.fetch_add(n, Ordering::Relaxed);
                self.wake();
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let total = self.inner.refused.fetch_add(n, Ordering::Relaxed) + n;
                tracing::warn!(
                    refused = n,
                    total_refused = total,
                    "analyzer queue full: measurements refused"
                );
                self.wake();
                false
            }
        }
    }

    fn wake(&self) {
        if !self.inner.wake_sent.swap(true, Ordering::AcqRel)
            && let Some(addr) = self.addr()
        {
            addr.do_send(Wake);
        }
    }

    /// Measurements accepted into the queue since start. Each becomes a row unless its value is
    /// not finite, the writer's queue refuses it (`rows_refused`), its buffer cap drops it
    /// (`rows_dropped`), or its batch crashed the analyzer three times (logged).
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Measurements refused since start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Batches waiting to be analyzed.
    pub fn queue_depth(&self) -> usize {
        self.inner.rx.len()
    }

    /// Raises (`Some`) or clears (`None`) a condition alert; the analyzer applies it within a
    /// second, and again after a restart until it is cleared.
    pub fn set_condition(&self, key: AlertKey, condition: Option<Condition>) {
        lock(&self.inner.conditions).insert(key, condition);
    }

    /// The wanted state of a condition not yet applied: `Some(Some(_))` raised, `Some(None)`
    /// cleared, `None` nothing pending.
    pub fn condition(&self, key: &AlertKey) -> Option<Option<Condition>> {
        lock(&self.inner.conditions).get(key).cloned()
    }

    /// Asks the current analyzer to forget a resource and the series of the add-on source
    /// `source` (a removed check, which may have reported on another monitor's resource).
    pub(crate) fn forget_with_source(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        source: Option<String>,
    ) {
        if let Some(addr) = self.addr() {
            addr.do_send(ForgetResource {
                resource_type,
                resource_id: resource_id.to_string(),
                source,
            });
        }
    }

    /// The latest values and alerts; `None` while no analyzer answers.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        self.addr()?.send(GetSnapshot).await.ok()
    }

    /// What `f` makes of the analyzer's core, read in place on the analyzer (`None` while it
    /// is loading); `None` while no analyzer answers.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(Option<&mut AnalyzerCore>) -> R + Send + 'static,
    ) -> Option<R> {
        self.addr()?.send(Inspect(Box::new(f))).await.ok()
    }

    /// Alert ids, announced alerts and silences, shared by every analyzer.
    pub fn memory(&self) -> &AlertMemory {
        &self.inner.memory
    }

    /// Sends changes to the writer behind any it refused earlier; what it refuses now waits
    /// with them for the analyzer to send again, in order.
    pub(crate) fn submit_in_order(&self, writer: &WriterHandle, ops: Vec<WriteOp>) {
        let mut unsent = lock(&self.inner.unsent);
        if !unsent.is_empty() {
            unsent.extend(ops);
        } else if let Err(refused) = writer.submit(ops) {
            unsent.extend(refused);
        }
    }

    /// Sends a request to the current analyzer, with an error for the operator when none runs.
    pub(crate) async fn ask<M, T>(&self, msg: M) -> Result<T, String>
    where
        M: Message<Result = Result<T, String>> + Send + 'static,
        T: Send + 'static,
        Analyzer: Handler<M>,
    {
        let addr = self
            .addr()
            .ok_or("the analyzer is restarting; try again in a moment")?;
        addr.send(msg)
            .await
            .map_err(|e| format!("analyzer unavailable: {e}"))?
    }
}

/// The analyzer actor.
pub struct Analyzer {
    settings: Arc<Settings>,
    handle: AnalyzerHandle,
    /// `None` until the active alerts are read back from the database.
    core: Option<AnalyzerCore>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    writer: WriterHandle,
    /// Batches analyzed by this instance (for fault injection).
    batches: u64,
    /// The writer's failure episodes and file incidents already turned into alerts.
    writer_seen: crate::conditions::WriterSeen,
    notifier: Notifier,
    _guard: ExitGuard,
}

impl Analyzer {
    /// A new analyzer; it reads the active alerts back from the database when started.
    pub fn new(
        settings: Arc<Settings>,
        handle: AnalyzerHandle,
        writer: WriterHandle,
        notifier: Notifier,
        guard: ExitGuard,
    ) -> Self {
        Analyzer {
            settings,
            handle,
            core: None,
            drain_waiters: Vec::new(),
            writer_seen: crate::conditions::WriterSeen::from(&writer.report()),
            writer,
            batches: 0,
            notifier,
            _guard: guard,
        }
    }

    /// Analyzes everything queued and hands the results to the writer in one go.
    fn drain(&mut self) {
        self.analyze_queued();
        self.hand_over_outgoing();
    }

    /// Sends the writer what analysis has left in the handle's outgoing buffer.
    fn hand_over_outgoing(&mut self) {
        let ops = std::mem::take(&mut *lock(&self.handle.inner.outgoing));
        if !ops.is_empty() {
            self.submit(ops);
        }
    }

    /// Analyzes everything queued. Each batch stays in the handle's in-flight slot until its
    /// results are in the handle's outgoing buffer.
    fn analyze_queued(&mut self) {
        if self.core.is_none() {
            return; // Still loading: the queue keeps everything.
        }
        self.handle.inner.wake_sent.store(false, Ordering::Release);
        let inner = self.handle.inner.clone();
        loop {
            let mut slot = lock(&inner.in_flight);
            if slot.is_none() {
                match inner.rx.try_recv() {
                    Ok((source, batch)) => {
                        *slot = Some(InFlight {
                            source,
                            batch,
                            attempts: 0,
                        })
                    }
                    Err(_) => return,
                }
            }
            let Some(in_flight) = slot.as_mut() else {
                return;
            };
            in_flight.attempts += 1;
            if in_flight.attempts > MAX_BATCH_ATTEMPTS {
                tracing::error!(
                    measurements = in_flight.batch.len(),
                    "dropping a batch that crashed the analyzer {MAX_BATCH_ATTEMPTS} times"
                );
                *slot = None;
                continue;
            }
            self.batches += 1;
            faults::check("analyzer", self.batches);
            let Some(core) = self.core.as_mut() else {
                return;
            };
            let analysis = core.analyze_from(&in_flight.source, &in_flight.batch, Utc::now());
            {
                let mut rollups = lock(&inner.rollups);
                for m in &analysis.metrics {
                    rollups.observe(m);
                }
            }
            let memory = &self.handle.inner.memory;
            memory.track(&analysis.events, core.engine_mut().next_id());
            memory.announce(&analysis.events, &self.notifier);
            inner.live.alert_events(&analysis.events);
            lock(&inner.outgoing).extend(analysis.into_write_ops());
            // Only now are the batch's results safe in the handle.
            *slot = None;
        }
    }

    /// Sends ops to the writer, keeping refused non-metric ops for a retry and preserving order.
    fn submit(&mut self, ops: Vec<WriteOp>) {
        self.retry_unsent();
        let mut unsent = lock(&self.handle.inner.unsent);
        if !unsent.is_empty() {
            // Older changes wait: these go behind them; metric rows may go ahead.
            let (metrics, keep): (Vec<_>, Vec<_>) =
                ops.into_iter().partition(WriteOp::is_droppable);
            unsent.extend(keep);
            let _ = self.writer.submit(metrics);
            return;
        }
        if let Err(refused) = self.writer.submit(ops) {
            let keep: Vec<WriteOp> = refused
                .into_iter()
                .filter(|op| !op.is_droppable())
                .collect();
            if !keep.is_empty() {
                tracing::warn!(
                    held = keep.len(),
                    "writer queue full: holding alert changes for retry"
                );
            }
            unsent.extend(keep);
        }
    }

    fn retry_unsent(&mut self) {
        let mut unsent = lock(&self.handle.inner.unsent);
        if unsent.is_empty() {
            return;
        }
        let ops: Vec<WriteOp> = unsent.drain(..).collect();
        if let Err(ops) = self.writer.submit(ops) {
            unsent.extend(ops);
        }
    }

    fn emit(&mut self, events: Vec<AlertEvent>) {
        let memory = &self.handle.inner.memory;
        if let Some(core) = self.core.as_mut() {
            memory.track(&events, core.engine_mut().next_id());
        }
        memory.announce(&events, &self.notifier);
        self.handle.inner.live.alert_events(&events);
        let ops = events.iter().map(write_op).collect();
        self.submit(ops);
    }

    /// Applies the wanted conditions (and the writer's health) to the alert engine.
    fn reconcile_conditions(&mut self) {
        if self.core.is_none() {
            return; // Still loading: nothing is consumed until the engine can take it.
        }
        let report = self.writer.report();
        let db_changes = self
            .writer_seen
            .changes(&self.settings.db_path.display().to_string(), &report);
        let wanted: Vec<(AlertKey, Option<Condition>)> = {
            let mut conditions = lock(&self.handle.inner.conditions);
            let wanted = conditions
                .iter()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect();
            // Cleared conditions are applied once, then forgotten.
            conditions.retain(|_, c| c.is_some());
            wanted
        };
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let now = Utc::now();
        let mut events = Vec::new();
        for (key, condition) in wanted.into_iter().chain(db_changes) {
            let engine = core.engine_mut();
            let event = match condition {
                Some(c) => engine.raise(key, c, now),
                None => engine.clear(&key, now),
            };
            events.extend(event);
        }
        self.emit(events);
    }

    /// Sweeps the pushed series: the values of those gone stale or removed leave the snapshot
    /// (their alerts resolve), and each changed resource's `metric_stale` alert opens or
    /// resolves.
    fn apply_pushed(&mut self) {
        let Some(core) = self.core.as_mut() else {
            return; // Still loading: the registry keeps what is to apply.
        };
        let now = Utc::now();
        let (retired, changes) = {
            let mut registry = lock(&self.handle.inner.pushed);
            registry.sweep(now);
            (registry.take_retired(), registry.take_stale_changes(now))
        };
        let mut events = Vec::new();
        for (t, id, metric) in retired {
            events.extend(core.retire_series(t, &id, &metric, now));
        }
        for (key, condition) in changes {
            let engine = core.engine_mut();
            events.extend(match condition {
                Some(c) => engine.raise(key, c, now),
                None => engine.clear(&key, now),
            });
        }
        if !events.is_empty() {
            self.emit(events);
        }
    }

    /// Hands the writer the rollup buckets that closed (all of them, the open ones too, when
    /// `all`: at shutdown).
    fn write_rollups(&mut self, all: bool) {
        let rows = {
            let mut rollups = lock(&self.handle.inner.rollups);
            if all {
                rollups.take_all()
            } else {
                rollups.take_closed(Utc::now())
            }
        };
        if !rows.is_empty() {
            self.submit(vec![WriteOp::Rollups(rows)]);
        }
    }

    fn loaded(&mut self, stored: StoredAlertState) {
        let mut core = AnalyzerCore::new(self.settings.rules.clone(), self.settings.alert_cooldown);
        let memory = &self.handle.inner.memory;
        if let Some(silences) = stored.silences {
            memory.set_silences(silences);
        }
        // What a predecessor announced but the writer has not landed yet counts too.
        let first = memory.next_id() == 0;
        let alerts = memory.merge(stored.alerts);
        tracing::debug!(active = alerts.len(), "analyzer restored its alert state");
        if first {
            // Sinks heard about these before the daemon restarted; Alertmanager needs them again.
            memory.restored(&alerts, &self.notifier);
        }
        core.restore(alerts);
        core.engine_mut()
            .set_next_id(stored.next_id.max(memory.next_id()));
        memory.track(&[], core.engine_mut().next_id());
        self.core = Some(core);
        self.drain();
        for waiter in self.drain_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// What a starting analyzer reads back from the database.
#[derive(Default)]
struct StoredAlertState {
    alerts: Vec<HealthAlert>,
    /// Read only when nobody set them yet (a daemon sets them at start).
    silences: Option<Vec<Silence>>,
    next_id: i64,
}

/// Reads the active alerts, the next alert id and (unless known) the silences, for a starting
/// analyzer.
fn load_alert_state(db: &std::path::Path, want_silences: bool) -> anyhow::Result<StoredAlertState> {
    let read = |conn: &rusqlite::Connection| -> rusqlite::Result<StoredAlertState> {
        Ok(StoredAlertState {
            alerts: query::active_alerts(conn)?,
            silences: if want_silences {
                Some(query::active_silences(conn, Utc::now())?)
            } else {
                None
            },
            next_id: query::next_alert_id(conn)?,
        })
    };
    match store::read_even_when_full(db, read)? {
        Some(state) => Ok(state),
        None => Ok(StoredAlertState {
            next_id: 1,
            ..Default::default()
        }),
    }
}

impl Actor for Analyzer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        // What a predecessor analyzed before it died goes to the writer before the database
        // is read back, as if it had been handed over at once.
        self.hand_over_outgoing();
        let flushed = self.writer.flush();
        let db: PathBuf = self.settings.db_path.clone();
        let want_silences = !self.handle.inner.memory.silences_loaded();
        let load = async move {
            // Alerts a previous analyzer queued must be in the database before we read it.
            let _ = tokio::time::timeout(FLUSH_WAIT, flushed).await;
            actix_rt::task::spawn_blocking(move || load_alert_state(&db, want_silences)).await
        };
        ctx.spawn(load.into_actor(self).map(|result, act, _| {
            let stored = match result {
                Ok(Ok(stored)) => stored,
                Ok(Err(e)) => {
                    tracing::error!("cannot read active alerts back; starting without them: {e:#}");
                    StoredAlertState::default()
                }
                Err(e) => {
                    tracing::error!("reading active alerts failed: {e}");
                    StoredAlertState::default()
                }
            };
            act.loaded(stored);
        }));
        super::cadence::run_on_beat(ctx, Duration::from_secs(1), Duration::ZERO, |act, _| {
            act.retry_unsent();
            act.reconcile_conditions();
            // A wake-up lost with a dead predecessor must not strand the queue.
            act.drain();
            // After the drain: a report queued before a removal is analyzed before it.
            act.apply_pushed();
            act.write_rollups(false);
        });
    }
}

impl Handler<Wake> for Analyzer {
    type Result = ();
    fn handle(&mut self, _: Wake, _: &mut Self::Context) {
        self.drain();
    }
}

impl Handler<Reconfigure> for Analyzer {
    type Result = ();
    fn handle(&mut self, msg: Reconfigure, _: &mut Self::Context) {
        // What is queued was measured under the old rules: it is judged by them.
        self.drain();
        if let Some(core) = self.core.as_mut() {
            core.set_rules(msg.0.rules.clone());
            core.engine_mut().set_cooldown(msg.0.alert_cooldown);
        }
        self.settings = msg.0;
    }
}

impl Handler<ApplyPushed> for Analyzer {
    type Result = ();
    fn handle(&mut self, _: ApplyPushed, _: &mut Self::Context) {
        self.drain();
        self.apply_pushed();
    }
}

impl Handler<ForgetResource> for Analyzer {
    type Result = ();
    fn handle(&mut self, msg: ForgetResource, _: &mut Self::Context) {
        // The collector is already stopped: what it queued is analyzed first, then forgotten.
        self.drain();
        // Conditions raised for it (a death, a failed collector) go with it.
        lock(&self.handle.inner.conditions).retain(|k, _| {
            !crate::model::belongs_to(
                k.resource_type,
                &k.resource_id,
                msg.resource_type,
                &msg.resource_id,
            )
        });
        let now = Utc::now();
        let rows = lock(&self.handle.inner.rollups).forget(msg.resource_type, &msg.resource_id);
        if !rows.is_empty() {
            self.submit(vec![WriteOp::Rollups(rows)]);
        }
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let mut events = core.forget_resource(msg.resource_type, &msg.resource_id, now);
        if let Some(source) = &msg.source {
            events.extend(core.forget_source(source, now));
        }
        self.emit(events);
    }
}

impl Handler<GetSnapshot> for Analyzer {
    type Result = Snapshot;
    fn handle(&mut self, _: GetSnapshot, _: &mut Self::Context) -> Snapshot {
        match &self.core {
            Some(core) => Snapshot {
                latest: core.latest().cloned().collect(),
                active_alerts: core.active_alerts().cloned().collect(),
            },
            None => Snapshot::default(),
        }
    }
}

impl<R: Send + 'static> Handler<Inspect<R>> for Analyzer {
    type Result = MessageResult<Inspect<R>>;
    fn handle(&mut self, msg: Inspect<R>, _: &mut Self::Context) -> Self::Result {
        MessageResult((msg.0)(self.core.as_mut()))
    }
}

impl Handler<Acknowledge> for Analyzer {
    type Result = Result<HealthAlert, String>;
    fn handle(&mut self, msg: Acknowledge, _: &mut Self::Context) -> Self::Result {
        let core = self
            .core
            .as_mut()
            .ok_or("the analyzer is still loading; try again in a moment")?;
        let now = Utc::now();
        let alert = core
            .engine_mut()
            .acknowledge(msg.id, now)
            .ok_or_else(|| format!("no active alert has id {}", msg.id))?;
        tracing::info!(
            alert_id = msg.id,
            by = %msg.by,
            resource_type = alert.resource_type.as_str(),
            resource_id = %alert.resource_id,
            alert_type = %alert.alert_type,
            "alert acknowledged: reminders stop until it escalates"
        );
        self.submit(vec![WriteOp::AlertAcknowledged {
            id: msg.id,
            key: Some(alert.key()),
            at: alert.acknowledged_at.unwrap_or(now),
            by: msg.by,
        }]);
        Ok(alert)
    }
}

impl Handler<Drain> for Analyzer {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        self.drain();
        self.retry_unsent();
        let (tx, rx) = oneshot::channel();
        if self.core.is_some() {
            let _ = tx.send(());
        } else {
            self.drain_waiters.push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<StopChild> for Analyzer {
    type Result = ();
    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        self.retry_unsent();
        // The open minutes too: they merge with what a next start adds to them.
        self.write_rollups(true);
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::writer::{WriterMsg, detached_handle};
    use crate::model::ResourceType;

    #[actix_rt::test]
    async fn the_batches_of_one_cycle_reach_the_writer_in_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Arc::new(Settings {
            db_path: dir.path().join("absent.db"),
            ..Settings::default()
        });
        let (writer, rx) = detached_handle(64);
        // A stand-in writer thread: answers flushes and passes on what it is handed.
        let (ops_tx, ops_rx) = std::sync::mpsc::channel::<Vec<WriteOp>>();
        std::thread::spawn(move || {
            while let Ok(msg) = rx.recv() {
                match msg {
                    WriterMsg::Ops(ops) => {
                        let _ = ops_tx.send(ops);
                    }
                    WriterMsg::Flush(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                    _ => {}
                }
            }
        });
        // The test's own way in: a flush it sends is answered after everything sent before.
        let writer_probe = writer.clone();
        let handle = AnalyzerHandle::default();
        let addr = Analyzer::new(
            settings,
            handle.clone(),
            writer,
            Notifier::default(),
            ExitGuard::detached("analyzer"),
        )
        .start();
        handle.set(Some(addr.clone()));
        addr.send(Drain).await.unwrap(); // Loaded.
        writer_probe.flush().await.unwrap().unwrap();
        while ops_rx.try_recv().is_ok() {}
        // Three collectors' results, as one delivery from the runner brings them.
        for id in ["w1", "w2", "w3"] {
            let m = Measurement::now(ResourceType::Workspace, id, "workspace_size", 1.0, "bytes");
            handle.send_metrics(&format!("workspace:{id}"), vec![m]);
        }
        addr.send(Drain).await.unwrap();
        // The stand-in passes messages on from its own thread: once it has answered this
        // flush, it has passed on every message the analyzer sent before.
        writer_probe.flush().await.unwrap().unwrap();
        let messages: Vec<Vec<WriteOp>> = ops_rx.try_iter().collect();
        let with_rows: Vec<usize> = messages
            .iter()
            .map(|ops| {
                ops.iter()
                    .map(|op| match op {
                        WriteOp::Metrics(rows) => rows.len(),
                        _ => 0,
                    })
                    .sum()
            })
            .filter(|rows| *rows > 0)
            .collect();
        assert_eq!(with_rows, [3], "one message with every row: {messages:?}");
    }
}
