//! The per-key alert state machine (docs/ARCHITECTURE.md, "Alert state machine"): open once,
//! remind per cooldown, escalate at once, resolve.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::model::{AlertKey, HealthAlert, HealthMetric, HealthStatus, ResourceType, belongs_to};
use crate::rules::AlertRule;

/// What happened to an alert, for the writer (which row to touch) and the notifier (what to say).
#[derive(Debug, Clone, PartialEq)]
pub enum AlertEvent {
    /// A new breach: insert a row and notify.
    Fired(HealthAlert),
    /// Severity rose while active: update the row and notify at once.
    Escalated(HealthAlert),
    /// Still breached after a cooldown: update `last_notified_at` and notify again.
    Reminder(HealthAlert),
    /// Severity fell (or came back to what was acknowledged) while still breached: update the
    /// row quietly.
    Downgraded(HealthAlert),
    /// Recovered: mark the row resolved and send a resolved notice.
    Resolved(HealthAlert),
}

impl AlertEvent {
    /// The alert as it stands after the event.
    pub fn alert(&self) -> &HealthAlert {
        match self {
            AlertEvent::Fired(a)
            | AlertEvent::Escalated(a)
            | AlertEvent::Reminder(a)
            | AlertEvent::Downgraded(a)
            | AlertEvent::Resolved(a) => a,
        }
    }

    /// True when people or systems should hear about it.
    pub(crate) fn notifies(&self) -> bool {
        !matches!(self, AlertEvent::Downgraded(_))
    }

    /// The notice state: `firing`, `reminder` or `resolved` (escalations fire anew).
    pub fn state(&self) -> &'static str {
        match self {
            AlertEvent::Fired(_) | AlertEvent::Escalated(_) | AlertEvent::Downgraded(_) => "firing",
            AlertEvent::Reminder(_) => "reminder",
            AlertEvent::Resolved(_) => "resolved",
        }
    }
}

/// A condition to alert on that is not a threshold on a metric (e.g. `collector_failed`).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The alert's severity: `unhealthy` or `critical` (the built-in conditions use `critical`).
    pub severity: HealthStatus,
    /// A sentence for people, shown in notices and `alerts`.
    pub message: String,
    /// JSON details kept in `health_alerts.metadata`, e.g. the stalled collector and for how long.
    pub metadata: serde_json::Value,
}

#[derive(Debug, Default)]
struct KeyState {
    breach_streak: u32,
    clear_streak: u32,
    active: Option<HealthAlert>,
    /// The severity the active alert had when acknowledged: only a rise above it re-arms
    /// notices, so an alert that dips and comes back keeps its acknowledgement.
    acked_severity: Option<HealthStatus>,
}

/// Alert state for every key, with the cooldown between reminders.
#[derive(Debug)]
pub(crate) struct AlertEngine {
    cooldown: Duration,
    states: HashMap<AlertKey, KeyState>,
    /// The row id the next opened alert gets, so notices carry it before the row lands.
    next_id: i64,
}

impl AlertEngine {
    /// An engine with no active alerts.
    pub fn new(cooldown: Duration) -> Self {
        AlertEngine {
            cooldown,
            states: HashMap::new(),
            next_id: 1,
        }
    }

    /// Sets the id the next opened alert gets (one past the highest the database has used).
    pub(crate) fn set_next_id(&mut self, next_id: i64) {
        self.next_id = self.next_id.max(next_id);
    }

    /// Acknowledges the active alert with this id: its reminders stop until it escalates.
    /// Returns the alert as acknowledged, or `None` when no active alert has that id.
    pub fn acknowledge(&mut self, id: i64, now: DateTime<Utc>) -> Option<HealthAlert> {
        let state = self
            .states
            .values_mut()
            .find(|s| s.active.as_ref().is_some_and(|a| a.id == Some(id)))?;
        let alert = state.active.as_mut()?;
        alert.acknowledged_at.get_or_insert(now);
        let severity = alert.severity;
        state.acked_severity = Some(state.acked_severity.map_or(severity, |s| s.max(severity)));
        Some(alert.clone())
    }

    /// Takes a new cooldown between reminders (a config reload).
    pub(crate) fn set_cooldown(&mut self, cooldown: Duration) {
        self.cooldown = cooldown;
    }

