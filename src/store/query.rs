//! Read-side queries: monitors, active alerts, recent counts, latest values and open Gas Town
//! escalations.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::model::{
    HealthAlert, HealthMetric, HealthStatus, MonitorKind, MonitorSpec, ResourceType, Silence,
    format_timestamp, parse_timestamp,
};

/// The definitions of the pushed series, as `report` left them.
pub(crate) fn load_pushed(conn: &Connection) -> rusqlite::Result<Vec<crate::pushed::SeriesDef>> {
    let mut stmt = conn.prepare(
        "SELECT resource_type, resource_id, metric_name, unit, threshold_warning,
                threshold_critical, ttl_secs
         FROM pushed_series ORDER BY resource_type, resource_id, metric_name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            crate::pushed::SeriesDef {
                resource_type: crate::model::ResourceType::Check,
                resource_id: r.get(1)?,
                metric: r.get(2)?,
                unit: r.get(3)?,
                thresholds: match (r.get::<_, Option<f64>>(4)?, r.get::<_, Option<f64>>(5)?) {
                    (Some(w), Some(c)) => Some(crate::model::Thresholds::new(w, c)),
                    _ => None,
                },
                ttl_secs: r.get(6)?,
            },
        ))
    })?;
    let mut defs = Vec::new();
    for row in rows {
        let (resource_type, mut def) = row?;
        match resource_type.parse() {
            Ok(t) => {
                def.resource_type = t;
                defs.push(def);
            }
            Err(e) => tracing::warn!("skipping pushed series row {resource_type}: {e}"),
        }
    }
    Ok(defs)
}

/// Every persisted monitor. Rows that cannot be understood are skipped with a warning.
pub(crate) fn load_monitors(conn: &Connection) -> rusqlite::Result<Vec<MonitorSpec>> {
    let mut stmt = conn.prepare("SELECT kind, id, options FROM monitors ORDER BY kind, id")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut specs = Vec::new();
    for row in rows {
        let (kind, id, options) = row?;
        let spec = kind
            .parse::<MonitorKind>()
            .and_then(|k| MonitorSpec::from_row(k, &id, &options));
        match spec {
            Ok(spec) => specs.push(spec),
            Err(e) => tracing::warn!("skipping monitor row {kind}/{id}: {e}"),
        }
    }
    Ok(specs)
}

const ALERT_COLUMNS: &str = "id, resource_type, resource_id, alert_type, severity, message,
    timestamp, metadata, resolved, resolved_at, last_notified_at, acknowledged_at";

/// Reads a `health_alerts` row selected with [`ALERT_COLUMNS`]; `None` for rows another tool
/// wrote with values outside the contract.
fn alert_from_row(r: &Row<'_>) -> rusqlite::Result<Option<HealthAlert>> {
    let resource_type: String = r.get(1)?;
    let severity: String = r.get(4)?;
    let timestamp: String = r.get(6)?;
    let (Ok(resource_type), Ok(severity), Some(timestamp)) = (
        resource_type.parse::<ResourceType>(),
        severity.parse::<HealthStatus>(),
        parse_timestamp(&timestamp),
    ) else {
        return Ok(None);
    };
    let metadata: Option<String> = r.get(7)?;
    let resolved_at: Option<String> = r.get(9)?;
    let last_notified_at: Option<String> = r.get(10)?;
    let acknowledged_at: Option<String> = r.get(11)?;
    Ok(Some(HealthAlert {
        id: Some(r.get(0)?),
        resource_type,
        resource_id: r.get(2)?,
        alert_type: r.get(3)?,
        severity,
        message: r.get(5)?,
        timestamp,
        metadata: metadata
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or(serde_json::Value::Null),
        resolved: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
        resolved_at: resolved_at.as_deref().and_then(parse_timestamp),
        last_notified_at: last_notified_at
            .as_deref()
            .and_then(parse_timestamp)
            .unwrap_or(timestamp),
        acknowledged_at: acknowledged_at.as_deref().and_then(parse_timestamp),
    }))
}

/// One alert by its row id.
pub(crate) fn alert_by_id(conn: &Connection, id: i64) -> rusqlite::Result<Option<HealthAlert>> {
    conn.query_row(
        &format!("SELECT {ALERT_COLUMNS} FROM health_alerts WHERE id = ?1"),
        [id],
        alert_from_row,
    )
    .optional()
    .map(Option::flatten)
}

