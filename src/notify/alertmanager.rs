//! The Alertmanager sink: speaks the v2 API (`POST {url}/api/v2/alerts`) the way Prometheus does.
//!
//! Alertmanager resolves an alert by itself once its `endsAt` passes, so the sink remembers the
//! alerts that fire and re-posts them all every resend interval with `endsAt` four intervals
//! ahead; a resolved notice posts the alert once more with `endsAt` at its resolution and
//! forgets it. If the daemon dies, its alerts expire on their own a few intervals later.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::dispatch::Sink;
use super::webhook::{http_agent, post_json};
use super::{Notice, NoticeState};
use crate::alerts::{format_number, format_value};
use crate::config::outputs::AlertmanagerSink;
use crate::model::format_timestamp;

/// How many resend intervals a firing alert stays active in Alertmanager without news
/// (Prometheus uses the same margin).
pub(crate) const ENDS_AFTER_RESENDS: u32 = 4;

/// One alert in the shape `POST /api/v2/alerts` takes (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    /// Identify the alert: `alertname`, `severity`, `resource_type`, `resource_id`, `metric`.
    pub labels: BTreeMap<String, String>,
    /// `summary` (the message) and `description`.
    pub annotations: BTreeMap<String, String>,
    /// When the alert opened.
    #[serde(with = "super::rfc3339")]
    pub starts_at: DateTime<Utc>,
    /// When Alertmanager should consider it resolved.
    #[serde(with = "super::rfc3339")]
    pub ends_at: DateTime<Utc>,
}

/// The labels Alertmanager identifies the alert by. Severity is among them (routes match on
/// it), so a change in severity is a different Alertmanager alert; see [`AlertmanagerState`].
pub fn labels(n: &Notice) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("alertname".to_string(), n.alert_type.clone()),
        ("severity".to_string(), n.severity.as_str().to_string()),
        (
            "resource_type".to_string(),
            n.resource_type.as_str().to_string(),
        ),
        ("resource_id".to_string(), n.resource_id.clone()),
        ("metric".to_string(), n.metric_name.clone()),
    ])
}

/// `summary` is the message; `description` adds the value, thresholds, start and row id.
pub fn annotations(n: &Notice) -> BTreeMap<String, String> {
    let unit = n.unit.as_deref().unwrap_or("");
    let mut description = format!("{} {}: {}", n.resource_type, n.resource_id, n.metric_name);
    if let Some(v) = n.value {
        description.push_str(&format!(" = {}", format_value(v, unit)));
    }
    let thresholds: Vec<String> = [
        ("warning", n.threshold_warning),
        ("critical", n.threshold_critical),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} {}", format_number(v))))
    .collect();
    if !thresholds.is_empty() {
        description.push_str(&format!(" (thresholds: {})", thresholds.join(", ")));
    }
    description.push_str(&format!("; open since {}", format_timestamp(n.started_at)));
    if let Some(id) = n.id {
        description.push_str(&format!("; alert #{id}"));
    }
    BTreeMap::from([
        ("summary".to_string(), n.message.clone()),
        ("description".to_string(), description),
    ])
}

#[derive(Debug, Clone, PartialEq)]
struct Firing {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: DateTime<Utc>,
}

impl Firing {
    fn from_notice(n: &Notice) -> Self {
        Firing {
            labels: labels(n),
            annotations: annotations(n),
            starts_at: n.started_at,
        }
    }

    fn until(&self, ends_at: DateTime<Utc>) -> PostableAlert {
        PostableAlert {
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            starts_at: self.starts_at,
            // Alertmanager refuses an end before the start.
            ends_at: ends_at.max(self.starts_at),
        }
    }
}

/// What the sink knows of Alertmanager's view: the alerts it keeps firing, and resolutions
/// not yet delivered. Pure logic: every method says what to post; nothing here does I/O.
#[derive(Debug)]
pub struct AlertmanagerState {
    resend: Duration,
    /// By notice key (`resource_type/resource_id/alert_type`).
    firing: HashMap<String, Firing>,
    /// Resolutions (and superseded severities) to post until one post succeeds, so a failed
    /// delivery is repaired by the next re-send. By notice key, as several may be pending.
    pending: Vec<(String, PostableAlert)>,
}