    /// The id the next opened alert will get.
    pub(crate) fn next_id(&self) -> i64 {
        self.next_id
    }

    /// Takes back the active alerts read from the database, so a restart neither duplicates rows
    /// nor repeats a notice inside the cooldown. Of several active rows for one key the newest wins.
    pub(crate) fn restore(&mut self, alerts: impl IntoIterator<Item = HealthAlert>) {
        for alert in alerts.into_iter().filter(|a| !a.resolved) {
            if let Some(id) = alert.id {
                self.next_id = self.next_id.max(id + 1);
            }
            let state = self.states.entry(alert.key()).or_default();
            let newer = state
                .active
                .as_ref()
                .is_none_or(|old| alert.timestamp >= old.timestamp);
            if newer {
                state.acked_severity = alert.acknowledged_at.map(|_| alert.severity);
                state.active = Some(alert);
            }
        }
    }

    /// Active alerts, in no particular order.
    pub fn active(&self) -> impl Iterator<Item = &HealthAlert> {
        self.states.values().filter_map(|s| s.active.as_ref())
    }

    /// Feeds one metric through its rule. Metrics without a rule never alert. `note` is what
    /// the reporter said (a check's first line of output): the message, when given.
    pub(crate) fn observe(
        &mut self,
        metric: &HealthMetric,
        rule: Option<&AlertRule>,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<AlertEvent> {
        let rule = rule?;
        let key = metric.alert_key();
        if metric.status.is_breach() {
            let condition = Condition {
                severity: metric.status,
                message: note.map_or_else(|| threshold_message(metric, rule), str::to_string),
                metadata: metric_metadata(metric),
            };
            self.breached(key, condition, rule.for_cycles, now)
        } else if metric.status == HealthStatus::Healthy {
            let clear = rule.thresholds.clear_of(metric.value, rule.hysteresis);
            self.healthy(&key, clear, rule.clear_cycles, now)
        } else {
            // Unknown (no value): neither a breach nor a recovery.
            None
        }
    }

    /// Raises (or keeps raised) a condition alert; it opens at once.
    pub(crate) fn raise(
        &mut self,
        key: AlertKey,
        condition: Condition,
        now: DateTime<Utc>,
    ) -> Option<AlertEvent> {
        self.breached(key, condition, 1, now)
    }

    /// Resolves a condition alert if it is active.
    pub fn clear(&mut self, key: &AlertKey, now: DateTime<Utc>) -> Option<AlertEvent> {
        self.healthy(key, true, 1, now)
    }

    /// True when any key of this resource has alert state (active or building up).
    pub(crate) fn has_state_for(&self, resource_type: ResourceType, resource_id: &str) -> bool {
        !self.states.is_empty()
            && self
                .states
                .keys()
                .any(|k| k.resource_type == resource_type && k.resource_id == resource_id)
    }

    /// Resolves the metric alerts of a resource whose metric is not among `reported` (the
    /// collector stopped reporting it). Condition alerts, whose type is not a metric, stay.
    pub(crate) fn resolve_unreported(
        &mut self,
        resource_type: ResourceType,
        resource_id: &str,
        reported: &[&str],
        now: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        if self.states.is_empty() {
            return Vec::new();
        }
        let stale: Vec<AlertKey> = self
            .states
            .keys()
            .filter(|k| {
                k.resource_type == resource_type
                    && k.resource_id == resource_id
                    && !reported.contains(&k.alert_type.as_str())
                    && crate::catalog::lookup(&k.alert_type).is_some()
            })
            .cloned()
            .collect();
        stale
            .iter()
            .filter_map(|key| self.clear(key, now))
            .collect()
    }

    /// Resolves every active alert of a resource (and of a workspace's databases), e.g. when
    /// its monitor is removed.
    pub(crate) fn forget_resource(
        &mut self,
        resource_type: ResourceType,
        resource_id: &str,
        now: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        let keys: Vec<AlertKey> = self
            .states
            .keys()
            .filter(|k| belongs_to(k.resource_type, &k.resource_id, resource_type, resource_id))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let state = self.states.remove(&key)?;
                state.active.map(|a| AlertEvent::Resolved(resolve(a, now)))
            })
            .collect()
    }

    fn breached(
        &mut self,
        key: AlertKey,
        condition: Condition,
        for_cycles: u32,
        now: DateTime<Utc>,
    ) -> Option<AlertEvent> {
        let cooldown = self.cooldown;
        let state = self.states.entry(key.clone()).or_default();
        state.clear_streak = 0;
        state.breach_streak = state.breach_streak.saturating_add(1);
        let acked_severity = state.acked_severity;
        let Some(active) = state.active.as_mut() else {
            if state.breach_streak < for_cycles {
                return None;
            }
            let id = self.next_id;
            self.next_id += 1;
            let alert = HealthAlert {
                id: Some(id),
                resource_type: key.resource_type,
                resource_id: key.resource_id,
                alert_type: key.alert_type,
                severity: condition.severity,
                message: condition.message,
                timestamp: now,
                metadata: condition.metadata,
                resolved: false,
                resolved_at: None,
                last_notified_at: now,
                acknowledged_at: None,
            };
            state.active = Some(alert.clone());
            return Some(AlertEvent::Fired(alert));
        };
        let previous = active.severity;
        active.severity = condition.severity;
        active.message = condition.message;
        active.metadata = condition.metadata;
        if condition.severity > previous {
            // Worse than what was acknowledged: people must hear about it again.
            if acked_severity.is_some_and(|acked| condition.severity <= acked) {
                // Back up to what was acknowledged: a quiet update, like a fall.
                return Some(AlertEvent::Downgraded(active.clone()));
            }
            active.acknowledged_at = None;
            state.acked_severity = None;
            active.last_notified_at = now;
            Some(AlertEvent::Escalated(active.clone()))
        } else if condition.severity < previous {
            Some(AlertEvent::Downgraded(active.clone()))
        } else if active.acknowledged_at.is_none()
            && elapsed(active.last_notified_at, now) >= cooldown
        {
            active.last_notified_at = now;
            Some(AlertEvent::Reminder(active.clone()))
        } else {
            None
        }
    }

    fn healthy(
        &mut self,
        key: &AlertKey,
        clear: bool,
        clear_cycles: u32,
        now: DateTime<Utc>,
    ) -> Option<AlertEvent> {
        let state = self.states.get_mut(key)?;
        state.breach_streak = 0;
        if state.active.is_none() {
            // Nothing to remember about a quiet key: keeps the map as small as the active set.
            self.states.remove(key);
            return None;
        }
        state.clear_streak = if clear { state.clear_streak + 1 } else { 0 };
        if state.clear_streak < clear_cycles {
            return None;
        }
        let state = self.states.remove(key)?;
        state.active.map(|a| AlertEvent::Resolved(resolve(a, now)))
    }
}

