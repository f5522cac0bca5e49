//! What the daemon answers, independent of transport: the control socket and the HTTP API both
//! call these.

use chrono::Utc;
use serde::Serialize;

use super::protocol::{
    MonitorInfo, monitor_infos, validate_monitor, validate_resource_id, validate_silence,
};
use crate::actors::analyzer::Acknowledge;
use crate::actors::deps::DaemonDeps;
use crate::actors::supervisor::SupervisorHandle;
use crate::model::{
    AddOutcome, HealthAlert, MonitorKind, MonitorSpec, ResourceType, Silence, validate_id,
};
use crate::store::maintenance::{MaintenanceOutcome, MaintenanceTask, cutoff};
use crate::store::write::WriteOp;
use crate::store::{self, query};
use crate::summary::{self, Summary, SummaryInputs};

/// How long checking a monitor's paths may take: `stat` on a hung network mount never returns.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a check that touches the filesystem (a monitor's paths) on the blocking pool, never on
/// an event loop, giving up after [`CHECK_TIMEOUT`].
pub(crate) async fn off_the_loop<T: Send + 'static>(
    check: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, actix_rt::task::spawn_blocking(check)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("checking the monitor failed: {e}")),
        Err(_) => Err(format!(
            "checking the monitor's paths took over {}s (a hung mount?); nothing was changed",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// Most alerts one listing returns.
pub(crate) const ALERT_LIST_LIMIT: usize = 10_000;

/// What a `remove` over the control socket did. A repeated one (say, retried after the CLI
/// timed out while the first was applied) finds nothing to remove and says so: not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum RemoveOutcome {
    /// The monitor was there and is gone.
    #[serde(rename = "removed")]
    Removed,
    /// The monitor was not there: removed before (or never added).
    #[serde(rename = "already removed")]
    AlreadyRemoved,
}

/// What an `ack` did: the alert as acknowledged, and whether it already was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AckReply {
    /// The alert as now recorded; its fields sit at the top level of the answer.
    #[serde(flatten)]
    pub alert: HealthAlert,
    /// `acknowledged`, or `already acknowledged` for a repeated ack (the first time stands).
    pub outcome: &'static str,
}

/// What a `silence_add` did: `silenced`, or `unchanged` when the same silence was in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceOutcome {
    /// The silence is now in force (new, or replacing a different one).
    Silenced,
    /// The same silence was already in force.
    Unchanged,
}

/// What a `silence_remove` did: how many silences it ended, and `removed` or `already removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SilenceRemoval {
    /// How many silences were in force and are now ended.
    pub removed: usize,
    /// `removed`, or `already removed` when there were none.
    pub outcome: &'static str,
}

/// A cheap handle to the running daemon's answers.
#[derive(Clone)]
pub struct Service {
    /// Asks the supervisor for the monitors and the actors' states, and adds or removes monitors.
    pub supervisor: SupervisorHandle,
    /// The settings, analyzer, writer and other parts the children share.
    pub deps: DaemonDeps,
}

impl Service {
    /// A service answering from this supervisor and these shared parts.
    pub fn new(supervisor: SupervisorHandle, deps: DaemonDeps) -> Self {
        Service { supervisor, deps }
    }

    /// The live summary: the supervisor's and analyzer's views plus the database's counts.
    pub async fn summary(&self) -> Result<Summary, String> {
        self.summary_from(true).await
    }

    /// The summary from what the daemon holds, without reading the database: no recent
    /// counts, the analyzer's active alerts. What the dashboard shows every cycle, at a cost
    /// that does not grow with the database.
    pub async fn live_summary(&self) -> Result<Summary, String> {
        self.summary_from(false).await
    }

    async fn summary_from(&self, read_db: bool) -> Result<Summary, String> {
        let now = Utc::now();
        let live = self.supervisor.live().await?;
        let snapshot = self.deps.analyzer.snapshot().await.unwrap_or_default();
        let db = self.deps.settings.db_path.clone();
        // A path that leads to another file is not read: it is not ours, and a SQLite reader
        // in this process would share the shared-memory file our old connection still holds.
        let not_ours = self
            .deps
            .writer
            .report()
            .database_file
            .is_some_and(|i| i.ongoing);
        // Without the database, no thread hop: a wake-up of the blocking pool costs more than
        // the rest of a live summary (this project's VM charges 0.5 ms and more for one).
        let stored = if !read_db {
            Ok(Ok(summary::StoredState {
                recent: Default::default(),
                active_alerts: Vec::new(),
            }))
        } else {
            actix_rt::task::spawn_blocking(move || {
                if not_ours {
                    anyhow::bail!(
                        "the database path does not lead to the daemon's file; showing what the \
                     daemon holds"
                    );
                }
                summary::read_stored(&db, now)
            })
            .await
        };
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
                monitors: live.monitors.to_vec(),
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
        summary.pushed_series = self.deps.analyzer.pushed().len();
        summary.events = self.deps.current().events.then(crate::watch::stats);
        summary.config = serde_json::to_value(self.deps.live.load()).ok();
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
        let live = self.supervisor.live().await?;
        Ok(monitor_infos(
            &live.monitors,
            &self.deps.settings,
            &live.actors,
        ))
    }

