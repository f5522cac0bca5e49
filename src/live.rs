//! What the dashboard's event stream (`GET /api/v1/events`) carries: every alert event, and
//! once per cycle the resources and alerts that changed since the last cycle, the alert events
//! sent with the cycle's update (or on the next beat, at most a second after they happened).
//! The state a page shows is [`LiveState`]; [`LiveState::diff`] makes a cycle's update from two
//! of them. The hub only broadcasts: it costs nothing while no page listens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::alerts::AlertEvent;

/// Sends (frames) a slow page may fall behind by before it is told to start over (`resync`).
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

/// How long the stream may stay quiet before the pages get a comment line (`: keep-alive`):
/// proxies and browsers drop connections that say nothing for long.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The comment line sent when the stream has been quiet for [`KEEP_ALIVE`].
const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";

/// What the hub sends to every page at once: one or more events as they go on the wire,
/// formatted once for all pages (each page's stream only clones the `Bytes`).
pub type LiveFrame = Bytes;

/// The broadcast of live events, and the latest full state for pages that join.
///
/// Everything a page gets in one interval goes out in one send: the alert events are held
/// until the next cycle's update (or the next beat's [`LiveHub::flush`], at most a second
/// later) and sent in one frame before it. Each send costs every page a wake-up and a write
/// to its socket, most of what a page costs the daemon.
#[derive(Debug)]
pub struct LiveHub {
    tx: broadcast::Sender<LiveFrame>,
    outbox: Mutex<Outbox>,
}

/// What the hub keeps between sends.
#[derive(Debug, Default)]
struct Outbox {
    /// The latest cycle's state, for pages that join.
    state: Option<LiveState>,
    /// Its JSON: made when a page joins, not every cycle, and kept until the next cycle.
    full: Option<Arc<str>>,
    /// The frames of alert events not sent yet.
    held: Vec<u8>,
    /// When the pages were last sent anything.
    last_sent: Option<Instant>,
    /// The size of the last cycle's frame: the next one's buffer is made that big at once,
    /// rather than grown and copied a few times over as it is written.
    last_frame: usize,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub {
            tx: broadcast::channel(CAPACITY).0,
            outbox: Mutex::new(Outbox::default()),
        }
    }
}