/// The id the next alert row gets: past every id used, including deleted ones.
pub(crate) fn next_alert_id(conn: &Connection) -> rusqlite::Result<i64> {
    let max_row: i64 =
        conn.query_row("SELECT COALESCE(MAX(id), 0) FROM health_alerts", [], |r| {
            r.get(0)
        })?;
    // AUTOINCREMENT remembers ids of pruned rows in sqlite_sequence (absent until first insert).
    let sequence: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'health_alerts'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap_or(None)
        .unwrap_or(0);
    Ok(max_row.max(sequence) + 1)
}

/// Silences that have not expired, soonest to end first.
pub(crate) fn active_silences(
    conn: &Connection,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Silence>> {
    let mut stmt = conn.prepare(
        "SELECT resource_type, resource_id, metric, created_at, expires_at, comment
         FROM silences WHERE expires_at > ?1 ORDER BY expires_at",
    )?;
    let rows = stmt.query_map([format_timestamp(now)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (rtype, rid, metric, created, expires, comment) = row?;
        let (Ok(resource_type), Some(created_at), Some(expires_at)) = (
            rtype.parse::<ResourceType>(),
            parse_timestamp(&created),
            parse_timestamp(&expires),
        ) else {
            tracing::warn!("skipping unreadable silence row {rtype}/{rid}");
            continue;
        };
        out.push(Silence {
            resource_type,
            resource_id: rid,
            metric: (!metric.is_empty()).then_some(metric),
            created_at,
            expires_at,
            comment,
        });
    }
    Ok(out)
}

/// Unresolved alerts, newest first.
pub fn active_alerts(conn: &Connection) -> rusqlite::Result<Vec<HealthAlert>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ALERT_COLUMNS} FROM health_alerts WHERE resolved = 0 ORDER BY timestamp DESC, id DESC"
    ))?;
    let rows = stmt.query_map([], alert_from_row)?;
    rows.filter_map(Result::transpose).collect()
}

/// Alerts newest first: the unresolved ones, or with `all` resolved ones too, at most `limit`.
pub fn alerts(conn: &Connection, all: bool, limit: usize) -> rusqlite::Result<Vec<HealthAlert>> {
    let filter = if all { "" } else { "WHERE resolved = 0" };
    let mut stmt = conn.prepare(&format!(
        "SELECT {ALERT_COLUMNS} FROM health_alerts {filter} ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], alert_from_row)?;
    rows.filter_map(Result::transpose).collect()
}

/// The newest alerts of one resource, active and resolved, newest first (a dashboard's alert
/// history).
pub fn resource_alerts(
    conn: &Connection,
    resource_type: ResourceType,
    resource_id: &str,
    limit: usize,
) -> rusqlite::Result<Vec<HealthAlert>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM health_alerts WHERE resource_type = ?1 AND resource_id = ?2
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![resource_type.as_str(), resource_id, limit as i64],
        alert_from_row,
    )?;
    rows.filter_map(Result::transpose).collect()
}

/// The rollup buckets of `width` seconds of one series from `since` (Unix seconds), oldest
/// first: one range of the table's key.
pub fn rollups(
    conn: &Connection,
    resource_type: ResourceType,
    resource_id: &str,
    metric: &str,
    width: i64,
    since: i64,
) -> rusqlite::Result<Vec<crate::rollup::Acc>> {
    let mut stmt = conn.prepare_cached(
        "SELECT bucket_start, min, max, sum, count FROM metric_rollups
         WHERE resource_type = ?1 AND resource_id = ?2 AND metric_name = ?3 AND width = ?4
           AND bucket_start >= ?5
         ORDER BY bucket_start",
    )?;
    let rows = stmt.query_map(
        params![resource_type.as_str(), resource_id, metric, width, since],
        |r| {
            Ok(crate::rollup::Acc {
                bucket_start: r.get(0)?,
                min: r.get(1)?,
                max: r.get(2)?,
                sum: r.get(3)?,
                count: r.get::<_, i64>(4)?.max(0) as u64,
            })
        },
    )?;
    rows.collect()
}

/// The row ids of the unresolved alerts.
pub(crate) fn active_alert_ids(conn: &Connection) -> rusqlite::Result<HashSet<i64>> {
    let mut stmt = conn.prepare("SELECT id FROM health_alerts WHERE resolved = 0")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    rows.collect()
}

