//! The supervisor's restart engine as plain data: which children exist, which start of each is
//! the current one (its generation), and what a death means: a restart after a backoff, or a
//! park past the intensity limit. No actor and no timer: the supervisor asks it and schedules
//! what it answers, and the tests below drive it with fake children.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::ChildRef;
use super::super::restart::RestartTracker;
use crate::config::RestartPolicy;
use crate::report::{ActorReport, ChildState};

/// One child: what it is (`K`, how to build it again), its current start and its history.
struct Entry<K, H> {
    kind: K,
    generation: u64,
    handle: Option<H>,
    tracker: RestartTracker,
    /// A failure alert was raised and waits for a run that holds.
    failure_raised: bool,
}

/// What a child's death means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Death {
    /// When to start it again.
    pub delay: Duration,
    /// Restarts so far.
    pub restarts: u32,
    /// Past the intensity limit: `delay` is the park pause.
    pub parked: bool,
}

/// A child taken out of the engine on purpose.
pub struct Removed<K, H> {
    /// What it was, so it can be built again.
    pub kind: K,
    /// Its running start, to stop; `None` when none was running (waiting to restart, parked).
    pub handle: Option<H>,
    /// It had a failure alert open.
    pub failure_raised: bool,
}

/// The children of one supervisor, by name.
pub struct Children<K, H> {
    entries: BTreeMap<String, Entry<K, H>>,
    next_generation: u64,
    policy: RestartPolicy,
}