impl LiveHub {
    /// A new listener. The first one starts the stream's quiet time: it got its state now.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveFrame> {
        let mut outbox = crate::util::lock(&self.outbox);
        if self.listeners() == 0 {
            outbox.last_sent = Some(Instant::now());
        }
        self.tx.subscribe()
    }

    /// Pages listening now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Holds each alert event for the pages listening, to go with the next send (nothing to
    /// do when none listens).
    pub fn alert_events(&self, events: &[AlertEvent]) {
        if events.is_empty() || self.listeners() == 0 {
            return;
        }
        let mut outbox = crate::util::lock(&self.outbox);
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
            push_frame(&mut outbox.held, "alert", &data);
        }
    }

    /// Takes a cycle's state: sends the held alert events and what changed to the pages
    /// listening, in one frame, and keeps the state for pages that join.
    pub fn cycle(&self, state: LiveState) {
        self.cycle_at(state, Instant::now());
    }

    /// [`LiveHub::cycle`] at `now`.
    fn cycle_at(&self, state: LiveState, now: Instant) {
        self.cycle_with_at(
            |kept| {
                let diff = state.diff(kept);
                *kept = state;
                diff
            },
            now,
        );
    }

    /// A cycle that brings the kept state up to date in place: `update` changes it and says
    /// what changed, which goes to the pages as [`LiveHub::cycle`] sends it. The first cycle
    /// only keeps its state: pages that join get it whole.
    pub fn cycle_with(&self, update: impl FnOnce(&mut LiveState) -> Option<LiveDiff>) {
        self.cycle_with_at(update, Instant::now());
    }

    /// [`LiveHub::cycle_with`] at `now`.
    fn cycle_with_at(&self, update: impl FnOnce(&mut LiveState) -> Option<LiveDiff>, now: Instant) {
        let mut outbox = crate::util::lock(&self.outbox);
        let first = outbox.state.is_none();
        let diff = update(outbox.state.get_or_insert_with(LiveState::default));
        if first || diff.is_some() {
            outbox.full = None;
        }
        let mut frame = std::mem::take(&mut outbox.held);
        if let Some(diff) = diff.filter(|_| !first) {
            frame.reserve(outbox.last_frame + 256);
            push_frame(&mut frame, "cycle", &diff);
            outbox.last_frame = frame.len();
        }
        self.send(&mut outbox, frame, now);
    }

    /// Between cycles: sends the held alert events, or a comment line when the stream has been
    /// quiet for [`KEEP_ALIVE`]. The publisher calls it on every beat without a cycle.
    pub fn flush(&self) {
        self.flush_at(Instant::now());
    }

    /// [`LiveHub::flush`] at `now`.
    fn flush_at(&self, now: Instant) {
        let mut outbox = crate::util::lock(&self.outbox);
        let frame = std::mem::take(&mut outbox.held);
        self.send(&mut outbox, frame, now);
    }

    /// Sends `frame` to the pages listening (a comment line instead of nothing when it is
    /// time); to none, nothing.
    fn send(&self, outbox: &mut Outbox, frame: Vec<u8>, now: Instant) {
        if self.listeners() == 0 {
            return;
        }
        let frame = if !frame.is_empty() {
            Bytes::from(frame)
        } else if outbox
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= KEEP_ALIVE)
        {
            Bytes::from_static(KEEP_ALIVE_FRAME)
        } else {
            return;
        };
        outbox.last_sent = Some(now);
        let _ = self.tx.send(frame);
    }

    /// The latest full state, as a page that joins gets it first (`state`).
    pub fn latest(&self) -> Option<LiveEvent> {
        let mut outbox = crate::util::lock(&self.outbox);
        let Outbox { state, full, .. } = &mut *outbox;
        let state = state.as_ref()?;
        let data = full.get_or_insert_with(|| {
            serde_json::to_string(state)
                .unwrap_or_else(|_| "{}".into())
                .into()
        });
        Some(LiveEvent {
            name: "state",
            data: data.clone(),
        })
    }
}

