//! What outlives any one analyzer: the alert ids handed out, the alerts it last announced, which
//! of them reached the sinks, and the operators' silences. A restarted analyzer picks these up,
//! so ids stay unique, alerts the writer has not landed yet are not fired twice, and a resolved
//! notice follows every firing notice that went out.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

use crate::alerts::AlertEvent;
use crate::model::{AlertKey, HealthAlert, ResourceType, Silence};
use crate::notify::{self, Notice, Notifier};
use crate::util::lock;

/// Alert state shared by every analyzer the daemon runs.
#[derive(Debug, Default)]
pub struct AlertMemory {
    /// One past the highest alert id handed out (0: none yet).
    next_id: AtomicI64,
    /// The last announced state of each key: active (`Some`) or resolved (`None`).
    known: Mutex<HashMap<AlertKey, Option<HealthAlert>>>,
    /// Keys whose firing notice went to the sinks: their resolution must follow.
    notified: Mutex<HashSet<AlertKey>>,
    /// Silences in force; `None` until read from the database.
    silences: Mutex<Option<Vec<Silence>>>,
}

impl AlertMemory {
    /// Records what `events` did, and the engine's next id.
    pub(crate) fn track(&self, events: &[AlertEvent], next_id: i64) {
        self.next_id.fetch_max(next_id, Ordering::Relaxed);
        if events.is_empty() {
            return;
        }
        let mut known = lock(&self.known);
        for event in events {
            let a = event.alert();
            let state = (!matches!(event, AlertEvent::Resolved(_))).then(|| a.clone());
            known.insert(a.key(), state);
        }
    }

    /// The id numbering must continue past.
    pub(crate) fn next_id(&self) -> i64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// The active alerts a starting analyzer should hold: the database's, corrected by what a
    /// predecessor announced that may not have landed yet (opened, changed or resolved).
    pub(crate) fn merge(&self, stored: Vec<HealthAlert>) -> Vec<HealthAlert> {
        let mut known = lock(&self.known);
        let mut by_key: HashMap<AlertKey, HealthAlert> =
            stored.into_iter().map(|a| (a.key(), a)).collect();
        let in_db: HashSet<AlertKey> = by_key.keys().cloned().collect();
        for (key, state) in known.iter() {
            match state {
                Some(a) => {
                    by_key.insert(key.clone(), a.clone());
                }
                None => {
                    by_key.remove(key);
                }
            }
        }
        // Resolutions the database already shows need no more remembering.
        known.retain(|k, state| state.is_some() || in_db.contains(k));
        by_key.into_values().collect()
    }

    /// True once silences were read from the database.
    pub fn silences_loaded(&self) -> bool {
        lock(&self.silences).is_some()
    }

    /// Sets the silences read from the database.
    pub fn set_silences(&self, silences: Vec<Silence>) {
        *lock(&self.silences) = Some(silences);
    }

    /// The silences in force now (expired ones are dropped).
    pub fn silences(&self, now: DateTime<Utc>) -> Vec<Silence> {
        let mut guard = lock(&self.silences);
        let list = guard.get_or_insert_with(Vec::new);
        list.retain(|s| s.expires_at > now);
        list.clone()
    }

    /// Adds a silence, replacing one on the same target.
    pub fn add_silence(&self, silence: Silence) {
        let mut guard = lock(&self.silences);
        let list = guard.get_or_insert_with(Vec::new);
        list.retain(|s| !s.same_target(&silence));
        list.push(silence);
    }

    /// Adds a silence unless one on the same target already lasts as long; true when added.
    /// Automatic silences use it, so they never shorten an operator's.
    pub fn extend_silence(&self, silence: Silence) -> bool {
        let mut guard = lock(&self.silences);
        let list = guard.get_or_insert_with(Vec::new);
        if list
            .iter()
            .any(|s| s.same_target(&silence) && s.expires_at >= silence.expires_at)
        {
            return false;
        }
        list.retain(|s| !s.same_target(&silence));
        list.push(silence);
        true
    }

    /// Removes a resource's silences (all, or the one on `metric`); returns how many.
    pub(crate) fn remove_silences(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        metric: Option<&str>,
    ) -> usize {
        let mut guard = lock(&self.silences);
        let list = guard.get_or_insert_with(Vec::new);
        let before = list.len();
        list.retain(|s| {
            !(s.resource_type == resource_type
                && s.resource_id == resource_id
                && metric.is_none_or(|m| s.metric.as_deref() == Some(m)))
        });
        before - list.len()
    }

    /// True when a silence in force covers the alert.
    pub fn silenced(&self, alert: &HealthAlert, now: DateTime<Utc>) -> bool {
        lock(&self.silences)
            .as_ref()
            .is_some_and(|list| list.iter().any(|s| s.covers(alert, now)))
    }

    /// Whether an event is silenced, and whether it goes to the sinks: those no silence
    /// covers, and every resolution of an alert they heard about, silenced or not.
    pub(crate) fn decide(&self, event: &AlertEvent, now: DateTime<Utc>) -> (bool, bool) {
        let alert = event.alert();
        let silenced = self.silenced(alert, now);
        if !event.notifies() {
            return (silenced, false);
        }
        let key = alert.key();
        let send = match event {
            AlertEvent::Resolved(_) => lock(&self.notified).remove(&key),
            _ if silenced => false,
            _ => {
                lock(&self.notified).insert(key);
                true
            }
        };
        (silenced, send)
    }

    /// True when the alert's firing notice never went out (it fired under a silence that has
    /// since ended): its next notice must go out as a firing one, or sinks that take only
    /// firings (an escalation) would never hear of it.
    fn first_notice(&self, event: &AlertEvent) -> bool {
        matches!(event, AlertEvent::Reminder(_))
            && !lock(&self.notified).contains(&event.alert().key())
    }

