//! What the dashboard's event stream (`GET /api/v1/events`) carries: every alert event as it
//! happens, and once per cycle the resources and alerts that changed since the last cycle.
//! The state a page shows is [`LiveState`]; [`LiveState::diff`] makes a cycle's update from two
//! of them. The hub only broadcasts: it costs nothing while no page listens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::alerts::AlertEvent;

/// Events a slow page may fall behind by before it is told to start over (`resync`).
const CAPACITY: usize = 256;

/// One event of the stream: its SSE `event:` name and its JSON `data:`.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// `alert`, `cycle` or `state`.
    pub name: &'static str,
    /// The event's JSON.
    pub data: Arc<str>,
}

/// One resource as a page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveResource {
    /// Its type (`workspace`...).
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Its id.
    pub id: String,
    /// Its status word.
    pub status: String,
    /// Its key values, as the page prints them.
    pub values: String,
}

/// One active alert as a page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveAlert {
    /// Its row id.
    pub id: i64,
    /// Its severity word.
    pub severity: String,
    /// Its resource's type.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Its resource's id.
    pub resource: String,
    /// Its metric or condition.
    pub metric: String,
    /// Its message.
    pub message: String,
    /// When it opened (RFC 3339).
    pub since: String,
    /// True once acknowledged.
    pub acked: bool,
    /// True while a silence covers it.
    pub silenced: bool,
}

/// One silence in force as a page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSilence {
    /// The silenced resource's type.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The silenced resource's id.
    pub id: String,
    /// The one metric silenced; empty for every alert of the resource.
    pub metric: String,
    /// When it ends (RFC 3339).
    pub until: String,
    /// The operator's note.
    pub comment: String,
}

/// Everything a page shows that changes: the overall status, every resource, the alerts, the
/// silences.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiveState {
    /// The overall status word.
    pub overall: String,
    /// Every resource, by `type/id`.
    pub resources: BTreeMap<String, LiveResource>,
    /// The active alerts, newest first.
    pub alerts: Vec<LiveAlert>,
    /// The silences in force.
    pub silences: Vec<LiveSilence>,
}

/// A cycle's update: what changed since the previous state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveDiff {
    /// The overall status word (always sent: it is small).
    pub overall: String,
    /// Resources new or changed.
    pub changed: Vec<LiveResource>,
    /// Resources gone, as `type/id`.
    pub removed: Vec<String>,
    /// The whole alert list, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<LiveAlert>>,
    /// The whole list of silences, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silences: Option<Vec<LiveSilence>>,
}

impl LiveState {
    /// The update from `before` to `self`; `None` when nothing changed.
    pub fn diff(&self, before: &LiveState) -> Option<LiveDiff> {
        let changed: Vec<LiveResource> = self
            .resources
            .iter()
            .filter(|(k, r)| before.resources.get(*k) != Some(r))
            .map(|(_, r)| r.clone())
            .collect();
        let removed: Vec<String> = before
            .resources
            .keys()
            .filter(|k| !self.resources.contains_key(*k))
            .cloned()
            .collect();
        let alerts = (self.alerts != before.alerts).then(|| self.alerts.clone());
        let silences = (self.silences != before.silences).then(|| self.silences.clone());
        if changed.is_empty()
            && removed.is_empty()
            && alerts.is_none()
            && silences.is_none()
            && self.overall == before.overall
        {
            return None;
        }
        Some(LiveDiff {
            overall: self.overall.clone(),
            changed,
            removed,
            alerts,
            silences,
        })
    }
}

/// The broadcast of live events, and the latest full state for pages that join.
#[derive(Debug)]
pub struct LiveHub {
    tx: broadcast::Sender<LiveEvent>,
    latest: Mutex<Option<(LiveState, Arc<str>)>>,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            tx: broadcast::channel(CAPACITY).0,
            latest: Mutex::new(None),
        }
    }
}

