//! Write batches: everything that changes the database, applied in one transaction per batch.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, Transaction, params};

use crate::model::{
    AlertKey, HealthAlert, HealthMetric, MonitorKind, MonitorSpec, ResourceType, Silence,
    format_timestamp,
};

/// One change to the database.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Rows for `health_metrics`.
    Metrics(Vec<HealthMetric>),
    /// A new active alert row.
    AlertOpened(HealthAlert),
    /// New severity, message, metadata or notice time for the active row of the alert's key.
    AlertUpdated(HealthAlert),
    /// Marks the active row of the alert's key resolved.
    AlertResolved(HealthAlert),
    /// Adds or replaces a monitor.
    MonitorSaved(MonitorSpec),
    /// Forgets a monitor.
    MonitorDeleted(MonitorKind, String),
    /// Rollup buckets of series (`metric_rollups`), merged into rows already there.
    Rollups(Vec<crate::rollup::RollupRow>),
    /// Adds or replaces the definitions of pushed series (`pushed_series`).
    PushedSaved(Vec<crate::pushed::SeriesDef>),
    /// Forgets a pushed series (`report --remove`).
    PushedDeleted(crate::pushed::SeriesKey),
    /// Resolves every active alert of a resource (its monitor was removed while no daemon ran).
    ResourceAlertsResolved(ResourceType, String, DateTime<Utc>),
    /// Records an operator's acknowledgement of an active alert: the active row of `key` when
    /// given (the daemon's view), else the row `id` (an offline `ack`).
    AlertAcknowledged {
        /// The `health_alerts` row id; used only when `key` is `None`.
        id: i64,
        /// The alert's resource and type; `None` to go by `id` instead.
        key: Option<AlertKey>,
        /// When it was acknowledged (stored as `acknowledged_at`).
        at: DateTime<Utc>,
        /// Who acknowledged it: the operator's user name, as given to the control socket.
        by: String,
    },
    /// Adds a silence, replacing one on the same target.
    SilenceSaved(Silence),
    /// Removes the silences of a resource: all of them, or the one on `metric`.
    SilencesRemoved {
        /// The silenced resource's type.
        resource_type: ResourceType,
        /// The silenced resource's id (an agent name, a workspace path...).
        resource_id: String,
        /// The one metric (alert type) whose silence goes; `None` removes them all.
        metric: Option<String>,
    },
    /// Gas Town escalation `escalation_id` was opened for alert `alert_id`
    /// (`gastown_escalations`); replaces an earlier escalation of the same alert.
    EscalationOpened {
        /// The `health_alerts` row id of the alert.
        alert_id: i64,
        /// Gas Town's id of the escalation, as `gt escalate` printed it (e.g. `hq-e5tq`).
        escalation_id: String,
        /// The alert's resource type.
        resource_type: ResourceType,
        /// The alert's resource id (an agent, a workspace...).
        resource_id: String,
        /// The alert's type (its metric or condition).
        alert_type: String,
        /// The `gt escalate -s` level it was opened at.
        severity: String,
        /// When gt answered (stored as `escalated_at`).
        at: DateTime<Utc>,
    },
    /// Escalation `escalation_id` of alert `alert_id` was closed, for `reason`.
    EscalationClosed {
        /// The `health_alerts` row id of the alert.
        alert_id: i64,
        /// Gas Town's id of the escalation; a close of an older one of the alert is ignored.
        escalation_id: String,
        /// When gt answered (stored as `closed_at`).
        at: DateTime<Utc>,
        /// Why, as given to `gt escalate close --reason` (stored as `close_reason`).
        reason: String,
    },
}

impl WriteOp {
    /// How many rows this op carries, for counters and buffer accounting.
    pub fn rows(&self) -> usize {
        match self {
            WriteOp::Metrics(m) => m.len(),
            _ => 1,
        }
    }

    /// True for ops that may be dropped under memory pressure (metric rows); alerts never are.
    pub(crate) fn is_droppable(&self) -> bool {
        matches!(self, WriteOp::Metrics(_) | WriteOp::Rollups(_))
    }