/// A Gas Town escalation opened for an alert and not closed yet (`gastown_escalations`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OpenEscalation {
    /// The `health_alerts` row id of the alert it was opened for.
    pub alert_id: i64,
    /// Gas Town's id of the escalation, e.g. `hq-e5tq` (`gt escalate show ID`).
    pub escalation_id: String,
    /// The alert's resource type; `None` when the row holds none or one outside the contract.
    pub resource_type: Option<ResourceType>,
    /// The alert's resource id (empty when the row holds none).
    pub resource_id: String,
    /// The alert's type (empty when the row holds none).
    pub alert_type: String,
    /// The `gt escalate -s` level it was opened at (Gas Town may have raised it since).
    pub severity: String,
    /// When it was opened; `None` when the row's time cannot be read.
    pub escalated_at: Option<DateTime<Utc>>,
}

/// Every escalation not closed yet, oldest first. A database that predates the table (made by
/// an older build or the original daemon, or opened read-only before any migration) has none.
pub(crate) fn open_escalations(conn: &Connection) -> rusqlite::Result<Vec<OpenEscalation>> {
    let exists = conn
        .prepare(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gastown_escalations'",
        )?
        .exists([])?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT alert_id, escalation_id, resource_type, resource_id, alert_type, severity,
            escalated_at
         FROM gastown_escalations WHERE closed_at IS NULL ORDER BY escalated_at, alert_id",
    )?;
    let rows = stmt.query_map([], |r| {
        let resource_type: Option<String> = r.get(2)?;
        let escalated_at: Option<String> = r.get(6)?;
        Ok(OpenEscalation {
            alert_id: r.get(0)?,
            escalation_id: r.get(1)?,
            resource_type: resource_type.and_then(|t| t.parse::<ResourceType>().ok()),
            resource_id: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            alert_type: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            severity: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
            escalated_at: escalated_at.as_deref().and_then(parse_timestamp),
        })
    })?;
    rows.collect()
}

/// One stored sample of a series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Point {
    /// When the sample was taken.
    pub timestamp: DateTime<Utc>,
    /// The measured value, in the series' unit.
    pub value: f64,
    /// The health the collector judged the value to be at that time.
    pub status: HealthStatus,
}

/// The samples of one series since a time, oldest first, with the series' unit. Served by the
/// `(timestamp, status)` index: only rows inside the window are read.
pub fn series(
    conn: &Connection,
    resource_type: ResourceType,
    resource_id: &str,
    metric: &str,
    since: DateTime<Utc>,
) -> rusqlite::Result<(Vec<Point>, Option<String>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT timestamp, value, status, unit FROM health_metrics
         WHERE timestamp >= ?1 AND resource_type = ?2 AND resource_id = ?3 AND metric_name = ?4
         ORDER BY timestamp",
    )?;
    let mut unit = None;
    let mut points = Vec::new();
    let mut rows = stmt.query(params![
        format_timestamp(since),
        resource_type.as_str(),
        resource_id,
        metric
    ])?;
    while let Some(r) = rows.next()? {
        let (Some(timestamp), Ok(status)) = (
            parse_timestamp(&r.get::<_, String>(0)?),
            r.get::<_, String>(2)?.parse::<HealthStatus>(),
        ) else {
            continue;
        };
        if unit.is_none() {
            unit = r.get::<_, Option<String>>(3)?;
        }
        points.push(Point {
            timestamp,
            value: r.get(1)?,
            status,
        });
    }
    Ok((points, unit))
}

/// Counts of metric rows written since a time, in total and per status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentCounts {
    /// All metric rows written since the time, whatever their status.
    pub total: u64,
    /// Every status of the contract, zero when absent, plus any other strings found.
    pub by_status: BTreeMap<String, u64>,
}

/// Counts metric rows newer than `since`; served from the `(timestamp, status)` index alone.
/// Counted here rather than by `GROUP BY status`: grouping sorts every row of the hour by its
/// status text, which took most of `status`'s time on a large database (20 ms of 57 for
/// 58,000 rows); one pass over the index range takes a few.
pub(crate) fn recent_counts(
    conn: &Connection,
    since: DateTime<Utc>,
) -> rusqlite::Result<RecentCounts> {
    let mut counts = RecentCounts::default();
    for s in [
        HealthStatus::Healthy,
        HealthStatus::Degraded,
        HealthStatus::Unhealthy,
        HealthStatus::Critical,
        HealthStatus::Unknown,
    ] {
        counts.by_status.insert(s.as_str().to_string(), 0);
    }
    let mut stmt =
        conn.prepare_cached("SELECT status FROM health_metrics WHERE timestamp >= ?1")?;
    let mut rows = stmt.query(params![format_timestamp(since)])?;
    while let Some(row) = rows.next()? {
        let status = row.get_ref(0)?.as_str().unwrap_or("");
        counts.total += 1;
        match counts.by_status.get_mut(status) {
            Some(n) => *n += 1,
            None => {
                counts.by_status.insert(status.to_string(), 1);
            }
        }
    }
    Ok(counts)
}

