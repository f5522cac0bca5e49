//! Telling the operator: every alert event is logged, and notices go to exec hooks, webhooks,
//! Alertmanagers and Gas Town escalations.
//!
//! [`Notice`] is the one JSON object every sink sends; [`Notifier`] hands it to one worker
//! thread per sink so a slow or broken sink never holds up the caller or another sink. The
//! Gas Town sink ([`escalate`]) opens one escalation per alert and closes it when the alert
//! resolves; [`Notifier::spawn_with`] gives it an [`escalate::EscalationLedger`] to record them
//! in the database and take over those a previous run left open.

pub mod alertmanager;
mod dispatch;
pub mod escalate;
pub mod exec;
#[cfg(test)]
mod testutil;
pub mod webhook;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alerts::AlertEvent;
use crate::model::{HealthStatus, ResourceType, format_timestamp};

pub use dispatch::{Notifier, SinkReport, Timings};

/// Logs an alert event with structured fields: critical as error, unhealthy as warn, resolved as
/// info. `silenced` marks events an operator's silence keeps from the sinks.
pub(crate) fn log_event(event: &AlertEvent, silenced: bool) {
    if !event.notifies() {
        return;
    }
    let a = event.alert();
    let state = event.state();
    let since = format_timestamp(a.timestamp);
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                alert_state = state,
                alert_id = a.id,
                silenced,
                severity = a.severity.as_str(),
                resource_type = a.resource_type.as_str(),
                resource_id = %a.resource_id,
                alert_type = %a.alert_type,
                since = %since,
                "{}{}",
                match event {
                    AlertEvent::Resolved(_) => "resolved: ",
                    AlertEvent::Reminder(_) => "still: ",
                    AlertEvent::Escalated(_) => "escalated: ",
                    _ => "",
                },
                a.message
            )
        };
    }
    match (event, a.severity) {
        (AlertEvent::Resolved(_), _) => emit!(info),
        (_, HealthStatus::Critical) => emit!(error),
        _ => emit!(warn),
    }
}

/// A URL as status, metrics and logs show it: scheme, host and port only. Webhook paths and
/// queries often hold the secret (Slack, Discord...) and `/metrics` is readable by anyone who
/// can reach it, so they are never shown.
pub(crate) fn display_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials in the authority (`user:pass@host`) go too.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let elided = if rest.len() > authority.len() {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{elided}")
}

/// The longest value of one `HEALTH_MONITOR_*` variable, in bytes. Linux refuses to start a
/// program with any single variable over 128 KiB; a message that long is cut in the environment.
pub(crate) const ENV_VALUE_LIMIT: usize = 16 * 1024;

/// Where a notice stands in its alert's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeState {
    /// Newly open, or risen in severity.
    Firing,
    /// Still open after a cooldown.
    Reminder,
    /// Recovered.
    Resolved,
}

impl NoticeState {
    /// The lowercase name used in the JSON and in `HEALTH_MONITOR_STATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Firing => "firing",
            NoticeState::Reminder => "reminder",
            NoticeState::Resolved => "resolved",
        }
    }
}

/// The one JSON object every sink sends for an alert event.
///
/// Optional fields are written as `null`, never left out, so consumers see a fixed set of keys.
/// Times are RFC 3339 UTC with microseconds, like the database's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// The `health_alerts` row id, when the alert has been stored.
    pub id: Option<i64>,
    /// `agent`, `workspace`, `database`, `filesystem`, `memory`, `cpu` or `network`.
    pub resource_type: ResourceType,
    /// The agent or workspace id, a database path, or `system`.
    pub resource_id: String,
    /// The metric the alert is about; for a condition (e.g. `collector_failed`) its own name.
    pub metric_name: String,
    /// The alert's type: the metric name, or the condition's name.
    pub alert_type: String,
    /// `unhealthy` or `critical` (the last severity, for a resolved notice).
    pub severity: HealthStatus,
    /// One sentence for people, e.g. `workspace w1: workspace_size_mb is 1500 MB (...)`.
    pub message: String,
    /// The measured value behind a threshold alert; `null` for conditions.
    #[serde(default)]
    pub value: Option<f64>,
    /// When this event happened: opened, escalated, reminded or resolved.
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// `firing`, `reminder` or `resolved`.
    pub state: NoticeState,
    /// When the alert opened.
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// When it recovered; `null` unless `state` is `resolved`.
    #[serde(default, with = "rfc3339_opt")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The thresholds the value was held against (`null` for conditions).
    #[serde(default)]
    pub threshold_warning: Option<f64>,
    /// See `threshold_warning`; below it when lower values are worse.
    #[serde(default)]
    pub threshold_critical: Option<f64>,
    /// The value's unit, e.g. `MB`, `%` (`null` for conditions).
    #[serde(default)]
    pub unit: Option<String>,
}