    /// A rough in-memory size, for the writer's buffer cap.
    pub(crate) fn approx_bytes(&self) -> usize {
        match self {
            WriteOp::Metrics(m) => m
                .iter()
                .map(|r| 160 + r.resource_id.len() + r.metric_name.len())
                .sum(),
            WriteOp::AlertOpened(a) | WriteOp::AlertUpdated(a) | WriteOp::AlertResolved(a) => {
                300 + a.message.len()
            }
            WriteOp::Rollups(rows) => rows
                .iter()
                .map(|r| 80 + r.resource_id.len() + r.metric.len())
                .sum(),
            WriteOp::PushedSaved(defs) => defs
                .iter()
                .map(|d| 120 + d.resource_id.len() + d.metric.len())
                .sum(),
            WriteOp::MonitorSaved(_)
            | WriteOp::MonitorDeleted(..)
            | WriteOp::PushedDeleted(..)
            | WriteOp::ResourceAlertsResolved(..)
            | WriteOp::AlertAcknowledged { .. }
            | WriteOp::SilenceSaved(_)
            | WriteOp::SilencesRemoved { .. } => 200,
            WriteOp::EscalationOpened {
                resource_id,
                alert_type,
                ..
            } => 200 + resource_id.len() + alert_type.len(),
            WriteOp::EscalationClosed { reason, .. } => 200 + reason.len(),
        }
    }
}

/// Applies `ops` in one transaction: all of them land or none does.
pub fn apply(conn: &mut Connection, ops: &[WriteOp]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        // The hot path: one prepared insert for every metric row of the batch, and each
        // distinct timestamp formatted once (a collector's readings share theirs).
        let mut insert = None;
        let mut stamp: Option<(DateTime<Utc>, String)> = None;
        for op in ops {
            match op {
                WriteOp::Metrics(rows) => {
                    let stmt = match &mut insert {
                        Some(stmt) => stmt,
                        None => insert.insert(tx.prepare_cached(INSERT_METRIC)?),
                    };
                    for m in rows {
                        if stamp.as_ref().is_none_or(|(t, _)| *t != m.timestamp) {
                            stamp = Some((m.timestamp, format_timestamp(m.timestamp)));
                        }
                        let ts = stamp.as_ref().map(|(_, s)| s.as_str()).unwrap_or_default();
                        stmt.execute(params![
                            m.resource_type.as_str(),
                            m.resource_id,
                            m.metric_name,
                            m.value,
                            m.threshold_warning,
                            m.threshold_critical,
                            ts,
                            m.unit,
                            m.status.as_str(),
                        ])?;
                    }
                }
                other => apply_one(&tx, other)?,
            }
        }
    }
    tx.commit()
}

/// The insert of one metric row.
const INSERT_METRIC: &str = "INSERT INTO health_metrics (resource_type, resource_id,
    metric_name, value, threshold_warning, threshold_critical, timestamp, unit, status)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Updates the active row of the alert's key; returns how many rows changed (0 or 1).
fn update_active_alert(tx: &Transaction<'_>, a: &HealthAlert) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE health_alerts SET severity = ?4, message = ?5, metadata = ?6, last_notified_at = ?7,
            acknowledged_at = ?8
         WHERE resource_type = ?1 AND resource_id = ?2 AND alert_type = ?3 AND resolved = 0",
    )?
    .execute(params![
        a.resource_type.as_str(),
        a.resource_id,
        a.alert_type,
        a.severity.as_str(),
        a.message,
        a.metadata.to_string(),
        format_timestamp(a.last_notified_at),
        a.acknowledged_at.map(format_timestamp),
    ])
}