/// The newest value of every series written within `window` before the newest row, for status
/// when no daemon runs.
pub(crate) fn latest_metrics(
    conn: &Connection,
    window: Duration,
) -> rusqlite::Result<Vec<HealthMetric>> {
    let newest: Option<String> = conn
        .query_row("SELECT max(timestamp) FROM health_metrics", [], |r| {
            r.get(0)
        })
        .optional()?
        .flatten();
    let Some(newest) = newest.as_deref().and_then(parse_timestamp) else {
        return Ok(Vec::new());
    };
    // In the index's order: ordering by id as well would sort the rows once more. Rows of one
    // series with the same timestamp are told apart by id below.
    let mut stmt = conn.prepare(
        "SELECT resource_type, resource_id, metric_name, value, threshold_warning,
            threshold_critical, timestamp, unit, status, id
         FROM health_metrics WHERE timestamp >= ?1 ORDER BY timestamp",
    )?;
    let rows = stmt.query_map(params![format_timestamp(newest - window)], |r| {
        let resource_type: String = r.get(0)?;
        let status: String = r.get(8)?;
        let timestamp: String = r.get(6)?;
        let (Ok(resource_type), Ok(status), Some(timestamp)) = (
            resource_type.parse::<ResourceType>(),
            status.parse::<HealthStatus>(),
            parse_timestamp(&timestamp),
        ) else {
            return Ok(None);
        };
        let id: i64 = r.get(9)?;
        Ok(Some((
            id,
            HealthMetric {
                resource_type,
                resource_id: r.get(1)?,
                metric_name: r.get(2)?,
                value: r.get(3)?,
                threshold_warning: r.get(4)?,
                threshold_critical: r.get(5)?,
                timestamp,
                unit: r.get::<_, Option<String>>(7)?.unwrap_or_default().into(),
                status,
            },
        )))
    })?;
    let mut latest: HashMap<(ResourceType, String, String), (i64, HealthMetric)> = HashMap::new();
    for row in rows {
        let Some((id, m)) = row? else { continue };
        let key = (
            m.resource_type,
            m.resource_id.clone(),
            m.metric_name.to_string(),
        );
        match latest.get(&key) {
            // Rows come in timestamp order; within one timestamp the later row wins.
            Some((kept_id, kept)) if kept.timestamp == m.timestamp && *kept_id > id => {}
            _ => {
                latest.insert(key, (id, m));
            }
        }
    }
    Ok(latest.into_values().map(|(_, m)| m).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Measurement, Thresholds};
    use crate::store::schema::migrate;
    use crate::store::write::{WriteOp, apply};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn
    }

    /// A database holding `rows`.
    fn db_with(rows: Vec<HealthMetric>) -> Connection {
        let mut conn = db();
        apply(&mut conn, &[WriteOp::Metrics(rows)]).unwrap();
        conn
    }

    fn metric(id: &str, value: f64, at: DateTime<Utc>) -> HealthMetric {
        let mut m = Measurement::now(
            ResourceType::Workspace,
            id,
            "workspace_size_mb",
            value,
            "MB",
        );
        m.timestamp = at;
        HealthMetric::from_measurement(m, Some(Thresholds::new(10.0, 20.0)))
    }

    #[test]
    fn recent_counts_split_by_status_and_ignore_old_rows() {
        let now = Utc::now();
        let conn = db_with(vec![
            metric("w1", 1.0, now - Duration::hours(2)),
            metric("w1", 1.0, now),
            metric("w1", 15.0, now),
            metric("w2", 25.0, now),
        ]);
        let c = recent_counts(&conn, now - Duration::hours(1)).unwrap();
        assert_eq!(c.total, 3);
        assert_eq!(c.by_status["healthy"], 1);
        assert_eq!(c.by_status["unhealthy"], 1);
        assert_eq!(c.by_status["critical"], 1);
        assert_eq!(c.by_status["degraded"], 0);
    }

    #[test]
    fn latest_metrics_keep_the_newest_value_per_series() {
        let now = Utc::now();
        let conn = db_with(vec![
            metric("w1", 1.0, now - Duration::seconds(20)),
            metric("w1", 2.0, now - Duration::seconds(10)),
            metric("w2", 3.0, now),
        ]);
        let mut latest = latest_metrics(&conn, Duration::minutes(10)).unwrap();
        latest.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0].value, 2.0);
        assert_eq!(latest[1].value, 3.0);
    }

    #[test]
    fn of_two_rows_with_one_timestamp_the_later_is_the_latest() {
        // The index orders rows of one timestamp by status: the later, critical row comes
        // before the earlier, healthy one, and must still win.
        let now = Utc::now();
        let conn = db_with(vec![metric("w1", 1.0, now), metric("w1", 25.0, now)]);
        let latest = latest_metrics(&conn, Duration::minutes(10)).unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].value, 25.0);
        // Statuses outside the contract are counted under their own name.
        conn.execute(
            "UPDATE health_metrics SET status = 'odd' WHERE value = 1.0",
            [],
        )
        .unwrap();
        let c = recent_counts(&conn, now - Duration::hours(1)).unwrap();
        assert_eq!(
            (c.total, c.by_status["odd"], c.by_status["critical"]),
            (2, 1, 1)
        );
    }

    #[test]
    fn active_alerts_skip_resolved_and_foreign_rows() {
        let conn = db();
        conn.execute_batch(
            "INSERT INTO health_alerts (resource_type, resource_id, alert_type, severity, message, timestamp, metadata, resolved)
               VALUES ('memory', 'system', 'memory_usage_percent', 'unhealthy', 'm', '2026-01-01T00:00:00.000000Z', '{\"value\": 85}', 0),
                      ('memory', 'system', 'memory_usage_percent', 'unhealthy', 'm', '2025-01-01T00:00:00.000000Z', NULL, 1),
                      ('spaceship', 'x', 'y', 'unhealthy', 'm', '2026-01-01T00:00:00Z', NULL, 0);",
        )
        .unwrap();
        let alerts = active_alerts(&conn).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].metadata["value"], 85);
        assert_eq!(alerts[0].last_notified_at, alerts[0].timestamp);
    }

    #[test]
    fn open_escalations_are_the_unclosed_ones_and_none_before_the_table() {
        // A database from before the table (the original daemon's): nothing, no error.
        let old = Connection::open_in_memory().unwrap();
        old.execute_batch(
            "CREATE TABLE health_alerts (id INTEGER PRIMARY KEY, resolved BOOLEAN DEFAULT 0)",
        )
        .unwrap();
        assert_eq!(open_escalations(&old).unwrap(), Vec::new());

        let conn = db();
        conn.execute_batch(
            "INSERT INTO gastown_escalations (alert_id, escalation_id, resource_type, resource_id,
                alert_type, severity, escalated_at, closed_at, close_reason)
             VALUES (3, 'hq-e3', 'agent', 'ac-onyx', 'agent_alive', 'critical',
                        '2026-05-01T10:00:00.000000Z', NULL, NULL),
                    (1, 'hq-e1', 'agent', 'ac-jasper', 'agent_alive', 'high',
                        '2026-05-01T09:00:00.000000Z', '2026-05-01T09:30:00.000000Z', 'resolved'),
                    (2, 'hq-e2', 'spaceship', NULL, NULL, NULL, 'whenever', NULL, NULL),
                    (4, 'hq-e4', 'workspace', 'w1', 'workspace_size_mb', 'high',
                        '2026-05-01T08:00:00.000000Z', NULL, NULL);
             INSERT INTO health_alerts (id, resource_type, resource_id, alert_type, severity,
                message, timestamp, resolved)
             VALUES (3, 'agent', 'ac-onyx', 'agent_alive', 'critical', 'm',
                        '2026-05-01T10:00:00.000000Z', 0),
                    (4, 'workspace', 'w1', 'workspace_size_mb', 'unhealthy', 'm',
                        '2026-05-01T08:00:00.000000Z', 1);",
        )
        .unwrap();
        let open = open_escalations(&conn).unwrap();
        let ids: Vec<&str> = open.iter().map(|e| e.escalation_id.as_str()).collect();
        // Oldest first; a foreign row's odd values read as absent, but the row is kept.
        assert_eq!(ids, ["hq-e4", "hq-e3", "hq-e2"]);
        assert_eq!(
            open[1],
            OpenEscalation {
                alert_id: 3,
                escalation_id: "hq-e3".into(),
                resource_type: Some(ResourceType::Agent),
                resource_id: "ac-onyx".into(),
                alert_type: "agent_alive".into(),
                severity: "critical".into(),
                escalated_at: parse_timestamp("2026-05-01T10:00:00.000000Z"),
            }
        );
        assert_eq!(
            (
                open[2].resource_type,
                open[2].escalated_at,
                open[2].resource_id.as_str()
            ),
            (None, None, "")
        );
        assert_eq!(active_alert_ids(&conn).unwrap(), HashSet::from([3]));
    }
}