    /// Adds (or replaces) a monitor after validating it; it is persisted and started.
    pub async fn add(&self, monitor: MonitorSpec) -> Result<AddOutcome, String> {
        let checked = monitor.clone();
        off_the_loop(move || validate_monitor(&checked)).await?;
        self.supervisor.add_monitor(monitor).await
    }

    /// Reloads the config file: validated first (a bad one is refused with its error, the old
    /// settings kept), then applied live where it can be; what cannot change until a restart
    /// is named in the answer and the log.
    pub async fn reload(&self) -> Result<super::reload::ReloadReply, String> {
        use super::reload;
        let current = self.deps.current();
        let Some(path) = current.config_path.clone() else {
            return Err(
                "the daemon was started without --config: there is no config file to reload".into(),
            );
        };
        let loaded =
            off_the_loop(move || reload::load(&current, &path).map_err(|e| format!("{e:#}"))).await;
        let (new, mut load) = match loaded {
            Ok(ok) => ok,
            Err(e) => {
                let message = format!("reload refused, the config in force stays: {e}");
                tracing::error!("{message}");
                return Err(message);
            }
        };
        let current = self.deps.current();
        let plan = reload::plan(&current, &new);
        let new = std::sync::Arc::new(new);
        load.reloads = self.deps.live.load().reloads + 1;
        self.deps.live.set(new.clone(), load.clone());
        if plan.reconfigure_analyzer
            && let Some(addr) = self.deps.analyzer.addr()
        {
            // A restarting analyzer builds itself from the new settings anyway.
            addr.do_send(crate::actors::analyzer::Reconfigure(new.clone()));
        }
        self.deps
            .analyzer
            .pushed()
            .set_limits(new.pushed.max_series, new.pushed.default_ttl);
        if plan.rebuild_sinks {
            let sinks = crate::notify::Notifier::spawn_with(
                &new.notify,
                crate::daemon::daemon_escalation_ledger(
                    &new,
                    &self.deps.analyzer,
                    &self.deps.writer,
                ),
            );
            self.deps
                .notifier
                .replace(sinks, std::time::Duration::from_secs(5));
            // New sinks that keep state (Alertmanager) learn of what is firing now.
            if let Some(snapshot) = self.deps.analyzer.snapshot().await {
                self.deps
                    .analyzer
                    .memory()
                    .restored(&snapshot.active_alerts, &self.deps.notifier);
            }
        }
        self.supervisor
            .reconfigured(crate::actors::supervisor::Reconfigured {
                restart_collectors: plan.restart_collectors,
                restart_town: plan.restart_town,
                checks: plan.checks_changed.then(|| new.checks.clone()),
            })
            .await?;
        tracing::info!(
            config = %load.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            sha256 = load.sha256.as_deref().unwrap_or(""),
            applied = ?plan.applied,
            needs_restart = ?plan.needs_restart,
            "config reloaded"
        );
        if !plan.needs_restart.is_empty() {
            tracing::warn!(
                settings = ?plan.needs_restart,
                "config reload: these changed but keep their old values until a restart"
            );
        }
        Ok(reload::ReloadReply { plan, config: load })
    }

    /// Takes a report of pushed metrics (see [`crate::pushed`]): the good ones are analyzed
    /// like any reading, the bad ones refused one by one.
    pub fn report(
        &self,
        metrics: &[crate::pushed::ReportItem],
    ) -> Result<crate::pushed::ReportOutcome, String> {
        let max = super::protocol::MAX_REPORT_METRICS;
        if metrics.len() > max {
            return Err(format!(
                "a report carries at most {max} metrics, this one {}; send it in parts",
                metrics.len()
            ));
        }
        Ok(self.deps.analyzer.report(&self.deps.writer, metrics))
    }