impl LiveHub {
    /// A new listener.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    /// Pages listening now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Sends each alert event to the pages listening (nothing to do when none listens).
    pub fn alert_events(&self, events: &[AlertEvent]) {
        if self.listeners() == 0 {
            return;
        }
        for event in events {
            let (kind, a) = match event {
                AlertEvent::Fired(a) => ("fired", a),
                AlertEvent::Escalated(a) => ("escalated", a),
                AlertEvent::Reminder(a) => ("reminder", a),
                AlertEvent::Downgraded(a) => ("downgraded", a),
                AlertEvent::Resolved(a) => ("resolved", a),
            };
            let data = serde_json::json!({
                "event": kind,
                "id": a.id,
                "severity": a.severity,
                "type": a.resource_type,
                "resource": a.resource_id,
                "metric": a.alert_type,
                "message": a.message,
                "since": crate::model::format_timestamp(a.timestamp),
                "acked": a.acknowledged_at.is_some(),
            });
            let _ = self.tx.send(LiveEvent {
                name: "alert",
                data: data.to_string().into(),
            });
        }
    }

    /// Takes a cycle's state: sends what changed to the pages listening, and keeps it whole
    /// for pages that join.
    pub fn cycle(&self, state: LiveState) {
        let full: Arc<str> = serde_json::to_string(&state)
            .unwrap_or_else(|_| "{}".into())
            .into();
        let mut latest = crate::util::lock(&self.latest);
        let diff = match latest.as_ref() {
            Some((before, _)) => state.diff(before),
            None => None,
        };
        *latest = Some((state, full));
        drop(latest);
        if let Some(diff) = diff {
            let data = serde_json::to_string(&diff).unwrap_or_else(|_| "{}".into());
            let _ = self.tx.send(LiveEvent {
                name: "cycle",
                data: data.into(),
            });
        }
    }

    /// The latest full state, as a page that joins gets it first (`state`).
    pub fn latest(&self) -> Option<LiveEvent> {
        crate::util::lock(&self.latest)
            .as_ref()
            .map(|(_, full)| LiveEvent {
                name: "state",
                data: full.clone(),
            })
    }
}

/// Formats one event for the wire: `event:` and `data:` lines and a blank line.
pub fn sse_frame(event: &LiveEvent) -> String {
    // JSON has no raw newline, so the data is one line.
    format!("event: {}\ndata: {}\n\n", event.name, event.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: &str, status: &str) -> LiveResource {
        LiveResource {
            resource_type: "workspace".into(),
            id: id.into(),
            status: status.into(),
            values: "workspace_size_mb=1MB".into(),
        }
    }

    fn state(resources: &[LiveResource]) -> LiveState {
        LiveState {
            overall: "healthy".into(),
            resources: resources
                .iter()
                .map(|r| (format!("{}/{}", r.resource_type, r.id), r.clone()))
                .collect(),
            alerts: Vec::new(),
            silences: Vec::new(),
        }
    }

    #[test]
    fn a_cycle_sends_only_what_changed() {
        let a = state(&[resource("w1", "healthy"), resource("w2", "healthy")]);
        let b = state(&[resource("w1", "critical"), resource("w3", "healthy")]);
        let d = b.diff(&a).unwrap();
        let ids: Vec<&str> = d.changed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w3"]);
        assert_eq!(d.removed, ["workspace/w2"]);
        assert!(d.alerts.is_none());
        assert!(b.diff(&b).is_none());
    }

    #[test]
    fn the_hub_sends_diffs_to_listeners_and_keeps_the_whole_state_for_newcomers() {
        let hub = LiveHub::default();
        hub.cycle(state(&[resource("w1", "healthy")]));
        let mut rx = hub.subscribe();
        hub.cycle(state(&[resource("w1", "healthy")]));
        assert!(rx.try_recv().is_err(), "nothing changed, nothing sent");
        hub.cycle(state(&[resource("w1", "critical")]));
        let event = rx.try_recv().unwrap();
        assert_eq!(event.name, "cycle");
        assert!(event.data.contains("\"critical\""), "{}", event.data);
        let latest = hub.latest().unwrap();
        assert_eq!(latest.name, "state");
        assert!(latest.data.contains("critical"));
        assert!(sse_frame(&event).starts_with("event: cycle\ndata: {"));
        assert!(sse_frame(&event).ends_with("}\n\n"));
    }
}