impl Notice {
    /// The notice for an alert event, or `None` for events nobody is told about (downgrades).
    ///
    /// The event time comes from the alert itself (opened, last notified, resolved), so a notice
    /// built late still says when things happened; `now` stands in for a missing `resolved_at`.
    pub fn from_event(event: &AlertEvent, now: DateTime<Utc>) -> Option<Notice> {
        if !event.notifies() {
            return None;
        }
        let a = event.alert();
        let state = match event.state() {
            "resolved" => NoticeState::Resolved,
            "reminder" => NoticeState::Reminder,
            _ => NoticeState::Firing,
        };
        let timestamp = match event {
            AlertEvent::Fired(_) => a.timestamp,
            AlertEvent::Resolved(_) => a.resolved_at.unwrap_or(now),
            _ => a.last_notified_at,
        };
        let number = |key: &str| {
            a.metadata
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .filter(|v| v.is_finite())
        };
        Some(Notice {
            id: a.id,
            resource_type: a.resource_type,
            resource_id: a.resource_id.clone(),
            metric_name: a.alert_type.clone(),
            alert_type: a.alert_type.clone(),
            severity: a.severity,
            message: a.message.clone(),
            value: number("value"),
            timestamp,
            state,
            started_at: a.timestamp,
            resolved_at: if state == NoticeState::Resolved {
                Some(a.resolved_at.unwrap_or(now))
            } else {
                None
            },
            threshold_warning: number("threshold_warning"),
            threshold_critical: number("threshold_critical"),
            unit: a
                .metadata
                .get("unit")
                .and_then(serde_json::Value::as_str)
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        })
    }

    /// The notice as one line of JSON, newline included (what an exec hook reads on stdin).
    pub(crate) fn to_json_line(&self) -> String {
        // A struct of plain fields and string-keyed maps cannot fail to serialize.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        line
    }

    /// The environment an exec hook gets, so shell scripts need no JSON parser.
    /// Missing values are empty strings; NUL bytes (which no environment can hold) are dropped,
    /// and a value is cut to [`ENV_VALUE_LIMIT`] bytes (the JSON on stdin has it whole).
    pub(crate) fn env_vars(&self) -> Vec<(String, String)> {
        let opt = |v: Option<String>| v.unwrap_or_default();
        [
            ("ALERT_ID", opt(self.id.map(|i| i.to_string()))),
            ("STATE", self.state.as_str().to_string()),
            ("SEVERITY", self.severity.as_str().to_string()),
            ("RESOURCE_TYPE", self.resource_type.as_str().to_string()),
            ("RESOURCE_ID", self.resource_id.clone()),
            ("METRIC", self.metric_name.clone()),
            ("ALERT_TYPE", self.alert_type.clone()),
            ("VALUE", opt(self.value.map(|v| v.to_string()))),
            ("MESSAGE", self.message.clone()),
            ("TIMESTAMP", format_timestamp(self.timestamp)),
        ]
        .into_iter()
        .map(|(k, v)| {
            let mut v = v.replace('\0', "");
            if v.len() > ENV_VALUE_LIMIT {
                let mut end = ENV_VALUE_LIMIT;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
            }
            (format!("HEALTH_MONITOR_{k}"), v)
        })
        .collect()
    }

