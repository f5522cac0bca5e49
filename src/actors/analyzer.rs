//! The analyzer actor: feeds measurements through `AnalyzerCore`, sends rows to the writer and
//! alert events to the notifier, and answers snapshot requests.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::oneshot;

use super::writer::WriterHandle;
use super::{ExitGuard, StopChild};
use crate::analysis::AnalyzerCore;
use crate::config::Settings;
use crate::model::{HealthAlert, HealthMetric, Measurement, ResourceType};
use crate::notify;
use crate::store::write::WriteOp;
use crate::store::{self, query};

/// Messages the analyzer's mailbox holds before senders are refused.
pub const MAILBOX_CAPACITY: usize = 8192;
/// Measurements held while the alert state loads, before new ones are dropped.
const BACKLOG_CAP: usize = 200_000;
/// How long a starting analyzer waits for the writer to land a predecessor's alerts.
const FLUSH_WAIT: Duration = Duration::from_secs(3);

/// One collector cycle's readings.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Metrics(pub Vec<Measurement>);

/// A monitor was removed: forget its values and resolve its alerts.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ForgetResource {
    pub resource_type: ResourceType,
    pub resource_id: String,
}

/// Asks for the latest values and active alerts.
#[derive(Message, Debug)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// Answered once every message sent before it is handled and its rows are queued for the writer.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Drain;

/// What the analyzer knows now.
#[derive(Debug, Clone, Default, MessageResponse)]
pub struct Snapshot {
    pub latest: Vec<HealthMetric>,
    pub active_alerts: Vec<HealthAlert>,
}

/// The stable way to reach whichever analyzer is current: collectors keep this, never an `Addr`,
/// so a restarted analyzer is found without them noticing.
#[derive(Clone, Default)]
pub struct AnalyzerHandle {
    slot: Arc<RwLock<Option<Addr<Analyzer>>>>,
    refused: Arc<AtomicU64>,
}

impl AnalyzerHandle {
    /// Points the handle at a new analyzer.
    pub fn set(&self, addr: Option<Addr<Analyzer>>) {
        if let Ok(mut slot) = self.slot.write() {
            *slot = addr;
        }
    }

    /// The current analyzer, if one runs.
    pub fn addr(&self) -> Option<Addr<Analyzer>> {
        self.slot.read().ok().and_then(|s| s.clone())
    }

    /// Hands measurements over without blocking; refused ones are counted.
    pub fn send_metrics(&self, batch: Vec<Measurement>) {
        let n = batch.len() as u64;
        let sent = self
            .addr()
            .is_some_and(|addr| addr.try_send(Metrics(batch)).is_ok());
        if !sent {
            let total = self.refused.fetch_add(n, Ordering::Relaxed) + n;
            tracing::warn!(
                refused = n,
                total_refused = total,
                "analyzer busy or restarting: measurements refused"
            );
        }
    }

    /// Measurements refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Asks the current analyzer to forget a resource.
    pub fn forget(&self, resource_type: ResourceType, resource_id: &str) {
        if let Some(addr) = self.addr() {
            addr.do_send(ForgetResource {
                resource_type,
                resource_id: resource_id.to_string(),
            });
        }
    }

    /// The latest values and alerts; `None` while no analyzer answers.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        self.addr()?.send(GetSnapshot).await.ok()
    }
}

/// The analyzer actor.
pub struct Analyzer {
    settings: Arc<Settings>,
    /// `None` until the active alerts are read back from the database.
    core: Option<AnalyzerCore>,
    backlog: Vec<Measurement>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    writer: WriterHandle,
    /// Alert and monitor changes the writer refused: retried, never dropped.
    unsent: VecDeque<WriteOp>,
    _guard: ExitGuard,
}

impl Analyzer {
    /// A new analyzer; it reads the active alerts back from the database when started.
    pub fn new(settings: Arc<Settings>, writer: WriterHandle, guard: ExitGuard) -> Self {
        Analyzer {
            settings,
            core: None,
            backlog: Vec::new(),
            drain_waiters: Vec::new(),
            writer,
            unsent: VecDeque::new(),
            _guard: guard,
        }
    }