/// Appends one event to `out` as it goes on the wire: `event:` and `data:` lines and a blank
/// line. JSON has no raw newline, so the data is one line.
fn push_frame(out: &mut Vec<u8>, name: &str, data: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let at = out.len();
    if serde_json::to_writer(&mut *out, data).is_err() {
        out.truncate(at);
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
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

    /// The text of the next frame sent, if any.
    fn next(rx: &mut broadcast::Receiver<LiveFrame>) -> Option<String> {
        rx.try_recv()
            .ok()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
    }

    fn fired(id: i64) -> AlertEvent {
        AlertEvent::Fired(crate::model::HealthAlert {
            id: Some(id),
            resource_type: crate::model::ResourceType::Workspace,
            resource_id: "w1".into(),
            alert_type: "workspace_size_mb".into(),
            severity: crate::model::HealthStatus::Critical,
            message: "w1 is big".into(),
            timestamp: chrono::Utc::now(),
            metadata: serde_json::Value::Null,
            resolved: false,
            resolved_at: None,
            last_notified_at: chrono::Utc::now(),
            acknowledged_at: None,
        })
    }

    #[test]
    fn the_hub_sends_diffs_to_listeners_and_keeps_the_whole_state_for_newcomers() {
        let hub = LiveHub::default();
        hub.cycle(state(&[resource("w1", "healthy")]));
        let mut rx = hub.subscribe();
        hub.cycle(state(&[resource("w1", "healthy")]));
        assert_eq!(next(&mut rx), None, "nothing changed, nothing sent");
        hub.cycle(state(&[resource("w1", "critical")]));
        let frame = next(&mut rx).unwrap();
        assert!(frame.starts_with("event: cycle\ndata: {"), "{frame}");
        assert!(frame.ends_with("}\n\n"), "{frame}");
        assert!(frame.contains("\"critical\""), "{frame}");
        assert_eq!(frame.matches('\n').count(), 3, "one event: {frame}");
        let latest = hub.latest().unwrap();
        assert_eq!(latest.name, "state");
        assert!(latest.data.contains("critical"));
        assert!(sse_frame(&latest).starts_with("event: state\ndata: {"));
    }

    #[test]
    fn the_whole_state_is_made_when_a_page_joins_and_is_the_latest_cycles() {
        let hub = LiveHub::default();
        assert!(hub.latest().is_none());
        let first = state(&[resource("w1", "healthy")]);
        hub.cycle(first.clone());
        assert!(
            crate::util::lock(&hub.outbox).full.is_none(),
            "not made per cycle"
        );
        let data = hub.latest().unwrap().data;
        assert_eq!(&*data, serde_json::to_string(&first).unwrap());
        assert!(Arc::ptr_eq(&data, &hub.latest().unwrap().data), "made once");
        let second = state(&[resource("w1", "critical"), resource("w2", "healthy")]);
        hub.cycle(second.clone());
        assert_eq!(
            &*hub.latest().unwrap().data,
            serde_json::to_string(&second).unwrap()
        );
    }

    #[test]
    fn alert_events_go_out_with_the_next_cycle_in_one_frame_before_its_update() {
        let hub = LiveHub::default();
        hub.cycle(state(&[resource("w1", "healthy")]));
        let mut rx = hub.subscribe();
        hub.alert_events(&[fired(7), fired(8)]);
        assert_eq!(next(&mut rx), None, "held until the next send");
        hub.cycle(state(&[resource("w1", "critical")]));
        let frame = next(&mut rx).unwrap();
        let names: Vec<&str> = frame
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(names, ["alert", "alert", "cycle"], "{frame}");
        let first = frame.split("\n\n").next().unwrap();
        assert!(first.starts_with("event: alert\ndata: {"), "{frame}");
        for field in [
            r#""event":"fired""#,
            r#""id":7,"#,
            r#""message":"w1 is big""#,
        ] {
            assert!(first.contains(field), "{field} in {frame}");
        }
        assert_eq!(next(&mut rx), None, "one send for all three");
        // Between cycles, the beat's flush sends what is held, alone.
        hub.alert_events(&[fired(9)]);
        hub.flush();
        let frame = next(&mut rx).unwrap();
        assert!(frame.starts_with("event: alert\n"), "{frame}");
        assert_eq!(frame.matches("event: ").count(), 1, "{frame}");
        hub.flush();
        assert_eq!(next(&mut rx), None, "sent once");
    }

    #[test]
    fn nothing_is_held_while_no_page_listens() {
        let hub = LiveHub::default();
        hub.alert_events(&[fired(1)]);
        assert!(crate::util::lock(&hub.outbox).held.is_empty());
        let mut rx = hub.subscribe();
        hub.flush();
        assert_eq!(next(&mut rx), None);
    }

    #[test]
    fn a_quiet_stream_gets_a_comment_line_after_the_keep_alive_time() {
        let hub = LiveHub::default();
        let mut rx = hub.subscribe();
        let joined = Instant::now();
        hub.flush_at(joined + Duration::from_secs(1));
        assert_eq!(next(&mut rx), None, "not yet");
        let later = joined + KEEP_ALIVE + Duration::from_secs(1);
        hub.flush_at(later);
        assert_eq!(next(&mut rx).as_deref(), Some(": keep-alive\n\n"));
        hub.flush_at(later + Duration::from_secs(1));
        assert_eq!(next(&mut rx), None, "quiet time counts from the last send");
        // A cycle with nothing new is quiet too.
        hub.cycle_at(state(&[]), later + KEEP_ALIVE);
        assert_eq!(next(&mut rx).as_deref(), Some(": keep-alive\n\n"));
    }
}