    /// Tells people about alert events: every event is logged, and sent as [`decide`] says.
    ///
    /// [`decide`]: AlertMemory::decide
    pub(crate) fn announce(&self, events: &[AlertEvent], notifier: &Notifier) {
        let now = Utc::now();
        for event in events {
            let first = self.first_notice(event);
            let (silenced, send) = self.decide(event, now);
            notify::log_event(event, silenced);
            let event = if first && send {
                &AlertEvent::Fired(event.alert().clone())
            } else {
                event
            };
            if send
                && !notifier.is_empty()
                && let Some(notice) = Notice::from_event(event, now)
            {
                notifier.notify(&notice);
            }
        }
    }

    /// Marks restored alerts as heard by the sinks (they were sent before the restart), and
    /// has stateful sinks (Alertmanager) pick them up again.
    pub(crate) fn restored(&self, alerts: &[HealthAlert], notifier: &Notifier) {
        if notifier.is_empty() {
            return;
        }
        let now = Utc::now();
        let mut notified = lock(&self.notified);
        for alert in alerts {
            if self.silenced(alert, now) {
                continue;
            }
            notified.insert(alert.key());
            if let Some(notice) = Notice::from_event(&AlertEvent::Reminder(alert.clone()), now) {
                notifier.restore(&notice);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HealthStatus;

    fn alert(id: i64, resource: &str) -> HealthAlert {
        let now = Utc::now();
        HealthAlert {
            id: Some(id),
            resource_type: ResourceType::Workspace,
            resource_id: resource.into(),
            alert_type: "workspace_exists".into(),
            severity: HealthStatus::Critical,
            message: "gone".into(),
            timestamp: now,
            metadata: serde_json::Value::Null,
            resolved: false,
            resolved_at: None,
            last_notified_at: now,
            acknowledged_at: None,
        }
    }

    #[test]
    fn a_successor_sees_what_its_predecessor_announced_but_the_database_lacks() {
        let m = AlertMemory::default();
        let opened = alert(10, "w1");
        let mut resolved = alert(7, "w2");
        resolved.resolved = true;
        m.track(
            &[
                AlertEvent::Fired(opened.clone()),
                AlertEvent::Resolved(resolved.clone()),
            ],
            11,
        );
        assert_eq!(m.next_id(), 11);
        // The database has w2 still active (its resolution not landed) and not w1 yet.
        let merged = m.merge(vec![alert(7, "w2"), alert(3, "w3")]);
        let mut ids: Vec<i64> = merged.iter().filter_map(|a| a.id).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 10]);
        // A lower next id from a failed read never takes numbering backwards.
        m.track(&[], 1);
        assert_eq!(m.next_id(), 11);
    }

    #[test]
    fn resolutions_follow_every_firing_that_went_out_even_under_a_later_silence() {
        let m = AlertMemory::default();
        m.set_silences(Vec::new());
        let now = Utc::now();
        let silence = |id: &str| Silence {
            resource_type: ResourceType::Workspace,
            resource_id: id.into(),
            metric: None,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            comment: None,
        };
        let resolved = |a: &HealthAlert| {
            let mut r = a.clone();
            r.resolved = true;
            AlertEvent::Resolved(r)
        };
        // Sent, then silenced: reminders stay home, the resolution goes out.
        let a = alert(1, "w1");
        assert_eq!(m.decide(&AlertEvent::Fired(a.clone()), now), (false, true));
        m.add_silence(silence("w1"));
        assert_eq!(
            m.decide(&AlertEvent::Reminder(a.clone()), now),
            (true, false)
        );
        assert_eq!(m.decide(&resolved(&a), now), (true, true));
        // Silenced from the start: neither its firing nor its resolution goes out.
        let b = alert(2, "w1");
        assert_eq!(m.decide(&AlertEvent::Fired(b.clone()), now), (true, false));
        assert_eq!(m.decide(&resolved(&b), now), (true, false));
        // One that fired under a silence since ended: its next reminder is its first notice.
        let d = alert(4, "w3");
        m.add_silence(silence("w3"));
        assert_eq!(m.decide(&AlertEvent::Fired(d.clone()), now), (true, false));
        m.remove_silences(ResourceType::Workspace, "w3", None);
        assert!(m.first_notice(&AlertEvent::Reminder(d.clone())));
        assert_eq!(
            m.decide(&AlertEvent::Reminder(d.clone()), now),
            (false, true)
        );
        assert!(!m.first_notice(&AlertEvent::Reminder(d)));
        // Automatic silences never shorten a longer one.
        assert!(!m.extend_silence(Silence {
            expires_at: now + chrono::Duration::minutes(1),
            ..silence("w1")
        }));
        assert!(m.extend_silence(Silence {
            expires_at: now + chrono::Duration::hours(2),
            ..silence("w1")
        }));
        // Quiet updates never go out.
        let c = alert(3, "w2");
        assert_eq!(m.decide(&AlertEvent::Downgraded(c), now), (false, false));

        assert_eq!(m.silences(now).len(), 1);
        assert_eq!(
            m.remove_silences(ResourceType::Workspace, "w1", Some("other")),
            0
        );
        assert_eq!(m.remove_silences(ResourceType::Workspace, "w1", None), 1);
        assert!(!m.silenced(&a, now));
        // Expired silences drop out of the list.
        m.add_silence(Silence {
            expires_at: now - chrono::Duration::seconds(1),
            ..silence("w9")
        });
        assert!(m.silences(now).is_empty());
    }
}