fn resolve(mut alert: HealthAlert, now: DateTime<Utc>) -> HealthAlert {
    alert.resolved = true;
    alert.resolved_at = Some(now);
    alert
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or(Duration::ZERO)
}

/// The JSON stored in `health_alerts.metadata` for a threshold alert.
pub(crate) fn metric_metadata(metric: &HealthMetric) -> serde_json::Value {
    json!({
        "metric_name": metric.metric_name,
        "value": metric.value,
        "threshold_warning": metric.threshold_warning,
        "threshold_critical": metric.threshold_critical,
        "unit": metric.unit,
    })
}

/// A human sentence for a threshold breach, e.g.
/// `workspace w1: workspace_size_mb is 3.5 MB (>= critical threshold 3)`.
pub(crate) fn threshold_message(metric: &HealthMetric, rule: &AlertRule) -> String {
    let t = rule.thresholds;
    let (level, limit) = if metric.status == HealthStatus::Critical {
        ("critical", t.critical)
    } else {
        ("warning", t.warning)
    };
    format!(
        "{} {}: {} is {} ({} {} threshold {})",
        metric.resource_type,
        metric.resource_id,
        metric.metric_name,
        format_value(metric.value, &metric.unit),
        t.comparator(),
        level,
        format_number(limit),
    )
}

/// A value with its unit, rounded for people: `3.5 MB`, `85%`, `0`.
pub(crate) fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "" | "bool" | "count" | "ratio" | "state" => format_number(value),
        "%" => format!("{}%", format_number(value)),
        u => format!("{} {u}", format_number(value)),
    }
}