fn apply_one(tx: &Transaction<'_>, op: &WriteOp) -> rusqlite::Result<()> {
    match op {
        WriteOp::Metrics(_) => unreachable!("apply() inserts metric rows itself"),
        WriteOp::AlertOpened(a) => {
            // One active row per key, whatever happened before: if an analyzer that restarted
            // before the previous opening landed fires again, the open row is updated instead.
            if update_active_alert(tx, a)? > 0 {
                return Ok(());
            }
            // The analyzer numbers alerts so notices carry the id; a clash (an id taken by a
            // row written while it was not looking) falls back to SQLite's numbering.
            let taken = match a.id {
                Some(id) => tx
                    .prepare_cached("SELECT 1 FROM health_alerts WHERE id = ?1")?
                    .exists([id])?,
                None => false,
            };
            let id = if taken { None } else { a.id };
            tx.prepare_cached(
                "INSERT INTO health_alerts (resource_type, resource_id, alert_type, severity,
                    message, timestamp, metadata, resolved, resolved_at, last_notified_at, id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, NULL, ?8, ?9)",
            )?
            .execute(params![
                a.resource_type.as_str(),
                a.resource_id,
                a.alert_type,
                a.severity.as_str(),
                a.message,
                format_timestamp(a.timestamp),
                a.metadata.to_string(),
                format_timestamp(a.last_notified_at),
                id,
            ])?;
        }
        WriteOp::AlertUpdated(a) => {
            update_active_alert(tx, a)?;
        }
        WriteOp::AlertResolved(a) => {
            let at = a.resolved_at.unwrap_or_else(Utc::now);
            tx.prepare_cached(
                "UPDATE health_alerts SET resolved = 1, resolved_at = ?4
                 WHERE resource_type = ?1 AND resource_id = ?2 AND alert_type = ?3 AND resolved = 0",
            )?
            .execute(params![
                a.resource_type.as_str(),
                a.resource_id,
                a.alert_type,
                format_timestamp(at),
            ])?;
        }
        WriteOp::MonitorSaved(spec) => {
            tx.prepare_cached(
                "INSERT INTO monitors (kind, id, options, added_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, id) DO UPDATE SET options = excluded.options",
            )?
            .execute(params![
                spec.kind().as_str(),
                spec.id(),
                spec.options_json(),
                format_timestamp(Utc::now()),
            ])?;
        }
        WriteOp::MonitorDeleted(kind, id) => {
            tx.prepare_cached("DELETE FROM monitors WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind.as_str(), id])?;
        }
        WriteOp::Rollups(rows) => {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO metric_rollups (resource_type, resource_id, metric_name, width,
                    bucket_start, min, max, sum, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (resource_type, resource_id, metric_name, width, bucket_start)
                 DO UPDATE SET min = min(min, excluded.min), max = max(max, excluded.max),
                    sum = sum + excluded.sum, count = count + excluded.count",
            )?;
            for r in rows {
                stmt.execute(params![
                    r.resource_type.as_str(),
                    r.resource_id,
                    r.metric,
                    r.width,
                    r.bucket_start,
                    r.min,
                    r.max,
                    r.sum,
                    r.count as i64,
                ])?;
            }
        }
        WriteOp::PushedSaved(defs) => {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO pushed_series (resource_type, resource_id, metric_name, unit,
                    threshold_warning, threshold_critical, ttl_secs, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (resource_type, resource_id, metric_name) DO UPDATE SET
                    unit = excluded.unit, threshold_warning = excluded.threshold_warning,
                    threshold_critical = excluded.threshold_critical,
                    ttl_secs = excluded.ttl_secs, updated_at = excluded.updated_at",
            )?;
            let now = format_timestamp(Utc::now());
            for d in defs {
                stmt.execute(params![
                    d.resource_type.as_str(),
                    d.resource_id,
                    d.metric,
                    d.unit,
                    d.thresholds.map(|t| t.warning),
                    d.thresholds.map(|t| t.critical),
                    d.ttl_secs,
                    now,
                ])?;
            }
        }
        WriteOp::PushedDeleted((resource_type, resource_id, metric)) => {
            tx.prepare_cached(
                "DELETE FROM pushed_series
                 WHERE resource_type = ?1 AND resource_id = ?2 AND metric_name = ?3",
            )?
            .execute(params![resource_type.as_str(), resource_id, metric])?;
        }
        WriteOp::ResourceAlertsResolved(resource_type, resource_id, at) => {
            tx.prepare_cached(
                "UPDATE health_alerts SET resolved = 1, resolved_at = ?3
                 WHERE resolved = 0 AND ((resource_type = ?1 AND resource_id = ?2)
                    OR (?1 = 'workspace' AND resource_type = 'database'
                        AND substr(resource_id, 1, length(?2) + 1) = ?2 || '/'))",
            )?
            .execute(params![
                resource_type.as_str(),
                resource_id,
                format_timestamp(*at)
            ])?;
        }
        WriteOp::AlertAcknowledged { id, key, at, by } => match key {
            Some(k) => {
                tx.prepare_cached(
                    "UPDATE health_alerts SET acknowledged_at = ?4, acknowledged_by = ?5
                     WHERE resource_type = ?1 AND resource_id = ?2 AND alert_type = ?3
                        AND resolved = 0",
                )?
                .execute(params![
                    k.resource_type.as_str(),
                    k.resource_id,
                    k.alert_type,
                    format_timestamp(*at),
                    by
                ])?;
            }
            None => {
                tx.prepare_cached(
                    "UPDATE health_alerts SET acknowledged_at = ?2, acknowledged_by = ?3
                     WHERE id = ?1 AND resolved = 0",
                )?
                .execute(params![id, format_timestamp(*at), by])?;
            }
        },
        WriteOp::SilenceSaved(s) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO silences
                    (resource_type, resource_id, metric, created_at, expires_at, comment)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.resource_type.as_str(),
                s.resource_id,
                s.metric.as_deref().unwrap_or(""),
                format_timestamp(s.created_at),
                format_timestamp(s.expires_at),
                s.comment,
            ])?;
        }
        WriteOp::SilencesRemoved {
            resource_type,
            resource_id,
            metric,
        } => {
            tx.prepare_cached(
                "DELETE FROM silences WHERE resource_type = ?1 AND resource_id = ?2
                    AND (?3 IS NULL OR metric = ?3)",
            )?
            .execute(params![resource_type.as_str(), resource_id, metric])?;
        }
        WriteOp::EscalationOpened {
            alert_id,
            escalation_id,
            resource_type,
            resource_id,
            alert_type,
            severity,
            at,
        } => {
            // Another escalation of the alert replaces the row, open. The same one only fills
            // in its details: its close may have landed first (a refused opening sent again
            // later), and must stay.
            tx.prepare_cached(
                "INSERT INTO gastown_escalations (alert_id, escalation_id, resource_type,
                    resource_id, alert_type, severity, escalated_at, closed_at, close_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)
                 ON CONFLICT (alert_id) DO UPDATE SET
                    closed_at = CASE WHEN escalation_id IS excluded.escalation_id
                        THEN closed_at END,
                    close_reason = CASE WHEN escalation_id IS excluded.escalation_id
                        THEN close_reason END,
                    escalation_id = excluded.escalation_id,
                    resource_type = excluded.resource_type, resource_id = excluded.resource_id,
                    alert_type = excluded.alert_type, severity = excluded.severity,
                    escalated_at = excluded.escalated_at",
            )?
            .execute(params![
                alert_id,
                escalation_id,
                resource_type.as_str(),
                resource_id,
                alert_type,
                severity,
                format_timestamp(*at),
            ])?;
        }
        WriteOp::EscalationClosed {
            alert_id,
            escalation_id,
            at,
            reason,
        } => {
            // A close ahead of its opening leaves a closed row the opening completes (its
            // escalated_at stands in until then). A late close of an alert's earlier
            // escalation leaves the one that replaced it alone.
            tx.prepare_cached(
                "INSERT INTO gastown_escalations (alert_id, escalation_id, escalated_at,
                    closed_at, close_reason)
                 VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT (alert_id) DO UPDATE SET closed_at = excluded.closed_at,
                    close_reason = excluded.close_reason
                 WHERE escalation_id IS excluded.escalation_id AND closed_at IS NULL",
            )?
            .execute(params![
                alert_id,
                escalation_id,
                format_timestamp(*at),
                reason
            ])?;
        }
    }
    Ok(())
}

