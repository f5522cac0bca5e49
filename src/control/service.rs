//! What the daemon answers, independent of transport: the control socket and the HTTP API both
//! call these.

use actix::prelude::*;
use chrono::Utc;

use super::protocol::{
    MonitorInfo, monitor_infos, validate_monitor, validate_resource_id, validate_silence,
};
use crate::actors::analyzer::Acknowledge;
use crate::actors::supervisor::{
    AddMonitor, GetLive, RemoveMonitor, Shutdown, Supervisor, SupervisorDeps,
};
use crate::model::{
    AddOutcome, HealthAlert, MonitorKind, MonitorSpec, ResourceType, Silence, validate_id,
};
use crate::store::maintenance::{MaintenanceOutcome, MaintenanceTask, cutoff};
use crate::store::write::WriteOp;
use crate::store::{self, query};
use crate::summary::{self, Summary, SummaryInputs};

/// Most alerts one listing returns.
pub const ALERT_LIST_LIMIT: usize = 10_000;

/// A cheap handle to the running daemon's answers.
#[derive(Clone)]
pub struct Service {
    pub supervisor: Addr<Supervisor>,
    pub deps: SupervisorDeps,
}

impl Service {
    /// A service answering from this supervisor and these shared parts.
    pub fn new(supervisor: Addr<Supervisor>, deps: SupervisorDeps) -> Self {
        Service { supervisor, deps }
    }