/// A number with at most two decimals and no trailing zeros.
pub(crate) fn format_number(value: f64) -> String {
    let mut s = String::new();
    write_number(&mut s, value);
    s
}

/// [`format_number`] appended to `out`.
///
/// Made from the value in hundredths as an integer when that is sure to round as `{:.2}` does
/// (it is not within a thousandth of half a hundredth): `{:.2}` rounds the exact binary value,
/// most often by the slow exact algorithm, and alert messages and the dashboard's rows write
/// hundreds of numbers a cycle.
pub(crate) fn write_number(out: &mut String, value: f64) {
    let hundredths = value * 100.0;
    // Below 2^40 the product's own rounding error is under 2^-12, far inside the margin.
    if hundredths.abs() < (1u64 << 40) as f64 {
        let nearest = hundredths.round();
        if (hundredths - nearest).abs() < 0.499 {
            #[allow(clippy::cast_possible_truncation)] // Under 2^40, and a whole number.
            let n = nearest as i64;
            if n < 0 {
                out.push('-');
            }
            let (whole, cents) = (n.unsigned_abs() / 100, n.unsigned_abs() % 100);
            let _ = match cents {
                0 => write!(out, "{whole}"),
                c if c % 10 == 0 => write!(out, "{whole}.{}", c / 10),
                c => write!(out, "{whole}.{c:02}"),
            };
            return;
        }
    }
    write_number_exact(out, value);
}