/// Deletes up to `limit` metric rows older than `metrics_before`, up to `limit` resolved alerts
/// resolved before `alerts_before` and up to `limit` escalations closed before it, in one short
/// transaction; returns how many went. Small batches keep the writer responsive while a large
/// backlog is pruned. Open escalations are never pruned: they are what a restart must close.
pub fn prune(
    conn: &mut Connection,
    metrics_before: DateTime<Utc>,
    alerts_before: DateTime<Utc>,
    limit: usize,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let metrics = tx
        .prepare_cached(
            "DELETE FROM health_metrics WHERE id IN (
                SELECT id FROM health_metrics WHERE timestamp < ?1 ORDER BY timestamp LIMIT ?2)",
        )?
        .execute(params![format_timestamp(metrics_before), limit as i64])?;
    let alerts = tx
        .prepare_cached(
            "DELETE FROM health_alerts WHERE id IN (
                SELECT id FROM health_alerts WHERE resolved = 1 AND resolved_at < ?1 LIMIT ?2)",
        )?
        .execute(params![format_timestamp(alerts_before), limit as i64])?;
    let escalations = tx
        .prepare_cached(
            "DELETE FROM gastown_escalations WHERE alert_id IN (
                SELECT alert_id FROM gastown_escalations
                WHERE closed_at IS NOT NULL AND closed_at < ?1 LIMIT ?2)",
        )?
        .execute(params![format_timestamp(alerts_before), limit as i64])?;
    // Minutes for two days, ten minutes as long as the metric rows (and never longer).
    let minutes_before = (Utc::now().timestamp() - crate::rollup::MINUTE_RETENTION_SECS)
        .min(metrics_before.timestamp());
    let mut rollups = 0;
    for (width, before) in [
        (crate::rollup::BUCKET_SECS, minutes_before),
        (crate::rollup::COARSE_SECS, metrics_before.timestamp()),
    ] {
        // The table has no rowid: its rows are picked by key.
        rollups += tx
            .prepare_cached(
                "DELETE FROM metric_rollups WHERE (resource_type, resource_id, metric_name,
                    width, bucket_start) IN (
                    SELECT resource_type, resource_id, metric_name, width, bucket_start
                    FROM metric_rollups WHERE width = ?1 AND bucket_start < ?2 LIMIT ?3)",
            )?
            .execute(params![width, before, limit as i64])?;
    }
    tx.commit()?;
    Ok(metrics + alerts + escalations + rollups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, Measurement, ResourceType, Thresholds};
    use crate::store::query;
    use crate::store::schema::migrate;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn metric(name: &'static str, value: f64) -> HealthMetric {
        HealthMetric::from_measurement(
            Measurement::now(ResourceType::Memory, "system", name, value, "%"),
            Some(Thresholds::new(80.0, 95.0)),
        )
    }

    fn alert() -> HealthAlert {
        let now = Utc::now();
        HealthAlert {
            id: None,
            resource_type: ResourceType::Memory,
            resource_id: "system".into(),
            alert_type: "memory_usage_percent".into(),
            severity: HealthStatus::Unhealthy,
            message: "memory high".into(),
            timestamp: now,
            metadata: serde_json::json!({"value": 85.0}),
            resolved: false,
            resolved_at: None,
            last_notified_at: now,
            acknowledged_at: None,
        }
    }

    #[test]
    fn alerts_keep_the_analyzers_ids_unless_taken() {
        let mut conn = db();
        let mut a = alert();
        a.id = Some(41);
        apply(&mut conn, &[WriteOp::AlertOpened(a.clone())]).unwrap();
        let ids: Vec<i64> = query::alerts(&conn, true, 10)
            .unwrap()
            .iter()
            .filter_map(|a| a.id)
            .collect();
        assert_eq!(ids, vec![41]);
        assert_eq!(query::next_alert_id(&conn).unwrap(), 42);
        // Another key asking for a taken id gets SQLite's next one instead.
        let mut b = alert();
        b.alert_type = "cpu_usage_percent".into();
        b.id = Some(41);
        apply(&mut conn, &[WriteOp::AlertOpened(b)]).unwrap();
        assert_eq!(query::alerts(&conn, true, 10).unwrap()[0].id, Some(42));
        // Pruned ids are never handed out again.
        conn.execute("DELETE FROM health_alerts", []).unwrap();
        assert_eq!(query::next_alert_id(&conn).unwrap(), 43);
    }

    #[test]
    fn acknowledgements_and_silences_are_recorded() {
        let mut conn = db();
        let mut a = alert();
        a.id = Some(7);
        let at = Utc::now();
        apply(
            &mut conn,
            &[
                WriteOp::AlertOpened(a),
                WriteOp::AlertAcknowledged {
                    id: 7,
                    key: None,
                    at,
                    by: "ops".into(),
                },
            ],
        )
        .unwrap();
        let stored = query::active_alerts(&conn).unwrap();
        assert_eq!(
            stored[0].acknowledged_at.map(format_timestamp),
            Some(format_timestamp(at))
        );
        let by: String = conn
            .query_row(
                "SELECT acknowledged_by FROM health_alerts WHERE id = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(by, "ops");

        let silence = |metric: Option<&str>, hours: i64| Silence {
            resource_type: ResourceType::Agent,
            resource_id: "a1".into(),
            metric: metric.map(String::from),
            created_at: at,
            expires_at: at + chrono::Duration::hours(hours),
            comment: Some("deploy".into()),
        };
        apply(
            &mut conn,
            &[
                WriteOp::SilenceSaved(silence(None, 1)),
                WriteOp::SilenceSaved(silence(None, 2)),
                WriteOp::SilenceSaved(silence(Some("agent_memory_mb"), 1)),
                WriteOp::SilenceSaved(silence(Some("agent_alive"), -1)),
            ],
        )
        .unwrap();
        let active = query::active_silences(&conn, at).unwrap();
        assert_eq!(active.len(), 2, "{active:?}");
        assert_eq!(active[0].metric.as_deref(), Some("agent_memory_mb"));
        assert_eq!(
            format_timestamp(active[1].expires_at),
            format_timestamp(silence(None, 2).expires_at),
            "replaced"
        );
        apply(
            &mut conn,
            &[WriteOp::SilencesRemoved {
                resource_type: ResourceType::Agent,
                resource_id: "a1".into(),
                metric: Some("agent_memory_mb".into()),
            }],
        )
        .unwrap();
        assert_eq!(query::active_silences(&conn, at).unwrap().len(), 1);
        apply(
            &mut conn,
            &[WriteOp::SilencesRemoved {
                resource_type: ResourceType::Agent,
                resource_id: "a1".into(),
                metric: None,
            }],
        )
        .unwrap();
        assert!(
            query::active_silences(&conn, at - chrono::Duration::days(1))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn storing_two_metrics_gives_two_rows() {
        let mut conn = db();
        let ops = [WriteOp::Metrics(vec![
            metric("memory_usage_percent", 50.0),
            metric("memory_usage_percent", 85.0),
        ])];
        apply(&mut conn, &ops).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM health_metrics"), 2);
        let status: String = conn
            .query_row(
                "SELECT status FROM health_metrics WHERE value = 85.0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(status, "unhealthy");
    }

    #[test]
    fn storing_one_alert_gives_one_row() {
        let mut conn = db();
        apply(&mut conn, &[WriteOp::AlertOpened(alert())]).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM health_alerts"), 1);
        let meta: String = conn
            .query_row("SELECT metadata FROM health_alerts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&meta).unwrap()["value"],
            85.0
        );
    }

    #[test]
    fn updates_and_resolution_touch_only_the_active_row_of_the_key() {
        let mut conn = db();
        let mut a = alert();
        apply(&mut conn, &[WriteOp::AlertOpened(a.clone())]).unwrap();
        a.resolved = true;
        a.resolved_at = Some(Utc::now());
        apply(&mut conn, &[WriteOp::AlertResolved(a.clone())]).unwrap();
        let mut b = alert();
        apply(&mut conn, &[WriteOp::AlertOpened(b.clone())]).unwrap();
        b.severity = HealthStatus::Critical;
        apply(&mut conn, &[WriteOp::AlertUpdated(b)]).unwrap();
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM health_alerts WHERE resolved = 0 AND severity = 'critical'"
            ),
            1
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM health_alerts WHERE resolved = 1 AND severity = 'unhealthy'
                 AND resolved_at IS NOT NULL"
            ),
            1
        );
    }

    #[test]
    fn opening_an_alert_twice_keeps_one_active_row() {
        let mut conn = db();
        let first = alert();
        let mut again = alert();
        again.severity = HealthStatus::Critical;
        apply(&mut conn, &[WriteOp::AlertOpened(first)]).unwrap();
        apply(&mut conn, &[WriteOp::AlertOpened(again)]).unwrap();
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM health_alerts WHERE resolved = 0"
            ),
            1
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM health_alerts WHERE severity = 'critical'"
            ),
            1
        );
    }

    #[test]
    fn pruning_removes_old_metrics_and_old_resolved_alerts_only() {
        let mut conn = db();
        let now = Utc::now();
        let old = now - chrono::Duration::days(10);
        let mut rows = Vec::new();
        for i in 0..25 {
            let mut m = metric("memory_usage_percent", i as f64);
            m.timestamp = if i < 20 { old } else { now };
            rows.push(m);
        }
        let mut resolved_long_ago = alert();
        resolved_long_ago.resolved_at = Some(old);
        let mut resolved_lately = alert();
        resolved_lately.alert_type = "other".into();
        resolved_lately.resolved_at = Some(now);
        apply(
            &mut conn,
            &[
                WriteOp::Metrics(rows),
                WriteOp::AlertOpened(resolved_long_ago.clone()),
                WriteOp::AlertResolved(resolved_long_ago),
                WriteOp::AlertOpened(resolved_lately.clone()),
                WriteOp::AlertResolved(resolved_lately),
                WriteOp::AlertOpened(alert()),
            ],
        )
        .unwrap();
        let cutoff = now - chrono::Duration::days(7);
        assert_eq!(prune(&mut conn, cutoff, cutoff, 15).unwrap(), 16);
        assert_eq!(prune(&mut conn, cutoff, cutoff, 15).unwrap(), 5);
        assert_eq!(prune(&mut conn, cutoff, cutoff, 15).unwrap(), 0);
        assert_eq!(count(&conn, "SELECT count(*) FROM health_metrics"), 5);
        // The recently resolved one and the active one stay.
        assert_eq!(count(&conn, "SELECT count(*) FROM health_alerts"), 2);
    }

    #[test]
    fn a_failing_batch_lands_nothing() {
        let mut conn = db();
        conn.execute_batch("DROP TABLE monitors").unwrap();
        let ops = [
            WriteOp::Metrics(vec![metric("memory_usage_percent", 1.0)]),
            WriteOp::MonitorSaved(MonitorSpec::agent("a1")),
        ];
        assert!(apply(&mut conn, &ops).is_err());
        assert_eq!(count(&conn, "SELECT count(*) FROM health_metrics"), 0);
    }

    fn opened(alert_id: i64, escalation_id: &str, at: DateTime<Utc>) -> WriteOp {
        WriteOp::EscalationOpened {
            alert_id,
            escalation_id: escalation_id.into(),
            resource_type: ResourceType::Agent,
            resource_id: "ac-onyx".into(),
            alert_type: "agent_alive".into(),
            severity: "critical".into(),
            at,
        }
    }

    fn closed(alert_id: i64, escalation_id: &str, at: DateTime<Utc>, reason: &str) -> WriteOp {
        WriteOp::EscalationClosed {
            alert_id,
            escalation_id: escalation_id.into(),
            at,
            reason: reason.into(),
        }
    }

    /// (escalation_id, closed_at, close_reason) of alert `alert_id`'s row.
    fn escalation_row(
        conn: &Connection,
        alert_id: i64,
    ) -> (String, Option<String>, Option<String>) {
        conn.query_row(
            "SELECT escalation_id, closed_at, close_reason FROM gastown_escalations
             WHERE alert_id = ?1",
            [alert_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    #[test]
    fn escalations_are_recorded_opened_and_closed() {
        let mut conn = db();
        let at = Utc::now();
        let later = at + chrono::Duration::minutes(5);
        apply(&mut conn, &[opened(1, "hq-e1", at), opened(2, "hq-e2", at)]).unwrap();
        assert!(!opened(1, "hq-e1", at).is_droppable());
        assert!(!closed(1, "hq-e1", at, "r").is_droppable());
        apply(
            &mut conn,
            &[closed(
                1,
                "hq-e1",
                later,
                "resolved: m (health-monitor alert 1)",
            )],
        )
        .unwrap();
        assert_eq!(
            escalation_row(&conn, 1),
            (
                "hq-e1".into(),
                Some(format_timestamp(later)),
                Some("resolved: m (health-monitor alert 1)".into())
            )
        );
        assert_eq!(escalation_row(&conn, 2), ("hq-e2".into(), None, None));
        let (rtype, rid, atype, severity, escalated_at): (String, String, String, String, String) =
            conn.query_row(
                "SELECT resource_type, resource_id, alert_type, severity, escalated_at
                 FROM gastown_escalations WHERE alert_id = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            (rtype, rid, atype, severity, escalated_at),
            (
                "agent".into(),
                "ac-onyx".into(),
                "agent_alive".into(),
                "critical".into(),
                format_timestamp(at)
            )
        );
        let open = query::open_escalations(&conn).unwrap();
        let ids: Vec<(i64, &str)> = open
            .iter()
            .map(|e| (e.alert_id, e.escalation_id.as_str()))
            .collect();
        assert_eq!(ids, [(2, "hq-e2")]);
        assert_eq!(open[0].resource_type, Some(ResourceType::Agent));
        assert_eq!(open[0].resource_id, "ac-onyx");
        assert_eq!(open[0].alert_type, "agent_alive");
        assert_eq!(open[0].severity, "critical");
        assert_eq!(
            open[0].escalated_at.map(format_timestamp),
            Some(format_timestamp(at))
        );
    }

    #[test]
    fn escalation_records_land_right_in_any_order_and_twice() {
        let mut conn = db();
        let at = Utc::now();
        // A close that overtook its opening (the opening was refused and sent again later).
        apply(&mut conn, &[closed(1, "hq-e1", at, "resolved")]).unwrap();
        apply(&mut conn, &[opened(1, "hq-e1", at)]).unwrap();
        assert_eq!(
            escalation_row(&conn, 1),
            (
                "hq-e1".into(),
                Some(format_timestamp(at)),
                Some("resolved".into())
            )
        );
        let severity: String = conn
            .query_row(
                "SELECT severity FROM gastown_escalations WHERE alert_id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(severity, "critical", "the opening filled its details in");
        // A batch applied twice changes nothing.
        let ops = [opened(2, "hq-e2", at), closed(2, "hq-e2", at, "first")];
        apply(&mut conn, &ops).unwrap();
        apply(&mut conn, &ops).unwrap();
        assert_eq!(
            escalation_row(&conn, 2),
            (
                "hq-e2".into(),
                Some(format_timestamp(at)),
                Some("first".into())
            )
        );
        // A new escalation of the alert replaces the row, open; a late close of the old one
        // leaves it open.
        apply(
            &mut conn,
            &[opened(2, "hq-e9", at), closed(2, "hq-e2", at, "late")],
        )
        .unwrap();
        assert_eq!(escalation_row(&conn, 2), ("hq-e9".into(), None, None));
        assert_eq!(count(&conn, "SELECT count(*) FROM gastown_escalations"), 2);
    }

    #[test]
    fn pruning_removes_escalations_closed_long_ago_and_never_open_ones() {
        let mut conn = db();
        let now = Utc::now();
        let old = now - chrono::Duration::days(10);
        apply(
            &mut conn,
            &[
                opened(1, "hq-e1", old),
                closed(1, "hq-e1", old, "long ago"),
                opened(2, "hq-e2", old),
                closed(2, "hq-e2", now, "lately"),
                opened(3, "hq-e3", old),
            ],
        )
        .unwrap();
        let cutoff = now - chrono::Duration::days(7);
        assert_eq!(prune(&mut conn, cutoff, cutoff, 10).unwrap(), 1);
        let left: Vec<i64> = conn
            .prepare("SELECT alert_id FROM gastown_escalations ORDER BY alert_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(left, [2, 3]);
    }

    #[test]
    fn monitors_are_saved_replaced_and_deleted() {
        let mut conn = db();
        apply(
            &mut conn,
            &[
                WriteOp::MonitorSaved(MonitorSpec::agent("a1")),
                WriteOp::MonitorSaved(MonitorSpec::agent("a1")),
                WriteOp::MonitorSaved(MonitorSpec::workspace("w1")),
            ],
        )
        .unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM monitors"), 2);
        apply(
            &mut conn,
            &[WriteOp::MonitorDeleted(MonitorKind::Agent, "a1".into())],
        )
        .unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM monitors"), 1);
    }
}