    /// The live summary: the supervisor's and analyzer's views plus the database's counts.
    pub async fn summary(&self) -> Result<Summary, String> {
        let now = Utc::now();
        let live = self
            .supervisor
            .send(GetLive)
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))?;
        let snapshot = self.deps.analyzer.snapshot().await.unwrap_or_default();
        let db = self.deps.settings.db_path.clone();
        let stored = actix_rt::task::spawn_blocking(move || summary::read_stored(&db, now)).await;
        let mut warnings = Vec::new();
        let (recent, active_alerts) = match stored {
            Ok(Ok(stored)) => {
                // Alerts the writer has not landed yet (e.g. while the database is full) still show.
                let mut alerts = stored.active_alerts;
                let stored_keys: std::collections::HashSet<_> =
                    alerts.iter().map(|a| a.key()).collect();
                alerts.extend(
                    snapshot
                        .active_alerts
                        .into_iter()
                        .filter(|a| !stored_keys.contains(&a.key())),
                );
                (stored.recent, alerts)
            }
            Ok(Err(e)) => {
                warnings.push(format!("cannot read the database: {e:#}"));
                (Default::default(), snapshot.active_alerts)
            }
            Err(e) => {
                warnings.push(format!("cannot read the database: {e}"));
                (Default::default(), snapshot.active_alerts)
            }
        };
        let mut summary = summary::build(
            SummaryInputs {
                running: true,
                monitors: live.monitors,
                latest: snapshot.latest,
                active_alerts,
                recent,
                actors: live.actors,
                writer: Some(self.deps.writer.report()),
                measurements_accepted: self.deps.analyzer.accepted(),
                measurements_refused: self.deps.analyzer.refused(),
                analyzer_queue_depth: self.deps.analyzer.queue_depth() as u64,
                db_path: self.deps.settings.db_path.clone(),
                pid: Some(std::process::id()),
                warnings,
            },
            now,
        );
        summary.collector_cycles = self.deps.cycles.snapshot();
        summary.notifications = self.deps.notifier.report();
        summary.gastown_root = self
            .deps
            .settings
            .gastown
            .as_ref()
            .map(|t| t.root.display().to_string());
        Ok(summary)
    }

    /// The monitors with their collectors' states.
    pub async fn monitors(&self) -> Result<Vec<MonitorInfo>, String> {
        let live = self
            .supervisor
            .send(GetLive)
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))?;
        Ok(monitor_infos(
            &live.monitors,
            &self.deps.settings,
            &live.actors,
        ))
    }

    /// Adds (or replaces) a monitor after validating it; it is persisted and started.
    pub async fn add(&self, monitor: MonitorSpec) -> Result<AddOutcome, String> {
        validate_monitor(&monitor)?;
        self.supervisor
            .send(AddMonitor(monitor))
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))?
    }

    /// Removes a monitor: its collector stops and its alerts resolve.
    pub async fn remove(&self, kind: MonitorKind, id: String) -> Result<(), String> {
        validate_id(&id)?;
        self.supervisor
            .send(RemoveMonitor { kind, id })
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))?
    }

    /// Alerts newest first from the database: active ones, or with `all` the resolved too
    /// (at most [`ALERT_LIST_LIMIT`]).
    pub async fn alerts(&self, all: bool) -> Result<Vec<HealthAlert>, String> {
        let db = self.deps.settings.db_path.clone();
        let read = move || -> anyhow::Result<Vec<HealthAlert>> {
            match store::open_read_only(&db)? {
                Some(conn) => Ok(query::alerts(&conn, all, ALERT_LIST_LIMIT)?),
                None => Ok(Vec::new()),
            }
        };
        match actix_rt::task::spawn_blocking(read).await {
            Ok(Ok(alerts)) => Ok(alerts),
            Ok(Err(e)) => Err(format!("cannot read alerts: {e:#}")),
            Err(e) => Err(format!("cannot read alerts: {e}")),
        }
    }

    /// Acknowledges an active alert; `by` is recorded with it.
    pub async fn ack(&self, id: i64, by: String) -> Result<HealthAlert, String> {
        self.deps.analyzer.ask(Acknowledge { id, by }).await
    }

    /// Adds (or replaces) a silence after validating it; it applies at once and is persisted.
    pub async fn silence_add(&self, silence: Silence) -> Result<(), String> {
        validate_silence(&silence)?;
        self.deps.analyzer.memory().add_silence(silence.clone());
        self.persist(WriteOp::SilenceSaved(silence));
        Ok(())
    }

    /// Removes a resource's silences; answers how many were in force.
    pub async fn silence_remove(
        &self,
        resource_type: ResourceType,
        resource_id: String,
        metric: Option<String>,
    ) -> Result<usize, String> {
        validate_resource_id(resource_type, &resource_id)?;
        let removed = self.deps.analyzer.memory().remove_silences(
            resource_type,
            &resource_id,
            metric.as_deref(),
        );
        self.persist(WriteOp::SilencesRemoved {
            resource_type,
            resource_id,
            metric,
        });
        Ok(removed)
    }

    /// The silences in force.
    pub async fn silences(&self) -> Result<Vec<Silence>, String> {
        Ok(self.deps.analyzer.memory().silences(Utc::now()))
    }

    /// Hands a change to the writer, in order with any it refused before.
    fn persist(&self, op: WriteOp) {
        self.deps
            .analyzer
            .submit_in_order(&self.deps.writer, vec![op]);
    }

    /// Has the writer prune everything past retention now (metrics older than `retention_days`
    /// when given, else the configured retention).
    pub async fn prune(&self, retention_days: Option<f64>) -> Result<MaintenanceOutcome, String> {
        let settings = &self.deps.settings;
        let metrics = match retention_days {
            Some(days) if days.is_finite() && days > 0.0 && days <= 36_500.0 => {
                std::time::Duration::from_secs_f64(days * 86_400.0)
            }
            Some(days) => {
                return Err(format!(
                    "retention_days must be a number of days between 0 and 36500, got {days}"
                ));
            }
            None => settings.metric_retention,
        };
        let now = Utc::now();
        let task = MaintenanceTask::Prune {
            metrics_before: cutoff(now, metrics),
            alerts_before: cutoff(now, settings.alert_retention),
        };
        self.maintain(task).await
    }

    /// Has the writer vacuum the database.
    pub async fn vacuum(&self) -> Result<MaintenanceOutcome, String> {
        self.maintain(MaintenanceTask::Vacuum).await
    }

    async fn maintain(&self, task: MaintenanceTask) -> Result<MaintenanceOutcome, String> {
        self.deps
            .writer
            .maintain(task)
            .await
            .map_err(|_| "the writer stopped before finishing the task".to_string())?
    }

    /// Asks for an orderly shutdown.
    pub fn shutdown(&self) {
        self.supervisor.do_send(Shutdown);
    }
}