/// [`write_number`] by `{:.2}` itself.
fn write_number_exact(out: &mut String, value: f64) {
    let start = out.len();
    let _ = write!(out, "{value:.2}");
    if out[start..].contains('.') {
        let kept = out[start..]
            .trim_end_matches('0')
            .trim_end_matches('.')
            .len();
        out.truncate(start + kept);
    }
    if &out[start..] == "-0" {
        out.truncate(start);
        out.push('0');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Measurement, Thresholds};

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(secs)
    }

    fn size_metric(value: f64, rule: &AlertRule) -> HealthMetric {
        let m = Measurement {
            resource_type: ResourceType::Workspace,
            resource_id: "w1".into(),
            metric_name: "workspace_size_mb".into(),
            value,
            unit: "MB".into(),
            timestamp: t0(),
            judgement: Default::default(),
            thresholds: None,
            note: None,
        };
        HealthMetric::from_measurement(m, Some(rule.thresholds))
    }

    fn rule() -> AlertRule {
        AlertRule::new(Thresholds::new(1000.0, 5000.0))
    }

    fn engine() -> AlertEngine {
        AlertEngine::new(Duration::from_secs(300))
    }

    #[test]
    fn a_breach_opens_one_alert_and_stays_quiet_inside_the_cooldown() {
        let (mut e, r) = (engine(), rule());
        let ev = e
            .observe(&size_metric(1500.0, &r), Some(&r), None, at(0))
            .unwrap();
        let AlertEvent::Fired(alert) = &ev else {
            panic!("{ev:?}")
        };
        assert_eq!(alert.severity, HealthStatus::Unhealthy);
        assert_eq!(alert.alert_type, "workspace_size_mb");
        assert_eq!(alert.metadata["value"], 1500.0);
        assert_eq!(alert.metadata["threshold_warning"], 1000.0);
        assert_eq!(alert.metadata["threshold_critical"], 5000.0);
        assert_eq!(alert.metadata["unit"], "MB");
        assert_eq!(
            alert.message,
            "workspace w1: workspace_size_mb is 1500 MB (>= warning threshold 1000)"
        );
        for s in [30, 60, 299] {
            assert_eq!(
                e.observe(&size_metric(1600.0, &r), Some(&r), None, at(s)),
                None
            );
        }
        assert_eq!(e.active().count(), 1);
    }

    #[test]
    fn reminders_come_at_most_once_per_cooldown() {
        let (mut e, r) = (engine(), rule());
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0));
        let ev = e.observe(&size_metric(1500.0, &r), Some(&r), None, at(300));
        assert!(matches!(ev, Some(AlertEvent::Reminder(_))), "{ev:?}");
        assert_eq!(
            e.observe(&size_metric(1500.0, &r), Some(&r), None, at(330)),
            None
        );
        let ev = e.observe(&size_metric(1500.0, &r), Some(&r), None, at(600));
        assert!(matches!(ev, Some(AlertEvent::Reminder(_))), "{ev:?}");
    }

    #[test]
    fn alerts_are_numbered_past_what_the_database_used() {
        let (mut e, r) = (engine(), rule());
        e.set_next_id(40);
        let ev = e
            .observe(&size_metric(1500.0, &r), Some(&r), None, at(0))
            .unwrap();
        assert_eq!(ev.alert().id, Some(40));
        let mut other = size_metric(1500.0, &r);
        other.resource_id = "w2".into();
        let ev = e.observe(&other, Some(&r), None, at(0)).unwrap();
        assert_eq!(ev.alert().id, Some(41));
        // A restored alert with a higher id pushes numbering past it.
        let mut restored = ev.alert().clone();
        restored.resource_id = "w3".into();
        restored.id = Some(90);
        e.restore([restored]);
        let mut third = size_metric(1500.0, &r);
        third.resource_id = "w4".into();
        assert_eq!(
            e.observe(&third, Some(&r), None, at(0)).unwrap().alert().id,
            Some(91)
        );
    }

    #[test]
    fn an_acknowledged_alert_stops_reminding_until_it_escalates() {
        let (mut e, r) = (engine(), rule());
        e.set_next_id(5);
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0));
        assert_eq!(e.acknowledge(99, at(10)), None, "unknown id");
        let acked = e.acknowledge(5, at(10)).unwrap();
        assert_eq!(acked.acknowledged_at, Some(at(10)));
        // A second ack keeps the first time.
        assert_eq!(
            e.acknowledge(5, at(20)).unwrap().acknowledged_at,
            Some(at(10))
        );
        for s in [300, 600, 900] {
            assert_eq!(
                e.observe(&size_metric(1500.0, &r), Some(&r), None, at(s)),
                None
            );
        }
        let ev = e
            .observe(&size_metric(6000.0, &r), Some(&r), None, at(901))
            .unwrap();
        assert!(matches!(ev, AlertEvent::Escalated(_)), "{ev:?}");
        assert_eq!(
            ev.alert().acknowledged_at,
            None,
            "escalation re-arms notices"
        );
        let ev = e.observe(&size_metric(6000.0, &r), Some(&r), None, at(1201));
        assert!(matches!(ev, Some(AlertEvent::Reminder(_))), "{ev:?}");
        // Acknowledged at critical, a dip to unhealthy and back keeps the acknowledgement.
        e.acknowledge(5, at(1201));
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(1202));
        let ev = e
            .observe(&size_metric(6000.0, &r), Some(&r), None, at(1203))
            .unwrap();
        assert!(
            matches!(ev, AlertEvent::Downgraded(_)),
            "a quiet update: {ev:?}"
        );
        assert!(ev.alert().acknowledged_at.is_some(), "{ev:?}");
        // Resolution still comes through for an acknowledged alert.
        e.acknowledge(5, at(1202));
        let ev = e
            .observe(&size_metric(10.0, &r), Some(&r), None, at(1203))
            .unwrap();
        assert!(matches!(ev, AlertEvent::Resolved(_)), "{ev:?}");
    }

    #[test]
    fn silences_cover_their_resource_metric_and_time() {
        let (mut e, r) = (engine(), rule());
        let alert = e
            .observe(&size_metric(1500.0, &r), Some(&r), None, at(0))
            .unwrap()
            .alert()
            .clone();
        let silence = crate::model::Silence {
            resource_type: ResourceType::Workspace,
            resource_id: "w1".into(),
            metric: None,
            created_at: at(0),
            expires_at: at(3600),
            comment: None,
        };
        assert!(silence.covers(&alert, at(10)));
        assert!(!silence.covers(&alert, at(3600)), "expired");
        let other_metric = crate::model::Silence {
            metric: Some("workspace_file_count".into()),
            ..silence.clone()
        };
        assert!(!other_metric.covers(&alert, at(10)));
        let mut db_alert = alert.clone();
        db_alert.resource_type = ResourceType::Database;
        db_alert.resource_id = "w1/.beads/beads.db".into();
        assert!(silence.covers(&db_alert, at(10)), "a workspace's databases");
        db_alert.resource_id = "w10/x.db".into();
        assert!(!silence.covers(&db_alert, at(10)));
    }

    #[test]
    fn a_rise_in_severity_notifies_at_once_and_a_fall_is_quiet() {
        let (mut e, r) = (engine(), rule());
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0));
        let ev = e
            .observe(&size_metric(6000.0, &r), Some(&r), None, at(1))
            .unwrap();
        assert!(matches!(ev, AlertEvent::Escalated(_)), "{ev:?}");
        assert_eq!(ev.alert().severity, HealthStatus::Critical);
        assert!(ev.alert().message.contains("critical threshold 5000"));
        let ev = e
            .observe(&size_metric(1500.0, &r), Some(&r), None, at(2))
            .unwrap();
        assert!(matches!(ev, AlertEvent::Downgraded(_)), "{ev:?}");
        assert!(!ev.notifies());
        assert_eq!(e.active().count(), 1);
    }

    #[test]
    fn recovery_resolves_with_a_timestamp() {
        let (mut e, r) = (engine(), rule());
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0));
        let ev = e
            .observe(&size_metric(10.0, &r), Some(&r), None, at(5))
            .unwrap();
        let AlertEvent::Resolved(a) = &ev else {
            panic!("{ev:?}")
        };
        assert!(a.resolved);
        assert_eq!(a.resolved_at, Some(at(5)));
        assert_eq!(ev.state(), "resolved");
        assert_eq!(e.active().count(), 0);
        // A later breach opens a fresh alert.
        let ev = e.observe(&size_metric(1500.0, &r), Some(&r), None, at(6));
        assert!(matches!(ev, Some(AlertEvent::Fired(_))));
    }

    #[test]
    fn for_cycles_and_clear_cycles_debounce() {
        let mut r = rule();
        r.for_cycles = 3;
        r.clear_cycles = 2;
        let mut e = engine();
        assert_eq!(
            e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0)),
            None
        );
        assert_eq!(
            e.observe(&size_metric(1500.0, &r), Some(&r), None, at(1)),
            None
        );
        // A healthy sample in between restarts the count.
        assert_eq!(
            e.observe(&size_metric(10.0, &r), Some(&r), None, at(2)),
            None
        );
        assert_eq!(
            e.observe(&size_metric(1500.0, &r), Some(&r), None, at(3)),
            None
        );
        assert_eq!(
            e.observe(&size_metric(1500.0, &r), Some(&r), None, at(4)),
            None
        );
        let ev = e.observe(&size_metric(1500.0, &r), Some(&r), None, at(5));
        assert!(matches!(ev, Some(AlertEvent::Fired(_))));
        assert_eq!(
            e.observe(&size_metric(10.0, &r), Some(&r), None, at(6)),
            None
        );
        let ev = e.observe(&size_metric(10.0, &r), Some(&r), None, at(7));
        assert!(matches!(ev, Some(AlertEvent::Resolved(_))));
    }

    #[test]
    fn hysteresis_keeps_the_alert_until_clear_of_the_margin() {
        let mut r = rule();
        r.hysteresis = 100.0;
        let mut e = engine();
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0));
        assert_eq!(
            e.observe(&size_metric(950.0, &r), Some(&r), None, at(1)),
            None
        );
        let ev = e.observe(&size_metric(850.0, &r), Some(&r), None, at(2));
        assert!(matches!(ev, Some(AlertEvent::Resolved(_))));
    }

    #[test]
    fn lower_is_worse_flags_alert_when_they_drop() {
        let r = AlertRule::new(Thresholds::new(0.5, 0.1));
        let mut e = engine();
        let mut m = size_metric(1.0, &r);
        m.metric_name = "agent_active".into();
        m.unit = "bool".into();
        assert_eq!(e.observe(&m, Some(&r), None, at(0)), None);
        let dead = HealthMetric {
            value: 0.0,
            status: r.thresholds.status(0.0),
            ..m.clone()
        };
        let ev = e.observe(&dead, Some(&r), None, at(1)).unwrap();
        assert_eq!(ev.alert().severity, HealthStatus::Critical);
        assert!(
            ev.alert()
                .message
                .ends_with("is 0 (<= critical threshold 0.1)")
        );
        assert!(matches!(
            e.observe(&m, Some(&r), None, at(2)),
            Some(AlertEvent::Resolved(_))
        ));
    }

    #[test]
    fn restored_alerts_are_not_fired_again_inside_the_cooldown() {
        let (mut e, r) = (engine(), rule());
        let ev = e
            .observe(&size_metric(1500.0, &r), Some(&r), None, at(0))
            .unwrap();
        let mut stored = ev.alert().clone();
        stored.id = Some(7);
        let mut older = stored.clone();
        older.id = Some(3);
        older.timestamp = at(-100);

        let mut restarted = engine();
        restarted.restore([older, stored]);
        assert_eq!(restarted.active().count(), 1);
        assert_eq!(restarted.active().next().unwrap().id, Some(7));
        assert_eq!(
            restarted.observe(&size_metric(1500.0, &r), Some(&r), None, at(10)),
            None
        );
        let ev = restarted.observe(&size_metric(1500.0, &r), Some(&r), None, at(301));
        assert!(matches!(ev, Some(AlertEvent::Reminder(_))), "{ev:?}");
    }

    #[test]
    fn metrics_without_rules_never_alert() {
        let r = rule();
        let mut e = engine();
        assert_eq!(e.observe(&size_metric(1e9, &r), None, None, at(0)), None);
    }

    #[test]
    fn conditions_raise_and_clear() {
        let mut e = engine();
        let key = AlertKey {
            resource_type: ResourceType::Workspace,
            resource_id: "w1".into(),
            alert_type: "collector_failed".into(),
        };
        let cond = Condition {
            severity: HealthStatus::Critical,
            message: "collector keeps failing".into(),
            metadata: json!({}),
        };
        assert!(matches!(
            e.raise(key.clone(), cond.clone(), at(0)),
            Some(AlertEvent::Fired(_))
        ));
        assert_eq!(e.raise(key.clone(), cond, at(1)), None);
        assert!(matches!(
            e.clear(&key, at(2)),
            Some(AlertEvent::Resolved(_))
        ));
        assert_eq!(e.clear(&key, at(3)), None);
    }

    #[test]
    fn forgetting_a_resource_resolves_its_alerts_only() {
        let (mut e, r) = (engine(), rule());
        e.observe(&size_metric(1500.0, &r), Some(&r), None, at(0));
        let mut other = size_metric(1500.0, &r);
        other.resource_id = "w2".into();
        e.observe(&other, Some(&r), None, at(0));
        let events = e.forget_resource(ResourceType::Workspace, "w1", at(1));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].alert().resource_id, "w1");
        assert_eq!(e.active().count(), 1);
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(1.23456), "1.23");
        assert_eq!(format_number(-0.001), "0");
        assert_eq!(format_value(85.0, "%"), "85%");
        assert_eq!(format_value(1.5, "MB"), "1.5 MB");
    }
    #[test]
    fn numbers_in_hundredths_are_written_as_by_the_exact_algorithm() {
        // A fixed sequence of pseudo-random bits (xorshift): the same cases on every run.
        let mut bits = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            bits
        };
        let mut values = vec![0.0, -0.0, 0.005, 0.015, 0.025, 1.005, 2.675, -2.675, 1e12];
        for _ in 0..200_000 {
            let r = next();
            let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
            let sign = if r & 1 == 0 { 1.0 } else { -1.0 };
            // Any magnitude; thousandths (each half a hundredth is one); near the fast path's
            // margin; whole numbers.
            values.push(sign * unit * 10f64.powi((r >> 1) as i32 % 16 - 4));
            values.push(sign * ((r >> 8) % 1_000_000) as f64 / 1000.0);
            values.push(sign * (((r >> 8) % 100_000) as f64 + 0.5) / 100.0 + sign * 1e-9);
            values.push(sign * ((r >> 8) % 10_000_000) as f64);
        }
        for value in values {
            let (mut fast, mut exact) = (String::new(), String::new());
            write_number(&mut fast, value);
            write_number_exact(&mut exact, value);
            assert_eq!(fast, exact, "{value:e}");
        }
    }
}