    fn process(&mut self, batch: Vec<Measurement>) {
        let Some(core) = self.core.as_mut() else {
            if self.backlog.len() + batch.len() > BACKLOG_CAP {
                tracing::warn!(
                    dropped = batch.len(),
                    "analyzer still loading: backlog full"
                );
            } else {
                self.backlog.extend(batch);
            }
            return;
        };
        // NaN cannot be stored (the column is NOT NULL) and says nothing: skip it.
        let batch: Vec<Measurement> = batch.into_iter().filter(|m| m.value.is_finite()).collect();
        let analysis = core.analyze(batch, Utc::now());
        for event in &analysis.events {
            notify::log_event(event);
        }
        self.submit(analysis.into_write_ops());
    }

    /// Sends ops to the writer, keeping refused non-metric ops for a retry and preserving order.
    fn submit(&mut self, ops: Vec<WriteOp>) {
        self.retry_unsent();
        if !self.unsent.is_empty() {
            let (metrics, keep): (Vec<_>, Vec<_>) =
                ops.into_iter().partition(WriteOp::is_droppable);
            self.unsent.extend(keep);
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
            self.unsent.extend(keep);
        }
    }

    fn retry_unsent(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let ops: Vec<WriteOp> = self.unsent.drain(..).collect();
        if let Err(ops) = self.writer.submit(ops) {
            self.unsent.extend(ops);
        }
    }

    fn loaded(&mut self, alerts: Vec<HealthAlert>) {
        let mut core = AnalyzerCore::new(self.settings.rules.clone(), self.settings.alert_cooldown);
        tracing::debug!(active = alerts.len(), "analyzer restored its alert state");
        core.restore(alerts);
        self.core = Some(core);
        let backlog = std::mem::take(&mut self.backlog);
        if !backlog.is_empty() {
            self.process(backlog);
        }
        for waiter in self.drain_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// Reads the active alerts, for a starting analyzer.
fn load_active_alerts(db: &std::path::Path) -> anyhow::Result<Vec<HealthAlert>> {
    match store::open_read_only(db)? {
        Some(conn) => Ok(query::active_alerts(&conn)?),
        None => Ok(Vec::new()),
    }
}

impl Actor for Analyzer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let flushed = self.writer.flush();
        let db: PathBuf = self.settings.db_path.clone();
        let load = async move {
            // Alerts a previous analyzer queued must be in the database before we read it.
            let _ = tokio::time::timeout(FLUSH_WAIT, flushed).await;
            actix_rt::task::spawn_blocking(move || load_active_alerts(&db)).await
        };
        ctx.spawn(load.into_actor(self).map(|result, act, _| {
            let alerts = match result {
                Ok(Ok(alerts)) => alerts,
                Ok(Err(e)) => {
                    tracing::error!("cannot read active alerts back; starting without them: {e:#}");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!("reading active alerts failed: {e}");
                    Vec::new()
                }
            };
            act.loaded(alerts);
        }));
        ctx.run_interval(Duration::from_secs(1), |act, _| act.retry_unsent());
    }
}

impl Handler<Metrics> for Analyzer {
    type Result = ();
    fn handle(&mut self, msg: Metrics, _: &mut Self::Context) {
        self.process(msg.0);
    }
}

impl Handler<ForgetResource> for Analyzer {
    type Result = ();
    fn handle(&mut self, msg: ForgetResource, _: &mut Self::Context) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let events = core.forget_resource(msg.resource_type, &msg.resource_id, Utc::now());
        for event in &events {
            notify::log_event(event);
        }
        let ops = events.iter().map(crate::analysis::write_op).collect();
        self.submit(ops);
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

impl Handler<Drain> for Analyzer {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
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
        ctx.stop();
    }
}