impl AlertmanagerState {
    /// Empty state for a sink re-sending every `resend`.
    pub fn new(resend: Duration) -> Self {
        AlertmanagerState {
            resend,
            firing: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// When a firing alert posted `now` ends unless re-sent: four resend intervals on.
    pub fn firing_ends_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.resend * ENDS_AFTER_RESENDS)
            .unwrap_or(chrono::Duration::MAX)
    }

    /// Takes a notice in and returns what to post for it. Repeating the same notice (a retry)
    /// returns the same alerts.
    pub fn on_notice(&mut self, n: &Notice, now: DateTime<Utc>) -> Vec<PostableAlert> {
        self.expire_pending(now);
        let key = n.key();
        match n.state {
            NoticeState::Firing | NoticeState::Reminder => {
                let fresh = Firing::from_notice(n);
                if let Some(old) = self.firing.get(&key)
                    && old.labels != fresh.labels
                {
                    // Severity changed: end the alert Alertmanager knows under the old labels.
                    let ended = old.until(now);
                    self.push_pending(&key, ended);
                }
                let alert = fresh.until(self.firing_ends_at(now));
                self.firing.insert(key, fresh);
                let mut out = self.pending_alerts();
                out.push(alert);
                out
            }
            NoticeState::Resolved => {
                let ends_at = n.resolved_at.unwrap_or(n.timestamp);
                match self.firing.remove(&key) {
                    // Resolve what Alertmanager was told, even if severity moved quietly since.
                    Some(known) => self.push_pending(&key, known.until(ends_at)),
                    // A retry of this resolution: it is pending already.
                    None if self.pending.iter().any(|(k, _)| *k == key) => {}
                    // Not known here (e.g. fired before a restart): resolve it by its labels.
                    None => self.push_pending(&key, Firing::from_notice(n).until(ends_at)),
                }
                self.pending_alerts()
            }
        }
    }

    /// Takes in an alert already firing, without posting now; the next re-send carries it.
    pub fn restore(&mut self, n: &Notice) {
        if n.state != NoticeState::Resolved {
            self.firing.insert(n.key(), Firing::from_notice(n));
        }
    }

    /// Everything to re-send: every firing alert with a fresh `endsAt`, and pending resolutions.
    pub fn resend_all(&mut self, now: DateTime<Utc>) -> Vec<PostableAlert> {
        self.expire_pending(now);
        let ends_at = self.firing_ends_at(now);
        let mut out = self.pending_alerts();
        let mut firing: Vec<&Firing> = self.firing.values().collect();
        firing.sort_by(|a, b| a.labels.cmp(&b.labels));
        out.extend(firing.into_iter().map(|f| f.until(ends_at)));
        out
    }

    /// A post succeeded: the pending resolutions it carried are delivered.
    pub fn delivered(&mut self) {
        self.pending.clear();
    }

    /// True when there is anything to keep re-sending.
    pub fn is_idle(&self) -> bool {
        self.firing.is_empty() && self.pending.is_empty()
    }

    /// How many alerts are being kept firing.
    pub fn firing_count(&self) -> usize {
        self.firing.len()
    }

    fn push_pending(&mut self, key: &str, alert: PostableAlert) {
        self.pending.retain(|(_, p)| p.labels != alert.labels);
        self.pending.push((key.to_string(), alert));
    }

    fn pending_alerts(&self) -> Vec<PostableAlert> {
        self.pending.iter().map(|(_, p)| p.clone()).collect()
    }

    /// A resolution older than the firing alert's lifetime is moot: Alertmanager has ended it.
    fn expire_pending(&mut self, now: DateTime<Utc>) {
        let horizon = self.firing_ends_at(now) - now;
        self.pending.retain(|(_, p)| now - p.ends_at < horizon);
    }
}

/// The Alertmanager sink as the dispatcher drives it.
pub(crate) struct Alertmanager {
    sink: AlertmanagerSink,
    endpoint: String,
    agent: ureq::Agent,
    state: AlertmanagerState,
    next_resend: Option<Instant>,
}

impl Alertmanager {
    /// A sink for one Alertmanager, re-sending firing alerts every `resend`.
    pub(crate) fn new(sink: AlertmanagerSink, resend: Duration) -> Self {
        Alertmanager {
            endpoint: format!("{}/api/v2/alerts", sink.url.trim_end_matches('/')),
            sink,
            agent: http_agent(),
            // A zero interval would re-send in a busy loop.
            state: AlertmanagerState::new(resend.max(Duration::from_millis(10))),
            next_resend: None,
        }
    }

