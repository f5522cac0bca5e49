//! The alerts escalated so far, with their escalations' ids: a bounded set, oldest forgotten first.

use std::collections::{BTreeMap, HashMap};

use crate::notify::Notice;

/// How many escalated alerts the sink remembers. An alert is forgotten when its resolved notice
/// arrives, so the cap only matters when those go missing (an alert restored at start under a
/// silence never announces its resolution); then the alert escalated longest ago is forgotten
/// first (and its escalation, if it had an id, is left to the next start to close).
pub const ESCALATED_LIMIT: usize = 10_000;

/// Which alert a notice is about: its row id, or its stream key for an alert never stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum AlertKey {
    Id(i64),
    Stream(String),
}

impl AlertKey {
    pub(super) fn of(notice: &Notice) -> AlertKey {
        match notice.id {
            Some(id) => AlertKey::Id(id),
            None => AlertKey::Stream(notice.key()),
        }
    }
}

/// One escalated alert.
#[derive(Debug)]
pub(super) struct Entry {
    /// Its place in the age order.
    age: u64,
    /// Gas Town's id of its escalation; `None` when gt gave none, or for an alert restored at
    /// start without a recorded escalation: those cannot be closed.
    escalation_id: Option<String>,
}

/// The alerts escalated so far, bounded: past `cap` the one escalated longest ago goes.
#[derive(Debug)]
pub(super) struct Escalated {
    cap: usize,
    /// Counts insertions; an alert's number orders it by age.
    next: u64,
    pub(super) by_key: HashMap<AlertKey, Entry>,
    by_age: BTreeMap<u64, AlertKey>,
}

impl Escalated {
    pub(super) fn new(cap: usize) -> Self {
        Escalated {
            cap: cap.max(1),
            next: 0,
            by_key: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    pub(super) fn contains(&self, key: &AlertKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// The id of the alert's escalation, when it was escalated with one.
    pub(super) fn escalation_id(&self, key: &AlertKey) -> Option<&str> {
        self.by_key.get(key)?.escalation_id.as_deref()
    }

    /// Remembers `key` (keeping its age if it is known already, and its id unless a new one is
    /// given), forgetting the oldest past the cap.
    pub(super) fn insert(&mut self, key: AlertKey, escalation_id: Option<String>) {
        if let Some(entry) = self.by_key.get_mut(&key) {
            if escalation_id.is_some() {
                entry.escalation_id = escalation_id;
            }
            return;
        }
        self.next += 1;
        let age = self.next;
        self.by_key
            .insert(key.clone(), Entry { age, escalation_id });
        self.by_age.insert(age, key);
        while self.by_key.len() > self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(Entry {
                escalation_id: Some(id),
                ..
            }) = self.by_key.remove(&oldest)
            {
                tracing::warn!(
                    alert = ?oldest,
                    escalation = %id,
                    "too many escalated alerts remembered: forgetting the oldest; its escalation \
                     will be closed by the next start once the alert is over, not by its resolution"
                );
            }
        }
    }

    pub(super) fn forget(&mut self, key: &AlertKey) {
        if let Some(entry) = self.by_key.remove(key) {
            self.by_age.remove(&entry.age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escalated_set_forgets_the_oldest_past_its_cap() {
        let mut e = Escalated::new(3);
        for id in 1..=3 {
            e.insert(AlertKey::Id(id), Some(format!("hq-{id}")));
        }
        // Known already: still the oldest, and a restore without an id keeps the one it has.
        e.insert(AlertKey::Id(2), None);
        assert_eq!(e.escalation_id(&AlertKey::Id(2)), Some("hq-2"));
        e.insert(AlertKey::Id(1), None);
        e.insert(AlertKey::Id(4), None);
        assert_eq!(e.by_key.len(), 3);
        assert!(!e.contains(&AlertKey::Id(1)));
        assert_eq!(e.escalation_id(&AlertKey::Id(4)), None);
        e.forget(&AlertKey::Id(3));
        e.insert(AlertKey::Id(5), None);
        e.insert(AlertKey::Id(6), None);
        let kept: Vec<bool> = (1..=6).map(|id| e.contains(&AlertKey::Id(id))).collect();
        assert_eq!(kept, [false, false, false, true, true, true]);
        assert_eq!((e.by_key.len(), e.by_age.len()), (3, 3));
    }
}