impl<K: Clone, H: ChildRef> Children<K, H> {
    /// No children yet; each one restarts under `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        Children {
            entries: BTreeMap::new(),
            next_generation: 0,
            policy,
        }
    }

    /// Adds (or replaces) a child, not started yet.
    pub fn insert(&mut self, name: &str, kind: K) {
        self.entries.insert(
            name.to_string(),
            Entry {
                kind,
                generation: 0,
                handle: None,
                tracker: RestartTracker::new(self.policy),
                failure_raised: false,
            },
        );
    }

    /// A new generation for a start of `name`, with what to build; `None` for an unknown name.
    pub fn next_start(&mut self, name: &str) -> Option<(u64, K)> {
        let entry = self.entries.get_mut(name)?;
        self.next_generation += 1;
        entry.generation = self.next_generation;
        Some((entry.generation, entry.kind.clone()))
    }

    /// The start `generation` of `name` runs as `handle` (ignored if a newer start replaced it).
    pub fn started(&mut self, name: &str, generation: u64, handle: H) {
        if let Some(entry) = self.entries.get_mut(name)
            && entry.generation == generation
        {
            entry.handle = Some(handle);
        }
    }

    /// Start `generation` of `name` died at `now`. `None` when the notice is stale (an older
    /// start, a death already seen, a child removed on purpose).
    pub fn exited(&mut self, name: &str, generation: u64, now: Instant) -> Option<Death> {
        let entry = self.entries.get_mut(name)?;
        if entry.generation != generation || entry.tracker.state != ChildState::Running {
            return None;
        }
        entry.handle = None;
        let delay = entry.tracker.exited(now);
        let parked = entry.tracker.state == ChildState::Parked;
        Some(Death {
            delay,
            restarts: entry.tracker.restarts,
            parked,
        })
    }

    /// A failure alert was raised for `name`: a run that holds clears it (see [`Self::held`]).
    pub fn failure_raised(&mut self, name: &str) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.failure_raised = true;
        }
    }

    /// The time to restart `name` after the death of `dead_generation` has come: `Some(restarts)`
    /// when it should start now, `None` when a newer start replaced it meanwhile.
    pub fn restart_due(&mut self, name: &str, dead_generation: u64, now: Instant) -> Option<u32> {
        let entry = self.entries.get_mut(name)?;
        if entry.generation != dead_generation || entry.tracker.state == ChildState::Running {
            return None;
        }
        entry.tracker.restarted(now);
        Some(entry.tracker.restarts)
    }

    /// Brings a child that is down (restarting, parked) back at once, e.g. the analyzer at
    /// shutdown; true when it was down.
    pub fn revive(&mut self, name: &str, now: Instant) -> bool {
        match self.entries.get_mut(name) {
            Some(entry) if entry.tracker.state != ChildState::Running => {
                entry.tracker.restarted(now);
                true
            }
            _ => false,
        }
    }

    /// Start `generation` of `name` has held for `stable_after`: `Some(failure_was_raised)`
    /// (and the failure forgotten) when it is still the current, running start.
    pub fn held(&mut self, name: &str, generation: u64) -> Option<bool> {
        let entry = self.entries.get_mut(name)?;
        if entry.generation != generation || entry.tracker.state != ChildState::Running {
            return None;
        }
        Some(std::mem::take(&mut entry.failure_raised))
    }

    /// Takes a child out (its handle, to stop it and watch it go).
    pub fn remove(&mut self, name: &str) -> Option<Removed<K, H>> {
        let entry = self.entries.remove(name)?;
        Some(Removed {
            kind: entry.kind,
            handle: entry.handle,
            failure_raised: entry.failure_raised,
        })
    }

    /// What `name` is.
    pub fn kind(&self, name: &str) -> Option<&K> {
        self.entries.get(name).map(|e| &e.kind)
    }

    /// True while `name`'s current start runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.tracker.state == ChildState::Running)
    }

    /// The names of the children whose kind `pick` accepts, in name order.
    pub(crate) fn names_where(&self, pick: impl Fn(&K) -> bool) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| pick(&e.kind))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Running children whose handle says they are gone: deaths whose notice got lost.
    pub(crate) fn silently_dead(&self) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .filter(|(_, e)| {
                e.tracker.state == ChildState::Running
                    && e.handle.as_ref().is_some_and(|h| !h.alive())
            })
            .map(|(n, e)| (n.clone(), e.generation))
            .collect()
    }

    /// Each child's state and restarts, by name.
    pub fn reports(&self) -> Vec<ActorReport> {
        self.reports_where(|_| true)
    }

    /// The reports of the children whose state `keep` accepts (no name copied for the rest).
    pub fn reports_where(&self, keep: impl Fn(ChildState) -> bool) -> Vec<ActorReport> {
        self.entries
            .iter()
            .filter(|(_, e)| keep(e.tracker.state))
            .map(|(name, e)| ActorReport {
                name: name.clone(),
                state: e.tracker.state,
                restarts: e.tracker.restarts,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// A child that is alive until told otherwise.
    #[derive(Clone, Default)]
    struct Fake {
        alive: Rc<Cell<bool>>,
        stopped: Rc<Cell<bool>>,
    }

    impl Fake {
        fn running() -> Fake {
            let f = Fake::default();
            f.alive.set(true);
            f
        }
    }

    impl ChildRef for Fake {
        fn stop(&self) {
            self.stopped.set(true);
            self.alive.set(false);
        }
        fn alive(&self) -> bool {
            self.alive.get()
        }
    }

    fn start(c: &mut Children<&'static str, Fake>, name: &str) -> (u64, Fake) {
        let (generation, _) = c.next_start(name).unwrap();
        let fake = Fake::running();
        c.started(name, generation, fake.clone());
        (generation, fake)
    }

    #[test]
    fn a_death_restarts_with_a_doubling_backoff_then_parks_and_comes_back() {
        let policy = RestartPolicy::default();
        let mut c = Children::new(policy);
        c.insert("w1", "collector");
        let (mut generation, _) = start(&mut c, "w1");
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..policy.max_restarts {
            now += Duration::from_millis(10);
            let death = c.exited("w1", generation, now).unwrap();
            assert!(!death.parked);
            delays.push(death.delay);
            assert_eq!(
                c.restart_due("w1", generation, now),
                Some(delays.len() as u32)
            );
            generation = start(&mut c, "w1").0;
        }
        assert_eq!(delays[..3], [100, 200, 400].map(Duration::from_millis));
        now += Duration::from_millis(10);
        let parked = c.exited("w1", generation, now).unwrap();
        assert!(parked.parked);
        assert_eq!(parked.delay, policy.park_pause);
        c.failure_raised("w1");
        assert_eq!(c.reports()[0].state, ChildState::Parked);
        let not_running = c.reports_where(|s| s != ChildState::Running);
        assert_eq!(not_running.len(), 1, "the parked one");
        // Un-parked after the pause; a run that holds clears the failure once.
        now += policy.park_pause;
        assert!(c.restart_due("w1", generation, now).is_some());
        let (generation, _) = start(&mut c, "w1");
        assert_eq!(c.reports()[0].state, ChildState::Running);
        assert!(c.reports_where(|s| s != ChildState::Running).is_empty());
        assert_eq!(c.held("w1", generation), Some(true));
        assert_eq!(c.held("w1", generation), Some(false));
    }

    #[test]
    fn stale_notices_are_ignored() {
        let mut c = Children::new(RestartPolicy::default());
        c.insert("a", "analyzer");
        let (first, _) = start(&mut c, "a");
        let now = Instant::now();
        assert!(c.exited("a", first, now).is_some());
        // The same death seen twice (the guard's notice, then the poll).
        assert!(c.exited("a", first, now).is_none());
        assert!(c.restart_due("a", first, now).is_some());
        let (second, _) = start(&mut c, "a");
        // A notice from the first start, and a restart scheduled for it, change nothing.
        assert!(c.exited("a", first, now).is_none());
        assert!(c.restart_due("a", first, now).is_none());
        assert!(c.held("a", first).is_none());
        assert!(c.is_running("a"));
        // Replaced on purpose (a monitor updated): the old start's death is stale too.
        c.insert("a", "analyzer");
        let (third, _) = start(&mut c, "a");
        assert!(c.exited("a", second, now).is_none());
        assert!(c.exited("a", third, now).is_some());
        // Removed: nothing about it is news.
        assert!(c.remove("a").is_some());
        assert!(c.exited("a", third, now).is_none());
        assert!(c.restart_due("a", third, now).is_none());
    }

    #[test]
    fn a_death_whose_notice_got_lost_is_found_and_shutdown_revives_a_parked_child() {
        let mut c = Children::new(RestartPolicy::default());
        c.insert("system", "collector");
        c.insert("analyzer", "analyzer");
        let (generation, fake) = start(&mut c, "system");
        start(&mut c, "analyzer");
        assert!(c.silently_dead().is_empty());
        fake.alive.set(false);
        assert_eq!(c.silently_dead(), vec![("system".to_string(), generation)]);
        assert_eq!(
            c.names_where(|k| *k == "collector"),
            vec!["system".to_string()]
        );
        let (agen, _) = c.next_start("analyzer").unwrap();
        c.started("analyzer", agen, Fake::running());
        let now = Instant::now();
        c.exited("analyzer", agen, now).unwrap();
        assert!(!c.is_running("analyzer"));
        assert!(c.revive("analyzer", now));
        assert!(c.is_running("analyzer"));
        assert!(
            !c.revive("analyzer", now),
            "a running child needs no reviving"
        );
        let removed = c.remove("system").unwrap();
        assert!(removed.handle.is_none() || !removed.handle.unwrap().alive());
    }
}