    /// Retires a pushed series on purpose: its value leaves the status and its alerts resolve.
    pub fn report_remove(
        &self,
        resource_type: ResourceType,
        resource_id: String,
        metric: String,
    ) -> Result<&'static str, String> {
        validate_id(&resource_id)?;
        let shown = format!("{resource_type}/{resource_id} {metric}");
        if self
            .deps
            .analyzer
            .remove_pushed(&self.deps.writer, (resource_type, resource_id, metric))
        {
            Ok("removed")
        } else {
            Err(format!("{shown} is not a pushed series"))
        }
    }

    /// Removes a monitor: its collector stops and its alerts resolve.
    pub async fn remove(&self, kind: MonitorKind, id: String) -> Result<(), String> {
        validate_id(&id)?;
        self.supervisor.remove_monitor(kind, id).await
    }

    /// Removes a monitor, idempotently: one that is not monitored (a repeated request) is
    /// `AlreadyRemoved`, not an error.
    pub(crate) async fn remove_idempotent(
        &self,
        kind: MonitorKind,
        id: String,
    ) -> Result<RemoveOutcome, String> {
        validate_id(&id)?;
        if !self.is_monitored(kind, &id).await? {
            return Ok(RemoveOutcome::AlreadyRemoved);
        }
        match self.remove(kind, id.clone()).await {
            Ok(()) => Ok(RemoveOutcome::Removed),
            // Another client removed it in between.
            Err(_) if !self.is_monitored(kind, &id).await? => Ok(RemoveOutcome::AlreadyRemoved),
            Err(e) => Err(e),
        }
    }

    async fn is_monitored(&self, kind: MonitorKind, id: &str) -> Result<bool, String> {
        let live = self.supervisor.live().await?;
        Ok(live
            .monitors
            .iter()
            .any(|m| m.kind() == kind && m.id() == id))
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

    /// Acknowledges an active alert; `by` is recorded with it. Idempotent: acknowledging it
    /// again keeps the first acknowledgement and answers `already acknowledged`, also once the
    /// alert has resolved since.
    pub async fn ack(&self, id: i64, by: String) -> Result<AckReply, String> {
        let acked_before = self.deps.analyzer.snapshot().await.is_some_and(|s| {
            s.active_alerts
                .iter()
                .any(|a| a.id == Some(id) && a.acknowledged_at.is_some())
        });
        let refused = match self.deps.analyzer.ask(Acknowledge { id, by }).await {
            Ok(alert) => {
                let outcome = if acked_before {
                    "already acknowledged"
                } else {
                    "acknowledged"
                };
                return Ok(AckReply { alert, outcome });
            }
            Err(e) => e,
        };
        // Not active: resolved since an earlier ack (say, one retried after a timeout), or
        // resolved unacknowledged, or unknown.
        let db = self.deps.settings.db_path.clone();
        let read = move || -> anyhow::Result<Option<HealthAlert>> {
            match store::open_read_only(&db)? {
                Some(conn) => Ok(query::alert_by_id(&conn, id)?),
                None => Ok(None),
            }
        };
        match actix_rt::task::spawn_blocking(read).await {
            Ok(Ok(Some(alert))) if alert.resolved && alert.acknowledged_at.is_some() => {
                Ok(AckReply {
                    alert,
                    outcome: "already acknowledged",
                })
            }
            Ok(Ok(Some(alert))) if alert.resolved => Err(format!(
                "no active alert has id {id}: it is already resolved{}",
                alert
                    .resolved_at
                    .map(|t| format!(" (at {})", t.to_rfc3339()))
                    .unwrap_or_default()
            )),
            _ => Err(refused),
        }
    }

    /// Adds (or replaces) a silence after validating it; it applies at once and is persisted.
    /// The same silence again is `Unchanged`.
    pub async fn silence_add(&self, silence: Silence) -> Result<SilenceOutcome, String> {
        validate_silence(&silence)?;
        let memory = self.deps.analyzer.memory();
        let unchanged = memory.silences(Utc::now()).contains(&silence);
        memory.add_silence(silence.clone());
        // Saved again even when unchanged: the same row, and sure to be there.
        self.persist(WriteOp::SilenceSaved(silence));
        Ok(if unchanged {
            SilenceOutcome::Unchanged
        } else {
            SilenceOutcome::Silenced
        })
    }

    /// Removes a resource's silences; answers how many were in force (none for a repeated
    /// request: `already removed`).
    pub async fn silence_remove(
        &self,
        resource_type: ResourceType,
        resource_id: String,
        metric: Option<String>,
    ) -> Result<SilenceRemoval, String> {
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
        Ok(SilenceRemoval {
            removed,
            outcome: if removed == 0 {
                "already removed"
            } else {
                "removed"
            },
        })
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
        self.supervisor.shutdown();
    }
}