    fn post(&mut self, alerts: &[PostableAlert], timeout: Duration) -> Result<(), String> {
        if alerts.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_string(alerts).map_err(|e| e.to_string())?;
        post_json(&self.agent, &self.endpoint, &[], &body, timeout)?;
        self.state.delivered();
        Ok(())
    }

    /// Keeps the resend clock running exactly while there is something to re-send.
    fn schedule(&mut self) {
        if self.state.is_idle() {
            self.next_resend = None;
        } else if self.next_resend.is_none() {
            self.next_resend = Some(Instant::now() + self.state.resend);
        }
    }
}

impl Sink for Alertmanager {
    fn name(&self) -> String {
        format!("alertmanager:{}", super::display_url(&self.sink.url))
    }

    fn timeout(&self) -> Duration {
        self.sink.timeout
    }

    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String> {
        let alerts = self.state.on_notice(notice, Utc::now());
        self.schedule();
        self.post(&alerts, timeout)
    }

    fn keeps_state(&self) -> bool {
        true
    }

    fn restore(&mut self, notice: &Notice) {
        self.state.restore(notice);
        // Post soon: Alertmanager may have let it expire while we were down.
        self.next_resend = Some(Instant::now());
    }

    fn next_due(&self) -> Option<Instant> {
        self.next_resend
    }

