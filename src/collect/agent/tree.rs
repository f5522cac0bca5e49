//! The agent's tree across cycles: members remembered to count orphans, CPU kept to tell stalls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::collect::process::{self, Machine, Member};

/// Members remembered per agent for orphan detection, at most.
const MAX_REMEMBERED: usize = 20_000;

/// Remembers which processes were in an agent's tree, under which root, to find the ones that
/// outlive it.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    members: HashMap<Member, Member>,
}

impl OrphanTracker {
    /// Records this cycle's tree (if the root lives) and counts orphans: remembered processes
    /// still running whose root is dead or no longer the agent's root. Returns the count and
    /// their resident memory in MB.
    pub(crate) fn update(
        &mut self,
        live_root: Option<Member>,
        tree: &[Member],
        machine: &Machine,
    ) -> (u64, f64) {
        if let Some(root) = live_root {
            for m in tree {
                if self.members.len() >= MAX_REMEMBERED && !self.members.contains_key(m) {
                    break;
                }
                self.members.insert(*m, root);
            }
        }
        let (mut count, mut pages) = (0u64, 0u64);
        self.members.retain(|member, root| {
            let under_live_root = Some(*root) == live_root;
            if under_live_root && tree.contains(member) {
                return true;
            }
            // Left the tree (exited, or detached like a daemon) or its root is gone: still the
            // same process? One that detached counts once its root dies.
            match process::read_stat(member.pid) {
                Some(stat) if stat.is_running() && stat.start_ticks == member.start_ticks => {
                    if !under_live_root {
                        count += 1;
                        pages += stat.rss_pages;
                    }
                    true
                }
                _ => false, // Exited, or the pid now belongs to someone else.
            }
        });
        (count, machine.megabytes(pages))
    }
}

/// Below this share of one core, averaged over the stall window, a tree counts as idle: an agent
/// waiting at a prompt uses next to nothing, one that compiles or thinks uses far more.
pub const STALL_CPU_CORES: f64 = 0.01;

/// Tells a stalled agent (heartbeat says `working` but has not moved, tree idle) from a busy or
/// an idle one, from the tree's CPU over the last `window`.
#[derive(Debug)]
pub struct StallWatch {
    window: Duration,
    /// Each cycle: when, and the CPU the tree used since the previous one, in core-seconds.
    samples: std::collections::VecDeque<(Instant, f64)>,
    /// When watching began (or the root last changed): a verdict needs a whole window seen.
    since: Option<Instant>,
}

impl StallWatch {
    /// A watch over `window`.
    pub fn new(window: Duration) -> Self {
        StallWatch {
            window,
            samples: Default::default(),
            since: None,
        }
    }

    /// Records one cycle: `busy_cores` is the tree's CPU in cores (0.5 = half a core) over
    /// `elapsed`; `None` when the root is not alive (history starts again).
    pub(crate) fn observe(&mut self, now: Instant, busy_cores: Option<f64>, elapsed: Duration) {
        let Some(busy) = busy_cores else {
            self.samples.clear();
            self.since = None;
            return;
        };
        self.since.get_or_insert(now);
        self.samples.push_back((now, busy * elapsed.as_secs_f64()));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// True when the heartbeat says working (`None` or empty state, as Gas Town reads it), has
    /// not moved for the window, the tree was watched for the whole window and used at most
    /// [`STALL_CPU_CORES`] on average meanwhile.
    pub fn stalled(&self, now: Instant, heartbeat_age: f64, state: Option<&str>) -> bool {
        let working = matches!(state, None | Some("") | Some("working"));
        let watched = self
            .since
            .is_some_and(|since| now.duration_since(since) >= self.window);
        let used: f64 = self.samples.iter().map(|(_, cpu)| cpu).sum();
        working
            && watched
            && heartbeat_age >= self.window.as_secs_f64()
            && used <= STALL_CPU_CORES * self.window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_include_children_that_detached_before_their_root_died() {
        let machine = Machine::current();
        let mut root = process::tests::spawn_sleep();
        let mut detached = process::tests::spawn_sleep();
        let member = |pid: u32| Member {
            pid,
            start_ticks: process::read_stat(pid).unwrap().start_ticks,
        };
        let (r, d) = (member(root.id()), member(detached.id()));
        let mut tracker = OrphanTracker::default();
        // Seen in the tree once, then no longer in it while the root lives: not an orphan yet.
        assert_eq!(tracker.update(Some(r), &[r, d], &machine).0, 0);
        assert_eq!(tracker.update(Some(r), &[r], &machine).0, 0);
        root.kill().unwrap();
        root.wait().unwrap();
        let (count, mb) = tracker.update(None, &[], &machine);
        assert_eq!(count, 1);
        assert!(mb > 0.0);
        detached.kill().unwrap();
        detached.wait().unwrap();
        assert_eq!(tracker.update(None, &[], &machine).0, 0);
    }
}