    /// Identifies the alert stream across notices: `resource_type/resource_id/alert_type`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.resource_type, self.resource_id, self.alert_type
        )
    }
}

/// Serde for a time in the database's format (microseconds, `Z`), not chrono's variable one.
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::model::format_timestamp(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        crate::model::parse_timestamp(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {text:?}")))
    }
}

/// [`rfc3339`] for an optional time, `null` when absent.
mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&crate::model::format_timestamp(*t)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => crate::model::parse_timestamp(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{alert_at, at};
    use super::*;
    use crate::alerts::AlertEvent;

    /// The documented keys, in the order the README lists them.
    const KEYS: [&str; 15] = [
        "id",
        "resource_type",
        "resource_id",
        "metric_name",
        "alert_type",
        "severity",
        "message",
        "value",
        "timestamp",
        "state",
        "started_at",
        "resolved_at",
        "threshold_warning",
        "threshold_critical",
        "unit",
    ];

    fn keys(notice: &Notice) -> Vec<String> {
        let v = serde_json::to_value(notice).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    fn expected_keys() -> Vec<String> {
        let mut k: Vec<String> = KEYS.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn fired_reminder_and_resolved_notices_have_exactly_the_documented_keys() {
        let opened = alert_at(0);
        let fired = Notice::from_event(&AlertEvent::Fired(opened.clone()), at(99)).unwrap();
        let json = serde_json::to_value(&fired).unwrap();
        assert_eq!(keys(&fired), expected_keys());
        assert_eq!(json["id"], 42);
        assert_eq!(json["resource_type"], "workspace");
        assert_eq!(json["resource_id"], "w1");
        assert_eq!(json["metric_name"], "workspace_size_mb");
        assert_eq!(json["alert_type"], "workspace_size_mb");
        assert_eq!(json["severity"], "unhealthy");
        assert_eq!(json["value"], 1500.0);
        assert_eq!(json["threshold_warning"], 1000.0);
        assert_eq!(json["threshold_critical"], 5000.0);
        assert_eq!(json["unit"], "MB");
        assert_eq!(json["state"], "firing");
        assert_eq!(json["timestamp"], "2026-11-27T12:00:00.000000Z");
        assert_eq!(json["started_at"], "2026-11-27T12:00:00.000000Z");
        assert!(json["resolved_at"].is_null());

        let mut reminded = opened.clone();
        reminded.last_notified_at = at(300);
        let reminder = Notice::from_event(&AlertEvent::Reminder(reminded), at(301)).unwrap();
        let json = serde_json::to_value(&reminder).unwrap();
        assert_eq!(keys(&reminder), expected_keys());
        assert_eq!(json["state"], "reminder");
        assert_eq!(json["timestamp"], "2026-11-27T12:05:00.000000Z");
        assert_eq!(json["started_at"], "2026-11-27T12:00:00.000000Z");

        let mut done = opened.clone();
        done.resolved = true;
        done.resolved_at = Some(at(600));
        let resolved = Notice::from_event(&AlertEvent::Resolved(done), at(601)).unwrap();
        let json = serde_json::to_value(&resolved).unwrap();
        assert_eq!(keys(&resolved), expected_keys());
        assert_eq!(json["state"], "resolved");
        assert_eq!(json["timestamp"], "2026-11-27T12:10:00.000000Z");
        assert_eq!(json["resolved_at"], "2026-11-27T12:10:00.000000Z");

        // What a consumer parses is what we meant.
        let back: Notice = serde_json::from_str(resolved.to_json_line().trim_end()).unwrap();
        assert_eq!(back, resolved);
    }

    #[test]
    fn escalations_fire_and_downgrades_stay_quiet() {
        let mut a = alert_at(0);
        a.severity = HealthStatus::Critical;
        a.last_notified_at = at(30);
        let n = Notice::from_event(&AlertEvent::Escalated(a.clone()), at(31)).unwrap();
        assert_eq!(n.state, NoticeState::Firing);
        assert_eq!(n.severity, HealthStatus::Critical);
        assert_eq!(n.timestamp, at(30));
        assert_eq!(n.started_at, at(0));
        assert_eq!(Notice::from_event(&AlertEvent::Downgraded(a), at(40)), None);
    }

    #[test]
    fn a_condition_alert_has_null_value_and_names_itself_as_the_metric() {
        let mut a = alert_at(0);
        a.id = None;
        a.alert_type = "collector_failed".into();
        a.metadata = serde_json::json!({"actor": "agent:a1", "restarts": 5});
        let n = Notice::from_event(&AlertEvent::Fired(a), at(0)).unwrap();
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(keys(&n), expected_keys());
        assert_eq!(json["metric_name"], "collector_failed");
        for k in [
            "id",
            "value",
            "threshold_warning",
            "threshold_critical",
            "unit",
        ] {
            assert!(json[k].is_null(), "{k}: {}", json[k]);
        }
        let env: std::collections::HashMap<_, _> = n.env_vars().into_iter().collect();
        assert_eq!(env["HEALTH_MONITOR_ALERT_ID"], "");
        assert_eq!(env["HEALTH_MONITOR_VALUE"], "");
    }

    #[test]
    fn urls_are_shown_without_paths_or_credentials() {
        assert_eq!(
            display_url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            display_url("http://user:pw@127.0.0.1:9093"),
            "http://127.0.0.1:9093"
        );
        assert_eq!(display_url("http://h:1?token=x"), "http://h:1/…");
    }

    #[test]
    fn env_vars_carry_the_notice() {
        let mut a = alert_at(0);
        a.message = "bad\0 news".into();
        let n = Notice::from_event(&AlertEvent::Fired(a), at(0)).unwrap();
        let env = n.env_vars();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "HEALTH_MONITOR_ALERT_ID",
                "HEALTH_MONITOR_STATE",
                "HEALTH_MONITOR_SEVERITY",
                "HEALTH_MONITOR_RESOURCE_TYPE",
                "HEALTH_MONITOR_RESOURCE_ID",
                "HEALTH_MONITOR_METRIC",
                "HEALTH_MONITOR_ALERT_TYPE",
                "HEALTH_MONITOR_VALUE",
                "HEALTH_MONITOR_MESSAGE",
                "HEALTH_MONITOR_TIMESTAMP",
            ]
        );
        let env: std::collections::HashMap<_, _> = env.into_iter().collect();
        assert_eq!(env["HEALTH_MONITOR_ALERT_ID"], "42");
        assert_eq!(env["HEALTH_MONITOR_STATE"], "firing");
        assert_eq!(env["HEALTH_MONITOR_SEVERITY"], "unhealthy");
        assert_eq!(env["HEALTH_MONITOR_RESOURCE_TYPE"], "workspace");
        assert_eq!(env["HEALTH_MONITOR_RESOURCE_ID"], "w1");
        assert_eq!(env["HEALTH_MONITOR_METRIC"], "workspace_size_mb");
        assert_eq!(env["HEALTH_MONITOR_ALERT_TYPE"], "workspace_size_mb");
        assert_eq!(env["HEALTH_MONITOR_VALUE"], "1500");
        assert_eq!(env["HEALTH_MONITOR_MESSAGE"], "bad news");
        assert_eq!(
            env["HEALTH_MONITOR_TIMESTAMP"],
            "2026-11-27T12:00:00.000000Z"
        );

        let mut a = alert_at(0);
        a.message = "é".repeat(ENV_VALUE_LIMIT);
        let n = Notice::from_event(&AlertEvent::Fired(a), at(0)).unwrap();
        let env: std::collections::HashMap<_, _> = n.env_vars().into_iter().collect();
        let cut = &env["HEALTH_MONITOR_MESSAGE"];
        assert_eq!(cut.len(), ENV_VALUE_LIMIT);
        assert!(n.message.starts_with(cut.as_str()));
    }
}