    fn tick(&mut self, timeout: Duration) -> Result<(), String> {
        // Moved on first, so a failing (or panicking) re-send is tried again next interval,
        // not in a loop.
        self.next_resend = Some(Instant::now() + self.state.resend);
        let alerts = self.state.resend_all(Utc::now());
        if self.state.is_idle() {
            self.next_resend = None;
        }
        self.post(&alerts, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{TestServer, at, notice, wait_until};
    use super::*;
    use crate::config::outputs::NotifySettings;
    use crate::model::HealthStatus;
    use crate::notify::{Notifier, Timings};

    fn state() -> AlertmanagerState {
        AlertmanagerState::new(Duration::from_secs(60))
    }

    #[test]
    fn a_firing_notice_becomes_a_postable_alert() {
        let mut s = state();
        let n = notice(NoticeState::Firing, "workspace w1 is big");
        let out = s.on_notice(&n, at(10));
        assert_eq!(out.len(), 1);
        let json = serde_json::to_value(&out[0]).unwrap();
        assert_eq!(
            json["labels"],
            serde_json::json!({
                "alertname": "workspace_size_mb",
                "severity": "unhealthy",
                "resource_type": "workspace",
                "resource_id": "w1",
                "metric": "workspace_size_mb",
            })
        );
        assert_eq!(json["annotations"]["summary"], "workspace w1 is big");
        assert_eq!(
            json["annotations"]["description"],
            "workspace w1: workspace_size_mb = 1500 MB (thresholds: warning 1000, critical 5000); \
             open since 2026-11-27T12:00:00.000000Z; alert #42"
        );
        assert_eq!(json["startsAt"], "2026-11-27T12:00:00.000000Z");
        // Four resend intervals after now.
        assert_eq!(json["endsAt"], "2026-11-27T12:04:10.000000Z");
        assert_eq!(json.as_object().unwrap().len(), 4, "{json}");
    }

    #[test]
    fn firing_alerts_are_re_sent_with_a_fresh_end_until_resolved() {
        let mut s = state();
        s.on_notice(&notice(NoticeState::Firing, "m"), at(0));
        s.delivered();
        let again = s.resend_all(at(60));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].ends_at, at(300));
        assert_eq!(again[0].starts_at, at(0));
        // A reminder refreshes the one alert, it does not add one.
        s.on_notice(&notice(NoticeState::Reminder, "m"), at(90));
        assert_eq!(s.firing_count(), 1);

        let mut done = notice(NoticeState::Resolved, "m");
        done.resolved_at = Some(at(120));
        let out = s.on_notice(&done, at(121));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ends_at, at(120));
        // A retry of the same resolution posts the same thing.
        assert_eq!(s.on_notice(&done, at(122)), out);
        s.delivered();
        assert!(s.is_idle());
        assert!(s.resend_all(at(180)).is_empty());
    }

    #[test]
    fn an_undelivered_resolution_rides_along_until_it_gets_through() {
        let mut s = state();
        s.on_notice(&notice(NoticeState::Firing, "m"), at(0));
        let mut other = notice(NoticeState::Firing, "m");
        other.resource_id = "w2".into();
        s.on_notice(&other, at(0));
        s.delivered();
        let mut done = notice(NoticeState::Resolved, "m");
        done.resolved_at = Some(at(30));
        s.on_notice(&done, at(30)); // ...and that post failed.
        let resend = s.resend_all(at(60));
        assert_eq!(resend.len(), 2);
        assert_eq!(resend[0].labels["resource_id"], "w1");
        assert_eq!(resend[0].ends_at, at(30));
        assert_eq!(resend[1].labels["resource_id"], "w2");
        s.delivered();
        assert_eq!(s.resend_all(at(120)).len(), 1);
        // Long after, a stale resolution is dropped rather than carried forever.
        s.on_notice(&done, at(130));
        assert_eq!(s.resend_all(at(130 + 241)).len(), 1);
    }

    #[test]
    fn a_change_of_severity_ends_the_old_alert() {
        let mut s = state();
        s.on_notice(&notice(NoticeState::Firing, "m"), at(0));
        s.delivered();
        let mut worse = notice(NoticeState::Firing, "m");
        worse.severity = HealthStatus::Critical;
        let out = s.on_notice(&worse, at(30));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels["severity"], "unhealthy");
        assert_eq!(out[0].ends_at, at(30));
        assert_eq!(out[1].labels["severity"], "critical");
        assert_eq!(out[1].ends_at, at(270));
        s.delivered();
        // The resolution ends what Alertmanager knows, whatever severity the notice carries.
        let mut done = notice(NoticeState::Resolved, "m");
        done.resolved_at = Some(at(60));
        let out = s.on_notice(&done, at(60));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].labels["severity"], "critical");
    }

    #[test]
    fn a_resolution_at_the_opening_instant_is_still_valid() {
        let mut s = state();
        let mut done = notice(NoticeState::Resolved, "m");
        done.resolved_at = Some(done.started_at - chrono::Duration::seconds(1));
        let out = s.on_notice(&done, at(0));
        assert!(out[0].ends_at >= out[0].starts_at);
    }

    #[test]
    fn the_sink_re_sends_on_its_own_and_restores_quietly() {
        let server = TestServer::start(vec![]);
        let settings = NotifySettings {
            alertmanagers: vec![AlertmanagerSink {
                url: server.url.clone(),
                timeout: Duration::from_secs(5),
            }],
            retries: 0,
            ..Default::default()
        };
        let timings = Timings {
            resend_interval: Duration::from_millis(200),
            ..Timings::default()
        };
        let notifier = Notifier::with_timings(&settings, timings);
        let mut restored = notice(NoticeState::Reminder, "from before a restart");
        restored.resource_id = "w9".into();
        notifier.restore(&restored);
        notifier.notify(&notice(NoticeState::Firing, "m"));
        // Several re-sends carry both alerts; none of them counts as a notice sent.
        assert!(wait_until(Duration::from_secs(10), || {
            let all = server.requests();
            all.len() >= 3
                && all
                    .iter()
                    .rev()
                    .take(1)
                    .all(|r| r.body.matches("alertname").count() == 2)
        }));
        let first = server.requests().remove(0);
        assert_eq!(first.path, "/api/v2/alerts");
        assert_eq!(first.header("content-type"), Some("application/json"));
        assert_eq!(notifier.report()[0].sent, 1);

        let mut done = notice(NoticeState::Resolved, "m");
        done.resolved_at = Some(Utc::now());
        notifier.notify(&done);
        assert!(wait_until(Duration::from_secs(10), || notifier.report()[0]
            .sent
            == 2));
        let n = server.requests().len();
        assert!(wait_until(Duration::from_secs(10), || server
            .requests()
            .len()
            >= n + 2));
        let last = server.requests().pop().unwrap();
        let alerts: Vec<PostableAlert> = serde_json::from_str(&last.body).unwrap();
        assert_eq!(alerts.len(), 1, "only w9 is left firing: {}", last.body);
        assert_eq!(alerts[0].labels["resource_id"], "w9");
        notifier.shutdown(Duration::from_secs(1));
    }
}
